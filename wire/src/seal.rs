//! Sealing and unsealing extents (encrypt-then-MAC, twice keyed).
//!
//! Seal, for one extent of at most [`MAX_DATA_EXTENT`] bytes:
//! 1. all-zero data → a [`RecordKind::Zero`] record with no payload;
//! 2. else zstd at the configured level, kept only if it shrinks the data (else stored raw);
//! 3. AES-256-CTR with a fresh random 128-bit IV (the initial counter block);
//! 4. the *seal*: keyed BLAKE3 with the server's seal key over the authenticated header
//!    bytes ([`RecordHeader::mac_input`]), the grain digests of the plaintext
//!    ([`crate::digest`]) and the BLAKE3 hash of the ciphertext; only the agent and a
//!    recovery hold that key;
//! 5. the *MAC*: keyed BLAKE3 with the server's ingest MAC key over the same and the seal
//!    (the ciphertext is hashed once for both: forging either tag for other bytes needs a
//!    BLAKE3 collision or the tag's key);
//!    the standby checks it before it stores anything.
//!
//! [`verify`] needs only the MAC key: the standby uses it to store records it can never
//! read. [`Unsealer::unseal`] checks the header's bounds and the seal (in constant time)
//! before it decrypts or decompresses anything, and refuses output that is not exactly
//! the header's length: a record the standby made or altered fails there
//! ([`SealError::BadSeal`]), whatever keys the standby holds.
//!
//! Barriers and registrations carry a seal and a MAC the same way ([`sign_barrier`],
//! [`sign_registration`]); a barrier's seal covers the server id and the seal of the
//! registration (disk set) it was taken under, so a point can be neither moved to
//! another server nor read against other disks.

use crate::digest::{Digester, GrainDigest};
use crate::ids::{ByteLen, ServerId};
use crate::keys::{HostKeys, MacKey, RecoveryKeys, SealKey};
use crate::message::{Barrier, PointKind, RegisterServer};
use crate::record::{
    Compression, HeaderError, IV_LEN, MAC_INPUT_MAX, MAC_LEN, MAX_DATA_EXTENT, RecordAddress,
    RecordHeader, RecordKind, SealedRecord,
};
use aes::Aes256;
use aes::cipher::{InnerIvInit, KeyInit, StreamCipher};
use rand_core::{CryptoRng, RngCore};

type Aes256Ctr = ctr::Ctr128BE<Aes256>;

/// The zstd level ferry seals with unless configured otherwise.
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;

/// Why sealing or unsealing failed. All are permanent: the same record and keys fail the
/// same way again (the caller must not retry, but report).
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(transparent)]
    Header(#[from] HeaderError),
    #[error("MAC does not match (not sent by this server's agent, or altered in transit)")]
    BadMac,
    #[error(
        "seal does not match: this was not made by the server's agent (forged or altered \
         where it was stored), or the recovery key is not this server's"
    )]
    BadSeal,
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

/// A keyed BLAKE3 hasher.
fn keyed(key: &[u8; 32]) -> blake3::Hasher {
    blake3::Hasher::new_keyed(key)
}

/// Ok when `expected` equals `tag` (constant time), else `err`.
fn check_tag(
    expected: [u8; MAC_LEN],
    tag: &[u8; MAC_LEN],
    err: SealError,
) -> Result<(), SealError> {
    if blake3::Hash::from_bytes(expected) == blake3::Hash::from_bytes(*tag) {
        Ok(())
    } else {
        Err(err)
    }
}

/// The BLAKE3 hash of a record's payload: one pass over the payload, shared by the seal
/// and the MAC, with the whole input known at once so that BLAKE3 hashes every chunk on
/// its SIMD paths (a keyed hasher fed header and payload in parts hashed a 4 KiB payload
/// mostly one block at a time, at three times the cost).
fn payload_hash(payload: &[u8]) -> blake3::Hash {
    blake3::hash(payload)
}

/// Feeds a record's authenticated bytes to `h`: the header bytes (self-delimiting: the
/// name's length is in them), the grain digests (as many as the header's range
/// overlaps) and the payload's hash.
fn feed(
    h: &mut blake3::Hasher,
    header: &RecordHeader,
    digests: &[GrainDigest],
    payload: &blake3::Hash,
) {
    let mut input = [0u8; MAC_INPUT_MAX];
    let n = header.mac_input(&mut input);
    h.update(&input[..n]);
    for d in digests {
        h.update(d);
    }
    h.update(payload.as_bytes());
}

/// The seal of a record's parts.
fn seal_of(
    key: &SealKey,
    header: &RecordHeader,
    digests: &[GrainDigest],
    payload: &blake3::Hash,
) -> [u8; MAC_LEN] {
    let mut h = keyed(key.expose());
    feed(&mut h, header, digests, payload);
    h.finalize().into()
}

/// The MAC of a record's parts and seal.
fn mac_of(
    key: &MacKey,
    header: &RecordHeader,
    digests: &[GrainDigest],
    payload: &blake3::Hash,
    seal: &[u8; MAC_LEN],
) -> [u8; MAC_LEN] {
    let mut h = keyed(key.expose());
    feed(&mut h, header, digests, payload);
    h.update(seal);
    h.finalize().into()
}

/// A record's seal and MAC.
fn tag_record(
    seal_key: &SealKey,
    mac_key: &MacKey,
    header: &RecordHeader,
    digests: &[GrainDigest],
    payload: &[u8],
) -> ([u8; MAC_LEN], [u8; MAC_LEN]) {
    let payload = payload_hash(payload);
    let seal = seal_of(seal_key, header, digests, &payload);
    let mac = mac_of(mac_key, header, digests, &payload, &seal);
    (seal, mac)
}

/// An AES-256-CTR keystream from an already expanded key, starting at counter block `iv`.
fn keystream(cipher: &Aes256, iv: &[u8; IV_LEN]) -> Aes256Ctr {
    Aes256Ctr::from_core(ctr::CtrCore::inner_iv_init(cipher.clone(), iv.into()))
}

/// The ingest MAC `record` should carry. Anyone holding the MAC key — a standby — can
/// compute it; that is why rebuilds check the seal.
pub fn record_mac(key: &MacKey, record: &SealedRecord) -> [u8; MAC_LEN] {
    let (h, d, p) = (&record.header, &record.digests, &record.payload);
    mac_of(key, h, d, &payload_hash(p), &record.seal)
}

/// Checks a record's bounds and MAC with the ingest MAC key alone (the standby's check).
pub fn verify(key: &MacKey, record: &SealedRecord) -> Result<(), SealError> {
    record.check()?;
    check_tag(record_mac(key, record), &record.mac, SealError::BadMac)
}

/// The seal `record` should carry: only the holder of the server's seal key (its agent, a
/// recovery) can compute it.
pub fn record_seal(key: &SealKey, record: &SealedRecord) -> [u8; MAC_LEN] {
    let payload = payload_hash(&record.payload);
    seal_of(key, &record.header, &record.digests, &payload)
}

/// Checks a record's bounds and seal with the server's seal key (a recovery's check).
pub fn verify_seal(key: &SealKey, record: &SealedRecord) -> Result<(), SealError> {
    record.check()?;
    check_tag(record_seal(key, record), &record.seal, SealError::BadSeal)
}

/// The bytes of a barrier's fields (not its seal and MAC), domain-separated from records.
fn barrier_input(h: &mut blake3::Hasher, b: &Barrier) {
    h.update(b"ferry barrier v2");
    name_input(h, b.server.as_str());
    h.update(&b.seq.get().to_le_bytes());
    h.update(&b.point.get().to_le_bytes());
    h.update(&[
        match b.kind {
            PointKind::Scheduled => 1,
            PointKind::Manual => 2,
        },
        u8::from(b.consistent),
    ]);
    h.update(&b.unix_time_ms.to_le_bytes());
    h.update(&b.registration);
}

/// A length-prefixed name (every name is at most 255 bytes: [`crate::message::MAX_TEXT`]
/// bounds the longest, and longer ones are cut at the prefix's range, never mixed up).
fn name_input(h: &mut blake3::Hasher, name: &str) {
    let bytes = name.as_bytes();
    h.update(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_le_bytes());
    h.update(bytes);
}

/// A barrier with its seal and MAC set (by the server's agent).
pub fn sign_barrier(keys: &HostKeys, mut barrier: Barrier) -> Barrier {
    let mut seal = keyed(keys.recovery.seal.expose());
    barrier_input(&mut seal, &barrier);
    barrier.seal = seal.finalize().into();
    barrier.mac = barrier_mac(&keys.ingest.mac, &barrier);
    barrier
}

/// The ingest MAC `barrier` should carry (see [`record_mac`]).
pub fn barrier_mac(key: &MacKey, barrier: &Barrier) -> [u8; MAC_LEN] {
    let mut mac = keyed(key.expose());
    barrier_input(&mut mac, barrier);
    mac.update(&barrier.seal);
    mac.finalize().into()
}

/// Checks a barrier's MAC with the ingest MAC key alone.
pub fn verify_barrier(key: &MacKey, barrier: &Barrier) -> Result<(), SealError> {
    check_tag(barrier_mac(key, barrier), &barrier.mac, SealError::BadMac)
}

/// Checks a barrier's seal with the server's seal key.
pub fn verify_barrier_seal(key: &SealKey, barrier: &Barrier) -> Result<(), SealError> {
    let mut seal = keyed(key.expose());
    barrier_input(&mut seal, barrier);
    check_tag(seal.finalize().into(), &barrier.seal, SealError::BadSeal)
}

/// The bytes of a registration's fields (not its seal and MAC).
fn registration_input(h: &mut blake3::Hasher, server: &ServerId, r: &RegisterServer) {
    use crate::disk_identity::DiskIdentity;
    h.update(b"ferry registration v3");
    name_input(h, server.as_str());
    name_input(h, &r.hostname);
    h.update(&(r.disks.len() as u64).to_le_bytes());
    for d in &r.disks {
        h.update(&d.disk.get().to_le_bytes());
        name_input(h, &d.name);
        h.update(&d.size.get().to_le_bytes());
        // The identity a failback matches the original disk by is sealed too.
        let kind: u8 = match d.identity {
            DiskIdentity::Unknown => 0,
            DiskIdentity::Wwid(_) => 1,
            DiskIdentity::Serial(_) => 2,
            DiskIdentity::DmUuid(_) => 3,
            DiskIdentity::LoopBackingFile(_) => 4,
        };
        h.update(&[kind]);
        name_input(h, d.identity.value().unwrap_or_default());
    }
}

/// A registration of `server` with its seal and MAC set (by the server's agent).
pub fn sign_registration(keys: &HostKeys, mut reg: RegisterServer) -> RegisterServer {
    let server = &keys.recovery.server;
    let mut seal = keyed(keys.recovery.seal.expose());
    registration_input(&mut seal, server, &reg);
    reg.seal = seal.finalize().into();
    reg.mac = registration_mac(&keys.ingest.mac, server, &reg);
    reg
}

/// The ingest MAC a registration of `server` should carry (see [`record_mac`]).
pub fn registration_mac(key: &MacKey, server: &ServerId, reg: &RegisterServer) -> [u8; MAC_LEN] {
    let mut mac = keyed(key.expose());
    registration_input(&mut mac, server, reg);
    mac.update(&reg.seal);
    mac.finalize().into()
}

/// Checks a registration of `server` with its ingest MAC key alone.
pub fn verify_registration(
    key: &MacKey,
    server: &ServerId,
    reg: &RegisterServer,
) -> Result<(), SealError> {
    check_tag(
        registration_mac(key, server, reg),
        &reg.mac,
        SealError::BadMac,
    )
}

/// Checks a registration's seal with the server's seal key (the server is the key's).
pub fn verify_registration_seal(
    keys: &RecoveryKeys,
    reg: &RegisterServer,
) -> Result<(), SealError> {
    let mut seal = keyed(keys.seal.expose());
    registration_input(&mut seal, &keys.server, reg);
    check_tag(seal.finalize().into(), &reg.seal, SealError::BadSeal)
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
    seal_key: SealKey,
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
    /// A sealer with one server's keys.
    pub fn new(keys: &HostKeys, zstd_level: i32) -> Result<Self, SealError> {
        let range = zstd::compression_level_range();
        if !range.contains(&zstd_level) {
            return Err(SealError::BadLevel {
                level: zstd_level,
                min: *range.start(),
                max: *range.end(),
            });
        }
        Ok(Self {
            cipher: Aes256::new(keys.recovery.data.expose().into()),
            seal_key: keys.recovery.seal.clone(),
            mac_key: keys.ingest.mac.clone(),
            digester: Digester::new(&keys.recovery.digest),
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
            return self.without_payload(addr, ByteLen::new(data.len() as u64), RecordKind::Zero);
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
        let length = ByteLen::new(data.len() as u64);
        let mut digests = Vec::with_capacity(data.len().div_ceil(4096) + 1);
        self.digester
            .grains(addr.disk, addr.offset.get(), data, &mut digests);
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
        let (seal, mac) = tag_record(&self.seal_key, &self.mac_key, &header, &digests, &payload);
        Ok(SealedRecord {
            header,
            digests,
            payload,
            seal,
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
        let (seal, mac) = tag_record(&self.seal_key, &self.mac_key, &header, &[], &[]);
        Ok(SealedRecord {
            header,
            digests: Vec::new(),
            payload: Vec::new(),
            seal,
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
    seal_key: SealKey,
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
    /// An unsealer with one server's recovery keys.
    pub fn new(keys: &RecoveryKeys) -> Result<Self, SealError> {
        Ok(Self {
            cipher: Aes256::new(keys.data.expose().into()),
            seal_key: keys.seal.clone(),
            decompressor: zstd::bulk::Decompressor::new().map_err(SealError::Zstd)?,
            scratch: Vec::new(),
            plain: Vec::new(),
        })
    }

    /// Verifies `record`'s seal and returns its plaintext.
    pub fn unseal(&mut self, record: &SealedRecord) -> Result<Unsealed<'_>, SealError> {
        verify_seal(&self.seal_key, record)?;
        let header = &record.header;
        match header.kind {
            RecordKind::Zero => return Ok(Unsealed::Zeroes(header.length)),
            RecordKind::Discard => return Ok(Unsealed::Discarded(header.length)),
            RecordKind::Data => {}
        }
        // header.check() bounded length by MAX_DATA_EXTENT, so this cannot be huge.
        let expected = header.length.get();
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
