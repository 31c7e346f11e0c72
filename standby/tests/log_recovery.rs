//! Crash recovery and damage, without root: a torn tail written by hand is truncated and
//! reported; damage in the middle of a segment, or in a sealed segment, is an error naming
//! segment and offset (on open, or on rebuild) and is never skipped; a full disk (a
//! fault-injecting directory) refuses a frame retryably and leaves nothing of it behind.

mod common;

use common::sim_storage::SimDir;
use common::*;
use ferry_replicator::sim::SimServer;
use ferry_standby::index::SegmentNo;
use ferry_standby::log::{LogError, OpenMode};
use ferry_standby::rebuild::{self, Target};
use ferry_standby::server::{IngestError, OpenError, ServerState};
use ferry_wire::Seq;
use ferry_wire::message::{ErrorCode, PointKind};
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::Ordering;

/// A store with `records` 64 KiB records (and a barrier every 8, each followed by a group
/// commit), synced and closed.
fn store_with(dir: &Path, records: u64) -> SimServer {
    let keys = keys();
    let mut sim = SimServer::new(&keys, &[4 << 20]).expect("sim");
    let mut state = registered(dir, &sim);
    for i in 0..records {
        let m = sim
            .write(0, (i * 65_536) % (4 << 20), &noise(65_536, i))
            .expect("seal");
        feed(&mut state, &m, &keys);
        if i % 8 == 7 {
            feed(&mut state, &sim.barrier(PointKind::Scheduled, i).0, &keys);
            state.log.sync().expect("sync");
        }
    }
    state.log.sync().expect("sync");
    sim
}

fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut segs: Vec<_> = std::fs::read_dir(dir.join("log"))
        .expect("log dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    segs
}

#[test]
fn a_torn_tail_is_truncated_and_reported_and_ingest_continues() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = keys();
    let mut sim = store_with(dir.path(), 10);
    let last = segments(dir.path()).pop().expect("a segment");
    let whole = std::fs::metadata(&last).expect("stat").len();
    // Half of the next frame, as a killed writer would leave it.
    let next = sim.write(0, 0, &noise(65_536, 99)).expect("seal");
    let frame = next.encode().expect("encode");
    let file = OpenOptions::new()
        .write(true)
        .open(&last)
        .expect("open segment");
    file.write_all_at(&frame[..frame.len() / 2], whole)
        .expect("write torn tail");
    drop(file);

    let (mut state, report) =
        ServerState::open(server(), dir.path(), SEGMENT, OpenMode::ReadWrite).expect("reopen");
    assert_eq!(
        report.torn.len(),
        1,
        "the torn tail must be reported: {report:?}"
    );
    let (path, torn) = &report.torn[0];
    assert_eq!(path, &last, "the report names the segment");
    assert_eq!(
        torn.offset, whole,
        "the tail starts where the last whole frame ended"
    );
    assert_eq!(
        std::fs::metadata(&last).expect("stat").len(),
        whole,
        "tail truncated"
    );
    assert_eq!(
        state.log.last_seq(),
        Seq::new(11),
        "10 records and one barrier survive"
    );
    // The agent resends the record that was torn; it is accepted as new.
    feed(&mut state, &next, &keys);
    state.log.sync().expect("sync");
    let got = rebuild_all(&state, state.log.last_seq(), &keys, dir.path());
    assert_disks_eq(&got, sim.disks(), "after recovery");
}

#[test]
fn damage_in_the_middle_of_the_active_segment_is_an_error_naming_segment_and_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    store_with(dir.path(), 10);
    let last = segments(dir.path()).pop().expect("a segment");
    // The third frame of the segment, below the durable watermark.
    let (state, _) =
        ServerState::open(server(), dir.path(), SEGMENT, OpenMode::ReadOnly).expect("open");
    let victim = state.log.entries()[2];
    drop(state);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&last)
        .expect("open");
    let mut byte = [0u8; 1];
    let at = victim.position.0 + 100;
    file.read_exact_at(&mut byte, at).expect("read");
    file.write_all_at(&[byte[0] ^ 0x01], at).expect("write");
    drop(file);
    let err = ServerState::open(server(), dir.path(), SEGMENT, OpenMode::ReadWrite)
        .expect_err("a damaged middle must not open");
    let text = err.to_string();
    assert!(
        matches!(&err, OpenError::Log(LogError::Corrupt(c)) if c.path == last && c.offset == victim.position.0),
        "wrong error: {text}"
    );
    assert!(
        text.contains(&last.display().to_string())
            && text.contains(&format!("offset {}", victim.position.0)),
        "the message must name segment and offset: {text}"
    );
}

#[test]
fn a_changed_byte_in_a_sealed_segment_fails_rebuild_naming_segment_and_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = keys();
    store_with(dir.path(), 80); // ~5 MiB: at least two sealed segments
    let segs = segments(dir.path());
    assert!(segs.len() >= 3, "expected rolled segments, got {segs:?}");
    let (state, _) =
        ServerState::open(server(), dir.path(), SEGMENT, OpenMode::ReadOnly).expect("open");
    let first = SegmentNo(1);
    // A record of segment 1 that no later record overwrites (the last 16 records
    // overwrite the disk's first MiB), so every rebuild from then on must read it.
    let victim = *state
        .log
        .entries()
        .iter()
        .find(|e| {
            e.segment == first && e.disk_range().is_some_and(|(_, start, _)| start >= 1 << 20)
        })
        .expect("a lasting record in segment 1");
    drop(state);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&segs[0])
        .expect("open");
    let at = victim.position.0 + u64::from(victim.frame_len) - 40; // inside the payload
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, at).expect("read");
    file.write_all_at(&[byte[0] ^ 0x80], at).expect("write");
    drop(file);

    // The sidecar is trusted on open (fast open); the damage shows when the frame is read.
    let (state, _) = ServerState::open(server(), dir.path(), SEGMENT, OpenMode::ReadOnly)
        .expect("a sealed segment opens from its sidecar");
    let disk = state.registration().expect("registered").disks[0].clone();
    let failures: Vec<String> = state
        .points()
        .iter()
        .map(|p| p.seq)
        .chain([state.log.last_seq()])
        .filter_map(|seq| {
            let out = dir.path().join(format!("out-{}.img", seq.get()));
            let target = Target::open(&out, &disk).expect("target");
            match rebuild::rebuild_disk(&state.log, &disk, seq, target, &keys.recovery, 2, &|_| {})
            {
                Ok(_) => None,
                Err(e) if e.corruption().is_some() => {
                    let c = e.corruption().expect("checked");
                    assert_eq!(c.path, segs[0], "names the damaged segment");
                    assert_eq!(c.offset, victim.position.0, "names the damaged frame");
                    assert!(!out.exists(), "a failed rebuild leaves no image behind");
                    Some(c.to_string())
                }
                Err(other) => panic!("expected corruption, got {other}"),
            }
        })
        .collect();
    assert!(!failures.is_empty(), "no rebuild read the damaged record");
    assert!(failures[0].contains("crc32"), "{}", failures[0]);
}

#[test]
fn a_full_disk_refuses_retryably_keeps_nothing_partial_and_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = keys();
    let (meta, log) = (SimDir::new("meta"), SimDir::new("log"));
    let budget = &log.faults.budget;
    budget.store(300_000, Ordering::SeqCst);
    let mut state = open_sim(&meta, &log);
    let mut sim = SimServer::new(&keys, &[1 << 20]).expect("sim");
    state
        .register(sim.registration(), &keys.ingest.mac)
        .expect("register");
    let mut stored = 0;
    let refused = loop {
        let m = sim
            .write(0, stored * 65_536, &noise(65_536, stored))
            .expect("seal");
        let frame = m.encode().expect("encode");
        match state.ingest(&frame, &m, &keys.ingest.mac) {
            Ok(_) => stored += 1,
            Err(e) => break (e, m, frame),
        }
    };
    let (err, message, frame) = refused;
    assert!(err.is_retryable(), "a full disk must be retryable: {err}");
    assert_eq!(err.code(), ErrorCode::StorageFull);
    assert!(
        matches!(err, IngestError::Log(LogError::StorageFull { .. })),
        "{err:?}"
    );
    assert_eq!(
        state.log.last_seq(),
        Seq::new(stored),
        "the refused record is not in the log"
    );
    let (seg, _) = state.log.segment_file(SegmentNo(1)).expect("segment 1");
    let len_before = seg.size().expect("size");
    assert!(
        state.ingest(&frame, &message, &keys.ingest.mac).is_err(),
        "still full"
    );
    assert_eq!(
        seg.size().expect("size"),
        len_before,
        "no partial frame kept"
    );

    budget.store(i64::MAX / 2, Ordering::SeqCst); // space is freed
    let now = state
        .ingest(&frame, &message, &keys.ingest.mac)
        .expect("ingest resumes");
    assert!(matches!(now, ferry_standby::server::Ingested::Stored(s) if s == Seq::new(stored + 1)));
    state.log.sync().expect("sync");
    let got = rebuild_all(&state, state.log.last_seq(), &keys, dir.path());
    assert_disks_eq(&got, sim.disks(), "after the disk had room again");
}

#[test]
fn after_a_power_loss_garbage_past_the_watermark_is_a_torn_tail_even_with_frames_after_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = keys();
    let mut sim = store_with(dir.path(), 10);
    let durable = {
        let mut state = open(dir.path());
        state.log.sync().expect("sync") // writes the watermark past every stored frame
    };
    // Three more frames reach the page cache; no fsync covers them. The kernel wrote the
    // first and third back before the power failed, not the second.
    let mut state = open(dir.path());
    for i in 0..3 {
        let m = sim
            .write(0, i * 65_536, &noise(65_536, 50 + i))
            .expect("seal");
        feed(&mut state, &m, &keys);
    }
    let lost = state.log.entries()[state.log.entries().len() - 2];
    drop(state);
    let last = segments(dir.path()).pop().expect("a segment");
    let file = OpenOptions::new().write(true).open(&last).expect("open");
    file.write_all_at(&vec![0u8; lost.frame_len as usize], lost.position.0)
        .expect("zero the frame");
    drop(file);

    let (state, report) =
        ServerState::open(server(), dir.path(), SEGMENT, OpenMode::ReadWrite).expect("reopen");
    assert_eq!(
        report.torn.len(),
        1,
        "the torn tail is reported: {report:?}"
    );
    assert_eq!(
        report.torn[0].1.offset, lost.position.0,
        "cut where the damage starts"
    );
    assert_eq!(
        state.log.last_seq(),
        Seq::new(durable.get() + 1),
        "every durable frame and the whole one before the damage are kept"
    );
}

#[test]
fn a_barrier_without_a_valid_mac_or_seal_is_refused_on_ingest_and_on_rebuild() {
    use ferry_standby::index::EntryKind;
    use ferry_wire::Message;
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = keys();
    let mut sim = store_with(dir.path(), 10);

    // On ingest: a barrier whose MAC does not match its fields.
    let mut state = open(dir.path());
    let Message::Barrier(mut forged) = sim.barrier(PointKind::Manual, 1).0 else {
        unreachable!("barrier() makes barriers")
    };
    forged.consistent = !forged.consistent;
    let message = Message::Barrier(forged);
    let err = state
        .ingest(
            &message.encode().expect("encode"),
            &message,
            &keys.ingest.mac,
        )
        .expect_err("a forged barrier must be refused");
    assert!(matches!(err, IngestError::BadRecord { .. }), "{err:?}");
    assert_eq!(err.code(), ErrorCode::Malformed, "{err}");
    drop(state);

    // In the store: a stored point altered, with the frame's CRC recomputed.
    let state = open(dir.path());
    let victim = *state
        .log
        .entries()
        .iter()
        .find(|e| matches!(e.what, EntryKind::Barrier { .. }))
        .expect("a stored barrier");
    rebuild::point_disks(&state, victim.seq, &keys.recovery).expect("intact point checks out");
    let (file, _) = state.log.segment_file(victim.segment).expect("segment");
    let mut frame = vec![0u8; victim.frame_len as usize];
    file.read_exact_at(&mut frame, victim.position.0)
        .expect("read");
    let mut buf = Vec::new();
    let Some(Message::Barrier(mut b)) =
        ferry_wire::frame::read_frame(&mut frame.as_slice(), &mut buf).expect("decodes")
    else {
        panic!("expected the barrier frame")
    };
    b.consistent = !b.consistent;
    // Re-MACed with the ingest key, as the standby itself could.
    b.mac = ferry_wire::seal::barrier_mac(&keys.ingest.mac, &b);
    let altered = Message::Barrier(b).encode().expect("encode");
    assert_eq!(altered.len(), frame.len(), "same length");
    file.write_all_at(&altered, victim.position.0)
        .expect("write");
    drop((file, state));
    // Reopened, the index is rebuilt from the altered frame: only the seal can tell.
    let state = open(dir.path());
    let err = rebuild::point_disks(&state, victim.seq, &keys.recovery)
        .expect_err("an altered point must be refused");
    let text = ferry_wire::error_chain(&err);
    assert!(
        text.contains(&format!("barrier seq {}", victim.seq)) && text.contains("seal"),
        "{text}"
    );
}
