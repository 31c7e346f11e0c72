//! Protected-host agent — **a stub: nothing here works yet** (issue 5).
//!
//! Will read dirty extents (io_uring, O_DIRECT), seal them with `ferry-wire`, ship them
//! in one ordered stream to the standby, and clear an extent only once a record read after
//! its last write is acknowledged as durable (DESIGN.md I1).
