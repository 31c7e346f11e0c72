//! I5, consistent points are consistent: an application issues dependent writes in
//! order across two disks while the agent ships and makes points; every point marked
//! consistent shows a prefix of those writes. With a freezer that holds the writers the
//! points are consistent; with one that does not, writes land during the point's reads
//! and the agent must see them and mark the point inconsistent.

use super::{Rig, Write, lock};
use ferry_wire::message::PointKind;
use proptest::prelude::*;

const DISKS: usize = 2;
const BLOCKS: usize = 10;

#[derive(Debug, Clone)]
enum Op {
    /// `n` of the application's writes land between two steps of the agent.
    Land(usize),
    /// How many writes land before and after each of the agent's reads.
    DuringReads(usize, usize),
    Ship,
    Point,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1..5usize).prop_map(Op::Land),
        2 => (0..3usize, 0..3usize).prop_map(|(b, a)| Op::DuringReads(b, a)),
        3 => Just(Op::Ship),
        2 => Just(Op::Point),
    ]
}

/// The application's writes: write `i` sets a block of disk `i % 2` to `i + 1`, so the
/// disks at any moment tell how far the application got.
fn writes() -> impl Strategy<Value = Vec<Write>> {
    prop::collection::vec(0..BLOCKS, 10..120).prop_map(|blocks| {
        blocks
            .into_iter()
            .enumerate()
            .map(|(i, block)| Write {
                disk: i % DISKS,
                block,
                value: u8::try_from(i + 1).expect("fewer than 255 writes"),
            })
            .collect()
    })
}

/// The disks after each prefix of `landed` (the empty prefix first).
fn prefixes(sizes: &[usize], landed: &[Write]) -> Vec<Vec<Vec<u8>>> {
    let mut disks: Vec<Vec<u8>> = sizes.iter().map(|&n| vec![0; n]).collect();
    let mut out = vec![disks.clone()];
    for w in landed {
        disks[w.disk][w.block * super::BLOCK..][..super::BLOCK].fill(w.value);
        out.push(disks.clone());
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_point_marked_consistent_shows_a_prefix_of_the_writes(
        writes in writes(),
        ops in prop::collection::vec(op(), 1..30),
        freeze_holds in any::<bool>(),
    ) {
        let mut rig = Rig::new(DISKS, BLOCKS);
        lock(&rig.server).freeze_holds = freeze_holds;
        rig.queue(writes);
        let mut points = 0;
        for op in ops {
            match op {
                Op::Land(n) => rig.land(n),
                Op::DuringReads(before, after) => {
                    lock(&rig.server).land_per_read = (before, after);
                }
                Op::Ship => rig.ship_batch(),
                Op::Point => {
                    let status = rig.agent.point(&mut rig.stream, PointKind::Manual);
                    prop_assert!(status.ok, "the point failed: {:?}", status.error);
                    points += 1;
                }
            }
        }
        let received = lock(&rig.received);
        prop_assert_eq!(received.barriers.len(), points);
        let landed = lock(&rig.server).landed.clone();
        let prefixes = prefixes(&rig.sizes, &landed);
        for &(seq, consistent) in &received.barriers {
            if freeze_holds {
                prop_assert!(consistent, "a freeze that holds the writers gave an inconsistent point");
            }
            if consistent {
                let image = received.image(&rig.sizes, seq);
                prop_assert!(
                    prefixes.contains(&image),
                    "the point at seq {} is marked consistent but shows no prefix of the writes",
                    seq.get()
                );
            }
        }
    }
}
