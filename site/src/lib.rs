//! A standby site's DR control plane, above the store (`ferry-standby`):
//!
//! - [`api`]: the control API's types: request bodies, error codes kept end to end.
//! - [`lifecycle`]: a protected server's states and the steps between them (DESIGN.md §5).
//! - [`catalog`]: the site pairs and protected servers, persisted.
//! - [`instance`]: drill and failover instances: a point rebuilt into image files,
//!   attached as loop devices, and a launcher (script or qemu).
//! - [`scripts`]: which post-launch scripts run (only root's, from the scripts directory).
//! - [`original_disks`]: the original machine's disks a failback writes over, found by
//!   serial/WWN and size and refused when in use.
//! - [`control`]: the operator's view and operations joined with the agents' reports;
//!   which servers' records are taken (the store's receiver asks it through
//!   [`ferry_standby::receiver::ControlPlane`]); reverse replication and failback.
//!
//! Invariants kept here (DESIGN.md): a step is durable in the catalogue before the data
//! path sees it; a server's records are taken only while its state replicates; the
//! recovery key is used only to rebuild an instance, and held only for the operation
//! that brought it (I6).

pub mod api;
pub mod catalog;
pub mod control;
pub mod instance;
pub mod lifecycle;
pub mod original_disks;
pub mod scripts;
