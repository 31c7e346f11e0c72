//! Instances: drills beside running replication, and failovers (start, change of
//! point, confirm). A launch is checked whole before anything changes; a failover stops
//! replication durably and waits for the agent's session to end before it resolves
//! "latest"; an instance that does not come up is removed and the failure recorded.

use super::{Control, ControlError};
use crate::catalog::ProtectedServer;
use crate::instance::{Instance, InstanceError, Kind, Spec};
use crate::lifecycle::{State, Step};
use ferry_standby::points::PointSelector;
use ferry_wire::{RecoveryKey, RecoveryKeys, ServerId};
use std::time::{Duration, Instant};

/// Longest a failover waits for the forward agent's session to end.
const DISCONNECT_WAIT: Duration = Duration::from_secs(15);

impl Control {
    /// Sets the directory post-launch scripts must be in (once, at start; the default is
    /// [`crate::scripts::DEFAULT_SCRIPTS_DIR`]).
    pub fn set_scripts_dir(&self, dir: crate::scripts::ScriptsDir) {
        self.instances.set_scripts_dir(dir);
    }

    /// Sets the qemu launcher's accelerators (once, at start; the default is
    /// [`crate::instance::DEFAULT_QEMU_ACCEL`]).
    pub fn set_qemu_accel(&self, accel: &str) {
        self.instances.set_qemu_accel(accel);
    }

    /// Every instance of `id`.
    pub fn instances(&self, id: &str) -> Result<Vec<Instance>, ControlError> {
        let server = self.catalog().server(id)?.id.clone();
        Ok(self
            .instances
            .list()?
            .into_iter()
            .filter(|i| i.server == server)
            .collect())
    }

    /// Checks a launch before anything changes: the spec, the point (which must exist;
    /// "latest" only once the disks are consistent: after the first full copy, and not
    /// while a catch-up runs), the keys.
    fn prepare(
        &self,
        server: &ProtectedServer,
        spec: &Spec,
        supplied: Option<&RecoveryKey>,
    ) -> Result<RecoveryKeys, ControlError> {
        if spec.point == PointSelector::Latest && !self.protected(server) {
            return Err(ControlError::NotProtectedYet(server.id.clone()));
        }
        if spec.point == PointSelector::Latest
            && !matches!(server.state, State::Realtime | State::Interrupted)
        {
            return Err(ControlError::LatestInconsistent(
                server.id.clone(),
                server.state,
            ));
        }
        self.instances.resolve(&server.id, spec)?;
        self.load_keys(&server.id, supplied)
    }

    /// Brings up a drill of `id` beside its running replication (the state stays).
    /// `supplied`: the recovery key, when the operator sends it with the operation.
    pub fn drill_start(
        &self,
        id: &str,
        spec: Spec,
        supplied: Option<&RecoveryKey>,
    ) -> Result<Instance, ControlError> {
        let _op = self.operation(id)?;
        let server = self.catalog().server(id)?.clone();
        server.check(Step::DrillStart)?;
        let keys = self.prepare(&server, &spec, supplied)?;
        let instance = self
            .instances
            .launch(Kind::Drill, &server.id, spec, &keys, &[])?;
        if !instance.launched() {
            return Err(ControlError::ScriptFailed(Box::new(instance)));
        }
        Ok(instance)
    }

    /// Cleans the drills of `id` (or only `instance`); returns what was removed.
    pub fn drill_clean(
        &self,
        id: &str,
        instance: Option<&str>,
    ) -> Result<Vec<Instance>, ControlError> {
        let _op = self.operation(id)?;
        self.clean_drills(id, instance)
    }

    fn clean_drills(
        &self,
        id: &str,
        instance: Option<&str>,
    ) -> Result<Vec<Instance>, ControlError> {
        let drills: Vec<Instance> = self
            .instances(id)?
            .into_iter()
            .filter(|i| i.kind == Kind::Drill && instance.is_none_or(|want| i.id == want))
            .collect();
        if let Some(want) = instance
            && drills.is_empty()
        {
            return Err(InstanceError::Unknown(want.to_owned()).into());
        }
        drills
            .into_iter()
            .map(|i| Ok(self.instances.clean(&i.id)?))
            .collect()
    }

    /// Fails over: replication stops (durably, the agent's session ends), the point is
    /// brought up as the production instance. The request is checked whole first: a bad
    /// one changes nothing.
    pub fn failover_start(
        &self,
        id: &str,
        spec: Spec,
        supplied: Option<&RecoveryKey>,
    ) -> Result<Instance, ControlError> {
        let _op = self.operation(id)?;
        let server = self.catalog().server(id)?.clone();
        server.check(Step::FailoverStart)?;
        let keys = self.prepare(&server, &spec, supplied)?;
        self.change(|c| c.step(id, Step::FailoverStart))?;
        if let Err(e) = self.wait_disconnected(&server.id) {
            return Err(self.failed(id, e));
        }
        self.bring_up(id, &server.id, spec, &keys)
    }

    /// Replaces the failover instance by one at an earlier point.
    pub fn failover_change_point(
        &self,
        id: &str,
        spec: Spec,
        supplied: Option<&RecoveryKey>,
    ) -> Result<Instance, ControlError> {
        let _op = self.operation(id)?;
        if spec.point == PointSelector::Latest {
            return Err(ControlError::LatestUsed);
        }
        let current = self.catalog().server(id)?.clone();
        current.check(Step::ChangePoint)?;
        let keys = self.prepare(&current, &spec, supplied)?;
        self.change(|c| c.step(id, Step::ChangePoint))?;
        if let Some(old) = &current.instance {
            match self.instances.clean(old) {
                Ok(_) | Err(InstanceError::Unknown(_)) => {}
                Err(e) => return Err(self.failed(id, e.into())),
            }
        }
        self.change(|c| c.edit(id, |s| s.instance = None))?;
        self.bring_up(id, &current.id, spec, &keys)
    }

    /// Confirms the failover: the instance is production; drills are released.
    pub fn failover_confirm(&self, id: &str) -> Result<State, ControlError> {
        let _op = self.operation(id)?;
        let state = self.change(|c| c.step(id, Step::FailoverConfirm))?;
        if let Err(e) = self.clean_drills(id, None) {
            return Err(self.failed(id, e));
        }
        Ok(state)
    }

    /// Launches the failover instance; one that does not come up is removed and the
    /// failure recorded (the server stays failing-over: change-point retries).
    fn bring_up(
        &self,
        id: &str,
        server: &ServerId,
        spec: Spec,
        keys: &RecoveryKeys,
    ) -> Result<Instance, ControlError> {
        let instance = match self
            .instances
            .launch(Kind::Failover, server, spec, keys, &[])
        {
            Ok(i) if i.launched() => i,
            Ok(i) => {
                if let Err(e) = self.instances.clean(&i.id) {
                    tracing::error!(instance = %i.id, "cannot remove a failed failover instance: {}", ferry_wire::error_chain(&e));
                }
                return Err(self.failed(id, ControlError::ScriptFailed(Box::new(i))));
            }
            Err(e) => return Err(self.failed(id, e.into())),
        };
        let up = instance.id.clone();
        if let Err(e) = self.change(|c| c.step_and(id, Step::InstanceUp, |s| s.instance = Some(up)))
        {
            return Err(self.failed(id, e.into()));
        }
        Ok(instance)
    }

    /// Records `e` as the server's error and returns it.
    pub(super) fn failed(&self, id: &str, e: ControlError) -> ControlError {
        if let Err(record) = self.fail(id, ferry_wire::error_chain(&e)) {
            tracing::error!(
                server = id,
                "cannot record a failure: {}",
                ferry_wire::error_chain(&record)
            );
        }
        e
    }

    fn wait_disconnected(&self, id: &ServerId) -> Result<(), ControlError> {
        let deadline = Instant::now() + DISCONNECT_WAIT;
        let mut live = self.live();
        while live.get(id).is_some_and(|l| l.conn.is_some()) {
            let now = Instant::now();
            if now >= deadline {
                return Err(ControlError::StillConnected(id.clone(), DISCONNECT_WAIT));
            }
            live = self
                .changed
                .wait_timeout(live, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(())
    }
}
