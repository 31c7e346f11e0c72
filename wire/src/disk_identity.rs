//! What identifies a protected disk apart from its kernel name, which can change from one
//! boot to the next (`sda` and `sdb` swap, `nvme0n1` and `nvme1n1` too). The agent
//! records it in its registration ([`crate::message::DiskInfo`]); a restore onto the
//! original machine later writes only onto the device that has the same identity and the
//! same size.
//!
//! Where it comes from, first found wins, read from `/sys/block/<name>/` (the reader is
//! the caller's: this crate does no I/O):
//!
//! | kind | file | disks |
//! |---|---|---|
//! | [`DiskIdentity::Wwid`] | `wwid`, `device/wwid` | NVMe namespaces, SCSI/SATA (the WWN, EUI or NGUID) |
//! | [`DiskIdentity::Serial`] | `serial`, `device/serial` | virtio-blk (`serial=` in qemu), NVMe controllers |
//! | [`DiskIdentity::DmUuid`] | `dm/uuid` | device-mapper (LVM, LUKS) |
//! | [`DiskIdentity::LoopBackingFile`] | `loop/backing_file` | loop devices |
//!
//! Loop devices have no serial: a loop device is identified by the file it is attached to
//! (its path as the kernel shows it) and, like every disk, by its size. The same file
//! attached again under another loop number is the same disk; another file of the same
//! size is not. A disk with none of these is [`DiskIdentity::Unknown`]: it can be
//! protected, but ferry refuses to restore onto it in place, as it cannot tell it from
//! another disk of the same size.
//!
//! Bounds: each value is at most [`MAX_IDENTITY_LEN`] bytes, printable (checked with the
//! registration, [`crate::message::Message::check`]); a value sysfs gives that is not is
//! skipped by [`DiskIdentity::from_sysfs`], so a disk with an odd serial or a loop
//! device over a very long path is still protected (and not restored onto in place).

use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest identity value, in bytes (a WWID is at most about 80; a path up to 4096, but
/// ferry keeps the registration small).
pub const MAX_IDENTITY_LEN: usize = 256;

/// What identifies a disk (module doc).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiskIdentity {
    Wwid(String),
    Serial(String),
    DmUuid(String),
    LoopBackingFile(String),
    Unknown,
}

impl DiskIdentity {
    /// The identity sysfs gives a disk: `read(file)` returns the contents of
    /// `/sys/block/<name>/<file>`, if it exists.
    pub fn from_sysfs(read: impl Fn(&str) -> Option<String>) -> Self {
        let first = |files: &[&str]| {
            files.iter().find_map(|f| {
                let value = read(f)?;
                let value = value.trim();
                // One that could not travel (too long, control characters) is skipped, on
                // both sides alike: such a disk can still be protected.
                let usable = !value.is_empty()
                    && value.len() <= MAX_IDENTITY_LEN
                    && !value.chars().any(char::is_control);
                usable.then(|| value.to_owned())
            })
        };
        if let Some(v) = first(&["wwid", "device/wwid"]) {
            DiskIdentity::Wwid(v)
        } else if let Some(v) = first(&["serial", "device/serial"]) {
            DiskIdentity::Serial(v)
        } else if let Some(v) = first(&["dm/uuid"]) {
            DiskIdentity::DmUuid(v)
        } else if let Some(v) = first(&["loop/backing_file"]) {
            DiskIdentity::LoopBackingFile(v)
        } else {
            DiskIdentity::Unknown
        }
    }

    /// The value, `None` for [`DiskIdentity::Unknown`].
    pub fn value(&self) -> Option<&str> {
        match self {
            DiskIdentity::Wwid(v)
            | DiskIdentity::Serial(v)
            | DiskIdentity::DmUuid(v)
            | DiskIdentity::LoopBackingFile(v) => Some(v),
            DiskIdentity::Unknown => None,
        }
    }

    /// Whether it can tell this disk from another of the same size.
    pub fn is_known(&self) -> bool {
        !matches!(self, DiskIdentity::Unknown)
    }
}

impl fmt::Display for DiskIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiskIdentity::Wwid(v) => write!(f, "WWID {v:?}"),
            DiskIdentity::Serial(v) => write!(f, "serial {v:?}"),
            DiskIdentity::DmUuid(v) => write!(f, "device-mapper UUID {v:?}"),
            DiskIdentity::LoopBackingFile(v) => write!(f, "loop backing file {v:?}"),
            DiskIdentity::Unknown => {
                f.write_str("no serial, WWID, device-mapper UUID or loop backing file")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn sysfs(files: &[(&str, &str)]) -> DiskIdentity {
        let map: HashMap<String, String> = files
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        DiskIdentity::from_sysfs(|f| map.get(f).cloned())
    }

    #[test]
    fn the_strongest_identity_sysfs_offers_wins() {
        assert_eq!(
            sysfs(&[
                ("wwid", "eui.0025388b71b2c5e1\n"),
                ("device/serial", "S4EW")
            ]),
            DiskIdentity::Wwid("eui.0025388b71b2c5e1".into())
        );
        assert_eq!(
            sysfs(&[("device/wwid", "naa.5000c500a1b2c3d4")]),
            DiskIdentity::Wwid("naa.5000c500a1b2c3d4".into())
        );
        assert_eq!(
            sysfs(&[("serial", "web-1-root\n")]),
            DiskIdentity::Serial("web-1-root".into())
        );
        assert_eq!(
            sysfs(&[("wwid", "  \n"), ("dm/uuid", "LVM-abc")]),
            DiskIdentity::DmUuid("LVM-abc".into()),
            "an empty file is no identity"
        );
        assert_eq!(
            sysfs(&[("loop/backing_file", "/srv/disk.img\n")]),
            DiskIdentity::LoopBackingFile("/srv/disk.img".into())
        );
        let long = format!("/srv/{}.img", "x".repeat(MAX_IDENTITY_LEN));
        assert_eq!(
            sysfs(&[("serial", "bad\u{1b}[2J"), ("loop/backing_file", &long)]),
            DiskIdentity::Unknown,
            "values that cannot travel are no identity (the disk is still protected)"
        );
        let none = sysfs(&[("size", "2048")]);
        assert!(!none.is_known());
        assert!(none.to_string().contains("no serial"), "{none}");
    }
}
