//! `ferry drill start|status|clean`, `ferry failover start|change-point|confirm`,
//! `ferry reverse register|start`, `ferry failback` and `ferry register`: a server
//! brought up from a recovery point, replicated back and brought home (`docs/api.md`).

use crate::api::client::{Client, ControlArgs};
use crate::cmd::server::print_one;
use crate::cmd::{point::utc_time, table};
use anyhow::Result;
use ferry_site::control::ServerView;
use ferry_site::instance::{Instance, Launcher, Spec};
use ferry_standby::points::PointSelector;
use std::path::PathBuf;

/// How to bring the instance up.
#[derive(Debug, clap::Args)]
pub(crate) struct LaunchArgs {
    /// A point id from `ferry point list`, or "latest" (the newest state the standby
    /// holds).
    #[arg(long, default_value = "latest")]
    point: PointSelector,
    /// `script` runs the post-launch script with the instance's devices; `qemu` boots
    /// the system disk in a VM (serial console captured) and then runs the script, if any.
    #[arg(long, default_value = "script", value_parser = ["script", "qemu"])]
    launcher: String,
    /// Post-launch script, e.g. one that mounts and checks the data: an executable in
    /// the standby's scripts directory (scripts_dir, default /etc/ferry/scripts; it and
    /// the script root-owned and not writable by group or others: it runs as root).
    /// Gets FERRY_DEVICES, FERRY_POINT, FERRY_INSTANCE … (docs/api.md).
    #[arg(long)]
    script: Option<PathBuf>,
    /// CPUs of the VM (qemu).
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// Memory of the VM in MiB (qemu).
    #[arg(long, default_value_t = 1024)]
    memory_mib: u32,
    /// Network: "user", a bridge name, or "none" (qemu; given to the script too).
    #[arg(long)]
    network: Option<String>,
    /// Address of the instance (given to the script, and to the VM via fw_cfg).
    #[arg(long)]
    ip: Option<String>,
    /// A guest TCP port the standby reaches on its loopback (qemu on network "user",
    /// which reaches nothing else); repeatable. The script gets
    /// FERRY_FORWARD_<port>=127.0.0.1:<host port>, e.g. for a health check.
    #[arg(long = "forward")]
    forward: Vec<u16>,
    /// The server's recovery key file (or the pair key), sent with the operation over
    /// TLS when the standby holds none; it keeps it only for the operation.
    #[arg(long)]
    recovery_key: Option<PathBuf>,
}

impl LaunchArgs {
    /// The request body: the spec, and the recovery key's text if one was given.
    fn body(self) -> Result<serde_json::Value> {
        let key = self
            .recovery_key
            .as_deref()
            .map(crate::keyfile::read_key_text)
            .transpose()?;
        let mut body = serde_json::to_value(self.spec())?;
        if let (Some(text), Some(fields)) = (key, body.as_object_mut()) {
            fields.insert(
                crate::api::RECOVERY_KEY_FIELD.into(),
                serde_json::Value::String(text.to_string()),
            );
        }
        Ok(body)
    }

    fn spec(self) -> Spec {
        Spec {
            point: self.point,
            launcher: if self.launcher == "qemu" {
                Launcher::Qemu
            } else {
                Launcher::Script
            },
            script: self.script,
            cpus: self.cpus,
            memory_mib: self.memory_mib,
            network: self.network,
            ip: self.ip,
            forward: self.forward,
        }
    }
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum DrillCommand {
    /// Bring a point up as a disposable copy; replication goes on untouched.
    ///
    /// Example: `ferry drill start web-1 --point latest --script /etc/ferry/scripts/check.sh`
    Start(StartArgs),
    /// The server's drills: where to verify them (devices), the script's exit status and
    /// output, and replication's RPO lag now.
    ///
    /// Example: `ferry drill status web-1`
    Status(ServerArgs),
    /// Remove the server's drills (or one): VM stopped, devices unmounted and detached,
    /// files deleted.
    ///
    /// Example: `ferry drill clean web-1`
    Clean(CleanArgs),
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum FailoverCommand {
    /// Stop replication and bring a point up as production.
    ///
    /// Example: `ferry failover start web-1 --point latest --script /etc/ferry/scripts/up.sh`
    Start(StartArgs),
    /// Bring up an earlier point instead (e.g. corrupt data was replicated); "latest"
    /// can be used only once.
    ///
    /// Example: `ferry failover change-point web-1 --point 1795533480000 --script …`
    ChangePoint(StartArgs),
    /// Keep the failed-over instance as production; drills are released.
    ///
    /// Example: `ferry failover confirm web-1`
    Confirm(ServerArgs),
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum ReverseCommand {
    /// Register the failed-over server at the pair's primary site (its standby, a peer
    /// in this standby's [sites]) for reverse replication.
    ///
    /// Example: `ferry reverse register web-1`
    Register(ServerArgs),
    /// Replicate the failed-over instance back to the primary site. With
    /// --original-machine the original server's disks are the target: only chunks that
    /// differ travel.
    ///
    /// Example: `ferry reverse start web-1 --original-machine`
    Start(ReverseStartArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct ReverseStartArgs {
    server: String,
    /// Onto the original machine's disks (only the differences travel).
    #[arg(long)]
    original_machine: bool,
    /// The server's recovery key file (or the pair key), when this standby holds none:
    /// the reverse agent seals with it.
    #[arg(long)]
    recovery_key: Option<PathBuf>,
    #[command(flatten)]
    control: ControlArgs,
}

#[derive(Debug, clap::Args)]
pub(crate) struct StartArgs {
    server: String,
    #[command(flatten)]
    launch: LaunchArgs,
    #[command(flatten)]
    control: ControlArgs,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ServerArgs {
    server: String,
    #[command(flatten)]
    control: ControlArgs,
}

#[derive(Debug, clap::Args)]
pub(crate) struct CleanArgs {
    server: String,
    /// Only this drill (an id from `ferry drill status`).
    #[arg(long)]
    instance: Option<String>,
    #[command(flatten)]
    control: ControlArgs,
}

pub(crate) fn drill(command: DrillCommand) -> Result<()> {
    match command {
        DrillCommand::Start(a) => start(a, "drills"),
        DrillCommand::Status(a) => {
            let client = a.control.connect()?;
            let server: ServerView = client.get(&format!("/v1/servers/{}", a.server))?;
            let instances = instances(&client, &a.server)?;
            if a.control.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "server": server, "instances": instances,
                    }))?
                );
                return Ok(());
            }
            print_one(&server, false)?;
            println!();
            for i in &instances {
                print_instance(i);
            }
            if instances.is_empty() {
                println!("no drill or failover instance");
            }
            Ok(())
        }
        DrillCommand::Clean(a) => {
            let client = a.control.connect()?;
            let path = match &a.instance {
                Some(i) => format!("/v1/servers/{}/drills/{i}", a.server),
                None => format!("/v1/servers/{}/drills", a.server),
            };
            let cleaned: Vec<Instance> = client.delete(&path)?;
            if a.control.json {
                println!("{}", serde_json::to_string_pretty(&cleaned)?);
            } else if cleaned.is_empty() {
                println!("server {} has no drill", a.server);
            } else {
                for i in cleaned {
                    println!("drill {} cleaned", i.id);
                }
            }
            Ok(())
        }
    }
}

pub(crate) fn failover(command: FailoverCommand) -> Result<()> {
    match command {
        FailoverCommand::Start(a) => start(a, "failover/start"),
        FailoverCommand::ChangePoint(a) => start(a, "failover/change-point"),
        FailoverCommand::Confirm(a) => {
            let s: ServerView = a
                .control
                .connect()?
                .post(&format!("/v1/servers/{}/failover/confirm", a.server), &())?;
            print_one(&s, a.control.json)
        }
    }
}

pub(crate) fn reverse(command: ReverseCommand) -> Result<()> {
    let (s, json): (ServerView, bool) = match command {
        ReverseCommand::Register(a) => (
            a.control
                .connect()?
                .post(&format!("/v1/servers/{}/reverse/register", a.server), &())?,
            a.control.json,
        ),
        ReverseCommand::Start(a) => (
            a.control.connect()?.post(
                &format!("/v1/servers/{}/reverse/start", a.server),
                &crate::api::StartReverse {
                    original_machine: a.original_machine,
                    recovery_key: a
                        .recovery_key
                        .as_deref()
                        .map(crate::keyfile::read_key_text)
                        .transpose()?
                        .map(|text| text.to_string()),
                },
            )?,
            a.control.json,
        ),
    };
    print_one(&s, json)
}

/// `ferry failback`: bring the server up at its original site from the reverse replica.
pub(crate) fn failback(a: StartArgs) -> Result<()> {
    start(a, "failback")
}

/// `ferry register`: protect the failed-back server forward again.
pub(crate) fn register(a: ServerArgs) -> Result<()> {
    let s: ServerView = a
        .control
        .connect()?
        .post(&format!("/v1/servers/{}/register", a.server), &())?;
    print_one(&s, a.control.json)
}

fn start(a: StartArgs, endpoint: &str) -> Result<()> {
    let client = a.control.connect()?;
    let instance: Instance = client.post(
        &format!("/v1/servers/{}/{endpoint}", a.server),
        &a.launch.body()?,
    )?;
    if a.control.json {
        println!("{}", serde_json::to_string_pretty(&instance)?);
    } else {
        print_instance(&instance);
    }
    Ok(())
}

fn instances(client: &Client, server: &str) -> Result<Vec<Instance>> {
    client.get(&format!("/v1/servers/{server}/instances"))
}

fn print_instance(i: &Instance) {
    println!(
        "{} ({:?}) of {} at point {} (seq {}), up {}: rebuilt in {:.1} s, ready in {:.1} s",
        i.id,
        i.kind,
        i.server,
        i.point
            .map_or_else(|| "latest".to_owned(), |p| p.get().to_string()),
        i.seq,
        utc_time(i.created_unix_ms),
        i.rebuild_ms as f64 / 1000.0,
        i.ready_ms as f64 / 1000.0,
    );
    table(
        &["DISK", "NAME", "DEVICE", "IMAGE"],
        i.disks.iter().map(|d| {
            vec![
                d.disk.get().to_string(),
                d.name.clone(),
                d.device.clone(),
                d.image.display().to_string(),
            ]
        }),
    );
    if let Some(vm) = &i.vm {
        println!("VM pid {}, console {}", vm.pid, vm.console.display());
    }
    if let Some(s) = &i.script {
        println!(
            "script {} exited {} after {:.1} s; output ({}):\n{}",
            s.script.display(),
            s.exit_code
                .map_or_else(|| "without status (killed)".to_owned(), |c| c.to_string()),
            s.millis as f64 / 1000.0,
            s.log.display(),
            s.output.trim_end()
        );
    }
}
