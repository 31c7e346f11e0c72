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

use crate::digests::{Baseline, chunk_digests};
use crate::log::{DEFAULT_SEGMENT_SIZE, OpenMode};
use crate::retention::{self, Policy};
use crate::server::{DataDir, DataDirLock, IngestError, Ingested, OpenError, ServerState};
use ferry_tls::{Conn, LinkListen};
use ferry_wire::auth::{self, Channel, Exchange, Nonce, Role};
use ferry_wire::digest::CHUNK;
use ferry_wire::frame::{FrameError, ReadFrameError, read_frame};
use ferry_wire::message::{
    Ack, Challenge, DigestRequest, Digests, ErrorCode, ErrorMessage, Heartbeat, MAX_ERROR_TEXT,
    Welcome,
};
use ferry_wire::{MacKey, Message, Seq, ServerId, StandbyKey, error_chain};
use std::collections::HashMap;
use std::collections::HashSet;
use std::io::{self, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

mod admission;
mod plane;

use admission::{Admission, Ticket};
pub use admission::{MAX_HANDSHAKES, MAX_PER_ADDRESS};
pub use plane::{ControlPlane, NoControlPlane, Session, SessionGone};

/// How often a session retries an append that failed for lack of space.
pub const FULL_RETRY: Duration = Duration::from_millis(250);

/// How long a paused session waits for its agent to close the connection after being
/// told (so that the agent reads the reason before its writes could meet a reset).
const PAUSED_LINGER: Duration = Duration::from_secs(2);

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
            .spawn(move || maintenance(&shared))
            .expect("spawning the retention thread");
        accept_loop(&self.listener, &self.shared);
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

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    tracing::info!(
        listen = %listener.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string()),
        data_dir = %shared.config.data_dir.display(),
        servers = shared.config.servers.len(),
        tls = matches!(shared.config.tls, LinkListen::Tls(_)),
        "standby listening"
    );
    let mut pressure = Pressure::default();
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let peer = match stream.peer_addr() {
            Ok(a) => a,
            Err(e) => {
                tracing::info!(error = %e, "a connection ended before it was accepted");
                continue;
            }
        };
        let ticket = match shared.handshakes.admit(&stream, peer.ip()) {
            Ok((ticket, admitted)) => {
                if let Some(cut) = admitted.cut {
                    pressure.note(format!(
                        "{MAX_HANDSHAKES} connections were in the handshake: cut the oldest \
                         (from {cut}) to admit one from {peer}"
                    ));
                }
                ticket
            }
            Err(e) => {
                pressure.note(format!("closed a connection from {peer}: {e}"));
                continue;
            }
        };
        let session_shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("ferry-session".into())
            .spawn(move || {
                let peer = peer.to_string();
                match session(&session_shared, stream, ticket, &peer) {
                    // Refusals were logged as warnings when they happened, cuts counted.
                    Err(SessionEnd::Refused(_) | SessionEnd::Cut) | Ok(()) => {}
                    Err(e) => tracing::info!(peer, reason = %e, "connection closed"),
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a session thread");
        }
    }
}

/// Handshakes cut and connections refused for want of a slot, logged at most every
/// [`Pressure::EVERY`] so that a flood of connections cannot flood the log.
#[derive(Debug, Default)]
struct Pressure {
    last: Option<Instant>,
    unlogged: u64,
}

impl Pressure {
    const EVERY: Duration = Duration::from_secs(10);

    fn note(&mut self, what: String) {
        self.unlogged += 1;
        if self.last.is_none_or(|t| t.elapsed() >= Self::EVERY) {
            tracing::warn!(
                events = self.unlogged,
                "handshake slots under pressure ({} such events since the last report): {what}",
                self.unlogged
            );
            (self.last, self.unlogged) = (Some(Instant::now()), 0);
        }
    }
}

/// Why a session ended (for the log line; the agent was told already when it matters).
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error("connection lost")]
    Io(#[source] io::Error),
    #[error("the agent closed the connection")]
    Closed,
    #[error("refused: {0}")]
    Refused(String),
    #[error("cut in the handshake to admit a newer connection")]
    Cut,
    #[error("replaced by a newer connection for the same server")]
    Replaced,
    #[error("the standby is stopping")]
    Stopping,
    /// The server's records are not taken now (the reason is for the agent).
    #[error("paused: {0}")]
    Paused(String),
}

/// Tells the agent why its records are not taken and waits (briefly) for it to close the
/// connection, discarding what it sent meanwhile.
fn paused(
    out: &Mutex<Conn>,
    input: &mut BufReader<Conn>,
    peer: &str,
    server: &ServerId,
    reason: String,
) -> SessionEnd {
    tracing::info!(peer, %server, "{reason}");
    send_error(out, ErrorCode::Paused, &reason);
    let deadline = std::time::Instant::now() + PAUSED_LINGER;
    let _ = input
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(200)));
    let mut sink = [0u8; 64 << 10];
    while std::time::Instant::now() < deadline {
        match io::Read::read(input, &mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    SessionEnd::Refused(reason)
}

/// Sends an error to the agent and logs it; returns the session's end.
fn refuse(out: &Mutex<Conn>, peer: &str, code: ErrorCode, message: String) -> SessionEnd {
    tracing::warn!(peer, ?code, "{message}");
    send_error(out, code, &message);
    SessionEnd::Refused(message)
}

fn send_error(out: &Mutex<Conn>, code: ErrorCode, message: &str) {
    let mut text: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    while text.len() > MAX_ERROR_TEXT {
        text.pop();
    }
    let _ = send(
        out,
        &Message::Error(ErrorMessage {
            code,
            message: text,
        }),
    );
}

fn send(out: &Mutex<Conn>, message: &Message) -> io::Result<()> {
    let frame = message
        .encode()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    out.lock()
        .unwrap_or_else(|e| e.into_inner())
        .write_all(&frame)
}

fn read_next(
    input: &mut BufReader<Conn>,
    buf: &mut Vec<u8>,
    out: &Mutex<Conn>,
    peer: &str,
) -> Result<Message, SessionEnd> {
    match read_frame(input, buf) {
        Ok(Some(m)) => Ok(m),
        Ok(None) | Err(ReadFrameError::EndInsideFrame { .. }) => Err(SessionEnd::Closed),
        Err(ReadFrameError::Io(e)) => Err(SessionEnd::Io(e)),
        Err(ReadFrameError::Frame(e @ FrameError::UnsupportedVersion { .. })) => Err(refuse(
            out,
            peer,
            ErrorCode::UnsupportedVersion,
            e.to_string(),
        )),
        Err(ReadFrameError::Frame(e)) => Err(refuse(
            out,
            peer,
            ErrorCode::Malformed,
            format!("frame refused: {}", error_chain(&e)),
        )),
    }
}

fn session(
    shared: &Arc<Shared>,
    tcp: TcpStream,
    mut handshake: Ticket,
    peer: &str,
) -> Result<(), SessionEnd> {
    tcp.set_nodelay(true).map_err(SessionEnd::Io)?;
    // One deadline for the whole handshake, TLS and ferry's messages: a peer sending a
    // byte at a time is cut off at it, whatever each read waits.
    let deadline = Instant::now() + shared.config.handshake_timeout;
    let stream = shared.config.tls.accept(tcp, deadline).map_err(|e| {
        if handshake.is_cut() {
            return SessionEnd::Cut; // counted by the accept loop's report
        }
        let text = error_chain(&e);
        tracing::warn!(peer, "{text}");
        SessionEnd::Refused(text)
    })?;
    stream
        .set_deadline(Some(deadline))
        .map_err(SessionEnd::Io)?;
    let channel = Channel(stream.channel().map_err(|e| {
        SessionEnd::Refused(format!("cannot bind the session: {}", error_chain(&e)))
    })?);
    let out = Arc::new(Mutex::new(stream.try_clone().map_err(SessionEnd::Io)?));
    let mut input = BufReader::with_capacity(2 << 20, stream.try_clone().map_err(SessionEnd::Io)?);
    let mut buf = Vec::new();

    // Handshake.
    let hello = match read_next(&mut input, &mut buf, &out, peer)? {
        Message::Hello(h) => h,
        other => {
            return Err(refuse(
                &out,
                peer,
                ErrorCode::Malformed,
                format!("expected Hello, got {:?}", other.frame_type()),
            ));
        }
    };
    let server = hello.server.clone();
    if stream.is_tls() {
        let names = stream.peer_names();
        let speaks_for = names.iter().any(|n| {
            n.as_str() == server.as_str() || shared.config.peer_sites.contains(n.as_str())
        });
        if !speaks_for {
            return Err(refuse(
                &out,
                peer,
                ErrorCode::AuthenticationFailed,
                format!(
                    "the client certificate names {}, not server {server} (nor a peer site): \
                     each host connects with its own certificate",
                    if names.is_empty() {
                        "nothing".to_owned()
                    } else {
                        names.join(", ")
                    }
                ),
            ));
        }
    }
    let keys = shared.keys.ingest_keys(&server);
    let server_nonce = Nonce::random(&mut rand_core::OsRng);
    let exchange = Exchange {
        server: &server,
        client_nonce: &hello.client_nonce,
        server_nonce: &server_nonce,
        channel: &channel,
    };
    send(
        &out,
        &Message::Challenge(Challenge {
            server_nonce,
            standby_proof: auth::prove(&keys.auth, Role::Standby, &exchange),
        }),
    )
    .map_err(SessionEnd::Io)?;
    match read_next(&mut input, &mut buf, &out, peer)? {
        Message::Authenticate(a)
            if auth::check(&keys.auth, Role::Agent, &exchange, &a.agent_proof) => {}
        Message::Authenticate(_) => {
            return Err(refuse(
                &out,
                peer,
                ErrorCode::AuthenticationFailed,
                format!(
                    "server {server}: the agent's proof does not match the server's auth key \
                     (the host key is another server's or another site pair's)"
                ),
            ));
        }
        Message::Error(e) => {
            let text = format!(
                "server {server}: the agent refused: {:?}: {}",
                e.code, e.message
            );
            tracing::warn!(peer, "{text}");
            return Err(SessionEnd::Refused(text));
        }
        other => {
            return Err(refuse(
                &out,
                peer,
                ErrorCode::Malformed,
                format!("expected Authenticate, got {:?}", other.frame_type()),
            ));
        }
    }
    // Only now, so that a peer without the server's auth key learns nothing of which
    // servers exist: known or not, it meets the same challenge and the same refusal.
    if !shared.config.servers.contains_key(&server) && !shared.config.control.manages(&server) {
        return Err(refuse(
            &out,
            peer,
            ErrorCode::UnknownServer,
            format!(
                "server {server} is not known to this standby; an operator adds it with \
                 `ferry server add` (or to the standby's [[servers]] list)"
            ),
        ));
    }
    handshake.done();
    stream.set_deadline(None).map_err(SessionEnd::Io)?;
    stream.set_read_timeout(None).map_err(SessionEnd::Io)?;

    // Take over the server: replace any older connection, open its state, make it durable.
    let slot = shared.slot(&server);
    let conn_id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let last_durable = {
        let _fsync = slot.lock_fsync();
        let mut inner = slot.lock();
        if let Some((_, old)) = inner.conn.take() {
            // Only the server's own certificate and auth key get this far: a takeover is
            // the agent reconnecting, or that server's credentials in another hand.
            tracing::warn!(
                %server, peer,
                "a new authenticated connection for this server replaces the previous one \
                 (an agent reconnecting; if not, its host key and certificate are in \
                 someone else's hands)"
            );
            let _ = old.shutdown(Shutdown::Both);
        }
        inner.conn = Some((conn_id, stream.try_clone().map_err(SessionEnd::Io)?));
        slot.changed.notify_all();
        if let Some(text) = inner.broken.clone() {
            inner.conn = None;
            return Err(refuse(&out, peer, ErrorCode::Internal, text));
        }
        if inner.state.is_none() {
            match shared
                .data
                .open_server(&server, shared.config.segment_size, OpenMode::ReadWrite)
            {
                Ok((state, report)) => {
                    for (path, torn) in &report.torn {
                        tracing::warn!(
                            %server, segment = %path.display(), offset = torn.offset,
                            bytes = torn.len, "truncated a torn tail: {}", torn.reason
                        );
                    }
                    inner.state = Some(state);
                }
                Err(e) => {
                    inner.conn = None;
                    return Err(refuse(
                        &out,
                        peer,
                        ErrorCode::Internal,
                        format!(
                            "cannot open the store of server {server}: {}",
                            error_chain(&e)
                        ),
                    ));
                }
            }
        }
        let state = inner.state.as_mut().expect("opened above");
        match state.log.sync() {
            Ok(seq) => seq,
            Err(e) => {
                inner.discard_state(&server);
                let code = if e.is_retryable() {
                    ErrorCode::StorageFull
                } else {
                    ErrorCode::Internal
                };
                return Err(refuse(
                    &out,
                    peer,
                    code,
                    format!("server {server}: {}", error_chain(&e)),
                ));
            }
        }
    };
    let welcome = Welcome {
        last_durable,
        digests: last_durable > Seq(0) || shared.config.control.baseline_disks(&server).is_some(),
        paused: shared.config.control.paused(&server),
    };
    send(&out, &Message::Welcome(welcome)).map_err(SessionEnd::Io)?;
    let (session, writer) = plane::session(conn_id);
    shared.config.control.connected(&server, session);
    tracing::info!(
        peer, %server, agent = %hello.agent_version, %last_durable, "agent connected"
    );

    let done = Arc::new(AtomicBool::new(false));
    let requests = {
        let (out, done) = (out.clone(), done.clone());
        std::thread::Builder::new()
            .name("ferry-requests".into())
            .spawn(move || writer.run(&out, &done))
            .map_err(SessionEnd::Io)?
    };
    let syncer = {
        let (slot, out, done, server) = (slot.clone(), out.clone(), done.clone(), server.clone());
        std::thread::Builder::new()
            .name("ferry-sync".into())
            .spawn(move || sync_loop(&slot, conn_id, &out, &done, &server, last_durable))
            .map_err(SessionEnd::Io)?
    };
    let result = ingest_loop(
        shared, &slot, conn_id, &mut input, &mut buf, &out, peer, &server, &keys.mac,
    );
    let result = match result {
        Err(SessionEnd::Paused(reason)) => Err(paused(&out, &mut input, peer, &server, reason)),
        other => other,
    };
    shared.config.control.disconnected(&server, conn_id);
    done.store(true, Ordering::SeqCst);
    {
        let mut inner = slot.lock();
        if inner.conn.as_ref().is_some_and(|(id, _)| *id == conn_id) {
            inner.conn = None;
        }
    }
    slot.changed.notify_all();
    let _ = syncer.join();
    let _ = requests.join();
    result
}

fn is_current(inner: &SlotInner, conn_id: u64) -> bool {
    inner.conn.as_ref().is_some_and(|(id, _)| *id == conn_id)
}

#[expect(
    clippy::too_many_arguments,
    reason = "one call site; a struct would only rename them"
)]
fn ingest_loop(
    shared: &Shared,
    slot: &Slot,
    conn_id: u64,
    input: &mut BufReader<Conn>,
    buf: &mut Vec<u8>,
    out: &Mutex<Conn>,
    peer: &str,
    server: &ServerId,
    mac_key: &MacKey,
) -> Result<(), SessionEnd> {
    let mut reported_full = false;
    let mut baseline = None;
    loop {
        let message = read_next(input, buf, out, peer)?;
        match &message {
            Message::Heartbeat(_) => {
                let _ = send(
                    out,
                    &Message::Heartbeat(Heartbeat {
                        unix_time_ms: crate::now_ms(),
                    }),
                );
                continue;
            }
            Message::Error(e) => {
                let text = format!("the agent reported {:?}: {}", e.code, e.message);
                tracing::warn!(peer, %server, "{text}");
                return Err(SessionEnd::Refused(text));
            }
            Message::DigestRequest(req) => {
                let reply = answer_digests(shared, slot, conn_id, server, *req, &mut baseline)
                    .map_err(|end| end.refuse(out, peer, server))?;
                send(out, &Message::Digests(reply)).map_err(SessionEnd::Io)?;
                continue;
            }
            Message::Progress(p) => {
                shared.config.control.progress(server, *p);
                continue;
            }
            Message::PointResult(r) => {
                shared.config.control.point_result(server, r.clone());
                continue;
            }
            Message::RegisterServer(_) => {
                if let Some(reason) = shared.config.control.registration_refused(server) {
                    return Err(SessionEnd::Paused(reason));
                }
            }
            _ => {}
        }
        loop {
            if shared.stop.load(Ordering::SeqCst) {
                return Err(SessionEnd::Stopping);
            }
            let mut inner = slot.lock();
            if !is_current(&inner, conn_id) {
                return Err(SessionEnd::Replaced);
            }
            // Under the server's lock, on every try (a full disk retries): a record is
            // never appended once a step that ends replication is published.
            if matches!(message, Message::Record(_) | Message::Barrier(_))
                && let Some(reason) = shared.config.control.paused(server)
            {
                return Err(SessionEnd::Paused(reason));
            }
            let state = inner.state.as_mut().expect("open while connected");
            let result = match &message {
                Message::RegisterServer(reg) => state.register(reg.clone(), mac_key).map(|()| None),
                _ => state.ingest(buf, &message, mac_key).map(Some),
            };
            match result {
                Ok(None) => {
                    // A registration: stored; the operator sees the server initialized.
                    drop(inner);
                    if let Err(e) = shared.config.control.registered(server) {
                        return Err(refuse(
                            out,
                            peer,
                            ErrorCode::Internal,
                            format!("server {server}: {e}"),
                        ));
                    }
                    if let Some(reason) = shared.config.control.paused(server) {
                        return Err(SessionEnd::Paused(reason));
                    }
                    break;
                }
                Ok(stored) => {
                    if matches!(stored, Some(Ingested::Stored(_))) {
                        slot.changed.notify_all();
                        if let Message::Barrier(b) = &message {
                            shared.config.control.point_stored(server, b);
                        }
                    }
                    if reported_full {
                        tracing::info!(%server, "storage has room again; ingest resumed");
                        reported_full = false;
                    }
                    break;
                }
                Err(e) if e.is_retryable() => {
                    drop(inner);
                    if !reported_full {
                        reported_full = true;
                        let text = format!(
                            "server {server}: the standby's storage is full ({}); not \
                             acknowledging until space is freed",
                            error_chain(&e)
                        );
                        tracing::error!(peer, "{text}");
                        send_error(out, ErrorCode::StorageFull, &text);
                    }
                    std::thread::sleep(FULL_RETRY);
                }
                Err(e) => {
                    if e.needs_reopen() {
                        inner.discard_state(server);
                    }
                    drop(inner);
                    return Err(refuse_ingest(out, peer, server, &e));
                }
            }
        }
    }
}

/// Why a digest request got no answer.
enum DigestRefusal {
    End(SessionEnd),
    Bad(String),
}

impl DigestRefusal {
    fn refuse(self, out: &Mutex<Conn>, peer: &str, server: &ServerId) -> SessionEnd {
        match self {
            DigestRefusal::End(end) => end,
            DigestRefusal::Bad(text) => refuse(
                out,
                peer,
                ErrorCode::Malformed,
                format!("server {server}: {text}"),
            ),
        }
    }
}

/// Answers a digest request from the latest durable state: waits until every record
/// received before it is durable (the group commit runs on its own thread), so that a
/// chunk reported equal stays equal if the standby crashes, then reads the digests.
fn answer_digests(
    shared: &Shared,
    slot: &Slot,
    conn_id: u64,
    server: &ServerId,
    req: DigestRequest,
    baseline: &mut Option<Baseline>,
) -> Result<Digests, DigestRefusal> {
    if baseline.is_none()
        && let Some(paths) = shared.config.control.baseline_disks(server)
    {
        let key = shared
            .config
            .control
            .digest_key(server)
            .map_err(DigestRefusal::Bad)?;
        *baseline = Some(Baseline::open(&paths, &key).map_err(|e| {
            DigestRefusal::Bad(format!("cannot open the original disks {paths:?}: {e}"))
        })?);
    }
    let mut inner = slot.lock();
    let target = inner.state.as_ref().map_or(Seq(0), |s| s.log.last_seq());
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return Err(DigestRefusal::End(SessionEnd::Stopping));
        }
        if !is_current(&inner, conn_id) {
            return Err(DigestRefusal::End(SessionEnd::Replaced));
        }
        let log = &inner.state.as_ref().expect("open while connected").log;
        if log.durable_seq() >= target {
            break;
        }
        inner = slot
            .changed
            .wait_timeout(inner, Duration::from_millis(100))
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    let state = inner.state.as_ref().expect("open while connected");
    let disk = state
        .registration()
        .and_then(|r| r.disks.iter().find(|d| d.disk == req.disk))
        .ok_or_else(|| {
            DigestRefusal::Bad(format!(
                "digest request for disk {}, which the server has not registered",
                req.disk.0
            ))
        })?;
    if let Some(b) = baseline {
        b.check(disk).map_err(DigestRefusal::Bad)?;
    }
    if req.first_chunk.saturating_mul(CHUNK) >= disk.size.0 {
        return Err(DigestRefusal::Bad(format!(
            "digest request for chunk {} of disk {}, past its end ({} bytes)",
            req.first_chunk, req.disk.0, disk.size.0
        )));
    }
    Ok(Digests {
        request: req.request,
        disk: req.disk,
        first_chunk: req.first_chunk,
        chunks: chunk_digests(
            &state.log,
            disk,
            req.first_chunk,
            req.count,
            baseline.as_ref(),
        ),
    })
}

fn refuse_ingest(out: &Mutex<Conn>, peer: &str, server: &ServerId, e: &IngestError) -> SessionEnd {
    refuse(
        out,
        peer,
        e.code(),
        format!("server {server}: {}", error_chain(e)),
    )
}

/// Group commit: fsync whatever has been written, then ack it; repeat.
fn sync_loop(
    slot: &Slot,
    conn_id: u64,
    out: &Mutex<Conn>,
    done: &AtomicBool,
    server: &ServerId,
    mut acked: Seq,
) {
    loop {
        let ticket = {
            let mut inner = slot.lock();
            loop {
                if done.load(Ordering::SeqCst) || !is_current(&inner, conn_id) {
                    return;
                }
                let log = &inner.state.as_ref().expect("open while connected").log;
                if log.last_seq() > log.durable_seq() {
                    break;
                }
                inner = slot
                    .changed
                    .wait_timeout(inner, Duration::from_millis(500))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            inner.state.as_mut().expect("open").log.prepare_sync()
        };
        let fsync = slot.lock_fsync();
        if let Err(e) = ticket.run() {
            // After a failed fsync the page cache may no longer match the disk: never ack,
            // cut the log back to what is durable, drop this connection, and reopen the
            // log on the next one (the agent resends from the last ack).
            let text = format!("server {server}: {}", error_chain(&e));
            tracing::error!("fsync failed, closing the connection: {text}");
            // Whichever connection is current now (a newer one may have replaced this one
            // and synced "successfully" over the pages the kernel marked clean).
            let mut inner = slot.lock();
            if let Some(s) = inner.discard_state(server) {
                send_error(out, ErrorCode::Internal, &text);
                let _ = s.shutdown(Shutdown::Both);
            }
            slot.changed.notify_all();
            return;
        }
        let durable = {
            let mut inner = slot.lock();
            drop(fsync);
            if !is_current(&inner, conn_id) {
                // The ticket may belong to a state discarded (and reopened) since.
                return;
            }
            match inner.state.as_mut() {
                Some(state) => {
                    state.log.mark_durable(&ticket);
                    state.log.durable_seq()
                }
                None => return,
            }
        };
        // A digest request may be waiting for this.
        slot.changed.notify_all();
        if durable > acked {
            if send(out, &Message::Ack(Ack { durable })).is_err() {
                return;
            }
            acked = durable;
        }
    }
}

/// Applies retention to every allowed server that has a store, every `clean_interval`.
fn maintenance(shared: &Shared) {
    loop {
        let start = std::time::Instant::now();
        while start.elapsed() < shared.config.clean_interval {
            if shared.stop.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200).min(shared.config.clean_interval));
        }
        let mut policies: Vec<(ServerId, Policy)> = shared
            .config
            .servers
            .iter()
            .map(|(s, p)| (s.clone(), *p))
            .collect();
        policies.extend(shared.config.control.policies());
        for (server, policy) in &policies {
            if !shared.data.server_dir(server).is_dir() {
                continue;
            }
            let slot = shared.slot(server);
            let _fsync = slot.lock_fsync();
            let mut inner = slot.lock();
            if inner.broken.is_some() {
                continue;
            }
            if inner.state.is_none() {
                match shared.data.open_server(
                    server,
                    shared.config.segment_size,
                    OpenMode::ReadWrite,
                ) {
                    Ok((state, _)) => inner.state = Some(state),
                    Err(e) => {
                        tracing::error!(%server, "retention: cannot open the store: {}", error_chain(&e));
                        continue;
                    }
                }
            }
            let state = inner.state.as_mut().expect("opened above");
            let mac = shared.keys.ingest_keys(server).mac;
            match retention::apply(state, policy, &mac) {
                Ok(r) => tracing::info!(
                    %server,
                    dropped = r.points_dropped.len(),
                    retained = r.points_retained,
                    space_before = r.space_before,
                    space_after = r.space_after,
                    segments_removed = r.segments_removed,
                    "retention applied"
                ),
                Err(e) => {
                    tracing::error!(%server, "retention failed: {}", error_chain(&e));
                    // It may have stopped between writing copies and fsyncing them.
                    if let Some(s) = inner.discard_state(server) {
                        let _ = s.shutdown(Shutdown::Both);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
