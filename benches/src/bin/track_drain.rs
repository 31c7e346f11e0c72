//! Attaches the write tracker to block devices and drains it every 20 ms, as the agent does, without
//! printing per extent: the "with tracker" side of `benches/tracker_overhead.sh`.
//! Usage: `track_drain DEVICE...`; runs until SIGTERM/SIGINT, then prints counters.

use anyhow::Result;
use ferry_tracker::{Tracker, TrackerConfig};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

fn main() -> Result<()> {
    let devices = std::env::args().skip(1).map(Into::into).collect();
    let mut tracker = Tracker::start(TrackerConfig::new(devices))?;
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&stop))?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&stop))?;
    eprintln!("track_drain: watching");
    while !stop.load(Ordering::Relaxed) {
        tracker.poll(Duration::from_millis(20))?;
    }
    let stats = tracker.stats()?;
    eprintln!(
        "track_drain: {stats:?}; dirty bytes {}",
        tracker
            .state()
            .disk(ferry_wire::DiskId::new(0))
            .dirty
            .bytes()
    );
    Ok(())
}
