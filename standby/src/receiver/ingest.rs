//! The ingest loop: the session thread reads each frame (its CRC checked by frame
//! decoding), answers heartbeats, digest requests and control reports, and stores
//! registrations, records and barriers.
//!
//! Invariants:
//! - A frame is stored as received, once [`crate::server::ServerState::ingest`] (MAC key
//!   only) took it. A refused frame gets an `Error` naming why, is logged, and closes the
//!   connection; nothing of it is stored (DESIGN.md I7).
//! - A record or barrier is appended only while the server's state replicates: the
//!   control plane is asked under the server's lock on every try, so a step that ends
//!   replication, once published, stops the very next append.
//! - Full disk: an append that fails for lack of space is undone, reported to the agent
//!   once as a retryable `Error(StorageFull)` and logged; the session then retries every
//!   [`FULL_RETRY`] without reading further, so TCP and the agent's window push back on
//!   the agent. When space returns, ingest resumes by itself.

use super::digest_requests::answer_digests;
use super::session::{SessionEnd, read_next, refuse, send, send_error};
use super::{Shared, Slot, is_current};
use crate::server::{IngestError, Ingested};
use ferry_tls::Conn;
use ferry_wire::message::{ErrorCode, Heartbeat};
use ferry_wire::{MacKey, Message, ServerId, error_chain};
use std::io::BufReader;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How often a session retries an append that failed for lack of space.
pub const FULL_RETRY: Duration = Duration::from_millis(250);

/// One connection's ingest: the server it stores for and the connection it answers on.
pub(super) struct Ingest<'a> {
    pub(super) shared: &'a Shared,
    pub(super) slot: &'a Slot,
    pub(super) conn_id: u64,
    pub(super) out: &'a Mutex<Conn>,
    pub(super) peer: &'a str,
    pub(super) server: &'a ServerId,
    pub(super) mac_key: &'a MacKey,
}

impl Ingest<'_> {
    /// Reads and handles the agent's messages until the session ends.
    pub(super) fn run(
        &self,
        input: &mut BufReader<Conn>,
        buf: &mut Vec<u8>,
    ) -> Result<(), SessionEnd> {
        let (shared, out, peer, server) = (self.shared, self.out, self.peer, self.server);
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
                    let reply = answer_digests(
                        shared,
                        self.slot,
                        self.conn_id,
                        server,
                        *req,
                        &mut baseline,
                    )
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
            self.store(buf, &message, &mut reported_full)?;
        }
    }

    /// Stores a registration, record or barrier (`buf` holds its frame as received),
    /// retrying every [`FULL_RETRY`] while the disk is full.
    fn store(
        &self,
        buf: &[u8],
        message: &Message,
        reported_full: &mut bool,
    ) -> Result<(), SessionEnd> {
        let (shared, slot, out, peer, server) =
            (self.shared, self.slot, self.out, self.peer, self.server);
        loop {
            if shared.stop.load(Ordering::SeqCst) {
                return Err(SessionEnd::Stopping);
            }
            let mut inner = slot.lock();
            if !is_current(&inner, self.conn_id) {
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
            let result = match message {
                Message::RegisterServer(reg) => {
                    state.register(reg.clone(), self.mac_key).map(|()| None)
                }
                _ => state.ingest(buf, message, self.mac_key).map(Some),
            };
            match result {
                Ok(None) => {
                    drop(inner);
                    return self.registered();
                }
                Ok(stored) => {
                    if matches!(stored, Some(Ingested::Stored(_))) {
                        slot.changed.notify_all();
                        if let Message::Barrier(b) = message {
                            shared.config.control.point_stored(server, b);
                        }
                    }
                    if *reported_full {
                        tracing::info!(%server, "storage has room again; ingest resumed");
                        *reported_full = false;
                    }
                    return Ok(());
                }
                Err(e) if e.is_retryable() => {
                    drop(inner);
                    if !*reported_full {
                        *reported_full = true;
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

    /// A registration is stored: the operator sees the server initialized, and the agent
    /// is told if its records are not taken now.
    fn registered(&self) -> Result<(), SessionEnd> {
        let (control, server) = (&self.shared.config.control, self.server);
        if let Err(e) = control.registered(server) {
            return Err(refuse(
                self.out,
                self.peer,
                ErrorCode::Internal,
                format!("server {server}: {e}"),
            ));
        }
        if let Some(reason) = control.paused(server) {
            return Err(SessionEnd::Paused(reason));
        }
        Ok(())
    }
}

fn refuse_ingest(out: &Mutex<Conn>, peer: &str, server: &ServerId, e: &IngestError) -> SessionEnd {
    refuse(
        out,
        peer,
        e.code(),
        format!("server {server}: {}", error_chain(e)),
    )
}
