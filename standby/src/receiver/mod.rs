//! The standby service: accepts agent connections over TLS 1.3 (client certificates of
//! the site pair's CA; plain TCP only on a loopback listen asked for explicitly),
//! authenticates them, stores what they send, and acknowledges only what is durable.
//!
//! Per connection:
//!
//! ```text
//! TLS handshake (the whole handshake, TLS and the messages below, under one absolute
//! deadline of `handshake_timeout`)
//! Hello ──▶ the client certificate names this server (or a peer site)? else
//!           Error(AuthenticationFailed)
//!       ◀── Challenge { server nonce, standby proof }
//! Authenticate ──▶ proof checks with the server's auth key, over the TLS exporter? else
//!                  Error(AuthenticationFailed); then: server on the allow-list or in the
//!                  control catalogue? else Error(UnknownServer), logged, closed (known
//!                  or not, a peer without the key meets the same challenge and refusal)
//!       ◀── Welcome { last_durable }   (the log is fsynced first, so it is true)
//! RegisterServer | Record | Barrier | Heartbeat ──▶ …   ◀── Ack { durable } …
//! ```
//!
//! - **Ingest**: the session thread reads each frame, checks its CRC (frame decoding),
//!   applies [`ServerState::ingest`] (MAC key only) and appends the frame's bytes as
//!   received. A refused frame gets an `Error` naming why, is logged, and closes the
//!   connection; nothing of it is stored (DESIGN.md I7).
//! - **Group commit** (DESIGN.md I2): a sync thread per connection waits until records
//!   have been written past the durable seq, takes a [`crate::log::SyncTicket`], runs the
//!   fsync without holding the server's lock (the session keeps appending meanwhile), and
//!   then acks the highest seq that fsync covered. One fsync covers every record written
//!   before it started, however many.
//! - **Full disk**: an append that fails for lack of space is undone, reported to the
//!   agent once as a retryable `Error(StorageFull)` and logged; the session then retries
//!   every [`FULL_RETRY`] without reading further, so TCP and the agent's window push back
//!   on the agent. Acks continue for what is durable; nothing acknowledged is at risk.
//!   When space returns, ingest resumes by itself.
//! - **One connection per server**: a new, authenticated connection for a server
//!   replaces the old one (shut down) — an agent that reconnects after a network break is
//!   not locked out by its half-dead predecessor.
//! - **Retention** runs every `clean_interval` for each allowed server, holding that
//!   server's lock (its ingest pauses for the run).
//! - **Control** ([`ControlPlane`], the site's control plane): a server the operator
//!   manages registers, reports
//!   its progress and answers point requests through its session; its records are taken
//!   only while its state replicates — otherwise the agent is told `Paused` (after its
//!   registration is stored) and the connection ends once the agent closes it.
//!
//! A file per job: `accept` (the accept loop, its handshake slots in `admission`),
//! `handshake` (TLS, Hello, the challenge, the allow-list), `session` (taking over the
//! server, the session's threads and its end), `ingest` (storing what the agent sends),
//! `digest_requests` (answering them from durable state), `group_commit` (fsync, then
//! ack), `maintenance` (retention runs), and `plane` (the control plane's interface).
//! This file holds the service and the per-server slots they share.

mod accept;
mod admission;
mod digest_requests;
mod group_commit;
mod handshake;
mod ingest;
mod maintenance;
mod plane;
mod session;

use crate::log::DEFAULT_SEGMENT_SIZE;
use crate::retention::Policy;
use crate::server::{DataDir, DataDirLock, OpenError, ServerState};
use admission::Admission;
use ferry_tls::{Conn, LinkListen};
use ferry_wire::{ServerId, StandbyKey, error_chain};
use std::collections::HashMap;
use std::collections::HashSet;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

pub use admission::{MAX_HANDSHAKES, MAX_PER_ADDRESS};
pub use ingest::FULL_RETRY;
pub use plane::{ControlPlane, NoControlPlane, Session, SessionGone};

/// The service's settings (the `ferry standby` config file maps onto this).
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub data_dir: PathBuf,
    pub listen: String,
    /// Segment roll size in bytes. Default 64 MiB.
    pub segment_size: u64,
    /// The servers allowed to connect, each with its retention policy.
    pub servers: HashMap<ServerId, Policy>,
    /// Time between retention runs. Default 10 minutes.
    pub clean_interval: Duration,
    /// Time allowed for each handshake message. Default 10 s.
    pub handshake_timeout: Duration,
    /// Where replicas of each storage class live ("standard", the default, is
    /// `data_dir`).
    pub storage_classes: HashMap<String, PathBuf>,
    /// TLS (the default a config gives), or plain TCP on a loopback listen. Default
    /// here: plain TCP, which [`Standby::bind`] refuses off loopback.
    pub tls: LinkListen,
    /// Peer sites whose certificates may speak for any server (their reverse agents
    /// replicate failed-over servers back); the server's auth key is still needed.
    pub peer_sites: HashSet<String>,
    /// The site's control plane (managed servers). Default: none, the config's servers
    /// only.
    pub control: Arc<dyn ControlPlane>,
}

impl ServiceConfig {
    pub fn new(data_dir: PathBuf, listen: String) -> Self {
        Self {
            data_dir,
            listen,
            segment_size: DEFAULT_SEGMENT_SIZE,
            servers: HashMap::new(),
            clean_interval: Duration::from_secs(600),
            handshake_timeout: Duration::from_secs(10),
            storage_classes: HashMap::new(),
            tls: LinkListen::PlaintextLoopback,
            peer_sites: HashSet::new(),
            control: Arc::new(NoControlPlane),
        }
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    DataDir(#[from] OpenError),
    #[error(transparent)]
    Plaintext(#[from] ferry_tls::LinkConnError),
}

/// A server's state and its current connection.
#[derive(Debug, Default)]
struct Slot {
    inner: Mutex<SlotInner>,
    /// Signalled when a session appends, ends, or is replaced.
    changed: Condvar,
    /// Held around every fsync of the server's log and the handling of its failure
    /// (taken before `inner`): once one fsync has failed, no other may report success
    /// over the pages the kernel marked clean before the log is cut back.
    fsync: Mutex<()>,
}

#[derive(Debug, Default)]
struct SlotInner {
    state: Option<ServerState>,
    /// The connection currently serving this server, and a handle to shut it down.
    conn: Option<(u64, Conn)>,
    /// Set when an fsync failed and the unsynced tail could not be cut off: the page
    /// cache may hold frames the disk lacks, so the store is not reopened by this process.
    broken: Option<String>,
}

impl SlotInner {
    /// After a failed fsync (or a failed cleaning run): drops the in-memory state, cutting
    /// the log back to what fsyncs covered so that the next open reads only durable
    /// frames. The agent resends everything above the last ack. Returns the connection
    /// it detached (which must be closed: its session can no longer store anything).
    fn discard_state(&mut self, server: &ServerId) -> Option<Conn> {
        if let Some(mut state) = self.state.take()
            && let Err(e) = state.log.discard_unsynced()
        {
            let text = format!(
                "server {server}: after a failed fsync the log could not be cut back to its \
                 durable length ({}); its store is closed until the standby is restarted \
                 and the storage checked",
                error_chain(&e)
            );
            tracing::error!("{text}");
            self.broken = Some(text);
        }
        self.conn.take().map(|(_, s)| s)
    }
}

impl Slot {
    /// A panic under this lock may have left the server's store mid-append: its in-memory
    /// state is dropped, to be reopened from disk at next use as after a restart (torn
    /// tail cut; nothing unsynced was acknowledged). The rest is plain data, recovered.
    fn lock(&self) -> MutexGuard<'_, SlotInner> {
        self.inner.lock().unwrap_or_else(|poisoned| {
            let mut inner = poisoned.into_inner();
            inner.state = None;
            self.inner.clear_poison();
            inner
        })
    }

    fn lock_fsync(&self) -> MutexGuard<'_, ()> {
        self.fsync.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Debug)]
struct Shared {
    config: ServiceConfig,
    /// Every server's ingest keys derive from it; nothing here reads or seals a record
    /// (DESIGN.md I6, I8).
    keys: StandbyKey,
    data: DataDir,
    slots: Mutex<HashMap<ServerId, Arc<Slot>>>,
    stop: AtomicBool,
    next_conn: AtomicU64,
    /// Connections not yet authenticated.
    handshakes: Arc<Admission>,
}

impl Shared {
    fn slot(&self, id: &ServerId) -> Arc<Slot> {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.clone())
            .or_default()
            .clone()
    }
}

/// A bound, not yet running, standby service.
#[derive(Debug)]
pub struct Standby {
    shared: Arc<Shared>,
    listener: TcpListener,
    _lock: DataDirLock,
}

/// A standby running on background threads; [`StandbyHandle::stop`] (or drop) ends it.
#[derive(Debug)]
pub struct StandbyHandle {
    shared: Arc<Shared>,
    addr: SocketAddr,
    accept: Option<JoinHandle<()>>,
}

impl Standby {
    /// Takes the data directory's lock and binds the listen address.
    pub fn bind(config: ServiceConfig, keys: StandbyKey) -> Result<Self, ServiceError> {
        let data = DataDir::new(&config.data_dir);
        let lock = data.lock()?;
        let listener = TcpListener::bind(&config.listen).map_err(|source| ServiceError::Bind {
            addr: config.listen.clone(),
            source,
        })?;
        let local = listener.local_addr().map_err(|source| ServiceError::Bind {
            addr: config.listen.clone(),
            source,
        })?;
        config.tls.check(local)?;
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                keys,
                data,
                slots: Mutex::default(),
                stop: AtomicBool::new(false),
                next_conn: AtomicU64::new(1),
                handshakes: Arc::default(),
            }),
            listener,
            _lock: lock,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the process ends.
    pub fn run(self) {
        let shared = self.shared.clone();
        std::thread::Builder::new()
            .name("ferry-retention".into())
            .spawn(move || maintenance::maintenance(&shared))
            .expect("spawning the retention thread");
        accept::accept_loop(&self.listener, &self.shared);
    }

    /// Serves on background threads.
    pub fn spawn(self) -> io::Result<StandbyHandle> {
        let addr = self.local_addr()?;
        let shared = self.shared.clone();
        let accept = std::thread::Builder::new()
            .name("ferry-accept".into())
            .spawn(move || self.run())?;
        Ok(StandbyHandle {
            shared,
            addr,
            accept: Some(accept),
        })
    }
}

impl StandbyHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, shuts every connection down and waits for the accept loop.
    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wakes the accept loop
        for slot in self
            .shared
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            if let Some((_, s)) = &slot.lock().conn {
                let _ = s.shutdown(Shutdown::Both);
            }
            slot.changed.notify_all();
        }
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

impl Drop for StandbyHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether `conn_id` is the connection currently serving the slot's server.
fn is_current(inner: &SlotInner, conn_id: u64) -> bool {
    inner.conn.as_ref().is_some_and(|(id, _)| *id == conn_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::OpenMode;

    #[test]
    fn a_panic_under_a_slot_lock_leaves_the_store_to_be_reopened_from_disk() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let server = ServerId::new("web-1").expect("a valid name");
        let (state, _) = DataDir::new(dir.path())
            .open_server(&server, DEFAULT_SEGMENT_SIZE, OpenMode::ReadWrite)
            .expect("a new store opens");
        let slot = Slot::default();
        slot.lock().state = Some(state);
        std::thread::scope(|s| {
            let panicked = s
                .spawn(|| {
                    let _inner = slot.lock();
                    panic!("a bug while appending");
                })
                .join();
            assert!(panicked.is_err(), "the thread panicked");
        });
        let inner = slot.lock();
        assert!(
            inner.state.is_none(),
            "a store a panic may have left mid-append must be reopened, not used"
        );
        drop(inner);
        assert!(!slot.inner.is_poisoned(), "the slot is usable again");
    }
}
