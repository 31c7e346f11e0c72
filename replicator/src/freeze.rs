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
use std::time::Duration;

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

/// Filesystems frozen by this process; thawed when dropped, or by a watchdog thread if
/// the guard is not dropped in time (a stuck agent must not keep production frozen).
#[derive(Debug)]
pub struct Frozen {
    mounts: Vec<(File, PathBuf)>,
    /// Dropping it tells the watchdog the guard thaws by itself.
    watchdog: Option<std::sync::mpsc::Sender<()>>,
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

fn thaw(mounts: &[(File, PathBuf)], by: &str) {
    for (file, path) in mounts.iter().rev() {
        match ioctl(file, FITHAW) {
            Ok(()) => {}
            // Not frozen (any more): the other of guard and watchdog thawed it.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => tracing::error!(
                mount = %path.display(), error = %e, by,
                "THAW FAILED: the filesystem may still be frozen; run `fsfreeze -u {}`",
                path.display()
            ),
        }
    }
}

impl Frozen {
    /// Freezes every mount point in order (skipping filesystems that cannot be frozen,
    /// such as vfat, with a warning); on a failure, thaws those already frozen. A watchdog
    /// thaws them all after `watchdog_after` unless the guard was dropped first.
    pub fn freeze(mount_points: &[PathBuf], watchdog_after: Duration) -> Result<Self, FreezeError> {
        let mut frozen = Self {
            mounts: Vec::new(),
            watchdog: None,
        };
        for path in mount_points {
            let file = File::open(path).map_err(|source| FreezeError {
                path: path.clone(),
                source,
            })?;
            match ioctl(&file, FIFREEZE) {
                Ok(()) => frozen.mounts.push((file, path.clone())),
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                    tracing::warn!(mount = %path.display(), "this filesystem cannot be frozen; it is not part of the freeze");
                }
                // `frozen` drops here, thawing the others.
                Err(source) => {
                    return Err(FreezeError {
                        path: path.clone(),
                        source,
                    });
                }
            }
        }
        let copies: Vec<(File, PathBuf)> = frozen
            .mounts
            .iter()
            .filter_map(|(f, p)| f.try_clone().ok().map(|f| (f, p.clone())))
            .collect();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name("ferry-thaw-watchdog".into())
            .spawn(move || {
                if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(watchdog_after) {
                    tracing::error!(after = ?watchdog_after, "the freeze outlived its limit; the watchdog thaws");
                    thaw(&copies, "watchdog");
                }
            });
        if spawned.is_ok() {
            frozen.watchdog = Some(tx);
        }
        Ok(frozen)
    }

    /// The mount points actually frozen.
    pub fn mounts(&self) -> Vec<String> {
        self.mounts
            .iter()
            .map(|(_, p)| p.display().to_string())
            .collect()
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        thaw(&self.mounts, "guard");
        self.watchdog.take();
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
