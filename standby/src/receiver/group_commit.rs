//! Group commit (DESIGN.md I2): a sync thread per connection waits until records have
//! been written past the durable seq, takes a [`crate::log::SyncTicket`], runs the fsync
//! without holding the server's lock (the session keeps appending meanwhile), and then
//! acks the highest seq that fsync covered. One fsync covers every record written before
//! it started, however many.
//!
//! Invariant: nothing is acked that an fsync did not cover. After a failed fsync the
//! page cache may no longer match the disk: the log is cut back to what is durable, the
//! connection dropped, and the log reopened on the next one.

use super::session::{send, send_error};
use super::{Slot, is_current};
use ferry_tls::Conn;
use ferry_wire::message::{Ack, ErrorCode};
use ferry_wire::{Message, Seq, ServerId, error_chain};
use std::net::Shutdown;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Group commit: fsync whatever has been written, then ack it; repeat.
pub(super) fn sync_loop(
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
