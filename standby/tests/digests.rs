//! The digest law: for any sequence of writes, zero extents and discards stored through
//! the ingest rules, the standby's digest of a chunk ([`chunk_digests`], from stored grain
//! digests, without any key) is either unknown or equal to the digest of the model disk's
//! bytes computed with the digest key; with grain-aligned records it is always known; and
//! a change the standby never received makes the chunk differ. With a baseline (the
//! original disks of a reverse replication), grains no record covers digest as the
//! baseline's bytes.

mod common;

use common::*;
use ferry_replicator::sim::SimServer;
use ferry_standby::digests::chunk_digests;
use ferry_wire::DiskId;
use ferry_wire::digest::{CHUNK, ChunkDigest, Digester, chunk_digest};
use proptest::prelude::*;

/// Three and a half chunks and one sector: a short last chunk ending inside a grain.
const SIZE: usize = 3 * (1 << 20) + (1 << 19) + 512;

#[derive(Debug, Clone)]
enum Op {
    Write { at: usize, len: usize, seed: u64 },
    Zero { at: usize, len: usize },
    Discard { at: usize, len: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0usize..SIZE, 1usize..300_000, any::<u64>()).prop_map(|(at, len, seed)| Op::Write { at, len, seed }),
        1 => (0usize..SIZE, 1usize..300_000).prop_map(|(at, len)| Op::Zero { at, len }),
        1 => (0usize..SIZE, 1usize..300_000).prop_map(|(at, len)| Op::Discard { at, len }),
    ]
}

/// Where an op lands: grain-aligned (both ends, or up to the disk's end) or anywhere.
fn place(at: usize, len: usize, aligned: bool) -> (usize, usize) {
    let mut at = at.min(SIZE - 1);
    let mut len = len.min(SIZE - at).min(1 << 20);
    if aligned {
        at -= at % 4096;
        len = len.next_multiple_of(4096).min(SIZE - at).min(1 << 20);
    }
    (at, len)
}

fn local_digests(disk: &[u8], digester: &Digester) -> Vec<ChunkDigest> {
    let mut grains = Vec::new();
    disk.chunks(1 << 20)
        .enumerate()
        .map(|(i, chunk)| {
            grains.clear();
            digester.grains(DiskId::new(0), i as u64 * CHUNK, chunk, &mut grains);
            chunk_digest(&grains)
        })
        .collect()
}

fn run(ops: &[Op], aligned: bool, unsent: &[Op]) {
    let keys = keys();
    let digester = Digester::new(&keys.recovery.digest);
    let dir = tempfile::tempdir().unwrap();
    let mut sim = SimServer::new(&keys, &[SIZE]).unwrap();
    let mut state = registered(dir.path(), &sim);
    let disk = sim.registration().disks[0].clone();
    let apply = |sim: &mut SimServer, op: &Op| match *op {
        Op::Write { at, len, seed } => {
            let (at, len) = place(at, len, aligned);
            sim.write(0, at as u64, &noise(len, seed)).unwrap()
        }
        Op::Zero { at, len } => {
            let (at, len) = place(at, len, aligned);
            sim.write_zeroes(0, at as u64, len).unwrap()
        }
        Op::Discard { at, len } => {
            let (at, len) = place(at, len, aligned);
            sim.discard(0, at as u64, len).unwrap()
        }
    };
    for op in ops {
        let message = apply(&mut sim, op);
        feed(&mut state, &message, &keys);
    }
    state.log.sync().unwrap();
    let theirs = chunk_digests(&state.log, &disk, 0, 4, None);
    let ours = local_digests(&sim.disks()[0], &digester);
    assert_eq!(theirs.len(), 4);
    for (i, (t, o)) in theirs.iter().zip(&ours).enumerate() {
        if aligned {
            assert_eq!(
                t.as_ref(),
                Some(o),
                "chunk {i}: grain-aligned records are known"
            );
        } else if let Some(t) = t {
            assert_eq!(t, o, "chunk {i}: a known digest must be the model's");
        }
    }
    // Changes the standby never received: every chunk whose bytes changed differs.
    let before = sim.disks()[0].clone();
    for op in unsent {
        apply(&mut sim, op);
    }
    let after = local_digests(&sim.disks()[0], &digester);
    for (i, chunk) in before.chunks(1 << 20).enumerate() {
        let changed = chunk != &sim.disks()[0][i << 20..(i << 20) + chunk.len()];
        if changed {
            assert_ne!(
                theirs[i].as_ref(),
                Some(&after[i]),
                "chunk {i} changed unseen"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn grain_aligned_records_give_known_digests_equal_to_the_model(
        ops in proptest::collection::vec(op(), 0..24),
        unsent in proptest::collection::vec(op(), 1..4),
    ) {
        run(&ops, true, &unsent);
    }

    #[test]
    fn unaligned_records_give_digests_that_are_unknown_or_equal_to_the_model(
        ops in proptest::collection::vec(op(), 0..24),
        unsent in proptest::collection::vec(op(), 1..4),
    ) {
        run(&ops, false, &unsent);
    }
}

#[test]
fn a_never_written_disk_digests_as_zeroes_and_requests_are_clipped_to_its_end() {
    let keys = keys();
    let dir = tempfile::tempdir().unwrap();
    let sim = SimServer::new(&keys, &[SIZE]).unwrap();
    let state = registered(dir.path(), &sim);
    let disk = sim.registration().disks[0].clone();
    let theirs = chunk_digests(&state.log, &disk, 2, 1000, None);
    let ours = local_digests(&vec![0; SIZE], &Digester::new(&keys.recovery.digest));
    assert_eq!(theirs, vec![Some(ours[2]), Some(ours[3])]);
}

#[test]
fn with_a_baseline_unwritten_grains_digest_as_the_baseline_disk_and_records_lie_over_it() {
    use ferry_standby::digests::Baseline;
    let keys = keys();
    let digester = Digester::new(&keys.recovery.digest);
    let dir = tempfile::tempdir().unwrap();
    let mut sim = SimServer::new(&keys, &[SIZE]).unwrap();
    let mut state = registered(dir.path(), &sim);
    let disk = sim.registration().disks[0].clone();
    // The original disk: data everywhere. Records then change some grains of it.
    let original = noise(SIZE, 7);
    let path = dir.path().join("original.img");
    std::fs::write(&path, &original).unwrap();
    let mut expected = original.clone();
    let writes: [(usize, Vec<u8>); 3] = [
        (3 * 4096, noise(8192, 1)),
        ((1 << 20) + 65536, vec![0; 4096]),
        ((2 << 20) + 4096, noise(4096 * 5, 2)),
    ];
    for (at, data) in &writes {
        let message = if data.iter().all(|b| *b == 0) {
            sim.write_zeroes(0, *at as u64, data.len()).unwrap()
        } else {
            sim.write(0, *at as u64, data).unwrap()
        };
        feed(&mut state, &message, &keys);
        expected[*at..*at + data.len()].copy_from_slice(data);
    }
    state.log.sync().unwrap();
    let baseline = Baseline::open(std::slice::from_ref(&path), &keys.recovery.digest).unwrap();
    baseline.check(&disk).unwrap();
    let theirs = chunk_digests(&state.log, &disk, 0, 4, Some(&baseline));
    let ours = local_digests(&expected, &digester);
    for (i, (t, o)) in theirs.iter().zip(&ours).enumerate() {
        assert_eq!(
            t.as_ref(),
            Some(o),
            "chunk {i}: baseline with records over it"
        );
    }
    // Without the baseline the unwritten grains would read as zeroes: every chunk differs.
    let plain = chunk_digests(&state.log, &disk, 0, 4, None);
    assert!(plain.iter().zip(&ours).all(|(p, o)| p.as_ref() != Some(o)));
    // A baseline that is not what the agent has (a grain changed) differs in that chunk.
    let mut changed = original;
    changed[3 << 20] ^= 1;
    std::fs::write(&path, &changed).unwrap();
    let baseline = Baseline::open(&[path], &keys.recovery.digest).unwrap();
    let theirs = chunk_digests(&state.log, &disk, 0, 4, Some(&baseline));
    assert_eq!(theirs[..3], plain_known(&ours[..3]));
    assert_ne!(theirs[3].as_ref(), Some(&ours[3]));
}

fn plain_known(digests: &[ChunkDigest]) -> Vec<Option<ChunkDigest>> {
    digests.iter().copied().map(Some).collect()
}
