//! What the receiver asks of a site's control plane, and what it tells it: the one
//! interface between the store and the DR control plane (`ferry-site` implements it).
//! A standby without one ([`NoControlPlane`]) serves the servers its config lists.
//!
//! Invariants:
//! - The control plane never touches a session's socket: it holds a [`Session`], which
//!   carries point requests and a request to close through a channel to the session's
//!   own writer thread.
//! - [`ControlPlane::paused`] is asked under the server's lock before every append of a
//!   record or barrier, so a step that ends replication, once published, stops the very
//!   next append.

use crate::retention::Policy;
use ferry_tls::Conn;
use ferry_wire::message::{Barrier, PointRequest, PointResult, Progress};
use ferry_wire::{DigestKey, Message, ServerId};
use std::net::Shutdown;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Point requests a session queues before it refuses more (an agent answers each in
/// milliseconds; an operator asks for one at a time).
const QUEUED_REQUESTS: usize = 16;

/// The receiver's questions and reports about managed servers.
pub trait ControlPlane: Send + Sync + std::fmt::Debug {
    /// Whether the control plane serves `server` (beside the config's static servers).
    fn manages(&self, server: &ServerId) -> bool;
    /// Why records of `server` are not taken now (`None`: they are, or it is static).
    fn paused(&self, server: &ServerId) -> Option<String>;
    /// Why a registration of `server` is not stored now.
    fn registration_refused(&self, server: &ServerId) -> Option<String>;
    /// The disks the latest state of `server` is laid over (an original machine's, for
    /// a digest catch-up against them), if any.
    fn baseline_disks(&self, server: &ServerId) -> Option<Vec<PathBuf>>;
    /// The key to digest [`ControlPlane::baseline_disks`] with (asked only when there are
    /// some); the error says why there is none.
    fn digest_key(&self, server: &ServerId) -> Result<DigestKey, String>;
    /// The retention policy of every managed server.
    fn policies(&self) -> Vec<(ServerId, Policy)>;
    /// An authenticated session for `server` started (it replaces any earlier one).
    fn connected(&self, server: &ServerId, session: Session);
    /// The session `session` of `server` ended.
    fn disconnected(&self, server: &ServerId, session: u64);
    /// The agent's registration of `server` is stored; the error is for the agent.
    fn registered(&self, server: &ServerId) -> Result<(), String>;
    /// The agent's progress report.
    fn progress(&self, server: &ServerId, progress: Progress);
    /// The agent's answer to a point request.
    fn point_result(&self, server: &ServerId, result: PointResult);
    /// A barrier of `server` was stored: its point is the newest.
    fn point_stored(&self, server: &ServerId, barrier: &Barrier);
}

/// No control plane: only the config's servers are served.
#[derive(Debug, Default)]
pub struct NoControlPlane;

impl ControlPlane for NoControlPlane {
    fn manages(&self, _: &ServerId) -> bool {
        false
    }
    fn paused(&self, _: &ServerId) -> Option<String> {
        None
    }
    fn registration_refused(&self, _: &ServerId) -> Option<String> {
        None
    }
    fn baseline_disks(&self, _: &ServerId) -> Option<Vec<PathBuf>> {
        None
    }
    fn digest_key(&self, server: &ServerId) -> Result<DigestKey, String> {
        Err(format!("server {server} has no baseline here"))
    }
    fn policies(&self) -> Vec<(ServerId, Policy)> {
        Vec::new()
    }
    fn connected(&self, _: &ServerId, _: Session) {}
    fn disconnected(&self, _: &ServerId, _: u64) {}
    fn registered(&self, _: &ServerId) -> Result<(), String> {
        Ok(())
    }
    fn progress(&self, _: &ServerId, _: Progress) {}
    fn point_result(&self, _: &ServerId, _: PointResult) {}
    fn point_stored(&self, _: &ServerId, _: &Barrier) {}
}

/// What the control plane sends a session.
#[derive(Debug)]
enum ToSession {
    Point(PointRequest),
    Close,
}

/// A live session as the control plane holds it.
#[derive(Debug, Clone)]
pub struct Session {
    id: u64,
    to: SyncSender<ToSession>,
}

/// The session has ended (or has too many requests queued).
#[derive(Debug, thiserror::Error)]
#[error("the session has ended")]
pub struct SessionGone;

impl Session {
    /// This session's number (a newer session of the same server has a larger one).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Sends `request` to the agent.
    pub fn request_point(&self, request: PointRequest) -> Result<(), SessionGone> {
        self.to
            .try_send(ToSession::Point(request))
            .map_err(|_: TrySendError<_>| SessionGone)
    }

    /// Closes the session (its agent reconnects and is told why its records are not
    /// taken).
    pub fn close(&self) {
        let _ = self.to.try_send(ToSession::Close);
    }
}

/// A session's end of the channel: [`Writer::run`] writes what the control plane sends
/// until the session is done.
pub(super) struct Writer {
    from: Receiver<ToSession>,
}

/// A new session handle for the control plane and its writer.
pub(super) fn session(id: u64) -> (Session, Writer) {
    let (to, from) = std::sync::mpsc::sync_channel(QUEUED_REQUESTS);
    (Session { id, to }, Writer { from })
}

impl Writer {
    /// Forwards point requests onto `out` and closes it when asked, until `done`.
    pub(super) fn run(self, out: &Arc<Mutex<Conn>>, done: &AtomicBool) {
        while !done.load(Ordering::SeqCst) {
            match self.from.recv_timeout(Duration::from_millis(250)) {
                Ok(ToSession::Point(request)) => {
                    if super::session::send(out, &Message::PointRequest(request)).is_err() {
                        return;
                    }
                }
                Ok(ToSession::Close) => {
                    let _ = out
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .shutdown(Shutdown::Both);
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }
}
