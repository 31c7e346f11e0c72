//! `ferry point list|create`: a server's recovery points, through the standby's control
//! API (or, with `--data-dir`, read straight from a standby's store on this machine).

use crate::api::client::ControlArgs;
use anyhow::{Context, Result};
use ferry_site::control::{PointView, point_views};
use ferry_standby::server::DataDir;
use ferry_wire::ServerId;
use ferry_wire::message::PointResult;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// List a server's retained recovery points, oldest first, and "latest".
    ///
    /// Examples: `ferry point list --server web-1`,
    /// `ferry point list --server web-1 --data-dir /var/lib/ferry/standby` (offline)
    List(ListArgs),
    /// Make a recovery point now: the standby asks the server's agent, which freezes,
    /// ships the remaining changes, sends the point and thaws.
    ///
    /// Example: `ferry point create --server web-1`
    Create(CreateArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct CreateArgs {
    /// The protected server.
    #[arg(long)]
    server: ServerId,
    #[command(flatten)]
    control: ControlArgs,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ListArgs {
    /// The protected server.
    #[arg(long)]
    server: ServerId,
    /// Read the points from this standby data directory instead of asking the control API.
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    #[command(flatten)]
    control: ControlArgs,
}

pub(crate) fn run(command: Command) -> Result<()> {
    match command {
        Command::List(args) => list(&args),
        Command::Create(args) => create(&args),
    }
}

fn create(args: &CreateArgs) -> Result<()> {
    let client = args.control.connect()?;
    let point: PointResult = client.post(&format!("/v1/servers/{}/points", args.server), &())?;
    if args.control.json {
        println!("{}", serde_json::to_string_pretty(&point)?);
        return Ok(());
    }
    println!(
        "point {} of {}: {}, filesystems frozen {} ms",
        point.point.map_or(0, |p| p.get()),
        args.server,
        if point.consistent {
            "consistent"
        } else {
            "crash-consistent only"
        },
        point.freeze_ms
    );
    Ok(())
}

fn list(args: &ListArgs) -> Result<()> {
    let rows: Vec<PointView> = match &args.data_dir {
        Some(dir) => {
            let state = DataDir::new(dir)
                .read_server(&args.server)
                .with_context(|| format!("cannot read the store of server {}", args.server))?;
            point_views(&state)
        }
        None => args
            .control
            .connect()?
            .get(&format!("/v1/servers/{}/points", args.server))?,
    };
    if args.control.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<14} {:>10}  {:<20}  {:<10}  KIND",
        "ID", "SEQ", "TIME (UTC)", "CONSISTENT"
    );
    for r in &rows {
        println!(
            "{:<14} {:>10}  {:<20}  {:<10}  {}",
            r.id.map_or_else(|| "latest".to_owned(), |id| id.get().to_string()),
            r.seq,
            r.unix_time_ms.map_or_else(|| "-".to_owned(), utc_time),
            if r.consistent { "yes" } else { "no" },
            r.kind
        );
    }
    Ok(())
}

/// `YYYY-MM-DD HH:MM:SS` in UTC for a Unix time in milliseconds.
pub(crate) fn utc_time(unix_ms: u64) -> String {
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
