//! The handshake: TLS, then Hello, Challenge and Authenticate, all under one absolute
//! deadline of `handshake_timeout` (a peer sending a byte at a time is cut off at it,
//! whatever each read waits).
//!
//! Invariant: whether a server is known is checked only after the agent's proof, so a
//! peer without the server's auth key learns nothing of which servers exist: known or
//! not, it meets the same challenge and the same refusal.

use super::Shared;
use super::admission::Ticket;
use super::session::{SessionEnd, read_next, refuse, send};
use ferry_tls::Conn;
use ferry_wire::auth::{self, Channel, Exchange, Nonce, Role};
use ferry_wire::message::{Challenge, ErrorCode, Hello};
use ferry_wire::{IngestKeys, Message, ServerId, error_chain};
use std::io::BufReader;
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// An authenticated connection, ready to take over its server.
pub(super) struct Authenticated {
    pub(super) stream: Conn,
    /// The connection's writing side, shared by the session's threads.
    pub(super) out: Arc<Mutex<Conn>>,
    pub(super) input: BufReader<Conn>,
    /// The frame buffer `input` is read into.
    pub(super) buf: Vec<u8>,
    pub(super) hello: Hello,
    pub(super) keys: IngestKeys,
}

/// Runs the handshake on `tcp`; frees the handshake slot once it is authenticated.
pub(super) fn authenticate(
    shared: &Shared,
    tcp: TcpStream,
    handshake: &mut Ticket,
    peer: &str,
) -> Result<Authenticated, SessionEnd> {
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
    check_certificate(shared, &stream, &out, peer, &hello.server)?;
    let keys = shared.keys.ingest_keys(&hello.server);
    challenge(&mut input, &mut buf, &out, peer, &hello, &channel, &keys)?;
    // Only now, so that a peer without the server's auth key learns nothing of which
    // servers exist: known or not, it meets the same challenge and the same refusal.
    check_known(shared, &out, peer, &hello.server)?;
    handshake.done();
    stream.set_deadline(None).map_err(SessionEnd::Io)?;
    stream.set_read_timeout(None).map_err(SessionEnd::Io)?;
    Ok(Authenticated {
        stream,
        out,
        input,
        buf,
        hello,
        keys,
    })
}

/// Over TLS: the client certificate names `server` or a peer site.
fn check_certificate(
    shared: &Shared,
    stream: &Conn,
    out: &Mutex<Conn>,
    peer: &str,
    server: &ServerId,
) -> Result<(), SessionEnd> {
    if !stream.is_tls() {
        return Ok(());
    }
    let names = stream.peer_names();
    let speaks_for = names
        .iter()
        .any(|n| n.as_str() == server.as_str() || shared.config.peer_sites.contains(n.as_str()));
    if speaks_for {
        return Ok(());
    }
    Err(refuse(
        out,
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
    ))
}

/// Sends the challenge (with the standby's proof) and checks the agent's proof, both
/// over the TLS exporter `channel`.
fn challenge(
    input: &mut BufReader<Conn>,
    buf: &mut Vec<u8>,
    out: &Mutex<Conn>,
    peer: &str,
    hello: &Hello,
    channel: &Channel,
    keys: &IngestKeys,
) -> Result<(), SessionEnd> {
    let server = &hello.server;
    let server_nonce = Nonce::random(&mut rand_core::OsRng);
    let exchange = Exchange {
        server,
        client_nonce: &hello.client_nonce,
        server_nonce: &server_nonce,
        channel,
    };
    send(
        out,
        &Message::Challenge(Challenge {
            server_nonce,
            standby_proof: auth::prove(&keys.auth, Role::Standby, &exchange),
        }),
    )
    .map_err(SessionEnd::Io)?;
    match read_next(input, buf, out, peer)? {
        Message::Authenticate(a)
            if auth::check(&keys.auth, Role::Agent, &exchange, &a.agent_proof) =>
        {
            Ok(())
        }
        Message::Authenticate(_) => Err(refuse(
            out,
            peer,
            ErrorCode::AuthenticationFailed,
            format!(
                "server {server}: the agent's proof does not match the server's auth key \
                 (the host key is another server's or another site pair's)"
            ),
        )),
        Message::Error(e) => {
            let text = format!(
                "server {server}: the agent refused: {:?}: {}",
                e.code, e.message
            );
            tracing::warn!(peer, "{text}");
            Err(SessionEnd::Refused(text))
        }
        other => Err(refuse(
            out,
            peer,
            ErrorCode::Malformed,
            format!("expected Authenticate, got {:?}", other.frame_type()),
        )),
    }
}

/// The server is on the allow-list or in the control catalogue.
fn check_known(
    shared: &Shared,
    out: &Mutex<Conn>,
    peer: &str,
    server: &ServerId,
) -> Result<(), SessionEnd> {
    if shared.config.servers.contains_key(server) || shared.config.control.manages(server) {
        return Ok(());
    }
    Err(refuse(
        out,
        peer,
        ErrorCode::UnknownServer,
        format!(
            "server {server} is not known to this standby; an operator adds it with \
             `ferry server add` (or to the standby's [[servers]] list)"
        ),
    ))
}
