//! The standby site: receives sealed extents from agents, stores them durably without
//! ever holding the data key, keeps the recovery-point catalogue, applies retention, and
//! rebuilds any retained point of a server's disks.
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
//! - [`receiver`]: the TCP service: handshake, ingest, group commit, acks.
//! - [`lifecycle`]: a protected server's states and the steps between them (DESIGN.md §5).
//! - [`catalog`]: the site pairs and protected servers, persisted.
//! - [`instance`]: drill and failover instances: a point rebuilt into image files,
//!   attached as loop devices, and a launcher (script or qemu).
//! - [`scripts`]: which post-launch scripts run (only root's, from the scripts directory).
//! - [`original_disks`]: the original machine's disks a failback writes over, found by
//!   serial/WWN and size and refused when in use.
//! - [`control`]: the operator's view and operations joined with the agents' reports;
//!   which servers' records are taken.
//!
//! Invariants kept here (DESIGN.md): I2 — an ack names only seqs an fsync has covered;
//! I6 — storing, verifying and cleaning use the MAC key only, the data key appears only
//! in [`rebuild`]; I7 — a refused frame changes nothing and gets a clear error.

pub mod catalog;
pub mod control;
pub mod digests;
pub mod extent_map;
pub mod index;
pub mod instance;
pub mod lifecycle;
pub mod log;
pub mod original_disks;
pub mod points;
pub mod private_files;
pub mod rebuild;
pub mod receiver;
pub mod retention;
pub mod scripts;
pub mod segment;
pub mod server;
pub mod storage;
mod sys;

/// The wall clock in Unix milliseconds (0 before 1970).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
