//! Retention and log cleaning: after points expire and the log is cleaned, every retained
//! point (and latest) still rebuilds exactly as the model was, the dropped points are
//! gone for good (also after reopening), and the space used shrinks.

mod common;

use common::*;
use ferry_replicator::sim::SimServer;
use ferry_standby::retention::{self, Policy};
use ferry_wire::Seq;
use ferry_wire::message::PointKind;

const DISK: usize = 6 << 20;
const HOUR_MS: u64 = 3_600_000;

#[test]
fn cleaning_keeps_every_retained_point_exact_and_frees_space() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = keys();
    let mut sim = SimServer::new(&keys, &[DISK]).expect("sim");
    let mut state = registered(dir.path(), &sim);
    // A full copy of the disk, then rounds of overwrites with a point after each.
    for i in 0..6 {
        let m = sim.write(0, i << 20, &noise(1 << 20, i)).expect("seal");
        feed(&mut state, &m, &keys);
    }
    let mut points: Vec<(Seq, Vec<Vec<u8>>)> = Vec::new();
    for round in 0..24u64 {
        for k in 0..3u64 {
            let offset = ((round * 7 + k * 13) % 23) * (256 << 10);
            let m = match (round + k) % 5 {
                0 => sim.write_zeroes(0, offset, 128 << 10),
                1 => sim.discard(0, offset, 64 << 10),
                _ => sim.write(0, offset, &noise(256 << 10, round * 10 + k)),
            };
            feed(&mut state, &m.expect("seal"), &keys);
        }
        let kind = if round % 4 == 0 {
            PointKind::Manual
        } else {
            PointKind::Scheduled
        };
        feed(&mut state, &sim.barrier(kind, round * HOUR_MS).0, &keys);
        points.push((sim.last_seq(), sim.disks().to_vec()));
    }
    // A few writes after the last point: "latest" differs from every point.
    let m = sim.write(0, 4096, &noise(8192, 777)).expect("seal");
    feed(&mut state, &m, &keys);
    state.log.sync().expect("sync");

    let policy = Policy {
        interval_hours: 1,
        keep: 4,
    };
    let report = retention::apply(&mut state, &policy, &keys.ingest.mac).expect("retention runs");
    assert_eq!(
        report.points_dropped.len(),
        20,
        "24 points, keep 4: {report:?}"
    );
    assert_eq!(report.points_retained, 4);
    assert!(
        report.segments_removed > 0,
        "cleaning removed no segment: {report:?}"
    );
    // Every sealed segment left is at least half live, so what remains is bounded by
    // twice the live bytes plus the active segment.
    let retained: Vec<Seq> = state.points().iter().map(|p| p.seq).collect();
    let entries = state.log.entries();
    let live: u64 = retention::liveness(entries, &retained)
        .iter()
        .zip(entries)
        .filter(|(live, _)| **live)
        .map(|(_, e)| u64::from(e.frame_len))
        .sum();
    assert!(
        report.space_after < report.space_before
            && report.space_after <= 2 * live + SEGMENT + (64 << 10),
        "space did not shrink enough: {} -> {} bytes with {live} live",
        report.space_before,
        report.space_after
    );

    let check = |state: &ferry_standby::server::ServerState, when: &str| {
        let retained: Vec<Seq> = state.points().iter().map(|p| p.seq).collect();
        let expected: Vec<Seq> = points[20..].iter().map(|(s, _)| *s).collect();
        assert_eq!(
            retained, expected,
            "{when}: the 4 newest points are retained"
        );
        for (seq, model) in &points[20..] {
            let got = rebuild_all(state, *seq, &keys, dir.path());
            assert_disks_eq(&got, model, &format!("{when}: point at seq {seq}"));
        }
        let latest = rebuild_all(state, state.log.last_seq(), &keys, dir.path());
        assert_disks_eq(&latest, sim.disks(), &format!("{when}: latest"));
        assert_eq!(
            state.log.last_seq(),
            sim.last_seq(),
            "{when}: last seq kept"
        );
    };
    check(&state, "after cleaning");
    drop(state);
    let mut state = open(dir.path());
    check(&state, "after reopening");

    let again = retention::apply(&mut state, &policy, &keys.ingest.mac).expect("second run");
    assert!(
        again.points_dropped.is_empty(),
        "nothing more expires: {again:?}"
    );
    check(&state, "after a second run");
}
