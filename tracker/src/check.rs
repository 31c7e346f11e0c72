//! Registration checks: can this host be protected, and which disks hold it?
//!
//! Reads only files under a root directory (`/` on a live host; a fixture tree in
//! tests): `proc/self/mountinfo`, `proc/sys/kernel/arch`, `proc/sys/kernel/osrelease`,
//! `sys/dev/block/M:m`, `sys/class/block/<name>`, `sys/kernel/btf/vmlinux`,
//! `proc/sys/kernel/unprivileged_bpf_disabled`.
//!
//! The mounts of `/` and `/boot` are resolved to whole disks: through partitions (the
//! parent directory in sysfs), device-mapper/LVM and md (the `slaves` directory,
//! recursively), with NVMe and every other naming handled by sysfs itself. A host is
//! refused when `/boot` is on a disk that does not hold `/` (a rebuilt system disk would
//! not boot), when it is not 64-bit, or when its kernel lacks BTF or the bpf syscall.

use serde::Serialize;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// A whole disk and its size.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Disk {
    pub name: String,
    pub size: u64,
}

/// A mounted filesystem and the whole disks under it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MountDisks {
    pub mount_point: String,
    /// The block device mounted, as sysfs names it (e.g. `dm-0`, `nvme0n1p2`).
    pub device: String,
    pub disks: Vec<String>,
}

/// What the checks found: the disks to protect, or why the host is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub arch: String,
    pub root: MountDisks,
    /// `None` when `/boot` is not a separate mount.
    pub boot: Option<MountDisks>,
    /// Whole disks of `/` and `/boot` (what must be protected for the server to boot).
    pub system_disks: Vec<Disk>,
    /// Why the host cannot be registered; empty when it can.
    pub refusals: Vec<String>,
}

/// Why the checks could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: malformed line {line:?}")]
    Mountinfo { path: PathBuf, line: String },
    #[error("no filesystem is mounted on {0}")]
    NotMounted(&'static str),
    #[error("{0} is mounted from device {1}, which sysfs does not know")]
    UnknownDevice(&'static str, String),
}

fn read(root: &Path, rel: &str) -> Result<String, CheckError> {
    let path = root.join(rel);
    std::fs::read_to_string(&path).map_err(|source| CheckError::Read { path, source })
}

/// The device (major:minor) mounted on `mount_point`: the last such mount wins, as
/// later mounts hide earlier ones.
fn mounted_device(
    mountinfo: &str,
    path: &Path,
    mount_point: &str,
) -> Result<Option<String>, CheckError> {
    let mut found = None;
    for line in mountinfo.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.len() < 10 {
            return Err(CheckError::Mountinfo {
                path: path.to_owned(),
                line: line.to_owned(),
            });
        }
        if fields[4] == mount_point {
            found = Some(fields[2].to_owned());
        }
    }
    Ok(found)
}

/// The sysfs directory of a block device, by `major:minor` or by name.
fn sys_dir(root: &Path, link: &str) -> Option<PathBuf> {
    std::fs::canonicalize(root.join(link)).ok()
}

/// The whole disks under the block device whose sysfs directory is `dir`.
fn whole_disks(root: &Path, dir: &Path, depth: u32, out: &mut BTreeSet<String>) {
    if depth > 16 {
        return; // a cycle in a malformed tree
    }
    if dir.join("partition").exists() {
        if let Some(disk) = dir.parent().and_then(Path::file_name) {
            out.insert(disk.to_string_lossy().into_owned());
        }
        return;
    }
    let slaves: Vec<String> = std::fs::read_dir(dir.join("slaves"))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    if slaves.is_empty() {
        if let Some(name) = dir.file_name() {
            out.insert(name.to_string_lossy().into_owned());
        }
        return;
    }
    for slave in slaves {
        if let Some(d) = sys_dir(root, &format!("sys/class/block/{slave}")) {
            whole_disks(root, &d, depth + 1, out);
        }
    }
}

fn resolve_mount(
    root: &Path,
    mountinfo: &str,
    mount_point: &'static str,
) -> Result<Option<MountDisks>, CheckError> {
    let path = root.join("proc/self/mountinfo");
    let Some(dev) = mounted_device(mountinfo, &path, mount_point)? else {
        return Ok(None);
    };
    let dir = sys_dir(root, &format!("sys/dev/block/{dev}"))
        .ok_or_else(|| CheckError::UnknownDevice(mount_point, dev.clone()))?;
    let mut disks = BTreeSet::new();
    whole_disks(root, &dir, 0, &mut disks);
    Ok(Some(MountDisks {
        mount_point: mount_point.to_owned(),
        device: dir
            .file_name()
            .map_or(dev, |n| n.to_string_lossy().into_owned()),
        disks: disks.into_iter().collect(),
    }))
}

/// Mount points whose block device lies on any of `disks` (names as in `/sys/block`),
/// through partitions, device-mapper and md, one per filesystem: the filesystems to
/// freeze for a consistent point of those disks.
pub fn mounts_on(root: &Path, disks: &[String]) -> Result<Vec<String>, CheckError> {
    let path = root.join("proc/self/mountinfo");
    let mountinfo = read(root, "proc/self/mountinfo")?;
    let mut found = Vec::new();
    let mut devices = BTreeSet::new();
    for line in mountinfo.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.len() < 10 {
            return Err(CheckError::Mountinfo {
                path,
                line: line.to_owned(),
            });
        }
        // One mount per filesystem: a bind mount or second mount of the same device
        // would be frozen twice (EBUSY).
        if !devices.insert(fields[2]) {
            continue;
        }
        let Some(dir) = sys_dir(root, &format!("sys/dev/block/{}", fields[2])) else {
            continue; // not a block device (tmpfs, proc, …)
        };
        let mut under = BTreeSet::new();
        whole_disks(root, &dir, 0, &mut under);
        if disks.iter().any(|d| under.contains(d)) {
            found.push(unescape_mount_point(fields[4]));
        }
    }
    Ok(found)
}

/// Every whole disk under a mounted filesystem (names as in `/sys/block`): what an agent
/// protects by default.
pub fn disks_with_mounts(root: &Path) -> Result<Vec<String>, CheckError> {
    let path = root.join("proc/self/mountinfo");
    let mountinfo = read(root, "proc/self/mountinfo")?;
    let mut disks = BTreeSet::new();
    for line in mountinfo.lines().filter(|l| !l.trim().is_empty()) {
        let Some(dev) = line.split(' ').nth(2) else {
            return Err(CheckError::Mountinfo {
                path,
                line: line.to_owned(),
            });
        };
        if let Some(dir) = sys_dir(root, &format!("sys/dev/block/{dev}")) {
            whole_disks(root, &dir, 0, &mut disks);
        }
    }
    Ok(disks.into_iter().collect())
}

/// Mount points in mountinfo escape space, tab, newline and backslash as `\ooo`.
fn unescape_mount_point(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if b[i] == b'\\'
            && let Some(d) = octal
            && let Ok(v) = u8::try_from(d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0')))
        {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn disk_size(root: &Path, name: &str) -> u64 {
    read(root, &format!("sys/class/block/{name}/size"))
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map_or(0, |sectors| sectors * 512)
}

/// The oldest kernel the tracker runs on (major, minor).
const MIN_KERNEL: (u32, u32) = (6, 1);

/// Whether a kernel release string ("6.18.44-…") is at least `min`.
fn kernel_at_least(release: &str, min: (u32, u32)) -> bool {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next().and_then(|p| p.parse::<u32>().ok());
    let minor = parts.next().and_then(|p| p.parse::<u32>().ok());
    matches!((major, minor), (Some(a), Some(b)) if (a, b) >= min)
}

/// Why a kernel of this release cannot run the tracker, if it cannot (what `ferry check`
/// and the loader say).
pub fn kernel_refusal(release: &str) -> Option<String> {
    (!kernel_at_least(release, MIN_KERNEL)).then(|| {
        format!(
            "kernel {release:?} is older than {}.{}: ferry's tracker needs BPF tracepoint \
             programs that the kernel never runs nested within themselves on one CPU",
            MIN_KERNEL.0, MIN_KERNEL.1
        )
    })
}

/// Runs every check against the host (or fixture) at `root`.
pub fn check(root: &Path) -> Result<Report, CheckError> {
    let mountinfo = read(root, "proc/self/mountinfo")?;
    // /proc/sys/kernel/arch is missing on older kernels; on the live host, ask uname.
    let arch = match read(root, "proc/sys/kernel/arch") {
        Ok(a) => a.trim().to_owned(),
        Err(_) if root == Path::new("/") => nix::sys::utsname::uname()
            .map(|u| u.machine().to_string_lossy().into_owned())
            .unwrap_or_default(),
        Err(_) => String::new(),
    };
    let root_mount = resolve_mount(root, &mountinfo, "/")?.ok_or(CheckError::NotMounted("/"))?;
    let boot = resolve_mount(root, &mountinfo, "/boot")?;
    let mut refusals = Vec::new();
    // The tracker's lock-free tables rely on x86's memory ordering (see ebpf/).
    if arch != "x86_64" {
        refusals.push(if arch.is_empty() {
            "the architecture is unknown (no /proc/sys/kernel/arch); ferry protects x86_64 \
             systems only"
                .to_owned()
        } else {
            format!("this is a {arch} system; ferry protects x86_64 systems only")
        });
    }
    let release = read(root, "proc/sys/kernel/osrelease").unwrap_or_default();
    refusals.extend(kernel_refusal(release.trim()));
    if !root.join("sys/kernel/btf/vmlinux").exists() {
        refusals.push(
            "the kernel has no BTF (/sys/kernel/btf/vmlinux): ferry's eBPF tracker needs a kernel \
             built with CONFIG_DEBUG_INFO_BTF (most distribution kernels since 2020)"
                .to_owned(),
        );
    }
    if !root
        .join("proc/sys/kernel/unprivileged_bpf_disabled")
        .exists()
    {
        refusals.push("the kernel has no bpf() system call (CONFIG_BPF_SYSCALL)".to_owned());
    }
    let mut system: BTreeSet<String> = root_mount.disks.iter().cloned().collect();
    if let Some(b) = &boot {
        if !b.disks.iter().all(|d| root_mount.disks.contains(d)) {
            refusals.push(format!(
                "/boot is on disk {} but / is on disk {}: move /boot onto the disk that holds / \
                 and register again",
                b.disks.join(", "),
                root_mount.disks.join(", ")
            ));
        }
        system.extend(b.disks.iter().cloned());
    }
    let system_disks = system
        .into_iter()
        .map(|name| Disk {
            size: disk_size(root, &name),
            name,
        })
        .collect();
    Ok(Report {
        arch,
        root: root_mount,
        boot,
        system_disks,
        refusals,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fixture host: a sysfs snapshot and a mountinfo, built by the test.
    struct Fixture {
        dir: tempfile::TempDir,
        mounts: Vec<(String, String)>,
    }

    impl Fixture {
        fn new() -> Self {
            let f = Self {
                dir: tempfile::tempdir().unwrap(),
                mounts: Vec::new(),
            };
            f.file("proc/sys/kernel/arch", "x86_64\n");
            f.file("proc/sys/kernel/osrelease", "6.18.44-generic\n");
            f.file("proc/sys/kernel/unprivileged_bpf_disabled", "2\n");
            f.file("sys/kernel/btf/vmlinux", "");
            f
        }

        fn file(&self, rel: &str, content: &str) {
            let p = self.dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }

        /// A block device at `devices/<path>` with links from /sys/dev/block and
        /// /sys/class/block, as the kernel lays them out.
        fn device(&self, path: &str, devnum: &str, sectors: u64, partition: bool) -> &Self {
            let name = path.rsplit('/').next().unwrap();
            self.file(&format!("sys/devices/{path}/size"), &format!("{sectors}\n"));
            if partition {
                self.file(&format!("sys/devices/{path}/partition"), "1\n");
            }
            let root = self.dir.path();
            std::fs::create_dir_all(root.join("sys/dev/block")).unwrap();
            std::fs::create_dir_all(root.join("sys/class/block")).unwrap();
            symlink(
                format!("../../devices/{path}"),
                root.join(format!("sys/dev/block/{devnum}")),
            )
            .unwrap();
            symlink(
                format!("../../devices/{path}"),
                root.join(format!("sys/class/block/{name}")),
            )
            .unwrap();
            self
        }

        /// A stacked device (dm, md) over `slaves`.
        fn stacked(&self, name: &str, devnum: &str, slaves: &[&str]) -> &Self {
            self.device(&format!("virtual/block/{name}"), devnum, 1000, false);
            for s in slaves {
                let dir = self
                    .dir
                    .path()
                    .join(format!("sys/devices/virtual/block/{name}/slaves"));
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join(s), "").unwrap();
            }
            self
        }

        fn mount(&mut self, point: &str, devnum: &str) -> &mut Self {
            self.mounts.push((point.to_owned(), devnum.to_owned()));
            let text: String = self
                .mounts
                .iter()
                .enumerate()
                .map(|(i, (p, d))| format!("{} 1 {d} / {p} rw,relatime - ext4 /dev/x rw\n", 20 + i))
                .collect();
            self.file(
                "proc/self/mountinfo",
                &format!("22 1 0:21 / /proc rw - proc proc rw\n{text}"),
            );
            self
        }

        fn check(&self) -> Report {
            check(self.dir.path()).expect("checks run")
        }
    }

    #[test]
    fn one_disk_with_partitions() {
        let mut f = Fixture::new();
        f.device("pci/block/sda", "8:0", 2 << 21, false)
            .device("pci/block/sda/sda1", "8:1", 1 << 20, true)
            .device("pci/block/sda/sda2", "8:2", 1 << 21, true);
        f.mount("/", "8:2").mount("/boot", "8:1");
        let r = f.check();
        assert!(r.refusals.is_empty(), "{:?}", r.refusals);
        assert_eq!(r.root.disks, ["sda"]);
        assert_eq!(r.boot.unwrap().device, "sda1");
        assert_eq!(
            r.system_disks,
            [Disk {
                name: "sda".into(),
                size: 2 << 30
            }]
        );
    }

    #[test]
    fn boot_on_another_disk_is_refused_with_the_fix() {
        let mut f = Fixture::new();
        f.device("pci/block/sda", "8:0", 100, false)
            .device("pci/block/sda/sda1", "8:1", 50, true)
            .device("pci/block/sdb", "8:16", 100, false)
            .device("pci/block/sdb/sdb1", "8:17", 50, true);
        f.mount("/", "8:1").mount("/boot", "8:17");
        let r = f.check();
        assert_eq!(r.refusals.len(), 1, "{:?}", r.refusals);
        assert!(
            r.refusals[0].contains("move /boot onto the disk that holds /"),
            "{}",
            r.refusals[0]
        );
        assert!(r.refusals[0].contains("sdb") && r.refusals[0].contains("sda"));
    }

    #[test]
    fn lvm_root_with_boot_on_a_partition_of_the_same_disk() {
        let mut f = Fixture::new();
        f.device("pci/block/vda", "252:0", 1 << 22, false)
            .device("pci/block/vda/vda1", "252:1", 1 << 20, true)
            .device("pci/block/vda/vda2", "252:2", 3 << 20, true)
            .stacked("dm-0", "253:0", &["vda2"]);
        f.mount("/", "253:0").mount("/boot", "252:1");
        let r = f.check();
        assert!(r.refusals.is_empty(), "{:?}", r.refusals);
        assert_eq!(r.root.device, "dm-0");
        assert_eq!(r.root.disks, ["vda"]);
        assert_eq!(r.system_disks.len(), 1);
    }

    #[test]
    fn nvme_and_md_raid_resolve_to_every_member_disk() {
        let mut f = Fixture::new();
        f.device("pci/nvme/nvme0/nvme0n1", "259:0", 1000, false)
            .device("pci/nvme/nvme0/nvme0n1/nvme0n1p1", "259:1", 100, true)
            .device("pci/nvme/nvme0/nvme0n1/nvme0n1p2", "259:2", 800, true)
            .device("pci/nvme/nvme1/nvme1n1", "259:3", 1000, false)
            .device("pci/nvme/nvme1/nvme1n1/nvme1n1p2", "259:4", 800, true)
            .stacked("md0", "9:0", &["nvme0n1p2", "nvme1n1p2"]);
        f.mount("/", "9:0").mount("/boot", "259:1");
        let r = f.check();
        assert!(r.refusals.is_empty(), "{:?}", r.refusals);
        assert_eq!(r.root.disks, ["nvme0n1", "nvme1n1"]);
        let names: Vec<_> = r.system_disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["nvme0n1", "nvme1n1"]);
    }

    #[test]
    fn no_separate_boot_and_a_whole_disk_filesystem() {
        let mut f = Fixture::new();
        f.device("virtio/block/vda", "254:0", 2048, false);
        f.mount("/", "254:0");
        let r = f.check();
        assert!(r.refusals.is_empty());
        assert_eq!(r.boot, None);
        assert_eq!(
            r.system_disks,
            [Disk {
                name: "vda".into(),
                size: 2048 * 512
            }]
        );
    }

    #[test]
    fn thirty_two_bit_and_kernels_without_btf_or_bpf_are_refused() {
        let mut f = Fixture::new();
        f.device("virtio/block/vda", "254:0", 2048, false);
        f.mount("/", "254:0");
        f.file("proc/sys/kernel/arch", "i686\n");
        f.file("proc/sys/kernel/osrelease", "6.0.19\n");
        std::fs::remove_file(f.dir.path().join("sys/kernel/btf/vmlinux")).unwrap();
        std::fs::remove_file(
            f.dir
                .path()
                .join("proc/sys/kernel/unprivileged_bpf_disabled"),
        )
        .unwrap();
        let r = f.check();
        let all = r.refusals.join("\n");
        assert_eq!(r.refusals.len(), 4, "{all}");
        assert!(
            all.contains("i686 system; ferry protects x86_64 systems only"),
            "{all}"
        );
        assert!(all.contains("kernel \"6.0.19\" is older than 6.1"), "{all}");
        f.file("proc/sys/kernel/arch", "aarch64\n");
        assert!(f.check().refusals.join("\n").contains("aarch64 system"));
        assert!(kernel_at_least("6.1.0-13-amd64", MIN_KERNEL));
        assert!(kernel_at_least("10.0", MIN_KERNEL));
        assert!(!kernel_at_least("5.19.17", MIN_KERNEL));
        assert!(!kernel_at_least("garbage", MIN_KERNEL));
        assert!(all.contains("no BTF"), "{all}");
        assert!(all.contains("no bpf() system call"), "{all}");
    }

    #[test]
    fn unreadable_or_unknown_mounts_are_errors() {
        let f = Fixture::new();
        assert!(matches!(check(f.dir.path()), Err(CheckError::Read { .. })));
        let mut f = Fixture::new();
        f.mount("/", "8:1");
        assert!(matches!(
            check(f.dir.path()),
            Err(CheckError::UnknownDevice("/", _))
        ));
        let mut f = Fixture::new();
        f.device("virtio/block/vda", "254:0", 2048, false);
        f.mount("/boot", "254:0");
        assert!(matches!(
            check(f.dir.path()),
            Err(CheckError::NotMounted("/"))
        ));
    }

    #[test]
    fn this_host_passes_or_is_refused_with_reasons() {
        let r = check(Path::new("/")).expect("checking this host");
        assert!(!r.root.disks.is_empty(), "/ resolved to no disk: {r:?}");
        assert!(r.system_disks.iter().all(|d| d.size > 0), "{r:?}");
    }
}
