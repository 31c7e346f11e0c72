//! `ferry replication start|stop`: a protected server's replication, at its standby.

use crate::api::client::ControlArgs;
use crate::cmd::server::print_one;
use anyhow::Result;
use ferry_site::catalog::Replication;
use ferry_site::control::ServerView;
use ferry_standby::retention::Policy;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Start (or restart) replicating a registered server: the agent copies its disks
    /// (`full`) and then ships every write (`realtime`).
    ///
    /// Example: `ferry replication start web-1 --interval-hours 1 --keep 24`
    Start(StartArgs),
    /// Stop replicating: the standby takes no more records (the agent keeps tracking,
    /// so a later start ships only what changed); points already kept stay.
    ///
    /// Example: `ferry replication stop web-1`
    Stop(StopArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct StartArgs {
    server: String,
    /// Hours between kept scheduled points (1 to 720).
    #[arg(long, default_value_t = 1)]
    interval_hours: u32,
    /// Recovery points kept (1 to 10000).
    #[arg(long, default_value_t = 24)]
    keep: u32,
    /// Storage class of the replica (default: as chosen by `server add
    /// --storage-class`, which fixes it).
    #[arg(long)]
    storage_class: Option<String>,
    /// Replication network: the standby address the agent sends to (for the record).
    #[arg(long)]
    replication_network: Option<String>,
    /// Recovery network: what drill and failover instances are attached to.
    #[arg(long)]
    recovery_network: Option<String>,
    /// Do not resume by itself after an interruption: wait for another `start`.
    #[arg(long)]
    no_auto_restart: bool,
    #[command(flatten)]
    control: ControlArgs,
}

#[derive(Debug, clap::Args)]
pub(crate) struct StopArgs {
    server: String,
    #[command(flatten)]
    control: ControlArgs,
}

pub(crate) fn run(command: Command) -> Result<()> {
    let (s, json): (ServerView, bool) = match command {
        Command::Start(a) => {
            let client = a.control.connect()?;
            let storage_class = match a.storage_class {
                Some(c) => c,
                None => {
                    let s: ServerView = client.get(&format!("/v1/servers/{}", a.server))?;
                    s.server.storage_class
                }
            };
            let body = Replication {
                policy: Policy {
                    interval_hours: a.interval_hours,
                    keep: a.keep,
                },
                storage_class,
                replication_network: a.replication_network,
                recovery_network: a.recovery_network,
                auto_restart: !a.no_auto_restart,
                original_disks: Vec::new(),
            };
            let path = format!("/v1/servers/{}/replication/start", a.server);
            (client.post(&path, &body)?, a.control.json)
        }
        Command::Stop(a) => {
            let path = format!("/v1/servers/{}/replication/stop", a.server);
            (a.control.connect()?.post(&path, &())?, a.control.json)
        }
    };
    print_one(&s, json)
}
