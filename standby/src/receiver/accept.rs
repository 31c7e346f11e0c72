//! The accept loop: admits each connection to a handshake slot (see `admission`) and
//! starts its session thread. Slots under pressure are reported at most every
//! [`Pressure::EVERY`], so that a flood of connections cannot flood the log.

use super::Shared;
use super::admission::MAX_HANDSHAKES;
use super::session::{SessionEnd, session};
use ferry_tls::LinkListen;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub(super) fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
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
