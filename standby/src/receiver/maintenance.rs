//! Maintenance: retention runs every `clean_interval` for each allowed server, holding
//! that server's fsync and state locks (its ingest pauses for the run). A store closed
//! after a failed fsync (broken) is left alone.

use super::Shared;
use crate::log::OpenMode;
use crate::retention::{self, Policy};
use ferry_wire::{ServerId, error_chain};
use std::net::Shutdown;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Applies retention to every allowed server that has a store, every `clean_interval`.
pub(super) fn maintenance(shared: &Shared) {
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
