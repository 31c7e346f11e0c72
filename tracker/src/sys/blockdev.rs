//! Block devices: from a path to what the BPF programs key on (the kernel's `dev_t`),
//! the size, and whether it is a whole disk.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// A device number in the kernel's internal encoding (`major << 20 | minor`), which is
/// what `bd_dev` holds; userspace's `st_rdev` encodes it differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KernelDev(pub u32);

/// A protected block device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDevice {
    pub path: PathBuf,
    /// The name in /sys/block, e.g. `loop3`.
    pub name: String,
    pub major: u32,
    pub minor: u32,
    pub dev: KernelDev,
    pub size: u64,
}

/// Why a path cannot be protected.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("{0}: no such device")]
    Missing(PathBuf),
    #[error("{0}: not a block device")]
    NotBlock(PathBuf),
    #[error("{path} is a partition of {disk}; protect the whole disk (/dev/{disk})")]
    Partition { path: PathBuf, disk: String },
    #[error("{path}: {what}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl BlockDevice {
    /// Resolves `path` to a whole-disk block device.
    pub fn open(path: &Path) -> Result<Self, DeviceError> {
        let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => DeviceError::Missing(path.to_owned()),
            _ => DeviceError::Io {
                path: path.to_owned(),
                what: "cannot stat",
                source: e,
            },
        })?;
        if !meta.file_type().is_block_device() {
            return Err(DeviceError::NotBlock(path.to_owned()));
        }
        let rdev = meta.rdev();
        let (major, minor) = (libc::major(rdev), libc::minor(rdev));
        let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
        let io = |what| {
            move |source| DeviceError::Io {
                path: path.to_owned(),
                what,
                source,
            }
        };
        let real = std::fs::canonicalize(&sys).map_err(io("not in /sys/dev/block"))?;
        if sys.join("partition").exists() {
            let disk = real
                .parent()
                .and_then(Path::file_name)
                .map_or_else(|| "?".to_owned(), |n| n.to_string_lossy().into_owned());
            return Err(DeviceError::Partition {
                path: path.to_owned(),
                disk,
            });
        }
        let name = real
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let sectors: u64 = std::fs::read_to_string(sys.join("size"))
            .map_err(io("cannot read its size"))?
            .trim()
            .parse()
            .map_err(|_| io("size in sysfs is not a number")(std::io::Error::other("parse")))?;
        Ok(Self {
            path: path.to_owned(),
            name,
            major,
            minor,
            dev: KernelDev(major << 20 | minor),
            size: sectors * 512,
        })
    }
}
