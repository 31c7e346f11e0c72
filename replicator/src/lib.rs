//! Protected-host agent. So far only [`link`], the protocol client that ships frames to
//! the standby (issue 4); the rest — io_uring reads, sealing, scheduling, clearing an
//! extent only once a record read after its last write is acknowledged as durable
//! (DESIGN.md I1) — is issue 5. [`sim`] is a simulated protected server (disks in memory)
//! that tests and benchmarks use to drive the link and the standby.

pub mod link;
pub mod sim;
