//! Kernel write tracker — **a stub: nothing here works yet** (issue 3).
//!
//! Will load the BPF programs in `ebpf/` with aya, attach them to the block-layer
//! tracepoints of the protected disks, drain their ring buffer into a per-disk dirty map
//! at 4 KiB grain, and detect every tracking gap (DESIGN.md I3, I4).
