//! The write tracker's pure state — which bytes of the protected disks changed, and when a
//! change became readable — with no BPF, no kernel and no `unsafe`: everything here is
//! reachable from unit and property tests on any machine (DESIGN.md I1, I3, I4). The
//! loader that feeds it from the kernel is `ferry-tracker`.
//!
//! - [`event`]: the event records the BPF programs log per CPU, decoded.
//! - [`range`], [`dirty`]: byte ranges and the per-disk dirty map with generations (I1).
//! - [`inflight`], [`state`]: submissions waiting for completion, and the state machine
//!   that turns events into dirty, readable and suspect ranges.
//! - [`persist`]: the tracker's state file across restarts (a missing or unreadable one
//!   is a gap, never a silent loss: I3).
#![forbid(unsafe_code)]

pub mod dirty;
pub mod event;
pub mod inflight;
pub mod persist;
pub mod range;
pub mod state;
