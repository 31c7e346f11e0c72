//! Durable acks (DESIGN.md I2), on simulated storage that keeps the page cache and the
//! disk apart (`common::sim_storage`): every seq the log ever reported durable survives a
//! power loss — when an fsync fails, when the process dies before the directory was
//! fsynced, and when a sync runs beside an unfinished group-commit ticket.

mod common;
use common::sim_storage::SimDir;
use common::*;
use ferry_replicator::sim::SimServer;
use ferry_standby::log::LogError;
use ferry_standby::server::ServerState;
use ferry_wire::{Message, Seq};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Feeds `n` 64 KiB writes from the simulated server; returns their messages.
fn write_some(
    state: &mut ferry_standby::server::ServerState,
    sim: &mut SimServer,
    n: u64,
    salt: u64,
) -> Vec<Message> {
    let keys = keys();
    (0..n)
        .map(|i| {
            let m = sim
                .write(0, (i % 64) * 65_536, &noise(65_536, salt + i))
                .expect("seal");
            feed(state, &m, &keys);
            m
        })
        .collect()
}

/// A store on fresh simulated storage with a simulated server of one `disk`-byte disk
/// registered: the metadata and log directories, the store, the server.
fn registered_sim(disk: usize) -> (Arc<SimDir>, Arc<SimDir>, ServerState, SimServer) {
    let (meta, log) = (SimDir::new("meta"), SimDir::new("log"));
    let mut state = open_sim(&meta, &log);
    let sim = SimServer::new(&keys(), &[disk]).expect("sim");
    state
        .register(sim.registration(), &keys().ingest.mac)
        .expect("register");
    (meta, log, state, sim)
}

#[test]
fn a_failed_fsync_never_leads_to_acking_what_the_disk_lacks() {
    let keys = keys();
    let (meta, log, mut state, mut sim) = registered_sim(4 << 20);
    write_some(&mut state, &mut sim, 10, 0);
    let durable = state.log.sync().expect("first sync");
    assert_eq!(durable, Seq::new(10));
    let model_at_durable = sim.disks().to_vec();

    // Ten more frames; their fsync fails (the kernel marks the pages clean, unwritten).
    let lost = write_some(&mut state, &mut sim, 10, 100);
    log.faults.failing_fsyncs.store(1, Ordering::SeqCst);
    let err = state.log.sync().expect_err("the injected fsync failure");
    assert!(matches!(err, LogError::FsyncFailed { .. }), "{err:?}");
    assert!(
        !err.is_retryable(),
        "a failed fsync is never retried in place"
    );
    state.log.discard_unsynced().expect("cutting back the log");
    assert!(
        matches!(state.log.sync(), Err(LogError::Discarded)),
        "a discarded log refuses to report anything durable"
    );
    drop(state);

    // The same process reopens the store: it must not see the frames the disk lacks
    // (their bytes are still in the page cache, and an fsync now "succeeds").
    let mut state = open_sim(&meta, &log);
    assert_eq!(
        state.log.durable_seq(),
        durable,
        "after a failed fsync the reopened log reports only what an fsync covered"
    );
    assert_eq!(
        state.log.last_seq(),
        durable,
        "the unsynced frames are gone"
    );

    // The agent resends from its last ack; those land and are acknowledged.
    for m in &lost {
        feed(&mut state, m, &keys);
    }
    let acked = state.log.sync().expect("sync after the resend");
    assert_eq!(acked, Seq::new(20));

    let scratch = tempfile::tempdir().expect("tempdir");
    let after = open_sim(&meta.after_power_loss(), &log.after_power_loss());
    assert!(
        after.log.last_seq() >= acked,
        "a power loss lost acknowledged frames: {} < {acked}",
        after.log.last_seq()
    );
    let got = rebuild_all(&after, Seq::new(10), &keys, scratch.path());
    assert_disks_eq(
        &got,
        &model_at_durable,
        "at the last seq before the failure",
    );
    let got = rebuild_all(&after, acked, &keys, scratch.path());
    assert_disks_eq(&got, sim.disks(), "after the resend");
}

#[test]
fn segments_a_killed_standby_created_are_durable_before_a_restart_acks_them() {
    let (meta, log, mut state, mut sim) = registered_sim(8 << 20);
    state.log.sync().expect("sync");
    // Roll into a second segment without any sync, then "kill -9": drop the state.
    let mut n = 0;
    while state.log.segment_numbers().len() < 2 {
        write_some(&mut state, &mut sim, 1, n);
        n += 1;
    }
    drop(state);

    let mut restarted = open_sim(&meta, &log);
    let acked = restarted.log.sync().expect("sync after restart");
    assert_eq!(
        acked,
        Seq::new(n),
        "the restart fsyncs what the killed process wrote"
    );
    let after = open_sim(&meta.after_power_loss(), &log.after_power_loss());
    assert_eq!(
        after.log.last_seq(),
        acked,
        "frames in a segment whose directory entry was never fsynced were acknowledged"
    );
}

#[test]
fn a_sync_beside_an_unfinished_ticket_still_fsyncs_the_directory() {
    let keys = keys();
    let (_meta, log, mut st, mut sim) = registered_sim(8 << 20);
    let syncs = &log.faults.dir_syncs;
    st.log.sync().unwrap();
    let mut i = 0u64;
    let before = st.log.segment_numbers().len();
    while st.log.segment_numbers().len() == before || st.log.segment_numbers().len() == 1 {
        let m = sim.write(0, (i % 100) * 65536, &noise(65536, i)).unwrap();
        feed(&mut st, &m, &keys);
        i += 1;
    }
    // The group-commit thread has taken a ticket (covering the new segment's directory
    // entry) but not run it yet.
    let ticket = st.log.prepare_sync();
    let n0 = syncs.load(Ordering::SeqCst);
    // A new connection's handshake syncs to tell the agent its last durable seq.
    let durable = st.log.sync().unwrap();
    let n1 = syncs.load(Ordering::SeqCst);
    assert!(
        n1 > n0,
        "sync() declared {durable} durable (frames in a new segment) without fsyncing the directory"
    );
    drop(ticket);
}

#[test]
fn a_failed_fsync_is_sticky_even_when_the_kernel_would_report_success_next() {
    let (_meta, log, mut state, mut sim) = registered_sim(4 << 20);
    write_some(&mut state, &mut sim, 4, 0);
    log.faults.failing_fsyncs.store(1, Ordering::SeqCst);
    assert!(state.log.sync().is_err(), "the injected failure");
    // The simulated kernel now reports success (the pages were marked clean): the log
    // must not believe it.
    let err = state.log.sync().expect_err("fsync failures are sticky");
    assert!(matches!(err, LogError::FsyncFailed { .. }), "{err:?}");
    assert_eq!(state.log.durable_seq(), Seq::new(0));
}

#[test]
fn an_open_whose_fsync_fails_leaves_the_next_open_reading_the_disk() {
    let (meta, log, mut state, mut sim) = registered_sim(4 << 20);
    write_some(&mut state, &mut sim, 4, 0);
    let durable = state.log.sync().expect("sync");
    write_some(&mut state, &mut sim, 4, 10);
    drop(state); // killed: four frames only in the page cache

    log.faults.failing_fsyncs.store(1, Ordering::SeqCst);
    let failed = ServerState::open_in(
        server(),
        meta.clone(),
        log.clone(),
        SEGMENT,
        ferry_standby::log::OpenMode::ReadWrite,
    );
    assert!(failed.is_err(), "the open's fsync failed");
    let reopened = open_sim(&meta, &log);
    assert_eq!(
        reopened.log.durable_seq(),
        durable,
        "the second open must not trust pages the failed fsync left clean in the cache"
    );
}
