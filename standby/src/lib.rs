//! Standby site — **a stub: nothing here works yet** (issue 4).
//!
//! Will receive sealed records, verify them with the MAC key alone, append them to a
//! durable segment log, acknowledge after fsync (DESIGN.md I2, I6), keep the recovery-point
//! catalogue and rebuild any retained point.
