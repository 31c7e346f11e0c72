//! Fixtures for end-to-end tests on real loop devices and filesystems. Every resource is
//! a guard that releases itself on drop (loop devices detached, mounts unmounted), so a
//! failing test cleans up too. Tests that need root say so by name and fail; they never
//! skip silently.

#![allow(
    dead_code,
    reason = "each test binary uses a different subset of the fixtures"
)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Fails the test, naming the capability, unless running as root.
pub(crate) fn require_root(what: &str) {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "{what} needs root (loop devices and mounts); run the tests as root, as CI does"
    );
}

/// Runs a command, panicking with its output if it fails; returns its stdout.
pub(crate) fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (is it installed?): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A loop device over a file; detached on drop.
#[derive(Debug)]
pub(crate) struct LoopDevice {
    pub(crate) path: PathBuf,
}

impl LoopDevice {
    /// Creates a sparse file of `size` bytes at `file` and attaches it.
    pub(crate) fn new_sparse(file: &Path, size: u64) -> Self {
        std::fs::File::create(file)
            .and_then(|f| f.set_len(size))
            .expect("creating a sparse file");
        Self::attach(file, false)
    }

    /// Attaches an existing file, read-only if asked.
    pub(crate) fn attach(file: &Path, read_only: bool) -> Self {
        let mut args = vec!["--find", "--show"];
        if read_only {
            args.push("--read-only");
        }
        let file = file.to_str().expect("utf-8 path");
        args.push(file);
        let path = run("losetup", &args).trim().to_owned();
        assert!(
            path.starts_with("/dev/loop"),
            "losetup gave {path:?}: loop devices unavailable?"
        );
        Self {
            path: PathBuf::from(path),
        }
    }

    pub(crate) fn path_str(&self) -> &str {
        self.path.to_str().expect("utf-8 path")
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
    }
}

/// A mounted filesystem; unmounted on drop.
#[derive(Debug)]
pub(crate) struct Mount {
    pub(crate) target: PathBuf,
}

impl Mount {
    pub(crate) fn new(device: &str, target: &Path, options: &str) -> Self {
        std::fs::create_dir_all(target).expect("creating the mount point");
        run(
            "mount",
            &["-o", options, device, target.to_str().expect("utf-8 path")],
        );
        Self {
            target: target.to_owned(),
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.target)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.target).status();
        }
    }
}

/// Runs the `ferry` binary under test; returns stdout, panicking with stderr on failure.
pub(crate) fn ferry(args: &[&str]) -> String {
    run(env!("CARGO_BIN_EXE_ferry"), args)
}
