//! A blocking TLS 1.3 stream over a [`TcpStream`], shaped like the `TcpStream` the data
//! link used before: cheap to clone, one thread reads while another writes, a third may
//! [`TlsStream::shutdown`] it, and read timeouts work as on a socket.
//!
//! ```text
//!   reader thread                         writer thread
//!   ── recv lock (socket read order) ──   ── send lock (socket write order) ──
//!   read(2) the socket, no other lock     lock conn: encrypt, take the records
//!   lock conn: read_tls, process,         unlock conn
//!     take plaintext; unlock conn         write(2) them, holding only send
//!   if rustls must answer (alert, key
//!   update): send lock, then conn lock
//! ```
//!
//! Invariants:
//! - Lock order is always recv → send → conn, and conn is never held across a socket
//!   read or write, so a reader blocked in `read(2)` never stops a writer and a writer
//!   blocked in `write(2)` never stops a reader from taking what arrived.
//! - TLS records reach the socket in the order rustls made them: they are taken from
//!   the connection and written while holding the send lock.
//! - Ciphertext read from the socket is never dropped: what rustls does not take yet
//!   (its plaintext buffer is full) stays in the receive buffer for the next read.
//! - A peer's close_notify reads as end of stream (`Ok(0)`); a TCP end of stream without
//!   it is an [`io::ErrorKind::UnexpectedEof`] error (a truncation an attacker could
//!   cause is never mistaken for a clean end).
//! - The handshake ([`TlsStream::connect`], [`TlsStream::accept`]) runs under one
//!   absolute deadline: before every socket read and write the socket's timeout is set
//!   to the time that remains, so a peer sending a byte every few seconds is cut off at
//!   the deadline, not kept alive by each byte. [`TlsStream::set_deadline`] puts later
//!   reads (the caller's own handshake messages) under a deadline the same way.
//! - Shutting the socket down ([`TlsStream::shutdown`]) takes no lock: it unblocks a
//!   reader or writer stuck in a system call, whoever holds the locks.
//! - A failed or timed-out socket write shuts the connection down: records already taken
//!   from rustls may be half-sent, so the session cannot go on (the reader then sees a
//!   truncation, the caller reconnects).
//!
//! The reader takes the send lock only when rustls must answer something it read (an
//! alert, a key update); it then waits behind a writer blocked in `write(2)`. ferry's
//! links always read on a thread of their own, so the writer's peer keeps draining.

use crate::describe::describe;
use crate::names::{self, NameError};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Size of the receive buffer: ciphertext read from the socket at once.
const RECV_BUFFER: usize = 64 << 10;
/// Largest plaintext encrypted under one hold of the connection lock.
const SEND_CHUNK: usize = 64 << 10;

/// Why a TLS handshake failed, or a session could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("tls handshake with {peer} failed: {reason}")]
    Tls {
        peer: String,
        /// What rustls' error means for the operator.
        reason: String,
        #[source]
        source: rustls::Error,
    },
    #[error(
        "tls handshake with {peer} did not finish within {limit:?} (a peer too slow, or one \
         that does not speak TLS)"
    )]
    Deadline { peer: String, limit: Duration },
    #[error(
        "{peer} closed the connection during the tls handshake (it may not trust this \
         side's certificate, or it does not speak TLS)"
    )]
    Closed { peer: String },
    #[error("tls handshake with {peer}: the connection failed")]
    Io {
        peer: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot start a tls session with {peer}")]
    Start {
        peer: String,
        #[source]
        source: rustls::Error,
    },
    #[error("cannot export keying material from the tls session")]
    Export(#[source] rustls::Error),
}

impl StreamError {
    /// True when trying again may succeed without the operator changing anything (a
    /// slow or dropped connection); false for certificate and protocol refusals.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Deadline { .. } | Self::Closed { .. } | Self::Io { .. }
        )
    }
}

/// A TLS error met after the handshake, carried inside an [`io::Error`] of kind
/// [`io::ErrorKind::InvalidData`] by [`Read`] and [`Write`].
#[derive(Debug, thiserror::Error)]
#[error("tls session with {peer}: {reason}")]
pub struct SessionError {
    pub peer: String,
    pub reason: String,
    #[source]
    pub source: rustls::Error,
}

/// A TLS 1.3 session over a TCP connection. Clones share the session.
#[derive(Clone)]
pub struct TlsStream {
    inner: Arc<Inner>,
}

struct Inner {
    tcp: TcpStream,
    /// The peer's address, for messages (the socket may be shut down later).
    peer: String,
    conn: Mutex<Connection>,
    /// Socket write order; the records being written.
    send: Mutex<Vec<u8>>,
    /// Socket read order; ciphertext read but not yet taken by rustls.
    recv: Mutex<Recv>,
    timeouts: Mutex<Timeouts>,
}

struct Recv {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

#[derive(Default)]
struct Timeouts {
    /// What the caller asked for with `set_read_timeout`.
    read: Option<Duration>,
    /// What the caller asked for with `set_deadline`.
    deadline: Option<Instant>,
    /// What the socket has now (`None`: not known, set it before the next read).
    applied: Option<Option<Duration>>,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("peer", &self.inner.peer)
            .finish_non_exhaustive()
    }
}

/// What went wrong inside a read or the handshake, before it is worded for the caller.
enum Fail {
    Io(io::Error),
    Tls(rustls::Error),
    Deadline,
}

impl From<io::Error> for Fail {
    fn from(e: io::Error) -> Self {
        Fail::Io(e)
    }
}

fn poisoned() -> io::Error {
    io::Error::other("tls stream unusable: a thread panicked while using it")
}

fn lock<T>(m: &Mutex<T>) -> io::Result<MutexGuard<'_, T>> {
    m.lock().map_err(|_| poisoned())
}

impl TlsStream {
    /// Runs the client side of a handshake on `tcp` under the absolute `deadline`,
    /// checking the server's certificate against `config`'s roots and `server_name`.
    ///
    /// With TLS 1.3 a server that refuses this side's client certificate says so after
    /// this returns: the first read then fails, naming the refusal.
    pub fn connect(
        tcp: TcpStream,
        config: Arc<ClientConfig>,
        server_name: ServerName<'static>,
        deadline: Instant,
    ) -> Result<Self, StreamError> {
        let peer = peer_of(&tcp);
        let conn = ClientConnection::new(config, server_name)
            .map_err(|source| StreamError::Start { peer, source })?;
        Self::handshake(tcp, conn.into(), deadline)
    }

    /// Runs the server side of a handshake on `tcp` under the absolute `deadline`.
    pub fn accept(
        tcp: TcpStream,
        config: Arc<ServerConfig>,
        deadline: Instant,
    ) -> Result<Self, StreamError> {
        let peer = peer_of(&tcp);
        let conn =
            ServerConnection::new(config).map_err(|source| StreamError::Start { peer, source })?;
        Self::handshake(tcp, conn.into(), deadline)
    }

    fn handshake(
        tcp: TcpStream,
        mut conn: Connection,
        deadline: Instant,
    ) -> Result<Self, StreamError> {
        let peer = peer_of(&tcp);
        let started = Instant::now();
        let io_err = |source| StreamError::Io {
            peer: peer.clone(),
            source,
        };
        // Writes are chunked by `write`; rustls need not bound its buffers as well.
        conn.set_buffer_limit(None);
        let read_timeout = tcp.read_timeout().map_err(io_err)?;
        let write_timeout = tcp.write_timeout().map_err(io_err)?;
        let stream = TlsStream {
            inner: Arc::new(Inner {
                tcp,
                peer: peer.clone(),
                conn: Mutex::new(conn),
                send: Mutex::new(Vec::new()),
                recv: Mutex::new(Recv {
                    buf: vec![0; RECV_BUFFER].into_boxed_slice(),
                    start: 0,
                    end: 0,
                }),
                timeouts: Mutex::new(Timeouts {
                    read: read_timeout,
                    deadline: Some(deadline),
                    applied: None,
                }),
            }),
        };
        let fail = |f: Fail| match f {
            Fail::Deadline => StreamError::Deadline {
                peer: peer.clone(),
                limit: deadline.saturating_duration_since(started),
            },
            Fail::Tls(source) => StreamError::Tls {
                peer: peer.clone(),
                reason: describe(&source),
                source,
            },
            Fail::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                StreamError::Closed { peer: peer.clone() }
            }
            Fail::Io(e) => StreamError::Io {
                peer: peer.clone(),
                source: e,
            },
        };
        stream.run_handshake(deadline).map_err(fail)?;
        let inner = &stream.inner;
        inner.tcp.set_write_timeout(write_timeout).map_err(io_err)?;
        lock(&inner.timeouts).map_err(io_err)?.deadline = None;
        Ok(stream)
    }

    fn run_handshake(&self, deadline: Instant) -> Result<(), Fail> {
        let inner = &self.inner;
        let mut recv = lock(&inner.recv)?;
        loop {
            self.flush_tls(Some(deadline))?;
            if !lock(&inner.conn)?.is_handshaking() {
                break;
            }
            self.pump(&mut recv)?;
        }
        // The client's Finished, or anything else rustls queued at the end.
        self.flush_tls(Some(deadline))
    }

    /// Reads ciphertext (from the buffer, else from the socket) and hands it to rustls.
    /// Ok once rustls made progress; an error for a TLS failure (after sending rustls'
    /// alert), a timeout, or an end of stream during a handshake.
    fn pump(&self, recv: &mut Recv) -> Result<(), Fail> {
        let inner = &self.inner;
        if recv.start == recv.end {
            recv.start = 0;
            recv.end = 0;
            let n = self.read_socket(&mut recv.buf)?;
            let mut conn = lock(&inner.conn)?;
            if n == 0 {
                // Tell rustls: it then reports a clean close or a truncation.
                let _ = conn.read_tls(&mut io::empty());
                if conn.is_handshaking() {
                    return Err(Fail::Io(io::ErrorKind::UnexpectedEof.into()));
                }
                return Ok(());
            }
            recv.end = n;
        }
        let result = {
            let mut conn = lock(&inner.conn)?;
            let result = feed(&mut conn, recv);
            (result, conn.wants_write())
        };
        match result {
            (Ok(true), wants_write) => {
                if wants_write {
                    self.flush_tls(None)?;
                }
                Ok(())
            }
            (Ok(false), _) => Err(Fail::Io(io::Error::other(
                "tls stalled: rustls takes no more of the bytes received",
            ))),
            (Err(e), wants_write) => {
                if wants_write {
                    // rustls queued an alert saying why; the peer deserves to see it.
                    let _ = self.flush_tls(None);
                }
                Err(e)
            }
        }
    }

    /// One read(2) of the socket, under the deadline if one is set.
    fn read_socket(&self, buf: &mut [u8]) -> Result<usize, Fail> {
        let inner = &self.inner;
        let deadline = {
            let mut t = lock(&inner.timeouts)?;
            let left = match t.deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(Fail::Deadline);
                    }
                    Some(left)
                }
                None => None,
            };
            let timeout = match (t.read, left) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if t.applied != Some(timeout) {
                inner.tcp.set_read_timeout(timeout)?;
                t.applied = Some(timeout);
            }
            t.deadline
        };
        loop {
            match (&inner.tcp).read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) && deadline.is_some_and(|d| Instant::now() >= d) =>
                {
                    return Err(Fail::Deadline);
                }
                Err(e) => return Err(Fail::Io(e)),
            }
        }
    }

    /// Writes whatever TLS records rustls has queued, in order (send lock, then conn).
    fn flush_tls(&self, deadline: Option<Instant>) -> Result<(), Fail> {
        let inner = &self.inner;
        let mut out = lock(&inner.send)?;
        out.clear();
        {
            let mut conn = lock(&inner.conn)?;
            while conn.wants_write() {
                conn.write_tls(&mut *out)?;
            }
        }
        self.write_socket(&out, deadline)
    }

    fn write_socket(&self, bytes: &[u8], deadline: Option<Instant>) -> Result<(), Fail> {
        if bytes.is_empty() {
            return Ok(());
        }
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Fail::Deadline);
            }
            self.inner.tcp.set_write_timeout(Some(left))?;
        }
        let written = (&self.inner.tcp).write_all(bytes);
        if written.is_err() {
            // Records taken from rustls were not (all) sent: the session cannot go on.
            let _ = self.inner.tcp.shutdown(Shutdown::Both);
        }
        match written {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) && deadline.is_some_and(|d| Instant::now() >= d) =>
            {
                Err(Fail::Deadline)
            }
            other => Ok(other?),
        }
    }

    fn read_plain(&self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        let inner = &self.inner;
        let mut recv = lock(&inner.recv)?;
        loop {
            {
                let mut conn = lock(&inner.conn)?;
                match conn.reader().read(out) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!(
                                "tls session with {}: the connection ended without a \
                                 close_notify (cut off, or truncated by someone on the path)",
                                inner.peer
                            ),
                        ));
                    }
                    Err(e) => return Err(e),
                }
            }
            self.pump(&mut recv).map_err(|f| self.session_error(f))?;
        }
    }

    fn session_error(&self, f: Fail) -> io::Error {
        match f {
            Fail::Io(e) => e,
            Fail::Deadline => io::Error::new(
                io::ErrorKind::TimedOut,
                format!("tls session with {}: the deadline passed", self.inner.peer),
            ),
            Fail::Tls(source) => io::Error::new(
                io::ErrorKind::InvalidData,
                SessionError {
                    peer: self.inner.peer.clone(),
                    reason: describe(&source),
                    source,
                },
            ),
        }
    }

    fn write_plain(&self, data: &[u8]) -> io::Result<usize> {
        let inner = &self.inner;
        let mut out = lock(&inner.send)?;
        for chunk in data.chunks(SEND_CHUNK) {
            out.clear();
            {
                let mut conn = lock(&inner.conn)?;
                conn.writer().write_all(chunk)?;
                while conn.wants_write() {
                    conn.write_tls(&mut *out)?;
                }
            }
            if let Err(e) = (&inner.tcp).write_all(&out) {
                // Records taken from rustls were not (all) sent: the session cannot go on.
                let _ = inner.tcp.shutdown(Shutdown::Both);
                return Err(e);
            }
        }
        Ok(data.len())
    }

    /// The same session, for another thread (never fails; `io::Result` as on `TcpStream`).
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(self.clone())
    }

    /// Shuts the TCP connection down (no close_notify: this takes no lock, so it unblocks
    /// a reader or writer stuck in a system call). The peer reads a truncation error.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.inner.tcp.shutdown(how)
    }

    /// Ends the session cleanly: sends close_notify (the peer reads end of stream) and
    /// shuts the sending half down. Waits for a writer in progress.
    pub fn close(&self) -> io::Result<()> {
        lock(&self.inner.conn)?.send_close_notify();
        self.flush_tls(None).map_err(|f| self.session_error(f))?;
        self.inner.tcp.shutdown(Shutdown::Write)
    }

    /// Read timeout, as [`TcpStream::set_read_timeout`]: a read that waits longer fails
    /// with [`io::ErrorKind::WouldBlock`] and loses nothing.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        if timeout == Some(Duration::ZERO) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot set a 0 duration timeout",
            ));
        }
        let mut t = lock(&self.inner.timeouts)?;
        t.read = timeout;
        t.applied = None;
        Ok(())
    }

    /// Write timeout, as [`TcpStream::set_write_timeout`].
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.inner.tcp.set_write_timeout(timeout)
    }

    /// Puts every later read under an absolute deadline (`None`: none): past it, a read
    /// fails with [`io::ErrorKind::TimedOut`]. For the caller's own handshake messages.
    pub fn set_deadline(&self, deadline: Option<Instant>) -> io::Result<()> {
        let mut t = lock(&self.inner.timeouts)?;
        t.deadline = deadline;
        t.applied = None;
        Ok(())
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.tcp.peer_addr()
    }

    /// This side's address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.tcp.local_addr()
    }

    /// Nagle off or on, as [`TcpStream::set_nodelay`].
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.inner.tcp.set_nodelay(nodelay)
    }

    /// 32 bytes of keying material exported from the session (RFC 8446 §7.5) for
    /// `label` and `context`: equal on both ends of one session, unrelated across
    /// sessions. Binding an authentication to it ties that authentication to this
    /// session (a relay cannot splice two sessions).
    pub fn export_keying_material(
        &self,
        label: &[u8],
        context: Option<&[u8]>,
    ) -> Result<[u8; 32], StreamError> {
        let conn = lock(&self.inner.conn).map_err(|e| StreamError::Io {
            peer: self.inner.peer.clone(),
            source: e,
        })?;
        conn.export_keying_material([0u8; 32], label, context)
            .map_err(StreamError::Export)
    }

    /// The peer's certificate chain (end-entity first), as the handshake verified it;
    /// `None` when the peer presented none (a client of an optional-auth server).
    #[must_use]
    pub fn peer_certificates(&self) -> Option<Vec<CertificateDer<'static>>> {
        let conn = lock(&self.inner.conn).ok()?;
        conn.peer_certificates().map(<[_]>::to_vec)
    }

    /// Checks that the peer's certificate names `expected` (a server id or site name).
    pub fn check_peer_name(&self, expected: &str) -> Result<(), NameError> {
        let certs = self.peer_certificates();
        names::check_peer_name(certs.as_deref(), expected)
    }
}

impl Read for &TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_plain(buf)
    }
}

impl Write for &TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_plain(buf)
    }

    /// Nothing to do: `write` hands everything to the socket before it returns.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_plain(buf)
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_plain(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn peer_of(tcp: &TcpStream) -> String {
    tcp.peer_addr()
        .map_or_else(|_| "(unknown peer)".to_owned(), |a| a.to_string())
}

/// Hands buffered ciphertext to rustls until it is all taken or plaintext is ready;
/// true when rustls took anything.
fn feed(conn: &mut Connection, recv: &mut Recv) -> Result<bool, Fail> {
    let mut progress = false;
    while recv.start < recv.end {
        let mut pending = &recv.buf[recv.start..recv.end];
        let n = match conn.read_tls(&mut pending) {
            Ok(n) => n,
            // Its plaintext buffer is full: the reader must drain it first.
            Err(_) if progress => break,
            Err(e) => return Err(Fail::Io(e)),
        };
        if n == 0 {
            break;
        }
        recv.start += n;
        progress = true;
        let state = conn.process_new_packets().map_err(Fail::Tls)?;
        if state.plaintext_bytes_to_read() > 0 || state.peer_has_closed() {
            break;
        }
    }
    if recv.start == recv.end {
        recv.start = 0;
        recv.end = 0;
    }
    Ok(progress)
}

#[cfg(test)]
mod tests;
