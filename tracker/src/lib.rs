//! ferry's kernel write tracker: the BPF programs in `ebpf/` loaded on the protected
//! disks, their events fed into the pure state of `ferry-tracker-core`, and every hole in
//! that knowledge detected (DESIGN.md I3, I4).
//!
//! - [`tracker`]: the running tracker: BPF events into the state, losses and gaps found,
//!   its state saved across restarts.
//! - [`check`]: registration checks (which disks hold `/` and `/boot`; 64-bit; BTF).
//! - [`sys`]: the only place that talks to the kernel (BPF loading, maps, block devices).
pub mod check;
pub mod sys;
pub mod tracker;

pub use tracker::{Gap, Polled, Tracker, TrackerConfig, TrackerError};
