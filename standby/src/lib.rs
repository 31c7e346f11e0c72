//! The standby's store: receives sealed extents from agents, stores them durably without
//! ever holding the data key, keeps each server's recovery points, applies retention,
//! and rebuilds any retained point of a server's disks. The site's DR control plane
//! (catalogue, lifecycle, drills, failovers, reverse replication) is the `ferry-site`
//! crate; the receiver sees it only through [`receiver::ControlPlane`].
//!
//! - [`storage`]: files behind traits, so tests inject faults (full disk, failing fsync).
//! - [`segment`]: the segment file format; scanning and crash recovery of one segment.
//! - [`index`]: (disk, range) → (seq, segment, position); sidecar index files.
//! - [`log`]: one server's append-only log: append, roll, group commit, recovery.
//! - [`server`]: a server's log, registration and catalogue; the ingest rules.
//! - [`points`]: recovery points from barriers.
//! - [`retention`]: the retention policy and log cleaning.
//! - [`rebuild`]: a disk at a point, into an image file or onto a block device.
//! - [`private_files`]: files holding plaintext or secrets are 0600, their directories
//!   0700, whatever the umask.
//! - [`digests`]: chunk digests of the latest state, for the agent's digest catch-up.
//! - [`extent_map`]: non-overlapping ranges, the newest record winning (rebuild, retention).
//! - [`receiver`]: the TLS service: handshake, ingest, group commit, acks.
//!
//! Invariants kept here (DESIGN.md): I2 — an ack names only seqs an fsync has covered;
//! I6 — storing, verifying and cleaning use the MAC key only, the data key appears only
//! in [`rebuild`]; I7 — a refused frame changes nothing and gets a clear error.

pub mod digests;
pub mod extent_map;
pub mod index;
pub mod log;
pub mod points;
pub mod private_files;
pub mod rebuild;
pub mod receiver;
pub mod retention;
pub mod segment;
pub mod server;
pub mod storage;
mod sys;

/// The wall clock in Unix milliseconds (0 before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
