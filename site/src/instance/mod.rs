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
//! up created. Bringing one up that fails cleans what it had made.

use crate::api::ErrorCode;
use crate::scripts::ScriptsDir;
use ferry_standby::points::{self, PointSelector};
use ferry_standby::private_files;
use ferry_standby::rebuild::{self, Target};
use ferry_standby::server::{DataDir, ServerState};
use ferry_wire::{DiskId, PointId, Seq};
use ferry_wire::{RecoveryKeys, ServerId, error_chain};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest a post-launch script may run.
pub const SCRIPT_TIMEOUT: Duration = Duration::from_secs(600);
/// Most output of a script kept in `instance.json` (the whole is in `script.log`).
pub const OUTPUT_TAIL: usize = 16 << 10;

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

/// How the instance is run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Launcher {
    Script,
    Qemu,
}

/// What the operator chose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// A point id, or "latest" (the newest state the standby holds); a string in JSON.
    pub point: PointSelector,
    pub launcher: Launcher,
    /// The post-launch script (required for the script launcher).
    pub script: Option<PathBuf>,
    pub cpus: u32,
    pub memory_mib: u32,
    /// Network to attach the instance to (qemu: "user", or a bridge name).
    pub network: Option<String>,
    /// Address for the instance (given to the script and to the VM through fw_cfg
    /// `opt/ferry/ip`).
    pub ip: Option<String>,
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

/// Why an instance could not be brought up or cleaned.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// A post-launch script refused ([`crate::scripts`]).
    #[error(transparent)]
    Script(#[from] crate::scripts::ScriptError),
    #[error("the script launcher needs a post-launch script (--script)")]
    NoScript,
    #[error("cpus must be 1 to 64 and memory 128 to 262144 MiB (got {0} CPUs, {1} MiB)")]
    Size(u32, u32),
    #[error(
        "network {0:?} is not \"user\", \"none\" or a bridge name (1 to 15 letters, digits, . _ -)"
    )]
    BadNetwork(String),
    #[error("{0:?} is not an IP address (optionally with /prefix)")]
    BadIp(String),
    #[error("server {0} has no retained point {1}; see `ferry point list --server {0}`")]
    NoPoint(ServerId, PointSelector),
    #[error("server {0} has not registered its disks yet")]
    NotRegistered(ServerId),
    #[error("cannot read the store of server {0}")]
    Store(ServerId, #[source] ferry_standby::server::OpenError),
    #[error(transparent)]
    Rebuild(#[from] rebuild::RebuildError),
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} failed: {output}")]
    Tool { command: String, output: String },
    #[error("no original disk is given for disk {}", .0.get())]
    NoOriginal(DiskId),
    #[error("no instance {0}")]
    Unknown(String),
    #[error("instance {} of {} is not valid", .0.display(), "instance.json")]
    Corrupt(PathBuf, #[source] serde_json::Error),
}

impl InstanceError {
    /// The API's code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            InstanceError::Script(_)
            | InstanceError::NoScript
            | InstanceError::Size(..)
            | InstanceError::BadNetwork(_)
            | InstanceError::BadIp(_)
            | InstanceError::NoOriginal(_) => ErrorCode::BadRequest,
            InstanceError::NoPoint(..) | InstanceError::Unknown(_) => ErrorCode::NotFound,
            InstanceError::NotRegistered(_) => ErrorCode::NotAllowed,
            InstanceError::Store(..)
            | InstanceError::Rebuild(_)
            | InstanceError::Io { .. }
            | InstanceError::Tool { .. }
            | InstanceError::Corrupt(..) => ErrorCode::Internal,
        }
    }
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> InstanceError {
    let path = path.to_owned();
    move |source| InstanceError::Io {
        action,
        path,
        source,
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
}

impl Instances {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            data: DataDir::new(data_dir),
            root: data_dir.join("instances"),
            scripts: std::sync::OnceLock::new(),
        }
    }

    /// Sets the scripts directory (once, at start; without it, [`ScriptsDir::default`]).
    pub fn set_scripts_dir(&self, dir: ScriptsDir) {
        let _ = self.scripts.set(dir);
    }

    fn scripts(&self) -> ScriptsDir {
        self.scripts.get().cloned().unwrap_or_default()
    }

    /// The post-launch script of `spec` that would run (its canonical path), if it has
    /// one and [`crate::scripts`] admits it.
    fn admit_script(&self, spec: &Spec) -> Result<Option<PathBuf>, InstanceError> {
        spec.script
            .as_deref()
            .map(|s| self.scripts().admit(s))
            .transpose()
            .map_err(InstanceError::from)
    }

    /// Every instance, oldest first.
    pub fn list(&self) -> Result<Vec<Instance>, InstanceError> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io_err("list", &self.root)(e)),
        };
        for entry in entries {
            let path = entry.map_err(io_err("list", &self.root))?.path();
            if let Some(i) = Self::load(&path)? {
                out.push(i);
            }
        }
        out.sort_by_key(|i| (i.created_unix_ms, i.id.clone()));
        Ok(out)
    }

    pub fn get(&self, id: &str) -> Result<Instance, InstanceError> {
        Self::load(&self.root.join(id))?.ok_or_else(|| InstanceError::Unknown(id.to_owned()))
    }

    fn load(dir: &Path) -> Result<Option<Instance>, InstanceError> {
        let file = dir.join("instance.json");
        match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| InstanceError::Corrupt(file, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("read", &file)(e)),
        }
    }

    /// Checks what can be checked before anything is made, anywhere: the script's
    /// place is checked by the site that runs it ([`crate::scripts`]). Returns the point
    /// asked for.
    pub fn check(spec: &Spec) -> Result<PointSelector, InstanceError> {
        if !(1..=64).contains(&spec.cpus) || !(128..=262_144).contains(&spec.memory_mib) {
            return Err(InstanceError::Size(spec.cpus, spec.memory_mib));
        }
        match (&spec.launcher, &spec.script) {
            (Launcher::Script, None) => return Err(InstanceError::NoScript),
            (_, Some(script)) if !script.is_absolute() => {
                return Err(crate::scripts::ScriptError::NotAbsolute(script.clone()).into());
            }
            _ => {}
        }
        // They end up on qemu's command line: nothing but a name and an address.
        if let Some(net) = &spec.network
            && (net.is_empty()
                || net.len() > 15
                || !net
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
        {
            return Err(InstanceError::BadNetwork(net.clone()));
        }
        if let Some(ip) = &spec.ip {
            let (addr, prefix) = ip.split_once('/').unwrap_or((ip, "0"));
            if addr.parse::<std::net::IpAddr>().is_err() || prefix.parse::<u8>().is_err() {
                return Err(InstanceError::BadIp(ip.clone()));
            }
        }
        Ok(spec.point)
    }

    /// Checks a launch of `server` at `spec.point` without making anything: the spec,
    /// the server's registration, the point; returns the point's seq.
    pub fn resolve(&self, server: &ServerId, spec: &Spec) -> Result<Seq, InstanceError> {
        self.open_point(server, spec).map(|(_, seq)| seq)
    }

    /// The server's store (read-only) and the seq of the point.
    fn open_point(
        &self,
        server: &ServerId,
        spec: &Spec,
    ) -> Result<(ServerState, Seq), InstanceError> {
        let selector = Self::check(spec)?;
        self.admit_script(spec)?;
        let state = self
            .data
            .read_server(server)
            .map_err(|e| InstanceError::Store(server.clone(), e))?;
        if state.registration().is_none() {
            return Err(InstanceError::NotRegistered(server.clone()));
        }
        match points::resolve(&state.points(), state.log.last_seq(), selector) {
            Some(seq) if seq.get() > 0 => Ok((state, seq)),
            _ => Err(InstanceError::NoPoint(server.clone(), spec.point)),
        }
    }

    /// Brings up an instance of `server` (see the module doc). `keys` are the server's
    /// recovery keys, needed to check and rebuild. With `onto`, the point is laid over those block devices
    /// (disk N onto the N-th; only what the log holds is written) and they are the
    /// instance's devices, instead of new images. On error nothing of the instance is
    /// left (but what was written onto `onto`).
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
            dir: dir.clone(),
            disks: Vec::new(),
            script: None,
            vm: None,
            created_unix_ms: created,
            rebuild_ms: 0,
            ready_ms: 0,
        };
        let result = (|| {
            let threads = std::thread::available_parallelism().map_or(2, usize::from);
            for disk in &disks {
                let (image, target) = match onto.get(disk.disk.index()) {
                    Some(device) => (device.clone(), Target::overlay(device, disk)?),
                    None if !onto.is_empty() => {
                        return Err(InstanceError::NoOriginal(disk.disk));
                    }
                    None => {
                        let image = dir.join(format!("disk-{}.img", disk.disk.get()));
                        let target = Target::open(&image, disk)?;
                        (image, target)
                    }
                };
                rebuild::rebuild_disk(&state.log, disk, seq, target, keys, threads, &|_| {})?;
                let device = if onto.is_empty() {
                    let image_text = image.to_string_lossy().into_owned();
                    tool("losetup", &["-P", "-f", "--show", &image_text])?
                } else {
                    image.to_string_lossy().into_owned()
                };
                instance.disks.push(Disk {
                    disk: disk.disk,
                    name: disk.name.clone(),
                    image,
                    device,
                });
            }
            instance.rebuild_ms = millis(started.elapsed());
            if instance.spec.launcher == Launcher::Qemu {
                instance.vm = Some(start_vm(&instance)?);
            }
            if let Some(script) = &script {
                instance.script = Some(run_script(&instance, script)?);
            }
            instance.ready_ms = millis(started.elapsed());
            save(&instance)
        })();
        match result {
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

fn save(instance: &Instance) -> Result<(), InstanceError> {
    let path = instance.dir.join("instance.json");
    let tmp = instance.dir.join("instance.json.tmp");
    let text = serde_json::to_vec_pretty(instance).expect("an instance serializes");
    private_files::write(&tmp, &text).map_err(io_err("write", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_err("replace", &path))
}

/// The environment a post-launch script gets.
fn script_env(instance: &Instance) -> Vec<(String, String)> {
    let devices: Vec<&str> = instance.disks.iter().map(|d| d.device.as_str()).collect();
    let mut env = vec![
        ("FERRY_INSTANCE".to_owned(), instance.id.clone()),
        ("FERRY_KIND".to_owned(), instance.kind.name().to_owned()),
        ("FERRY_SERVER".to_owned(), instance.server.to_string()),
        (
            "FERRY_POINT".to_owned(),
            instance
                .point
                .map_or_else(|| "latest".to_owned(), |p| p.get().to_string()),
        ),
        ("FERRY_SEQ".to_owned(), instance.seq.to_string()),
        ("FERRY_DEVICES".to_owned(), devices.join(" ")),
        (
            "FERRY_INSTANCE_DIR".to_owned(),
            instance.dir.to_string_lossy().into_owned(),
        ),
        (
            "FERRY_NETWORK".to_owned(),
            instance.spec.network.clone().unwrap_or_default(),
        ),
        (
            "FERRY_IP".to_owned(),
            instance.spec.ip.clone().unwrap_or_default(),
        ),
    ];
    for d in &instance.disks {
        env.push((format!("FERRY_DEVICE_{}", d.disk.get()), d.device.clone()));
    }
    env
}

/// Runs the post-launch script to its end (or [`SCRIPT_TIMEOUT`]).
fn run_script(instance: &Instance, script: &Path) -> Result<ScriptRun, InstanceError> {
    let started = Instant::now();
    let log = instance.dir.join("script.log");
    let out = private_files::create(&log).map_err(io_err("create", &log))?;
    let err = out.try_clone().map_err(io_err("open", &log))?;
    let mut child = Command::new(script)
        .envs(script_env(instance))
        .current_dir(&instance.dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(io_err("run", script))?;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(io_err("wait for", script))? {
            break Some(status);
        }
        if started.elapsed() > SCRIPT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut output = String::new();
    if let Ok(f) = std::fs::File::open(&log) {
        let len = f.metadata().map_or(0, |m| m.len());
        let skip = len.saturating_sub(OUTPUT_TAIL as u64);
        let mut bytes = Vec::new();
        let mut f = f;
        if std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(skip)).is_ok() {
            let _ = f.read_to_end(&mut bytes);
        }
        output = String::from_utf8_lossy(&bytes).into_owned();
    }
    Ok(ScriptRun {
        script: script.to_owned(),
        exit_code: status.and_then(|s| s.code()),
        output,
        log,
        millis: millis(started.elapsed()),
    })
}

/// The qemu command line that boots `disks` (the first one is the boot disk).
pub fn qemu_command(id: &str, spec: &Spec, disks: &[String], dir: &Path) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "qemu-system-x86_64".into(),
        "-name".into(),
        format!("ferry-{id}"),
        "-machine".into(),
        "q35,accel=kvm:tcg".into(),
        "-smp".into(),
        spec.cpus.to_string(),
        "-m".into(),
        spec.memory_mib.to_string(),
        "-display".into(),
        "none".into(),
        "-monitor".into(),
        "none".into(),
        "-serial".into(),
        format!("file:{}", dir.join("console.log").display()),
        "-daemonize".into(),
        "-pidfile".into(),
        dir.join("qemu.pid").display().to_string(),
    ];
    for (i, disk) in disks.iter().enumerate() {
        args.push("-drive".into());
        args.push(format!(
            "file={disk},format=raw,if=virtio,cache=none,index={i}{}",
            if i == 0 { ",media=disk" } else { "" }
        ));
    }
    args.extend(["-boot".into(), "c".into()]);
    match spec.network.as_deref() {
        None | Some("none") => args.extend(["-nic".into(), "none".into()]),
        Some("user") => args.extend(["-nic".into(), "user,model=virtio-net-pci".into()]),
        Some(bridge) => args.extend([
            "-nic".into(),
            format!("bridge,br={bridge},model=virtio-net-pci"),
        ]),
    }
    if let Some(ip) = &spec.ip {
        args.extend(["-fw_cfg".into(), format!("name=opt/ferry/ip,string={ip}")]);
    }
    args
}

fn start_vm(instance: &Instance) -> Result<Vm, InstanceError> {
    let devices: Vec<String> = instance.disks.iter().map(|d| d.device.clone()).collect();
    let command = qemu_command(&instance.id, &instance.spec, &devices, &instance.dir);
    // qemu opens its serial file without truncating the mode: made 0600 here first (the
    // console shows the guest's boot, which may print secrets).
    let console = instance.dir.join("console.log");
    private_files::create(&console).map_err(io_err("create", &console))?;
    let args: Vec<&str> = command[1..].iter().map(String::as_str).collect();
    tool(&command[0], &args)?;
    let pidfile = instance.dir.join("qemu.pid");
    let pid = std::fs::read_to_string(&pidfile)
        .map_err(io_err("read", &pidfile))?
        .trim()
        .parse()
        .map_err(|_| InstanceError::Tool {
            command: command[0].clone(),
            output: format!("{} holds no pid", pidfile.display()),
        })?;
    Ok(Vm {
        pid,
        console: instance.dir.join("console.log"),
        command,
    })
}

/// Stops the instance's VM (if it is still the qemu this instance started).
fn stop_vm(instance: &Instance) {
    let Some(vm) = &instance.vm else { return };
    let ours = std::fs::read(format!("/proc/{}/cmdline", vm.pid))
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&format!("ferry-{}", instance.id)));
    if ours && let Ok(pid) = i32::try_from(vm.pid) {
        terminate(nix::unistd::Pid::from_raw(pid), Duration::from_secs(5));
    }
}

/// SIGTERM, up to `grace` for the process to end, then SIGKILL.
pub(crate) fn terminate(pid: nix::unistd::Pid, grace: Duration) {
    use nix::sys::signal::{Signal, kill};
    if kill(pid, Signal::SIGTERM).is_err() {
        return;
    }
    let deadline = Instant::now() + grace;
    while kill(pid, None).is_ok() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = kill(pid, Signal::SIGKILL);
}

/// Stops the VM, unmounts the devices' filesystems, detaches them, removes the
/// directory; goes on past a failure and reports the first.
fn clean_instance(instance: &Instance) -> Result<(), InstanceError> {
    stop_vm(instance);
    let mut first = None;
    for disk in &instance.disks {
        let mut step = unmount_device(&disk.device);
        if step.is_ok() && backs(&disk.device, &disk.image) {
            step = tool("losetup", &["-d", &disk.device]).map(drop);
        }
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

/// Whether loop `device` is still attached to `image` (a restarted machine may have
/// given the name to another file).
fn backs(device: &str, image: &Path) -> bool {
    let name = device.trim_start_matches("/dev/");
    std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file"))
        .is_ok_and(|f| Path::new(f.trim()) == image)
}

/// Unmounts every filesystem mounted from `device` or one of its partitions.
fn unmount_device(device: &str) -> Result<(), InstanceError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    fn spec() -> Spec {
        Spec {
            point: PointSelector::Latest,
            launcher: Launcher::Qemu,
            script: None,
            cpus: 2,
            memory_mib: 2048,
            network: Some("br0".into()),
            ip: Some("10.0.0.5/24".into()),
        }
    }

    #[test]
    fn the_qemu_command_boots_the_first_disk_with_the_chosen_size_and_network() {
        let disks = vec!["/dev/loop7".to_owned(), "/dev/loop8".to_owned()];
        let cmd = qemu_command("drill-web-1-1", &spec(), &disks, Path::new("/i"));
        let text = cmd.join(" ");
        for want in [
            "qemu-system-x86_64 -name ferry-drill-web-1-1",
            "-smp 2 -m 2048",
            "-serial file:/i/console.log",
            "-daemonize -pidfile /i/qemu.pid",
            "-drive file=/dev/loop7,format=raw,if=virtio,cache=none,index=0,media=disk",
            "-drive file=/dev/loop8,format=raw,if=virtio,cache=none,index=1 ",
            "-boot c",
            "-nic bridge,br=br0,model=virtio-net-pci",
            "-fw_cfg name=opt/ferry/ip,string=10.0.0.5/24",
        ] {
            assert!(text.contains(want), "{want:?} missing from {text}");
        }
        let user = Spec {
            network: Some("user".into()),
            ip: None,
            ..spec()
        };
        let text = qemu_command("x", &user, &disks, Path::new("/i")).join(" ");
        assert!(text.contains("-nic user,model=virtio-net-pci"), "{text}");
        assert!(!text.contains("fw_cfg"), "{text}");
        let none = Spec {
            network: None,
            ..spec()
        };
        let text = qemu_command("x", &none, &disks, Path::new("/i")).join(" ");
        assert!(text.contains("-nic none"), "{text}");
    }

    #[test]
    fn a_bad_spec_is_refused_before_anything_is_made() {
        let bad = [
            Spec { cpus: 0, ..spec() },
            Spec {
                memory_mib: 64,
                ..spec()
            },
            Spec {
                launcher: Launcher::Script,
                ..spec()
            },
            Spec {
                script: Some("check.sh".into()),
                ..spec()
            },
        ];
        for s in bad {
            let err = Instances::check(&s).unwrap_err().to_string();
            assert!(!err.is_empty());
        }
        assert_eq!(Instances::check(&spec()).unwrap(), PointSelector::Latest);
    }

    #[test]
    fn a_spec_names_its_point_as_text_and_refuses_what_is_not_a_point() {
        let json = serde_json::to_value(spec()).expect("a spec serializes");
        assert_eq!(json["point"], "latest");
        let at = |point: &str| {
            let mut json = json.clone();
            json["point"] = point.into();
            serde_json::from_value::<Spec>(json)
        };
        let earlier = at("1795533480000").expect("a point id decodes");
        assert_eq!(
            earlier.point,
            PointSelector::Id(PointId::new(1795533480000))
        );
        assert_eq!(
            serde_json::to_value(&earlier).expect("serializes")["point"],
            "1795533480000"
        );
        let err = at("yesterday").expect_err("not a point");
        assert!(err.to_string().contains("is not a point id"), "{err}");
    }

    #[test]
    fn an_instance_reads_and_writes_the_json_it_always_has() {
        // Ids and seqs are bare numbers in `instance.json` and in the API's answers.
        let golden = r#"{"id":"failover-web-1-5","kind":"failover","server":"web-1","spec":{"point":"7","launcher":"script","script":"/s/up.sh","cpus":1,"memory_mib":512,"network":null,"ip":null},"point":7,"seq":42,"dir":"/d/instances/failover-web-1-5","disks":[{"disk":0,"name":"vda","image":"/d/i/disk-0.img","device":"/dev/loop3"}],"script":null,"vm":null,"created_unix_ms":5,"rebuild_ms":10,"ready_ms":20}"#;
        let read: Instance = serde_json::from_str(golden).expect("the golden instance reads");
        assert_eq!(
            (read.point, read.seq, read.disks[0].disk),
            (Some(PointId::new(7)), Seq::new(42), DiskId::new(0))
        );
        assert_eq!(
            serde_json::to_string(&read).expect("serializes"),
            golden,
            "an instance is written as it was read"
        );
    }
}
