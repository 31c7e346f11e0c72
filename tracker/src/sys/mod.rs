//! Everything that talks to the kernel: loading and attaching the BPF programs and
//! reading their maps ([`bpf`]), block devices ([`blockdev`]), and the monotonic clock
//! the tracker dates what it reads by. Every `unsafe` block of the crate is here.

pub mod blockdev;
pub mod bpf;

/// Nanoseconds of CLOCK_MONOTONIC.
pub fn monotonic_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available on Linux");
    u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec()).unwrap_or(0)
}
