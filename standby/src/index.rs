//! The index: for every record and barrier in a server's log, where it is and what it
//! covers — (disk, byte range) → (seq, segment, position) — so that rebuild, retention
//! and the point catalogue never have to read payloads to find their way.
//!
//! The index is derived data: [`crate::segment::scan`] rebuilds it from a segment alone.
//! It is persisted per *sealed* segment as a sidecar file `NNNNNNNNNNNNNNNNNNNN.idx` next
//! to `NNNNNNNNNNNNNNNNNNNN.seg`, written when the segment is rolled, so opening a large
//! store reads only the small sidecars and scans only the active segment. A sidecar that
//! is missing, damaged, or describes a different length than its segment's is ignored and
//! rewritten from a scan.
//!
//! Sidecar layout (all integers little-endian):
//!
//! ```text
//!  offset      size   field
//!  0           8      magic "FERRYIDX"
//!  8           2      version = 1
//!  10          2      reserved = 0
//!  12          4      n: number of entries
//!  16          8      segment number
//!  24          8      segment length the entries describe (must equal the .seg length)
//!  32          48·n   entries (below)
//!  32+48·n     4      crc32 (IEEE) of every byte before it
//! ```
//!
//! Entry (48 bytes):
//!
//! ```text
//!  0   8  seq
//!  8   8  position of the frame in the segment
//!  16  4  frame length (header + body)
//!  20  1  what: 0 data, 1 zero, 2 discard (records), 3 barrier
//!  21  1  barrier: point kind (0 scheduled, 1 manual); records: 0
//!  22  1  barrier: consistent (0/1); records: 0
//!  23  1  reserved = 0
//!  24  4  records: disk; barriers: 0
//!  28  4  reserved = 0
//!  32  8  records: byte offset in the disk; barriers: point id
//!  40  8  records: length in bytes;         barriers: unix time in ms
//! ```
//!
//! Bounds: a sidecar is at most [`MAX_SIDECAR_LEN`] bytes, and its length must be exactly
//! `36 + 48·n`; every entry's frame must lie inside the segment length it states and be at
//! most one frame header plus `ferry_wire::MAX_FRAME_BODY` long (rebuild allocates that).

use ferry_wire::message::PointKind;
use ferry_wire::{ByteLen, ByteOffset, DiskId, PointId, RecordKind, Seq};
use std::fmt;

/// A segment's number: segments are numbered 1, 2, … in the order they are created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SegmentNo(pub u64);

impl SegmentNo {
    /// The segment file's name.
    pub fn file_name(self) -> String {
        format!("{:020}.seg", self.0)
    }

    /// The sidecar index file's name.
    pub fn index_name(self) -> String {
        format!("{:020}.idx", self.0)
    }

    /// The segment number a `.seg` file name encodes, if it is one.
    pub fn parse_file_name(name: &str) -> Option<Self> {
        let digits = name.strip_suffix(".seg")?;
        if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok().map(SegmentNo)
    }
}

impl fmt::Display for SegmentNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file_name())
    }
}

/// A byte position inside a segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SegmentPos(pub u64);

/// What an entry's frame holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Record {
        kind: RecordKind,
        disk: DiskId,
        offset: ByteOffset,
        length: ByteLen,
    },
    Barrier {
        point: PointId,
        kind: PointKind,
        consistent: bool,
        unix_time_ms: u64,
    },
}

/// One frame of the log, located.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub seq: Seq,
    pub segment: SegmentNo,
    pub position: SegmentPos,
    pub frame_len: u32,
    pub what: EntryKind,
}

impl Entry {
    /// The byte range `[start, end)` of a disk that a record entry covers.
    pub fn disk_range(&self) -> Option<(DiskId, u64, u64)> {
        match self.what {
            EntryKind::Record {
                disk,
                offset,
                length,
                ..
            } => Some((
                disk,
                offset.get(),
                offset.get().saturating_add(length.get()),
            )),
            EntryKind::Barrier { .. } => None,
        }
    }
}

const MAGIC: &[u8; 8] = b"FERRYIDX";
const VERSION: u16 = 1;
const HEAD_LEN: usize = 32;
const ENTRY_LEN: usize = 48;
/// Longest frame an entry may describe: a frame header and the largest body.
const MAX_FRAME_LEN: u32 = 16 + ferry_wire::MAX_FRAME_BODY;
const _: () = assert!(
    ferry_wire::FRAME_HEADER_LEN == 16,
    "frame header length changed"
);
/// Longest sidecar read: enough for a 4 GiB segment of the smallest frames.
pub const MAX_SIDECAR_LEN: u64 = 64 << 20;

/// Why a sidecar was not usable (it is then rebuilt from its segment, never trusted).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SidecarError {
    #[error("sidecar is {len} bytes; its header needs {expected}")]
    BadLength { len: usize, expected: usize },
    #[error("sidecar has bad magic or version")]
    BadMagic,
    #[error("sidecar crc32 mismatch")]
    BadCrc,
    #[error("sidecar describes segment {found}, not {expected}")]
    WrongSegment { found: u64, expected: u64 },
    #[error("sidecar entry {index} is malformed")]
    BadEntry { index: usize },
}

/// Encodes the sidecar for `segment` of `segment_len` bytes holding `entries`.
pub fn encode_sidecar(segment: SegmentNo, segment_len: u64, entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEAD_LEN + ENTRY_LEN * entries.len() + 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    let n = u32::try_from(entries.len()).expect("a segment holds fewer than 2^32 frames");
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&segment.0.to_le_bytes());
    out.extend_from_slice(&segment_len.to_le_bytes());
    for e in entries {
        let mut b = [0u8; ENTRY_LEN];
        b[0..8].copy_from_slice(&e.seq.get().to_le_bytes());
        b[8..16].copy_from_slice(&e.position.0.to_le_bytes());
        b[16..20].copy_from_slice(&e.frame_len.to_le_bytes());
        let (a, c) = match e.what {
            EntryKind::Record {
                kind,
                disk,
                offset,
                length,
            } => {
                b[20] = match kind {
                    RecordKind::Data => 0,
                    RecordKind::Zero => 1,
                    RecordKind::Discard => 2,
                };
                b[24..28].copy_from_slice(&disk.get().to_le_bytes());
                (offset.get(), length.get())
            }
            EntryKind::Barrier {
                point,
                kind,
                consistent,
                unix_time_ms,
            } => {
                b[20] = 3;
                b[21] = match kind {
                    PointKind::Scheduled => 0,
                    PointKind::Manual => 1,
                };
                b[22] = u8::from(consistent);
                (point.get(), unix_time_ms)
            }
        };
        b[32..40].copy_from_slice(&a.to_le_bytes());
        b[40..48].copy_from_slice(&c.to_le_bytes());
        out.extend_from_slice(&b);
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Decodes a sidecar, checking it against the segment it should describe. Returns the
/// segment length it covers and its entries.
pub fn decode_sidecar(bytes: &[u8], segment: SegmentNo) -> Result<(u64, Vec<Entry>), SidecarError> {
    if bytes.len() < HEAD_LEN + 4 {
        return Err(SidecarError::BadLength {
            len: bytes.len(),
            expected: HEAD_LEN + 4,
        });
    }
    if &bytes[0..8] != MAGIC || bytes[8..10] != VERSION.to_le_bytes() || bytes[10..12] != [0, 0] {
        return Err(SidecarError::BadMagic);
    }
    let n = u32_at(bytes, 12) as usize;
    let expected = n
        .checked_mul(ENTRY_LEN)
        .and_then(|x| x.checked_add(HEAD_LEN + 4));
    if expected != Some(bytes.len()) {
        return Err(SidecarError::BadLength {
            len: bytes.len(),
            expected: expected.unwrap_or(usize::MAX),
        });
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32fast::hash(body) != u32_at(crc, 0) {
        return Err(SidecarError::BadCrc);
    }
    let found = u64_at(bytes, 16);
    if found != segment.0 {
        return Err(SidecarError::WrongSegment {
            found,
            expected: segment.0,
        });
    }
    let segment_len = u64_at(bytes, 24);
    let mut entries = Vec::with_capacity(n);
    for (index, b) in body[HEAD_LEN..].chunks_exact(ENTRY_LEN).enumerate() {
        let bad = || SidecarError::BadEntry { index };
        let position = u64_at(b, 8);
        let frame_len = u32_at(b, 16);
        if frame_len > MAX_FRAME_LEN
            || position
                .checked_add(u64::from(frame_len))
                .is_none_or(|end| end > segment_len)
            || b[23] != 0
            || b[28..32] != [0; 4]
        {
            return Err(bad());
        }
        let (a, c) = (u64_at(b, 32), u64_at(b, 40));
        let record = |kind| EntryKind::Record {
            kind,
            disk: DiskId::new(u32_at(b, 24)),
            offset: ByteOffset::new(a),
            length: ByteLen::new(c),
        };
        let what = match b[20] {
            0 => record(RecordKind::Data),
            1 => record(RecordKind::Zero),
            2 => record(RecordKind::Discard),
            3 => EntryKind::Barrier {
                point: PointId::new(a),
                kind: match b[21] {
                    0 => PointKind::Scheduled,
                    1 => PointKind::Manual,
                    _ => return Err(bad()),
                },
                consistent: match b[22] {
                    0 => false,
                    1 => true,
                    _ => return Err(bad()),
                },
                unix_time_ms: c,
            },
            _ => return Err(bad()),
        };
        entries.push(Entry {
            seq: Seq::new(u64_at(b, 0)),
            segment,
            position: SegmentPos(position),
            frame_len,
            what,
        });
    }
    Ok((segment_len, entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Entry> {
        vec![
            Entry {
                seq: Seq::new(7),
                segment: SegmentNo(3),
                position: SegmentPos(32),
                frame_len: 100,
                what: EntryKind::Record {
                    kind: RecordKind::Zero,
                    disk: DiskId::new(2),
                    offset: ByteOffset::new(4096),
                    length: ByteLen::new(8192),
                },
            },
            Entry {
                seq: Seq::new(8),
                segment: SegmentNo(3),
                position: SegmentPos(132),
                frame_len: 60,
                what: EntryKind::Barrier {
                    point: PointId::new(5),
                    kind: PointKind::Manual,
                    consistent: true,
                    unix_time_ms: 1_700_000_000_000,
                },
            },
        ]
    }

    #[test]
    fn sidecar_round_trips() {
        let bytes = encode_sidecar(SegmentNo(3), 192, &sample());
        let (len, entries) = decode_sidecar(&bytes, SegmentNo(3)).expect("sidecar decodes");
        assert_eq!(len, 192);
        assert_eq!(entries, sample(), "entries changed on the round trip");
    }

    #[test]
    fn damaged_sidecars_are_refused() {
        let bytes = encode_sidecar(SegmentNo(3), 192, &sample());
        assert_eq!(
            decode_sidecar(&bytes, SegmentNo(4)).unwrap_err(),
            SidecarError::WrongSegment {
                found: 3,
                expected: 4
            }
        );
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(
                decode_sidecar(&bad, SegmentNo(3)).is_err(),
                "a flipped bit at byte {i} went unnoticed"
            );
        }
        assert!(decode_sidecar(&bytes[..bytes.len() - 1], SegmentNo(3)).is_err());
        // An entry pointing past the segment is refused even with a good CRC.
        let short = encode_sidecar(SegmentNo(3), 150, &sample());
        assert_eq!(
            decode_sidecar(&short, SegmentNo(3)).unwrap_err(),
            SidecarError::BadEntry { index: 1 }
        );
    }

    #[test]
    fn segment_names_round_trip() {
        let n = SegmentNo(42);
        assert_eq!(SegmentNo::parse_file_name(&n.file_name()), Some(n));
        assert_eq!(SegmentNo::parse_file_name("42.seg"), None);
        assert_eq!(SegmentNo::parse_file_name(&n.index_name()), None);
    }
}
