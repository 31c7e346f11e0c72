//! What the agent reports: the status file (`ferry agent status`) and the progress the
//! standby is told.

use super::parts::{DirtySource, ExtentReader, Freezer};
use super::{Agent, disk_id, lock, now_ms};
use crate::status::Phase;
use ferry_wire::message::{Progress, ReplicationPhase};
use std::time::{Duration, Instant};

impl<D: DirtySource, R: ExtentReader, F: Freezer> Agent<D, R, F> {
    pub(super) fn update_status(&mut self, force: bool) {
        if !force && self.last_status.elapsed() < Duration::from_millis(500) {
            return;
        }
        self.check_catch_ups();
        let (dirty, gaps, drops, dirty_since) = {
            let t = lock(&self.tracker);
            let disks = 0..self.sizes.len();
            let dirty: Vec<u64> = disks
                .clone()
                .map(|i| t.state().disk(disk_id(i)).dirty.bytes())
                .collect();
            let gaps: Vec<Option<String>> = disks
                .map(|i| t.gap(disk_id(i)).map(|g| g.0.clone()))
                .collect();
            let drops = t.drops();
            (dirty, gaps, drops, t.state().dirty_since_ns())
        };
        for (i, (bytes, gap)) in dirty.iter().zip(gaps).enumerate() {
            let d = &mut self.status.disks[i];
            d.dirty_bytes = *bytes;
            d.gap = gap;
            if self.catch_up[i].is_none() {
                d.full_done = d.full_total;
            }
        }
        let pending: u64 = self.pending.iter().map(|p| p.range.len()).sum();
        self.status.backlog_bytes = dirty.iter().sum::<u64>().max(pending);
        // Sent extents stay dirty until acknowledged: the oldest dirty change is the
        // oldest change the standby does not hold durably.
        self.status.rpo_lag_ms = dirty_since.map_or(0, |since| {
            ferry_tracker::sys::monotonic_ns().saturating_sub(since) / 1_000_000
        });
        self.status.drops = drops;
        self.status.phase = Some(if self.catch_up.iter().any(Option::is_some) {
            Phase::Full
        } else {
            Phase::Realtime
        });
        self.write_status();
    }
    pub(super) fn write_status(&mut self) {
        self.status.updated_unix_ms = now_ms();
        self.last_status = Instant::now();
        if let Err(e) = self.status.save(&self.config.status_path()) {
            tracing::warn!(error = %e, "cannot write the status file");
        }
    }
    /// What the standby is told about replication's progress.
    pub(super) fn progress(&self) -> Progress {
        let disks = &self.status.disks;
        Progress {
            phase: if self.catch_up.iter().any(Option::is_some) {
                ReplicationPhase::Full
            } else {
                ReplicationPhase::Realtime
            },
            full_done: disks.iter().map(|d| d.full_done).sum(),
            full_total: disks.iter().map(|d| d.full_total).sum(),
            backlog_bytes: self.status.backlog_bytes,
            rpo_lag_ms: self.status.rpo_lag_ms,
        }
    }
}
