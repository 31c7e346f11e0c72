//! An instance's block devices on this host: image files attached as loop devices
//! (`losetup -P`, so partitions appear), detached again, and the filesystems mounted
//! from them unmounted (deepest first, lazily when busy). A loop device is detached only
//! while it is still backed by the instance's own image: after a restart its name may
//! belong to another file. Original disks an instance was restored onto are never
//! detached, only unmounted.

use super::{Disk, InstanceError, io_err, tool};
use std::path::Path;

/// Attaches `image` as a new loop device, with partitions; returns the device path.
pub(super) fn attach_loop(image: &Path) -> Result<String, InstanceError> {
    let image_text = image.to_string_lossy().into_owned();
    tool("losetup", &["-P", "-f", "--show", &image_text])
}

/// Detaches the disk's loop device if it is still the one backed by its image.
pub(super) fn detach_loop(disk: &Disk) -> Result<(), InstanceError> {
    if backs(&disk.device, &disk.image) {
        tool("losetup", &["-d", &disk.device]).map(drop)?;
    }
    Ok(())
}

/// Whether loop `device` is still attached to `image` (a restarted machine may have
/// given the name to another file).
fn backs(device: &str, image: &Path) -> bool {
    let name = device.trim_start_matches("/dev/");
    std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file"))
        .is_ok_and(|f| Path::new(f.trim()) == image)
}

/// Unmounts every filesystem mounted from `device` or one of its partitions.
pub(super) fn unmount_device(device: &str) -> Result<(), InstanceError> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")
        .map_err(io_err("read", Path::new("/proc/self/mounts")))?;
    let mut targets: Vec<&str> = mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let (source, target) = (f.next()?, f.next()?);
            let rest = source.strip_prefix(device)?;
            (rest.is_empty() || rest.starts_with('p')).then_some(target)
        })
        .collect();
    // Deepest first.
    targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
    for target in targets {
        let target = crate::original_disks::unescape(target);
        if nix::mount::umount(target.as_str()).is_err() {
            nix::mount::umount2(target.as_str(), nix::mount::MntFlags::MNT_DETACH)
                .map_err(|e| io_err("unmount", Path::new(&target))(e.into()))?;
        }
    }
    Ok(())
}
