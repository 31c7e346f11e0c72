//! Segment files: the standby's append-only log of one server is a sequence of segments,
//! each holding the frames exactly as the agent sent them (so every record keeps the
//! agent's CRC and MAC end to end).
//!
//! ```text
//!  segment file NNNNNNNNNNNNNNNNNNNN.seg (N = segment number, 20 decimal digits)
//!  +---------------------------+---------+---------+-----+---------+
//!  | segment header (48 bytes) | frame 1 | frame 2 | ... | frame k |
//!  +---------------------------+---------+---------+-----+---------+
//!
//!  segment header, integers little-endian:
//!  0   8  magic "FERRYSEG"
//!  8   2  version = 5 (4: frames of protocol 5; 3: frames of protocol 4; 2: no end-to-end seals; 1: no watermark)
//!  10  6  reserved = 0
//!  16  8  segment number (must match the file name)
//!  24  4  reserved = 0
//!  28  4  crc32 (IEEE) of bytes 0..28
//!  32  8  durable watermark: a length of this segment an fsync had covered when it was
//!         written (0 at creation); rewritten in place before each group commit
//!  40  4  crc32 (IEEE) of bytes 32..40
//!  44  4  reserved = 0
//! ```
//!
//! Each frame is a `ferry_wire::frame` frame — magic, version, type, length, crc32 over
//! header and body — of type `Record` or `Barrier`; nothing else is ever stored. Its
//! length is bounded by `ferry_wire::MAX_FRAME_BODY`, checked from the 16-byte frame
//! header before anything else is read.
//!
//! A segment is written by appending only; it is *rolled* (fsynced, given a sidecar index
//! — see [`crate::index`] — and never written again) once it passes the configured size.
//! Log cleaning may delete a sealed segment after copying its live frames forward.
//!
//! Recovery ([`scan`]): a frame that does not check out at or past the watermark is a
//! *torn tail*: no fsync had covered it, so a power loss may have left anything there —
//! zeroes, a partial frame, or garbage with whole frames after it (the kernel writes pages
//! back in any order) — and nothing there was acknowledged before the last group commit.
//! The log truncates it and reports it. A frame that does not check out below the
//! watermark is *corruption*: an error naming the segment and the offset, never skipped.
//! When the watermark itself does not check out (a torn header write), a damaged frame is
//! a torn tail only when nothing whole follows it (it runs past the end of the file, is
//! the last frame, or only zero bytes follow).
//!
//! The watermark lags one group commit (it is written before the fsync that makes it
//! durable, and names what the previous fsync covered), so damage inside the last
//! commit's bytes — bit rot, not a crash: those bytes were fsynced — is reported as a
//! torn tail rather than as corruption.

use crate::index::{Entry, EntryKind, SegmentNo, SegmentPos};
use crate::storage::LogFile;
use ferry_wire::frame::{FRAME_HEADER_LEN, FrameHeader};
use ferry_wire::{Message, Seq, error_chain};
use std::io;
use std::path::{Path, PathBuf};

/// Length of the segment header.
pub const SEGMENT_HEADER_LEN: u64 = HEADER_BYTES as u64;
const HEADER_BYTES: usize = 48;
/// Where the durable watermark (8 bytes, crc32, reserved) sits in the header.
pub const WATERMARK_AT: u64 = 32;
const MAGIC: &[u8; 8] = b"FERRYSEG";
/// Version 5: frames of protocol version 6 (bodies in `ferry_wire::body`'s layout).
/// Version 4: frames of protocol version 5 (a record's tags cover its payload's hash).
/// Segments of earlier versions are refused by this header, before any frame in them is
/// read.
const VERSION: u16 = 5;

/// The header of segment `segment`.
pub fn encode_header(segment: SegmentNo) -> [u8; HEADER_BYTES] {
    let mut h = [0u8; HEADER_BYTES];
    h[0..8].copy_from_slice(MAGIC);
    h[8..10].copy_from_slice(&VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&segment.0.to_le_bytes());
    let crc = crc32fast::hash(&h[..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h[32..48].copy_from_slice(&encode_watermark(0));
    h
}

/// The 16 watermark bytes written at [`WATERMARK_AT`]: `len` bytes of the segment are on
/// stable storage.
pub fn encode_watermark(len: u64) -> [u8; 16] {
    let mut w = [0u8; 16];
    w[0..8].copy_from_slice(&len.to_le_bytes());
    let crc = crc32fast::hash(&w[0..8]);
    w[8..12].copy_from_slice(&crc.to_le_bytes());
    w
}

/// The watermark of a header, or `None` when it does not check out (a torn write).
fn parse_watermark(h: &[u8]) -> Option<u64> {
    let w = &h[32..48];
    let crc = u32::from_le_bytes(w[8..12].try_into().expect("4 bytes"));
    (crc32fast::hash(&w[0..8]) == crc && w[12..16] == [0; 4])
        .then(|| u64::from_le_bytes(w[0..8].try_into().expect("8 bytes")))
}

fn check_header(h: &[u8], segment: SegmentNo) -> Result<(), String> {
    if &h[0..8] != MAGIC {
        return Err(format!("bad segment magic {:02x?}", &h[0..8]));
    }
    let version = u16::from_le_bytes([h[8], h[9]]);
    if version != VERSION {
        return Err(format!(
            "unsupported segment version {version} (this build reads {VERSION})"
        ));
    }
    let crc = u32::from_le_bytes(h[28..32].try_into().expect("4 bytes"));
    if crc32fast::hash(&h[..28]) != crc || h[10..16] != [0; 6] || h[24..28] != [0; 4] {
        return Err("segment header crc32 mismatch".into());
    }
    let found = u64::from_le_bytes(h[16..24].try_into().expect("8 bytes"));
    if found != segment.0 {
        return Err(format!(
            "segment header names segment {found}, the file name {}",
            segment.0
        ));
    }
    Ok(())
}

/// A frame that does not check out in the middle of a segment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("segment {} is corrupt at offset {offset}: {reason}", path.display())]
pub struct Corruption {
    pub path: PathBuf,
    pub offset: u64,
    pub reason: String,
}

/// Why a segment could not be scanned.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("cannot read segment {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Corrupt(#[from] Corruption),
}

/// The unusable end of a segment, found by [`scan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// Where the first unusable byte is (the segment is valid up to here).
    pub offset: u64,
    /// How many bytes follow it.
    pub len: u64,
    pub reason: String,
}

/// What a scan found: the entries of every whole frame, and the tail after them.
#[derive(Debug)]
pub struct Scan {
    pub entries: Vec<Entry>,
    /// Bytes of whole frames (and header) from the start of the file.
    pub valid_len: u64,
    pub torn: Option<TornTail>,
}

/// The index entry for a stored message, or `None` for a message that is never stored.
pub fn entry_of(
    message: &Message,
    segment: SegmentNo,
    position: SegmentPos,
    frame_len: u32,
) -> Option<Entry> {
    let (seq, what) = match message {
        Message::Record(r) => (
            r.header.seq,
            EntryKind::Record {
                kind: r.header.kind,
                disk: r.header.disk,
                offset: r.header.offset,
                length: r.header.length,
            },
        ),
        Message::Barrier(b) => (
            b.seq,
            EntryKind::Barrier {
                point: b.point,
                kind: b.kind,
                consistent: b.consistent,
                unix_time_ms: b.unix_time_ms,
            },
        ),
        _ => return None,
    };
    Some(Entry {
        seq,
        segment,
        position,
        frame_len,
        what,
    })
}

/// Reads and checks one frame at `position` of a segment: CRC, decoding, and that it is
/// a stored kind. Used by rebuild and cleaning, which then compare it with the index.
pub fn read_frame(
    file: &dyn LogFile,
    path: &Path,
    position: SegmentPos,
    frame_len: u32,
    buf: &mut Vec<u8>,
) -> Result<Message, ScanError> {
    let corrupt = |reason: String| Corruption {
        path: path.to_owned(),
        offset: position.0,
        reason,
    };
    buf.resize(frame_len as usize, 0);
    file.read_exact_at(buf, position.0)
        .map_err(|source| match source.kind() {
            io::ErrorKind::UnexpectedEof => ScanError::Corrupt(corrupt(format!(
                "the segment ends inside a {frame_len}-byte frame"
            ))),
            _ => ScanError::Io {
                path: path.to_owned(),
                source,
            },
        })?;
    let head = buf
        .first_chunk::<FRAME_HEADER_LEN>()
        .ok_or_else(|| corrupt(format!("a {frame_len}-byte frame is too short")))?;
    let header = FrameHeader::parse(head).map_err(|e| corrupt(e.to_string()))?;
    if header.body_len() + FRAME_HEADER_LEN != buf.len() {
        return Err(corrupt(format!(
            "frame header says {} body bytes; the index says {}",
            header.body_len(),
            buf.len() - FRAME_HEADER_LEN
        ))
        .into());
    }
    let message = header
        .decode_body(&buf[FRAME_HEADER_LEN..])
        .map_err(|e| corrupt(error_chain(&e)))?;
    Ok(message)
}

/// A forward reader over a [`LogFile`] with a large buffer.
struct ChunkReader<'a> {
    file: &'a dyn LogFile,
    len: u64,
    buf: Vec<u8>,
    /// File position of `buf[0]`.
    start: u64,
}

const CHUNK: usize = 8 << 20;

impl ChunkReader<'_> {
    /// The `n` bytes at `pos` (the caller checked that they are inside the file).
    fn bytes(&mut self, pos: u64, n: usize) -> io::Result<&[u8]> {
        let have = pos >= self.start && pos + n as u64 <= self.start + self.buf.len() as u64;
        if !have {
            let want = (n.max(CHUNK) as u64).min(self.len - pos);
            self.buf
                .resize(usize::try_from(want).expect("≤ CHUNK or a frame"), 0);
            self.file.read_exact_at(&mut self.buf, pos)?;
            self.start = pos;
        }
        let at = usize::try_from(pos - self.start).expect("inside the buffer");
        Ok(&self.buf[at..at + n])
    }

    fn all_zero_from(&mut self, mut pos: u64) -> io::Result<bool> {
        while pos < self.len {
            let n = usize::try_from((self.len - pos).min(CHUNK as u64)).expect("≤ CHUNK");
            if self.bytes(pos, n)?.iter().any(|&b| b != 0) {
                return Ok(false);
            }
            pos += n as u64;
        }
        Ok(true)
    }
}

/// Reads a whole segment, checking every frame. See the module doc for what counts as a
/// torn tail and what as corruption. A segment shorter than its header is all tail.
pub fn scan(file: &dyn LogFile, path: &Path, segment: SegmentNo) -> Result<Scan, ScanError> {
    let io_err = |source| ScanError::Io {
        path: path.to_owned(),
        source,
    };
    let corrupt = |offset, reason| Corruption {
        path: path.to_owned(),
        offset,
        reason,
    };
    let len = file.size().map_err(io_err)?;
    let mut reader = ChunkReader {
        file,
        len,
        buf: Vec::new(),
        start: 0,
    };
    if len < SEGMENT_HEADER_LEN {
        return Ok(Scan {
            entries: Vec::new(),
            valid_len: 0,
            torn: Some(TornTail {
                offset: 0,
                len,
                reason: "the segment ends inside its header".into(),
            }),
        });
    }
    let header = reader.bytes(0, HEADER_BYTES).map_err(io_err)?;
    check_header(header, segment).map_err(|reason| corrupt(0, reason))?;
    let watermark = parse_watermark(header);
    // Whether a frame that does not check out at `pos` (ending at `end`) is a torn tail.
    let is_tail = |reader: &mut ChunkReader<'_>, pos: u64, end: u64| match watermark {
        Some(durable) => Ok(pos >= durable),
        None => Ok(end >= len || reader.all_zero_from(end)?),
    };

    let mut entries = Vec::new();
    let mut pos = SEGMENT_HEADER_LEN;
    let torn = |pos: u64, reason: String| TornTail {
        offset: pos,
        len: len - pos,
        reason,
    };
    // A file that ends inside a frame: torn, unless an fsync had covered the frame.
    let cut_short = |pos: u64, reason: String| match watermark {
        Some(durable) if pos < durable => Err(ScanError::Corrupt(corrupt(
            pos,
            format!("{reason}, below the durable watermark {durable}"),
        ))),
        _ => Ok(torn(pos, reason)),
    };
    while pos < len {
        if len - pos < FRAME_HEADER_LEN as u64 {
            let t = cut_short(pos, "the segment ends inside a frame header".into())?;
            return Ok(Scan {
                entries,
                valid_len: pos,
                torn: Some(t),
            });
        }
        let head: [u8; FRAME_HEADER_LEN] = reader
            .bytes(pos, FRAME_HEADER_LEN)
            .map_err(io_err)?
            .try_into()
            .expect("16 bytes");
        let header = match FrameHeader::parse(&head) {
            Ok(h) => h,
            Err(e) => {
                if is_tail(&mut reader, pos, pos).map_err(io_err)? {
                    let what = if reader.all_zero_from(pos).map_err(io_err)? {
                        "zero bytes where a frame should start".into()
                    } else {
                        format!("no frame where one should start: {e}")
                    };
                    let t = torn(pos, what);
                    return Ok(Scan {
                        entries,
                        valid_len: pos,
                        torn: Some(t),
                    });
                }
                return Err(corrupt(pos, e.to_string()).into());
            }
        };
        let frame_len = (FRAME_HEADER_LEN + header.body_len()) as u64;
        let end = pos + frame_len;
        if end > len {
            let t = cut_short(
                pos,
                format!("the segment ends inside a {frame_len}-byte frame"),
            )?;
            return Ok(Scan {
                entries,
                valid_len: pos,
                torn: Some(t),
            });
        }
        let body = reader
            .bytes(pos + FRAME_HEADER_LEN as u64, header.body_len())
            .map_err(io_err)?;
        let decoded = header.decode_body(body);
        let message = match decoded {
            Ok(m) => m,
            Err(e) => {
                if is_tail(&mut reader, pos, end).map_err(io_err)? {
                    let t = torn(pos, format!("damaged frame: {}", error_chain(&e)));
                    return Ok(Scan {
                        entries,
                        valid_len: pos,
                        torn: Some(t),
                    });
                }
                return Err(corrupt(pos, error_chain(&e)).into());
            }
        };
        let frame_len = u32::try_from(frame_len).expect("bounded by MAX_FRAME_BODY");
        let entry = entry_of(&message, segment, SegmentPos(pos), frame_len).ok_or_else(|| {
            corrupt(
                pos,
                format!(
                    "a {:?} frame does not belong in a log",
                    message.frame_type()
                ),
            )
        })?;
        entries.push(entry);
        pos = end;
    }
    Ok(Scan {
        entries,
        valid_len: pos,
        torn: None,
    })
}

/// The highest seq among `entries`, or `Seq(0)` for none.
pub fn max_seq(entries: &[Entry]) -> Seq {
    entries.iter().map(|e| e.seq).max().unwrap_or(Seq::new(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_of_an_earlier_version_is_refused_naming_both_versions() {
        let segment = SegmentNo(7);
        assert_eq!(check_header(&encode_header(segment), segment), Ok(()));
        let mut old = encode_header(segment);
        old[8..10].copy_from_slice(&4u16.to_le_bytes());
        let crc = crc32fast::hash(&old[..28]);
        old[28..32].copy_from_slice(&crc.to_le_bytes());
        let refused = check_header(&old, segment).expect_err("a version 4 segment");
        assert!(
            refused.contains("version 4") && refused.contains(&format!("reads {VERSION}")),
            "{refused}"
        );
    }
}
