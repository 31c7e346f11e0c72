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
