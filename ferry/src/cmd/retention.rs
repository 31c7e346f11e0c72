//! `ferry retention run`: apply a retention policy and clean a server's log now, while
//! no standby runs on the data directory (a running standby does this itself on its
//! `clean_interval_minutes` timer).

use crate::keyfile;
use anyhow::{Context, Result};
use ferry_standby::log::OpenMode;
use ferry_standby::retention::{self, Policy};
use ferry_standby::server::DataDir;
use ferry_wire::ServerId;
use std::path::PathBuf;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Drop expired points and clean the log; report the space used before and after.
    ///
    /// Example: `ferry retention run --data-dir /var/lib/ferry/standby --server web-1
    /// --key pair.key --keep 24 --interval-hours 1`
    Run(RunArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    /// The standby's data directory.
    #[arg(long)]
    data_dir: PathBuf,
    /// The protected server.
    #[arg(long)]
    server: ServerId,
    /// Site-pair master key file; only the MAC key is used (to re-verify copied records).
    #[arg(long)]
    key: PathBuf,
    /// Points kept.
    #[arg(long, default_value_t = 24)]
    keep: u32,
    /// Hours between kept scheduled points.
    #[arg(long, default_value_t = 1)]
    interval_hours: u32,
    /// Segment size in MiB for segments cleaning writes.
    #[arg(long, default_value_t = 64)]
    segment_size_mib: u64,
}

pub(crate) fn run(command: Command) -> Result<()> {
    let Command::Run(args) = command;
    let mac = keyfile::load_standby(&args.key)?
        .ingest_keys(&args.server)
        .mac;
    let data = DataDir::new(&args.data_dir);
    let _lock = data.lock()?;
    let (mut state, _) = data
        .open_server(
            &args.server,
            args.segment_size_mib.saturating_mul(1 << 20),
            OpenMode::ReadWrite,
        )
        .with_context(|| format!("cannot open the store of server {}", args.server))?;
    let policy = Policy {
        interval_hours: args.interval_hours,
        keep: args.keep,
    };
    let r = retention::apply(&mut state, &policy, &mac)?;
    let dropped: Vec<u64> = r.points_dropped.iter().map(|p| p.get()).collect();
    println!(
        "server {}: dropped {} points {dropped:?}, {} retained; space used {} -> {} bytes; \
         {} segments removed, {} frames ({} bytes) copied forward",
        args.server,
        dropped.len(),
        r.points_retained,
        r.space_before,
        r.space_after,
        r.segments_removed,
        r.frames_copied,
        r.bytes_copied
    );
    Ok(())
}
