//! The model law: whatever sequence of writes (random offsets and lengths, data, zero
//! extents, discards, overwrites) and barriers goes through the standby's ingest rules,
//! rebuilding at every barrier equals an in-memory model of the disks at that barrier —
//! also after the store is closed and reopened in between (sidecar indexes, rolled
//! segments).

mod common;

use common::*;
use ferry_replicator::sim::SimServer;
use ferry_wire::Seq;
use ferry_wire::message::PointKind;
use proptest::prelude::*;

const DISKS: [usize; 2] = [384 << 10, 100_000];

#[derive(Debug, Clone)]
enum Op {
    Write {
        disk: u32,
        at: usize,
        len: usize,
        kind: u8,
        aligned: bool,
    },
    Zero {
        disk: u32,
        at: usize,
        len: usize,
    },
    Discard {
        disk: u32,
        at: usize,
        len: usize,
    },
    Barrier,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u32..2, 0usize..1_000_000, 1usize..200_000, 0u8..3, any::<bool>())
            .prop_map(|(disk, at, len, kind, aligned)| Op::Write { disk, at, len, kind, aligned }),
        1 => (0u32..2, 0usize..1_000_000, 1usize..150_000).prop_map(|(disk, at, len)| Op::Zero { disk, at, len }),
        1 => (0u32..2, 0usize..1_000_000, 1usize..150_000).prop_map(|(disk, at, len)| Op::Discard { disk, at, len }),
        2 => Just(Op::Barrier),
        1 => Just(Op::Reopen),
    ]
}

/// An offset and a length inside a disk of `size` bytes.
fn place(size: usize, at: usize, len: usize, aligned: bool) -> (u64, usize) {
    let mut offset = (size * at / 1_000_000).min(size - 1);
    if aligned {
        offset -= offset % 4096;
    }
    let mut len = len.min(size - offset).min(1 << 20);
    if aligned && len >= 4096 {
        len -= len % 4096;
    }
    (offset as u64, len.max(1))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn rebuild_at_every_barrier_equals_the_model(ops in proptest::collection::vec(op(), 1..50)) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let keys = keys();
        let mut sim = SimServer::new(&keys, &DISKS).expect("sim server");
        let mut state = registered(dir.path(), &sim);
        let mut points: Vec<(Seq, Vec<Vec<u8>>)> = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let seed = i as u64;
            let message = match *op {
                Op::Write { disk, at, len, kind, aligned } => {
                    let (offset, len) = place(DISKS[disk as usize], at, len, aligned);
                    let data = match kind {
                        0 => noise(len, seed),
                        1 => text(len, seed),
                        _ => vec![0; len],
                    };
                    sim.write(disk, offset, &data).expect("seals")
                }
                Op::Zero { disk, at, len } => {
                    let (offset, len) = place(DISKS[disk as usize], at, len, false);
                    sim.write_zeroes(disk, offset, len).expect("seals")
                }
                Op::Discard { disk, at, len } => {
                    let (offset, len) = place(DISKS[disk as usize], at, len, true);
                    sim.discard(disk, offset, len).expect("seals")
                }
                Op::Barrier => {
                    let (m, _) = sim.barrier(PointKind::Manual, seed);
                    points.push((sim.last_seq(), sim.disks().to_vec()));
                    m
                }
                Op::Reopen => {
                    state.log.sync().expect("sync before closing");
                    drop(state);
                    state = open(dir.path());
                    continue;
                }
            };
            feed(&mut state, &message, &keys);
        }
        state.log.sync().expect("sync");
        prop_assert_eq!(state.points().len(), points.len(), "every barrier is a point");
        for (seq, model) in &points {
            let got = rebuild_all(&state, *seq, &keys, dir.path());
            assert_disks_eq(&got, model, &format!("point at seq {seq}"));
        }
        let latest = rebuild_all(&state, state.log.last_seq(), &keys, dir.path());
        assert_disks_eq(&latest, sim.disks(), "latest");
    }
}
