//! The data path's side of the control plane: what the store's receiver asks before it
//! takes a server's records (under the server's lock, before every append) and what it
//! reports back (connections, registrations, progress, points), which move the
//! server's state.

use super::{Control, PointView};
use crate::lifecycle::{Phase, State, Step};
use ferry_standby::receiver::{ControlPlane, Session};
use ferry_standby::retention::Policy;
use ferry_wire::message::{Barrier, PointResult, Progress, ReplicationPhase};
use ferry_wire::{DigestKey, ServerId};

/// The data path's questions and reports (the store's receiver asks them).
impl ControlPlane for Control {
    fn manages(&self, id: &ServerId) -> bool {
        self.gate(id).is_some()
    }

    fn paused(&self, id: &ServerId) -> Option<String> {
        let gate = self.gate(id)?;
        if gate.takes_records() {
            return None;
        }
        Some(match gate.state {
            State::Installing | State::Initialized => format!(
                "replication of server {id} is not started (it is {}): an operator runs \
                 `ferry replication start --server {id}`",
                gate.state
            ),
            State::Interrupted => format!(
                "replication of server {id} was interrupted and auto-restart is off: an \
                 operator runs `ferry replication start --server {id}`"
            ),
            other => format!("server {id} is {other}: this standby takes no records of it"),
        })
    }

    /// After a failover the disks this site knows are what its instances are built from,
    /// so a returning original agent cannot replace them (it registers again with
    /// `register`).
    fn registration_refused(&self, id: &ServerId) -> Option<String> {
        let gate = self.gate(id)?;
        match gate.state {
            State::Installing | State::Initialized => None,
            s if s.replicating() => None,
            _ => self.paused(id),
        }
    }

    fn baseline_disks(&self, id: &ServerId) -> Option<Vec<std::path::PathBuf>> {
        let catalog = self.catalog();
        let r = catalog.server(id.as_str()).ok()?.replication.as_ref()?;
        (!r.original_disks.is_empty())
            .then(|| r.original_disks.iter().map(|d| d.path.clone()).collect())
    }

    fn digest_key(&self, id: &ServerId) -> Result<DigestKey, String> {
        self.load_keys(id, None)
            .map(|k| k.digest)
            .map_err(|e| ferry_wire::error_chain(&e))
    }

    fn policies(&self) -> Vec<(ServerId, Policy)> {
        self.catalog()
            .servers()
            .iter()
            .filter_map(|s| Some((s.id.clone(), s.replication.as_ref()?.policy)))
            .collect()
    }

    fn connected(&self, id: &ServerId, session: Session) {
        self.live().entry(id.clone()).or_default().conn = Some(session);
    }

    /// A replicating server is `interrupted` unless a newer session took over.
    fn disconnected(&self, id: &ServerId, conn: u64) {
        {
            let mut live = self.live();
            let Some(l) = live.get_mut(id) else { return };
            if l.conn.as_ref().is_none_or(|c| c.id() != conn) {
                return;
            }
            l.conn = None;
            // A copy's rate is measured while it runs, not across the time the link was down.
            l.copy_started = None;
        }
        self.changed.notify_all();
        if self
            .gate(id)
            .is_some_and(|g| matches!(g.state, State::Starting | State::Full | State::Realtime))
            && let Err(e) = self.change(|c| c.step(id.as_str(), Step::Forward(Phase::Interrupted)))
        {
            tracing::error!(server = %id, "cannot record the interruption: {}", ferry_wire::error_chain(&e));
        }
    }

    /// An `installing` server becomes `initialized`.
    fn registered(&self, id: &ServerId) -> Result<(), String> {
        if self.gate(id).is_some_and(|g| g.state == State::Installing) {
            self.change(|c| c.step(id.as_str(), Step::AgentRegistered))
                .map_err(|e| ferry_wire::error_chain(&e))?;
        }
        Ok(())
    }

    /// Kept for the operator, and it moves the server's phase; the first report of
    /// real time records that the first full copy is whole (`copied_unix_ms`).
    fn progress(&self, id: &ServerId, p: Progress) {
        let now = ferry_standby::now_ms();
        {
            let mut live = self.live();
            let l = live.entry(id.clone()).or_default();
            l.copy_started = match (p.phase, l.copy_started) {
                (ReplicationPhase::Full, Some(start)) if start.0 <= p.full_done => Some(start),
                (ReplicationPhase::Full, _) => Some((p.full_done, now)),
                (ReplicationPhase::Realtime, _) => None,
            };
            l.progress = Some((p, now));
        }
        let phase = match p.phase {
            ReplicationPhase::Full => Phase::Full,
            ReplicationPhase::Realtime => Phase::Realtime,
        };
        let want = match phase {
            Phase::Full => State::Full,
            _ => State::Realtime,
        };
        if let Some(g) = self.gate(id)
            && g.state.replicating()
            && g.state != want
            && let Err(e) = self.change(|c| {
                c.step_and(id.as_str(), Step::Forward(phase), |s| {
                    if phase == Phase::Realtime {
                        s.copied_unix_ms.get_or_insert(now);
                    }
                })
            })
        {
            tracing::error!(server = %id, "cannot record progress: {}", ferry_wire::error_chain(&e));
        }
    }

    /// A point proves a whole copy (the agent makes none while a catch-up runs): a
    /// server not yet marked copied (an upgraded catalogue's) is from now on.
    fn point_stored(&self, id: &ServerId, barrier: &Barrier) {
        self.live().entry(id.clone()).or_default().last_point =
            Some(PointView::of_barrier(barrier));
        let first = {
            let catalog = self.catalog();
            catalog
                .server(id.as_str())
                .is_ok_and(|s| s.copied_unix_ms.is_none())
        };
        if first
            && let Err(e) = self.change(|c| {
                c.edit(id.as_str(), |s| {
                    s.copied_unix_ms.get_or_insert(barrier.unix_time_ms);
                })
            })
        {
            tracing::error!(server = %id, "cannot record the first copy: {}", ferry_wire::error_chain(&e));
        }
    }

    fn point_result(&self, id: &ServerId, result: PointResult) {
        if let Some(slot) = self
            .live()
            .get_mut(id)
            .and_then(|l| l.points.get_mut(&result.request))
        {
            *slot = Some(result);
        }
        self.changed.notify_all();
    }
}
