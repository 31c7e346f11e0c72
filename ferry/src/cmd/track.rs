//! `ferry track`: watch the write tracker on block devices, as a diagnostic.

use anyhow::{Context, Result, bail};
use ferry_tracker::{Tracker, TrackerConfig};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Default bpffs directory where the agent pins the tracker.
pub(crate) const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/ferry";

/// Attach the write tracker to block devices and print each extent as its write
/// completes (readable), until interrupted or --duration ends; then print totals and
/// the number of events lost.
///
/// Examples:
///   ferry track /dev/vdb
///   ferry track --json --duration 10 /dev/loop3 /dev/loop4
///   ferry track --detach        (remove the agent's pinned tracker)
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Whole-disk block devices to watch.
    #[arg(required_unless_present = "detach")]
    devices: Vec<PathBuf>,
    /// One JSON object per line: {"device","offset","length","op"}.
    #[arg(long)]
    json: bool,
    /// Stop after this many seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// Detach the tracker pinned by the agent (and free its maps), then exit.
    #[arg(long, conflicts_with_all = ["devices", "json", "duration"])]
    detach: bool,
    /// Where the agent pins the tracker.
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
}

pub(crate) fn run(args: Args) -> Result<()> {
    crate::require_root("ferry track")?;
    if args.detach {
        ferry_tracker::tracker::detach(&args.pin_dir)
            .with_context(|| format!("cannot remove the pins in {}", args.pin_dir.display()))?;
        eprintln!("detached the tracker pinned in {}", args.pin_dir.display());
        return Ok(());
    }
    if let Some(d) = args.duration
        && !(d.is_finite() && d > 0.0)
    {
        bail!("--duration must be a positive number of seconds, not {d}");
    }
    let mut tracker = Tracker::start(TrackerConfig::new(args.devices.clone()))?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("installing a signal handler")?;
    }
    let names: Vec<String> = tracker
        .devices()
        .iter()
        .map(|d| d.path.display().to_string())
        .collect();
    eprintln!("ferry track: watching {}; Ctrl-C to stop", names.join(", "));
    let deadline = args
        .duration
        .map(|d| Instant::now() + Duration::from_secs_f64(d));
    let (mut extents, mut bytes) = (0u64, 0u64);
    let mut out = std::io::stdout().lock();
    while !stop.load(Ordering::Relaxed) && deadline.is_none_or(|d| Instant::now() < d) {
        for r in tracker.poll(Duration::from_millis(100))?.completed {
            extents += 1;
            bytes += r.range.len();
            let device = &names[r.disk.index()];
            let failed = if r.status != 0 {
                format!(" (failed, status {})", r.status)
            } else {
                String::new()
            };
            let line = if args.json {
                serde_json::json!({
                    "device": device,
                    "offset": r.range.start,
                    "length": r.range.len(),
                    "op": r.op.name(),
                    "status": r.status,
                })
                .to_string()
            } else {
                format!(
                    "{device} {} offset {} length {}{failed}",
                    r.op.name(),
                    r.range.start,
                    r.range.len()
                )
            };
            use std::io::Write;
            writeln!(out, "{line}")?;
        }
    }
    let stats = tracker.stats()?;
    let c = stats.counters;
    eprintln!(
        "ferry track: {extents} extents ({bytes} bytes) completed; {} submitted, {} failed, \
         {} resolved by the sweep, {} events lost (drops), {} submission runs skipped by the \
         kernel",
        c.submitted, c.failed, c.swept, stats.drops, stats.skipped_runs
    );
    tracker.stop()?;
    Ok(())
}
