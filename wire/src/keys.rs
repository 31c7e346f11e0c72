//! Keys: one 256-bit master key per site pair, which never leaves the operator, and what
//! each party is given from it. HKDF-SHA256 (salt [`HKDF_SALT`]) derives every key:
//!
//! ```text
//! pair master key (operator)
//!  ├─ recovery secret of server S  = expand("ferry recovery secret" ‖ S)   (host S; a recovery)
//!  │    ├─ DataKey    AES-256-CTR of S's payloads
//!  │    ├─ SealKey    the end-to-end tag of S's records, barriers and registrations
//!  │    └─ DigestKey  S's grain digests (digest catch-up)
//!  └─ ingest root                  = expand("ferry ingest root")           (every standby)
//!       └─ ingest secret of S      = expand("ferry ingest secret" ‖ S)     (host S)
//!            ├─ MacKey   the outer (ingest) MAC of S's frames
//!            └─ AuthKey  S's challenge–response
//! ```
//!
//! | holder | key file | can |
//! |---|---|---|
//! | operator | pair key | everything |
//! | protected host S | host key: S, recovery secret S, ingest secret S | seal, log in and write for S only |
//! | standby | standby key: the ingest root | check and store every server's frames; never read or forge one |
//! | a recovery of S | recovery key: S, recovery secret S (or the pair key) | read and verify S's replica |
//!
//! A standby holds the ingest root, so it can make any server's *ingest* MAC, but no
//! [`SealKey`]: a record, barrier or registration it makes fails the end-to-end check
//! every rebuild applies (DESIGN.md I8). One host's key derives nothing of another's.
//!
//! Key file text (written by `ferry keygen`); hex is 64 digits, either case:
//!
//! ```text
//! pair key       <hex>                         (one line: the master key)
//! host key       ferry host key v2             recovery key   ferry recovery key v2
//!                server <server id>                           server <server id>
//!                recovery <hex>                               recovery <hex>
//!                ingest <hex>
//! standby key    ferry standby key v2
//!                ingest-root <hex>
//! ```
//!
//! Lines end with one newline; nothing else is allowed. The pair key's format is that of
//! ferry 0.1's single site key, which agents and standbys no longer take: given to them,
//! it is refused with the command that derives what they need ([`KeyFile::expect`]).
//!
//! No key type prints its bytes (`Debug` shows `<redacted>`), and every key is zeroized
//! when dropped. Not covered: the internal state of the HKDF and HMAC instances that use a
//! key (the `hkdf`/`hmac` crates do not zeroize it), which lives only for one call.

use crate::ids::ServerId;
use hkdf::Hkdf;
use rand_core::{CryptoRng, RngCore};
use sha2::Sha256;
use std::fmt;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Length of every key, in bytes.
pub const KEY_LEN: usize = 32;

/// HKDF salt; changing it changes every derived key (a new key format version).
pub const HKDF_SALT: &[u8] = b"ferry key derivation v2";

/// Why key text was refused. Messages never include key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key has {found} hex digits; a ferry key has exactly {} (32 bytes)", KEY_LEN * 2)]
    WrongLength { found: usize },
    #[error("key contains a character that is not a hex digit at position {position}")]
    NotHex { position: usize },
    #[error("line {line} should be `{expected}`")]
    BadLine { line: usize, expected: &'static str },
    #[error("the key file names server {0:?}, which is not a valid server id")]
    BadServer(String),
    #[error("the key file has more lines than a {kind} holds")]
    TrailingText { kind: &'static str },
    #[error(
        "not a ferry key file (its first line is neither 64 hex digits nor a ferry key header)"
    )]
    UnknownKind,
    #[error("{found} given where {wanted} is needed{hint}")]
    WrongKind {
        found: &'static str,
        wanted: &'static str,
        hint: String,
    },
    #[error("the {kind} is for server {found}, not {wanted}")]
    WrongServer {
        kind: &'static str,
        found: ServerId,
        wanted: ServerId,
    },
}

macro_rules! secret_key {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Zeroize, ZeroizeOnDrop)]
        pub struct $name([u8; KEY_LEN]);

        impl $name {
            /// Takes the key bytes; the caller zeroizes its own copy if it keeps one.
            pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
                Self(bytes)
            }

            /// The key bytes, for handing to a cipher or MAC. Never log them.
            pub fn expose(&self) -> &[u8; KEY_LEN] {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "(<redacted>)"))
            }
        }
    };
}

secret_key!(
    /// The site pair's master key. Only used to derive the other keys; stays with the
    /// operator.
    MasterKey
);
secret_key!(
    /// One server's recovery secret: its data, seal and digest keys derive from it.
    RecoverySecret
);
secret_key!(
    /// What a standby holds: every server's ingest secret derives from it.
    IngestRoot
);
secret_key!(
    /// One server's ingest secret: its ingest MAC and auth keys derive from it.
    IngestSecret
);
secret_key!(
    /// Encrypts extent payloads (AES-256-CTR). Needed to seal and to rebuild, nowhere else.
    DataKey
);
secret_key!(
    /// The end-to-end tag (keyed BLAKE3) of records, barriers and registrations: only the
    /// server's agent and a recovery hold it, so the standby can store them but neither
    /// make nor alter one that a rebuild accepts.
    SealKey
);
secret_key!(
    /// The outer (ingest) MAC (keyed BLAKE3) of what the agent sends: the standby checks
    /// it before it stores anything, so garbage and other servers' frames are refused.
    MacKey
);
secret_key!(
    /// Proves an agent and a standby to each other (HMAC-SHA256 challenge–response).
    AuthKey
);
secret_key!(
    /// Keys the per-grain digests that records carry and digest catch-up compares
    /// ([`crate::digest`]). Only the agent (and rebuild) hold it: a standby that had it could
    /// confirm guesses about the data.
    DigestKey
);

/// Expands `label ‖ name` (name length-prefixed) from `secret` into a new key.
fn expand<K: From<[u8; KEY_LEN]>>(secret: &[u8; KEY_LEN], label: &[u8], name: &str) -> K {
    let hk = Hkdf::<Sha256>::new(Some(HKDF_SALT), secret);
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    // A ServerId is at most 60 bytes, so its length fits one byte.
    let len = [u8::try_from(name.len()).unwrap_or(u8::MAX)];
    hk.expand_multi_info(&[label, &len, name.as_bytes()], out.as_mut())
        .unwrap_or_else(|_| unreachable!("32 bytes is a valid HKDF-SHA256 output length"));
    K::from(*out)
}

macro_rules! from_bytes {
    ($($name:ident),*) => {$(
        impl From<[u8; KEY_LEN]> for $name {
            fn from(bytes: [u8; KEY_LEN]) -> Self {
                Self(bytes)
            }
        }
    )*};
}
from_bytes!(
    RecoverySecret,
    IngestRoot,
    IngestSecret,
    DataKey,
    SealKey,
    MacKey,
    AuthKey,
    DigestKey
);

impl MasterKey {
    /// A new random master key.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut bytes = [0u8; KEY_LEN];
        rng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// Pair key file text for this key: 64 hex digits and a newline.
    pub fn to_text(&self) -> Zeroizing<String> {
        let mut text = hex_text(&self.0);
        text.push('\n');
        text
    }

    /// The recovery key of `server` (what reads and verifies its replica).
    pub fn recovery_key(&self, server: &ServerId) -> RecoveryKey {
        RecoveryKey {
            server: server.clone(),
            secret: expand(&self.0, b"ferry recovery secret", server.as_str()),
        }
    }

    /// What a standby holds.
    pub fn standby_key(&self) -> StandbyKey {
        StandbyKey {
            root: expand(&self.0, b"ferry ingest root", ""),
        }
    }

    /// What protected host `server` holds.
    pub fn host_key(&self, server: &ServerId) -> HostKey {
        HostKey {
            recovery: self.recovery_key(server),
            ingest: self.standby_key().ingest_secret(server),
        }
    }
}

/// A server's recovery key: its id and recovery secret.
#[derive(Debug, Clone)]
pub struct RecoveryKey {
    pub server: ServerId,
    pub secret: RecoverySecret,
}

impl RecoveryKey {
    /// The server's data, seal and digest keys.
    pub fn keys(&self) -> RecoveryKeys {
        let name = self.server.as_str();
        RecoveryKeys {
            server: self.server.clone(),
            data: expand(&self.secret.0, b"ferry data key", name),
            seal: expand(&self.secret.0, b"ferry seal key", name),
            digest: expand(&self.secret.0, b"ferry digest key", name),
        }
    }
}

/// The keys that read and verify one server's replica (and seal it, at its agent).
#[derive(Debug, Clone)]
pub struct RecoveryKeys {
    pub server: ServerId,
    pub data: DataKey,
    pub seal: SealKey,
    pub digest: DigestKey,
}

/// What a standby holds: the ingest root.
#[derive(Debug, Clone)]
pub struct StandbyKey {
    pub root: IngestRoot,
}

impl StandbyKey {
    fn ingest_secret(&self, server: &ServerId) -> IngestSecret {
        expand(&self.root.0, b"ferry ingest secret", server.as_str())
    }

    /// The ingest MAC and auth keys of `server`.
    pub fn ingest_keys(&self, server: &ServerId) -> IngestKeys {
        ingest_keys(server, &self.ingest_secret(server))
    }

    /// The host key of `server`, made from this standby key and the server's recovery
    /// key: what a reverse agent (on a failed-over instance) runs with.
    pub fn host_key(&self, recovery: RecoveryKey) -> HostKey {
        HostKey {
            ingest: self.ingest_secret(&recovery.server),
            recovery,
        }
    }
}

fn ingest_keys(server: &ServerId, secret: &IngestSecret) -> IngestKeys {
    IngestKeys {
        mac: expand(&secret.0, b"ferry ingest mac", server.as_str()),
        auth: expand(&secret.0, b"ferry auth key", server.as_str()),
    }
}

/// One server's ingest MAC and auth keys (an agent's and the standby's common ground).
#[derive(Debug, Clone)]
pub struct IngestKeys {
    pub mac: MacKey,
    pub auth: AuthKey,
}

/// What one protected host holds.
#[derive(Debug, Clone)]
pub struct HostKey {
    pub recovery: RecoveryKey,
    pub ingest: IngestSecret,
}

impl HostKey {
    pub fn server(&self) -> &ServerId {
        &self.recovery.server
    }

    /// Every key the host's agent uses.
    pub fn keys(&self) -> HostKeys {
        HostKeys {
            recovery: self.recovery.keys(),
            ingest: ingest_keys(&self.recovery.server, &self.ingest),
        }
    }
}

/// Every key one host's agent uses.
#[derive(Debug, Clone)]
pub struct HostKeys {
    pub recovery: RecoveryKeys,
    pub ingest: IngestKeys,
}

/// A key file's content, of any kind.
#[derive(Debug)]
pub enum KeyFile {
    Pair(MasterKey),
    Host(HostKey),
    Recovery(RecoveryKey),
    Standby(StandbyKey),
}

const HOST_HEADER: &str = "ferry host key v2";
const RECOVERY_HEADER: &str = "ferry recovery key v2";
const STANDBY_HEADER: &str = "ferry standby key v2";

/// A 64-hex-digit key line.
fn parse_hex(digits: &str) -> Result<[u8; KEY_LEN], KeyError> {
    if digits.len() != KEY_LEN * 2 {
        return Err(KeyError::WrongLength {
            found: digits.len(),
        });
    }
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    for (i, pair) in digits.as_bytes().chunks_exact(2).enumerate() {
        let hi = hex_value(pair[0]).ok_or(KeyError::NotHex { position: 2 * i })?;
        let lo = hex_value(pair[1]).ok_or(KeyError::NotHex {
            position: 2 * i + 1,
        })?;
        key[i] = hi << 4 | lo;
    }
    Ok(*key)
}

fn hex_text(bytes: &[u8; KEY_LEN]) -> Zeroizing<String> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = Zeroizing::new(String::with_capacity(KEY_LEN * 2 + 1));
    for &b in bytes {
        text.push(char::from(HEX[usize::from(b >> 4)]));
        text.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    text
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The lines of a key file after its header, each taken as `field value`.
struct Lines<'a> {
    lines: std::iter::Enumerate<std::str::Split<'a, char>>,
    kind: &'static str,
}

impl<'a> Lines<'a> {
    fn field(&mut self, field: &'static str, expected: &'static str) -> Result<&'a str, KeyError> {
        let (i, line) = self
            .lines
            .next()
            .ok_or(KeyError::BadLine { line: 0, expected })?;
        line.strip_prefix(field)
            .and_then(|rest| rest.strip_prefix(' '))
            .ok_or(KeyError::BadLine {
                line: i + 1,
                expected,
            })
    }

    fn server(&mut self) -> Result<ServerId, KeyError> {
        let name = self.field("server", "server <server id>")?;
        ServerId::new(name).map_err(|_| KeyError::BadServer(name.to_owned()))
    }

    fn end(mut self) -> Result<(), KeyError> {
        match self.lines.next() {
            None => Ok(()),
            Some(_) => Err(KeyError::TrailingText { kind: self.kind }),
        }
    }
}

impl KeyFile {
    /// What this kind of file is called in messages.
    pub fn kind(&self) -> &'static str {
        match self {
            KeyFile::Pair(_) => "a site-pair master key",
            KeyFile::Host(_) => "a host key",
            KeyFile::Recovery(_) => "a recovery key",
            KeyFile::Standby(_) => "a standby key",
        }
    }

    /// Parses key file text (see the module doc).
    pub fn from_text(text: &str) -> Result<Self, KeyError> {
        let body = text.strip_suffix('\n').unwrap_or(text);
        let mut split = body.split('\n');
        let first = split.next().unwrap_or("");
        let kind = match first {
            HOST_HEADER => "host key",
            RECOVERY_HEADER => "recovery key",
            STANDBY_HEADER => "standby key",
            _ if !first.starts_with("ferry ") => {
                let key = parse_hex(first).map_err(|e| match e {
                    KeyError::WrongLength { .. } | KeyError::NotHex { .. }
                        if first.contains(' ') =>
                    {
                        KeyError::UnknownKind
                    }
                    other => other,
                })?;
                if split.next().is_some() {
                    return Err(KeyError::TrailingText {
                        kind: "site-pair master key",
                    });
                }
                return Ok(KeyFile::Pair(MasterKey(key)));
            }
            _ => return Err(KeyError::UnknownKind),
        };
        let mut lines = Lines {
            lines: split.enumerate(),
            kind,
        };
        let file = match first {
            HOST_HEADER => {
                let server = lines.server()?;
                let recovery = parse_hex(lines.field("recovery", "recovery <64 hex digits>")?)?;
                let ingest = parse_hex(lines.field("ingest", "ingest <64 hex digits>")?)?;
                KeyFile::Host(HostKey {
                    recovery: RecoveryKey {
                        server,
                        secret: RecoverySecret(recovery),
                    },
                    ingest: IngestSecret(ingest),
                })
            }
            RECOVERY_HEADER => {
                let server = lines.server()?;
                let secret = parse_hex(lines.field("recovery", "recovery <64 hex digits>")?)?;
                KeyFile::Recovery(RecoveryKey {
                    server,
                    secret: RecoverySecret(secret),
                })
            }
            _ => {
                let root = parse_hex(lines.field("ingest-root", "ingest-root <64 hex digits>")?)?;
                KeyFile::Standby(StandbyKey {
                    root: IngestRoot(root),
                })
            }
        };
        lines.end()?;
        Ok(file)
    }

    /// The file's text (see the module doc).
    pub fn to_text(&self) -> Zeroizing<String> {
        let mut text = Zeroizing::new(String::new());
        let mut line = |parts: &[&str]| {
            text.push_str(&parts.join(" "));
            text.push('\n');
        };
        match self {
            KeyFile::Pair(k) => return k.to_text(),
            KeyFile::Host(k) => {
                line(&[HOST_HEADER]);
                line(&["server", k.server().as_str()]);
                line(&["recovery", &hex_text(&k.recovery.secret.0)]);
                line(&["ingest", &hex_text(&k.ingest.0)]);
            }
            KeyFile::Recovery(k) => {
                line(&[RECOVERY_HEADER]);
                line(&["server", k.server.as_str()]);
                line(&["recovery", &hex_text(&k.secret.0)]);
            }
            KeyFile::Standby(k) => {
                line(&[STANDBY_HEADER]);
                line(&["ingest-root", &hex_text(&k.root.0)]);
            }
        }
        text
    }

    /// The host key, for an agent; any other kind is refused with what to run instead.
    pub fn into_host(self) -> Result<HostKey, KeyError> {
        match self {
            KeyFile::Host(k) => Ok(k),
            other => Err(other.wrong("a host key", HOST_HINT)),
        }
    }

    /// The standby key, for a standby; any other kind is refused with what to run instead.
    pub fn into_standby(self) -> Result<StandbyKey, KeyError> {
        match self {
            KeyFile::Standby(k) => Ok(k),
            other => Err(other.wrong("a standby key", STANDBY_HINT)),
        }
    }

    /// The recovery key of `server`: from the pair key, or a host or recovery key of that
    /// server. A standby key reads nothing.
    pub fn recovery_for(&self, server: &ServerId) -> Result<RecoveryKey, KeyError> {
        let (kind, key) = match self {
            KeyFile::Pair(m) => return Ok(m.recovery_key(server)),
            KeyFile::Host(k) => ("host key", &k.recovery),
            KeyFile::Recovery(k) => ("recovery key", k),
            KeyFile::Standby(_) => {
                return Err(self.wrong(
                    "the pair key or the server's recovery key",
                    "; a standby key cannot read a replica",
                ));
            }
        };
        if &key.server != server {
            return Err(KeyError::WrongServer {
                kind,
                found: key.server.clone(),
                wanted: server.clone(),
            });
        }
        Ok(key.clone())
    }

    fn wrong(&self, wanted: &'static str, hint: &str) -> KeyError {
        KeyError::WrongKind {
            found: self.kind(),
            wanted,
            hint: hint.to_owned(),
        }
    }
}

const HOST_HINT: &str = " (ferry 0.2 gives each host its own key: make it with `ferry keygen \
                         --from pair.key --host SERVER --out SERVER.key` and keep the pair \
                         key with the operator)";
const STANDBY_HINT: &str = " (a standby holds only ingest keys: make it with `ferry keygen \
                            --from pair.key --standby --out standby.key` and keep the pair \
                            key with the operator)";

#[cfg(test)]
mod tests {
    use super::*;

    fn master(byte: u8) -> MasterKey {
        MasterKey::from_bytes([byte; KEY_LEN])
    }

    fn id(name: &str) -> ServerId {
        ServerId::new(name).unwrap()
    }

    #[test]
    fn derived_keys_differ_from_each_other_across_servers_and_from_the_master() {
        let m = master(7);
        let standby = m.standby_key();
        let a = m.host_key(&id("web-1")).keys();
        let b = m.host_key(&id("web-2")).keys();
        let all = [
            m.expose(),
            standby.root.expose(),
            a.recovery.data.expose(),
            a.recovery.seal.expose(),
            a.recovery.digest.expose(),
            a.ingest.mac.expose(),
            a.ingest.auth.expose(),
            b.recovery.data.expose(),
            b.recovery.seal.expose(),
            b.recovery.digest.expose(),
            b.ingest.mac.expose(),
            b.ingest.auth.expose(),
        ];
        for (i, x) in all.iter().enumerate() {
            for y in &all[i + 1..] {
                assert_ne!(x, y, "two derived keys are equal");
            }
        }
        let again = master(7).host_key(&id("web-1")).keys();
        assert_eq!(again.ingest.mac.expose(), a.ingest.mac.expose());
        assert_ne!(
            master(8)
                .host_key(&id("web-1"))
                .keys()
                .recovery
                .data
                .expose(),
            a.recovery.data.expose()
        );
    }

    /// The derivation must not drift: a fixed master key gives these exact keys. (If this
    /// fails after an intended change, bump [`HKDF_SALT`]'s version and the key files'.)
    #[test]
    fn derivation_matches_golden_vectors() {
        let k = master(0x42).host_key(&id("web-1")).keys();
        let got = [
            hex_text(k.recovery.data.expose()),
            hex_text(k.recovery.seal.expose()),
            hex_text(k.ingest.mac.expose()),
            hex_text(k.ingest.auth.expose()),
        ];
        let got: Vec<&str> = got.iter().map(|t| &t[..16]).collect();
        assert_eq!(
            got,
            [
                "2499a5043d282940",
                "c411ad25e73a240d",
                "50992e1df98dfb45",
                "ff937605f55d0b3f"
            ],
            "derived keys drifted"
        );
    }

    #[test]
    fn the_standby_derives_the_hosts_ingest_keys_and_nothing_else() {
        let m = master(9);
        let host = m.host_key(&id("db")).keys();
        let standby = m.standby_key().ingest_keys(&id("db"));
        assert_eq!(standby.mac.expose(), host.ingest.mac.expose());
        assert_eq!(standby.auth.expose(), host.ingest.auth.expose());
        // Rebuilt from the standby key and the recovery key: the same host key.
        let rebuilt = m.standby_key().host_key(m.recovery_key(&id("db"))).keys();
        assert_eq!(rebuilt.ingest.mac.expose(), host.ingest.mac.expose());
        assert_eq!(rebuilt.recovery.seal.expose(), host.recovery.seal.expose());
    }

    #[test]
    fn every_kind_round_trips_through_text() {
        let m = MasterKey::generate(&mut rand_core::OsRng);
        let files = [
            KeyFile::Pair(m.clone()),
            KeyFile::Host(m.host_key(&id("web-1"))),
            KeyFile::Recovery(m.recovery_key(&id("web-1"))),
            KeyFile::Standby(m.standby_key()),
        ];
        for file in files {
            let text = file.to_text();
            let back = KeyFile::from_text(&text).unwrap();
            assert_eq!(back.kind(), file.kind());
            assert_eq!(back.to_text().as_str(), text.as_str());
            let upper = KeyFile::from_text(&text.to_uppercase().replace("FERRY", "ferry"));
            // Upper-case hex is accepted in the key lines (headers are lower case).
            if matches!(file, KeyFile::Pair(_)) {
                assert_eq!(upper.unwrap().to_text().as_str(), text.as_str());
            }
        }
    }

    #[test]
    fn bad_text_is_refused_naming_the_problem() {
        let m = master(3);
        let pair = m.to_text();
        assert_eq!(
            KeyFile::from_text(&pair[..62]).unwrap_err(),
            KeyError::WrongLength { found: 62 }
        );
        let mut bad = pair[..64].to_owned();
        bad.replace_range(9..10, "g");
        assert_eq!(
            KeyFile::from_text(&bad).unwrap_err(),
            KeyError::NotHex { position: 9 }
        );
        assert_eq!(
            KeyFile::from_text(&format!("{}\n\n", &pair[..64])).unwrap_err(),
            KeyError::TrailingText {
                kind: "site-pair master key"
            }
        );
        let host = KeyFile::Host(m.host_key(&id("web-1"))).to_text();
        let truncated: String = host.lines().take(3).map(|l| format!("{l}\n")).collect();
        assert!(matches!(
            KeyFile::from_text(&truncated).unwrap_err(),
            KeyError::BadLine { line: 0, .. }
        ));
        let renamed = host.replace("server web-1", "server 1web");
        assert_eq!(
            KeyFile::from_text(&renamed).unwrap_err(),
            KeyError::BadServer("1web".into())
        );
        assert_eq!(
            KeyFile::from_text("ferry pair key v9\n").unwrap_err(),
            KeyError::UnknownKind
        );
        assert_eq!(
            KeyFile::from_text(&format!("{}extra\n", host.as_str())).unwrap_err(),
            KeyError::TrailingText { kind: "host key" }
        );
    }

    #[test]
    fn a_key_of_the_wrong_kind_or_server_is_refused_with_what_to_do() {
        let m = master(4);
        let err = KeyFile::Pair(m.clone())
            .into_host()
            .unwrap_err()
            .to_string();
        assert!(err.contains("ferry keygen --from pair.key --host"), "{err}");
        let err = KeyFile::Pair(m.clone())
            .into_standby()
            .unwrap_err()
            .to_string();
        assert!(err.contains("--standby"), "{err}");
        let host = KeyFile::Host(m.host_key(&id("web-1")));
        assert!(matches!(
            host.recovery_for(&id("web-2")),
            Err(KeyError::WrongServer { .. })
        ));
        assert_eq!(
            host.recovery_for(&id("web-1")).unwrap().secret.expose(),
            m.recovery_key(&id("web-1")).secret.expose()
        );
        let standby = KeyFile::Standby(m.standby_key());
        assert!(standby.recovery_for(&id("web-1")).is_err());
    }

    #[test]
    fn debug_never_shows_key_bytes() {
        let m = master(0xab);
        let keys = m.host_key(&id("web-1")).keys();
        let shown = format!("{m:?} {keys:?} {:?}", m.standby_key());
        assert!(shown.contains("<redacted>"), "{shown}");
        for key in [
            m.expose(),
            keys.recovery.data.expose(),
            keys.ingest.mac.expose(),
            keys.ingest.auth.expose(),
        ] {
            let hex = hex_text(key);
            assert!(
                !shown.contains(&hex[..8]),
                "key bytes leaked into Debug: {shown}"
            );
        }
    }

    #[test]
    fn every_key_type_zeroizes_on_drop() {
        fn zeroized_on_drop<T: ZeroizeOnDrop>() {}
        zeroized_on_drop::<MasterKey>();
        zeroized_on_drop::<RecoverySecret>();
        zeroized_on_drop::<IngestRoot>();
        zeroized_on_drop::<IngestSecret>();
        zeroized_on_drop::<DataKey>();
        zeroized_on_drop::<SealKey>();
        zeroized_on_drop::<MacKey>();
        zeroized_on_drop::<AuthKey>();
        let mut k = master(0x5a);
        k.zeroize();
        assert_eq!(k.expose(), &[0u8; KEY_LEN]);
    }
}
