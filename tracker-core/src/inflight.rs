//! Writes submitted but not yet seen completing. Their ranges are dirty but not readable
//! (DESIGN.md I4): reading before the write completes may return the old data.
//!
//! Completions are best effort (some never reach BPF), so an entry that waits longer
//! than the sweep age is resolved by [`InFlight::sweep`]: its range becomes readable and
//! is reported as suspect, to be read again inside the next consistent point's freeze.

use crate::range::{ByteRange, RangeSet};
use ferry_wire::DiskId;
use std::collections::HashMap;

#[derive(Debug, Clone)]
struct Entry {
    disk: DiskId,
    /// The part not yet seen completing. A split bio completes piece by piece; pieces
    /// beyond the first are in `more` (rare: kept off the common path's allocations).
    remaining: ByteRange,
    more: Vec<ByteRange>,
    since_ns: u64,
}

impl Entry {
    fn pieces(&self) -> impl Iterator<Item = ByteRange> + '_ {
        std::iter::once(self.remaining)
            .chain(self.more.iter().copied())
            .filter(|r| !r.is_empty())
    }
}

/// The in-flight table, keyed by submission id.
#[derive(Debug, Default)]
pub struct InFlight {
    entries: HashMap<u64, Entry>,
    /// Ids for entries made up by userspace (lost events); counting down from the top so
    /// they never meet the kernel's ids (CPU number << 40 | a per-CPU count from 1).
    next_synthetic: u64,
}

impl InFlight {
    pub fn new() -> Self {
        Self {
            entries: HashMap::new(),
            next_synthetic: u64::MAX,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Records a submission.
    pub fn submit(&mut self, id: u64, disk: DiskId, range: ByteRange, since_ns: u64) {
        self.entries.insert(
            id,
            Entry {
                disk,
                remaining: range,
                more: Vec::new(),
                since_ns,
            },
        );
    }

    /// Records a range that may be in flight though no submission was seen (a lost
    /// event): it waits for the sweep like a write whose completion never came.
    pub fn submit_unseen(&mut self, disk: DiskId, range: ByteRange, since_ns: u64) {
        let id = self.next_synthetic;
        self.next_synthetic -= 1;
        self.submit(id, disk, range, since_ns);
    }

    /// Whether submission `id` is in flight.
    pub fn contains(&self, id: u64) -> bool {
        self.entries.contains_key(&id)
    }

    /// Records that submission `id` also has `range` in flight (a split part read from
    /// the kernel's in-flight table). Returns false, changing nothing, when that range is
    /// already part of the entry or the id is unknown.
    pub fn add_piece(&mut self, id: u64, range: ByteRange) -> bool {
        let Some(entry) = self.entries.get_mut(&id) else {
            return false;
        };
        if range.is_empty()
            || entry
                .pieces()
                .any(|p| p.start <= range.start && range.end <= p.end)
        {
            return false;
        }
        if entry.remaining.is_empty() {
            entry.remaining = range;
        } else {
            entry.more.push(range);
        }
        true
    }

    /// Records the completion of `range` of submission `id`; returns whether the id was
    /// in flight. Unknown ids (already swept, submitted before tracking began, or never
    /// read from the kernel's table) are fine: the caller marks the range anyway.
    pub fn complete(&mut self, id: u64, range: ByteRange) -> bool {
        let Some(entry) = self.entries.get_mut(&id) else {
            return false;
        };
        if entry.more.is_empty()
            && range.start <= entry.remaining.start
            && range.end >= entry.remaining.end
        {
            self.entries.remove(&id); // the common case: the whole write completed
            return true;
        }
        let pieces: Vec<ByteRange> = entry
            .pieces()
            .flat_map(|r| {
                let cut = r.intersect(&range);
                if cut.is_empty() {
                    [r, ByteRange::new(0, 0)]
                } else {
                    [
                        ByteRange::new(r.start, cut.start),
                        ByteRange::new(cut.end, r.end),
                    ]
                }
            })
            .filter(|p| !p.is_empty())
            .collect();
        match pieces.split_first() {
            None => {
                self.entries.remove(&id);
            }
            Some((first, rest)) => {
                entry.remaining = *first;
                entry.more = rest.to_vec();
            }
        }
        true
    }

    /// Removes every entry older than `cutoff_ns` and returns their ids and the ranges
    /// that become readable as suspect.
    pub fn sweep(&mut self, cutoff_ns: u64) -> (Vec<u64>, Vec<(DiskId, ByteRange)>) {
        let old: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, e)| e.since_ns < cutoff_ns)
            .map(|(&id, _)| id)
            .collect();
        let mut out = Vec::new();
        for &id in &old {
            let e = self.entries.remove(&id).expect("id just listed");
            out.extend(e.pieces().map(|r| (e.disk, r)));
        }
        (old, out)
    }

    /// Every range still in flight on `disk`.
    pub fn ranges(&self, disk: DiskId) -> RangeSet {
        let mut set = RangeSet::new();
        for e in self.entries.values().filter(|e| e.disk == disk) {
            for r in e.pieces() {
                set.insert(r);
            }
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_completions_resolve_piece_by_piece_and_the_sweep_takes_the_rest() {
        let mut f = InFlight::new();
        let d = DiskId::new(0);
        f.submit(1, d, ByteRange::new(0, 8192), 100);
        f.submit(2, d, ByteRange::new(65536, 69632), 200);
        f.complete(1, ByteRange::new(0, 4096));
        assert_eq!(
            f.ranges(d).iter().collect::<Vec<_>>(),
            [ByteRange::new(4096, 8192), ByteRange::new(65536, 69632)]
        );
        f.complete(1, ByteRange::new(4096, 8192));
        assert_eq!(f.len(), 1);
        f.complete(99, ByteRange::new(0, 1)); // unknown id: ignored
        f.submit_unseen(d, ByteRange::new(1 << 20, 2 << 20), 300);
        assert_eq!(f.sweep(250).1, vec![(d, ByteRange::new(65536, 69632))]);
        assert_eq!(f.sweep(1000).1, vec![(d, ByteRange::new(1 << 20, 2 << 20))]);
        assert!(f.is_empty());
    }

    #[test]
    fn pieces_read_from_the_kernel_map_join_their_submission_once() {
        let mut f = InFlight::new();
        let d = DiskId::new(0);
        assert!(!f.add_piece(1, ByteRange::new(0, 4096)), "unknown id");
        f.submit(1, d, ByteRange::new(0, 8192), 100);
        assert!(
            !f.add_piece(1, ByteRange::new(4096, 8192)),
            "already covered"
        );
        f.complete(1, ByteRange::new(0, 8192));
        assert!(!f.contains(1));
        f.submit(2, d, ByteRange::new(0, 4096), 100);
        assert!(f.add_piece(2, ByteRange::new(4096, 12288)));
        f.complete(2, ByteRange::new(0, 4096));
        assert_eq!(
            f.ranges(d).iter().collect::<Vec<_>>(),
            [ByteRange::new(4096, 12288)]
        );
        f.complete(2, ByteRange::new(4096, 12288));
        assert!(f.is_empty());
    }
}
