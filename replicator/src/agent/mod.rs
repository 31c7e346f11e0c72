//! The agent: continuous replication of a protected server's disks to its standby.
//!
//! ```text
//!  tracker thread   every 20 ms: drain the BPF per-CPU event logs into the TrackState
//!                   (dirty map with generations, writes in flight, suspect ranges)
//!  shipper (run)    pick dirty extents (≤ 1 MiB; not in flight; not already shipping)
//!                   with the generation of the moment they were picked
//!                   → read them (io_uring, O_DIRECT) → seal on every core
//!                   → one ordered stream of records (Link: window of unacked bytes,
//!                     bandwidth limit)
//!                   → on ack of seq n: clear every extent shipped at seq ≤ n
//!                     unless it was marked since it was picked (DESIGN.md I1)
//! ```
//!
//! Invariants:
//! - **I1.** An extent leaves the dirty map only through `clear_if_unchanged` with the
//!   generation taken under the tracker's lock *before* it was read, after the standby
//!   acknowledged its record as durable. A write completing after the pick has a newer
//!   generation, so it stays dirty and is read again.
//! - **Bounded memory.** At most one batch is read and sealed at a time and at most the
//!   link's window is unacknowledged; the backlog of a slow standby or network stays in
//!   the dirty map.
//! - **Resume.** After a reconnect, records the standby has as durable are cleared;
//!   every other pending extent is simply forgotten (it is still dirty) and read again.
//! - **Gaps (I3).** A disk whose tracking has a gap is caught up ([`crate::catch_up`]):
//!   copied whole if the standby holds nothing of the server, else compared chunk by
//!   chunk by digest and only chunks that differ are marked dirty. Each catch-up is
//!   counted and logged with its reason and what it shipped; the gap closes once every
//!   grain marked by it has been acknowledged.
//! - **Consistent points (I5).** Freeze every mounted filesystem on the protected disks,
//!   drain the tracker, read the whole remaining dirty set (and every suspect range) into
//!   memory, thaw, then send those records and the barrier — only local reads happen
//!   under the freeze, and [`Frozen`] thaws on every path (and a watchdog after twice
//!   `max_freeze`). The point is marked consistent only if no write was submitted or
//!   completed from the freeze to the end of the reads and none was in flight. A freeze
//!   that would pass `max_freeze` (or [`FREEZE_READ_CAP`]) is abandoned (thawed) and
//!   retried after shipping more.
//!
//! One file per job: [`config`] (how it runs), [`error`] (why it stopped, and whether a
//! reconnect may cure it), [`parts`] (the tracker, reader, freezer and link behind
//! traits), `session` (connect, the replication loop, reconnects), `ship` (pick, read,
//! seal, send, clear on ack: I1), `gaps` (catch-ups: I3), `points` (I5), `control` (the
//! control socket), `report` (status file and progress), `limiter` (bandwidth). The
//! invariants have unit tests against in-memory fakes in `agent/tests`.

mod config;
mod control;
mod error;
mod gaps;
mod limiter;
pub mod parts;
mod points;
mod report;
mod session;
mod ship;
#[cfg(test)]
mod tests;

pub use config::AgentConfig;
pub use control::request_point;
pub use error::{AgentError, transient_errno};

use crate::catch_up::CatchUp;
use crate::read::DiskReader;
use crate::seal_pool::{SealPool, SealPoolError};
use crate::seq_lease::SeqLease;
use crate::status::{DiskStatus, Phase, Status};
use ferry_tracker::{Tracker, TrackerConfig};
use ferry_tracker_core::range::RangeSet;
use ferry_wire::digest::Digester;
use ferry_wire::disk_identity::DiskIdentity;
use ferry_wire::message::{DiskInfo, RegisterServer};
use ferry_wire::{ByteLen, DiskId, HostKeys};
use limiter::Limiter;
use parts::{DirtySource, ExtentReader, Fifreeze, Freezer, drain_loop};
use ship::Pending;
use std::collections::VecDeque;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Most bytes read into memory while the filesystems are frozen; past it the freeze is
/// abandoned (thawed) and retried after shipping more.
pub const FREEZE_READ_CAP: u64 = 256 << 20;

/// How often an agent whose standby takes no records yet asks again.
pub const PAUSED_RETRY: Duration = Duration::from_secs(1);

/// The first wait before asking a standby again after a refusal that may need an
/// operator (it doubles up to 30 s while the refusals go on).
pub const NEEDS_OPERATOR_RETRY: Duration = Duration::from_secs(1);

/// How often the agent tells the standby its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// The agent. [`Agent::start`] starts tracking; [`Agent::run`] replicates until `stop`.
/// Its parts are the BPF tracker, `O_DIRECT` reads and FIFREEZE unless a test puts
/// fakes in their place ([`parts`]).
pub struct Agent<D = Tracker, R = DiskReader, F = Fifreeze> {
    config: AgentConfig,
    keys: HostKeys,
    lease: SeqLease,
    tracker: Arc<Mutex<D>>,
    tracker_thread: Option<std::thread::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    reader: R,
    freezer: F,
    pool: SealPool,
    registration: RegisterServer,
    sizes: Vec<u64>,
    pending: VecDeque<Pending>,
    shipping: Vec<RangeSet>,
    cursor: Vec<u64>,
    catch_up: Vec<Option<CatchUp>>,
    /// Whether the standby held records of this server when last connected (a gap is
    /// then caught up by digest, else by a full copy).
    standby_has_data: bool,
    digester: Digester,
    /// Digest requests sent so far (each request's id; answers echo it).
    digest_requests: u64,
    status: Status,
    next_point: Option<Instant>,
    control: UnixListener,
    limiter: Limiter,
    last_status: Instant,
    last_progress: Instant,
}

impl<D, R, F> std::fmt::Debug for Agent<D, R, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("server", &self.config.server)
            .field("disks", &self.config.disks)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Locks the tracker; a poisoned lock is recovered (the state it guards is checked data,
/// and the agent's thread that panicked is gone), as everywhere in ferry.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn disk_id(i: usize) -> DiskId {
    DiskId::from_index(i).expect("at most 32 disks")
}

/// What identifies the protected disk `name` (`/sys/block/<name>`, see
/// [`ferry_wire::disk_identity`]), recorded in the registration so a restore onto the
/// original machine later finds this very disk.
fn disk_identity(name: &str) -> DiskIdentity {
    let dir = std::path::Path::new("/sys/block").join(name);
    DiskIdentity::from_sysfs(|file| std::fs::read_to_string(dir.join(file)).ok())
}

fn nix_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

impl Agent {
    /// Starts tracking the disks (reattaching to pinned programs when they run), opens
    /// them for reading and the control socket. Disks with a tracking gap are caught up
    /// once connected (when it is known what the standby holds).
    pub fn start(
        config: AgentConfig,
        keys: HostKeys,
        stop: Arc<AtomicBool>,
    ) -> Result<Self, AgentError> {
        std::fs::create_dir_all(&config.state_dir).map_err(|source| AgentError::StateDir {
            path: config.state_dir.clone(),
            source,
        })?;
        let mut tconf = TrackerConfig::new(config.disks.clone());
        tconf.pin_dir = Some(config.pin_dir.clone());
        tconf.state_file = Some(config.state_dir.join("tracker.state"));
        // A completion that never reaches BPF leaves its write unshipped until the sweep:
        // sweep after 1 s, not 5 (an early sweep costs only a re-read: the completion, if
        // it comes, marks the range dirty again).
        tconf.sweep_after = Duration::from_secs(1);
        let tracker = Tracker::start(tconf)?;
        let reader = DiskReader::open(&config.disks, config.io_uring)?;
        Self::assemble(config, keys, stop, tracker, reader, Fifreeze)
    }
}

impl<D: DirtySource, R: ExtentReader, F: Freezer> Agent<D, R, F> {
    /// An agent of these parts: registration, seq lease, sealers, control socket, the
    /// drain thread, and the first status file.
    fn assemble(
        config: AgentConfig,
        keys: HostKeys,
        stop: Arc<AtomicBool>,
        tracker: D,
        reader: R,
        freezer: F,
    ) -> Result<Self, AgentError> {
        let state_err = |source| AgentError::StateDir {
            path: config.state_dir.clone(),
            source,
        };
        let devices = tracker.devices().to_vec();
        for d in &devices {
            ferry_wire::ids::validate_disk_name(&d.name).map_err(|source| {
                AgentError::DiskName {
                    path: d.path.clone(),
                    source,
                }
            })?;
        }
        let sizes: Vec<u64> = devices.iter().map(|d| d.size).collect();
        let registration = ferry_wire::seal::sign_registration(
            &keys,
            RegisterServer {
                hostname: nix_hostname(),
                disks: devices
                    .iter()
                    .enumerate()
                    .map(|(i, d)| DiskInfo {
                        disk: disk_id(i),
                        name: d.name.clone(),
                        size: ByteLen::new(d.size),
                        identity: disk_identity(&d.name),
                    })
                    .collect(),
                seal: [0; 32],
                mac: [0; 32],
            },
        );
        let lease = SeqLease::open(&config.state_dir)?;
        let pool = SealPool::new(&keys, config.zstd_level, config.seal_threads)
            .map_err(SealPoolError::from)?;
        let socket = config.socket_path();
        let _ = std::fs::remove_file(&socket);
        let control = UnixListener::bind(&socket).map_err(state_err)?;
        control.set_nonblocking(true).map_err(state_err)?;
        let n = devices.len();
        let status = Status {
            server: config.server.to_string(),
            pid: std::process::id(),
            phase: Some(Phase::Starting),
            standby: config.standby.clone(),
            reads_io_uring: reader.uses_io_uring(),
            disks: devices
                .iter()
                .map(|d| DiskStatus {
                    name: d.name.clone(),
                    path: d.path.display().to_string(),
                    size: d.size,
                    ..DiskStatus::default()
                })
                .collect(),
            ..Status::default()
        };
        let tracker = Arc::new(Mutex::new(tracker));
        let tracker_thread = {
            let (tracker, stop) = (tracker.clone(), stop.clone());
            std::thread::Builder::new()
                .name("ferry-tracker".into())
                .spawn(move || drain_loop(&tracker, &stop))
                .map_err(state_err)?
        };
        let digester = Digester::new(&keys.recovery.digest);
        let mut agent = Self {
            limiter: Limiter::new(config.bandwidth),
            next_point: config.point_interval.map(|i| Instant::now() + i),
            config,
            keys,
            lease,
            tracker,
            tracker_thread: Some(tracker_thread),
            stop,
            reader,
            freezer,
            pool,
            registration,
            sizes,
            pending: VecDeque::new(),
            shipping: vec![RangeSet::new(); n],
            cursor: vec![0; n],
            catch_up: vec![None; n],
            standby_has_data: false,
            digester,
            digest_requests: 0,
            status,
            control,
            last_status: Instant::now() - Duration::from_secs(1),
            last_progress: Instant::now() - PROGRESS_EVERY,
        };
        agent.write_status();
        Ok(agent)
    }

    /// Stops the tracker thread and saves the tracker's state (the pinned programs keep
    /// tracking, so a restarted agent loses nothing).
    fn shutdown(mut self) -> Result<(), AgentError> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.tracker_thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(self.config.socket_path());
        let Ok(tracker) = Arc::try_unwrap(self.tracker) else {
            unreachable!("the tracker thread has ended")
        };
        let tracker = tracker
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        tracker.stop()?;
        Ok(())
    }
}
