//! What the tracker knows, fed by events: per disk the dirty map and the suspect set, and
//! the writes still in flight. Pure (no BPF, no clock): the kernel side is in `sys`, the
//! glue in `tracker`; this is where DESIGN.md I3 and I4 are kept, and unit-tested.
//!
//! - A submission marks its range dirty at once (no write goes unnoticed) and in flight
//!   (not readable). The kernel side keeps submissions in its in-flight table, read on
//!   every poll ([`TrackState::seen_in_flight`]); a write that completed before any read
//!   of the map is known by its completion alone, which carries the same id and range.
//! - A completion, of any status, marks its range dirty again with a newer generation
//!   (so a read that began earlier cannot clear it) and takes it out of flight: readable.
//!   A failed write is read too: the device holds whatever the failure left.
//! - A range lost to a full event log (known from the fallback counters) is marked dirty
//!   and in flight as of when the loss was seen, so it becomes readable only after the
//!   sweep age, as suspect.
//! - An entry older than the sweep age becomes readable as suspect.
//! - A clock of (generation, time) samples, one per [`TrackState::tick`] that saw new
//!   marks, tells how long the oldest unshipped change has waited: the RPO lag.

use crate::dirty::{DirtyMap, Generation};
use crate::event::{Event, Kind, Op};
use crate::inflight::InFlight;
use crate::range::{ByteRange, RangeSet};
use ferry_wire::DiskId;
use std::collections::{HashSet, VecDeque};

/// Clock samples kept: at one per 20 ms drain, the last 20 minutes; an older change is
/// reported as at least that old.
const CLOCK_SAMPLES: usize = 60_000;

/// One protected disk's tracking state.
#[derive(Debug, Default)]
pub struct DiskState {
    pub dirty: DirtyMap,
    /// Ranges made readable by the sweep rather than by a completion: re-read them inside
    /// the next consistent point's freeze.
    pub suspect: RangeSet,
}

/// A range that just became readable, for reporting (`ferry track`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readable {
    pub disk: DiskId,
    pub range: ByteRange,
    pub op: Op,
    /// Non-zero when the write failed.
    pub status: u8,
}

/// Counts of what the tracker saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub submitted: u64,
    pub completed: u64,
    pub failed: u64,
    pub swept: u64,
    pub untracked: u64,
    pub fallback_ranges: u64,
}

/// The tracker's state for all protected disks.
#[derive(Debug)]
pub struct TrackState {
    disks: Vec<DiskState>,
    inflight: InFlight,
    generation: Generation,
    /// (generation, monotonic ns) at each tick that saw new marks, oldest first.
    clock: VecDeque<(Generation, u64)>,
    /// Ids swept while their entry may still be in the kernel's in-flight table (a
    /// completion that never reached BPF leaves it there): not submitted again when the
    /// map is read. Pruned by [`TrackState::retain_retired`].
    retired: HashSet<u64>,
    pub counters: Counters,
}

/// An event for a disk this state does not track (a BPF map out of step).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event for disk {0:?}, which is not protected")]
pub struct UnknownDisk(pub DiskId);

impl TrackState {
    pub fn new(disks: usize) -> Self {
        Self {
            disks: (0..disks).map(|_| DiskState::default()).collect(),
            inflight: InFlight::new(),
            generation: Generation::default(),
            clock: VecDeque::new(),
            retired: HashSet::new(),
            counters: Counters::default(),
        }
    }

    pub fn disk(&self, disk: DiskId) -> &DiskState {
        &self.disks[disk.index()]
    }

    pub fn disk_mut(&mut self, disk: DiskId) -> &mut DiskState {
        &mut self.disks[disk.index()]
    }

    pub fn disks(&self) -> usize {
        self.disks.len()
    }

    /// Marks `range` dirty at a new generation.
    pub fn mark_dirty(&mut self, disk: DiskId, range: ByteRange) {
        let g = self.generation.bump();
        self.disks[disk.index()].dirty.mark(range, g);
    }

    /// Applies one event; returns what became readable, if anything.
    pub fn apply(&mut self, e: &Event) -> Result<Option<Readable>, UnknownDisk> {
        if e.disk.index() >= self.disks.len() {
            return Err(UnknownDisk(e.disk));
        }
        self.mark_dirty(e.disk, e.range);
        match e.kind {
            Kind::Submit { untracked } => {
                self.counters.untracked += u64::from(untracked);
                // A known id: a part of it the kernel reports as untracked (its entry
                // was replaced); the parts already in flight stay so.
                self.follow(e.id, e.disk, e.range, e.seen_ns);
                Ok(None)
            }
            Kind::Complete { status } => {
                let known = self.inflight.complete(e.id, e.range)
                    || (!self.retired.is_empty() && self.retired.remove(&e.id));
                if !known {
                    // Submitted and completed between two reads of the in-flight table.
                    self.counters.submitted += 1;
                }
                self.counters.completed += 1;
                self.counters.failed += u64::from(status != 0);
                Ok(Some(Readable {
                    disk: e.disk,
                    range: e.range,
                    op: e.op,
                    status,
                }))
            }
        }
    }

    /// Records a submission read from the kernel's in-flight table (dirty, in flight).
    /// Returns true when it is news: an id not seen before, or a part of a split write
    /// not yet known. Ids already swept are ignored.
    pub fn seen_in_flight(
        &mut self,
        id: u64,
        disk: DiskId,
        range: ByteRange,
        since_ns: u64,
    ) -> Result<bool, UnknownDisk> {
        if disk.index() >= self.disks.len() {
            return Err(UnknownDisk(disk));
        }
        let swept = !self.inflight.contains(id) && self.retired.contains(&id);
        if swept || !self.follow(id, disk, range, since_ns) {
            return Ok(false);
        }
        self.mark_dirty(disk, range);
        Ok(true)
    }

    /// Puts `range` of submission `id` in flight: a new part of a known id, or a new
    /// submission. Returns false when it was already known.
    fn follow(&mut self, id: u64, disk: DiskId, range: ByteRange, since_ns: u64) -> bool {
        if self.inflight.contains(id) {
            return self.inflight.add_piece(id, range);
        }
        self.counters.submitted += 1;
        self.inflight.submit(id, disk, range, since_ns);
        true
    }

    /// Forgets swept ids for which `still_mapped` is false (their kernel entry is gone).
    pub fn retain_retired(&mut self, mut still_mapped: impl FnMut(u64) -> bool) {
        self.retired.retain(|&id| still_mapped(id));
    }

    /// Records a range whose events were lost, seen at `now_ns`.
    pub fn lost(&mut self, disk: DiskId, range: ByteRange, now_ns: u64) {
        self.counters.fallback_ranges += 1;
        self.mark_dirty(disk, range);
        self.inflight.submit_unseen(disk, range, now_ns);
    }

    /// Resolves in-flight entries older than `cutoff_ns`: readable, suspect.
    pub fn sweep(&mut self, cutoff_ns: u64) -> Vec<(DiskId, ByteRange)> {
        let (ids, swept) = self.inflight.sweep(cutoff_ns);
        self.retired.extend(ids);
        for &(disk, range) in &swept {
            self.counters.swept += 1;
            self.mark_dirty(disk, range);
            self.disks[disk.index()].suspect.insert(range);
        }
        swept
    }

    /// Ranges of `disk` that must not be read yet.
    pub fn in_flight(&self, disk: DiskId) -> RangeSet {
        self.inflight.ranges(disk)
    }

    /// Number of writes in flight, all disks.
    pub fn in_flight_count(&self) -> usize {
        self.inflight.len()
    }

    /// Records that the generation was still the current one at `now_ns`: a sample
    /// `(g, t)` says that every later generation came after `t`.
    pub fn tick(&mut self, now_ns: u64) {
        match self.clock.back_mut() {
            Some((g, t)) if *g == self.generation => *t = now_ns,
            _ => {
                self.clock.push_back((self.generation, now_ns));
                if self.clock.len() > CLOCK_SAMPLES {
                    self.clock.pop_front();
                }
            }
        }
    }

    /// Since when (monotonic ns) the oldest change still dirty on any disk has waited,
    /// or `None` when nothing is dirty: the last tick at which its generation did not
    /// exist yet — never after the change, at most one tick before it. (A change older
    /// than every sample is dated by the oldest sample.)
    pub fn dirty_since_ns(&self) -> Option<u64> {
        let g = self
            .disks
            .iter()
            .filter_map(|d| d.dirty.dirty_since())
            .min()?;
        let before = self.clock.partition_point(|&(sg, _)| sg < g);
        self.clock.get(before.saturating_sub(1)).map(|&(_, t)| t)
    }

    /// The current generation: what a reader records when it picks a range.
    pub fn generation(&self) -> Generation {
        self.generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_dirty_change_is_dated_by_the_tick_before_it_was_seen() {
        let mut s = TrackState::new(1);
        assert_eq!(s.dirty_since_ns(), None);
        s.tick(50);
        s.mark_dirty(DiskId::new(0), ByteRange::new(0, 4096));
        s.tick(100);
        s.mark_dirty(DiskId::new(0), ByteRange::new(1 << 20, (1 << 20) + 4096));
        s.tick(200);
        assert_eq!(
            s.dirty_since_ns(),
            Some(50),
            "the first change, by the tick before it"
        );
        let g = s.generation();
        s.disk_mut(DiskId::new(0))
            .dirty
            .clear_if_unchanged(ByteRange::new(0, 4096), g);
        assert_eq!(s.dirty_since_ns(), Some(100), "now the second change");
        s.disk_mut(DiskId::new(0))
            .dirty
            .clear_if_unchanged(ByteRange::new(0, 2 << 20), g);
        assert_eq!(s.dirty_since_ns(), None, "nothing left to wait for");
        // A quiet spell: the clock keeps up, so a change after it is not dated back.
        s.tick(300);
        s.tick(5000);
        s.mark_dirty(DiskId::new(0), ByteRange::new(0, 4096));
        assert_eq!(
            s.dirty_since_ns(),
            Some(5000),
            "seen by no tick yet: the last tick"
        );
        s.tick(5020);
        assert_eq!(s.dirty_since_ns(), Some(5000), "seen: the tick before");
    }

    fn ev(id: u64, kind: Kind, start: u64, end: u64, t: u64) -> Event {
        Event {
            id,
            disk: DiskId::new(0),
            range: ByteRange::new(start, end),
            op: Op::Write,
            kind,
            seen_ns: t,
        }
    }

    #[test]
    fn dirty_at_submission_readable_at_completion() {
        let mut s = TrackState::new(1);
        let submit = Kind::Submit { untracked: false };
        assert_eq!(s.apply(&ev(1, submit, 0, 8192, 10)).unwrap(), None);
        assert_eq!(
            s.disk(DiskId::new(0)).dirty.bytes(),
            8192,
            "not dirty at submission"
        );
        let readable = |s: &TrackState| {
            s.disk(DiskId::new(0))
                .dirty
                .next_readable(0, 1 << 20, &[&s.in_flight(DiskId::new(0))])
        };
        assert_eq!(readable(&s), None, "readable before completion");
        let (_, before) = (0, s.generation());
        let done = s
            .apply(&ev(1, Kind::Complete { status: 0 }, 0, 8192, 20))
            .unwrap()
            .unwrap();
        assert_eq!(done.range, ByteRange::new(0, 8192));
        let (r, g) = readable(&s).expect("readable after completion");
        assert_eq!(r, ByteRange::new(0, 8192));
        assert!(g > before, "completion must bump the generation");
        // A reader that picked before the completion cannot clear it.
        assert_eq!(
            s.disk_mut(DiskId::new(0))
                .dirty
                .clear_if_unchanged(r, before),
            0
        );
    }

    #[test]
    fn submissions_read_from_the_kernel_map_are_dirty_and_in_flight_once() {
        let mut s = TrackState::new(1);
        let d = DiskId::new(0);
        assert!(s.seen_in_flight(1, d, ByteRange::new(0, 8192), 10).unwrap());
        assert!(!s.seen_in_flight(1, d, ByteRange::new(0, 8192), 10).unwrap());
        assert_eq!(s.disk(d).dirty.bytes(), 8192, "not dirty when first read");
        assert_eq!(s.in_flight_count(), 1);
        assert!(
            s.seen_in_flight(9, DiskId::new(1), ByteRange::new(0, 1), 10)
                .is_err()
        );
        // The kernel reports a part of it as untracked (its entry replaced): the write
        // stays one submission, wholly in flight.
        s.apply(&ev(1, Kind::Submit { untracked: true }, 4096, 8192, 10))
            .unwrap();
        assert_eq!(s.counters.submitted, 1);
        assert_eq!(
            s.in_flight(d).iter().collect::<Vec<_>>(),
            [ByteRange::new(0, 8192)]
        );
        // A write that completed before any read of the map: known by its completion.
        let g = s.generation();
        let done = s
            .apply(&ev(
                2,
                Kind::Complete { status: 0 },
                1 << 20,
                (1 << 20) + 4096,
                20,
            ))
            .unwrap();
        assert!(done.is_some());
        assert!(s.generation() > g);
        assert_eq!(s.counters.submitted, 2, "one submission per write");
        assert_eq!(s.disk(d).dirty.bytes(), 8192 + 4096);
        // Swept while its kernel entry stays (its completion never reached BPF): reading
        // the map again does not submit it anew, until the entry is gone.
        assert_eq!(s.sweep(100).len(), 1);
        assert!(!s.seen_in_flight(1, d, ByteRange::new(0, 8192), 10).unwrap());
        assert_eq!(s.in_flight_count(), 0);
        s.retain_retired(|_| false);
        assert!(s.seen_in_flight(1, d, ByteRange::new(0, 8192), 10).unwrap());
    }

    #[test]
    fn lost_completions_and_lost_events_end_readable_and_suspect() {
        let mut s = TrackState::new(1);
        s.apply(&ev(1, Kind::Submit { untracked: false }, 0, 4096, 10))
            .unwrap();
        s.lost(DiskId::new(0), ByteRange::new(1 << 20, 2 << 20), 50);
        assert_eq!(s.sweep(40), vec![(DiskId::new(0), ByteRange::new(0, 4096))]);
        assert_eq!(
            s.sweep(60),
            vec![(DiskId::new(0), ByteRange::new(1 << 20, 2 << 20))]
        );
        let d = s.disk(DiskId::new(0));
        assert_eq!(d.suspect.bytes(), 4096 + (1 << 20));
        assert_eq!(d.dirty.bytes(), 4096 + (1 << 20));
        assert!(s.in_flight(DiskId::new(0)).is_empty());
        assert!(
            s.apply(&ev(1, Kind::Submit { untracked: false }, 0, 1, 0).clone())
                .is_ok()
        );
        let unknown = Event {
            disk: DiskId::new(3),
            ..ev(1, Kind::Complete { status: 0 }, 0, 512, 0)
        };
        assert_eq!(s.apply(&unknown), Err(UnknownDisk(DiskId::new(3))));
    }
}
