//! The events the BPF programs log (per CPU), as userspace reads them.
//!
//! One COMPLETE per write (per part, for a split one). Submissions are not logged: they
//! are read from the programs' in-flight table on every poll
//! (`ferry_tracker::sys::bpf::InFlightEntry`); a SUBMIT event comes only for a write that table
//! could not follow (untracked).
//!
//! Layout (`struct ferry_event` in `ebpf/tracker.bpf.c`; native endian, 32 bytes):
//!
//! ```text
//!  0   u64 id        submission id (a split bio's parts share their parent's)
//!  8   u64 sector    first 512-byte sector, whole-disk relative
//!  16  u32 sectors   length in sectors (> 0)
//!  20  u32 disk      the disk's index, as userspace registered it
//!  24  u8  kind      1 submit (untracked only), 2 complete
//!  25  u8  op        1 write, 3 discard, 5 secure erase, 9 write-zeroes
//!  26  u8  status    completion: blk_status_t (0 = success)
//!  27  u8  flags     bit 0: untracked (not followed; no completion will be logged)
//!  28  u32 pad
//! ```
//!
//! The programs read no clock (a tenth of their cost): userspace dates an event by when
//! it read it, which is what the sweep needs.

use crate::range::ByteRange;
use ferry_wire::DiskId;

/// Size of one event record.
pub const EVENT_LEN: usize = 32;

/// Bytes per sector, as the block layer counts.
pub const SECTOR: u64 = 512;

/// What the kernel was asked to do to the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Write,
    Discard,
    SecureErase,
    WriteZeroes,
}

impl Op {
    fn from_byte(b: u8) -> Option<Op> {
        Some(match b {
            1 => Op::Write,
            3 => Op::Discard,
            5 => Op::SecureErase,
            9 => Op::WriteZeroes,
            _ => return None,
        })
    }

    /// The name `ferry track --json` prints.
    pub fn name(self) -> &'static str {
        match self {
            Op::Write => "write",
            Op::Discard => "discard",
            Op::SecureErase => "secure-erase",
            Op::WriteZeroes => "write-zeroes",
        }
    }
}

/// Submission or completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The range is about to change: dirty from now on, not readable yet.
    Submit { untracked: bool },
    /// The change is on the device (or failed with `status`): readable.
    Complete { status: u8 },
}

/// One decoded event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    pub id: u64,
    pub disk: DiskId,
    pub range: ByteRange,
    pub op: Op,
    pub kind: Kind,
    /// When userspace read it (CLOCK_MONOTONIC ns).
    pub seen_ns: u64,
}

/// Why a log record was not an event (a BPF/userspace version mismatch).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("event record of {0} bytes (expected {EVENT_LEN})")]
    Length(usize),
    #[error("event of unknown kind {0}")]
    Kind(u8),
    #[error("event of unknown op {0}")]
    Op(u8),
    #[error("event range at sector {sector} + {sectors} overflows")]
    Range { sector: u64, sectors: u32 },
}

/// The bytes of `sectors` sectors from `sector`, or `None` if that overflows (a record
/// that cannot be a real write).
pub fn sector_range(sector: u64, sectors: u32) -> Option<ByteRange> {
    let start = sector.checked_mul(SECTOR)?;
    let end = start.checked_add(u64::from(sectors) * SECTOR)?;
    Some(ByteRange::new(start, end))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

impl Event {
    /// Decodes one log record's event, read at `seen_ns`.
    pub fn parse(b: &[u8], seen_ns: u64) -> Result<Event, EventError> {
        if b.len() != EVENT_LEN {
            return Err(EventError::Length(b.len()));
        }
        let (sector, sectors) = (u64_at(b, 8), u32_at(b, 16));
        let range = sector_range(sector, sectors).ok_or(EventError::Range { sector, sectors })?;
        let flags = b[27];
        let kind = match b[24] {
            1 => Kind::Submit {
                untracked: flags & 1 != 0,
            },
            2 => Kind::Complete { status: b[26] },
            k => return Err(EventError::Kind(k)),
        };
        Ok(Event {
            id: u64_at(b, 0),
            disk: DiskId::new(u32_at(b, 20)),
            range,
            op: Op::from_byte(b[25]).ok_or(EventError::Op(b[25]))?,
            kind,
            seen_ns,
        })
    }
}

#[cfg(test)]
pub(crate) fn encode(e: &Event) -> [u8; EVENT_LEN] {
    let mut b = [0u8; EVENT_LEN];
    b[0..8].copy_from_slice(&e.id.to_ne_bytes());
    b[8..16].copy_from_slice(&(e.range.start / SECTOR).to_ne_bytes());
    let sectors = u32::try_from(e.range.len() / SECTOR).expect("test ranges are small");
    b[16..20].copy_from_slice(&sectors.to_ne_bytes());
    b[20..24].copy_from_slice(&e.disk.get().to_ne_bytes());
    b[25] = match e.op {
        Op::Write => 1,
        Op::Discard => 3,
        Op::SecureErase => 5,
        Op::WriteZeroes => 9,
    };
    match e.kind {
        Kind::Submit { untracked } => {
            b[24] = 1;
            b[27] = u8::from(untracked);
        }
        Kind::Complete { status } => {
            b[24] = 2;
            b[26] = status;
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_and_garbage_is_refused() {
        let e = Event {
            id: 7,
            disk: DiskId::new(2),
            range: ByteRange::new(4096, 4096 + 8 * 512),
            op: Op::WriteZeroes,
            kind: Kind::Submit { untracked: true },
            seen_ns: 99,
        };
        assert_eq!(Event::parse(&encode(&e), 99).unwrap(), e);
        let mut b = encode(&e);
        b[24] = 7;
        assert_eq!(Event::parse(&b, 0), Err(EventError::Kind(7)));
        b[24] = 1;
        b[25] = 2;
        assert_eq!(Event::parse(&b, 0), Err(EventError::Op(2)));
        assert_eq!(Event::parse(&b[..31], 0), Err(EventError::Length(31)));
        b[25] = 1;
        b[8..16].copy_from_slice(&u64::MAX.to_ne_bytes());
        assert!(matches!(Event::parse(&b, 0), Err(EventError::Range { .. })));
    }
}
