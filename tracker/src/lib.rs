//! ferry's kernel write tracker: which bytes of the protected disks changed, and when a
//! change became readable — with every hole in that knowledge detected (DESIGN.md I3, I4).
//!
//! - [`event`]: the event records the BPF programs in `ebpf/` log per CPU.
//! - [`range`], [`dirty`]: byte ranges and the per-disk dirty map with generations (I1).
//! - [`inflight`], [`state`]: submissions waiting for completion, and the state machine
//!   that turns events into dirty, readable and suspect ranges.
//! - [`tracker`]: the running tracker: BPF events into the state, losses and gaps found;
//!   [`persist`]: its state file across restarts.
//! - [`check`]: registration checks (which disks hold `/` and `/boot`; 64-bit; BTF).
//! - [`sys`]: the only place that talks to the kernel (BPF loading, maps, block devices).
pub mod check;
pub mod dirty;
pub mod event;
pub mod inflight;
pub mod persist;
pub mod range;
pub mod state;
pub mod sys;
pub mod tracker;

pub use tracker::{Gap, Polled, Tracker, TrackerConfig, TrackerError};
