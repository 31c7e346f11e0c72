//! ferry's byte formats, with no I/O: everything that crosses the link between an agent
//! and a standby site, or lands in the standby's log, is defined here.
//!
//! - [`ids`]: typed identities and units (server, disk, sequence number, byte offsets).
//! - [`disk_identity`]: what identifies a disk beyond its name (WWID, serial, …).
//! - [`keys`]: the site pair's master key and the data, MAC, auth and digest keys derived
//!   from it.
//! - [`record`]: the plaintext record header that the standby stores and indexes.
//! - [`digest`]: keyed grain digests and chunk digests, for digest catch-up.
//! - [`seal`]: sealing an extent (zero detection → zstd → AES-256-CTR → keyed BLAKE3 seal
//!   and ingest MAC) and unsealing it (tags checked before anything is decrypted).
//! - [`auth`]: the challenge–response proofs an agent and a standby exchange.
//! - [`message`]: the agent ↔ standby protocol messages.
//! - [`frame`]: how a message is framed on the link (magic, version, type, length, CRC);
//!   [`body`]: each message's byte layout inside its frame.
//!
//! Invariants kept here:
//! - Nothing decodes a length from outside without checking it against a documented cap
//!   first, so malformed input can never make this crate allocate what it names.
//! - Verifying a sealed record needs only the MAC key (DESIGN.md I6); the data key is
//!   needed only to unseal.
//! - Key bytes never appear in `Debug` output and are zeroized on drop.
//!
//! This crate makes no syscalls: randomness (IVs, nonces) comes from a caller-supplied
//! cryptographic RNG.
#![forbid(unsafe_code)]

pub mod auth;
pub mod body;
pub mod digest;
pub mod disk_identity;
pub mod frame;
pub mod ids;
pub mod keys;
pub mod message;
pub mod record;
pub mod seal;

pub use frame::{FRAME_HEADER_LEN, FrameError, FrameHeader, MAX_FRAME_BODY};
pub use ids::{ByteLen, ByteOffset, DiskId, NameError, PointId, Seq, ServerId};
pub use keys::{
    AuthKey, DataKey, DigestKey, HostKey, HostKeys, IngestKeys, KeyError, KeyFile, MacKey,
    MasterKey, RecoveryKey, RecoveryKeys, SealKey, StandbyKey,
};
pub use message::{Message, PROTOCOL_VERSION};
pub use record::{Compression, MAX_DATA_EXTENT, RecordHeader, RecordKind, SealedRecord};
pub use seal::{SealError, Sealer, Unsealer};

/// An error and its sources on one line (`outer: cause: root cause`), for messages
/// and logs.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
