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

use crate::catch_up::{CatchUp, Method, Scan};
use crate::freeze::{Frozen, run_hook};
use crate::link::{Link, LinkConfig, LinkError};
use crate::read::{AlignedBuf, DiskReader, ReadError, ReadReq};
use crate::seal_pool::{SealPool, SealPoolError};
use crate::seq_lease::SeqLease;
use crate::status::{CatchUpReport, DiskStatus, Phase, PointStatus, Status};
use ferry_tracker::{Tracker, TrackerConfig, TrackerError};
use ferry_tracker_core::dirty::{GRAIN, Generation};
use ferry_tracker_core::range::{ByteRange, RangeSet};
use ferry_wire::digest::{CHUNK, ChunkDigest, Digester, chunk_digest};
use ferry_wire::disk_identity::DiskIdentity;
use ferry_wire::message::{
    Barrier, DigestRequest, DiskInfo, ErrorCode, PointKind, PointResult, Progress, RegisterServer,
    ReplicationPhase,
};
use ferry_wire::record::RecordAddress;
use ferry_wire::{
    ByteLen, ByteOffset, DiskId, HostKeys, Message, PointId, Seq, ServerId, error_chain,
};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
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

/// How the agent runs (the `ferry agent` config file maps onto this).
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub server: ServerId,
    /// The standby's address (`host:port`).
    pub standby: String,
    /// Whole-disk block devices to protect.
    pub disks: Vec<PathBuf>,
    /// Status file, control socket and the tracker's saved state live here.
    pub state_dir: PathBuf,
    /// Where the tracker's BPF programs and maps are pinned (on bpffs).
    pub pin_dir: PathBuf,
    /// Time between scheduled points; `None`: only on demand.
    pub point_interval: Option<Duration>,
    /// Run before freezing / after thawing (`sh -c`); a failing pre-freeze hook fails the
    /// point (nothing is frozen).
    pub pre_freeze: Option<String>,
    pub post_thaw: Option<String>,
    /// Longest the filesystems may stay frozen for one attempt.
    pub max_freeze: Duration,
    /// Bytes per second on the link; `None`: unlimited.
    pub bandwidth: Option<u64>,
    /// Reconnect by itself after an interruption (else the agent stops with the error).
    pub auto_restart: bool,
    pub window_bytes: u64,
    /// Largest extent per record.
    pub extent_max: u64,
    /// Bytes read and sealed per batch.
    pub batch_bytes: u64,
    pub seal_threads: usize,
    pub zstd_level: i32,
    pub io_uring: bool,
    /// How the link runs: TLS (what a config file gives), or plain TCP to loopback.
    pub tls: ferry_tls::LinkTls,
}

impl AgentConfig {
    /// Defaults for everything but what identifies the server, its standby and disks.
    pub fn new(server: ServerId, standby: String, disks: Vec<PathBuf>, state_dir: PathBuf) -> Self {
        Self {
            server,
            standby,
            disks,
            state_dir,
            pin_dir: PathBuf::from("/sys/fs/bpf/ferry"),
            point_interval: Some(Duration::from_secs(3600)),
            pre_freeze: None,
            post_thaw: None,
            max_freeze: Duration::from_secs(5),
            bandwidth: None,
            auto_restart: true,
            window_bytes: 64 << 20,
            extent_max: 1 << 20,
            batch_bytes: 16 << 20,
            seal_threads: std::thread::available_parallelism().map_or(2, usize::from),
            zstd_level: ferry_wire::seal::DEFAULT_ZSTD_LEVEL,
            io_uring: true,
            tls: ferry_tls::LinkTls::PlaintextLoopback,
        }
    }

    pub fn status_path(&self) -> PathBuf {
        self.state_dir.join("status.json")
    }

    pub fn socket_path(&self) -> PathBuf {
        self.state_dir.join("agent.sock")
    }
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Tracker(#[from] TrackerError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Seal(#[from] SealPoolError),
    #[error("cannot use the state directory {}", path.display())]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot find the filesystems mounted on the protected disks")]
    Mounts(#[from] ferry_tracker::check::CheckError),
    #[error("the standby broke the protocol: {0}")]
    Protocol(String),
    #[error(transparent)]
    Lease(#[from] crate::seq_lease::LeaseError),
    /// A protected disk whose kernel name the standby would refuse (it becomes a device
    /// path at the other site): the registration could never be sent.
    #[error("cannot protect {}", path.display())]
    DiskName {
        path: PathBuf,
        #[source]
        source: ferry_wire::ids::DiskNameError,
    },
}

impl AgentError {
    /// Link trouble, and a standby that said what cannot be true (it is dropped and
    /// asked again: nothing it says clears a dirty range).
    fn is_retryable(&self) -> bool {
        match self {
            AgentError::Link(e) => e.is_retryable(),
            AgentError::Protocol(_) => true,
            _ => false,
        }
    }
}

/// What identifies the protected disk `name` (`/sys/block/<name>`, see
/// [`ferry_wire::disk_identity`]), recorded in the registration so a restore onto the
/// original machine later finds this very disk.
fn disk_identity(name: &str) -> DiskIdentity {
    let dir = std::path::Path::new("/sys/block").join(name);
    DiskIdentity::from_sysfs(|file| std::fs::read_to_string(dir.join(file)).ok())
}

/// An extent sent and not yet acknowledged.
#[derive(Debug, Clone, Copy)]
struct Pending {
    seq: Seq,
    disk: DiskId,
    range: ByteRange,
    picked_at: Generation,
}

/// A running agent's connection to the standby and what it has in flight.
struct Stream {
    link: Link,
    next_seq: Seq,
}

/// The agent. [`Agent::start`] starts tracking; [`Agent::run`] replicates until `stop`.
pub struct Agent {
    config: AgentConfig,
    keys: HostKeys,
    lease: SeqLease,
    tracker: Arc<Mutex<Tracker>>,
    tracker_thread: Option<std::thread::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    reader: DiskReader,
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

impl std::fmt::Debug for Agent {
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

fn disk_id(i: usize) -> DiskId {
    DiskId(u32::try_from(i).expect("at most 32 disks"))
}

/// A token bucket over bytes per second (one second of burst).
#[derive(Debug)]
struct Limiter {
    rate: Option<u64>,
    tokens: f64,
    last: Instant,
}

impl Limiter {
    fn new(rate: Option<u64>) -> Self {
        Self {
            rate,
            tokens: 0.0,
            last: Instant::now(),
        }
    }

    /// Waits until `bytes` may be sent.
    #[expect(clippy::cast_precision_loss, reason = "rates and sizes far below 2^52")]
    fn take(&mut self, bytes: usize) {
        let Some(rate) = self.rate else { return };
        let rate = rate as f64;
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * rate).min(rate);
        self.last = now;
        self.tokens -= bytes as f64;
        if self.tokens < 0.0 {
            std::thread::sleep(Duration::from_secs_f64(-self.tokens / rate));
        }
    }
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
        let state_err = |source| AgentError::StateDir {
            path: config.state_dir.clone(),
            source,
        };
        std::fs::create_dir_all(&config.state_dir).map_err(state_err)?;
        let mut tconf = TrackerConfig::new(config.disks.clone());
        tconf.pin_dir = Some(config.pin_dir.clone());
        tconf.state_file = Some(config.state_dir.join("tracker.state"));
        // A completion that never reaches BPF leaves its write unshipped until the sweep:
        // sweep after 1 s, not 5 (an early sweep costs only a re-read: the completion, if
        // it comes, marks the range dirty again).
        tconf.sweep_after = Duration::from_secs(1);
        let tracker = Tracker::start(tconf)?;
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
                        size: ByteLen(d.size),
                        identity: disk_identity(&d.name),
                    })
                    .collect(),
                seal: [0; 32],
                mac: [0; 32],
            },
        );
        let lease = SeqLease::open(&config.state_dir)?;
        let reader = DiskReader::open(&config.disks, config.io_uring)?;
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

    fn lock_tracker(&self) -> MutexGuard<'_, Tracker> {
        self.tracker.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a catch-up for every disk with a tracking gap (once per gap): a digest
    /// compare if the standby holds data of the server, else a full copy.
    fn start_catch_ups(&mut self) {
        let mut tracker = self.tracker.lock().unwrap_or_else(|e| e.into_inner());
        for i in 0..self.sizes.len() {
            let disk = disk_id(i);
            let Some(gap) = tracker.gap(disk).cloned() else {
                continue;
            };
            let gap_count = tracker.gap_count(disk);
            if self.catch_up[i]
                .as_ref()
                .is_some_and(|c| c.gap_count == gap_count)
            {
                continue;
            }
            // A new gap (or one recorded while an earlier catch-up ran): from the start.
            let size = self.sizes[i];
            let (method, marked_at) = if self.standby_has_data {
                (Method::Digest(Scan::new(size, self.digest_requests)), None)
            } else {
                let state = tracker.state_mut();
                state.mark_dirty(disk, ByteRange::new(0, size.next_multiple_of(GRAIN)));
                (Method::Full, Some(state.generation()))
            };
            tracing::info!(disk = %self.registration.disks[i].name, reason = %gap.0, method = method.name(), bytes = size, "catching up the disk after a tracking gap");
            self.status.disks[i].catch_up = Some(method.name().to_owned());
            self.catch_up[i] = Some(CatchUp {
                gap_count,
                reason: gap.0,
                method,
                started: Instant::now(),
                shipped_at_start: self.status.disks[i].shipped_bytes,
                marked_at,
            });
            self.cursor[i] = 0;
            self.status.catch_ups += 1;
        }
    }

    /// Advances digest compares: marks the chunks the standby's answers show different,
    /// then reads the next chunks of one disk and asks about them.
    fn digest_step(&mut self, stream: &mut Stream) -> Result<(), AgentError> {
        for reply in stream.link.take_digests() {
            let i = reply.disk.0 as usize;
            let Some(Some(CatchUp {
                method: Method::Digest(scan),
                ..
            })) = self.catch_up.get_mut(i)
            else {
                return Err(AgentError::Protocol(format!(
                    "it answered digests of disk {}, which is not being compared",
                    reply.disk.0
                )));
            };
            let Some(differ) = scan.answer(&reply).map_err(AgentError::Protocol)? else {
                // An answer to a scan a newer gap replaced.
                continue;
            };
            let mut tracker = self.lock_tracker();
            for r in differ {
                let r = ByteRange::new(r.start, r.end.next_multiple_of(GRAIN));
                tracker.state_mut().mark_dirty(reply.disk, r);
            }
        }
        for i in 0..self.sizes.len() {
            let Some(CatchUp {
                method: Method::Digest(scan),
                ..
            }) = &self.catch_up[i]
            else {
                continue;
            };
            let Some((first, count)) = scan.next_request(self.config.batch_bytes / CHUNK) else {
                continue;
            };
            let local = self.local_digests(i, first, count)?;
            self.digest_requests += 1;
            let request = self.digest_requests;
            stream.link.send(&Message::DigestRequest(DigestRequest {
                request,
                disk: disk_id(i),
                first_chunk: first,
                count,
            }))?;
            if let Some(CatchUp {
                method: Method::Digest(scan),
                ..
            }) = &mut self.catch_up[i]
            {
                scan.sent(request, first, local);
            }
            // One request per turn, so that shipping goes on alongside.
            break;
        }
        for i in 0..self.sizes.len() {
            if let Some(c) = &mut self.catch_up[i]
                && let Method::Digest(scan) = &c.method
                && scan.done()
                && c.marked_at.is_none()
            {
                c.marked_at = Some(
                    self.tracker
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .state()
                        .generation(),
                );
                tracing::info!(disk = %self.registration.disks[i].name, compared = scan.compared, differing = scan.differing, "digest compare done; shipping what differs");
            }
        }
        Ok(())
    }

    /// Reads chunks `first..first + count` of disk `i` and digests them.
    fn local_digests(
        &mut self,
        i: usize,
        first: u64,
        count: u32,
    ) -> Result<Vec<ChunkDigest>, AgentError> {
        let size = self.sizes[i];
        let mut reqs: Vec<ReadReq> = (first..first + u64::from(count))
            .map(|c| {
                let start = c * CHUNK;
                let len = (start + CHUNK).min(size) - start;
                ReadReq {
                    disk: i,
                    offset: start,
                    buf: AlignedBuf::new(usize::try_from(len).expect("≤ 1 MiB")),
                }
            })
            .collect();
        self.reader.read(&mut reqs)?;
        let mut grains = Vec::new();
        Ok(reqs
            .iter()
            .map(|r| {
                grains.clear();
                self.digester
                    .grains(disk_id(i), r.offset, &r.buf, &mut grains);
                chunk_digest(&grains)
            })
            .collect())
    }

    /// Replicates until `stop` is set (Ok) or an error that needs an operator.
    pub fn run(mut self) -> Result<(), AgentError> {
        let mut backoff = Duration::from_millis(200);
        let result = loop {
            if self.stop.load(Ordering::SeqCst) {
                break Ok(());
            }
            let outcome = self.connect().and_then(|stream| {
                backoff = Duration::from_millis(200);
                self.replicate(stream)
            });
            match outcome {
                Ok(()) => break Ok(()),
                Err(AgentError::Link(e)) if e.is_paused() => {
                    if self.status.phase != Some(Phase::Waiting) {
                        tracing::info!(reason = %error_chain(&e), "the standby takes no records now; tracking goes on, asking again every {PAUSED_RETRY:?}");
                    }
                    self.status.phase = Some(Phase::Waiting);
                    self.status.last_error = Some(error_chain(&e));
                    self.write_status();
                    self.idle(PAUSED_RETRY);
                }
                Err(e) if e.is_retryable() && self.config.auto_restart => {
                    tracing::warn!(error = %error_chain(&e), retry_in = ?backoff, "replication interrupted; reconnecting");
                    self.status.phase = Some(Phase::Interrupted);
                    self.status.last_error = Some(error_chain(&e));
                    self.status.reconnects += 1;
                    self.write_status();
                    self.idle(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
                // A refusal, a frame that does not check out, a failed TLS handshake: they
                // may need an operator (keys, certificates, the standby's server list), but
                // a relay on the path can cause each of them too, so none stops the agent
                // (DESIGN.md I8). Tracking goes on; the state shows the error; the standby
                // is asked again, less and less often.
                Err(AgentError::Link(e)) if self.config.auto_restart => {
                    backoff = backoff.max(NEEDS_OPERATOR_RETRY);
                    tracing::error!(error = %error_chain(&e), retry_in = ?backoff, "the standby refused, or the link failed in a way that may need an operator; tracking goes on and the standby is asked again");
                    self.status.phase = Some(Phase::Error);
                    self.status.last_error = Some(error_chain(&e));
                    self.status.reconnects += 1;
                    self.write_status();
                    self.idle(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
                Err(e) => break Err(e),
            }
        };
        self.status.phase = Some(match &result {
            Ok(()) => Phase::Stopped,
            Err(e) => {
                self.status.last_error = Some(error_chain(e));
                Phase::Error
            }
        });
        self.write_status();
        let stopped = self.shutdown();
        result.and(stopped)
    }

    /// Waits `time` while disconnected, answering the control socket.
    fn idle(&mut self, time: Duration) {
        let until = Instant::now() + time;
        while Instant::now() < until && !self.stop.load(Ordering::SeqCst) {
            self.serve_control(None);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the tracker thread and saves the tracker's state (the pinned programs keep
    /// tracking, so a restarted agent loses nothing).
    fn shutdown(mut self) -> Result<(), AgentError> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.tracker_thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(self.config.socket_path());
        let tracker = Arc::try_unwrap(self.tracker)
            .expect("the tracker thread has ended")
            .into_inner()
            .unwrap_or_else(|e| e.into_inner());
        tracker.stop()?;
        Ok(())
    }

    fn connect(&mut self) -> Result<Stream, AgentError> {
        let config = LinkConfig {
            window_bytes: self.config.window_bytes,
            tls: self.config.tls.clone(),
            ..LinkConfig::default()
        };
        let mut link = Link::connect(
            self.config.standby.as_str(),
            &self.config.server,
            &self.keys.ingest.auth,
            &config,
        )?;
        link.register(self.registration.clone())?;
        if let Some(reason) = link.welcome().paused.clone() {
            // Nothing is shipped and no catch-up starts until the standby takes records
            // (it may then also hold what a catch-up compares against).
            link.flush()?;
            return Err(LinkError::Refused {
                code: ErrorCode::Paused,
                message: reason,
            }
            .into());
        }
        let welcome = link.welcome_durable();
        // A standby claiming more than was ever sent would have us skip what it never stored.
        if let Some(bound) = self.lease.bound().filter(|&b| welcome > b) {
            return Err(AgentError::Protocol(format!(
                "it says seq {welcome} is durable, but this agent never sent a seq above \
                 {bound}: another server's store, a restored standby, or a forgery"
            )));
        }
        let next_seq = welcome.checked_next().ok_or_else(|| {
            AgentError::Protocol(format!("it says seq {welcome} is durable: no seq is left"))
        })?;
        tracing::info!(standby = %self.config.standby, last_durable = %welcome, "connected to the standby");
        // What the standby already holds is safe; the rest is read again.
        self.apply_acks(welcome);
        self.forget_unacked();
        self.standby_has_data = link.welcome().digests;
        self.start_catch_ups();
        Ok(Stream { link, next_seq })
    }

    /// Forgets every extent sent and not acknowledged: still dirty, it is read again.
    /// Digest requests without an answer are asked again.
    fn forget_unacked(&mut self) {
        self.pending.clear();
        for s in &mut self.shipping {
            *s = RangeSet::new();
        }
        for c in self.catch_up.iter_mut().flatten() {
            if let Method::Digest(scan) = &mut c.method {
                scan.reset();
            }
        }
    }

    fn apply_acks(&mut self, durable: Seq) {
        if self.pending.front().is_none_or(|p| p.seq > durable) {
            return;
        }
        let mut tracker = self.tracker.lock().unwrap_or_else(|e| e.into_inner());
        let state = tracker.state_mut();
        while let Some(p) = self.pending.front().copied() {
            if p.seq > durable {
                break;
            }
            self.pending.pop_front();
            state
                .disk_mut(p.disk)
                .dirty
                .clear_if_unchanged(p.range, p.picked_at);
            self.shipping[p.disk.0 as usize].remove(p.range);
        }
        self.status.acked_seq = durable.0;
        self.status.last_ack_unix_ms = now_ms();
    }

    fn replicate(&mut self, mut stream: Stream) -> Result<(), AgentError> {
        loop {
            if self.stop.load(Ordering::SeqCst) {
                // Give what is in flight a moment to be acknowledged.
                let last = stream.next_seq.0.saturating_sub(1);
                if let Ok(d) = stream.link.wait_durable(Seq(last), Duration::from_secs(5)) {
                    self.apply_acks(d);
                }
                return Ok(());
            }
            self.apply_acks(stream.link.durable());
            if let Some(e) = stream.link.closed() {
                return Err(e.into());
            }
            for w in stream.link.take_warnings() {
                tracing::warn!(code = ?w.code, "the standby warns: {}", w.message);
                self.status.last_warning = Some(format!("{:?}: {}", w.code, w.message));
                self.status.last_warning_unix_ms = now_ms();
            }
            self.serve_control(Some(&mut stream));
            for request in stream.link.take_point_requests() {
                let status = self.manual_point(Some(&mut stream));
                stream.link.send(&Message::PointResult(PointResult {
                    request: request.request,
                    point: status.point.filter(|_| status.ok).map(PointId),
                    consistent: status.consistent,
                    freeze_ms: status.freeze_ms,
                    error: status.error,
                }))?;
            }
            if self.last_progress.elapsed() >= PROGRESS_EVERY {
                self.last_progress = Instant::now();
                stream.link.send(&Message::Progress(self.progress()))?;
            }
            if self.next_point.is_some_and(|t| Instant::now() >= t) {
                if self.catch_up.iter().any(Option::is_some) {
                    // A point during a catch-up could not be consistent; try again later.
                    self.next_point = Some(Instant::now() + Duration::from_secs(60));
                } else {
                    self.next_point = self.config.point_interval.map(|i| Instant::now() + i);
                    self.point(&mut stream, PointKind::Scheduled);
                }
            }
            self.digest_step(&mut stream)?;
            let batch = self.pick(self.config.batch_bytes, None);
            if batch.is_empty() {
                stream.link.flush()?;
                self.update_status(false);
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            self.ship(&mut stream, batch)?;
            self.update_status(false);
        }
    }

    /// Dirty extents to read next, up to `max_bytes`, each with the generation of now.
    /// Skips writes in flight and, per disk, the ranges in `skip` — by default those
    /// already shipping (read again only once acknowledged, if they changed meanwhile).
    fn pick(&mut self, max_bytes: u64, skip: Option<&[RangeSet]>) -> Vec<Pending> {
        let tracker = self.tracker.lock().unwrap_or_else(|e| e.into_inner());
        let state = tracker.state();
        let picked_at = state.generation();
        let mut out = Vec::new();
        let mut total = 0;
        let skip = skip.unwrap_or(&self.shipping);
        for (i, skip) in skip.iter().enumerate() {
            let disk = disk_id(i);
            let in_flight = state.in_flight(disk);
            let mut taken = RangeSet::new();
            while total < max_bytes {
                let Some((range, _)) = state.disk(disk).dirty.next_readable(
                    self.cursor[i],
                    self.config.extent_max,
                    &[&in_flight, skip, &taken],
                ) else {
                    break;
                };
                let range = ByteRange::new(range.start, range.end.min(self.sizes[i]));
                if range.is_empty() {
                    // Grains past the end of the disk (it shrank): nothing to read.
                    break;
                }
                taken.insert(range);
                self.cursor[i] = range.end;
                total += range.len();
                out.push(Pending {
                    seq: Seq(0),
                    disk,
                    range,
                    picked_at,
                });
            }
        }
        out
    }

    /// Reads, seals and sends `batch`; records it as pending.
    fn ship(&mut self, stream: &mut Stream, batch: Vec<Pending>) -> Result<(), AgentError> {
        let reqs = self.read_batch(&batch)?;
        self.send_batch(stream, batch, &reqs)
    }

    /// Reads the extents of `batch`.
    fn read_batch(&mut self, batch: &[Pending]) -> Result<Vec<ReadReq>, AgentError> {
        let mut reqs: Vec<ReadReq> = batch
            .iter()
            .map(|p| ReadReq {
                disk: p.disk.0 as usize,
                offset: p.range.start,
                buf: AlignedBuf::new(usize::try_from(p.range.len()).expect("≤ extent_max")),
            })
            .collect();
        self.reader.read(&mut reqs)?;
        Ok(reqs)
    }

    /// Seals what `read_batch` read and sends it in order; records it as pending.
    fn send_batch(
        &mut self,
        stream: &mut Stream,
        batch: Vec<Pending>,
        reqs: &[ReadReq],
    ) -> Result<(), AgentError> {
        let mut seq = stream.next_seq;
        let mut seqs = Vec::with_capacity(batch.len());
        let items: Vec<(RecordAddress, &[u8])> = batch
            .iter()
            .zip(reqs)
            .map(|(p, r)| {
                seqs.push(seq);
                let addr = RecordAddress {
                    server: self.config.server.clone(),
                    disk: p.disk,
                    offset: ByteOffset(p.range.start),
                    seq,
                };
                seq = Seq(seq.0.saturating_add(1));
                (addr, &r.buf[..])
            })
            .collect();
        self.lease.cover(seq)?;
        let frames = self.pool.seal(&items)?;
        for ((p, frame), seq) in batch.into_iter().zip(frames).zip(seqs) {
            self.limiter.take(frame.len());
            self.shipping[p.disk.0 as usize].insert(p.range);
            self.pending.push_back(Pending { seq, ..p });
            stream.next_seq = Seq(seq.0.saturating_add(1));
            stream.link.send_frame(Some(seq), frame)?;
            self.status.shipped_bytes += p.range.len();
            self.status.disks[p.disk.0 as usize].shipped_bytes += p.range.len();
            self.status.records_sent += 1;
            self.apply_acks(stream.link.durable());
        }
        Ok(())
    }

    /// Starts catch-ups for new gaps, updates their progress, and closes the gaps of
    /// disks whose catch-up is acknowledged whole.
    fn check_catch_ups(&mut self) {
        if self.catch_up.iter().all(Option::is_none) {
            let gaps = {
                let t = self.lock_tracker();
                (0..self.sizes.len()).any(|i| t.gap(disk_id(i)).is_some())
            };
            if !gaps {
                return;
            }
        }
        self.start_catch_ups();
        let mut tracker = self.tracker.lock().unwrap_or_else(|e| e.into_inner());
        for i in 0..self.sizes.len() {
            let Some(c) = &self.catch_up[i] else { continue };
            let (disk, size) = (disk_id(i), self.sizes[i]);
            let d = &mut self.status.disks[i];
            d.full_total = size;
            let Some(marked_at) = c.marked_at else {
                if let Method::Digest(scan) = &c.method {
                    d.full_done = scan.compared.min(size);
                }
                continue;
            };
            let left = tracker
                .state()
                .disk(disk)
                .dirty
                .bytes_not_newer_than(marked_at);
            d.full_done = size.saturating_sub(left);
            if left == 0 && tracker.close_gap(disk, c.gap_count) {
                let (compared, differing) = match &c.method {
                    Method::Full => (0, size),
                    Method::Digest(scan) => (scan.compared, scan.differing),
                };
                let report = CatchUpReport {
                    method: c.method.name().to_owned(),
                    reason: c.reason.clone(),
                    compared_bytes: compared,
                    differing_bytes: differing,
                    shipped_bytes: d.shipped_bytes - c.shipped_at_start,
                    millis: u64::try_from(c.started.elapsed().as_millis()).unwrap_or(u64::MAX),
                };
                tracing::info!(disk = %d.name, method = %report.method, reason = %report.reason, compared = report.compared_bytes, differing = report.differing_bytes, shipped = report.shipped_bytes, millis = report.millis, "catch-up acknowledged; the disk is in real time");
                d.catch_up = None;
                d.last_catch_up = Some(report);
                self.catch_up[i] = None;
            }
        }
    }

    fn update_status(&mut self, force: bool) {
        if !force && self.last_status.elapsed() < Duration::from_millis(500) {
            return;
        }
        self.check_catch_ups();
        let (dirty, gaps, drops, dirty_since) = {
            let t = self.lock_tracker();
            let disks = 0..self.sizes.len();
            let dirty: Vec<u64> = disks
                .clone()
                .map(|i| t.state().disk(disk_id(i)).dirty.bytes())
                .collect();
            let gaps: Vec<Option<String>> = disks
                .map(|i| t.gap(disk_id(i)).map(|g| g.0.clone()))
                .collect();
            let drops = t.stats().map(|s| s.drops).unwrap_or(0);
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

    fn write_status(&mut self) {
        self.status.updated_unix_ms = now_ms();
        self.last_status = Instant::now();
        if let Err(e) = self.status.save(&self.config.status_path()) {
            tracing::warn!(error = %e, "cannot write the status file");
        }
    }

    /// Answers requests on the control socket: `point` makes a manual point (only while
    /// connected) and answers with its status as JSON.
    fn serve_control(&mut self, mut stream: Option<&mut Stream>) {
        while let Ok((conn, _)) = self.control.accept() {
            let _ = conn.set_nonblocking(false);
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let mut line = String::new();
            if BufReader::new(&conn).read_line(&mut line).is_err() {
                continue;
            }
            let reply = match line.trim() {
                "point" => self.manual_point(stream.as_deref_mut()),
                other => PointStatus {
                    error: Some(format!("unknown request {other:?}")),
                    ..PointStatus::default()
                },
            };
            let _ = reply_json(&conn, &reply);
        }
    }

    /// A point an operator asked for (on the control socket or through the standby):
    /// refused while disconnected or while a disk catches up.
    fn manual_point(&mut self, stream: Option<&mut Stream>) -> PointStatus {
        let catching_up = self
            .catch_up
            .iter()
            .zip(&self.registration.disks)
            .find_map(|(c, d)| c.as_ref().map(|c| (d.name.clone(), c.method.name())));
        let refused = |error| PointStatus {
            unix_time_ms: now_ms(),
            error: Some(error),
            ..PointStatus::default()
        };
        match (stream, catching_up) {
            (None, _) => refused(format!(
                "not connected to the standby at {}: {}",
                self.config.standby,
                self.status.last_error.clone().unwrap_or_default()
            )),
            // Until a catch-up is acknowledged, the standby may lack changes made during
            // the gap: no point could be consistent (DESIGN.md I5).
            (Some(_), Some((disk, method))) => refused(format!(
                "disk {disk} is catching up after a tracking gap ({method}); a point now \
                 could not hold every change: try again once it is in real time (`ferry \
                 agent status`)"
            )),
            (Some(s), None) => self.point(s, PointKind::Manual),
        }
    }

    /// What the standby is told about replication's progress.
    fn progress(&self) -> Progress {
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

    /// Makes a recovery point; see the module doc. Never leaves a filesystem frozen.
    fn point(&mut self, stream: &mut Stream, kind: PointKind) -> PointStatus {
        let started = now_ms();
        let result = self.try_point(stream, kind);
        let status = match result {
            Ok(mut s) => {
                s.unix_time_ms = started;
                s
            }
            Err(e) => PointStatus {
                unix_time_ms: started,
                error: Some(e),
                ..PointStatus::default()
            },
        };
        match &status.error {
            None => {
                tracing::info!(point = ?status.point, seq = ?status.seq, consistent = status.consistent, freeze_ms = status.freeze_ms, "recovery point made")
            }
            Some(e) => tracing::error!("recovery point failed: {e}"),
        }
        self.status.last_point = Some(status.clone());
        self.write_status();
        status
    }

    fn try_point(&mut self, stream: &mut Stream, kind: PointKind) -> Result<PointStatus, String> {
        let names: Vec<String> = self
            .registration
            .disks
            .iter()
            .map(|d| d.name.clone())
            .collect();
        let mounts: Vec<PathBuf> =
            ferry_tracker::check::mounts_on(std::path::Path::new("/"), &names)
                .map_err(|e| error_chain(&e))?
                .into_iter()
                .map(PathBuf::from)
                .collect();
        let point = PointId(now_ms());
        let env = [
            ("FERRY_SERVER", self.config.server.to_string()),
            ("FERRY_POINT", point.0.to_string()),
        ];
        // Ship first what can be shipped without freezing.
        self.drain_dirty(stream, self.config.batch_bytes * 4)
            .map_err(|e| error_chain(&e))?;
        if let Some(hook) = &self.config.pre_freeze {
            run_hook("pre-freeze", hook, &env)?;
        }
        let mut attempt = 0;
        let result = loop {
            attempt += 1;
            match self.frozen_barrier(stream, &mounts, point, kind) {
                Ok(Some(s)) => break Ok(s),
                Ok(None) if attempt < 3 && !self.stop.load(Ordering::SeqCst) => {
                    tracing::warn!(
                        attempt,
                        "the remaining dirty set could not be read within the freeze limit; thawed, shipping more before retrying"
                    );
                    if let Err(e) = self.drain_dirty(stream, self.config.batch_bytes * 8) {
                        break Err(error_chain(&e));
                    }
                }
                Ok(None) => {
                    break Err(format!(
                        "the dirty set could not be read within {:?} of freeze in {attempt} attempts (writes outpace the link)",
                        self.config.max_freeze
                    ));
                }
                Err(e) => break Err(e),
            }
        };
        if let Some(hook) = &self.config.post_thaw
            && let Err(e) = run_hook("post-thaw", hook, &env)
        {
            tracing::warn!("{e}");
        }
        let mut status = result?;
        let seq = Seq(status.seq.expect("a barrier was sent"));
        stream
            .link
            .wait_durable(seq, Duration::from_secs(60))
            .map_err(|e| {
                format!(
                    "the point's barrier was not acknowledged: {}",
                    error_chain(&e)
                )
            })?;
        self.apply_acks(stream.link.durable());
        status.ok = true;
        Ok(status)
    }

    /// Ships dirty extents until the dirty set is empty or `budget` bytes were shipped.
    fn drain_dirty(&mut self, stream: &mut Stream, budget: u64) -> Result<(), AgentError> {
        let mut shipped = 0;
        while shipped < budget && !self.stop.load(Ordering::SeqCst) {
            let batch = self.pick(self.config.batch_bytes, None);
            if batch.is_empty() {
                break;
            }
            shipped += batch.iter().map(|p| p.range.len()).sum::<u64>();
            self.ship(stream, batch)?;
        }
        Ok(())
    }

    /// Freezes, reads the remaining dirty set (and every suspect range) into memory,
    /// thaws, then seals and sends it and the barrier: nothing but local reads happens
    /// while the filesystems are frozen, so a slow or dead link cannot prolong a freeze.
    /// `Ok(None)` when the freeze limit (time, or [`FREEZE_READ_CAP`] bytes) passed first
    /// (thawed, no barrier). The point is consistent when no write was submitted or
    /// completed between the freeze and the end of the reads and none is in flight.
    fn frozen_barrier(
        &mut self,
        stream: &mut Stream,
        mounts: &[PathBuf],
        point: PointId,
        kind: PointKind,
    ) -> Result<Option<PointStatus>, String> {
        let started = Instant::now();
        let frozen = Frozen::freeze(mounts, self.config.max_freeze * 2 + Duration::from_secs(1))
            .map_err(|e| error_chain(&e))?;
        let frozen_at = ferry_tracker::sys::monotonic_ns();
        let n = self.sizes.len();
        // Writes submitted before the freeze are complete now; any the tracker still
        // counts as in flight lost their completion: readable, as suspect. Suspect ranges
        // are read inside this freeze; they are given back unless the point is consistent.
        let (before, suspects) = {
            let mut t = self.lock_tracker();
            t.poll(Duration::ZERO).map_err(|e| error_chain(&e))?;
            let state = t.state_mut();
            state.sweep(frozen_at);
            let mut suspects = Vec::with_capacity(n);
            for i in 0..n {
                let disk = disk_id(i);
                let suspect = std::mem::take(&mut state.disk_mut(disk).suspect);
                for r in suspect.iter() {
                    state.mark_dirty(disk, r);
                }
                suspects.push(suspect);
            }
            (state.counters, suspects)
        };
        let give_back = |agent: &mut Self, suspects: Vec<RangeSet>| {
            let mut t = agent.lock_tracker();
            for (i, set) in suspects.into_iter().enumerate() {
                for r in set.iter() {
                    t.state_mut().disk_mut(disk_id(i)).suspect.insert(r);
                }
            }
        };
        // Everything dirty is read again, shipping or not (it may have changed since it
        // was picked); each range once.
        let mut read = vec![RangeSet::new(); n];
        let mut batches = Vec::new();
        let mut bytes = 0;
        loop {
            let batch = self.pick(self.config.batch_bytes, Some(&read));
            if batch.is_empty() {
                break;
            }
            if started.elapsed() > self.config.max_freeze || bytes > FREEZE_READ_CAP {
                drop(frozen);
                give_back(self, suspects);
                return Ok(None);
            }
            for p in &batch {
                read[p.disk.0 as usize].insert(p.range);
                bytes += p.range.len();
            }
            let reqs = match self.read_batch(&batch) {
                Ok(r) => r,
                Err(e) => {
                    drop(frozen);
                    give_back(self, suspects);
                    return Err(error_chain(&e));
                }
            };
            batches.push((batch, reqs));
        }
        let quiet = {
            let mut t = self.lock_tracker();
            t.poll(Duration::ZERO).map_err(|e| error_chain(&e))?;
            let now = t.state().counters;
            now.submitted == before.submitted
                && now.completed == before.completed
                && now.fallback_ranges == before.fallback_ranges
                && t.state().in_flight_count() == 0
        };
        let frozen_mounts = frozen.mounts();
        drop(frozen);
        let freeze_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        if !quiet {
            give_back(self, suspects);
        }
        for (batch, reqs) in batches {
            self.send_batch(stream, batch, &reqs)
                .map_err(|e| error_chain(&e))?;
        }
        let seq = stream.next_seq;
        self.lease.cover(seq).map_err(|e| error_chain(&e))?;
        let barrier = ferry_wire::seal::sign_barrier(
            &self.keys,
            Barrier {
                server: self.config.server.clone(),
                seq,
                point,
                kind,
                consistent: quiet,
                unix_time_ms: now_ms(),
                registration: self.registration.seal,
                seal: [0; 32],
                mac: [0; 32],
            },
        );
        stream.next_seq = Seq(seq.0.saturating_add(1));
        stream
            .link
            .send(&Message::Barrier(barrier.clone()))
            .and_then(|()| stream.link.flush())
            .map_err(|e| error_chain(&e))?;
        Ok(Some(PointStatus {
            point: Some(point.0),
            seq: Some(seq.0),
            consistent: barrier.consistent,
            freeze_ms,
            frozen: frozen_mounts,
            ..PointStatus::default()
        }))
    }
}

fn reply_json(mut conn: &UnixStream, reply: &PointStatus) -> std::io::Result<()> {
    let mut text = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    text.push(b'\n');
    conn.write_all(&text)
}

/// Asks a running agent (through its control socket) to make a manual point.
pub fn request_point(socket: &std::path::Path, timeout: Duration) -> std::io::Result<PointStatus> {
    let mut conn = UnixStream::connect(socket)?;
    conn.set_read_timeout(Some(timeout))?;
    conn.write_all(b"point\n")?;
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// The tracker thread: drains the tracker's event logs into the state every 20 ms.
fn drain_loop(tracker: &Mutex<Tracker>, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(20));
        let mut t = tracker.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = t.poll(Duration::ZERO) {
            tracing::error!(error = %error_chain(&e), "draining the tracker failed");
        }
    }
}

fn nix_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}
