//! The original machine's disks, on real loop devices (root): a disk is found by the
//! identity and size it registered — a loop device by its backing file — even under
//! another name; another size, another file, or two devices with the same identity are
//! refused; a disk with a mounted filesystem, or the one holding `/`, is refused, naming
//! why (partitions and stacked devices: the unit tests over a fake sysfs); a virtual
//! machine's disk, registered by the serial its guest saw, is found through the site's
//! volume link and only there, and only at its size.

use ferry_site::original_disks::{self, OriginalDisk, OriginalDiskError, Volumes};
use ferry_wire::disk_identity::DiskIdentity;
use std::path::{Path, PathBuf};
use std::process::Command;

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the original-disk tests need root (loop devices and mounts); run them as root, as CI does"
    );
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A loop device, detached on drop.
struct Loop(String);

impl Loop {
    fn attach(file: &Path) -> Self {
        Self(run(
            "losetup",
            &["--find", "--show", file.to_str().expect("utf-8")],
        ))
    }

    fn name(&self) -> &str {
        self.0.trim_start_matches("/dev/")
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// A mount, unmounted on drop.
struct Mounted(PathBuf);

impl Mounted {
    fn new(device: &str, target: &Path) -> Self {
        std::fs::create_dir_all(target).expect("mkdir");
        run("mount", &[device, target.to_str().expect("utf-8")]);
        Self(target.to_owned())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Finds a disk as a site with no volumes directory does.
fn locate(wanted: &OriginalDisk) -> Result<OriginalDisk, OriginalDiskError> {
    original_disks::locate(wanted, &Volumes::default())
}

fn verify(disk: &OriginalDisk) -> Result<(), OriginalDiskError> {
    original_disks::verify(disk, &Volumes::default())
}

fn sparse(path: &Path, size: u64) {
    std::fs::File::create(path)
        .and_then(|f| f.set_len(size))
        .expect("a sparse file");
}

const SIZE: u64 = 16 << 20;

/// Two loop devices of [`SIZE`] over sparse files a.img and b.img in `dir`; a.img's path.
fn two_disks(dir: &Path) -> (PathBuf, Loop, Loop) {
    let (a_file, b_file) = (dir.join("a.img"), dir.join("b.img"));
    sparse(&a_file, SIZE);
    sparse(&b_file, SIZE);
    let (a, b) = (Loop::attach(&a_file), Loop::attach(&b_file));
    (a_file, a, b)
}

#[test]
fn an_original_disk_is_found_by_identity_and_size_not_by_name() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let (a_file, a, b) = two_disks(dir.path());
    let identity = original_disks::identify(a.name());
    assert_eq!(
        identity,
        DiskIdentity::LoopBackingFile(a_file.to_str().expect("utf-8").to_owned()),
        "a loop device is identified by its backing file"
    );
    // Registered as b's name (the names swapped since): a is the one found.
    let registered = OriginalDisk {
        path: PathBuf::from(&b.0),
        size: SIZE,
        identity: identity.clone(),
    };
    let found = locate(&registered).expect("found by identity");
    assert_eq!(found.path, PathBuf::from(&a.0));
    verify(&found).expect("still that disk");
    // b is not that disk, whatever its name says.
    let err = verify(&registered).expect_err("b is another disk");
    assert!(
        matches!(err, OriginalDiskError::NotThatDisk { .. }),
        "{err}"
    );
    // Another size, or a file attached nowhere: not found.
    for wanted in [
        OriginalDisk {
            size: SIZE * 2,
            ..registered.clone()
        },
        OriginalDisk {
            identity: DiskIdentity::LoopBackingFile("/nowhere.img".into()),
            ..registered.clone()
        },
    ] {
        let err = locate(&wanted).expect_err("not attached");
        assert!(matches!(err, OriginalDiskError::NotFound { .. }), "{err}");
    }
    // The same file attached twice: two candidates, no guess.
    let again = Loop::attach(&a_file);
    let err = locate(&OriginalDisk {
        path: PathBuf::from("/dev/sdzz"),
        ..registered.clone()
    })
    .expect_err("ambiguous");
    assert!(
        matches!(err, OriginalDiskError::Ambiguous { .. })
            && err.to_string().contains(&a.0)
            && err.to_string().contains(&again.0),
        "{err}"
    );
}

#[test]
fn an_original_disk_in_use_is_refused_naming_why() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    // A filesystem on the whole disk, mounted.
    let whole = dir.path().join("whole.img");
    sparse(&whole, SIZE);
    let disk = Loop::attach(&whole);
    run("mkfs.ext4", &["-q", "-F", &disk.0]);
    original_disks::check_unused(Path::new(&disk.0)).expect("unused while unmounted");
    {
        let mnt = dir.path().join("mnt-whole");
        let _m = Mounted::new(&disk.0, &mnt);
        let err = original_disks::check_unused(Path::new(&disk.0)).expect_err("mounted");
        assert!(
            matches!(err, OriginalDiskError::InUse { .. })
                && err.to_string().contains(mnt.to_str().expect("utf-8")),
            "the refusal names the mount: {err}"
        );
        let wanted = OriginalDisk {
            path: PathBuf::from(&disk.0),
            size: SIZE,
            identity: original_disks::identify(disk.name()),
        };
        assert!(
            matches!(locate(&wanted), Err(OriginalDiskError::InUse { .. })),
            "replication start refuses a mounted original disk"
        );
    }
    // Partitions and what is stacked on them (device-mapper, md) are covered by the
    // unit test over a fake sysfs: this machine's kernel reads no partition table
    // (CONFIG_MSDOS_PARTITION and CONFIG_EFI_PARTITION are off) and has no
    // device-mapper.
    let err = original_disks::check_unused(Path::new("/dev/null")).expect_err("not a disk");
    assert!(matches!(err, OriginalDiskError::NotADisk(_)), "{err}");
}

#[test]
fn the_disk_holding_root_is_refused() {
    require_root();
    // The whole disk under `/`: from its device number, up to the disk if a partition.
    let line = std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/"))
        .map(str::to_owned)
        .expect("a mount at /");
    let fields: Vec<&str> = line.split(' ').collect();
    let source = fields
        .iter()
        .position(|f| *f == "-")
        .and_then(|at| fields.get(at + 2))
        .copied()
        .expect("a source");
    let disk = if Path::new(source).exists() {
        let sys = std::fs::canonicalize(format!(
            "/sys/class/block/{}",
            source.trim_start_matches("/dev/")
        ))
        .expect("the root device in sysfs");
        let whole = if sys.join("partition").exists() {
            sys.parent().expect("a disk").to_owned()
        } else {
            sys
        };
        format!(
            "/dev/{}",
            whole.file_name().expect("a name").to_string_lossy()
        )
    } else {
        panic!("/ is mounted from {source:?}, not a block device: this test needs / on a disk");
    };
    let err = original_disks::check_unused(Path::new(&disk)).expect_err("it holds /");
    assert!(err.to_string().contains("it holds /"), "{disk}: {err}");
}

#[test]
fn a_vm_disk_is_found_through_its_volume_link_and_only_there() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, a, b) = two_disks(dir.path());
    let links = dir.path().join("volumes");
    std::fs::create_dir(&links).expect("mkdir");
    std::os::unix::fs::symlink(&a.0, links.join("vm-sys")).expect("symlink");
    let volumes = Volumes::new(Some(links.clone()));
    // As the guest registered it: its virtio disk vda, serial vm-sys.
    let registered = OriginalDisk {
        path: PathBuf::from("/dev/vda"),
        size: SIZE,
        identity: DiskIdentity::Serial("vm-sys".into()),
    };
    let err = locate(&registered).expect_err("without the link, no disk here has that serial");
    assert!(
        matches!(err, OriginalDiskError::NotFound { .. })
            && err.to_string().contains("volumes_dir"),
        "{err}"
    );
    let found = original_disks::locate(&registered, &volumes).expect("found through the link");
    assert_eq!(found.path, PathBuf::from(&a.0));
    original_disks::verify(&found, &volumes).expect("still that disk");
    // Another device than the link's is not that disk, nor is the linked one at another
    // size; a link moved to b makes a another disk.
    let on_b = OriginalDisk {
        path: PathBuf::from(&b.0),
        ..registered.clone()
    };
    let err = original_disks::verify(&on_b, &volumes).expect_err("b is not linked");
    assert!(
        matches!(err, OriginalDiskError::NotThatDisk { .. }),
        "{err}"
    );
    let bigger = OriginalDisk {
        size: SIZE * 2,
        ..registered.clone()
    };
    let err = original_disks::locate(&bigger, &volumes).expect_err("another size");
    assert!(matches!(err, OriginalDiskError::NotFound { .. }), "{err}");
    std::fs::remove_file(links.join("vm-sys")).expect("rm");
    std::os::unix::fs::symlink(&b.0, links.join("vm-sys")).expect("symlink");
    let err = original_disks::verify(&found, &volumes).expect_err("the link moved");
    assert!(
        matches!(err, OriginalDiskError::NotThatDisk { .. }),
        "{err}"
    );
}
