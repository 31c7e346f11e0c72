//! The protected-host agent: tracker events to durable records at the standby.
//!
//! - [`agent`]: the replication loop — pick dirty extents, read, seal, ship, clear on ack
//!   (DESIGN.md I1), catch-ups after tracking gaps, consistent points.
//! - [`config_file`]: the agent's config file, read and checked, or built and written.
//! - [`catch_up`]: full copy or digest compare after a tracking gap (DESIGN.md I3).
//! - [`read`]: `O_DIRECT` reads through io_uring (synchronous fallback).
//! - [`seal_pool`]: sealing on every core.
//! - [`freeze`]: FIFREEZE/FITHAW with a guard that always thaws; operator hooks.
//! - [`link`]: the protocol client that ships frames to the standby.
//! - [`status`]: what a running agent reports (`ferry agent status`).
//! - [`sim`]: a simulated protected server (disks in memory) for tests and benchmarks.

pub mod agent;
mod catch_up;
pub mod config_file;
pub mod freeze;
pub mod link;
pub mod read;
pub mod seal_pool;
pub mod seq_lease;
pub mod sim;
pub mod status;
