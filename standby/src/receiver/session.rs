//! A session, once authenticated: it takes over its server's slot, opens the store and
//! makes it durable before the Welcome (so `last_durable` is true), then runs the ingest
//! loop beside its group commit and control-request threads until the connection ends.
//!
//! Invariant: one connection per server — a new, authenticated connection for a server
//! replaces the old one (shut down), so an agent that reconnects after a network break
//! is not locked out by its half-dead predecessor.
//!
//! Also here: how a session ends ([`SessionEnd`]) and the framing every job uses to read
//! from and write to the agent.

use super::admission::Ticket;
use super::group_commit::sync_loop;
use super::handshake::{self, Authenticated};
use super::ingest::Ingest;
use super::{Shared, Slot, SlotInner, is_current, plane};
use crate::log::OpenMode;
use ferry_tls::Conn;
use ferry_wire::frame::{FrameError, ReadFrameError, read_frame};
use ferry_wire::message::{ErrorCode, ErrorMessage, MAX_ERROR_TEXT, Welcome};
use ferry_wire::{Message, Seq, ServerId, error_chain};
use std::io::{self, BufReader, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a paused session waits for its agent to close the connection after being
/// told (so that the agent reads the reason before its writes could meet a reset).
const PAUSED_LINGER: Duration = Duration::from_secs(2);

/// Why a session ended (for the log line; the agent was told already when it matters).
#[derive(Debug, thiserror::Error)]
pub(super) enum SessionEnd {
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

/// Serves one connection from its handshake to its end.
pub(super) fn session(
    shared: &Arc<Shared>,
    tcp: TcpStream,
    mut handshake: Ticket,
    peer: &str,
) -> Result<(), SessionEnd> {
    let Authenticated {
        stream,
        out,
        mut input,
        mut buf,
        hello,
        keys,
    } = handshake::authenticate(shared, tcp, &mut handshake, peer)?;
    let server = hello.server.clone();
    let slot = shared.slot(&server);
    let conn_id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let last_durable = take_over(shared, &slot, conn_id, &stream, &out, peer, &server)?;
    let welcome = Welcome {
        last_durable,
        digests: last_durable > Seq::new(0)
            || shared.config.control.baseline_disks(&server).is_some(),
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
    let ingest = Ingest {
        shared,
        slot: &slot,
        conn_id,
        out: &out,
        peer,
        server: &server,
        mac_key: &keys.mac,
    };
    let result = match ingest.run(&mut input, &mut buf) {
        Err(SessionEnd::Paused(reason)) => Err(paused(&out, &mut input, peer, &server, reason)),
        other => other,
    };
    shared.config.control.disconnected(&server, conn_id);
    done.store(true, Ordering::SeqCst);
    {
        let mut inner = slot.lock();
        if is_current(&inner, conn_id) {
            inner.conn = None;
        }
    }
    slot.changed.notify_all();
    let _ = syncer.join();
    let _ = requests.join();
    result
}

/// Takes over the server for this connection: replaces any older connection (shut
/// down), opens the server's store if it is not open, and syncs its log, so that the
/// seq returned (for the Welcome) is durable.
fn take_over(
    shared: &Shared,
    slot: &Slot,
    conn_id: u64,
    stream: &Conn,
    out: &Mutex<Conn>,
    peer: &str,
    server: &ServerId,
) -> Result<Seq, SessionEnd> {
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
        return Err(refuse(out, peer, ErrorCode::Internal, text));
    }
    if inner.state.is_none() {
        open_store(shared, &mut inner, out, peer, server)?;
    }
    let state = inner.state.as_mut().expect("opened above");
    match state.log.sync() {
        Ok(seq) => Ok(seq),
        Err(e) => {
            inner.discard_state(server);
            let code = if e.is_retryable() {
                ErrorCode::StorageFull
            } else {
                ErrorCode::Internal
            };
            Err(refuse(
                out,
                peer,
                code,
                format!("server {server}: {}", error_chain(&e)),
            ))
        }
    }
}

/// Opens the server's store into its slot (cutting torn tails, logged); on failure the
/// slot is left without a connection.
fn open_store(
    shared: &Shared,
    inner: &mut SlotInner,
    out: &Mutex<Conn>,
    peer: &str,
    server: &ServerId,
) -> Result<(), SessionEnd> {
    match shared
        .data
        .open_server(server, shared.config.segment_size, OpenMode::ReadWrite)
    {
        Ok((state, report)) => {
            for (path, torn) in &report.torn {
                tracing::warn!(
                    %server, segment = %path.display(), offset = torn.offset,
                    bytes = torn.len, "truncated a torn tail: {}", torn.reason
                );
            }
            inner.state = Some(state);
            Ok(())
        }
        Err(e) => {
            inner.conn = None;
            Err(refuse(
                out,
                peer,
                ErrorCode::Internal,
                format!(
                    "cannot open the store of server {server}: {}",
                    error_chain(&e)
                ),
            ))
        }
    }
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
pub(super) fn refuse(
    out: &Mutex<Conn>,
    peer: &str,
    code: ErrorCode,
    message: String,
) -> SessionEnd {
    tracing::warn!(peer, ?code, "{message}");
    send_error(out, code, &message);
    SessionEnd::Refused(message)
}

pub(super) fn send_error(out: &Mutex<Conn>, code: ErrorCode, message: &str) {
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

pub(super) fn send(out: &Mutex<Conn>, message: &Message) -> io::Result<()> {
    let frame = message
        .encode()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    out.lock()
        .unwrap_or_else(|e| e.into_inner())
        .write_all(&frame)
}

pub(super) fn read_next(
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
