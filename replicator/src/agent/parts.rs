//! What the agent is built from, each behind a trait so that unit tests can put an
//! in-memory fake in its place (`agent/tests`): where changes are learned
//! ([`DirtySource`]: the BPF tracker), how extents are read ([`ExtentReader`]: `O_DIRECT`
//! through io_uring), how filesystems are held still for a point ([`Freezer`]: FIFREEZE),
//! and where records go ([`Uplink`]: the TLS link to the standby).
//!
//! The traits carry only what the agent asks of each part; the invariants stay in the
//! agent (I1 in `ship`, I5 in `points`), so a fake exercises the agent's own code.

use crate::freeze::{FreezeError, Frozen};
use crate::link::{Link, LinkError};
use crate::read::{DiskReader, ReadError, ReadReq};
use ferry_tracker::check::CheckError;
use ferry_tracker::sys::blockdev::BlockDevice;
use ferry_tracker::{Gap, Tracker, TrackerError};
use ferry_tracker_core::state::TrackState;
use ferry_wire::message::{Digests, ErrorMessage, PointRequest};
use ferry_wire::{DiskId, Message, Seq, error_chain};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Where the agent learns what changed: the dirty map with its generations, writes in
/// flight, and tracking gaps. Shared with the drain thread ([`drain_loop`]).
pub trait DirtySource: Send + 'static {
    /// The protected devices, in disk-index order.
    fn devices(&self) -> &[BlockDevice];
    fn state(&self) -> &TrackState;
    fn state_mut(&mut self) -> &mut TrackState;
    /// Applies what happened since the last call (never waits).
    fn poll(&mut self) -> Result<(), TrackerError>;
    fn gap(&self, disk: DiskId) -> Option<&Gap>;
    /// How many gaps `disk` has had (a catch-up closes only the one it started for).
    fn gap_count(&self, disk: DiskId) -> u64;
    /// Closes `disk`'s gap unless a newer one was recorded since `count`.
    fn close_gap(&mut self, disk: DiskId, count: u64) -> bool;
    /// Events the kernel side could not log (each one a gap).
    fn drops(&self) -> u64;
    /// Stops tracking here, saving the state (pinned programs may go on tracking).
    fn stop(self) -> Result<(), TrackerError>;
}

impl DirtySource for Tracker {
    fn devices(&self) -> &[BlockDevice] {
        Tracker::devices(self)
    }
    fn state(&self) -> &TrackState {
        Tracker::state(self)
    }
    fn state_mut(&mut self) -> &mut TrackState {
        Tracker::state_mut(self)
    }
    fn poll(&mut self) -> Result<(), TrackerError> {
        Tracker::poll(self, Duration::ZERO).map(drop)
    }
    fn gap(&self, disk: DiskId) -> Option<&Gap> {
        Tracker::gap(self, disk)
    }
    fn gap_count(&self, disk: DiskId) -> u64 {
        Tracker::gap_count(self, disk)
    }
    fn close_gap(&mut self, disk: DiskId, count: u64) -> bool {
        Tracker::close_gap(self, disk, count)
    }
    fn drops(&self) -> u64 {
        self.stats().map_or(0, |s| s.drops)
    }
    fn stop(self) -> Result<(), TrackerError> {
        Tracker::stop(self)
    }
}

/// The tracker thread: drains the tracker's event logs into the state every 20 ms.
pub(super) fn drain_loop<D: DirtySource>(tracker: &Mutex<D>, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(20));
        let mut t = tracker.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = t.poll() {
            tracing::error!(error = %error_chain(&e), "draining the tracker failed");
        }
    }
}

/// Reads extents of the protected disks into the requests' buffers.
pub trait ExtentReader: Send {
    fn read(&mut self, reqs: &mut [ReadReq]) -> Result<(), ReadError>;
    fn uses_io_uring(&self) -> bool;
}

impl ExtentReader for DiskReader {
    fn read(&mut self, reqs: &mut [ReadReq]) -> Result<(), ReadError> {
        DiskReader::read(self, reqs)
    }
    fn uses_io_uring(&self) -> bool {
        DiskReader::uses_io_uring(self)
    }
}

/// Holds the protected disks' filesystems still while a point's dirty set is read.
pub trait Freezer: Send {
    /// Thaws what [`Freezer::freeze`] froze when dropped.
    type Guard;
    /// The mount points of the filesystems on `disks` (kernel names).
    fn mounts(&self, disks: &[String]) -> Result<Vec<PathBuf>, CheckError>;
    /// Freezes `mounts`, to be thawed by the guard or, at the latest, after `watchdog`.
    /// Returns the guard and the mount points it froze.
    fn freeze(
        &mut self,
        mounts: &[PathBuf],
        watchdog: Duration,
    ) -> Result<(Self::Guard, Vec<String>), FreezeError>;
}

/// FIFREEZE/FITHAW on the mounted filesystems ([`crate::freeze`]).
#[derive(Debug, Default)]
pub struct Fifreeze;

impl Freezer for Fifreeze {
    type Guard = Frozen;
    fn mounts(&self, disks: &[String]) -> Result<Vec<PathBuf>, CheckError> {
        Ok(ferry_tracker::check::mounts_on(Path::new("/"), disks)?
            .into_iter()
            .map(PathBuf::from)
            .collect())
    }
    fn freeze(
        &mut self,
        mounts: &[PathBuf],
        watchdog: Duration,
    ) -> Result<(Frozen, Vec<String>), FreezeError> {
        let frozen = Frozen::freeze(mounts, watchdog)?;
        let names = frozen.mounts();
        Ok((frozen, names))
    }
}

/// A connected stream to the standby, as the agent uses it once registered.
pub(super) trait Uplink {
    /// Sends one message (records and barriers count against the window).
    fn send(&mut self, message: &Message) -> Result<(), LinkError>;
    /// Sends an encoded frame; `seq` when it is a record.
    fn send_frame(&mut self, seq: Option<Seq>, frame: Vec<u8>) -> Result<(), LinkError>;
    fn flush(&mut self) -> Result<(), LinkError>;
    /// The highest seq the standby acknowledged as durable.
    fn durable(&self) -> Seq;
    /// Waits until `seq` is durable; returns the durable seq.
    fn wait_durable(&mut self, seq: Seq, timeout: Duration) -> Result<Seq, LinkError>;
    /// Why the link closed, if it has.
    fn closed(&self) -> Option<LinkError>;
    fn take_warnings(&self) -> Vec<ErrorMessage>;
    fn take_digests(&self) -> VecDeque<Digests>;
    fn take_point_requests(&self) -> Vec<PointRequest>;
}

impl Uplink for Link {
    fn send(&mut self, message: &Message) -> Result<(), LinkError> {
        Link::send(self, message)
    }
    fn send_frame(&mut self, seq: Option<Seq>, frame: Vec<u8>) -> Result<(), LinkError> {
        Link::send_frame(self, seq, frame)
    }
    fn flush(&mut self) -> Result<(), LinkError> {
        Link::flush(self)
    }
    fn durable(&self) -> Seq {
        Link::durable(self)
    }
    fn wait_durable(&mut self, seq: Seq, timeout: Duration) -> Result<Seq, LinkError> {
        Link::wait_durable(self, seq, timeout)
    }
    fn closed(&self) -> Option<LinkError> {
        Link::closed(self)
    }
    fn take_warnings(&self) -> Vec<ErrorMessage> {
        Link::take_warnings(self)
    }
    fn take_digests(&self) -> VecDeque<Digests> {
        Link::take_digests(self)
    }
    fn take_point_requests(&self) -> Vec<PointRequest> {
        Link::take_point_requests(self)
    }
}
