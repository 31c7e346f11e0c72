//! Digest requests (the agent's resync): answered from the latest durable state.
//!
//! Invariant: a request is answered only once every record received before it is
//! durable, so that a chunk reported equal stays equal if the standby crashes.

use super::session::{SessionEnd, refuse};
use super::{Shared, Slot, is_current};
use crate::digests::{Baseline, chunk_digests};
use ferry_tls::Conn;
use ferry_wire::digest::CHUNK;
use ferry_wire::message::{DigestRequest, Digests, ErrorCode};
use ferry_wire::{Seq, ServerId};
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Why a digest request got no answer.
pub(super) enum DigestRefusal {
    End(SessionEnd),
    Bad(String),
}

impl DigestRefusal {
    pub(super) fn refuse(self, out: &Mutex<Conn>, peer: &str, server: &ServerId) -> SessionEnd {
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
pub(super) fn answer_digests(
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
    let target = inner
        .state
        .as_ref()
        .map_or(Seq::new(0), |s| s.log.last_seq());
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
                req.disk.get()
            ))
        })?;
    if let Some(b) = baseline {
        b.check(disk).map_err(DigestRefusal::Bad)?;
    }
    if req.first_chunk.saturating_mul(CHUNK) >= disk.size.get() {
        return Err(DigestRefusal::Bad(format!(
            "digest request for chunk {} of disk {}, past its end ({} bytes)",
            req.first_chunk,
            req.disk.get(),
            disk.size.get()
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
