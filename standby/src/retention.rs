//! Retention and log cleaning.
//!
//! **Policy** ([`Policy`]): an interval in hours and a number of points to keep (default:
//! 1 hour, keep 24). Applied newest first:
//! 1. among *scheduled* points, only the newest in each interval-long time bucket
//!    (`unix_time / interval`) is kept — an agent that makes points more often than the
//!    policy asks does not crowd out older ones; manual points are never thinned;
//! 2. of what remains, the `keep` newest are retained; the rest expire.
//!
//! Both steps only ever expire more points as newer ones arrive, so the outcome is
//! stable; dropped points are persisted anyway ([`crate::points::Catalog`]).
//!
//! **Cleaning** works from the plaintext index alone (DESIGN.md I6; the MAC key is used
//! to re-verify what is copied, never a data key). A record is *live* if it is the newest
//! record for some byte of its disk at a retained point or at the log's head ("latest");
//! a barrier is live if its point is retained; the entry with the highest seq is always
//! kept (it is what tells a reconnecting agent where to resume). A sealed segment with no
//! live frame is deleted; one with less than half its frame bytes live has its live
//! frames copied (checked: CRC, index match, MAC) into the active segment, fsynced, and
//! is then deleted. A crash in between leaves two copies of some frames, which opening
//! the log resolves (same seq, same bytes).

use crate::extent_map::ExtentMap;
use crate::index::{Entry, EntryKind, SegmentNo};
use crate::log::LogError;
use crate::points::Point;
use crate::segment::{self, Corruption, ScanError};
use crate::server::{IngestError, ServerState};
use ferry_wire::message::PointKind;
use ferry_wire::{DiskId, MacKey, Message, PointId, Seq};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

/// How many points a server keeps, and how far apart scheduled ones are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Hours between kept scheduled points. Default 1; 1 to 720.
    #[serde(default = "default_interval")]
    pub interval_hours: u32,
    /// Points kept. Default 24; 1 to 10000.
    #[serde(default = "default_keep")]
    pub keep: u32,
}

fn default_interval() -> u32 {
    1
}
fn default_keep() -> u32 {
    24
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            interval_hours: default_interval(),
            keep: default_keep(),
        }
    }
}

/// Why retention or cleaning failed. Nothing is deleted before what replaces it is durable.
#[derive(Debug, thiserror::Error)]
pub enum CleanError {
    #[error("retention policy: {0}")]
    BadPolicy(String),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Corrupt(#[from] Corruption),
    #[error("cannot persist dropped points")]
    Catalog(#[source] IngestError),
}

impl CleanError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, CleanError::Log(e) if e.is_retryable())
    }
}

impl From<ScanError> for CleanError {
    fn from(e: ScanError) -> Self {
        CleanError::Log(e.into())
    }
}

impl Policy {
    pub fn check(&self) -> Result<(), CleanError> {
        if !(1..=720).contains(&self.interval_hours) {
            return Err(CleanError::BadPolicy(format!(
                "interval_hours is {} (1 to 720)",
                self.interval_hours
            )));
        }
        if !(1..=10_000).contains(&self.keep) {
            return Err(CleanError::BadPolicy(format!(
                "keep is {} (1 to 10000)",
                self.keep
            )));
        }
        Ok(())
    }

    /// The barrier seqs of the points in `points` (oldest first) that expire.
    pub fn expired(&self, points: &[Point]) -> Vec<Seq> {
        let bucket_ms = u64::from(self.interval_hours) * 3_600_000;
        let mut seen_buckets = HashSet::new();
        let mut kept = 0u32;
        let mut expired = Vec::new();
        for p in points.iter().rev() {
            let thinned =
                p.kind == PointKind::Scheduled && !seen_buckets.insert(p.unix_time_ms / bucket_ms);
            if thinned || kept >= self.keep {
                expired.push(p.seq);
            } else {
                kept += 1;
            }
        }
        expired.reverse();
        expired
    }
}

/// What a retention run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanReport {
    pub points_dropped: Vec<PointId>,
    pub points_retained: usize,
    /// Bytes the server's segments occupied before and after.
    pub space_before: u64,
    pub space_after: u64,
    pub segments_removed: usize,
    pub frames_copied: usize,
    pub bytes_copied: u64,
}

/// Which entries (parallel to `entries`, sorted by seq) are live given the retained
/// points' seqs (ascending) and whether a barrier's point is retained.
pub fn liveness(entries: &[Entry], retained: &[Seq]) -> Vec<bool> {
    let retained_set: HashSet<Seq> = retained.iter().copied().collect();
    let mut live = vec![false; entries.len()];
    let mut maps: HashMap<DiskId, ExtentMap<usize>> = HashMap::new();
    let mark = |maps: &HashMap<DiskId, ExtentMap<usize>>, live: &mut Vec<bool>| {
        for map in maps.values() {
            for (_, _, owner) in map.iter() {
                live[owner] = true;
            }
        }
    };
    let mut next_point = 0;
    for (i, e) in entries.iter().enumerate() {
        while next_point < retained.len() && retained[next_point] < e.seq {
            mark(&maps, &mut live);
            next_point += 1;
        }
        match e.what {
            EntryKind::Record { .. } => {
                let (disk, start, end) = e.disk_range().expect("a record");
                maps.entry(disk).or_default().insert(start, end, i);
            }
            EntryKind::Barrier { .. } => live[i] = retained_set.contains(&e.seq),
        }
    }
    mark(&maps, &mut live);
    if let Some(last) = live.last_mut() {
        *last = true;
    }
    live
}

/// Applies `policy` to a server: drops expired points (persisted first), then cleans the
/// log. Holds `state` for the whole run; the standby pauses that server's ingest meanwhile.
pub fn apply(
    state: &mut ServerState,
    policy: &Policy,
    mac_key: &MacKey,
) -> Result<CleanReport, CleanError> {
    policy.check()?;
    let space_before = state.log.space_used()?;
    let points = state.points();
    let expired = policy.expired(&points);
    let points_dropped = points
        .iter()
        .filter(|p| expired.contains(&p.seq))
        .map(|p| p.id)
        .collect();
    state.drop_points(&expired).map_err(CleanError::Catalog)?;
    let retained: Vec<Seq> = state.points().iter().map(|p| p.seq).collect();

    let entries = state.log.entries().to_vec();
    let live = liveness(&entries, &retained);
    let sealed: HashSet<SegmentNo> = state
        .log
        .segment_numbers()
        .into_iter()
        .filter(|&(_, active)| !active)
        .map(|(no, _)| no)
        .collect();
    let mut total: HashMap<SegmentNo, u64> = HashMap::new();
    let mut live_bytes: HashMap<SegmentNo, u64> = HashMap::new();
    for (e, &l) in entries.iter().zip(&live) {
        *total.entry(e.segment).or_default() += u64::from(e.frame_len);
        if l {
            *live_bytes.entry(e.segment).or_default() += u64::from(e.frame_len);
        }
    }
    // Sealed segments holding no entry at all (everything already moved) go too.
    let victims: Vec<SegmentNo> = sealed
        .iter()
        .copied()
        .filter(|no| {
            let live = live_bytes.get(no).copied().unwrap_or(0);
            live * 2 < total.get(no).copied().unwrap_or(0) || !total.contains_key(no)
        })
        .collect();
    let victim_set: HashSet<SegmentNo> = victims.iter().copied().collect();

    let mut report = CleanReport {
        points_dropped,
        points_retained: retained.len(),
        space_before,
        ..CleanReport::default()
    };
    let mut buf = Vec::new();
    let mut dead = HashSet::new();
    for (e, &l) in entries.iter().zip(&live) {
        if !victim_set.contains(&e.segment) {
            continue;
        }
        if !l {
            dead.insert(e.seq);
            continue;
        }
        let (file, path) = state
            .log
            .segment_file(e.segment)
            .expect("a victim segment is open");
        let message = segment::read_frame(file.as_ref(), &path, e.position, e.frame_len, &mut buf)?;
        check_matches(&message, e, &path, mac_key)?;
        state.log.copy_forward(&buf, &message)?;
        report.frames_copied += 1;
        report.bytes_copied += u64::from(e.frame_len);
    }
    if victims.is_empty() {
        report.space_after = space_before;
        return Ok(report);
    }
    state.log.sync()?;
    state.log.forget(&dead);
    state.log.remove_segments(&victims)?;
    report.segments_removed = victims.len();
    report.space_after = state.log.space_used()?;
    Ok(report)
}

/// Checks that a frame read back is the one the index describes, and (records) that its
/// MAC still verifies: cleaning never carries damage forward.
fn check_matches(
    message: &Message,
    entry: &Entry,
    path: &std::path::Path,
    mac_key: &MacKey,
) -> Result<(), Corruption> {
    let corrupt = |reason: String| Corruption {
        path: path.to_owned(),
        offset: entry.position.0,
        reason,
    };
    let found = segment::entry_of(message, entry.segment, entry.position, entry.frame_len);
    if found.as_ref() != Some(entry) {
        return Err(corrupt(format!(
            "frame does not match its index entry (seq {})",
            entry.seq
        )));
    }
    if let Message::Record(r) = message {
        ferry_wire::seal::verify(mac_key, r)
            .map_err(|e| corrupt(format!("record seq {}: {e}", entry.seq)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A point at `tenths` of an hour after the epoch.
    fn point(seq: u64, tenths: u64, kind: PointKind) -> Point {
        Point {
            id: PointId::new(seq),
            seq: Seq::new(seq),
            unix_time_ms: tenths * 360_000,
            consistent: false,
            kind,
        }
    }

    #[test]
    fn policy_keeps_the_newest_and_thins_scheduled_points_per_interval() {
        use PointKind::*;
        let points = [
            point(1, 1, Scheduled),
            point(2, 5, Scheduled), // same hour as 1: 1 is thinned
            point(3, 12, Manual),
            point(4, 15, Scheduled),
            point(5, 25, Scheduled),
            point(6, 26, Manual),
        ];
        let policy = Policy {
            interval_hours: 1,
            keep: 4,
        };
        assert_eq!(
            policy.expired(&points),
            vec![Seq::new(1), Seq::new(2)],
            "newest first: 6, 5, 4, 3 kept; 2 over the count, 1 thinned"
        );
        let all = Policy {
            interval_hours: 1,
            keep: 100,
        };
        assert_eq!(all.expired(&points), vec![Seq::new(1)]);
        assert!(
            Policy {
                interval_hours: 0,
                keep: 1
            }
            .check()
            .is_err()
        );
    }
}
