//! Helpers shared by the wire crate's test binaries.

use ferry_wire::PROTOCOL_VERSION;
use ferry_wire::frame::MAGIC;

/// Builds a frame around `body` with a correct CRC, as an attacker who knows the format
/// (but not the keys) would.
pub(crate) fn reframe(frame_type: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    out.push(frame_type);
    out.push(0);
    out.extend_from_slice(&u32::try_from(body.len()).unwrap().to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out);
    crc.update(body);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// Bytes in the layout `wire/src/body.rs` draws, written from its module doc rather than
/// with its code (so that the doc and the code are checked against each other), and able
/// to lay out what the encoder refuses to.
#[derive(Default)]
pub(crate) struct Body(pub(crate) Vec<u8>);

impl Body {
    pub(crate) fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    pub(crate) fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub(crate) fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub(crate) fn bytes(mut self, v: &[u8]) -> Self {
        self.0.extend_from_slice(v);
        self
    }
    pub(crate) fn text(mut self, v: &str) -> Self {
        self.0
            .extend_from_slice(&u16::try_from(v.len()).unwrap().to_le_bytes());
        self.bytes(v.as_bytes())
    }
}

/// A record frame's body, laid out field by field (whatever the record holds).
pub(crate) fn record_body(r: &ferry_wire::SealedRecord) -> Vec<u8> {
    use ferry_wire::{Compression, RecordKind};
    let h = &r.header;
    let kind = match h.kind {
        RecordKind::Data => 0,
        RecordKind::Zero => 1,
        RecordKind::Discard => 2,
    };
    let compression = match h.compression {
        Compression::None => 0,
        Compression::Zstd => 1,
    };
    let body = Body::default()
        .text(h.server.as_str())
        .u32(h.disk.get())
        .u64(h.offset.get())
        .u64(h.length.get())
        .u64(h.seq.get())
        .u8(kind)
        .u8(compression)
        .bytes(&h.iv)
        .u32(h.payload_len)
        .u32(u32::try_from(r.digests.len()).unwrap());
    let body = r.digests.iter().fold(body, |b, d| b.bytes(d));
    body.bytes(&r.payload).bytes(&r.seal).bytes(&r.mac).0
}
