//! Bringing an instance up, stopping it and cleaning it away (see the parent module's
//! doc for what each makes). The invariants:
//! - everything is checked ([`super::spec`]) before anything is made;
//! - the script that runs is the path admitted, not one a swapped link points to;
//! - the directories are 0700 and the images 0600 before a byte of the point is written;
//! - a launch that fails cleans what it made (only what was written onto original
//!   disks stays), and cleaning goes on past a failed step, reporting the first.

use super::devices::{attach_loop, detach_loop, unmount_device};
use super::qemu::{start_vm, stop_vm};
use super::script::run_script;
use super::store::save;
use super::{Disk, Instance, InstanceError, Instances, Kind, Launcher, Spec, io_err, millis};
use ferry_standby::points::PointSelector;
use ferry_standby::private_files;
use ferry_standby::rebuild::{self, Target};
use ferry_standby::server::ServerState;
use ferry_wire::message::DiskInfo;
use ferry_wire::{RecoveryKeys, Seq, ServerId, error_chain};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What a launch rebuilds from: the server's store, the point, its keys, and the
/// devices to lay it over (none: new images).
struct Source<'a> {
    state: &'a ServerState,
    seq: Seq,
    keys: &'a RecoveryKeys,
    onto: &'a [PathBuf],
}

impl Instances {
    /// Brings up an instance of `server` (see the module doc). `keys` are the server's
    /// recovery keys, needed to check and rebuild. With `onto`, the point is laid over
    /// those block devices (disk N onto the N-th; only what the log holds is written)
    /// and they are the instance's devices, instead of new images. On error nothing of
    /// the instance is left (but what was written onto `onto`).
    pub fn launch(
        &self,
        kind: Kind,
        server: &ServerId,
        spec: Spec,
        keys: &RecoveryKeys,
        onto: &[PathBuf],
    ) -> Result<Instance, InstanceError> {
        let started = Instant::now();
        let selector = Self::check(&spec)?;
        let (state, seq) = self.open_point(server, &spec)?;
        // What runs is the path checked: a link swapped after the check is not followed.
        let script = self.admit_script(&spec)?;
        let disks = rebuild::point_disks(&state, seq, keys)?;
        let created = ferry_standby::now_ms();
        let id = format!("{}-{server}-{created}", kind.name());
        let dir = self.root.join(&id);
        // The images are the server's plaintext: the directories are the standby's own,
        // 0700 (an existing `instances` directory is tightened), the files 0600.
        private_files::ensure_dir(&self.root).map_err(io_err("create", &self.root))?;
        private_files::ensure_dir(&dir).map_err(io_err("create", &dir))?;
        let mut instance = Instance {
            id,
            kind,
            server: server.clone(),
            point: match selector {
                PointSelector::Latest => None,
                PointSelector::Id(p) => Some(p),
            },
            spec,
            seq,
            dir,
            disks: Vec::new(),
            script: None,
            vm: None,
            created_unix_ms: created,
            rebuild_ms: 0,
            ready_ms: 0,
        };
        let source = Source {
            state: &state,
            seq,
            keys,
            onto,
        };
        match bring_up(
            &mut instance,
            &source,
            &disks,
            script.as_deref(),
            &self.qemu_accel(),
            started,
        ) {
            Ok(()) => Ok(instance),
            Err(e) => {
                if let Err(clean) = clean_instance(&instance) {
                    tracing::error!(instance = %instance.id, "cleaning a failed launch: {}", error_chain(&clean));
                }
                Err(e)
            }
        }
    }

    /// Stops an instance's use of its disks — its VM stopped, its devices' filesystems
    /// unmounted — and keeps them (a failback takes its last point from them).
    pub fn stop(&self, id: &str) -> Result<Instance, InstanceError> {
        let instance = self.get(id)?;
        stop_vm(&instance);
        for disk in &instance.disks {
            unmount_device(&disk.device)?;
        }
        Ok(instance)
    }

    /// Removes an instance and everything bringing it up made.
    pub fn clean(&self, id: &str) -> Result<Instance, InstanceError> {
        let instance = self.get(id)?;
        clean_instance(&instance)?;
        Ok(instance)
    }
}

/// Rebuilds the disks into the instance, runs its launchers and saves it; what it made
/// is in `instance` even when it fails, for the cleaning.
fn bring_up(
    instance: &mut Instance,
    source: &Source<'_>,
    disks: &[DiskInfo],
    script: Option<&Path>,
    qemu_accel: &str,
    started: Instant,
) -> Result<(), InstanceError> {
    let threads = std::thread::available_parallelism().map_or(2, usize::from);
    for disk in disks {
        let made = rebuild_one(&instance.dir, source, disk, threads)?;
        instance.disks.push(made);
    }
    instance.rebuild_ms = millis(started.elapsed());
    if instance.spec.launcher == Launcher::Qemu {
        instance.vm = Some(start_vm(instance, qemu_accel)?);
    }
    if let Some(script) = script {
        instance.script = Some(run_script(instance, script)?);
    }
    instance.ready_ms = millis(started.elapsed());
    save(instance)
}

/// Rebuilds one disk of the point: over its original device when the launch has them
/// (then that device is the instance's), else into `dir/disk-N.img`, attached as a loop
/// device.
fn rebuild_one(
    dir: &Path,
    source: &Source<'_>,
    disk: &DiskInfo,
    threads: usize,
) -> Result<Disk, InstanceError> {
    let (image, target) = match source.onto.get(disk.disk.index()) {
        Some(device) => (device.clone(), Target::overlay(device, disk)?),
        None if !source.onto.is_empty() => {
            return Err(InstanceError::NoOriginal(disk.disk));
        }
        None => {
            let image = dir.join(format!("disk-{}.img", disk.disk.get()));
            let target = Target::open(&image, disk)?;
            (image, target)
        }
    };
    let (log, seq, keys) = (&source.state.log, source.seq, source.keys);
    rebuild::rebuild_disk(log, disk, seq, target, keys, threads, &|_| {})?;
    let device = if source.onto.is_empty() {
        attach_loop(&image)?
    } else {
        image.to_string_lossy().into_owned()
    };
    Ok(Disk {
        disk: disk.disk,
        name: disk.name.clone(),
        image,
        device,
    })
}

/// Stops the VM, unmounts the devices' filesystems, detaches them, removes the
/// directory; goes on past a failure and reports the first.
fn clean_instance(instance: &Instance) -> Result<(), InstanceError> {
    stop_vm(instance);
    let mut first = None;
    for disk in &instance.disks {
        let step = unmount_device(&disk.device).and_then(|()| detach_loop(disk));
        if let Err(e) = step {
            first.get_or_insert(e);
        }
    }
    match std::fs::remove_dir_all(&instance.dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            first.get_or_insert(io_err("remove", &instance.dir)(e));
        }
    }
    first.map_or(Ok(()), Err)
}
