//! `ferry point list`: a server's recovery points as the standby holds them;
//! `ferry point create`: ask this host's running agent for a point now.

use anyhow::{Context, Result};
use ferry_standby::log::{DEFAULT_SEGMENT_SIZE, OpenMode};
use ferry_standby::server::DataDir;
use ferry_wire::ServerId;
use ferry_wire::message::PointKind;
use serde::Serialize;
use std::path::PathBuf;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// List a server's retained recovery points, oldest first, and "latest".
    ///
    /// Example: `ferry point list --data-dir /var/lib/ferry/standby --server web-1`
    List(ListArgs),
    /// Make a recovery point now (on the protected host: asks the running agent, which
    /// freezes, ships the remaining changes, sends the point and thaws).
    ///
    /// Example: `ferry point create --server web-1`
    Create(CreateArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct CreateArgs {
    /// The protected server (must be the one the agent protects).
    #[arg(long)]
    server: ServerId,
    /// The agent's state directory.
    #[arg(long, default_value = crate::cmd::agent::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Print JSON instead of a line of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ListArgs {
    /// The standby's data directory.
    #[arg(long)]
    data_dir: PathBuf,
    /// The protected server.
    #[arg(long)]
    server: ServerId,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Row {
    /// A point id, or "latest".
    id: serde_json::Value,
    seq: u64,
    unix_time_ms: Option<u64>,
    time: Option<String>,
    consistent: bool,
    kind: &'static str,
}

pub(crate) fn run(command: Command) -> Result<()> {
    match command {
        Command::List(args) => list(&args),
        Command::Create(args) => create(&args),
    }
}

fn create(args: &CreateArgs) -> Result<()> {
    let status = ferry_replicator::status::Status::load(&args.state_dir.join("status.json"))
        .with_context(|| {
            format!(
                "no agent status in {} (is the agent running with this state_dir?)",
                args.state_dir.display()
            )
        })?;
    anyhow::ensure!(
        status.server == args.server.as_str(),
        "the agent in {} protects server {}, not {}",
        args.state_dir.display(),
        status.server,
        args.server
    );
    let socket = args.state_dir.join("agent.sock");
    let point =
        ferry_replicator::agent::request_point(&socket, std::time::Duration::from_secs(600))
            .with_context(|| format!("cannot reach the agent at {}", socket.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&point)?);
    }
    if let Some(e) = &point.error {
        anyhow::bail!("the point failed: {e}");
    }
    if !args.json {
        println!(
            "point {} of {} at seq {}: {}, filesystems frozen {} ms ({})",
            point.point.unwrap_or(0),
            args.server,
            point.seq.unwrap_or(0),
            if point.consistent {
                "consistent"
            } else {
                "crash-consistent only"
            },
            point.freeze_ms,
            if point.frozen.is_empty() {
                "none".to_owned()
            } else {
                point.frozen.join(", ")
            }
        );
    }
    Ok(())
}

fn list(args: &ListArgs) -> Result<()> {
    let data = DataDir::new(&args.data_dir);
    let (state, _) = data
        .open_server(&args.server, DEFAULT_SEGMENT_SIZE, OpenMode::ReadOnly)
        .with_context(|| format!("cannot read the store of server {}", args.server))?;
    let mut rows: Vec<Row> = state
        .points()
        .iter()
        .map(|p| Row {
            id: p.id.0.into(),
            seq: p.seq.0,
            unix_time_ms: Some(p.unix_time_ms),
            time: Some(utc_time(p.unix_time_ms)),
            consistent: p.consistent,
            kind: match p.kind {
                PointKind::Scheduled => "scheduled",
                PointKind::Manual => "manual",
            },
        })
        .collect();
    rows.push(Row {
        id: "latest".into(),
        seq: state.log.last_seq().0,
        unix_time_ms: None,
        time: None,
        consistent: false,
        kind: "latest",
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<14} {:>10}  {:<20}  {:<10}  KIND",
        "ID", "SEQ", "TIME (UTC)", "CONSISTENT"
    );
    for r in &rows {
        let id = match &r.id {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        println!(
            "{:<14} {:>10}  {:<20}  {:<10}  {}",
            id,
            r.seq,
            r.time.as_deref().unwrap_or("-"),
            if r.consistent { "yes" } else { "no" },
            r.kind
        );
    }
    Ok(())
}

/// `YYYY-MM-DD HH:MM:SS` in UTC for a Unix time in milliseconds.
fn utc_time(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm), in unsigned terms.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_time_formats_known_instants() {
        assert_eq!(super::utc_time(0), "1970-01-01 00:00:00");
        assert_eq!(super::utc_time(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(super::utc_time(1_795_999_999_000), "2026-11-30 00:53:19");
    }
}
