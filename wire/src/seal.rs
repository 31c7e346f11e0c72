//! Sealing and unsealing extents (encrypt-then-MAC).
//!
//! Seal, for one extent of at most [`MAX_DATA_EXTENT`] bytes:
//! 1. all-zero data → a [`RecordKind::Zero`] record with no payload;
//! 2. else zstd at the configured level, kept only if it shrinks the data (else stored raw);
//! 3. AES-256-CTR with a fresh random 128-bit IV (the initial counter block);
//! 4. HMAC-SHA256 over the authenticated header bytes, the grain digests of the plaintext
//!    ([`crate::digest`]) and the ciphertext ([`RecordHeader::mac_input`]).
//!
//! Unseal checks the header's bounds and the MAC (in constant time) before it decrypts or
//! decompresses anything, and refuses output that is not exactly the header's length.
//! [`verify`] needs only the MAC key: the standby uses it to store records it can never read.

use crate::digest::{Digester, GrainDigest};
use crate::ids::ByteLen;
use crate::keys::{DataKey, MacKey, SiteKeys};
use crate::message::{Barrier, PointKind};
use crate::record::{
    Compression, HeaderError, IV_LEN, MAC_INPUT_MAX, MAX_DATA_EXTENT, RecordAddress, RecordHeader,
    RecordKind, SealedRecord,
};
use aes::Aes256;
use aes::cipher::{InnerIvInit, KeyInit, StreamCipher};
use hmac::{Hmac, Mac};
use rand_core::{CryptoRng, RngCore};
use sha2::Sha256;

type Aes256Ctr = ctr::Ctr128BE<Aes256>;
type HmacSha256 = Hmac<Sha256>;

/// The zstd level ferry seals with unless configured otherwise.
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;

/// Why sealing or unsealing failed. All are permanent: the same record and keys fail the
/// same way again (the caller must not retry, but report).
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(transparent)]
    Header(#[from] HeaderError),
    #[error("record MAC does not match (wrong key, or the record was altered)")]
    BadMac,
    #[error("zstd level {level} is out of range ({min} to {max})")]
    BadLevel { level: i32, min: i32, max: i32 },
    #[error("extent of {length} bytes is larger than the {MAX_DATA_EXTENT}-byte maximum")]
    ExtentTooLong { length: usize },
    #[error("decompressing a record failed")]
    Decompress(#[source] std::io::Error),
    #[error("record decompressed to {got} bytes; its header says {expected}")]
    LengthMismatch { expected: u64, got: usize },
    #[error("zstd could not set up a compression context")]
    Zstd(#[source] std::io::Error),
}

fn mac_of(
    key: &MacKey,
    header: &RecordHeader,
    digests: &[GrainDigest],
    payload: &[u8],
) -> HmacSha256 {
    let mut input = [0u8; MAC_INPUT_MAX];
    let n = header.mac_input(&mut input);
    let mut mac =
        <HmacSha256 as Mac>::new_from_slice(key.expose()).expect("HMAC takes any key length");
    mac.update(&input[..n]);
    for d in digests {
        mac.update(d);
    }
    mac.update(payload);
    mac
}

/// An AES-256-CTR keystream from an already expanded key, starting at counter block `iv`.
fn keystream(cipher: &Aes256, iv: &[u8; IV_LEN]) -> Aes256Ctr {
    Aes256Ctr::from_core(ctr::CtrCore::inner_iv_init(cipher.clone(), iv.into()))
}

/// Checks a record's bounds and MAC with the MAC key alone.
pub fn verify(key: &MacKey, record: &SealedRecord) -> Result<(), SealError> {
    record.check()?;
    mac_of(key, &record.header, &record.digests, &record.payload)
        .verify_slice(&record.mac)
        .map_err(|_| SealError::BadMac)
}

/// The HMAC of a barrier's fields (not its `mac`), domain-separated from records.
fn barrier_mac(key: &MacKey, b: &Barrier) -> HmacSha256 {
    let mut mac =
        <HmacSha256 as Mac>::new_from_slice(key.expose()).expect("HMAC takes any key length");
    mac.update(b"ferry barrier v1");
    mac.update(&b.seq.0.to_le_bytes());
    mac.update(&b.point.0.to_le_bytes());
    mac.update(&[
        match b.kind {
            PointKind::Scheduled => 1,
            PointKind::Manual => 2,
        },
        u8::from(b.consistent),
    ]);
    mac.update(&b.unix_time_ms.to_le_bytes());
    mac
}

/// A barrier with its MAC set.
pub fn sign_barrier(key: &MacKey, mut barrier: Barrier) -> Barrier {
    barrier.mac = barrier_mac(key, &barrier).finalize().into_bytes().into();
    barrier
}

/// Checks a barrier's MAC with the MAC key alone.
pub fn verify_barrier(key: &MacKey, barrier: &Barrier) -> Result<(), SealError> {
    barrier_mac(key, barrier)
        .verify_slice(&barrier.mac)
        .map_err(|_| SealError::BadMac)
}

pub(crate) fn is_all_zero(data: &[u8]) -> bool {
    // Fold in 64-byte chunks so the compiler can vectorise; exit at the first non-zero chunk.
    let mut chunks = data.chunks_exact(64);
    let chunks_zero = chunks.all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0);
    chunks_zero && chunks.remainder().iter().all(|&b| b == 0)
}

/// Seals extents. Holds the cipher's key schedule and a zstd context, reused across
/// records; one per thread.
pub struct Sealer {
    cipher: Aes256,
    mac_key: MacKey,
    digester: Digester,
    compressor: zstd::bulk::Compressor<'static>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<keys redacted>)")
    }
}

impl Sealer {
    /// A sealer with the site pair's data, MAC and digest keys.
    pub fn new(keys: &SiteKeys, zstd_level: i32) -> Result<Self, SealError> {
        let range = zstd::compression_level_range();
        if !range.contains(&zstd_level) {
            return Err(SealError::BadLevel {
                level: zstd_level,
                min: *range.start(),
                max: *range.end(),
            });
        }
        Ok(Self {
            cipher: Aes256::new(keys.data.expose().into()),
            mac_key: keys.mac.clone(),
            digester: Digester::new(&keys.digest),
            compressor: zstd::bulk::Compressor::new(zstd_level).map_err(SealError::Zstd)?,
        })
    }

    /// Seals `data`, the bytes of the disk at `addr`. All-zero (or empty) data becomes a
    /// zero record.
    pub fn seal(
        &mut self,
        addr: RecordAddress,
        data: &[u8],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<SealedRecord, SealError> {
        if data.len() > MAX_DATA_EXTENT {
            return Err(SealError::ExtentTooLong { length: data.len() });
        }
        if is_all_zero(data) {
            return self.without_payload(addr, ByteLen(data.len() as u64), RecordKind::Zero);
        }
        let mut iv = [0u8; IV_LEN];
        rng.fill_bytes(&mut iv);
        self.seal_data(addr, data, iv)
    }

    /// The work of [`Sealer::seal`] for non-zero data. Kept apart from the generic `seal`
    /// so it is compiled (and optimised) once, in this crate, not in every caller.
    fn seal_data(
        &mut self,
        addr: RecordAddress,
        data: &[u8],
        iv: [u8; IV_LEN],
    ) -> Result<SealedRecord, SealError> {
        let length = ByteLen(data.len() as u64);
        let mut digests = Vec::with_capacity(data.len().div_ceil(4096) + 1);
        self.digester
            .grains(addr.disk, addr.offset.0, data, &mut digests);
        // Compress into a buffer one byte shorter than the data: zstd fails when the
        // output would not fit, which is exactly the "does not shrink" case.
        let mut payload = Vec::with_capacity(data.len() - 1);
        let compression = match self.compressor.compress_to_buffer(data, &mut payload) {
            Ok(_) => Compression::Zstd,
            Err(_) => {
                payload.clear();
                payload.extend_from_slice(data);
                Compression::None
            }
        };
        keystream(&self.cipher, &iv).apply_keystream(&mut payload);
        let header = RecordHeader {
            server: addr.server,
            disk: addr.disk,
            offset: addr.offset,
            length,
            seq: addr.seq,
            kind: RecordKind::Data,
            compression,
            iv,
            payload_len: u32::try_from(payload.len()).expect("payload ≤ MAX_DATA_EXTENT"),
        };
        header.check()?;
        let mac = mac_of(&self.mac_key, &header, &digests, &payload)
            .finalize()
            .into_bytes()
            .into();
        Ok(SealedRecord {
            header,
            digests,
            payload,
            mac,
        })
    }

    /// A record saying that `length` bytes at `addr` were discarded.
    pub fn discard(&self, addr: RecordAddress, length: ByteLen) -> Result<SealedRecord, SealError> {
        self.without_payload(addr, length, RecordKind::Discard)
    }

    /// A record saying that `length` bytes at `addr` are zero (e.g. a write-zeroes request).
    pub fn zeroes(&self, addr: RecordAddress, length: ByteLen) -> Result<SealedRecord, SealError> {
        self.without_payload(addr, length, RecordKind::Zero)
    }

    fn without_payload(
        &self,
        addr: RecordAddress,
        length: ByteLen,
        kind: RecordKind,
    ) -> Result<SealedRecord, SealError> {
        let header = RecordHeader {
            server: addr.server,
            disk: addr.disk,
            offset: addr.offset,
            length,
            seq: addr.seq,
            kind,
            compression: Compression::None,
            iv: [0; IV_LEN],
            payload_len: 0,
        };
        header.check()?;
        let mac = mac_of(&self.mac_key, &header, &[], &[])
            .finalize()
            .into_bytes()
            .into();
        Ok(SealedRecord {
            header,
            digests: Vec::new(),
            payload: Vec::new(),
            mac,
        })
    }
}

/// What a record holds once unsealed.
#[derive(Debug, PartialEq, Eq)]
pub enum Unsealed<'a> {
    /// The extent's bytes (exactly the header's length).
    Data(&'a [u8]),
    /// The range is zero.
    Zeroes(ByteLen),
    /// The range was discarded.
    Discarded(ByteLen),
}

/// Unseals records. Holds the key schedule, a zstd context and an output buffer.
pub struct Unsealer {
    cipher: Aes256,
    mac_key: MacKey,
    decompressor: zstd::bulk::Decompressor<'static>,
    scratch: Vec<u8>,
    plain: Vec<u8>,
}

impl std::fmt::Debug for Unsealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Unsealer(<keys redacted>)")
    }
}

impl Unsealer {
    pub fn new(data_key: &DataKey, mac_key: &MacKey) -> Result<Self, SealError> {
        Ok(Self {
            cipher: Aes256::new(data_key.expose().into()),
            mac_key: mac_key.clone(),
            decompressor: zstd::bulk::Decompressor::new().map_err(SealError::Zstd)?,
            scratch: Vec::new(),
            plain: Vec::new(),
        })
    }

    /// Verifies `record` and returns its plaintext.
    pub fn unseal(&mut self, record: &SealedRecord) -> Result<Unsealed<'_>, SealError> {
        verify(&self.mac_key, record)?;
        let header = &record.header;
        match header.kind {
            RecordKind::Zero => return Ok(Unsealed::Zeroes(header.length)),
            RecordKind::Discard => return Ok(Unsealed::Discarded(header.length)),
            RecordKind::Data => {}
        }
        // header.check() bounded length by MAX_DATA_EXTENT, so this cannot be huge.
        let expected = header.length.0;
        let mut cipher = keystream(&self.cipher, &header.iv);
        match header.compression {
            Compression::None => {
                self.plain.clear();
                self.plain.extend_from_slice(&record.payload);
                cipher.apply_keystream(&mut self.plain);
            }
            Compression::Zstd => {
                self.scratch.clear();
                self.scratch.extend_from_slice(&record.payload);
                cipher.apply_keystream(&mut self.scratch);
                self.plain.clear();
                self.plain
                    .reserve(usize::try_from(expected).expect("≤ MAX_DATA_EXTENT"));
                self.decompressor
                    .decompress_to_buffer(&self.scratch, &mut self.plain)
                    .map_err(SealError::Decompress)?;
            }
        }
        if self.plain.len() as u64 != expected {
            return Err(SealError::LengthMismatch {
                expected,
                got: self.plain.len(),
            });
        }
        Ok(Unsealed::Data(&self.plain))
    }
}
