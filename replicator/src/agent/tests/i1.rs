//! I1, no silent loss: after any interleaving of writes (between the agent's steps and
//! during its reads), shipping, acks and reconnects, every block where the standby's
//! durable image differs from the disk is still dirty; and once everything is shipped
//! and acknowledged, the image equals the disk.

use super::{BLOCK, Rig, Write, lock};
use crate::agent::disk_id;
use ferry_tracker_core::range::ByteRange;
use ferry_wire::Seq;
use proptest::prelude::*;

const DISKS: usize = 2;
const BLOCKS: usize = 12;

#[derive(Debug, Clone)]
enum Op {
    /// A write lands between two steps of the agent.
    Write(Write),
    /// Writes queued to land while the agent reads (`before`, `after` each read).
    DuringReads(Vec<Write>, usize, usize),
    Ship,
    /// The standby acknowledges all it was sent but the last `n` records.
    Ack(u64),
    /// The connection drops: the standby keeps what it acknowledged, the agent
    /// forgets what it sent since, and connects again.
    Reconnect,
}

fn write() -> impl Strategy<Value = Write> {
    (0..DISKS, 0..BLOCKS, 1..=255u8).prop_map(|(disk, block, value)| Write { disk, block, value })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => write().prop_map(Op::Write),
        2 => (prop::collection::vec(write(), 1..6), 0..3usize, 0..3usize)
            .prop_map(|(w, b, a)| Op::DuringReads(w, b, a)),
        4 => Just(Op::Ship),
        2 => (0..4u64).prop_map(Op::Ack),
        1 => Just(Op::Reconnect),
    ]
}

impl Rig {
    fn reconnect(&mut self) {
        let durable = {
            let mut r = lock(&self.received);
            let durable = r.durable;
            r.records.retain(|(seq, ..)| *seq <= durable);
            r.sent = durable;
            durable
        };
        // What `connect` does with the standby's Welcome.
        self.agent.apply_acks(durable);
        self.agent.forget_unacked();
        self.stream.next_seq = Seq::new(durable.get() + 1);
    }

    /// I1 at this moment: a block whose durable copy at the standby is not what the
    /// disk holds is dirty.
    fn assert_differences_are_dirty(&self) -> Result<(), TestCaseError> {
        let durable = lock(&self.received).durable;
        let image = lock(&self.received).image(&self.sizes, durable);
        let disks = self.disks();
        let tracker = lock(&self.agent.tracker);
        for (d, (disk, copy)) in disks.iter().zip(&image).enumerate() {
            let dirty = &tracker.state.disk(disk_id(d)).dirty;
            for b in 0..BLOCKS {
                let block = b * BLOCK..(b + 1) * BLOCK;
                if disk[block.clone()] != copy[block] {
                    let r = ByteRange::new((b * BLOCK) as u64, ((b + 1) * BLOCK) as u64);
                    let is_dirty = dirty
                        .iter()
                        .any(|(d, _)| d.start <= r.start && r.end <= d.end);
                    prop_assert!(
                        is_dirty,
                        "disk {d} block {b} differs at the standby (durable seq {}) but is clean",
                        durable.get()
                    );
                }
            }
        }
        Ok(())
    }

    /// Lets every write land, then ships and acknowledges until nothing is left.
    fn drain(&mut self) {
        lock(&self.server).land_per_read = (0, 0);
        self.land(usize::MAX);
        for _ in 0..1000 {
            self.ship_batch();
            let sent = lock(&self.received).sent.get();
            self.ack(sent);
            let durable = self.stream.link.durable();
            self.agent.apply_acks(durable);
            let clean = {
                let t = lock(&self.agent.tracker);
                (0..DISKS).all(|d| t.state.disk(disk_id(d)).dirty.is_empty())
            };
            if clean && self.agent.pending.is_empty() {
                return;
            }
        }
        panic!("the dirty set never drained");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn a_change_leaves_the_dirty_map_only_once_durable_at_the_standby(
        ops in prop::collection::vec(op(), 1..40)
    ) {
        let mut rig = Rig::new(DISKS, BLOCKS);
        for op in ops {
            match op {
                Op::Write(w) => {
                    rig.queue([w]);
                    rig.land(1);
                }
                Op::DuringReads(writes, before, after) => {
                    lock(&rig.server).land_per_read = (before, after);
                    rig.queue(writes);
                }
                Op::Ship => rig.ship_batch(),
                Op::Ack(n) => {
                    let sent = lock(&rig.received).sent.get();
                    rig.ack(sent.saturating_sub(n));
                    let durable = rig.stream.link.durable();
                    rig.agent.apply_acks(durable);
                }
                Op::Reconnect => rig.reconnect(),
            }
            rig.assert_differences_are_dirty()?;
        }
        rig.drain();
        let durable = lock(&rig.received).durable;
        let image = lock(&rig.received).image(&rig.sizes, durable);
        prop_assert!(image == rig.disks(), "the standby's copy differs after a full drain");
    }
}
