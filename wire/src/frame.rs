//! Framing: how one [`Message`] travels on the link (and how it is stored in the
//! standby's log).
//!
//! ```text
//!  0        4          6        7        8            12           16
//!  +--------+----------+--------+--------+------------+------------+----------------+
//!  | magic  | version  | type   | flags  | body_len   | crc32      | body           |
//!  | "FERY" | u16 LE   | u8     | u8 = 0 | u32 LE     | u32 LE     | body_len bytes |
//!  +--------+----------+--------+--------+------------+------------+----------------+
//! ```
//!
//! - `version` is [`PROTOCOL_VERSION`]; any other is refused, naming both versions.
//! - `type` names the message ([`FrameType`]); the body is that message in the layout
//!   [`crate::body`] draws.
//! - `crc32` (IEEE, crc32fast) covers header bytes 0..12 and the body.
//! - `body_len` is at most [`MAX_FRAME_BODY`]; a larger value is refused from the
//!   16-byte header alone, before any body buffer is allocated; no length inside a body
//!   is trusted beyond the bytes that remain of it ([`crate::body`]).
//!
//! A reader of a stream reads [`FRAME_HEADER_LEN`] bytes, calls [`FrameHeader::parse`],
//! reads `body_len` more bytes and calls [`FrameHeader::decode_body`]. [`decode`] does
//! both for a buffer that holds exactly one frame.

use crate::body::{BodyError, LayoutError};
use crate::digest::GrainDigest;
use crate::message::MessageError;
use crate::message::*;
use crate::record::{MAX_DATA_EXTENT, RecordHeader};

/// The four bytes every frame starts with.
pub const MAGIC: [u8; 4] = *b"FERY";

/// Length of the fixed frame header.
pub const FRAME_HEADER_LEN: usize = 16;

/// Largest body a frame may carry: one data extent plus room for its header and MAC.
pub const MAX_FRAME_BODY: u32 = (1 << 20) + 64 * 1024;
const _: () = assert!(
    MAX_DATA_EXTENT + 4096 < MAX_FRAME_BODY as usize,
    "a data extent must fit a frame"
);

/// The message type byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameType {
    Hello = 1,
    Challenge = 2,
    Authenticate = 3,
    Welcome = 4,
    RegisterServer = 5,
    Record = 6,
    Barrier = 7,
    Ack = 8,
    Heartbeat = 9,
    Error = 10,
    DigestRequest = 11,
    Digests = 12,
    Progress = 13,
    PointRequest = 14,
    PointResult = 15,
}

impl FrameType {
    fn from_byte(b: u8) -> Option<Self> {
        use FrameType::*;
        Some(match b {
            1 => Hello,
            2 => Challenge,
            3 => Authenticate,
            4 => Welcome,
            5 => RegisterServer,
            6 => Record,
            7 => Barrier,
            8 => Ack,
            9 => Heartbeat,
            10 => Error,
            11 => DigestRequest,
            12 => Digests,
            13 => Progress,
            14 => PointRequest,
            15 => PointResult,
            _ => return None,
        })
    }
}

/// Why bytes are not a valid frame. Every variant names what was wrong. All are permanent
/// for the stream that produced them (the reader is out of step or the peer is faulty):
/// the connection is dropped, never the bytes retried.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error(
        "bad frame magic {found:02x?} (expected {MAGIC:02x?}): not a ferry peer, or the stream is out of step"
    )]
    BadMagic { found: [u8; 4] },
    #[error("unsupported protocol version {found} (this peer speaks version {PROTOCOL_VERSION})")]
    UnsupportedVersion { found: u16 },
    #[error("unknown frame type {found}")]
    UnknownType { found: u8 },
    #[error("frame flags {found:#04x} are not zero")]
    BadFlags { found: u8 },
    #[error("frame body of {len} bytes is over the {MAX_FRAME_BODY}-byte cap")]
    BodyTooLong { len: u64 },
    #[error("frame crc32 mismatch: header says {expected:#010x}, content gives {computed:#010x}")]
    CrcMismatch { expected: u32, computed: u32 },
    #[error("frame truncated: {needed} bytes needed, {available} available")]
    Truncated { needed: usize, available: usize },
    #[error("{count} trailing bytes after the frame")]
    TrailingBytes { count: usize },
    #[error("{frame_type:?} frame body does not decode")]
    Body {
        frame_type: FrameType,
        #[source]
        source: BodyError,
    },
    #[error("{frame_type:?} frame holds an invalid message")]
    Invalid {
        frame_type: FrameType,
        #[source]
        source: MessageError,
    },
    #[error("frame body is {available} bytes; its header says {declared}")]
    BodyLenMismatch { declared: usize, available: usize },
    #[error("message cannot be encoded")]
    Encode(#[source] LayoutError),
}

/// A parsed and checked frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    frame_type: FrameType,
    body_len: u32,
    crc: u32,
}

impl FrameHeader {
    pub fn frame_type(&self) -> FrameType {
        self.frame_type
    }

    /// Body length, already checked against [`MAX_FRAME_BODY`].
    pub fn body_len(&self) -> usize {
        self.body_len as usize
    }

    /// Parses and checks the fixed header. Refuses a body length over the cap.
    pub fn parse(bytes: &[u8; FRAME_HEADER_LEN]) -> Result<Self, FrameError> {
        let found: [u8; 4] = bytes[0..4].try_into().expect("4 bytes");
        if found != MAGIC {
            return Err(FrameError::BadMagic { found });
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        if version != PROTOCOL_VERSION {
            return Err(FrameError::UnsupportedVersion { found: version });
        }
        let frame_type =
            FrameType::from_byte(bytes[6]).ok_or(FrameError::UnknownType { found: bytes[6] })?;
        if bytes[7] != 0 {
            return Err(FrameError::BadFlags { found: bytes[7] });
        }
        let body_len = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if body_len > MAX_FRAME_BODY {
            return Err(FrameError::BodyTooLong {
                len: u64::from(body_len),
            });
        }
        let crc = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
        Ok(Self {
            frame_type,
            body_len,
            crc,
        })
    }

    fn prefix(frame_type: FrameType, body_len: u32) -> [u8; 12] {
        let mut p = [0u8; 12];
        p[0..4].copy_from_slice(&MAGIC);
        p[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        p[6] = frame_type as u8;
        p[7] = 0;
        p[8..12].copy_from_slice(&body_len.to_le_bytes());
        p
    }

    /// Checks the CRC and decodes `body` (exactly `body_len` bytes) into a message.
    pub fn decode_body(&self, body: &[u8]) -> Result<Message, FrameError> {
        if body.len() != self.body_len() {
            return Err(FrameError::BodyLenMismatch {
                declared: self.body_len(),
                available: body.len(),
            });
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(&Self::prefix(self.frame_type, self.body_len));
        crc.update(body);
        let computed = crc.finalize();
        if computed != self.crc {
            return Err(FrameError::CrcMismatch {
                expected: self.crc,
                computed,
            });
        }
        let t = self.frame_type;
        let message = crate::body::decode(t, body).map_err(|source| FrameError::Body {
            frame_type: t,
            source,
        })?;
        message.check().map_err(|source| FrameError::Invalid {
            frame_type: t,
            source,
        })?;
        Ok(message)
    }
}

impl FrameHeader {
    /// Decodes the header and grain digests of a record frame from the first bytes of its
    /// body, without reading (or CRC-checking) the rest: what digest catch-up needs from
    /// a stored record. Unchecked bytes can only make a digest differ — the caller
    /// compares the header with its index and treats a mismatch as "unknown".
    pub fn decode_record_head(
        &self,
        body_prefix: &[u8],
    ) -> Result<(RecordHeader, Vec<GrainDigest>), FrameError> {
        if self.frame_type != FrameType::Record {
            return Err(FrameError::Invalid {
                frame_type: self.frame_type,
                source: MessageError::NotARecord,
            });
        }
        let prefix = &body_prefix[..body_prefix.len().min(self.body_len())];
        let head = crate::body::decode_record_head(prefix).map_err(|source| FrameError::Body {
            frame_type: self.frame_type,
            source,
        })?;
        Ok(head)
    }
}

impl Message {
    /// The frame type this message travels as.
    pub fn frame_type(&self) -> FrameType {
        match self {
            Message::Hello(_) => FrameType::Hello,
            Message::Challenge(_) => FrameType::Challenge,
            Message::Authenticate(_) => FrameType::Authenticate,
            Message::Welcome(_) => FrameType::Welcome,
            Message::RegisterServer(_) => FrameType::RegisterServer,
            Message::Record(_) => FrameType::Record,
            Message::Barrier(_) => FrameType::Barrier,
            Message::Ack(_) => FrameType::Ack,
            Message::Heartbeat(_) => FrameType::Heartbeat,
            Message::Error(_) => FrameType::Error,
            Message::DigestRequest(_) => FrameType::DigestRequest,
            Message::Digests(_) => FrameType::Digests,
            Message::Progress(_) => FrameType::Progress,
            Message::PointRequest(_) => FrameType::PointRequest,
            Message::PointResult(_) => FrameType::PointResult,
        }
    }

    /// Appends this message's frame to `out`. Refuses a message a peer would refuse
    /// ([`Message::check`]) and a body over [`MAX_FRAME_BODY`]; `out` is then unchanged.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        self.check().map_err(|source| FrameError::Invalid {
            frame_type: self.frame_type(),
            source,
        })?;
        let start = out.len();
        out.extend_from_slice(&[0u8; FRAME_HEADER_LEN]);
        let body = crate::body::encode(self, out).map_err(FrameError::Encode);
        if let Err(e) = body {
            out.truncate(start);
            return Err(e);
        }
        let body_len = out.len() - start - FRAME_HEADER_LEN;
        let body_len = match u32::try_from(body_len) {
            Ok(n) if n <= MAX_FRAME_BODY => n,
            _ => {
                out.truncate(start);
                return Err(FrameError::BodyTooLong {
                    len: body_len as u64,
                });
            }
        };
        let prefix = FrameHeader::prefix(self.frame_type(), body_len);
        let mut crc = crc32fast::Hasher::new();
        crc.update(&prefix);
        crc.update(&out[start + FRAME_HEADER_LEN..]);
        out[start..start + 12].copy_from_slice(&prefix);
        out[start + 12..start + 16].copy_from_slice(&crc.finalize().to_le_bytes());
        Ok(())
    }

    /// This message as one frame.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::new();
        self.encode_into(&mut out)?;
        Ok(out)
    }
}

/// Decodes a buffer holding exactly one frame.
pub fn decode(buf: &[u8]) -> Result<Message, FrameError> {
    let Some(head) = buf.first_chunk::<FRAME_HEADER_LEN>() else {
        return Err(FrameError::Truncated {
            needed: FRAME_HEADER_LEN,
            available: buf.len(),
        });
    };
    let header = FrameHeader::parse(head)?;
    let rest = &buf[FRAME_HEADER_LEN..];
    let body_len = header.body_len as usize;
    if rest.len() < body_len {
        return Err(FrameError::Truncated {
            needed: FRAME_HEADER_LEN + body_len,
            available: buf.len(),
        });
    }
    if rest.len() > body_len {
        return Err(FrameError::TrailingBytes {
            count: rest.len() - body_len,
        });
    }
    header.decode_body(rest)
}

/// Why [`read_frame`] could not produce a message.
#[derive(Debug, thiserror::Error)]
pub enum ReadFrameError {
    #[error("reading a frame failed")]
    Io(#[source] std::io::Error),
    #[error("the stream ended inside a frame ({got} of {needed} bytes)")]
    EndInsideFrame { got: usize, needed: usize },
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Reads one frame from a byte stream the caller supplies (a socket, a file), checks and
/// decodes it, and leaves the frame's bytes, exactly as read, in `buf` (so a receiver can
/// store what it verified). `Ok(None)` means the stream ended cleanly before a new frame.
///
/// This does no I/O of its own: it only pulls bytes from `reader`. The body buffer is
/// sized from the header only after [`FrameHeader::parse`] has bounded it.
pub fn read_frame(
    reader: &mut impl std::io::Read,
    buf: &mut Vec<u8>,
) -> Result<Option<Message>, ReadFrameError> {
    buf.clear();
    buf.resize(FRAME_HEADER_LEN, 0);
    let got = fill(reader, &mut buf[..])?;
    if got == 0 {
        return Ok(None);
    }
    if got < FRAME_HEADER_LEN {
        return Err(ReadFrameError::EndInsideFrame {
            got,
            needed: FRAME_HEADER_LEN,
        });
    }
    let head: &[u8; FRAME_HEADER_LEN] = buf[..].try_into().expect("header length");
    let header = FrameHeader::parse(head)?;
    let needed = FRAME_HEADER_LEN + header.body_len();
    buf.resize(needed, 0);
    let got = fill(reader, &mut buf[FRAME_HEADER_LEN..])?;
    if got < header.body_len() {
        return Err(ReadFrameError::EndInsideFrame {
            got: FRAME_HEADER_LEN + got,
            needed,
        });
    }
    Ok(Some(header.decode_body(&buf[FRAME_HEADER_LEN..])?))
}

/// Reads until `buf` is full or the stream ends; returns how many bytes were read.
fn fill(reader: &mut impl std::io::Read, buf: &mut [u8]) -> Result<usize, ReadFrameError> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadFrameError::Io(e)),
        }
    }
    Ok(got)
}
