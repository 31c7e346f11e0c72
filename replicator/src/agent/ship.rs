//! Shipping, the I1 core: pick dirty extents with the generation of the moment they were
//! picked, read them, seal them on every core, send them in seq order, and on the ack of
//! seq n clear every extent shipped at seq ≤ n — unless it was marked since it was picked
//! (DESIGN.md I1). An extent shipping is not picked again until acknowledged; one written
//! meanwhile is read again then.

use super::parts::{DirtySource, ExtentReader, Freezer, Uplink};
use super::{Agent, AgentError, disk_id, lock, now_ms};
use crate::catch_up::Method;
use crate::read::{AlignedBuf, ReadReq};
use ferry_tracker_core::dirty::Generation;
use ferry_tracker_core::range::{ByteRange, RangeSet};
use ferry_wire::record::RecordAddress;
use ferry_wire::{ByteOffset, DiskId, Seq};
use std::sync::atomic::Ordering;

/// An extent sent and not yet acknowledged.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pending {
    pub(super) seq: Seq,
    pub(super) disk: DiskId,
    pub(super) range: ByteRange,
    pub(super) picked_at: Generation,
}

/// The connection to the standby while registered, and the next seq to send.
pub(super) struct Stream {
    pub(super) link: Box<dyn Uplink>,
    pub(super) next_seq: Seq,
}

impl<D: DirtySource, R: ExtentReader, F: Freezer> Agent<D, R, F> {
    /// Forgets every extent sent and not acknowledged: still dirty, it is read again.
    /// Digest requests without an answer are asked again.
    pub(super) fn forget_unacked(&mut self) {
        self.pending.clear();
        for s in &mut self.shipping {
            *s = RangeSet::new();
        }
        for c in self.catch_up.iter_mut().flatten() {
            if let Method::Digest(scan) = &mut c.method {
                scan.reset();
            }
        }
    }
    pub(super) fn apply_acks(&mut self, durable: Seq) {
        if self.pending.front().is_none_or(|p| p.seq > durable) {
            return;
        }
        let mut tracker = lock(&self.tracker);
        let state = tracker.state_mut();
        while let Some(p) = self.pending.front().copied() {
            if p.seq > durable {
                break;
            }
            self.pending.pop_front();
            state
                .disk_mut(p.disk)
                .dirty
                .clear_if_unchanged(p.range, p.picked_at);
            self.shipping[p.disk.index()].remove(p.range);
        }
        self.status.acked_seq = durable.get();
        self.status.last_ack_unix_ms = now_ms();
    }
    /// Dirty extents to read next, up to `max_bytes`, each with the generation of now.
    /// Skips writes in flight and, per disk, the ranges in `skip` — by default those
    /// already shipping (read again only once acknowledged, if they changed meanwhile).
    pub(super) fn pick(&mut self, max_bytes: u64, skip: Option<&[RangeSet]>) -> Vec<Pending> {
        let tracker = lock(&self.tracker);
        let state = tracker.state();
        let picked_at = state.generation();
        let mut out = Vec::new();
        let mut total = 0;
        let skip = skip.unwrap_or(&self.shipping);
        for (i, skip) in skip.iter().enumerate() {
            let disk = disk_id(i);
            let in_flight = state.in_flight(disk);
            let mut taken = RangeSet::new();
            while total < max_bytes {
                let Some((range, _)) = state.disk(disk).dirty.next_readable(
                    self.cursor[i],
                    self.config.extent_max,
                    &[&in_flight, skip, &taken],
                ) else {
                    break;
                };
                let range = ByteRange::new(range.start, range.end.min(self.sizes[i]));
                if range.is_empty() {
                    // Grains past the end of the disk (it shrank): nothing to read.
                    break;
                }
                taken.insert(range);
                self.cursor[i] = range.end;
                total += range.len();
                out.push(Pending {
                    seq: Seq::new(0),
                    disk,
                    range,
                    picked_at,
                });
            }
        }
        out
    }
    /// Reads, seals and sends `batch`; records it as pending.
    pub(super) fn ship(
        &mut self,
        stream: &mut Stream,
        batch: Vec<Pending>,
    ) -> Result<(), AgentError> {
        let reqs = self.read_batch(&batch)?;
        self.send_batch(stream, batch, &reqs)
    }
    /// Reads the extents of `batch`.
    pub(super) fn read_batch(&mut self, batch: &[Pending]) -> Result<Vec<ReadReq>, AgentError> {
        let mut reqs: Vec<ReadReq> = batch
            .iter()
            .map(|p| ReadReq {
                disk: p.disk.index(),
                offset: p.range.start,
                buf: AlignedBuf::new(usize::try_from(p.range.len()).expect("≤ extent_max")),
            })
            .collect();
        self.reader.read(&mut reqs)?;
        Ok(reqs)
    }
    /// Seals what `read_batch` read and sends it in order; records it as pending.
    pub(super) fn send_batch(
        &mut self,
        stream: &mut Stream,
        batch: Vec<Pending>,
        reqs: &[ReadReq],
    ) -> Result<(), AgentError> {
        let mut seq = stream.next_seq;
        let mut seqs = Vec::with_capacity(batch.len());
        let items: Vec<(RecordAddress, &[u8])> = batch
            .iter()
            .zip(reqs)
            .map(|(p, r)| {
                seqs.push(seq);
                let addr = RecordAddress {
                    server: self.config.server.clone(),
                    disk: p.disk,
                    offset: ByteOffset::new(p.range.start),
                    seq,
                };
                seq = seq.saturating_next();
                (addr, &r.buf[..])
            })
            .collect();
        self.lease.cover(seq)?;
        let frames = self.pool.seal(&items)?;
        for ((p, frame), seq) in batch.into_iter().zip(frames).zip(seqs) {
            self.limiter.take(frame.len());
            self.shipping[p.disk.index()].insert(p.range);
            self.pending.push_back(Pending { seq, ..p });
            stream.next_seq = seq.saturating_next();
            stream.link.send_frame(Some(seq), frame)?;
            self.status.shipped_bytes += p.range.len();
            self.status.disks[p.disk.index()].shipped_bytes += p.range.len();
            self.status.records_sent += 1;
            self.apply_acks(stream.link.durable());
        }
        Ok(())
    }
    /// Ships dirty extents until the dirty set is empty or `budget` bytes were shipped.
    pub(super) fn drain_dirty(
        &mut self,
        stream: &mut Stream,
        budget: u64,
    ) -> Result<(), AgentError> {
        let mut shipped = 0;
        while shipped < budget && !self.stop.load(Ordering::SeqCst) {
            let batch = self.pick(self.config.batch_bytes, None);
            if batch.is_empty() {
                break;
            }
            shipped += batch.iter().map(|p| p.range.len()).sum::<u64>();
            self.ship(stream, batch)?;
        }
        Ok(())
    }
}
