//! `ferry check`: can this host be registered, and which disks will be protected?

use anyhow::{Result, bail};
use std::path::PathBuf;

/// Check that this host can be protected: 64-bit, a kernel with BTF and bpf(), and
/// `/boot` on a disk that holds `/`. Lists the system disks with their sizes.
///
/// Examples:
///   ferry check
///   ferry check --json
///   ferry check --root /srv/snapshot-of-a-host   (a copy of its /proc and /sys files)
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Check the host whose /proc and /sys are under this directory.
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

pub(crate) fn run(args: Args) -> Result<()> {
    let report = ferry_tracker::check::check(&args.root)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("architecture: {}", report.arch);
        let show = |m: &ferry_tracker::check::MountDisks| {
            println!(
                "{:<6} on {:<12} disks: {}",
                m.mount_point,
                m.device,
                m.disks.join(", ")
            );
        };
        show(&report.root);
        match &report.boot {
            Some(b) => show(b),
            None => println!("/boot  is not a separate filesystem"),
        }
        println!("\n{:<16} {:>12}", "SYSTEM DISK", "SIZE");
        for d in &report.system_disks {
            println!("{:<16} {:>12}", format!("/dev/{}", d.name), size(d.size));
        }
    }
    if !report.refusals.is_empty() {
        for r in &report.refusals {
            eprintln!("refused: {r}");
        }
        bail!(
            "this host cannot be registered ({} problem(s) above)",
            report.refusals.len()
        );
    }
    Ok(())
}
