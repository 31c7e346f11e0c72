//! `ferry server add|list|show|remove`: the servers a standby site protects.

use crate::api::AddServer;
use crate::api::client::ControlArgs;
use crate::cmd::{delete, human_bytes, human_secs, point::utc_time, table};
use anyhow::Result;
use ferry_site::control::ServerView;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Add a server to a pair. It is `installing` until its agent registers (then
    /// `initialized`); start its replication with `ferry replication start`.
    ///
    /// Example: `ferry server add web-1 --pair prod.eu`
    Add(AddArgs),
    /// List the protected servers: state, progress, RPO lag, last point.
    ///
    /// Example: `ferry server list --json`
    List(ListArgs),
    /// One server in full: state, error, replication settings, agent's report.
    ///
    /// Example: `ferry server show web-1`
    Show(OneArgs),
    /// Stop protecting a server (only while it does not replicate).
    ///
    /// Example: `ferry server remove web-1`
    Remove(OneArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct AddArgs {
    server: String,
    /// The pair that protects it.
    #[arg(long)]
    pair: String,
    /// Where its replica is kept at the standby: "standard" or a class of the standby's
    /// [storage_classes] (chosen once).
    #[arg(long, default_value = "standard")]
    storage_class: String,
    #[command(flatten)]
    control: ControlArgs,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    control: ControlArgs,
}

#[derive(Debug, clap::Args)]
pub(crate) struct OneArgs {
    server: String,
    #[command(flatten)]
    control: ControlArgs,
}

pub(crate) fn run(command: Command) -> Result<()> {
    match command {
        Command::Add(a) => {
            let body = AddServer {
                pair: a.pair,
                server: a.server,
                storage_class: a.storage_class,
            };
            let s: ServerView = a.control.connect()?.post("/v1/servers", &body)?;
            print_one(&s, a.control.json)?;
        }
        Command::List(a) => {
            let servers: Vec<ServerView> = a.control.connect()?.get("/v1/servers")?;
            if a.control.json {
                println!("{}", serde_json::to_string_pretty(&servers)?);
            } else {
                table(&HEADER, servers.iter().map(row));
            }
        }
        Command::Show(a) => {
            let s: ServerView = a
                .control
                .connect()?
                .get(&format!("/v1/servers/{}", a.server))?;
            print_one(&s, a.control.json)?;
        }
        Command::Remove(a) => delete(
            &a.control,
            &format!("/v1/servers/{}", a.server),
            &format!("server {} removed", a.server),
        )?,
    }
    Ok(())
}

/// The columns of [`row`].
const HEADER: [&str; 7] = [
    "SERVER",
    "PAIR",
    "STATE",
    "PROGRESS",
    "RPO LAG",
    "LAST POINT",
    "AGENT",
];

/// A server's line in `server list`.
fn row(s: &ServerView) -> Vec<String> {
    let progress = s.progress.as_ref();
    vec![
        s.server.id.to_string(),
        s.server.pair.clone(),
        s.shown_state.to_owned(),
        progress.map_or_else(
            || "-".to_owned(),
            |p| {
                if p.phase == "full" && p.full_total > 0 {
                    format!(
                        "{:.0}% of {}{}",
                        100.0 * p.full_done as f64 / p.full_total as f64,
                        human_bytes(p.full_total),
                        p.eta_s
                            .map_or_else(String::new, |s| format!(", ETA {}", human_secs(s)))
                    )
                } else {
                    format!("backlog {}", human_bytes(p.backlog_bytes))
                }
            },
        ),
        match progress {
            // Its lag is the age of a change in a copy that does not exist yet.
            _ if !s.protected => "not protected yet".to_owned(),
            Some(p) => format!("{:.1} s", p.rpo_lag_ms as f64 / 1000.0),
            None => "-".to_owned(),
        },
        s.last_point
            .as_ref()
            .and_then(|p| Some(format!("{} ({})", p.id?.get(), utc_time(p.unix_time_ms?))))
            .unwrap_or_else(|| "-".to_owned()),
        if s.connected { "connected" } else { "-" }.to_owned(),
    ]
}

pub(crate) fn print_one(s: &ServerView, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(s)?);
        return Ok(());
    }
    table(&HEADER, [row(s)]);
    if let Some(e) = &s.server.error {
        println!("error: {e} (state {})", s.server.state);
    }
    if let Some(r) = &s.server.replication {
        println!(
            "replication: a point kept per {} h, {} kept; storage class {}; auto-restart {}{}{}",
            r.policy.interval_hours,
            r.policy.keep,
            r.storage_class,
            if r.auto_restart { "on" } else { "off" },
            r.replication_network
                .as_ref()
                .map_or_else(String::new, |n| format!("; replication network {n}")),
            r.recovery_network
                .as_ref()
                .map_or_else(String::new, |n| format!("; recovery network {n}")),
        );
    }
    Ok(())
}
