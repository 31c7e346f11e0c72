//! A record: one extent of one disk at one sequence number, as the standby stores it.
//!
//! The header is plaintext so that the standby can index, retain and clean its log
//! without the data key (DESIGN.md I6). The payload is the extent's bytes, maybe
//! compressed, then encrypted; two tags bind header and payload together: the *seal*
//! (end to end, under the server's seal key, which the standby does not hold) and the
//! *MAC* (ingest, under the server's ingest MAC key, which the standby checks).
//!
//! Authenticated header layout (the bytes the tags cover, before the payload's hash); all
//! integers little-endian:
//!
//! ```text
//!  offset  size  field
//!  0       8     domain tag  "FRYREC04"
//!  8       1     kind          0 data, 1 zero, 2 discard
//!  9       1     compression   0 none, 1 zstd
//!  10      4     disk
//!  14      8     offset        byte offset in the whole disk
//!  22      8     length        bytes of disk the record covers (plaintext length)
//!  30      8     seq
//!  38      16    iv            AES-256-CTR initial counter block (zero when no payload)
//!  54      4     payload length  stored bytes that follow the header
//!  58      1     n             length of the server name (1..=60)
//!  59      n     server name   ASCII
//! ```
//!
//! seal = BLAKE3-keyed(seal key, header bytes above ‖ grain digests ‖ BLAKE3(payload))
//! MAC  = BLAKE3-keyed(ingest MAC key, header bytes ‖ grain digests ‖ BLAKE3(payload) ‖ seal)
//!
//! The payload is hashed once, whole (BLAKE3 then hashes all its chunks on its SIMD
//! paths), and both tags cover its hash.
//!
//! (Version 03 fed the payload itself to each tag, after the header; version 02 had one HMAC-SHA256 under a key the
//! standby held. Their records are refused by the frame version.)
//!
//! A data record carries, in plaintext, one 16-byte digest per grain it overlaps
//! ([`crate::digest`]): keyed with a key the standby does not hold, they let digest
//! catch-up compare the standby's latest state with the source. Zero and discard records
//! carry none.
//!
//! Bounds: a data record covers 1 to [`MAX_DATA_EXTENT`] bytes; stored raw, its payload
//! is exactly that long; compressed, it is shorter and not empty (sealing stores raw bytes
//! when zstd does not shrink them). Zero and discard records carry no payload, no
//! compression and an all-zero IV, and may cover any range that does not run past
//! `u64::MAX`. [`RecordHeader::check`] enforces this on every decoded record.

use crate::digest::{GrainDigest, grains_overlapped};
use crate::ids::{ByteLen, ByteOffset, DiskId, MAX_NAME_LEN, Seq, ServerId};

/// Longest extent a data record may carry, in bytes.
pub const MAX_DATA_EXTENT: usize = 1 << 20;

/// Length of a record's seal and of its MAC (keyed BLAKE3).
pub const MAC_LEN: usize = 32;

/// Length of the AES-CTR IV.
pub const IV_LEN: usize = 16;

const DOMAIN_TAG: &[u8; 8] = b"FRYREC04";
const MAC_INPUT_FIXED: usize = 59;
/// Upper bound on [`RecordHeader::mac_input`]'s length.
pub const MAC_INPUT_MAX: usize = MAC_INPUT_FIXED + MAX_NAME_LEN;

/// What a record says about the range it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// The range holds the (sealed) payload.
    Data,
    /// The range is all zeroes (no payload).
    Zero,
    /// The range was discarded (no payload; reads back as zeroes on a rebuilt disk).
    Discard,
}

/// How a data record's payload was encoded before encryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Zstd,
}

/// The plaintext header of a record.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RecordHeader {
    pub server: ServerId,
    pub disk: DiskId,
    pub offset: ByteOffset,
    pub length: ByteLen,
    pub seq: Seq,
    pub kind: RecordKind,
    pub compression: Compression,
    pub iv: [u8; IV_LEN],
    /// Number of payload bytes stored after the header.
    pub payload_len: u32,
}

/// Where a record belongs: the part of a header that the sealer's caller chooses.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RecordAddress {
    pub server: ServerId,
    pub disk: DiskId,
    pub offset: ByteOffset,
    pub seq: Seq,
}

/// Why a header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("record at offset {offset} with length {length} runs past the end of any disk")]
    RangeOverflow { offset: u64, length: u64 },
    #[error("data record covers {length} bytes; at most {MAX_DATA_EXTENT} are allowed")]
    DataTooLong { length: u64 },
    #[error("data record covers 0 bytes")]
    EmptyData,
    #[error("{kind:?} record carries {payload_len} payload bytes; it must carry none")]
    UnexpectedPayload { kind: RecordKind, payload_len: u32 },
    #[error("{kind:?} record has compression {compression:?}; it must have none")]
    UnexpectedCompression {
        kind: RecordKind,
        compression: Compression,
    },
    #[error(
        "data record with compression {compression:?} stores {payload_len} payload bytes for \
         {length} bytes of disk (raw must store exactly as many, zstd fewer)"
    )]
    BadPayloadLen {
        compression: Compression,
        payload_len: u32,
        length: u64,
    },
    #[error("{kind:?} record has a non-zero IV; a record without payload has none")]
    UnexpectedIv { kind: RecordKind },
    #[error("payload of {stored} bytes does not match the header's payload length {declared}")]
    PayloadLenMismatch { declared: u32, stored: usize },
    #[error("{kind:?} record carries {found} grain digests; it must carry {expected}")]
    DigestCount {
        kind: RecordKind,
        found: usize,
        expected: u64,
    },
}

impl RecordHeader {
    /// Checks the header's own consistency (see the module doc's bounds).
    pub fn check(&self) -> Result<(), HeaderError> {
        let (offset, length) = (self.offset.get(), self.length.get());
        if self.offset.checked_add(self.length).is_none() {
            return Err(HeaderError::RangeOverflow { offset, length });
        }
        match self.kind {
            RecordKind::Data => {
                if length == 0 {
                    return Err(HeaderError::EmptyData);
                }
                if length > MAX_DATA_EXTENT as u64 {
                    return Err(HeaderError::DataTooLong { length });
                }
                let stored = u64::from(self.payload_len);
                let fits = match self.compression {
                    Compression::None => stored == length,
                    Compression::Zstd => stored > 0 && stored < length,
                };
                if !fits {
                    return Err(HeaderError::BadPayloadLen {
                        compression: self.compression,
                        payload_len: self.payload_len,
                        length,
                    });
                }
            }
            RecordKind::Zero | RecordKind::Discard => {
                if self.payload_len != 0 {
                    return Err(HeaderError::UnexpectedPayload {
                        kind: self.kind,
                        payload_len: self.payload_len,
                    });
                }
                if self.compression != Compression::None {
                    return Err(HeaderError::UnexpectedCompression {
                        kind: self.kind,
                        compression: self.compression,
                    });
                }
                if self.iv != [0; IV_LEN] {
                    return Err(HeaderError::UnexpectedIv { kind: self.kind });
                }
            }
        }
        Ok(())
    }

    /// Writes the authenticated header bytes (layout in the module doc) into `buf` and
    /// returns how many were written.
    pub fn mac_input(&self, buf: &mut [u8; MAC_INPUT_MAX]) -> usize {
        let name = self.server.as_str().as_bytes();
        buf[0..8].copy_from_slice(DOMAIN_TAG);
        buf[8] = match self.kind {
            RecordKind::Data => 0,
            RecordKind::Zero => 1,
            RecordKind::Discard => 2,
        };
        buf[9] = match self.compression {
            Compression::None => 0,
            Compression::Zstd => 1,
        };
        buf[10..14].copy_from_slice(&self.disk.get().to_le_bytes());
        buf[14..22].copy_from_slice(&self.offset.get().to_le_bytes());
        buf[22..30].copy_from_slice(&self.length.get().to_le_bytes());
        buf[30..38].copy_from_slice(&self.seq.get().to_le_bytes());
        buf[38..54].copy_from_slice(&self.iv);
        buf[54..58].copy_from_slice(&self.payload_len.to_le_bytes());
        // A ServerId is at most MAX_NAME_LEN ASCII characters, so its length fits a byte.
        buf[58] = u8::try_from(name.len()).expect("server names are at most 60 bytes");
        buf[MAC_INPUT_FIXED..MAC_INPUT_FIXED + name.len()].copy_from_slice(name);
        MAC_INPUT_FIXED + name.len()
    }
}

/// A header, its grain digests, its payload, the seal and the MAC over them: what
/// travels and what is stored. The digests come before the payload, so a reader that wants only them can
/// stop early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedRecord {
    pub header: RecordHeader,
    pub digests: Vec<GrainDigest>,
    pub payload: Vec<u8>,
    /// The end-to-end tag: only the server's agent can make it.
    pub seal: [u8; MAC_LEN],
    /// The ingest MAC, over everything above including the seal.
    pub mac: [u8; MAC_LEN],
}

impl SealedRecord {
    /// Checks the header's bounds, that a data record has one digest per grain (others
    /// none), and that the payload is as long as it declares.
    pub fn check(&self) -> Result<(), HeaderError> {
        self.header.check()?;
        let expected = match self.header.kind {
            RecordKind::Data => {
                grains_overlapped(self.header.offset.get(), self.header.length.get())
            }
            RecordKind::Zero | RecordKind::Discard => 0,
        };
        if self.digests.len() as u64 != expected {
            return Err(HeaderError::DigestCount {
                kind: self.header.kind,
                found: self.digests.len(),
                expected,
            });
        }
        if self.payload.len() != self.header.payload_len as usize {
            return Err(HeaderError::PayloadLenMismatch {
                declared: self.header.payload_len,
                stored: self.payload.len(),
            });
        }
        Ok(())
    }
}
