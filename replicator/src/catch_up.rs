//! Catching up a disk after a tracking gap (DESIGN.md I3): the tracker cannot say what
//! changed while it was blind, so something must find out.
//!
//! - **Full copy**, when the standby holds nothing of the server yet: every grain is
//!   marked dirty and the normal pipeline ships the disk.
//! - **Digest compare**, when it does (an agent killed or a host rebooted, drops beyond
//!   the fallback): the disk is read locally chunk by chunk, each chunk's digest
//!   ([`ferry_wire::digest`]) is compared with the digest of the standby's latest durable
//!   state, and only chunks that differ (or that the standby cannot vouch for) are marked
//!   dirty. The standby never sees data or the digest key.
//!
//! Why a chunk reported equal is safe to leave, while replication goes on: the standby
//! answers from every record sent before the request, once durable; the agent sends the
//! request right after reading the chunk, in the same thread that sends records, so every
//! record read before the chunk is included; and everything written after the gap is
//! tracked, so a later change re-dirties the chunk anyway. A chunk that differs is
//! marked at the generation of the moment its answer arrives, and the gap closes only
//! once every grain marked up to the end of the scan is acknowledged.

use ferry_tracker_core::dirty::Generation;
use ferry_tracker_core::range::ByteRange;
use ferry_wire::digest::{CHUNK, ChunkDigest};
use ferry_wire::message::Digests;
use std::collections::VecDeque;
use std::time::Instant;

/// Most digest requests in flight per disk.
const MAX_AWAITING: usize = 4;

/// How a gap is caught up.
#[derive(Debug, Clone)]
pub(crate) enum Method {
    Full,
    Digest(Scan),
}

impl Method {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Method::Full => "full copy",
            Method::Digest(_) => "digest compare",
        }
    }
}

/// One disk's catch-up, for the gap the tracker counted as its `gap_count`th.
#[derive(Debug, Clone)]
pub(crate) struct CatchUp {
    pub(crate) gap_count: u64,
    pub(crate) reason: String,
    pub(crate) method: Method,
    pub(crate) started: Instant,
    /// The disk's shipped bytes when it started (what it shipped is the difference).
    pub(crate) shipped_at_start: u64,
    /// Set once everything to ship is marked: the gap closes when nothing dirty at or
    /// before this generation is left.
    pub(crate) marked_at: Option<Generation>,
}

/// A digest compare in progress over chunks `0..chunks` of a disk of `size` bytes.
#[derive(Debug, Clone)]
pub(crate) struct Scan {
    size: u64,
    /// The agent's last request id when the scan started: answers up to it belong to
    /// an older scan.
    after_request: u64,
    chunks: u64,
    /// The next chunk to read and ask about.
    next_chunk: u64,
    /// Requests sent, in order: request id, first chunk and the local digests.
    awaiting: VecDeque<(u64, u64, Vec<ChunkDigest>)>,
    /// Bytes compared so far, and bytes found different.
    pub(crate) compared: u64,
    pub(crate) differing: u64,
}

impl Scan {
    pub(crate) fn new(size: u64, after_request: u64) -> Self {
        Self {
            size,
            after_request,
            chunks: size.div_ceil(CHUNK),
            next_chunk: 0,
            awaiting: VecDeque::new(),
            compared: 0,
            differing: 0,
        }
    }

    /// The next chunks to read and ask about, at most `max` (none while enough requests
    /// are in flight or all were asked).
    pub(crate) fn next_request(&self, max: u64) -> Option<(u64, u32)> {
        if self.next_chunk >= self.chunks || self.awaiting.len() >= MAX_AWAITING {
            return None;
        }
        let count = (self.chunks - self.next_chunk).min(max.max(1));
        Some((self.next_chunk, u32::try_from(count).unwrap_or(u32::MAX)))
    }

    /// Request `request` for the chunks from `first` was sent, with the local digests.
    /// Request ids grow: a newer scan's are larger than an older one's.
    pub(crate) fn sent(&mut self, request: u64, first: u64, local: Vec<ChunkDigest>) {
        self.next_chunk = first + local.len() as u64;
        self.awaiting.push_back((request, first, local));
    }

    /// Compares an answer with the local digests of the oldest request and returns the
    /// byte ranges that differ; `None` for an answer to a request older than this scan's
    /// (made by a scan that a newer gap replaced: ignored). Any other answer that is not
    /// for the oldest request is a protocol error.
    pub(crate) fn answer(&mut self, reply: &Digests) -> Result<Option<Vec<ByteRange>>, String> {
        if reply.request <= self.after_request {
            return Ok(None);
        }
        let Some((request, first, local)) = self.awaiting.pop_front() else {
            return Err(format!(
                "the standby answered digest request {} that was not made",
                reply.request
            ));
        };
        if reply.request != request
            || reply.first_chunk != first
            || reply.chunks.len() != local.len()
        {
            return Err(format!(
                "the standby answered request {} for chunks {}..+{} where request {request} \
                 for {first}..+{} was expected",
                reply.request,
                reply.first_chunk,
                reply.chunks.len(),
                local.len()
            ));
        }
        let mut differ: Vec<ByteRange> = Vec::new();
        for (i, (theirs, ours)) in reply.chunks.iter().zip(&local).enumerate() {
            let start = (first + i as u64) * CHUNK;
            let range = ByteRange::new(start, (start + CHUNK).min(self.size));
            self.compared += range.len();
            if theirs.as_ref() == Some(ours) {
                continue;
            }
            self.differing += range.len();
            match differ.last_mut() {
                Some(last) if last.end == range.start => last.end = range.end,
                _ => differ.push(range),
            }
        }
        Ok(Some(differ))
    }

    /// The link was lost: requests without an answer are asked again.
    pub(crate) fn reset(&mut self) {
        if let Some(&(_, first, _)) = self.awaiting.front() {
            self.next_chunk = first;
        }
        self.awaiting.clear();
    }

    /// Every chunk compared.
    pub(crate) fn done(&self) -> bool {
        self.next_chunk >= self.chunks && self.awaiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_wire::DiskId;

    fn reply(request: u64, first: u64, chunks: Vec<Option<ChunkDigest>>) -> Digests {
        Digests {
            request,
            disk: DiskId::new(0),
            first_chunk: first,
            chunks,
        }
    }

    #[test]
    fn only_chunks_that_differ_or_are_unknown_are_returned_and_neighbours_merge() {
        // 3.5 chunks: the last one is short.
        let size = 3 * CHUNK + CHUNK / 2;
        let mut scan = Scan::new(size, 0);
        assert_eq!(scan.next_request(2), Some((0, 2)));
        scan.sent(1, 0, vec![[1; 32], [2; 32]]);
        assert_eq!(scan.next_request(8), Some((2, 2)));
        scan.sent(2, 2, vec![[3; 32], [4; 32]]);
        assert_eq!(scan.next_request(8), None, "all chunks asked");
        let differ = scan
            .answer(&reply(1, 0, vec![Some([1; 32]), Some([9; 32])]))
            .unwrap()
            .unwrap();
        assert_eq!(differ, vec![ByteRange::new(CHUNK, 2 * CHUNK)]);
        let differ = scan
            .answer(&reply(2, 2, vec![None, Some([5; 32])]))
            .unwrap()
            .unwrap();
        assert_eq!(differ, vec![ByteRange::new(2 * CHUNK, size)]);
        assert!(scan.done());
        assert_eq!(scan.compared, size);
        assert_eq!(scan.differing, size - CHUNK);
    }

    #[test]
    fn answers_out_of_turn_are_refused_a_replaced_scans_are_ignored_and_a_reset_asks_again() {
        let mut scan = Scan::new(8 * CHUNK, 0);
        scan.sent(1, 0, vec![[1; 32]; 4]);
        scan.sent(2, 4, vec![[1; 32]; 2]);
        assert!(
            scan.answer(&reply(2, 4, vec![None, None])).is_err(),
            "out of turn"
        );
        let mut scan = Scan::new(8 * CHUNK, 0);
        scan.sent(1, 0, vec![[1; 32]; 4]);
        assert!(
            scan.answer(&reply(1, 0, vec![None; 3])).is_err(),
            "short answer"
        );
        // A newer gap replaced the scan that made requests 1 and 2: their answers, even
        // for the same chunks, are not taken as the new scan's.
        let mut scan = Scan::new(8 * CHUNK, 2);
        scan.sent(3, 0, vec![[1; 32]; 4]);
        assert_eq!(scan.answer(&reply(1, 0, vec![Some([1; 32]); 4])), Ok(None));
        assert!(!scan.done());
        assert_eq!(
            scan.answer(&reply(3, 0, vec![Some([1; 32]); 4])),
            Ok(Some(vec![]))
        );
        let mut scan = Scan::new(8 * CHUNK, 0);
        scan.sent(1, 0, vec![[1; 32]; 4]);
        scan.sent(2, 4, vec![[1; 32]; 2]);
        scan.answer(&reply(1, 0, vec![Some([1; 32]); 4])).unwrap();
        scan.reset();
        assert_eq!(
            scan.next_request(8),
            Some((4, 4)),
            "unanswered chunks again"
        );
        assert!(!scan.done());
    }
}
