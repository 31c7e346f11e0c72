//! What the operator sees: each managed server with its live reports, and its points.

use super::Control;
use crate::catalog::{CatalogError, ProtectedServer};
use ferry_standby::server::ServerState;
use ferry_wire::message::{PointKind, ReplicationPhase};
use ferry_wire::{PointId, Seq, ServerId};
use std::collections::HashMap;

/// A server as the operator sees it now.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ServerView {
    #[serde(flatten)]
    pub server: ProtectedServer,
    /// `state`, or `error` while an error is unresolved.
    pub shown_state: String,
    pub connected: bool,
    /// Whether anything of the server can be recovered: its first full copy completed
    /// (or a recovery point exists). Until then its RPO lag means nothing: the operator
    /// is shown "not protected yet" and the copy's progress.
    pub protected: bool,
    /// The agent's last progress report (and when it came, Unix ms).
    pub progress: Option<ProgressView>,
    pub last_point: Option<PointView>,
    /// The reverse agent's status (its `ferry agent status --json`), while it runs.
    pub reverse_agent: Option<ferry_replicator::status::Status>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ProgressView {
    pub phase: String,
    pub full_done: u64,
    pub full_total: u64,
    pub backlog_bytes: u64,
    pub rpo_lag_ms: u64,
    pub unix_time_ms: u64,
    /// While a full copy or compare runs: the seconds it needs yet at its rate so far.
    pub eta_s: Option<u64>,
}

/// Seconds left of a copy that was at `started` (bytes done, Unix ms) and is at `now`,
/// at the rate between the two; none before it has moved for two seconds.
fn eta_s(started: (u64, u64), now: (u64, u64), total: u64) -> Option<u64> {
    let (done, ms) = (now.0.checked_sub(started.0)?, now.1.checked_sub(started.1)?);
    if done == 0 || ms < 2000 {
        return None;
    }
    let left = u128::from(total.saturating_sub(now.0));
    u64::try_from(left * u128::from(ms) / u128::from(done) / 1000).ok()
}

/// A recovery point as the operator sees it; the last row is "latest" (`id` is `None`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PointView {
    pub id: Option<PointId>,
    pub seq: Seq,
    pub unix_time_ms: Option<u64>,
    pub consistent: bool,
    /// "scheduled", "manual" or "latest".
    pub kind: String,
}

impl PointView {
    /// The point a stored barrier makes.
    pub fn of_barrier(b: &ferry_wire::message::Barrier) -> Self {
        Self {
            id: Some(b.point),
            seq: b.seq,
            unix_time_ms: Some(b.unix_time_ms),
            consistent: b.consistent,
            kind: kind_name(b.kind).to_owned(),
        }
    }
}

fn kind_name(kind: PointKind) -> &'static str {
    match kind {
        PointKind::Scheduled => "scheduled",
        PointKind::Manual => "manual",
    }
}

/// The retained points of a server's store, oldest first, then "latest".
pub fn point_views(state: &ServerState) -> Vec<PointView> {
    let mut rows: Vec<PointView> = state
        .points()
        .iter()
        .map(|p| PointView {
            id: Some(p.id),
            seq: p.seq,
            unix_time_ms: Some(p.unix_time_ms),
            consistent: p.consistent,
            kind: kind_name(p.kind).to_owned(),
        })
        .collect();
    rows.push(PointView {
        id: None,
        seq: state.log.last_seq(),
        unix_time_ms: None,
        consistent: false,
        kind: "latest".to_owned(),
    });
    rows
}

impl Control {
    /// Whether anything of `server` can be recovered: its first full copy completed, or
    /// a point exists (the agent makes none before its catch-ups end, so a point proves
    /// a whole copy: this covers a catalogue upgraded from version 1 while its server
    /// was `interrupted`).
    pub(super) fn protected(&self, server: &ProtectedServer) -> bool {
        server.copied_unix_ms.is_some()
            || self
                .points(server.id.as_str())
                .is_ok_and(|points| points.iter().any(|p| p.id.is_some()))
    }

    /// Every managed server as the operator sees it.
    pub fn servers(&self) -> Vec<ServerView> {
        let ids: Vec<ServerId> = self
            .catalog()
            .servers()
            .iter()
            .map(|s| s.id.clone())
            .collect();
        let reverse: HashMap<ServerId, ferry_replicator::status::Status> = ids
            .iter()
            .filter_map(|id| Some((id.clone(), self.reverse_view(id)?)))
            .collect();
        let servers = self.catalog().servers().to_vec();
        for s in &servers {
            let known = self
                .live()
                .get(&s.id)
                .is_some_and(|l| l.last_point.is_some());
            if !known && let Ok(points) = self.points(s.id.as_str()) {
                let newest = points.into_iter().rev().find(|p| p.id.is_some());
                self.live().entry(s.id.clone()).or_default().last_point = newest;
            }
        }
        let live = self.live();
        servers
            .into_iter()
            .map(|server| {
                let l = live.get(&server.id);
                let last_point = l.and_then(|l| l.last_point.clone());
                ServerView {
                    shown_state: server.shown_state().to_owned(),
                    connected: l.is_some_and(|l| l.conn.is_some()),
                    protected: server.copied_unix_ms.is_some() || last_point.is_some(),
                    progress: l.and_then(|l| Some((l.progress?, l.copy_started))).map(
                        |((p, at), started)| ProgressView {
                            phase: match p.phase {
                                ReplicationPhase::Full => "full",
                                ReplicationPhase::Realtime => "realtime",
                            }
                            .to_owned(),
                            full_done: p.full_done,
                            full_total: p.full_total,
                            backlog_bytes: p.backlog_bytes,
                            rpo_lag_ms: p.rpo_lag_ms,
                            unix_time_ms: at,
                            eta_s: started.and_then(|s| eta_s(s, (p.full_done, at), p.full_total)),
                        },
                    ),
                    last_point,
                    reverse_agent: reverse.get(&server.id).cloned(),
                    server,
                }
            })
            .collect()
    }

    pub fn server(&self, id: &str) -> Result<ServerView, CatalogError> {
        self.catalog().server(id)?;
        self.servers()
            .into_iter()
            .find(|s| s.server.id.as_str() == id)
            .ok_or_else(|| CatalogError::UnknownServer(id.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_read_and_write_the_json_they_always_have() {
        let golden = r#"[{"id":7,"seq":42,"unix_time_ms":5,"consistent":true,"kind":"manual"},{"id":null,"seq":43,"unix_time_ms":null,"consistent":false,"kind":"latest"}]"#;
        let read: Vec<PointView> = serde_json::from_str(golden).expect("the golden points read");
        assert_eq!(
            (read[0].id, read[0].seq, read[1].id),
            (Some(PointId::new(7)), Seq::new(42), None)
        );
        assert_eq!(
            serde_json::to_string(&read).expect("serializes"),
            golden,
            "points are written as they were read"
        );
    }

    use crate::catalog::{Pair, PairKind};
    use crate::control::ControlError;
    use crate::instance::{Launcher, Spec};
    use crate::lifecycle::{Phase, Step};
    use ferry_standby::points::PointSelector;
    use ferry_standby::receiver::ControlPlane;
    use ferry_wire::message::Progress;

    fn report(control: &Control, id: &ServerId, phase: ReplicationPhase, done: u64) {
        control.progress(
            id,
            Progress {
                phase,
                full_done: done,
                full_total: 100 << 30,
                backlog_bytes: 100 << 30,
                rpo_lag_ms: 300,
            },
        );
    }

    fn latest_point_barrier(id: &ServerId) -> ferry_wire::message::Barrier {
        ferry_wire::message::Barrier {
            server: id.clone(),
            seq: Seq::new(7),
            point: PointId::new(1_795_533_480_000),
            kind: PointKind::Scheduled,
            consistent: true,
            unix_time_ms: 1_795_533_480_000,
            registration: [0; 32],
            seal: [0; 32],
            mac: [0; 32],
        }
    }

    fn latest_drill(control: &Control) -> ControlError {
        let spec = Spec {
            point: PointSelector::Latest,
            launcher: Launcher::Qemu,
            script: None,
            cpus: 1,
            memory_mib: 256,
            network: None,
            ip: None,
            forward: Vec::new(),
        };
        control.drill_start("web-1", spec, None).unwrap_err()
    }

    #[test]
    fn a_server_is_not_protected_until_its_first_full_copy_and_latest_is_refused_until_then() {
        let dir = tempfile::tempdir().unwrap();
        let control = Control::open(dir.path(), HashMap::new()).unwrap();
        let id = ServerId::new("web-1").unwrap();
        control
            .change(|c| {
                c.create_pair(Pair {
                    name: "prod".into(),
                    kind: PairKind::ZoneToZone,
                    primary: "zone-a".into(),
                    secondary: "zone-b".into(),
                })?;
                c.add_server("prod", id.clone())?;
                c.step("web-1", Step::AgentRegistered)?;
                c.step("web-1", Step::ReplicationStart)
            })
            .unwrap();
        let view = |c: &Control| c.servers().into_iter().next().unwrap();

        report(&control, &id, ReplicationPhase::Full, 10 << 30);
        let v = view(&control);
        assert!(!v.protected, "protected during its first full copy: {v:?}");
        assert_eq!(
            v.progress.unwrap().rpo_lag_ms,
            300,
            "the agent's lag is kept, not shown"
        );
        // The link drops mid-copy: `interrupted` allows "latest" once copied, not before.
        control
            .change(|c| c.step("web-1", Step::Forward(Phase::Interrupted)))
            .unwrap();
        assert!(
            matches!(latest_drill(&control), ControlError::NotProtectedYet(_)),
            "{}",
            latest_drill(&control)
        );
        assert!(!view(&control).protected);

        // A stored point proves a whole copy (an upgraded catalogue's interrupted server).
        let mut point = latest_point_barrier(&id);
        control.point_stored(&id, &point);
        assert!(
            !matches!(latest_drill(&control), ControlError::NotProtectedYet(_)),
            "latest refused although a point exists"
        );
        assert_eq!(
            view(&control).server.copied_unix_ms,
            Some(point.unix_time_ms)
        );
        // The first real time does not move it.
        point.unix_time_ms += 1;
        report(&control, &id, ReplicationPhase::Realtime, 100 << 30);
        assert!(view(&control).protected);
        assert_eq!(
            view(&control).server.copied_unix_ms,
            Some(point.unix_time_ms - 1)
        );
        // A later catch-up (a reboot's gap) does not make it unprotected, across restarts.
        report(&control, &id, ReplicationPhase::Full, 0);
        drop(control);
        let control = Control::open(dir.path(), HashMap::new()).unwrap();
        let v = view(&control);
        assert!(v.protected && v.server.copied_unix_ms.is_some(), "{v:?}");
        assert!(
            matches!(latest_drill(&control), ControlError::LatestInconsistent(..)),
            "{}",
            latest_drill(&control)
        );
    }

    #[test]
    fn a_copy_eta_follows_its_rate_and_waits_for_it() {
        let gib = 1u64 << 30;
        assert_eq!(eta_s((0, 0), (10 * gib, 10_000), 100 * gib), Some(90));
        assert_eq!(
            eta_s((10 * gib, 5_000), (20 * gib, 25_000), 100 * gib),
            Some(160)
        );
        assert_eq!(
            eta_s((0, 0), (10 * gib, 1_000), 100 * gib),
            None,
            "too soon"
        );
        assert_eq!(eta_s((0, 0), (0, 60_000), 100 * gib), None, "not moving");
        assert_eq!(eta_s((5, 0), (4, 60_000), 100 * gib), None, "went back");
    }
}
