//! Freezing filesystems for a consistent point (DESIGN.md I5), and the operator's hooks.
//!
//! Invariant: a frozen filesystem is always thawed — [`Frozen`] thaws on drop, on every
//! path out of the point (success, error, panic unwinding). A frozen production
//! filesystem is an outage.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;

// _IOWR('X', 119, int) and _IOWR('X', 120, int) from linux/fs.h.
const FIFREEZE: libc::c_ulong = 0xC004_5877;
const FITHAW: libc::c_ulong = 0xC004_5878;

/// Why freezing failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot freeze {}", path.display())]
pub struct FreezeError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Filesystems frozen by this process; thawed when dropped.
#[derive(Debug)]
pub struct Frozen {
    mounts: Vec<(File, PathBuf)>,
}

fn ioctl(file: &File, request: libc::c_ulong) -> io::Result<()> {
    // SAFETY: FIFREEZE/FITHAW take an int argument that the kernel ignores; the fd is open.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), request, 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl Frozen {
    /// Freezes every mount point in order; on a failure, thaws those already frozen.
    pub fn freeze(mount_points: &[PathBuf]) -> Result<Self, FreezeError> {
        let mut frozen = Self { mounts: Vec::new() };
        for path in mount_points {
            let file = File::open(path)
                .and_then(|f| ioctl(&f, FIFREEZE).map(|()| f))
                .map_err(|source| FreezeError {
                    path: path.clone(),
                    source,
                })?; // `frozen` drops here, thawing the others
            frozen.mounts.push((file, path.clone()));
        }
        Ok(frozen)
    }

    pub fn is_empty(&self) -> bool {
        self.mounts.is_empty()
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for (file, path) in self.mounts.drain(..).rev() {
            if let Err(e) = ioctl(&file, FITHAW) {
                tracing::error!(mount = %path.display(), error = %e, "THAW FAILED: the filesystem may still be frozen; run `fsfreeze -u {}`", path.display());
            }
        }
    }
}

/// Runs an operator's hook through `sh -c`, with the point's context in its
/// environment; a non-zero exit is an error carrying its output.
pub fn run_hook(what: &str, command: &str, env: &[(&str, String)]) -> Result<(), String> {
    let output = Command::new("sh")
        .arg("-c")
        .arg(command)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .map_err(|e| format!("{what} hook `{command}` could not start: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} hook `{command}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

