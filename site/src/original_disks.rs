//! The original machine's disks, which reverse replication compares against and a
//! restore (failback) writes over in place. Writing over the wrong disk destroys it, so:
//!
//! - A disk is found by what the server registered: its identity
//!   ([`ferry_wire::disk_identity`]: WWID, serial, device-mapper UUID, or a loop device's
//!   backing file) and its size, never by its name alone — `sda` may be another disk
//!   after a reboot. [`locate`] looks at `/dev/<name>` first and otherwise searches every
//!   block device for the identity; none, or more than one, is refused. A disk that
//!   registered no identity is refused: nothing tells it from another of its size.
//! - Before anything reads it as the baseline (replication start) and again before the
//!   restore writes ([`verify`]), the device must still have that identity and size, and
//!   be unused: no filesystem of it, of a partition of it, or of anything stacked on them
//!   (device-mapper, md: `holders/`) is mounted (`/proc/self/mountinfo`, by device
//!   number and by source device), none is swap (`/proc/swaps`), and in particular none
//!   holds `/`. The restore then opens it with `O_EXCL` ([`ferry_standby::rebuild::Target`]),
//!   which the kernel refuses while it is mounted or held.
//! - Names come from a peer (the registration, through the other site): each is checked
//!   with [`ferry_wire::ids::validate_disk_name`] before it becomes a path.
//! - A virtual machine's disk is identified inside the guest by what its hypervisor gave
//!   it (qemu's virtio-blk `serial=`, a cloud volume's id as serial or WWID), which no
//!   block device of the host shows: the host's side is the image or volume behind it.
//!   The site says which it is through [`Volumes`] (`volumes_dir` in the standby's
//!   config): a link named by the serial or WWID, pointing at the host's block device —
//!   the hypervisor's own inventory, as udev's `/dev/disk/by-id/virtio-<serial>` is the
//!   guest's. Such a device is the disk when the link resolves to it and its size is the
//!   registered one; everything else (unused, `O_EXCL`) is checked as for any disk. The
//!   VM must be powered off: a running qemu does not mount its disks, so ferry cannot
//!   see it (the operator's step, said in docs/standby.md).

use ferry_wire::disk_identity::DiskIdentity;
use ferry_wire::ids::{DiskNameError, validate_disk_name};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

const SYS_BLOCK: &str = "/sys/block";

/// A disk of the original machine that a restore writes over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Stored")]
pub struct OriginalDisk {
    /// The block device: `/dev/<name>` as registered, then where [`locate`] found it.
    pub path: PathBuf,
    /// Its size in bytes, as the server registered it.
    pub size: u64,
    /// What identifies it, as the server registered it.
    pub identity: DiskIdentity,
}

/// An original disk as catalogues hold it: a bare path is what standbys before disk
/// identities stored; it reads as a disk of unknown identity, which [`verify`] refuses
/// (replicate back again to record the identity) instead of the catalogue failing to
/// load.
#[derive(Deserialize)]
#[serde(untagged)]
enum Stored {
    Path(PathBuf),
    Disk {
        path: PathBuf,
        size: u64,
        identity: DiskIdentity,
    },
}

impl From<Stored> for OriginalDisk {
    fn from(s: Stored) -> Self {
        match s {
            Stored::Path(path) => OriginalDisk {
                path,
                size: 0,
                identity: DiskIdentity::Unknown,
            },
            Stored::Disk {
                path,
                size,
                identity,
            } => OriginalDisk {
                path,
                size,
                identity,
            },
        }
    }
}

/// Why an original disk cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OriginalDiskError {
    #[error("original disk {}", path.display())]
    BadName {
        path: PathBuf,
        #[source]
        source: DiskNameError,
    },
    #[error(
        "original disk {} has {identity}: ferry cannot tell it from another disk of its \
         size, so it does not restore onto it in place (replicate back without \
         --original-machine)", path.display()
    )]
    NoIdentity {
        path: PathBuf,
        identity: DiskIdentity,
    },
    #[error(
        "no block device here has {identity} and {size} bytes (original disk {}): is it \
         attached? (a virtual machine's disk: is the VM off, and its volume linked by that \
         serial in volumes_dir?)", path.display()
    )]
    NotFound {
        path: PathBuf,
        identity: DiskIdentity,
        size: u64,
    },
    #[error(
        "{} block devices here have {identity} and {size} bytes ({}): refusing to guess \
         which is the original disk", paths.len(), paths.join(", ")
    )]
    Ambiguous {
        identity: DiskIdentity,
        size: u64,
        paths: Vec<String>,
    },
    #[error(
        "{} has {found} and {found_size} bytes, but the original disk has {identity} and \
         {size} bytes: it is not that disk", path.display()
    )]
    NotThatDisk {
        path: PathBuf,
        found: DiskIdentity,
        found_size: u64,
        identity: DiskIdentity,
        size: u64,
    },
    #[error("{} is not a whole-disk block device", .0.display())]
    NotADisk(PathBuf),
    #[error("{} is in use ({what}): an original disk must not be in use to be restored onto", path.display())]
    InUse { path: PathBuf, what: String },
    #[error("cannot read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> OriginalDiskError {
    let path = path.to_owned();
    move |source| OriginalDiskError::Io { path, source }
}

/// Where this site finds the disks of its virtual machines (module doc): a directory of
/// links named by the serial or WWID a guest sees, each to the host's block device behind
/// that disk. Without one, a disk is found only by the identity the host sees.
#[derive(Debug, Clone, Default)]
pub struct Volumes(Option<PathBuf>);

impl Volumes {
    pub fn new(dir: Option<PathBuf>) -> Self {
        Volumes(dir)
    }

    /// Whether the site has a volumes directory.
    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// The kernel name of the host disk the site's links say is the guest's disk with
    /// `identity`, if a link names it and resolves to a whole-disk block device.
    fn disk_of(&self, identity: &DiskIdentity) -> Option<String> {
        let dir = self.0.as_ref()?;
        let value = match identity {
            DiskIdentity::Serial(v) | DiskIdentity::Wwid(v) => v,
            _ => return None,
        };
        // The value came from a peer: it names a file in the directory, nothing else.
        if value.contains('/') || value == "." || value == ".." {
            return None;
        }
        let device = std::fs::canonicalize(dir.join(value)).ok()?;
        disk_name(&device).ok()
    }

    /// Whether the host disk `name` is the registered disk `identity` of `size` bytes:
    /// by the identity the host sees, or by the site's link.
    fn is(&self, name: &str, identity: &DiskIdentity, size: u64) -> bool {
        size_of(name) == Some(size)
            && (identify(name) == *identity || self.disk_of(identity).as_deref() == Some(name))
    }
}

/// The identity sysfs gives the disk `name`.
pub fn identify(name: &str) -> DiskIdentity {
    let dir = Path::new(SYS_BLOCK).join(name);
    DiskIdentity::from_sysfs(|file| std::fs::read_to_string(dir.join(file)).ok())
}

/// The size of the disk `name` in bytes (sysfs counts 512-byte sectors).
fn size_of(name: &str) -> Option<u64> {
    let sectors = std::fs::read_to_string(Path::new(SYS_BLOCK).join(name).join("size")).ok()?;
    sectors.trim().parse::<u64>().ok()?.checked_mul(512)
}

/// The kernel name of the whole disk at `path` (a block device node).
fn disk_name(path: &Path) -> Result<String, OriginalDiskError> {
    let meta = std::fs::metadata(path).map_err(io_err(path))?;
    if !meta.file_type().is_block_device() {
        return Err(OriginalDiskError::NotADisk(path.to_owned()));
    }
    let rdev = meta.rdev();
    let sys = PathBuf::from(format!(
        "/sys/dev/block/{}:{}",
        libc::major(rdev),
        libc::minor(rdev)
    ));
    if sys.join("partition").exists() {
        return Err(OriginalDiskError::NotADisk(path.to_owned()));
    }
    let real = sys.canonicalize().map_err(io_err(&sys))?;
    real.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| OriginalDiskError::NotADisk(path.to_owned()))
}

/// Finds the device of a registered disk: `wanted.path` (`/dev/<name>`) if it has the
/// identity and size, else the one device that does (by the host's identity, or by a
/// link of `volumes`). Checks it is unused.
pub fn locate(wanted: &OriginalDisk, volumes: &Volumes) -> Result<OriginalDisk, OriginalDiskError> {
    let name = wanted
        .path
        .strip_prefix("/dev")
        .ok()
        .and_then(|p| p.to_str())
        .unwrap_or_default();
    validate_disk_name(name).map_err(|source| OriginalDiskError::BadName {
        path: wanted.path.clone(),
        source,
    })?;
    if !wanted.identity.is_known() {
        return Err(OriginalDiskError::NoIdentity {
            path: wanted.path.clone(),
            identity: wanted.identity.clone(),
        });
    }
    let is_it = |n: &str| volumes.is(n, &wanted.identity, wanted.size);
    let found = if is_it(name) {
        name.to_owned()
    } else {
        let sys = Path::new(SYS_BLOCK);
        let mut matches = Vec::new();
        for entry in std::fs::read_dir(sys).map_err(io_err(sys))? {
            let entry = entry.map_err(io_err(sys))?;
            if let Some(n) = entry.file_name().to_str()
                && validate_disk_name(n).is_ok()
                && is_it(n)
            {
                matches.push(n.to_owned());
            }
        }
        match matches.len() {
            0 => {
                return Err(OriginalDiskError::NotFound {
                    path: wanted.path.clone(),
                    identity: wanted.identity.clone(),
                    size: wanted.size,
                });
            }
            1 => {
                let n = matches.remove(0);
                tracing::warn!(registered = %wanted.path.display(), found = %n, identity = %wanted.identity, "the original disk has another name now");
                n
            }
            _ => {
                return Err(OriginalDiskError::Ambiguous {
                    identity: wanted.identity.clone(),
                    size: wanted.size,
                    paths: matches.iter().map(|n| format!("/dev/{n}")).collect(),
                });
            }
        }
    };
    let disk = OriginalDisk {
        path: PathBuf::from(format!("/dev/{found}")),
        ..wanted.clone()
    };
    verify(&disk, volumes)?;
    Ok(disk)
}

/// Checks that `disk.path` is still the disk (identity, or a link of `volumes`, and
/// size) and unused.
pub fn verify(disk: &OriginalDisk, volumes: &Volumes) -> Result<(), OriginalDiskError> {
    if !disk.identity.is_known() {
        return Err(OriginalDiskError::NoIdentity {
            path: disk.path.clone(),
            identity: disk.identity.clone(),
        });
    }
    let name = disk_name(&disk.path)?;
    if !volumes.is(&name, &disk.identity, disk.size) {
        return Err(OriginalDiskError::NotThatDisk {
            path: disk.path.clone(),
            found: identify(&name),
            found_size: size_of(&name).unwrap_or(0),
            identity: disk.identity.clone(),
            size: disk.size,
        });
    }
    unused(&disk.path, &name)
}

/// Refuses the whole disk at `path` if it, a partition of it or anything stacked on them
/// is mounted (in particular if it holds `/`) or is swap.
pub fn check_unused(path: &Path) -> Result<(), OriginalDiskError> {
    unused(path, &disk_name(path)?)
}

/// `major:minor` of every block device on disk `name`: the disk, its partitions, and
/// whatever is stacked on them (holders, transitively). `sys` is sysfs (`/sys`).
fn devices_on(sys: &Path, name: &str) -> BTreeSet<String> {
    let class = sys.join("class/block");
    let mut todo = vec![name.to_owned()];
    if let Ok(entries) = std::fs::read_dir(sys.join("block").join(name)) {
        for entry in entries.flatten() {
            if entry.path().join("partition").exists()
                && let Some(p) = entry.file_name().to_str()
            {
                todo.push(p.to_owned());
            }
        }
    }
    let (mut seen, mut devs) = (BTreeSet::new(), BTreeSet::new());
    while let Some(n) = todo.pop() {
        if !seen.insert(n.clone()) {
            continue;
        }
        if let Ok(dev) = std::fs::read_to_string(class.join(&n).join("dev")) {
            devs.insert(dev.trim().to_owned());
        }
        if let Ok(holders) = std::fs::read_dir(class.join(&n).join("holders")) {
            todo.extend(
                holders
                    .flatten()
                    .filter_map(|h| h.file_name().to_str().map(str::to_owned)),
            );
        }
    }
    devs
}

/// `major:minor` of the block device node at `path`, if it is one.
fn devnum_of(path: &str) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    meta.file_type()
        .is_block_device()
        .then(|| format!("{}:{}", libc::major(meta.rdev()), libc::minor(meta.rdev())))
}

/// Unescapes the octal escapes (`\040`) of a mountinfo field.
pub(crate) fn unescape(field: &str) -> String {
    let mut out = String::new();
    let mut rest = field;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let code = rest
            .get(at + 1..at + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(char::from(c));
                rest = &rest[at + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The mount point of the first filesystem in `mountinfo` that is on one of `devs`: by
/// the device number mountinfo gives, or by its source device (btrfs and others show a
/// device number of their own).
fn mounted_from(
    mountinfo: &str,
    devs: &BTreeSet<String>,
    devnum_of: impl Fn(&str) -> Option<String>,
) -> Option<String> {
    mountinfo.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let (devnum, target) = (fields.get(2)?, fields.get(4)?);
        // After the optional fields: " - fstype source options".
        let source = fields
            .iter()
            .position(|f| *f == "-")
            .and_then(|at| fields.get(at + 2))
            .map(|s| unescape(s));
        let on_disk = devs.contains(*devnum)
            || source
                .as_deref()
                .and_then(&devnum_of)
                .is_some_and(|d| devs.contains(&d));
        on_disk.then(|| unescape(target))
    })
}

/// Refuses `path` (the disk `name`) if any device on it is mounted or swap.
fn unused(path: &Path, name: &str) -> Result<(), OriginalDiskError> {
    let devs = devices_on(Path::new("/sys"), name);
    let mountinfo = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(mountinfo).map_err(io_err(mountinfo))?;
    if let Some(target) = mounted_from(&text, &devs, devnum_of) {
        let what = if target == "/" {
            "it holds /, the running system's root filesystem".to_owned()
        } else {
            format!("a filesystem on it is mounted at {target}")
        };
        return Err(OriginalDiskError::InUse {
            path: path.to_owned(),
            what,
        });
    }
    if let Ok(swaps) = std::fs::read_to_string("/proc/swaps") {
        for line in swaps.lines().skip(1) {
            if let Some(device) = line.split_whitespace().next()
                && devnum_of(&unescape(device)).is_some_and(|d| devs.contains(&d))
            {
                return Err(OriginalDiskError::InUse {
                    path: path.to_owned(),
                    what: format!("{device} on it is swap"),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_disks_read_back_and_a_bare_path_reads_as_unknown() {
        let disk = OriginalDisk {
            path: "/dev/sdb".into(),
            size: 1 << 30,
            identity: DiskIdentity::Wwid("naa.5000c500a1b2c3d4".into()),
        };
        let text = serde_json::to_string(&disk).expect("serializes");
        assert_eq!(
            serde_json::from_str::<OriginalDisk>(&text).expect("reads back"),
            disk
        );
        let old: OriginalDisk = serde_json::from_str("\"/dev/loop3\"").expect("a bare path");
        assert_eq!(old.identity, DiskIdentity::Unknown);
        assert!(matches!(
            verify(&old, &Volumes::default()),
            Err(OriginalDiskError::NoIdentity { .. })
        ));
    }

    #[test]
    fn a_volume_link_names_one_file_of_the_directory_and_must_be_a_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("image");
        std::fs::write(&file, b"not a block device").expect("write");
        std::os::unix::fs::symlink(&file, dir.path().join("web1-sys")).expect("symlink");
        std::os::unix::fs::symlink("/dev/null", dir.path().join("null")).expect("symlink");
        let volumes = Volumes::new(Some(dir.path().to_owned()));
        let serial = |v: &str| DiskIdentity::Serial(v.into());
        // A regular file and a character device are not disks; a value that would leave
        // the directory names nothing; nor does an identity the host sees itself.
        assert_eq!(volumes.disk_of(&serial("web1-sys")), None);
        assert_eq!(volumes.disk_of(&serial("null")), None);
        for bad in ["../image", ".", "..", "a/b"] {
            assert_eq!(volumes.disk_of(&serial(bad)), None, "{bad}");
        }
        assert_eq!(
            volumes.disk_of(&DiskIdentity::LoopBackingFile("web1-sys".into())),
            None
        );
        assert_eq!(Volumes::default().disk_of(&serial("web1-sys")), None);
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("odd\\"), "odd\\");
    }

    #[test]
    fn partitions_and_what_is_stacked_on_them_count_as_the_disk() {
        // A fake sysfs: sda with partitions sda1 (holding dm-0, holding dm-1) and sda2;
        // sdb apart.
        let sys = tempfile::tempdir().expect("tempdir");
        let put = |rel: &str, text: &str| {
            let path = sys.path().join(rel);
            std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
            std::fs::write(path, text).expect("write");
        };
        put("block/sda/sda1/partition", "1");
        put("block/sda/sda2/partition", "2");
        put("block/sda/queue/rotational", "0");
        for (name, dev) in [
            ("sda", "8:0"),
            ("sda1", "8:1"),
            ("sda2", "8:2"),
            ("dm-0", "253:0"),
            ("dm-1", "253:1"),
            ("sdb", "8:16"),
        ] {
            put(&format!("class/block/{name}/dev"), &format!("{dev}\n"));
        }
        put("class/block/sda1/holders/dm-0", "");
        put("class/block/dm-0/holders/dm-1", "");
        let devs = devices_on(sys.path(), "sda");
        let want: BTreeSet<String> = ["8:0", "8:1", "8:2", "253:0", "253:1"]
            .map(str::to_owned)
            .into();
        assert_eq!(devs, want);
        let mountinfo = "22 1 0:21 / /proc rw - proc proc rw\n\
                         30 1 8:16 / /srv rw - ext4 /dev/sdb rw\n\
                         31 1 253:1 / /var/lib\\040db rw shared:1 - xfs /dev/mapper/vg-db rw\n";
        let none = |_: &str| None;
        assert_eq!(
            mounted_from(mountinfo, &devs, none).as_deref(),
            Some("/var/lib db"),
            "an LVM volume on a partition of the disk"
        );
        assert_eq!(
            mounted_from(mountinfo, &devices_on(sys.path(), "sdb"), none).as_deref(),
            Some("/srv")
        );
        // btrfs: a device number of its own; the source device tells.
        let btrfs = "40 1 0:33 / / rw - btrfs /dev/sda2 rw\n";
        let by_source = |s: &str| (s == "/dev/sda2").then(|| "8:2".to_owned());
        assert_eq!(mounted_from(btrfs, &devs, by_source).as_deref(), Some("/"));
        assert_eq!(mounted_from(btrfs, &devs, none), None);
    }

    #[test]
    fn a_disk_without_identity_or_with_a_bad_name_is_refused_before_any_lookup() {
        let unknown = OriginalDisk {
            path: "/dev/vda".into(),
            size: 1 << 30,
            identity: DiskIdentity::Unknown,
        };
        let err = locate(&unknown, &Volumes::default())
            .expect_err("no identity")
            .to_string();
        assert!(err.contains("cannot tell it from another disk"), "{err}");
        let bad = OriginalDisk {
            path: "/dev/../etc/passwd".into(),
            identity: DiskIdentity::Serial("x".into()),
            ..unknown
        };
        let err =
            ferry_wire::error_chain(&locate(&bad, &Volumes::default()).expect_err("bad name"));
        assert!(err.contains("^[a-z][a-z0-9_-]{0,31}$"), "{err}");
    }
}
