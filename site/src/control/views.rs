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
                ServerView {
                    shown_state: server.shown_state().to_owned(),
                    connected: l.is_some_and(|l| l.conn.is_some()),
                    progress: l.and_then(|l| l.progress).map(|(p, at)| ProgressView {
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
                    }),
                    last_point: l.and_then(|l| l.last_point.clone()),
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
}
