//! The agent's end of the link to a standby: connect, authenticate, send frames within a
//! window of unacknowledged bytes, and follow the standby's acks and errors.
//!
//! ```text
//! connect ─▶ Hello ─▶ ◀─ Challenge (standby's proof checked here) ─▶ Authenticate
//!         ◀─ Welcome { last_durable }      everything ≤ last_durable is already safe
//! send(Record | Barrier)…  blocks while the unacknowledged bytes would pass the window
//!         ◀─ Ack { durable }               frees the window up to `durable`
//!         ◀─ Error { StorageFull }         retryable: reported, the link stays up and
//!                                          simply stops getting acks (back-pressure)
//!         ◀─ Error { other }               permanent: the link is closed
//! send(DigestRequest) ◀─ Digests             answers in request order, taken by the caller
//!         ◀─ PointRequest                  an operator asked for a point; taken by the caller
//!         ◀─ Error { Paused }              the standby takes no records now (replication
//!                                          not started or stopped): the link is closed
//! ```
//!
//! Frames whose seq is at or below the standby's durable seq are not sent at all, so a
//! caller resuming after a reconnect may replay from anywhere before it. Sending only
//! queues a frame (after waiting for room in the window); a writer thread puts frames on
//! the socket in order, flushing whenever the queue runs dry, so the caller reads and
//! seals the next batch while the previous one travels. Every error says
//! whether retrying (reconnecting, with backoff) can help: [`LinkError::is_retryable`].
//! The link does not keep frames for resending; the caller (the replicator) re-reads
//! what was not acknowledged.
//!
//! Transport ([`ferry_tls::LinkTls`]): TLS 1.3 with the agent's certificate (which names
//! its server) and the standby's checked against the site pair's CA; plain TCP only to a
//! loopback address, and only when the config asks for it. The challenge–response covers
//! the TLS exporter, so it cannot be relayed into another session.

use ferry_tls::{Conn, LinkConnError, LinkTls};
use ferry_wire::auth::{self, Channel, Exchange, Nonce, Role};
use ferry_wire::frame::{FrameError, FrameType, ReadFrameError, read_frame};
use ferry_wire::message::{
    Authenticate, Digests, ErrorCode, ErrorMessage, Heartbeat, Hello, PointRequest, RegisterServer,
    Welcome,
};
use ferry_wire::{AuthKey, Message, Seq, ServerId};
use std::collections::VecDeque;
use std::io::{self, BufReader, BufWriter, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How a link behaves.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Most bytes of frames sent and not yet acknowledged. Default 64 MiB.
    pub window_bytes: u64,
    /// Time allowed to open the TCP connection. Default 10 s.
    pub connect_timeout: Duration,
    /// Time allowed for each handshake message. Default 10 s.
    pub handshake_timeout: Duration,
    /// The agent's software version, shown in the standby's logs.
    pub agent_version: String,
    /// TLS, or plain TCP to loopback only. Default: plain TCP to loopback (a config
    /// file must name one or the other explicitly).
    pub tls: LinkTls,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            window_bytes: 64 << 20,
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            agent_version: concat!("ferry ", env!("CARGO_PKG_VERSION")).to_owned(),
            tls: LinkTls::PlaintextLoopback,
        }
    }
}

/// Why the link failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkError {
    #[error("cannot connect to the standby at {addr}")]
    Connect {
        addr: String,
        #[source]
        source: Arc<io::Error>,
    },
    #[error("the connection to the standby failed")]
    Io(#[source] Arc<io::Error>),
    #[error("no secure connection to the standby")]
    Tls(#[source] Arc<LinkConnError>),
    #[error("the standby sent a frame that does not check out")]
    Frame(#[source] Arc<FrameError>),
    #[error("the standby refused ({code:?}): {message}")]
    Refused { code: ErrorCode, message: String },
    #[error(
        "the standby could not prove it holds the site pair's auth key: the two sides hold \
         different keys, or this is not the standby you meant"
    )]
    StandbyNotAuthenticated,
    #[error("the standby sent an unexpected {0:?} message")]
    Protocol(FrameType),
    /// The standby said what cannot be true (e.g. acknowledged a seq never sent): the
    /// link is dropped and made again; nothing it said was applied.
    #[error("the standby said what cannot be true: {0}")]
    Untrusted(String),
    #[error("the standby closed the connection")]
    Closed,
    #[error("timed out after {0:?} waiting for the standby")]
    Timeout(Duration),
}

impl LinkError {
    /// Whether reconnecting (with backoff) may succeed: network trouble and the standby's
    /// retryable refusals (a full disk, an internal error). Wrong keys, unknown servers and
    /// protocol violations need an operator.
    pub fn is_retryable(&self) -> bool {
        match self {
            LinkError::Connect { .. }
            | LinkError::Io(_)
            | LinkError::Closed
            | LinkError::Untrusted(_)
            | LinkError::Timeout(_) => true,
            LinkError::Refused { code, .. } => code.is_retryable(),
            LinkError::Tls(e) => e.is_retryable(),
            LinkError::Frame(_) | LinkError::StandbyNotAuthenticated | LinkError::Protocol(_) => {
                false
            }
        }
    }

    /// Whether the standby refused because it takes no records of the server now: not
    /// an interruption, the agent waits for the operator.
    pub fn is_paused(&self) -> bool {
        matches!(
            self,
            LinkError::Refused {
                code: ErrorCode::Paused,
                ..
            }
        )
    }

    fn from_read(e: ReadFrameError) -> Self {
        match e {
            ReadFrameError::Io(e) if is_timeout(&e) => LinkError::Timeout(Duration::ZERO),
            ReadFrameError::Io(e) => LinkError::Io(Arc::new(e)),
            ReadFrameError::EndInsideFrame { .. } => LinkError::Closed,
            ReadFrameError::Frame(e) => LinkError::Frame(Arc::new(e)),
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

#[derive(Debug, Default)]
struct State {
    durable: Seq,
    /// The highest seq sent on this link (or the standby's durable seq at connect): no
    /// honest ack is above it.
    sent_high: Seq,
    /// Frames sent and not yet acknowledged: seq and length, in seq order.
    in_flight: VecDeque<(Seq, u64)>,
    in_flight_bytes: u64,
    closed: Option<LinkError>,
    /// Retryable refusals received while the link stays up (e.g. storage full).
    warnings: Vec<ErrorMessage>,
    acks: u64,
    /// Frames queued and not yet written and flushed to the socket.
    unwritten: u64,
    /// Answers to digest requests, in the order they arrived.
    digests: VecDeque<Digests>,
    /// Points the standby asked for, not yet taken.
    point_requests: Vec<PointRequest>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a change of the state (or 200 ms, so that closing is noticed).
    fn wait<'a>(&self, state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed
            .wait_timeout(state, Duration::from_millis(200))
            .unwrap_or_else(|e| e.into_inner())
            .0
    }
}

/// A connected, authenticated link for one server.
#[derive(Debug)]
pub struct Link {
    /// Frames for the writer thread (`None` once dropping).
    queue: Option<SyncSender<Vec<u8>>>,
    socket: Conn,
    shared: Arc<Shared>,
    reader: Option<JoinHandle<()>>,
    writer: Option<JoinHandle<()>>,
    window: u64,
    welcome: Welcome,
}

/// Frames the writer thread may hold queued; the window (bytes) is what really bounds
/// memory.
const QUEUE_FRAMES: usize = 1024;

fn write_message(w: &mut impl Write, message: &Message) -> Result<(), LinkError> {
    let frame = message
        .encode()
        .map_err(|e| LinkError::Frame(Arc::new(e)))?;
    w.write_all(&frame)
        .and_then(|()| w.flush())
        .map_err(|e| LinkError::Io(Arc::new(e)))
}

fn read_message(r: &mut impl io::Read, buf: &mut Vec<u8>) -> Result<Message, LinkError> {
    read_frame(r, buf)
        .map_err(LinkError::from_read)?
        .ok_or(LinkError::Closed)
}

impl Link {
    /// Connects to the standby at `addr` and authenticates as `server`.
    pub fn connect(
        addr: impl ToSocketAddrs,
        server: &ServerId,
        auth_key: &AuthKey,
        config: &LinkConfig,
    ) -> Result<Self, LinkError> {
        let addrs: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|e| LinkError::Connect {
                addr: "(unresolved)".into(),
                source: Arc::new(e),
            })?
            .collect();
        let mut last = None;
        let mut stream = None;
        for a in &addrs {
            match TcpStream::connect_timeout(a, config.connect_timeout) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some((a.to_string(), e)),
            }
        }
        let stream = match (stream, last) {
            (Some(s), _) => s,
            (None, Some((addr, e))) => {
                return Err(LinkError::Connect {
                    addr,
                    source: Arc::new(e),
                });
            }
            (None, None) => {
                return Err(LinkError::Connect {
                    addr: "(no address)".into(),
                    source: Arc::new(io::Error::from(io::ErrorKind::AddrNotAvailable)),
                });
            }
        };
        let io = |e| LinkError::Io(Arc::new(e));
        stream.set_nodelay(true).map_err(io)?;
        let stream = config
            .tls
            .connect(stream, Instant::now() + config.handshake_timeout)
            .map_err(|e| LinkError::Tls(Arc::new(e)))?;
        stream
            .set_read_timeout(Some(config.handshake_timeout))
            .map_err(io)?;
        let channel = Channel(
            stream
                .channel()
                .map_err(|e| LinkError::Tls(Arc::new(e.into())))?,
        );
        let mut out = stream.try_clone().map_err(io)?;
        let mut input = BufReader::new(stream.try_clone().map_err(io)?);
        let mut buf = Vec::new();
        let client_nonce = Nonce::random(&mut rand_core::OsRng);
        write_message(
            &mut out,
            &Message::Hello(Hello {
                server: server.clone(),
                agent_version: config.agent_version.clone(),
                client_nonce,
            }),
        )?;
        let handshake = |e: LinkError| match e {
            LinkError::Timeout(_) => LinkError::Timeout(config.handshake_timeout),
            other => other,
        };
        let challenge = match read_message(&mut input, &mut buf).map_err(handshake)? {
            Message::Challenge(c) => c,
            Message::Error(e) => return Err(refused(e)),
            other => return Err(LinkError::Protocol(other.frame_type())),
        };
        let exchange = Exchange {
            server,
            client_nonce: &client_nonce,
            server_nonce: &challenge.server_nonce,
            channel: &channel,
        };
        if !auth::check(auth_key, Role::Standby, &exchange, &challenge.standby_proof) {
            let _ = write_message(
                &mut out,
                &Message::Error(ErrorMessage {
                    code: ErrorCode::AuthenticationFailed,
                    message: "the agent could not verify the standby's proof: the two sides \
                              hold different site-pair keys"
                        .into(),
                }),
            );
            return Err(LinkError::StandbyNotAuthenticated);
        }
        let agent_proof = auth::prove(auth_key, Role::Agent, &exchange);
        write_message(
            &mut out,
            &Message::Authenticate(Authenticate { agent_proof }),
        )?;
        let welcome = match read_message(&mut input, &mut buf).map_err(handshake)? {
            Message::Welcome(w) => w,
            Message::Error(e) => return Err(refused(e)),
            other => return Err(LinkError::Protocol(other.frame_type())),
        };
        stream.set_read_timeout(None).map_err(io)?;
        let shared = Arc::new(Shared::default());
        {
            let mut state = shared.lock();
            state.durable = welcome.last_durable;
            state.sent_high = welcome.last_durable;
        }
        let reader = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("ferry-link-rx".into())
                .spawn(move || receive(input, &shared))
                .map_err(io)?
        };
        let (queue, frames) = sync_channel(QUEUE_FRAMES);
        let writer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("ferry-link-tx".into())
                .spawn(move || transmit(&frames, out, &shared))
                .map_err(io)?
        };
        Ok(Self {
            queue: Some(queue),
            socket: stream,
            shared,
            reader: Some(reader),
            writer: Some(writer),
            window: config.window_bytes.max(1),
            welcome,
        })
    }

    /// The standby's last durable seq when this link connected: resume after it.
    pub fn welcome_durable(&self) -> Seq {
        self.welcome.last_durable
    }

    /// What the standby said when this link connected.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// The highest seq the standby has acknowledged as durable so far.
    pub fn durable(&self) -> Seq {
        self.shared.lock().durable
    }

    /// How many acks the standby has sent on this link (one per group commit).
    pub fn acks_received(&self) -> u64 {
        self.shared.lock().acks
    }

    /// Retryable refusals (e.g. storage full) the standby reported since the last call.
    pub fn take_warnings(&self) -> Vec<ErrorMessage> {
        std::mem::take(&mut self.shared.lock().warnings)
    }

    /// Answers to digest requests received since the last call, in request order.
    pub fn take_digests(&self) -> VecDeque<Digests> {
        std::mem::take(&mut self.shared.lock().digests)
    }

    /// Points the standby asked for since the last call.
    pub fn take_point_requests(&self) -> Vec<PointRequest> {
        std::mem::take(&mut self.shared.lock().point_requests)
    }

    /// A handle that reads the link's progress from another thread (status, metrics)
    /// while this one is blocked sending.
    pub fn monitor(&self) -> LinkMonitor {
        LinkMonitor {
            shared: self.shared.clone(),
        }
    }

    /// Tells the standby the server's disks (before the first record, and when they change).
    pub fn register(&mut self, registration: RegisterServer) -> Result<(), LinkError> {
        self.send(&Message::RegisterServer(registration))
    }

    /// Sends one message. Records and barriers count against the window (this blocks
    /// while it is full) and are skipped when the standby already has their seq.
    pub fn send(&mut self, message: &Message) -> Result<(), LinkError> {
        let frame = message
            .encode()
            .map_err(|e| LinkError::Frame(Arc::new(e)))?;
        self.send_frame(seq_of(message), frame)
    }

    /// Sends an already encoded frame (`seq` for records and barriers, else `None`).
    pub fn send_encoded(&mut self, seq: Option<Seq>, frame: &[u8]) -> Result<(), LinkError> {
        self.send_frame(seq, frame.to_vec())
    }

    /// Queues an encoded frame for the writer thread (`seq` for records and barriers,
    /// else `None`), after waiting for room in the window.
    pub fn send_frame(&mut self, seq: Option<Seq>, frame: Vec<u8>) -> Result<(), LinkError> {
        let len = frame.len() as u64;
        let mut state = self.shared.lock();
        if let Some(seq) = seq {
            if seq <= state.durable {
                return Ok(());
            }
            while state.closed.is_none()
                && state.in_flight_bytes > 0
                && state.in_flight_bytes + len > self.window
            {
                state = self.shared.wait(state);
            }
        }
        if let Some(e) = &state.closed {
            return Err(e.clone());
        }
        if let Some(seq) = seq {
            state.in_flight.push_back((seq, len));
            state.in_flight_bytes += len;
            state.sent_high = state.sent_high.max(seq);
        }
        state.unwritten += 1;
        drop(state);
        let queued = self.queue.as_ref().is_some_and(|q| q.send(frame).is_ok());
        if queued {
            Ok(())
        } else {
            Err(self.fail(LinkError::Closed))
        }
    }

    /// Waits until every queued frame is written to the socket and flushed.
    pub fn flush(&mut self) -> Result<(), LinkError> {
        let mut state = self.shared.lock();
        loop {
            if let Some(e) = &state.closed {
                return Err(e.clone());
            }
            if state.unwritten == 0 {
                return Ok(());
            }
            state = self.shared.wait(state);
        }
    }

    /// Waits until the standby has acknowledged `seq` as durable, or `timeout` passes
    /// (the writer thread flushes queued frames by itself). Returns the durable seq.
    pub fn wait_durable(&mut self, seq: Seq, timeout: Duration) -> Result<Seq, LinkError> {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        loop {
            if state.durable >= seq {
                return Ok(state.durable);
            }
            if let Some(e) = &state.closed {
                return Err(e.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(LinkError::Timeout(timeout));
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Why the link closed, if it has.
    pub fn closed(&self) -> Option<LinkError> {
        self.shared.lock().closed.clone()
    }

    fn fail(&self, err: LinkError) -> LinkError {
        // The receiving side usually knows better (the standby's Error frame).
        let mut state = self.shared.lock();
        let closed = state.closed.get_or_insert(err).clone();
        self.shared.changed.notify_all();
        closed
    }
}

/// Reads a link's progress from any thread; see [`Link::monitor`].
#[derive(Debug, Clone)]
pub struct LinkMonitor {
    shared: Arc<Shared>,
}

impl LinkMonitor {
    /// The highest seq the standby has acknowledged as durable so far.
    pub fn durable(&self) -> Seq {
        self.shared.lock().durable
    }

    /// Retryable refusals the standby reported and nobody has taken yet.
    pub fn warnings(&self) -> Vec<ErrorMessage> {
        self.shared.lock().warnings.clone()
    }

    /// Why the link closed, if it has.
    pub fn closed(&self) -> Option<LinkError> {
        self.shared.lock().closed.clone()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Frames still queued are dropped: whatever was not acknowledged is resent.
        self.queue = None;
        let _ = self.socket.shutdown(Shutdown::Both);
        for t in [self.writer.take(), self.reader.take()]
            .into_iter()
            .flatten()
        {
            let _ = t.join();
        }
    }
}

/// The writing thread: frames from the queue onto the socket, in order, flushed whenever
/// the queue runs dry; an error closes the link.
fn transmit(frames: &Receiver<Vec<u8>>, out: Conn, shared: &Shared) {
    /// However the thread ends (even by a panic), the link is closed, so that nothing
    /// waits for frames that will never be written.
    struct CloseOnExit<'a>(&'a Shared);
    impl Drop for CloseOnExit<'_> {
        fn drop(&mut self) {
            fail_shared(self.0, LinkError::Closed);
        }
    }
    let _close = CloseOnExit(shared);
    let mut w = BufWriter::with_capacity(1 << 20, out);
    let mut written = 0u64;
    loop {
        let frame = match frames.try_recv() {
            Ok(f) => f,
            Err(TryRecvError::Empty) => {
                if let Err(e) = w.flush() {
                    return fail_shared(shared, LinkError::Io(Arc::new(e)));
                }
                let mut state = shared.lock();
                state.unwritten -= written;
                written = 0;
                shared.changed.notify_all();
                drop(state);
                match frames.recv() {
                    Ok(f) => f,
                    Err(_) => return,
                }
            }
            Err(TryRecvError::Disconnected) => return,
        };
        if let Err(e) = w.write_all(&frame) {
            return fail_shared(shared, LinkError::Io(Arc::new(e)));
        }
        written += 1;
    }
}

fn fail_shared(shared: &Shared, err: LinkError) {
    shared.lock().closed.get_or_insert(err);
    shared.changed.notify_all();
}

fn seq_of(message: &Message) -> Option<Seq> {
    match message {
        Message::Record(r) => Some(r.header.seq),
        Message::Barrier(b) => Some(b.seq),
        _ => None,
    }
}

fn refused(e: ErrorMessage) -> LinkError {
    LinkError::Refused {
        code: e.code,
        message: e.message,
    }
}

/// The receiving thread: applies acks, collects warnings, records why the link closed.
fn receive(mut input: BufReader<Conn>, shared: &Shared) {
    let mut buf = Vec::new();
    let closed = loop {
        match read_message(&mut input, &mut buf) {
            Ok(Message::Ack(ack)) => {
                let mut state = shared.lock();
                if ack.durable > state.sent_high {
                    break LinkError::Untrusted(format!(
                        "it acknowledged seq {} but the highest sent is {}",
                        ack.durable, state.sent_high
                    ));
                }
                state.acks += 1;
                state.durable = state.durable.max(ack.durable);
                while let Some(&(seq, len)) = state.in_flight.front() {
                    if seq > ack.durable {
                        break;
                    }
                    state.in_flight.pop_front();
                    state.in_flight_bytes -= len;
                }
                shared.changed.notify_all();
            }
            Ok(Message::Heartbeat(Heartbeat { .. })) => {}
            Ok(Message::Digests(d)) => {
                shared.lock().digests.push_back(d);
                shared.changed.notify_all();
            }
            Ok(Message::PointRequest(r)) => {
                shared.lock().point_requests.push(r);
            }
            Ok(Message::Error(e)) if e.code.is_retryable() => {
                shared.lock().warnings.push(e);
                shared.changed.notify_all();
            }
            Ok(Message::Error(e)) => break refused(e),
            Ok(other) => break LinkError::Protocol(other.frame_type()),
            Err(e) => break e,
        }
    };
    let mut state = shared.lock();
    state.closed.get_or_insert(closed);
    shared.changed.notify_all();
}
