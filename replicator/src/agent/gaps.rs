//! Catch-ups after tracking gaps (DESIGN.md I3): a full copy when the standby holds
//! nothing of the server, else a compare chunk by chunk by keyed digest that marks dirty
//! only the chunks that differ. A gap closes once every grain marked by its catch-up has
//! been acknowledged ([`crate::catch_up`] holds the scan's own state).

use super::parts::{DirtySource, ExtentReader, Freezer};
use super::ship::Stream;
use super::{Agent, AgentError, disk_id, lock};
use crate::catch_up::{CatchUp, Method, Scan};
use crate::read::{AlignedBuf, ReadReq};
use crate::status::CatchUpReport;
use ferry_tracker_core::dirty::GRAIN;
use ferry_tracker_core::range::ByteRange;
use ferry_wire::Message;
use ferry_wire::digest::{CHUNK, ChunkDigest, chunk_digest};
use ferry_wire::message::DigestRequest;
use std::time::Instant;

impl<D: DirtySource, R: ExtentReader, F: Freezer> Agent<D, R, F> {
    /// Starts a catch-up for every disk with a tracking gap (once per gap): a digest
    /// compare if the standby holds data of the server, else a full copy.
    pub(super) fn start_catch_ups(&mut self) {
        let mut tracker = lock(&self.tracker);
        for i in 0..self.sizes.len() {
            let disk = disk_id(i);
            let Some(gap) = tracker.gap(disk).cloned() else {
                continue;
            };
            let gap_count = tracker.gap_count(disk);
            if self.catch_up[i]
                .as_ref()
                .is_some_and(|c| c.gap_count == gap_count)
            {
                continue;
            }
            // A new gap (or one recorded while an earlier catch-up ran): from the start.
            let size = self.sizes[i];
            let (method, marked_at) = if self.standby_has_data {
                (Method::Digest(Scan::new(size, self.digest_requests)), None)
            } else {
                let state = tracker.state_mut();
                state.mark_dirty(disk, ByteRange::new(0, size.next_multiple_of(GRAIN)));
                (Method::Full, Some(state.generation()))
            };
            tracing::info!(disk = %self.registration.disks[i].name, reason = %gap.0, method = method.name(), bytes = size, "catching up the disk after a tracking gap");
            self.status.disks[i].catch_up = Some(method.name().to_owned());
            self.catch_up[i] = Some(CatchUp {
                gap_count,
                reason: gap.0,
                method,
                started: Instant::now(),
                shipped_at_start: self.status.disks[i].shipped_bytes,
                marked_at,
            });
            self.cursor[i] = 0;
            self.status.catch_ups += 1;
        }
    }
    /// Advances digest compares: marks the chunks the standby's answers show different,
    /// then reads the next chunks of one disk and asks about them.
    pub(super) fn digest_step(&mut self, stream: &mut Stream) -> Result<(), AgentError> {
        for reply in stream.link.take_digests() {
            let i = reply.disk.index();
            let Some(Some(CatchUp {
                method: Method::Digest(scan),
                ..
            })) = self.catch_up.get_mut(i)
            else {
                return Err(AgentError::Protocol(format!(
                    "it answered digests of disk {}, which is not being compared",
                    reply.disk.get()
                )));
            };
            let Some(differ) = scan.answer(&reply).map_err(AgentError::Protocol)? else {
                // An answer to a scan a newer gap replaced.
                continue;
            };
            let mut tracker = lock(&self.tracker);
            for r in differ {
                let r = ByteRange::new(r.start, r.end.next_multiple_of(GRAIN));
                tracker.state_mut().mark_dirty(reply.disk, r);
            }
        }
        for i in 0..self.sizes.len() {
            let Some(CatchUp {
                method: Method::Digest(scan),
                ..
            }) = &self.catch_up[i]
            else {
                continue;
            };
            let Some((first, count)) = scan.next_request(self.config.batch_bytes / CHUNK) else {
                continue;
            };
            let local = self.local_digests(i, first, count)?;
            self.digest_requests += 1;
            let request = self.digest_requests;
            stream.link.send(&Message::DigestRequest(DigestRequest {
                request,
                disk: disk_id(i),
                first_chunk: first,
                count,
            }))?;
            if let Some(CatchUp {
                method: Method::Digest(scan),
                ..
            }) = &mut self.catch_up[i]
            {
                scan.sent(request, first, local);
            }
            // One request per turn, so that shipping goes on alongside.
            break;
        }
        for i in 0..self.sizes.len() {
            if let Some(c) = &mut self.catch_up[i]
                && let Method::Digest(scan) = &c.method
                && scan.done()
                && c.marked_at.is_none()
            {
                c.marked_at = Some(lock(&self.tracker).state().generation());
                tracing::info!(disk = %self.registration.disks[i].name, compared = scan.compared, differing = scan.differing, "digest compare done; shipping what differs");
            }
        }
        Ok(())
    }
    /// Reads chunks `first..first + count` of disk `i` and digests them.
    pub(super) fn local_digests(
        &mut self,
        i: usize,
        first: u64,
        count: u32,
    ) -> Result<Vec<ChunkDigest>, AgentError> {
        let size = self.sizes[i];
        let mut reqs: Vec<ReadReq> = (first..first + u64::from(count))
            .map(|c| {
                let start = c * CHUNK;
                let len = (start + CHUNK).min(size) - start;
                ReadReq {
                    disk: i,
                    offset: start,
                    buf: AlignedBuf::new(usize::try_from(len).expect("≤ 1 MiB")),
                }
            })
            .collect();
        self.reader.read(&mut reqs)?;
        let mut grains = Vec::new();
        Ok(reqs
            .iter()
            .map(|r| {
                grains.clear();
                self.digester
                    .grains(disk_id(i), r.offset, &r.buf, &mut grains);
                chunk_digest(&grains)
            })
            .collect())
    }
    /// Starts catch-ups for new gaps, updates their progress, and closes the gaps of
    /// disks whose catch-up is acknowledged whole.
    pub(super) fn check_catch_ups(&mut self) {
        if self.catch_up.iter().all(Option::is_none) {
            let gaps = {
                let t = lock(&self.tracker);
                (0..self.sizes.len()).any(|i| t.gap(disk_id(i)).is_some())
            };
            if !gaps {
                return;
            }
        }
        self.start_catch_ups();
        let mut tracker = lock(&self.tracker);
        for i in 0..self.sizes.len() {
            let Some(c) = &self.catch_up[i] else { continue };
            let (disk, size) = (disk_id(i), self.sizes[i]);
            let d = &mut self.status.disks[i];
            d.full_total = size;
            let Some(marked_at) = c.marked_at else {
                if let Method::Digest(scan) = &c.method {
                    d.full_done = scan.compared.min(size);
                }
                continue;
            };
            let left = tracker
                .state()
                .disk(disk)
                .dirty
                .bytes_not_newer_than(marked_at);
            d.full_done = size.saturating_sub(left);
            if left == 0 && tracker.close_gap(disk, c.gap_count) {
                let (compared, differing) = match &c.method {
                    Method::Full => (0, size),
                    Method::Digest(scan) => (scan.compared, scan.differing),
                };
                let report = CatchUpReport {
                    method: c.method.name().to_owned(),
                    reason: c.reason.clone(),
                    compared_bytes: compared,
                    differing_bytes: differing,
                    shipped_bytes: d.shipped_bytes - c.shipped_at_start,
                    millis: u64::try_from(c.started.elapsed().as_millis()).unwrap_or(u64::MAX),
                };
                tracing::info!(disk = %d.name, method = %report.method, reason = %report.reason, compared = report.compared_bytes, differing = report.differing_bytes, shipped = report.shipped_bytes, millis = report.millis, "catch-up acknowledged; the disk is in real time");
                d.catch_up = None;
                d.last_catch_up = Some(report);
                self.catch_up[i] = None;
            }
        }
    }
}
