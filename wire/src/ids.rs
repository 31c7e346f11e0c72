//! Typed identities and units. Every value that crosses a module boundary and could be
//! read two ways (bytes or sectors, a seq or a count) has its own type here; conversions
//! are explicit.
//!
//! Names (servers here, site pairs later) follow one rule, from the product
//! requirements: 1–60 characters; the first is an ASCII letter; the rest are ASCII
//! letters, digits, or one of `.`, `_`, `-`.
//!
//! Disk names (a protected block device's kernel name) follow the kernel's rule instead,
//! `^[a-z][a-z0-9_-]{0,31}$` ([`validate_disk_name`]): they become device paths.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest name a server or site pair may have, in characters.
pub const MAX_NAME_LEN: usize = 60;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name is empty (it must have 1 to {MAX_NAME_LEN} characters)")]
    Empty,
    #[error("name starting {prefix:?} has {len} characters (at most {MAX_NAME_LEN} are allowed)")]
    TooLong { prefix: String, len: usize },
    #[error("name {name:?} must start with a letter, not {first:?}")]
    BadStart { name: String, first: char },
    #[error("name {name:?} contains {bad:?}; only letters, digits, '.', '_' and '-' are allowed")]
    BadChar { name: String, bad: char },
}

/// Checks `name` against the naming rule in the module doc.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return Err(NameError::Empty);
    };
    let len = name.chars().count();
    if len > MAX_NAME_LEN {
        return Err(NameError::TooLong {
            prefix: name.chars().take(MAX_NAME_LEN).collect(),
            len,
        });
    }
    if !first.is_ascii_alphabetic() {
        return Err(NameError::BadStart {
            name: name.to_owned(),
            first,
        });
    }
    if let Some(bad) = chars.find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(NameError::BadChar {
            name: name.to_owned(),
            bad,
        });
    }
    Ok(())
}

/// Longest disk name, in characters (the kernel's own names are far shorter).
pub const MAX_DISK_NAME_LEN: usize = 32;

/// Why a disk name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "disk name {shown:?} is not allowed: a disk name must match ^[a-z][a-z0-9_-]{{0,31}}$ (a \
     lowercase letter, then at most 31 lowercase letters, digits, '_' or '-', as the \
     kernel names disks: vda, sda, nvme0n1, loop3, dm-0)"
)]
pub struct DiskNameError {
    /// The name refused (its first 64 characters).
    pub shown: String,
}

/// Checks a disk's name (a block device's kernel name on the protected host, e.g.
/// `nvme0n1`) against `^[a-z][a-z0-9_-]{0,31}$`. The name becomes `/dev/<name>` at the
/// other site when a server is restored onto its original machine, so nothing else —
/// no `/`, no `..`, no spaces or control characters — may pass; this is the one
/// place the rule lives, for every side that reads a name from a peer.
pub fn validate_disk_name(name: &str) -> Result<(), DiskNameError> {
    let bytes = name.as_bytes();
    let ok = matches!(bytes.first(), Some(b'a'..=b'z'))
        && bytes.len() <= MAX_DISK_NAME_LEN
        && bytes
            .iter()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(DiskNameError {
            shown: name.chars().take(64).collect(),
        })
    }
}

/// A protected server's name, unique within a standby site. Always valid by construction.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ServerId(String);

impl ServerId {
    pub fn new(name: &str) -> Result<Self, NameError> {
        validate_name(name)?;
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for ServerId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerId({})", self.0)
    }
}

impl std::str::FromStr for ServerId {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A disk of a protected server, numbered by the agent at registration (0, 1, …). The
/// number is also the disk's index in every per-disk table ([`DiskId::index`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DiskId(u32);

impl DiskId {
    pub const fn new(number: u32) -> Self {
        Self(number)
    }

    pub const fn get(self) -> u32 {
        self.0
    }

    /// The disk's position in a per-disk table (a `Vec` indexed by disk number).
    pub const fn index(self) -> usize {
        // Lossless: usize is at least 32 bits on every target ferry builds for.
        self.0 as usize
    }

    /// The disk at position `index` of a per-disk table, or `None` if `index` does not
    /// fit a disk number.
    pub fn from_index(index: usize) -> Option<Self> {
        u32::try_from(index).ok().map(Self)
    }
}

/// Position in a server's ordered stream of records and barriers. The standby
/// acknowledges sequence numbers; recovery points are defined by them.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Seq(u64);

impl Seq {
    pub const fn new(n: u64) -> Self {
        Self(n)
    }

    pub const fn get(self) -> u64 {
        self.0
    }

    /// The sequence number after this one, or `None` after `u64::MAX` (a stream can
    /// never get there; a peer that claims it is refused).
    pub fn checked_next(self) -> Option<Seq> {
        self.0.checked_add(1).map(Seq)
    }

    /// The sequence number after this one, staying at `u64::MAX` there.
    pub const fn saturating_next(self) -> Seq {
        Seq(self.0.saturating_add(1))
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A recovery point's id, unique per server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PointId(u64);

impl PointId {
    pub const fn new(id: u64) -> Self {
        Self(id)
    }

    pub const fn get(self) -> u64 {
        self.0
    }
}

/// An offset into a disk, in bytes from the start of the whole disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ByteOffset(u64);

/// A length in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ByteLen(u64);

impl ByteOffset {
    pub const fn new(bytes: u64) -> Self {
        Self(bytes)
    }

    pub const fn get(self) -> u64 {
        self.0
    }

    /// The offset `len` bytes further on, or `None` if that passes `u64::MAX`.
    pub fn checked_add(self, len: ByteLen) -> Option<ByteOffset> {
        self.0.checked_add(len.0).map(ByteOffset)
    }
}

impl ByteLen {
    pub const fn new(bytes: u64) -> Self {
        Self(bytes)
    }

    pub const fn get(self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rule() {
        for ok in ["a", "web-1", "db_primary.eu", &"x".repeat(60), "Z9"] {
            validate_name(ok).unwrap_or_else(|e| panic!("{ok:?} refused: {e}"));
        }
        type Expect = fn(&NameError) -> bool;
        let cases: [(&str, Expect); 7] = [
            ("", |e| matches!(e, NameError::Empty)),
            ("1web", |e| {
                matches!(e, NameError::BadStart { first: '1', .. })
            }),
            ("-web", |e| {
                matches!(e, NameError::BadStart { first: '-', .. })
            }),
            (".web", |e| {
                matches!(e, NameError::BadStart { first: '.', .. })
            }),
            ("web 1", |e| {
                matches!(e, NameError::BadChar { bad: ' ', .. })
            }),
            ("web/1", |e| {
                matches!(e, NameError::BadChar { bad: '/', .. })
            }),
            ("wéb", |e| matches!(e, NameError::BadChar { bad: 'é', .. })),
        ];
        for (bad, is_expected) in cases {
            let err = validate_name(bad).expect_err(bad);
            assert!(is_expected(&err), "{bad:?} gave the wrong error: {err}");
        }
        let long = "x".repeat(61);
        assert!(matches!(
            validate_name(&long),
            Err(NameError::TooLong { len: 61, .. })
        ));
    }

    #[test]
    fn disk_names_follow_the_kernel_rule() {
        let longest = format!("a{}", "9".repeat(31));
        for ok in [
            "vda", "sda", "nvme0n1", "loop3", "dm-0", "md127", "mmcblk0", "xvda", "a", &longest,
        ] {
            validate_disk_name(ok).unwrap_or_else(|e| panic!("{ok:?} refused: {e}"));
        }
        let too_long = format!("a{}", "b".repeat(32));
        for bad in [
            "",
            "../sda",
            "sda/../../etc",
            "/dev/sda",
            "1sda",
            "-sda",
            "_sda",
            "Sda",
            "sdA",
            "sd a",
            "sda\n",
            "sd.a",
            "nvme0n1p1 ",
            "é",
            &too_long,
        ] {
            let err = validate_disk_name(bad).expect_err(bad).to_string();
            assert!(
                err.contains("^[a-z][a-z0-9_-]{0,31}$") && err.contains(&format!("{bad:?}")),
                "the refusal names the name and the rule: {err}"
            );
        }
        let huge = "x/".repeat(10_000);
        let err = validate_disk_name(&huge).expect_err("huge").shown;
        assert_eq!(err.chars().count(), 64, "a refused name is shown shortened");
    }

    #[test]
    fn server_id_refuses_bad_names_when_deserialized() {
        let res: Result<ServerId, _> = serde_json::from_str("\"9bad\"");
        let err = res.expect_err("a bad server name must not decode");
        assert!(
            err.to_string().contains("must start with a letter"),
            "{err}"
        );
    }

    #[test]
    fn units_serialize_as_their_bare_number() {
        let json = |v: serde_json::Result<String>| v.expect("serializes");
        assert_eq!(json(serde_json::to_string(&DiskId::new(3))), "3");
        assert_eq!(json(serde_json::to_string(&Seq::new(5))), "5");
        assert_eq!(json(serde_json::to_string(&PointId::new(7))), "7");
        assert_eq!(json(serde_json::to_string(&ByteOffset::new(4096))), "4096");
        assert_eq!(json(serde_json::to_string(&ByteLen::new(512))), "512");
        let seq: Seq = serde_json::from_str("18446744073709551615").expect("decodes");
        assert_eq!(seq, Seq::new(u64::MAX));
        assert_eq!(seq.saturating_next(), seq, "saturates at the top");
        assert_eq!(seq.checked_next(), None);
        assert_eq!(DiskId::from_index(2), Some(DiskId::new(2)));
        assert_eq!(DiskId::new(2).index(), 2);
    }
}
