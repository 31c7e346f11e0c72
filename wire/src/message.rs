//! The agent ↔ standby protocol messages. Each message travels in one frame whose type
//! byte names the message ([`crate::frame`]); the body is the message in the layout
//! [`crate::body`] draws.
//!
//! Conversation on one connection (one ordered stream per server):
//!
//! ```text
//! agent → Hello ; standby → Challenge ; agent → Authenticate ; standby → Welcome
//! agent → RegisterServer (first time, or when disks change)
//! agent → Record | Barrier | Heartbeat …    standby → Ack | Heartbeat | Error …
//! agent → DigestRequest                      standby → Digests   (digest catch-up)
//! agent → Progress (about once a second)
//!                                            standby → PointRequest (an operator asked)
//! agent → PointResult (once the point's barrier is durable, or it failed)
//!                                            standby → Error(Paused) when the server's
//!                                            replication is not started (or stopped)
//! ```
//!
//! Bounds, checked on decode and on encode ([`Message::check`]): text fields at most
//! [`MAX_TEXT`] bytes ([`MAX_ERROR_TEXT`] for error messages) and free of control
//! characters (they end up in logs); at most [`MAX_DISKS`] disks per server; records as
//! [`crate::record`] bounds them.
//!
//! Versioning: the frame header carries [`PROTOCOL_VERSION`]; a peer that receives a
//! frame of another version refuses it with an error naming both versions, and a standby
//! answers a `Hello` of another version with [`ErrorCode::UnsupportedVersion`].

use crate::auth::{Nonce, Proof};
use crate::digest::ChunkDigest;
use crate::ids::{ByteLen, DiskId, PointId, Seq, ServerId};
use crate::record::SealedRecord;
use serde::{Deserialize, Serialize};

/// The protocol version this build speaks (the frame header's version field).
/// Version 6: frame bodies in ferry's own layout ([`crate::body`]), no longer bincode's.
/// Version 5: a record's tags cover its payload's BLAKE3 hash ([`crate::record`]). Version 4
/// brought per-server keys, records, barriers and registrations sealed end to end, and a
/// registration's disks carrying their identity ([`crate::disk_identity`]). Frames of
/// earlier versions are refused, naming both versions.
pub const PROTOCOL_VERSION: u16 = 6;

/// Agent → standby: opens a connection for one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub server: ServerId,
    /// The agent's software version, for the standby's logs.
    pub agent_version: String,
    pub client_nonce: Nonce,
}

/// Standby → agent: the standby's nonce and its proof of holding the auth key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub server_nonce: Nonce,
    pub standby_proof: Proof,
}

/// Agent → standby: the agent's proof of holding the auth key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticate {
    pub agent_proof: Proof,
}

/// Standby → agent: authenticated. Everything at or below `last_durable` is safe; the
/// agent resumes after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    pub last_durable: Seq,
    /// The standby can answer digest requests for this server's disks (it holds records
    /// of it, or the disks it will be restored onto): a tracking gap is caught up by
    /// digest, not by a full copy.
    pub digests: bool,
    /// Why the standby takes no records of this server now (see [`ErrorCode::Paused`]);
    /// the agent registers and waits.
    pub paused: Option<String>,
}

/// One disk of a protected server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskInfo {
    pub disk: DiskId,
    /// The device's name on the protected host (e.g. `vda`, `loop3`).
    pub name: String,
    pub size: ByteLen,
    /// What identifies the device beyond its name, for a restore onto it later.
    pub identity: crate::disk_identity::DiskIdentity,
}

/// Agent → standby: the server and its disks, sealed by the agent
/// ([`crate::seal::sign_registration`]): the standby stores it and every barrier names the
/// registration it was taken under, so a rebuild uses exactly those disks and sizes.
///
/// Also kept by the standby as JSON (`registrations.json`), hence serde.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterServer {
    pub hostname: String,
    pub disks: Vec<DiskInfo>,
    /// End-to-end tag (seal key) over the server id and the fields above; also the
    /// registration's identity in barriers.
    pub seal: [u8; 32],
    /// Ingest MAC over the same and the seal.
    pub mac: [u8; 32],
}

impl RegisterServer {
    /// The disk of this registration with id `disk`.
    pub fn disk(&self, disk: DiskId) -> Option<&DiskInfo> {
        self.disks.iter().find(|d| d.disk == disk)
    }
}

/// How a recovery point came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PointKind {
    Scheduled,
    Manual,
}

/// Agent → standby: every record before this seq, and none after, belongs to the point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Barrier {
    /// The server whose point this is.
    pub server: ServerId,
    pub seq: Seq,
    pub point: PointId,
    pub kind: PointKind,
    /// True when the point equals every disk at one instant (DESIGN.md I5).
    pub consistent: bool,
    pub unix_time_ms: u64,
    /// The seal of the registration (disks and sizes) the point was taken under.
    pub registration: [u8; 32],
    /// End-to-end tag (seal key) over the fields above ([`crate::seal::sign_barrier`]): a
    /// point the standby makes or alters is refused by every rebuild.
    pub seal: [u8; 32],
    /// Ingest MAC over the fields above and the seal.
    pub mac: [u8; 32],
}

/// Standby → agent: every record and barrier with seq ≤ `durable` is on stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub durable: Seq,
}

/// Either way: the link is alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    pub unix_time_ms: u64,
}

/// Agent → standby: the digests of chunks `first_chunk .. first_chunk + count` of `disk`
/// ([`crate::digest`]), as the standby's latest durable state holds them. The standby
/// answers after every record sent before the request is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DigestRequest {
    /// The agent's id for the request, echoed in the answer.
    pub request: u64,
    pub disk: DiskId,
    pub first_chunk: u64,
    pub count: u32,
}

/// Standby → agent: the answer to a [`DigestRequest`], one entry per chunk asked for;
/// `None` where the standby cannot tell (a grain pieced together from several records),
/// which the agent treats as different.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    pub request: u64,
    pub disk: DiskId,
    pub first_chunk: u64,
    pub chunks: Vec<Option<ChunkDigest>>,
}

/// What an agent is doing, as DESIGN.md §5 shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicationPhase {
    /// Copying or comparing whole disks (first start, or a tracking gap).
    Full,
    /// Continuous replication.
    Realtime,
}

/// Agent → standby: where replication is; about once a second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub phase: ReplicationPhase,
    /// Bytes of the running full copy or digest compare done, of the total.
    pub full_done: u64,
    pub full_total: u64,
    /// Bytes changed and not yet durable at the standby.
    pub backlog_bytes: u64,
    /// Age of the oldest change the standby does not hold durably.
    pub rpo_lag_ms: u64,
}

/// Standby → agent: make a manual recovery point now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PointRequest {
    /// The standby's id for the request, echoed in the result.
    pub request: u64,
}

/// Agent → standby: the outcome of a [`PointRequest`]: the point, once its barrier is
/// durable, or why none was made (`error`, for the operator).
///
/// Also the control API's answer to `POST /v1/servers/{id}/points` (JSON), hence serde.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointResult {
    pub request: u64,
    pub point: Option<PointId>,
    pub consistent: bool,
    pub freeze_ms: u64,
    pub error: Option<String>,
}

/// Most chunks one [`DigestRequest`] may ask for.
pub const MAX_DIGEST_CHUNKS: u32 = 1024;

/// What went wrong, in a form the other side can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    UnsupportedVersion,
    AuthenticationFailed,
    UnknownServer,
    Malformed,
    StorageFull,
    Internal,
    /// The standby takes no records of this server now: its replication is not started,
    /// was stopped, or the server failed over. The agent keeps tracking and asks again.
    Paused,
}

impl ErrorCode {
    /// Whether retrying the same thing later may succeed (the replicator backs off and
    /// retries these; it stops and reports the others).
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorCode::StorageFull | ErrorCode::Internal)
    }
}

/// Either way: a refusal, with a message for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorMessage {
    pub code: ErrorCode,
    pub message: String,
}

/// Every message of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Hello(Hello),
    Challenge(Challenge),
    Authenticate(Authenticate),
    Welcome(Welcome),
    RegisterServer(RegisterServer),
    Record(SealedRecord),
    Barrier(Barrier),
    Ack(Ack),
    Heartbeat(Heartbeat),
    Error(ErrorMessage),
    DigestRequest(DigestRequest),
    Digests(Digests),
    Progress(Progress),
    PointRequest(PointRequest),
    PointResult(PointResult),
}

/// Longest free-text field (host name, software version, disk name), in bytes.
pub const MAX_TEXT: usize = 256;
/// Longest error message, in bytes.
pub const MAX_ERROR_TEXT: usize = 4096;
/// Most disks one server may register.
pub const MAX_DISKS: usize = 1024;

/// Why a decoded message is refused even though its frame was sound.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("{field} is {len} bytes long (at most {max})")]
    TextTooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{field} contains a control character")]
    ControlCharacter { field: &'static str },
    #[error("server registers {count} disks (at most {MAX_DISKS})")]
    TooManyDisks { count: usize },
    #[error(transparent)]
    DiskName(#[from] crate::ids::DiskNameError),
    #[error("invalid record")]
    Record(#[from] crate::record::HeaderError),
    #[error("expected a record")]
    NotARecord,
    #[error("digest request or answer covers {count} chunks (1 to {MAX_DIGEST_CHUNKS})")]
    DigestCount { count: u64 },
}

fn check_text(field: &'static str, text: &str, max: usize) -> Result<(), MessageError> {
    if text.len() > max {
        return Err(MessageError::TextTooLong {
            field,
            len: text.len(),
            max,
        });
    }
    if text.chars().any(char::is_control) {
        return Err(MessageError::ControlCharacter { field });
    }
    Ok(())
}

fn check_digest_count(count: u64) -> Result<(), MessageError> {
    if count == 0 || count > u64::from(MAX_DIGEST_CHUNKS) {
        return Err(MessageError::DigestCount { count });
    }
    Ok(())
}

impl Message {
    /// Checks what the frame format cannot: text fields are short and printable (they end
    /// up in logs), disk lists are bounded, records are internally consistent.
    pub fn check(&self) -> Result<(), MessageError> {
        match self {
            Message::Hello(h) => check_text("agent version", &h.agent_version, MAX_TEXT),
            Message::RegisterServer(r) => {
                check_text("host name", &r.hostname, MAX_TEXT)?;
                if r.disks.len() > MAX_DISKS {
                    return Err(MessageError::TooManyDisks {
                        count: r.disks.len(),
                    });
                }
                r.disks.iter().try_for_each(|d| {
                    check_text("disk name", &d.name, MAX_TEXT)?;
                    if let Some(v) = d.identity.value() {
                        check_text("disk identity", v, crate::disk_identity::MAX_IDENTITY_LEN)?;
                    }
                    Ok(crate::ids::validate_disk_name(&d.name)?)
                })
            }
            Message::Record(r) => Ok(r.check()?),
            Message::Error(e) => check_text("error message", &e.message, MAX_ERROR_TEXT),
            Message::DigestRequest(r) => check_digest_count(u64::from(r.count)),
            Message::Digests(d) => check_digest_count(d.chunks.len() as u64),
            Message::PointResult(r) => r
                .error
                .as_deref()
                .map_or(Ok(()), |e| check_text("point error", e, MAX_ERROR_TEXT)),
            Message::Challenge(_)
            | Message::Authenticate(_)
            | Message::Welcome(_)
            | Message::Barrier(_)
            | Message::Ack(_)
            | Message::Heartbeat(_)
            | Message::Progress(_)
            | Message::PointRequest(_) => Ok(()),
        }
    }
}
