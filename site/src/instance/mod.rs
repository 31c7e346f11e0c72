//! Instances: a server brought up at the standby site from one of its recovery points,
//! for a drill (a disposable copy beside running replication) or a failover (the copy
//! becomes production).
//!
//! Bringing one up: the point's disks are rebuilt into sparse image files in the
//! instance's directory (`DATA/instances/<id>/disk-N.img`; every record MAC-checked,
//! the barrier too), attached as loop devices (`losetup -P`, so partitions appear), and a
//! launcher runs:
//! - `script`: the post-launch script — only one that [`crate::scripts`] admits (in the
//!   configured scripts directory, root-owned, not writable by others) — with the
//!   instance in its environment
//!   (`FERRY_INSTANCE`, `FERRY_KIND`, `FERRY_SERVER`, `FERRY_POINT`, `FERRY_SEQ`,
//!   `FERRY_DEVICES` space-separated in disk order, `FERRY_DEVICE_<N>`,
//!   `FERRY_INSTANCE_DIR`, `FERRY_NETWORK`, `FERRY_IP`); its output goes to
//!   `script.log`, its exit status is recorded; it must finish within
//!   [`SCRIPT_TIMEOUT`];
//! - `qemu`: boots the first disk with `qemu-system-x86_64` ([`qemu_command`]) with the
//!   chosen CPUs, memory and network, serial console in `console.log`; a post-launch
//!   script, if given, runs after the boot starts.
//!
//! Files: the instance's directory and `DATA/instances` are 0700, every file made in it
//! (`disk-N.img`, `instance.json`, `script.log`, `console.log`) 0600, whatever the
//! umask ([`ferry_standby::private_files`]): the images are the server's plaintext.
//!
//! The instance is described in `instance.json` (written atomically) so that a restarted
//! standby still knows it. Cleaning stops the VM, unmounts whatever is mounted from the
//! instance's devices, detaches them and removes the directory — everything bringing it
//!
//! A file per job: `spec` (what the operator asks for, and every check made before
//! anything is), `store` (`instance.json`), `launch` (bringing up, stopping, cleaning),
//! `devices` (loop devices and mounts), `script` and `qemu` (the launchers) and
//! `error`. This file holds the instance's types and the [`Instances`] of a site.

mod devices;
mod error;
mod launch;
mod qemu;
mod script;
mod spec;
mod store;

pub use error::InstanceError;
pub(crate) use qemu::terminate;
pub use qemu::{DEFAULT_QEMU_ACCEL, Forward, QEMU_ACCELS, qemu_command};
pub use script::{OUTPUT_TAIL, SCRIPT_TIMEOUT};
pub use spec::{Launcher, Spec};

use crate::scripts::ScriptsDir;
use error::io_err;
use ferry_standby::server::DataDir;
use ferry_wire::{DiskId, PointId, Seq, ServerId};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// What an instance is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Drill,
    Failover,
    /// The server back at its original site, from the reverse replica.
    Failback,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Drill => "drill",
            Kind::Failover => "failover",
            Kind::Failback => "failback",
        }
    }
}

/// One disk of an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    pub disk: DiskId,
    /// The protected device's name.
    pub name: String,
    pub image: PathBuf,
    pub device: String,
}

/// A post-launch script's run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptRun {
    pub script: PathBuf,
    /// `None`: killed (timeout or signal).
    pub exit_code: Option<i32>,
    pub output: String,
    pub log: PathBuf,
    pub millis: u64,
}

/// A VM the qemu launcher started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vm {
    pub pid: u32,
    pub console: PathBuf,
    pub command: Vec<String>,
    /// The guest ports of `Spec::forward` and where the standby reaches them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forwards: Vec<Forward>,
}

/// An instance as it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub id: String,
    pub kind: Kind,
    pub server: ServerId,
    pub spec: Spec,
    /// The point's id (`None` for "latest") and the seq it was rebuilt at.
    pub point: Option<PointId>,
    pub seq: Seq,
    pub dir: PathBuf,
    pub disks: Vec<Disk>,
    pub script: Option<ScriptRun>,
    pub vm: Option<Vm>,
    pub created_unix_ms: u64,
    /// Time to rebuild the disks, and from the request to the launcher's end (the RTO).
    pub rebuild_ms: u64,
    pub ready_ms: u64,
}

impl Instance {
    /// Whether the launcher succeeded (the script exited 0, the VM started).
    pub fn launched(&self) -> bool {
        self.script.as_ref().is_none_or(|s| s.exit_code == Some(0))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Runs a system tool, returning its stdout, or its stderr as the error.
fn tool(program: &str, args: &[&str]) -> Result<String, InstanceError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| InstanceError::Tool {
            command: program.to_owned(),
            output: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(InstanceError::Tool {
            command: format!("{program} {}", args.join(" ")),
            output: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The instances of a standby site, under `DATA/instances`.
#[derive(Debug)]
pub struct Instances {
    data: DataDir,
    root: PathBuf,
    /// Where post-launch scripts must live ([`crate::scripts`]); set once at start.
    scripts: std::sync::OnceLock<ScriptsDir>,
    /// qemu's accelerators, in order of preference ([`QEMU_ACCELS`]); set once at start.
    qemu_accel: std::sync::OnceLock<String>,
}

impl Instances {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            data: DataDir::new(data_dir),
            root: data_dir.join("instances"),
            scripts: std::sync::OnceLock::new(),
            qemu_accel: std::sync::OnceLock::new(),
        }
    }

    /// Sets qemu's accelerators (once, at start; without it, [`DEFAULT_QEMU_ACCEL`]).
    pub fn set_qemu_accel(&self, accel: &str) {
        let _ = self.qemu_accel.set(accel.to_owned());
    }

    fn qemu_accel(&self) -> String {
        self.qemu_accel
            .get()
            .cloned()
            .unwrap_or_else(|| DEFAULT_QEMU_ACCEL.to_owned())
    }

    /// Sets the scripts directory (once, at start; without it, [`ScriptsDir::default`]).
    pub fn set_scripts_dir(&self, dir: ScriptsDir) {
        let _ = self.scripts.set(dir);
    }

    fn scripts(&self) -> ScriptsDir {
        self.scripts.get().cloned().unwrap_or_default()
    }
}

/// A spec for tests: qemu, 2 CPUs, 2 GiB, bridge `br0`, `10.0.0.5/24`, "latest".
#[cfg(test)]
fn test_spec() -> Spec {
    Spec {
        point: ferry_standby::points::PointSelector::Latest,
        launcher: Launcher::Qemu,
        script: None,
        cpus: 2,
        memory_mib: 2048,
        network: Some("br0".into()),
        ip: Some("10.0.0.5/24".into()),
        forward: Vec::new(),
    }
}
