//! Failing back, and the restore it asks of the original site. The order is what keeps
//! the data whole:
//! - the failover instance stops (its VM, its filesystems) before the last point is
//!   taken, so nothing production writes can miss it; the point is saved in the
//!   catalogue before the reverse agent is stopped, so a retry takes no second point;
//! - the peer's replication stops before it restores, and a restore that succeeded is
//!   saved, so a retry never restores twice;
//! - this site's instance is released only after the peer's instance is up;
//! - at the original site a restore runs only while the replica takes no records, onto
//!   original disks re-checked (identity, size, unused), and a restore whose launcher
//!   failed leaves nothing running.

use crate::catalog::{ProtectedServer, Reverse};
use crate::control::{Control, ControlError};
use crate::instance::{Instance, Kind, Spec};
use crate::lifecycle::Step;
use ferry_standby::points::PointSelector;
use ferry_wire::error_chain;
use serde_json::Value;
use std::path::PathBuf;

impl Control {
    /// Fails back: a last point of the reverse replica, the reverse agent stopped, the
    /// peer restores the point and launches it; this site's instance is released.
    /// `supplied` (the recovery key sent with the operation) goes on to the peer's
    /// restore.
    pub fn failback(
        &self,
        id: &str,
        spec: Spec,
        supplied: Option<&ferry_wire::RecoveryKey>,
    ) -> Result<Instance, ControlError> {
        let _op = self.operation(id)?;
        crate::instance::Instances::check(&Spec {
            point: PointSelector::Latest,
            ..spec.clone()
        })?;
        let sid = self.catalog().server(id)?.id.clone();
        self.refresh_reverse(&sid);
        let server = self.catalog().server(id)?.clone();
        server.check(Step::Failback)?;
        self.change(|c| c.step(id, Step::Failback))?;
        let mut reverse = server.reverse.clone().expect("reverse replication ran");
        let result = self.fail_back(&server, &mut reverse, spec, supplied);
        let instance = match result {
            Ok(i) => i,
            Err(e) => return Err(self.failed(id, e)),
        };
        self.change(|c| c.step_and(id, Step::InstanceUp, |s| s.instance = None))?;
        Ok(instance)
    }

    /// The failback's steps after its check: the last point (once), the peer's restore
    /// (once), this site's instance cleaned.
    fn fail_back(
        &self,
        server: &ProtectedServer,
        reverse: &mut Reverse,
        spec: Spec,
        supplied: Option<&ferry_wire::RecoveryKey>,
    ) -> Result<Instance, ControlError> {
        let id = server.id.as_str();
        if reverse.final_point.is_none() {
            // Production stops here first, so nothing it writes can miss the point.
            if let Some(old) = &server.instance {
                self.instances.stop(old)?;
            }
            let point = self.final_reverse_point(reverse)?;
            reverse.final_point = Some(point);
            let saved = reverse.clone();
            self.change(|c| c.edit(id, |s| s.reverse = Some(saved)))?;
            self.stop_reverse_agent(&server.id, reverse, true);
        }
        let point = reverse.final_point.expect("set above");
        if let Some(restored) = &reverse.restored {
            // A retry after the restore succeeded: never restore twice.
            return Ok(restored.clone());
        }
        let instance = self.peer_restore(id, reverse, point, spec, supplied)?;
        reverse.restored = Some(instance.clone());
        let saved = reverse.clone();
        self.change(|c| c.edit(id, |s| s.reverse = Some(saved)))?;
        if let Some(old) = &server.instance {
            self.instances.clean(old)?;
        }
        Ok(instance)
    }

    /// Has the peer restore `point` of its reverse replica and launch it; its instance.
    fn peer_restore(
        &self,
        id: &str,
        reverse: &Reverse,
        point: ferry_wire::PointId,
        spec: Spec,
        supplied: Option<&ferry_wire::RecoveryKey>,
    ) -> Result<Instance, ControlError> {
        // The peer's replication stops (its agent is gone) before it restores.
        let _ = self.peer(
            &reverse.site,
            "POST",
            &format!("/v1/servers/{id}/replication/stop"),
            &Value::Null,
        );
        let restore = Spec {
            point: PointSelector::Id(point),
            ..spec
        };
        let mut body = serde_json::to_value(&restore).expect("a spec serializes");
        if let (Some(key), Some(fields)) = (supplied, body.as_object_mut()) {
            let text = ferry_wire::KeyFile::Recovery(key.clone()).to_text();
            fields.insert("recovery_key".into(), Value::String(text.to_string()));
        }
        let up = self.peer(
            &reverse.site,
            "POST",
            &format!("/v1/servers/{id}/restore"),
            &body,
        )?;
        serde_json::from_value::<Instance>(up).map_err(|e| {
            ControlError::Reverse(format!("the peer's answer is not an instance: {e}"))
        })
    }

    /// At the original site: restores a point of a server's replica (onto its original
    /// disks when replication had them) and launches it. The replica must not be taking
    /// records.
    pub fn restore(
        &self,
        id: &str,
        spec: Spec,
        supplied: Option<&ferry_wire::RecoveryKey>,
    ) -> Result<Instance, ControlError> {
        let _op = self.operation(id)?;
        let server = self.catalog().server(id)?.clone();
        if server.state.replicating() {
            return Err(ControlError::Reverse(format!(
                "server {id} is {}: stop its replication before restoring it",
                server.state
            )));
        }
        // Still the disks found at replication start (identity, size), and unused.
        let onto: Vec<PathBuf> = server
            .replication
            .as_ref()
            .map(|r| r.original_disks.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|d| crate::original_disks::verify(&d, self.volumes()).map(|()| d.path))
            .collect::<Result<_, _>>()?;
        let keys = self.load_keys(&server.id, supplied)?;
        let instance = self
            .instances
            .launch(Kind::Failback, &server.id, spec, &keys, &onto)?;
        if !instance.launched() {
            // Nothing of a failed restore is left running (its disks stay written).
            if let Err(e) = self.instances.clean(&instance.id) {
                tracing::error!(instance = %instance.id, "cannot remove a failed restore: {}", error_chain(&e));
            }
            return Err(ControlError::ScriptFailed(Box::new(instance)));
        }
        Ok(instance)
    }
}
