//! Frame bodies: the byte layout of every protocol message, owned here and drawn here
//! (frame header: [`crate::frame`]). The standby stores record, barrier and registration
//! frames verbatim in its log, so this layout is also a stored format.
//!
//! Primitives, all integers little-endian and fixed width:
//!
//! ```text
//!  u8 u16 u32 u64   1, 2, 4, 8 bytes
//!  bool             u8: 0 false, 1 true (anything else refused)
//!  [N]              N bytes as they are
//!  text             u16 n, then n bytes of UTF-8
//!  opt<T>           u8 0 (absent) | u8 1, then T
//!  list<T>          u32 count, then count × T
//!  tag              u8 naming an enum's variant (values below; others refused)
//! ```
//!
//! The messages, fields in order (`kind`, `phase`, `code` and `identity` are tags):
//!
//! ```text
//!  Hello           server text · agent_version text · client_nonce [32]
//!  Challenge       server_nonce [32] · standby_proof [32]
//!  Authenticate    agent_proof [32]
//!  Welcome         last_durable u64 · digests bool · paused opt<text>
//!  RegisterServer  hostname text · disks list<disk> · seal [32] · mac [32]
//!    disk          disk u32 · name text · size u64 · identity tag, then text unless 0
//!                  identity: 0 unknown, 1 WWID, 2 serial, 3 device-mapper UUID,
//!                  4 loop backing file
//!  Record          server text · disk u32 · offset u64 · length u64 · seq u64 · kind tag
//!                  · compression tag · iv [16] · payload_len u32 · digests list<[16]>
//!                  · payload [payload_len] · seal [32] · mac [32]
//!                  kind: 0 data, 1 zero, 2 discard; compression: 0 none, 1 zstd
//!  Barrier         server text · seq u64 · point u64 · kind tag · consistent bool
//!                  · unix_time_ms u64 · registration [32] · seal [32] · mac [32]
//!                  kind: 0 scheduled, 1 manual
//!  Ack             durable u64
//!  Heartbeat       unix_time_ms u64
//!  Error           code tag · message text
//!                  code: 0 unsupported version, 1 authentication failed, 2 unknown
//!                  server, 3 malformed, 4 storage full, 5 internal, 6 paused
//!  DigestRequest   request u64 · disk u32 · first_chunk u64 · count u32
//!  Digests         request u64 · disk u32 · first_chunk u64 · chunks list<opt<[32]>>
//!  Progress        phase tag · full_done u64 · full_total u64 · backlog_bytes u64
//!                  · rpo_lag_ms u64          phase: 0 full, 1 realtime
//!  PointRequest    request u64
//!  PointResult     request u64 · point opt<u64> · consistent bool · freeze_ms u64
//!                  · error opt<text>
//! ```
//!
//! A record's header and digests come first, so a reader that wants only them
//! ([`crate::frame::FrameHeader::decode_record_head`]) stops before the payload.
//!
//! Bounds: the frame header caps the whole body ([`crate::frame::MAX_FRAME_BODY`]); inside
//! it, no length or count is trusted beyond the bytes that remain — a text or payload
//! longer than the rest of the body, or a list whose count times its elements' least size
//! exceeds it, is refused before anything is allocated. What a field may hold beyond that
//! (text lengths, printable text, disk counts, record consistency) is
//! [`crate::message::Message::check`]'s job, on decode and on encode alike. A body with
//! bytes after its last field is refused.
//!
//! (Protocol versions up to 5 encoded bodies with bincode 2; they are refused by the
//! frame header's version.)

use crate::auth::{Nonce, Proof};
use crate::digest::GrainDigest;
use crate::disk_identity::DiskIdentity;
use crate::ids::{ByteLen, ByteOffset, DiskId, MAX_NAME_LEN, NameError, PointId, Seq, ServerId};
use crate::message::*;
use crate::record::{Compression, RecordHeader, RecordKind, SealedRecord};

/// Why a body does not decode. Each names the field that was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("{field}: {needed} bytes needed, {available} left in the body")]
    Truncated {
        field: &'static str,
        needed: u64,
        available: usize,
    },
    #[error("{field}: unknown value {tag}")]
    UnknownTag { field: &'static str, tag: u8 },
    #[error("{field} is not UTF-8")]
    NotUtf8 { field: &'static str },
    #[error("{field} is not a valid server name")]
    ServerName {
        field: &'static str,
        #[source]
        source: NameError,
    },
    #[error("{count} bytes after the last field")]
    TrailingBytes { count: usize },
}

/// Why a message cannot be laid out (only a message that [`Message::check`] would refuse).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} is {len} long; its length field holds at most {max}")]
pub struct LayoutError {
    field: &'static str,
    len: usize,
    max: u64,
}

/// Appends fields to a body, in the primitives above. Public so that ferry's other hand
/// layouts (the tracker's state file) are written in the same primitives, not a copy.
#[derive(Debug)]
pub struct Writer<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> Writer<'a> {
    /// Appends to `out`.
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        Self { out }
    }
    pub fn u8(&mut self, v: u8) {
        self.out.push(v);
    }
    pub fn u32(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    pub fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }
    pub fn bytes(&mut self, v: &[u8]) {
        self.out.extend_from_slice(v);
    }
    pub fn text(&mut self, field: &'static str, v: &str) -> Result<(), LayoutError> {
        let len = u16::try_from(v.len()).map_err(|_| LayoutError {
            field,
            len: v.len(),
            max: u64::from(u16::MAX),
        })?;
        self.out.extend_from_slice(&len.to_le_bytes());
        self.bytes(v.as_bytes());
        Ok(())
    }
    pub fn count(&mut self, field: &'static str, n: usize) -> Result<(), LayoutError> {
        let count = u32::try_from(n).map_err(|_| LayoutError {
            field,
            len: n,
            max: u64::from(u32::MAX),
        })?;
        self.u32(count);
        Ok(())
    }
    pub fn opt_text(&mut self, field: &'static str, v: Option<&str>) -> Result<(), LayoutError> {
        self.bool(v.is_some());
        v.map_or(Ok(()), |v| self.text(field, v))
    }
}

/// Takes fields from the front of a body, in the primitives above; never allocates more
/// than the bytes that remain could hold.
#[derive(Debug)]
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Reads `body` from its first byte.
    pub fn new(body: &'a [u8]) -> Self {
        Self { rest: body }
    }
    pub fn take(&mut self, field: &'static str, n: u64) -> Result<&'a [u8], BodyError> {
        let truncated = || BodyError::Truncated {
            field,
            needed: n,
            available: self.rest.len(),
        };
        let n = usize::try_from(n).map_err(|_| truncated())?;
        if n > self.rest.len() {
            return Err(truncated());
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }
    pub fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], BodyError> {
        let bytes = self.take(field, N as u64)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }
    pub fn u8(&mut self, field: &'static str) -> Result<u8, BodyError> {
        Ok(self.array::<1>(field)?[0])
    }
    pub fn u16(&mut self, field: &'static str) -> Result<u16, BodyError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }
    pub fn u32(&mut self, field: &'static str) -> Result<u32, BodyError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }
    pub fn u64(&mut self, field: &'static str) -> Result<u64, BodyError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }
    pub fn bool(&mut self, field: &'static str) -> Result<bool, BodyError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            tag => Err(BodyError::UnknownTag { field, tag }),
        }
    }
    pub fn text(&mut self, field: &'static str) -> Result<String, BodyError> {
        let len = self.u16(field)?;
        let bytes = self.take(field, u64::from(len))?;
        let text = std::str::from_utf8(bytes).map_err(|_| BodyError::NotUtf8 { field })?;
        Ok(text.to_owned())
    }
    pub fn server(&mut self, field: &'static str) -> Result<ServerId, BodyError> {
        let name = self.text(field)?;
        ServerId::new(&name).map_err(|source| BodyError::ServerName { field, source })
    }
    /// A list's count, refused when even elements of `least` bytes each could not fit in
    /// what remains (so the caller may allocate `count` elements).
    pub fn count(&mut self, field: &'static str, least: u64) -> Result<usize, BodyError> {
        let count = self.u32(field)?;
        let needed = u64::from(count) * least;
        if needed > self.rest.len() as u64 {
            return Err(BodyError::Truncated {
                field,
                needed,
                available: self.rest.len(),
            });
        }
        Ok(count as usize)
    }
    pub fn opt<T>(
        &mut self,
        field: &'static str,
        value: impl FnOnce(&mut Self) -> Result<T, BodyError>,
    ) -> Result<Option<T>, BodyError> {
        if self.bool(field)? {
            value(self).map(Some)
        } else {
            Ok(None)
        }
    }
    pub fn finish(&self) -> Result<(), BodyError> {
        match self.rest.len() {
            0 => Ok(()),
            count => Err(BodyError::TrailingBytes { count }),
        }
    }
}

/// Maps an enum to its tag and back, as the module doc lists them.
macro_rules! tags {
    ($name:ident, $field:literal, $to:ident, $from:ident: $($variant:path = $tag:literal),+ $(,)?) => {
        fn $to(v: $name) -> u8 {
            match v { $($variant => $tag),+ }
        }
        fn $from(r: &mut Reader<'_>) -> Result<$name, BodyError> {
            match r.u8($field)? {
                $($tag => Ok($variant),)+
                tag => Err(BodyError::UnknownTag { field: $field, tag }),
            }
        }
    };
}

tags!(RecordKind, "record kind", kind_tag, read_kind:
    RecordKind::Data = 0, RecordKind::Zero = 1, RecordKind::Discard = 2);
tags!(Compression, "compression", compression_tag, read_compression:
    Compression::None = 0, Compression::Zstd = 1);
tags!(PointKind, "point kind", point_kind_tag, read_point_kind:
    PointKind::Scheduled = 0, PointKind::Manual = 1);
tags!(ReplicationPhase, "phase", phase_tag, read_phase:
    ReplicationPhase::Full = 0, ReplicationPhase::Realtime = 1);
tags!(ErrorCode, "error code", code_tag, read_code:
    ErrorCode::UnsupportedVersion = 0,
    ErrorCode::AuthenticationFailed = 1,
    ErrorCode::UnknownServer = 2,
    ErrorCode::Malformed = 3,
    ErrorCode::StorageFull = 4,
    ErrorCode::Internal = 5,
    ErrorCode::Paused = 6,
);

fn write_identity(w: &mut Writer<'_>, identity: &DiskIdentity) -> Result<(), LayoutError> {
    let (tag, value) = match identity {
        DiskIdentity::Unknown => (0, None),
        DiskIdentity::Wwid(v) => (1, Some(v)),
        DiskIdentity::Serial(v) => (2, Some(v)),
        DiskIdentity::DmUuid(v) => (3, Some(v)),
        DiskIdentity::LoopBackingFile(v) => (4, Some(v)),
    };
    w.u8(tag);
    value.map_or(Ok(()), |v| w.text("disk identity", v))
}

fn read_identity(r: &mut Reader<'_>) -> Result<DiskIdentity, BodyError> {
    const FIELD: &str = "disk identity";
    Ok(match r.u8(FIELD)? {
        0 => DiskIdentity::Unknown,
        1 => DiskIdentity::Wwid(r.text(FIELD)?),
        2 => DiskIdentity::Serial(r.text(FIELD)?),
        3 => DiskIdentity::DmUuid(r.text(FIELD)?),
        4 => DiskIdentity::LoopBackingFile(r.text(FIELD)?),
        tag => return Err(BodyError::UnknownTag { field: FIELD, tag }),
    })
}

/// The least bytes one registered disk takes (disk, empty name, size, identity tag).
const DISK_LEAST: u64 = 4 + 2 + 8 + 1;

fn write_record_head(
    w: &mut Writer<'_>,
    h: &RecordHeader,
    digests: &[GrainDigest],
) -> Result<(), LayoutError> {
    w.text("server", h.server.as_str())?;
    w.u32(h.disk.get());
    w.u64(h.offset.get());
    w.u64(h.length.get());
    w.u64(h.seq.get());
    w.u8(kind_tag(h.kind));
    w.u8(compression_tag(h.compression));
    w.bytes(&h.iv);
    w.u32(h.payload_len);
    w.count("grain digests", digests.len())?;
    digests.iter().for_each(|d| w.bytes(d));
    Ok(())
}

fn read_record_head(r: &mut Reader<'_>) -> Result<(RecordHeader, Vec<GrainDigest>), BodyError> {
    let header = RecordHeader {
        server: r.server("server")?,
        disk: DiskId::new(r.u32("disk")?),
        offset: ByteOffset::new(r.u64("offset")?),
        length: ByteLen::new(r.u64("length")?),
        seq: Seq::new(r.u64("seq")?),
        kind: read_kind(r)?,
        compression: read_compression(r)?,
        iv: r.array("iv")?,
        payload_len: r.u32("payload length")?,
    };
    let count = r.count("grain digests", 16)?;
    let digests = (0..count)
        .map(|_| r.array("grain digest"))
        .collect::<Result<_, _>>()?;
    Ok((header, digests))
}

/// Most bytes a record's body takes before its digests: the header fields (a server
/// name of at most [`MAX_NAME_LEN`] bytes) and the digest count.
pub const RECORD_HEAD_MAX_LEN: usize = 2 + MAX_NAME_LEN + 4 + 8 + 8 + 8 + 1 + 1 + 16 + 4 + 4;

/// Appends `message`'s body (layout in the module doc) to `out`.
pub(crate) fn encode(message: &Message, out: &mut Vec<u8>) -> Result<(), LayoutError> {
    let w = &mut Writer::new(out);
    match message {
        Message::Hello(m) => {
            w.text("server", m.server.as_str())?;
            w.text("agent version", &m.agent_version)?;
            w.bytes(&m.client_nonce.0);
        }
        Message::Challenge(m) => {
            w.bytes(&m.server_nonce.0);
            w.bytes(&m.standby_proof.0);
        }
        Message::Authenticate(m) => w.bytes(&m.agent_proof.0),
        Message::Welcome(m) => {
            w.u64(m.last_durable.get());
            w.bool(m.digests);
            w.opt_text("paused", m.paused.as_deref())?;
        }
        Message::RegisterServer(m) => {
            w.text("host name", &m.hostname)?;
            w.count("disks", m.disks.len())?;
            for d in &m.disks {
                w.u32(d.disk.get());
                w.text("disk name", &d.name)?;
                w.u64(d.size.get());
                write_identity(w, &d.identity)?;
            }
            w.bytes(&m.seal);
            w.bytes(&m.mac);
        }
        Message::Record(m) => {
            write_record_head(w, &m.header, &m.digests)?;
            w.bytes(&m.payload);
            w.bytes(&m.seal);
            w.bytes(&m.mac);
        }
        Message::Barrier(m) => {
            w.text("server", m.server.as_str())?;
            w.u64(m.seq.get());
            w.u64(m.point.get());
            w.u8(point_kind_tag(m.kind));
            w.bool(m.consistent);
            w.u64(m.unix_time_ms);
            w.bytes(&m.registration);
            w.bytes(&m.seal);
            w.bytes(&m.mac);
        }
        Message::Ack(m) => w.u64(m.durable.get()),
        Message::Heartbeat(m) => w.u64(m.unix_time_ms),
        Message::Error(m) => {
            w.u8(code_tag(m.code));
            w.text("error message", &m.message)?;
        }
        Message::DigestRequest(m) => {
            w.u64(m.request);
            w.u32(m.disk.get());
            w.u64(m.first_chunk);
            w.u32(m.count);
        }
        Message::Digests(m) => {
            w.u64(m.request);
            w.u32(m.disk.get());
            w.u64(m.first_chunk);
            w.count("chunk digests", m.chunks.len())?;
            for chunk in &m.chunks {
                w.bool(chunk.is_some());
                chunk.iter().for_each(|c| w.bytes(c));
            }
        }
        Message::Progress(m) => {
            w.u8(phase_tag(m.phase));
            w.u64(m.full_done);
            w.u64(m.full_total);
            w.u64(m.backlog_bytes);
            w.u64(m.rpo_lag_ms);
        }
        Message::PointRequest(m) => w.u64(m.request),
        Message::PointResult(m) => {
            w.u64(m.request);
            w.bool(m.point.is_some());
            m.point.iter().for_each(|p| w.u64(p.get()));
            w.bool(m.consistent);
            w.u64(m.freeze_ms);
            w.opt_text("point error", m.error.as_deref())?;
        }
    }
    Ok(())
}

/// Decodes a whole body of a frame of type `frame_type`.
pub(crate) fn decode(
    frame_type: crate::frame::FrameType,
    body: &[u8],
) -> Result<Message, BodyError> {
    use crate::frame::FrameType as T;
    let r = &mut Reader::new(body);
    let message = match frame_type {
        T::Hello => Message::Hello(Hello {
            server: r.server("server")?,
            agent_version: r.text("agent version")?,
            client_nonce: Nonce(r.array("client nonce")?),
        }),
        T::Challenge => Message::Challenge(Challenge {
            server_nonce: Nonce(r.array("server nonce")?),
            standby_proof: Proof(r.array("standby proof")?),
        }),
        T::Authenticate => Message::Authenticate(Authenticate {
            agent_proof: Proof(r.array("agent proof")?),
        }),
        T::Welcome => Message::Welcome(Welcome {
            last_durable: Seq::new(r.u64("last durable")?),
            digests: r.bool("digests")?,
            paused: r.opt("paused", |r| r.text("paused"))?,
        }),
        T::RegisterServer => {
            let hostname = r.text("host name")?;
            let count = r.count("disks", DISK_LEAST)?;
            let disks = (0..count)
                .map(|_| {
                    Ok(DiskInfo {
                        disk: DiskId::new(r.u32("disk")?),
                        name: r.text("disk name")?,
                        size: ByteLen::new(r.u64("disk size")?),
                        identity: read_identity(r)?,
                    })
                })
                .collect::<Result<_, BodyError>>()?;
            Message::RegisterServer(RegisterServer {
                hostname,
                disks,
                seal: r.array("seal")?,
                mac: r.array("mac")?,
            })
        }
        T::Record => {
            let (header, digests) = read_record_head(r)?;
            let payload = r.take("payload", u64::from(header.payload_len))?.to_vec();
            Message::Record(SealedRecord {
                header,
                digests,
                payload,
                seal: r.array("seal")?,
                mac: r.array("mac")?,
            })
        }
        T::Barrier => Message::Barrier(Barrier {
            server: r.server("server")?,
            seq: Seq::new(r.u64("seq")?),
            point: PointId::new(r.u64("point")?),
            kind: read_point_kind(r)?,
            consistent: r.bool("consistent")?,
            unix_time_ms: r.u64("time")?,
            registration: r.array("registration")?,
            seal: r.array("seal")?,
            mac: r.array("mac")?,
        }),
        T::Ack => Message::Ack(Ack {
            durable: Seq::new(r.u64("durable")?),
        }),
        T::Heartbeat => Message::Heartbeat(Heartbeat {
            unix_time_ms: r.u64("time")?,
        }),
        T::Error => Message::Error(ErrorMessage {
            code: read_code(r)?,
            message: r.text("error message")?,
        }),
        T::DigestRequest => Message::DigestRequest(DigestRequest {
            request: r.u64("request")?,
            disk: DiskId::new(r.u32("disk")?),
            first_chunk: r.u64("first chunk")?,
            count: r.u32("count")?,
        }),
        T::Digests => {
            let (request, disk, first_chunk) = (
                r.u64("request")?,
                DiskId::new(r.u32("disk")?),
                r.u64("first chunk")?,
            );
            let count = r.count("chunk digests", 1)?;
            let chunks = (0..count)
                .map(|_| r.opt("chunk digest", |r| r.array("chunk digest")))
                .collect::<Result<_, _>>()?;
            Message::Digests(Digests {
                request,
                disk,
                first_chunk,
                chunks,
            })
        }
        T::Progress => Message::Progress(Progress {
            phase: read_phase(r)?,
            full_done: r.u64("full done")?,
            full_total: r.u64("full total")?,
            backlog_bytes: r.u64("backlog")?,
            rpo_lag_ms: r.u64("rpo lag")?,
        }),
        T::PointRequest => Message::PointRequest(PointRequest {
            request: r.u64("request")?,
        }),
        T::PointResult => Message::PointResult(PointResult {
            request: r.u64("request")?,
            point: r.opt("point", |r| r.u64("point").map(PointId::new))?,
            consistent: r.bool("consistent")?,
            freeze_ms: r.u64("freeze time")?,
            error: r.opt("point error", |r| r.text("point error"))?,
        }),
    };
    r.finish()?;
    Ok(message)
}

/// Decodes a record's header and grain digests from the first bytes of its body.
pub(crate) fn decode_record_head(
    prefix: &[u8],
) -> Result<(RecordHeader, Vec<GrainDigest>), BodyError> {
    read_record_head(&mut Reader::new(prefix))
}
