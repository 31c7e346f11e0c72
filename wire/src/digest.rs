//! Grain and chunk digests: how an agent finds, after a tracking gap, which parts of a
//! disk differ from what its standby holds — without the standby ever seeing data or
//! holding a key that could confirm guesses about it (DESIGN.md I6).
//!
//! - A disk is cut into grains of [`GRAIN`] bytes and chunks of [`CHUNK`] bytes
//!   ([`CHUNK`] / [`GRAIN`] grains); the last grain and chunk of a disk may be short.
//! - Every data record carries one [`GrainDigest`] per grain it overlaps, over the
//!   record's bytes inside that grain (its *span*): HMAC-SHA256 with the digest key over
//!   `"ferry grain v1" ‖ disk ‖ span offset ‖ span length ‖ bytes`, truncated to 16 bytes.
//!   An all-zero span has the digest [`ZERO_GRAIN`]; zero and discard records carry no
//!   digests (their grains are [`ZERO_GRAIN`]), and neither do grains never written.
//! - A chunk's digest is SHA-256 over `"ferry chunk v1"` and its grains' digests in order
//!   ([`chunk_digest`]). The standby computes it from the digests stored in the records
//!   that hold the chunk's latest state; the agent from the chunk's bytes. Equal digests
//!   mean equal bytes, but for a 2⁻¹²⁸ chance per grain.
//! - Disk and offset are inside the keyed hash, so equal grains in different places have
//!   unrelated digests: the standby cannot even tell which blocks repeat.

use crate::ids::DiskId;
use crate::keys::DigestKey;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Tracking and digest granularity: 4 KiB.
pub const GRAIN: u64 = 4096;
/// Digest catch-up compares chunks of 1 MiB.
pub const CHUNK: u64 = 1 << 20;

/// A grain's keyed digest.
pub type GrainDigest = [u8; 16];
/// A chunk's digest (over its grains' digests).
pub type ChunkDigest = [u8; 32];

/// The digest of an all-zero (or never written) grain.
pub const ZERO_GRAIN: GrainDigest = [0; 16];

/// How many grains the `length` bytes at `offset` overlap.
pub fn grains_overlapped(offset: u64, length: u64) -> u64 {
    if length == 0 {
        return 0;
    }
    let last = offset.saturating_add(length - 1) / GRAIN;
    last - offset / GRAIN + 1
}

/// Computes grain digests with the digest key (keyed once, cloned per grain).
#[derive(Clone)]
pub struct Digester {
    keyed: Hmac<Sha256>,
}

impl std::fmt::Debug for Digester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Digester(<key redacted>)")
    }
}

impl Digester {
    pub fn new(key: &DigestKey) -> Self {
        Self {
            keyed: <Hmac<Sha256> as Mac>::new_from_slice(key.expose())
                .expect("HMAC takes any key length"),
        }
    }

    /// Appends to `out` the digest of every grain that `data`, the bytes of `disk` at
    /// `offset`, overlaps ([`grains_overlapped`] of them).
    pub fn grains(&self, disk: DiskId, offset: u64, data: &[u8], out: &mut Vec<GrainDigest>) {
        let mut at = 0usize;
        while at < data.len() {
            let pos = offset + at as u64;
            let span = usize::try_from((pos / GRAIN + 1) * GRAIN - pos)
                .unwrap_or(usize::MAX)
                .min(data.len() - at);
            out.push(self.span(disk, pos, &data[at..at + span]));
            at += span;
        }
    }

    fn span(&self, disk: DiskId, offset: u64, bytes: &[u8]) -> GrainDigest {
        if crate::seal::is_all_zero(bytes) {
            return ZERO_GRAIN;
        }
        let mut mac = self.keyed.clone();
        mac.update(b"ferry grain v1");
        mac.update(&disk.get().to_le_bytes());
        mac.update(&offset.to_le_bytes());
        mac.update(&(bytes.len() as u64).to_le_bytes());
        mac.update(bytes);
        let full = mac.finalize().into_bytes();
        let mut digest = ZERO_GRAIN;
        digest.copy_from_slice(&full[..16]);
        digest
    }
}

/// A chunk's digest from its grains' digests, in order.
pub fn chunk_digest(grains: &[GrainDigest]) -> ChunkDigest {
    let mut h = Sha256::new();
    h.update(b"ferry chunk v1");
    for g in grains {
        h.update(g);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: usize = 4096;

    fn digester() -> Digester {
        Digester::new(&DigestKey::from_bytes([9; 32]))
    }

    #[test]
    fn grains_overlapped_counts_partial_grains() {
        assert_eq!(grains_overlapped(0, 0), 0);
        assert_eq!(grains_overlapped(0, 1), 1);
        assert_eq!(grains_overlapped(0, GRAIN), 1);
        assert_eq!(grains_overlapped(0, GRAIN + 1), 2);
        assert_eq!(grains_overlapped(GRAIN - 1, 2), 2);
        assert_eq!(grains_overlapped(512, CHUNK), CHUNK / GRAIN + 1);
    }

    #[test]
    fn one_digest_per_grain_overlapped_and_split_extents_agree_with_whole_ones() {
        let d = digester();
        let data: Vec<u8> = (0..3 * G)
            .map(|i| u8::try_from(i % 251).unwrap() + 1)
            .collect();
        let mut whole = Vec::new();
        d.grains(DiskId::new(1), 0, &data, &mut whole);
        assert_eq!(whole.len(), 3);
        let mut pieces = Vec::new();
        for (i, grain) in data.chunks(G).enumerate() {
            d.grains(DiskId::new(1), i as u64 * GRAIN, grain, &mut pieces);
        }
        assert_eq!(
            whole, pieces,
            "a grain's digest depends on its bytes, not its record"
        );
        let mut odd = Vec::new();
        d.grains(DiskId::new(1), 100, &data[..G], &mut odd);
        assert_eq!(odd.len(), 2, "an unaligned extent overlaps two grains");
    }

    #[test]
    fn digests_depend_on_bytes_place_disk_and_key_and_zeroes_are_zero_grain() {
        let d = digester();
        let one = |disk: u32, offset: u64, data: &[u8], d: &Digester| {
            let mut out = Vec::new();
            d.grains(DiskId::new(disk), offset, data, &mut out);
            out[0]
        };
        let a = vec![7u8; G];
        let mut b = a.clone();
        b[4000] = 8;
        let base = one(0, 0, &a, &d);
        assert_ne!(base, ZERO_GRAIN);
        assert_ne!(base, one(0, 0, &b, &d), "one changed byte");
        assert_ne!(base, one(0, GRAIN, &a, &d), "same bytes elsewhere");
        assert_ne!(base, one(1, 0, &a, &d), "same bytes on another disk");
        let other = Digester::new(&DigestKey::from_bytes([10; 32]));
        assert_ne!(base, one(0, 0, &a, &other), "another key");
        assert_eq!(one(0, 0, &vec![0; G], &d), ZERO_GRAIN);
        assert_ne!(
            chunk_digest(&[base, ZERO_GRAIN]),
            chunk_digest(&[ZERO_GRAIN, base])
        );
    }
}
