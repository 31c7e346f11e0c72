//! `ferry rebuild`: a server's disks at a recovery point, from the standby's log.
//!
//! Where the disks go (`--out PATH`):
//! - with `--disk N`, or when the server has one disk: PATH is that disk's output — a new
//!   image file (must not exist), or an existing block device at least as large;
//! - otherwise PATH is a directory (created if missing) and disk N becomes
//!   `PATH/disk-N.img`.
//!
//! The images are plaintext: each is created mode 0600 and a directory made for them
//! mode 0700, whatever the umask (an existing directory is the operator's and keeps its
//! mode; see [`ferry_standby::private_files`]).
//!
//! This is the only command that needs the data key (DESIGN.md I6). It reads the log
//! without locking it, so it may run beside a live standby.

use crate::keyfile;
use anyhow::{Context, Result, bail};
use ferry_standby::points::{self, PointSelector};
use ferry_standby::private_files;
use ferry_standby::rebuild::{self, Target};
use ferry_standby::server::DataDir;
use ferry_wire::ServerId;
use ferry_wire::message::DiskInfo;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::path::PathBuf;
use std::time::Instant;

/// Rebuild a server's disks as they were at a recovery point.
///
/// Example: `ferry rebuild --data-dir /var/lib/ferry/standby --server web-1 --point latest
/// --key pair.key --out /dev/vdb`
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The standby's data directory.
    #[arg(long)]
    data_dir: PathBuf,
    /// The protected server.
    #[arg(long)]
    server: ServerId,
    /// A point id from `ferry point list`, or "latest".
    #[arg(long)]
    point: PointSelector,
    /// Site-pair master key file (the data key is needed to decrypt).
    #[arg(long)]
    key: PathBuf,
    /// Output: image file or block device, or a directory for several disks (see above).
    #[arg(long)]
    out: PathBuf,
    /// Rebuild only this disk.
    #[arg(long)]
    disk: Option<u32>,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

pub(crate) fn run(args: Args) -> Result<()> {
    let keys = keyfile::load_recovery(&args.key, &args.server)?.keys();
    let data = DataDir::new(&args.data_dir);
    let state = data
        .read_server(&args.server)
        .with_context(|| format!("cannot read the store of server {}", args.server))?;
    if state.registration().is_none() {
        bail!("server {} has not registered any disk yet", args.server);
    }
    let retained = state.points();
    let Some(point_seq) = points::resolve(&retained, state.log.last_seq(), args.point) else {
        bail!(
            "server {} has no retained point {}; see `ferry point list`",
            args.server,
            args.point
        );
    };
    let point_disks = rebuild::point_disks(&state, point_seq, &keys).with_context(|| {
        format!(
            "point {} of server {} does not check out",
            args.point, args.server
        )
    })?;
    let disks: Vec<(&DiskInfo, PathBuf)> = match args.disk {
        Some(n) => {
            let disk = point_disks
                .iter()
                .find(|d| d.disk.get() == n)
                .with_context(|| format!("server {} has no disk {n}", args.server))?;
            vec![(disk, args.out.clone())]
        }
        None if point_disks.len() == 1 => vec![(&point_disks[0], args.out.clone())],
        None => {
            private_files::create_dir_all(&args.out).with_context(|| {
                format!(
                    "server {} has {} disks, so --out must be a directory (or pass --disk N)",
                    args.server,
                    point_disks.len()
                )
            })?;
            point_disks
                .iter()
                .map(|d| (d, args.out.join(format!("disk-{}.img", d.disk.get()))))
                .collect()
        }
    };
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
    });
    let total: u64 = disks.iter().map(|(d, _)| d.size.get()).sum();
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    for (disk, out) in disks {
        bar.set_message(format!("disk {}", disk.disk.get()));
        let start = Instant::now();
        let target = Target::open(&out, disk)?;
        let report =
            rebuild::rebuild_disk(&state.log, disk, point_seq, target, &keys, threads, &|n| {
                bar.inc(n)
            })
            .with_context(|| format!("rebuilding disk {} of {}", disk.disk.get(), args.server))?;
        let secs = start.elapsed().as_secs_f64();
        bar.suspend(|| {
            println!(
                "rebuilt disk {} ({}, {} bytes) of {} at seq {point_seq} into {}: {} records \
                 verified, {} bytes written, {} bytes zeroed, {secs:.2} s ({:.0} MB/s)",
                disk.disk.get(),
                disk.name,
                disk.size.get(),
                args.server,
                out.display(),
                report.records_read,
                report.bytes_written,
                report.bytes_zeroed,
                disk.size.get() as f64 / secs.max(1e-9) / 1e6
            );
        });
    }
    bar.finish_and_clear();
    Ok(())
}
