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
        Self::attach_with(file, if read_only { &["--read-only"] } else { &[] })
    }

    /// Creates a sparse file and attaches it with direct I/O to the backing file: reads
    /// and writes then run concurrently, as on a real disk, instead of one after another
    /// through the page cache.
    pub(crate) fn new_sparse_direct(file: &Path, size: u64) -> Self {
        std::fs::File::create(file)
            .and_then(|f| f.set_len(size))
            .expect("creating a sparse file");
        Self::attach_with(file, &["--direct-io=on"])
    }

    fn attach_with(file: &Path, options: &[&str]) -> Self {
        let mut args = vec!["--find", "--show"];
        args.extend_from_slice(options);
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

/// A deterministic pseudo-random sequence (xorshift64*), so failures reproduce.
#[derive(Debug, Clone)]
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..hi`.
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }

    pub(crate) fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// A buffer aligned for O_DIRECT (4 KiB), without unsafe: an over-allocated Vec and
/// the aligned window inside it.
#[derive(Debug)]
pub(crate) struct AlignedBuf {
    raw: Vec<u8>,
    offset: usize,
    len: usize,
}

impl AlignedBuf {
    pub(crate) fn new(len: usize) -> Self {
        let raw = vec![0u8; len + 4096];
        let offset = raw.as_ptr().align_offset(4096);
        Self { raw, offset, len }
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.raw[self.offset..self.offset + self.len]
    }

    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.offset..self.offset + self.len]
    }
}

/// Opens a block device for O_DIRECT reads and writes.
pub(crate) fn open_direct(path: &Path) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .unwrap_or_else(|e| panic!("opening {} with O_DIRECT: {e}", path.display()))
}
