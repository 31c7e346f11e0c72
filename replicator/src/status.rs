//! What a running agent reports: phase, progress, backlog, RPO lag, drops, last ack,
//! catch-ups and points. Written atomically to `status.json` in the agent's state
//! directory (twice a second) and read by `ferry agent status`.

use ferry_wire::{PointId, Seq};
use serde::{Deserialize, Serialize};
use std::io;
use std::path::Path;

/// The phases of DESIGN.md §5 that the agent itself goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Sizing the work: tracker started, disks registered.
    Starting,
    /// Copying whole disks (first start, or a tracking gap).
    Full,
    /// Continuous replication.
    Realtime,
    /// Connected, but the standby takes no records yet (its operator has not started
    /// replication, or stopped it); tracking goes on and the agent asks again.
    Waiting,
    /// The link is down; the agent reconnects by itself (auto-restart).
    Interrupted,
    /// Stopped on an error that needs an operator.
    Error,
    /// Stopped by the operator.
    Stopped,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Full => "full",
            Phase::Realtime => "realtime",
            Phase::Waiting => "waiting",
            Phase::Interrupted => "interrupted",
            Phase::Error => "error",
            Phase::Stopped => "stopped",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskStatus {
    pub name: String,
    pub path: String,
    pub size: u64,
    /// Bytes dirty (changed and not yet acknowledged).
    pub dirty_bytes: u64,
    /// A catch-up in progress (full copy or digest compare): the disk's bytes and how
    /// many are done (compared, then acknowledged).
    pub full_total: u64,
    pub full_done: u64,
    /// Why the disk's tracking has a gap (what started its catch-up), if it has one.
    pub gap: Option<String>,
    /// The running catch-up's method ("full copy" or "digest compare").
    pub catch_up: Option<String>,
    /// The last catch-up that finished.
    pub last_catch_up: Option<CatchUpReport>,
    /// Payload bytes of this disk read and shipped.
    pub shipped_bytes: u64,
}

/// What a finished catch-up did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatchUpReport {
    pub method: String,
    pub reason: String,
    /// Bytes compared by digest (0 for a full copy) and bytes found different (the whole
    /// disk for a full copy).
    pub compared_bytes: u64,
    pub differing_bytes: u64,
    /// Bytes of the disk shipped while it ran (what differed, and writes meanwhile).
    pub shipped_bytes: u64,
    pub millis: u64,
}

/// A recovery point the agent made (or failed to make).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointStatus {
    pub unix_time_ms: u64,
    pub ok: bool,
    pub point: Option<PointId>,
    pub seq: Option<Seq>,
    pub consistent: bool,
    /// How long the filesystems were frozen.
    pub freeze_ms: u64,
    pub frozen: Vec<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub server: String,
    pub pid: u32,
    pub phase: Option<Phase>,
    pub standby: String,
    pub disks: Vec<DiskStatus>,
    /// Bytes dirty plus bytes sent and not yet acknowledged.
    pub backlog_bytes: u64,
    /// How long the oldest change the standby does not hold durably has waited (since
    /// its submission, to within the tracker's 20 ms drain): the data a failover now would
    /// lose is at most this old. 0 when everything is durable.
    pub rpo_lag_ms: u64,
    /// Payload bytes read and shipped (records), and records sent.
    pub shipped_bytes: u64,
    pub records_sent: u64,
    pub acked_seq: u64,
    pub last_ack_unix_ms: u64,
    /// Events the tracker's logs could not take (each leads to a catch-up of its range).
    pub drops: u64,
    /// Catch-ups started after a tracking gap (see each disk's `last_catch_up`).
    pub catch_ups: u64,
    pub reconnects: u64,
    pub reads_io_uring: bool,
    pub last_error: Option<String>,
    /// The standby's last warning on the link (a retryable refusal, e.g. its storage is
    /// full), and when it came (Unix ms).
    #[serde(default)]
    pub last_warning: Option<String>,
    #[serde(default)]
    pub last_warning_unix_ms: u64,
    pub last_point: Option<PointStatus>,
    pub updated_unix_ms: u64,
}

impl Status {
    /// Writes the status to `path` atomically (temporary file, rename).
    pub fn save(&self, path: &Path) -> io::Result<()> {
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)
    }

    pub fn load(path: &Path) -> io::Result<Self> {
        let text = std::fs::read(path)?;
        serde_json::from_slice(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_point_status_reads_and_writes_the_json_it_always_has() {
        // `ferry agent point --json` prints this, and `status.json` holds it.
        let golden = r#"{"unix_time_ms":5,"ok":true,"point":7,"seq":42,"consistent":true,"freeze_ms":3,"frozen":["/"],"error":null}"#;
        let read: PointStatus = serde_json::from_str(golden).expect("the golden point reads");
        assert_eq!(
            (read.point, read.seq),
            (Some(PointId::new(7)), Some(Seq::new(42)))
        );
        assert_eq!(
            serde_json::to_string(&read).expect("serializes"),
            golden,
            "a point status is written as it was read"
        );
    }
}
