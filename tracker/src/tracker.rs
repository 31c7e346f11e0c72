//! The tracker as the agent and `ferry track` use it: BPF programs ([`crate::sys::bpf`])
//! feeding the [`TrackState`], with the checks that turn every hole in the event stream
//! into something the replicator acts on (DESIGN.md I3):
//!
//! - lost events (a CPU's log full): the fallback counters say which chunks; they become
//!   dirty and unresolved, readable after the sweep age, suspect;
//! - lost completions: the sweep;
//! - a whole-disk fallback counter moving, programs loaded fresh while a previous agent
//!   had tracked (reboot, detach), an agent that stopped without saving its state, a
//!   newly protected disk: a **gap** — the disk needs a full digest catch-up.

use crate::sys::blockdev::{BlockDevice, DeviceError, KernelDev};
use crate::sys::bpf::{
    self, Bpf, BpfError, DiskInfo, FALLBACK_CHUNKS, InFlightEntry, LoadOptions, MAX_DISKS, Origin,
};
use crate::sys::monotonic_ns;
use ferry_tracker_core::dirty::GRAIN;
use ferry_tracker_core::event::{Event, sector_range};
use ferry_tracker_core::persist::{self, PersistError, Saved, SavedDisk};
use ferry_tracker_core::range::ByteRange;
use ferry_tracker_core::state::{Readable, TrackState, UnknownDisk};
use ferry_wire::DiskId;
use std::path::PathBuf;
use std::time::Duration;

/// How the tracker runs. Defaults in [`TrackerConfig::new`].
#[derive(Debug, Clone)]
pub struct TrackerConfig {
    /// Whole-disk block devices to protect (at most 32).
    pub devices: Vec<PathBuf>,
    /// Pin the BPF state here so it outlives the process (the agent); `None` detaches
    /// when the tracker drops (`ferry track`).
    pub pin_dir: Option<PathBuf>,
    /// Save the dirty map here on [`Tracker::stop`], restore it on start.
    pub state_file: Option<PathBuf>,
    /// Records in each CPU's event log (40 bytes each), rounded up to a power of two;
    /// default 32768 (1.25 MiB per CPU: 130 ms of 250k completions per second on one
    /// CPU, where the agent drains every 20 ms). Capped so that all CPUs' logs fit 32 MiB
    /// (never below 4096 per CPU); pinned programs keep the size they were loaded with.
    pub log_records: u32,
    /// A write not seen completing within this is resolved by the sweep; default 5 s.
    pub sweep_after: Duration,
}

impl TrackerConfig {
    pub fn new(devices: Vec<PathBuf>) -> Self {
        Self {
            devices,
            pin_dir: None,
            state_file: None,
            log_records: 32768,
            sweep_after: Duration::from_secs(5),
        }
    }
}

/// Why a disk's tracking has a hole that only a full digest catch-up can close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap(pub String);

/// Why the tracker could not start or go on.
#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Bpf(#[from] BpfError),
    #[error(transparent)]
    Persist(#[from] PersistError),
    #[error("{0} devices given; the tracker protects at most {MAX_DISKS}")]
    TooManyDisks(usize),
    #[error("{0} is listed twice")]
    Duplicate(PathBuf),
    #[error("malformed event from the BPF programs")]
    Event(#[from] ferry_tracker_core::event::EventError),
    #[error(transparent)]
    UnknownDisk(#[from] UnknownDisk),
}

/// Counts for status output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrackerStats {
    pub events: u64,
    /// Events that could not be applied (malformed, or for a disk no longer protected).
    pub malformed: u64,
    pub drops: u64,
    /// Runs of the submission programs the kernel skipped (each a gap).
    pub skipped_runs: u64,
    pub in_flight: usize,
    pub counters: ferry_tracker_core::state::Counters,
}

/// What one [`Tracker::poll`] saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Polled {
    /// Ranges submitted (dirty, not yet readable).
    pub submitted: Vec<(DiskId, ByteRange)>,
    /// Ranges whose writes completed. Readable unless another write to them is still in
    /// flight ([`TrackState::in_flight`]).
    pub completed: Vec<Readable>,
}

/// A running tracker.
#[derive(Debug)]
pub struct Tracker {
    bpf: Bpf,
    devices: Vec<BlockDevice>,
    state: TrackState,
    gaps: Vec<Option<Gap>>,
    /// Per disk, how many gaps were ever recorded: a full copy closes only the gap it
    /// started for, never one recorded while it ran.
    gap_counts: Vec<u64>,
    chunk_shift: Vec<u32>,
    fallback_seen: Vec<Vec<u64>>,
    drops_seen: u64,
    skipped_seen: u64,
    events: u64,
    /// Events that could not be applied (malformed, or for a disk no longer protected).
    counters_malformed: u64,
    epoch: u64,
    config: TrackerConfig,
    /// Reused buffer for the in-flight table's entries.
    mapped: Vec<InFlightEntry>,
}

/// log2 of the sectors per fallback chunk: at least 1 MiB, so that the disk fits
/// FALLBACK_CHUNKS chunks.
fn chunk_shift_for(size: u64) -> u32 {
    let sectors = size.div_ceil(512);
    let mut shift = 11;
    while (sectors >> shift) >= u64::from(FALLBACK_CHUNKS) {
        shift += 1;
    }
    shift
}

fn to_pairs(ranges: impl Iterator<Item = ByteRange>) -> Vec<(u64, u64)> {
    ranges.map(|r| (r.start, r.end)).collect()
}

impl Tracker {
    /// Resolves the devices, loads or reattaches the BPF programs, restores saved state
    /// and works out which disks have a gap.
    pub fn start(config: TrackerConfig) -> Result<Self, TrackerError> {
        if config.devices.len() > MAX_DISKS as usize {
            return Err(TrackerError::TooManyDisks(config.devices.len()));
        }
        let mut devices: Vec<BlockDevice> = Vec::new();
        for path in &config.devices {
            let dev = BlockDevice::open(path)?;
            if devices.iter().any(|d| d.dev == dev.dev) {
                return Err(TrackerError::Duplicate(path.clone()));
            }
            devices.push(dev);
        }
        // A corrupt state file is a gap (resync), not a reason to stay down (I3).
        let (saved, unreadable) = match &config.state_file {
            Some(path) => match persist::load(path) {
                Ok(saved) => (saved, None),
                Err(e) => (None, Some(e.to_string())),
            },
            None => (None, None),
        };
        let (bpf, origin) = Bpf::open(&LoadOptions {
            log_records: config.log_records,
            pin_dir: config.pin_dir.clone(),
        })?;
        let n = devices.len();
        let chunk_shift: Vec<u32> = devices.iter().map(|d| chunk_shift_for(d.size)).collect();
        let mut tracker = Self {
            state: TrackState::new(n),
            gaps: vec![None; n],
            gap_counts: vec![0; n],
            fallback_seen: vec![vec![0; FALLBACK_CHUNKS as usize + 1]; n],
            drops_seen: 0,
            skipped_seen: 0,
            events: 0,
            counters_malformed: 0,
            epoch: 0,
            mapped: Vec::new(),
            chunk_shift,
            devices,
            config,
            bpf,
        };
        tracker.reconcile(origin, saved)?;
        if let Some(reason) = unreadable {
            for i in 0..n {
                tracker.set_gap(
                    i,
                    format!("the saved tracker state could not be used: {reason}"),
                );
            }
        }
        // Only now, with tracking running, is the saved state consumed: a start that
        // fails leaves it for the next try; a crash from here on leaves no file (a gap).
        if let Some(path) = &tracker.config.state_file {
            persist::remove(path)?;
        }
        Ok(tracker)
    }

    /// Brings the BPF side's disk list and the restored state in line with the
    /// configured devices, recording a gap wherever continuity cannot be shown.
    fn reconcile(&mut self, origin: Origin, saved: Option<Saved>) -> Result<(), TrackerError> {
        let want: Vec<(KernelDev, DiskInfo)> = self
            .devices
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let index = u32::try_from(i).expect("at most MAX_DISKS");
                (
                    d.dev,
                    DiskInfo {
                        index,
                        chunk_shift: self.chunk_shift[i],
                    },
                )
            })
            .collect();
        let have = self.bpf.protected()?;
        // A disk the programs knew under another index or chunk size: what they logged
        // while no agent ran was charged to the wrong disk, or counted in the wrong chunks.
        let moved: Vec<usize> = want
            .iter()
            .enumerate()
            .filter(|(_, (dev, info))| have.iter().any(|(d, i)| d == dev && i != info))
            .map(|(i, _)| i)
            .collect();
        for (dev, _) in &have {
            if !want.iter().any(|(d, _)| d == dev) {
                self.bpf.unprotect(*dev)?;
            }
        }
        for (dev, info) in &want {
            self.bpf.protect(*dev, *info)?;
        }
        let pinned = self.config.pin_dir.is_some();
        let continuous_epoch = match (origin, &saved) {
            (Origin::Reattached { epoch }, Some(s)) if s.epoch == epoch && epoch != 0 => {
                Some(epoch)
            }
            _ => None,
        };
        let fresh_reason = match (origin, &saved) {
            (Origin::Fresh, Some(_)) => {
                "the tracker's programs were not running (reboot, or detached)"
            }
            (Origin::Fresh, None) if pinned => {
                "no tracking before this start (first start, or the state was lost)"
            }
            (Origin::Fresh, None) => "tracking starts now",
            (Origin::Reattached { .. }, None) => {
                "the previous agent stopped without saving its state"
            }
            (Origin::Reattached { .. }, Some(_)) => {
                "the saved state belongs to other tracker programs"
            }
        };
        match continuous_epoch {
            Some(epoch) => self.epoch = epoch,
            None => {
                self.epoch = monotonic_ns() ^ u64::from(std::process::id()) << 32 | 1;
                if pinned {
                    self.bpf.set_epoch(self.epoch)?;
                }
            }
        }
        let saved = saved.filter(|_| continuous_epoch.is_some());
        if let Some(s) = &saved {
            self.drops_seen = s.drops_seen;
            self.skipped_seen = s.skipped_seen;
        } else {
            self.drops_seen = self.bpf.drops()?;
            self.skipped_seen = self.bpf.skipped_submission_runs()?;
        }
        let now = monotonic_ns();
        for i in 0..self.devices.len() {
            let disk = DiskId::from_index(i).expect("at most MAX_DISKS");
            // Matched by device and size, not position: the disk list may have changed.
            let same = saved.as_ref().and_then(|s| {
                s.disks
                    .iter()
                    .find(|p| p.dev == self.devices[i].dev.0 && p.size == self.devices[i].size)
            });
            match same {
                Some(p) => {
                    for &(a, b) in &p.dirty {
                        self.state.mark_dirty(disk, ByteRange::new(a, b));
                    }
                    for &(a, b) in &p.suspect {
                        self.state
                            .disk_mut(disk)
                            .suspect
                            .insert(ByteRange::new(a, b));
                    }
                    for &(a, b) in &p.in_flight {
                        self.state.lost(disk, ByteRange::new(a, b), now);
                    }
                    for &(chunk, value) in &p.fallback_seen {
                        if let Some(slot) = self.fallback_seen[i].get_mut(chunk as usize) {
                            *slot = value;
                        }
                    }
                    if let Some(reason) = p.gap.clone() {
                        self.set_gap(i, reason);
                    }
                }
                None => {
                    let reason = if saved.is_some() {
                        "newly protected disk"
                    } else {
                        fresh_reason
                    };
                    self.set_gap(i, reason.to_owned());
                    self.fallback_seen[i] = self.bpf.fallback_counters(disk.get());
                }
            }
        }
        for i in moved {
            self.set_gap(
                i,
                "its place in the tracker's tables changed (the disk list was reordered or the \
                 disk resized)"
                    .into(),
            );
        }
        // Losses while no agent ran show in the counters now.
        self.check_losses()?;
        Ok(())
    }

    /// The protected devices, in disk-index order.
    pub fn devices(&self) -> &[BlockDevice] {
        &self.devices
    }

    pub fn state(&self) -> &TrackState {
        &self.state
    }

    pub fn state_mut(&mut self) -> &mut TrackState {
        &mut self.state
    }

    /// The gap of `disk`, if its tracking has one.
    pub fn gap(&self, disk: DiskId) -> Option<&Gap> {
        self.gaps[disk.index()].as_ref()
    }

    /// How many gaps `disk` has had: pass it to [`Tracker::close_gap`].
    pub fn gap_count(&self, disk: DiskId) -> u64 {
        self.gap_counts[disk.index()]
    }

    /// Marks `disk`'s gap closed (the replicator finished a full catch-up that started
    /// when [`Tracker::gap_count`] was `count`). Returns false, keeping the gap, when a
    /// newer gap was recorded since: the catch-up must start again.
    pub fn close_gap(&mut self, disk: DiskId, count: u64) -> bool {
        let i = disk.index();
        if self.gap_counts[i] != count {
            return false;
        }
        self.gaps[i] = None;
        true
    }

    fn set_gap(&mut self, i: usize, reason: String) {
        self.gaps[i] = Some(Gap(reason));
        self.gap_counts[i] += 1;
    }

    pub fn stats(&self) -> Result<TrackerStats, TrackerError> {
        Ok(TrackerStats {
            events: self.events,
            malformed: self.counters_malformed,
            drops: self.bpf.drops()?,
            skipped_runs: self.bpf.skipped_submission_runs()?,
            in_flight: self.state.in_flight_count(),
            counters: self.state.counters,
        })
    }

    /// Test knob: have the BPF programs drop completions (per million).
    pub fn drop_completions_ppm(&mut self, ppm: u64) -> Result<(), TrackerError> {
        Ok(self.bpf.drop_completions_ppm(ppm)?)
    }

    /// Sleeps `wait` (the programs wake nobody: their logs are read on a timer, and a
    /// caller polling every few milliseconds bounds the report latency), then applies
    /// what the programs logged, reads the in-flight table, checks for losses and sweeps.
    /// Returns what was submitted and what became readable by completion, in order.
    pub fn poll(&mut self, wait: Duration) -> Result<Polled, TrackerError> {
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        let now = monotonic_ns();
        let mut raw = Vec::new();
        self.bpf.drain(|bytes| raw.push(Event::parse(bytes, now)));
        let mut polled = Polled::default();
        for event in raw {
            self.events += 1;
            // Never stop half way: the batch is already out of the logs.
            let event = match event {
                Ok(e) => e,
                Err(e) => {
                    // Programs and userspace out of step: nothing in this stream can be
                    // trusted to say where writes went.
                    self.counters_malformed += 1;
                    for i in 0..self.gaps.len() {
                        self.set_gap(
                            i,
                            format!(
                                "malformed tracker event ({e}): programs and agent out of step"
                            ),
                        );
                    }
                    continue;
                }
            };
            match self.state.apply(&event) {
                Ok(Some(r)) => polled.completed.push(r),
                Ok(None) => polled.submitted.push((event.disk, event.range)),
                // A disk no longer protected (configuration changed under pinned programs).
                Err(UnknownDisk(_)) => self.counters_malformed += 1,
            }
        }
        // Submissions: the in-flight table, read after the logs, so that a write whose
        // completion was just applied is not taken for a new one (its slot is freed
        // before its COMPLETE event is logged).
        self.mapped.clear();
        self.bpf.in_flight(&mut self.mapped);
        for m in &self.mapped {
            let disk = DiskId::new(m.disk);
            let Some(range) = sector_range(m.sector, m.sectors) else {
                self.counters_malformed += 1;
                continue;
            };
            // Err: a disk no longer protected; its events are counted as they come.
            if let Ok(true) = self.state.seen_in_flight(m.id, disk, range, now) {
                polled.submitted.push((disk, range));
            }
        }
        let mut mapped_ids: Vec<u64> = self.mapped.iter().map(|m| m.id).collect();
        mapped_ids.sort_unstable();
        self.state
            .retain_retired(|id| mapped_ids.binary_search(&id).is_ok());
        self.check_losses()?;
        let cutoff = monotonic_ns().saturating_sub(
            self.config
                .sweep_after
                .as_nanos()
                .try_into()
                .unwrap_or(u64::MAX),
        );
        self.state.sweep(cutoff);
        self.state.tick(monotonic_ns());
        Ok(polled)
    }

    /// When the drop counter moved, compares the fallback counters with what was seen
    /// and marks every chunk whose counter moved.
    /// Also records a gap on every disk when the kernel skipped submission runs.
    fn check_losses(&mut self) -> Result<(), TrackerError> {
        let skipped = self.bpf.skipped_submission_runs()?;
        if skipped != self.skipped_seen {
            let n = skipped.saturating_sub(self.skipped_seen);
            self.skipped_seen = skipped;
            for i in 0..self.devices.len() {
                self.set_gap(
                    i,
                    format!(
                        "the kernel skipped {n} run(s) of the tracker's submission programs (a \
                         write submitted from an interrupt while another was being tracked on \
                         that CPU): writes may have gone unseen"
                    ),
                );
            }
        }
        let drops = self.bpf.drops()?;
        if drops == self.drops_seen {
            return Ok(());
        }
        self.drops_seen = drops;
        let now = monotonic_ns();
        for i in 0..self.devices.len() {
            let disk = DiskId::from_index(i).expect("at most MAX_DISKS");
            let current = self.bpf.fallback_counters(disk.get());
            let chunk_bytes = 512u64 << self.chunk_shift[i];
            let seen = std::mem::take(&mut self.fallback_seen[i]);
            for (chunk, (&now_count, &seen)) in current.iter().zip(&seen).enumerate() {
                if now_count == seen {
                    continue;
                }
                if chunk == FALLBACK_CHUNKS as usize {
                    self.set_gap(
                        i,
                        "events lost over a range too large for the fallback counters".into(),
                    );
                    continue;
                }
                let start = chunk as u64 * chunk_bytes;
                let range = ByteRange::new(
                    start,
                    (start + chunk_bytes).min(self.devices[i].size.div_ceil(GRAIN) * GRAIN),
                );
                self.state.lost(disk, range, now);
            }
            self.fallback_seen[i] = current;
        }
        Ok(())
    }

    /// Saves the state (if a state file is configured) and releases the tracker. Pinned
    /// programs keep tracking; unpinned ones detach.
    pub fn stop(mut self) -> Result<(), TrackerError> {
        self.poll(Duration::ZERO)?;
        let Some(path) = self.config.state_file.clone() else {
            return Ok(());
        };
        let disks = (0..self.devices.len())
            .map(|i| {
                let disk = DiskId::from_index(i).expect("at most MAX_DISKS");
                let d = self.state.disk(disk);
                SavedDisk {
                    dev: self.devices[i].dev.0,
                    size: self.devices[i].size,
                    dirty: to_pairs(d.dirty.iter().map(|(r, _)| r)),
                    suspect: to_pairs(d.suspect.iter()),
                    in_flight: to_pairs(self.state.in_flight(disk).iter()),
                    fallback_seen: self.fallback_seen[i]
                        .iter()
                        .enumerate()
                        .filter(|(_, v)| **v != 0)
                        .map(|(c, v)| (u32::try_from(c).expect("≤ FALLBACK_CHUNKS"), *v))
                        .collect(),
                    gap: self.gaps[i].as_ref().map(|g| g.0.clone()),
                }
            })
            .collect();
        persist::save(
            &path,
            &Saved {
                epoch: self.epoch,
                drops_seen: self.drops_seen,
                skipped_seen: self.skipped_seen,
                disks,
            },
        )?;
        Ok(())
    }
}

/// Detaches pinned tracker programs and frees their maps (`ferry track --detach`).
pub fn detach(pin_dir: &std::path::Path) -> Result<(), TrackerError> {
    Ok(bpf::remove_pins(pin_dir)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_chunks_cover_any_disk_size() {
        for size in [0, 4096, 1 << 20, 16 << 30, 1 << 40, 64 << 40] {
            let shift = chunk_shift_for(size);
            assert!(shift >= 11);
            assert!(
                (size.div_ceil(512) >> shift) < u64::from(FALLBACK_CHUNKS),
                "size {size}"
            );
        }
        assert_eq!(
            chunk_shift_for(8 << 30),
            11,
            "1 MiB chunks for an 8 GiB disk"
        );
    }
}
