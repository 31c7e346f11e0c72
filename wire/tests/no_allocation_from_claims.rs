//! Lengths claimed by a peer are never allocated before they are checked. In a test
//! binary of its own: it watches every allocation of the process, and other tests would
//! disturb the count.

mod common;

use common::reframe;
use ferry_wire::frame::{self, FRAME_HEADER_LEN, FrameError, FrameHeader, MAGIC};
use ferry_wire::{MAX_FRAME_BODY, PROTOCOL_VERSION};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Records the largest single allocation.
struct LargestAllocation;
static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call unchanged to the system allocator; only records sizes.
unsafe impl GlobalAlloc for LargestAllocation {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: same layout contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: `ptr` came from `System` with `layout`; same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: LargestAllocation = LargestAllocation;

/// bincode varint for a u64: marker 253 then 8 bytes little-endian.
fn varint_u64(n: u64) -> Vec<u8> {
    let mut v = vec![253];
    v.extend_from_slice(&n.to_le_bytes());
    v
}

#[test]
fn claimed_lengths_are_refused_before_allocating() {
    // In the frame header: refused from the 16 bytes alone.
    let mut head = [0u8; FRAME_HEADER_LEN];
    head[..4].copy_from_slice(&MAGIC);
    head[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    head[6] = 6;
    for len in [MAX_FRAME_BODY + 1, u32::MAX] {
        head[8..12].copy_from_slice(&len.to_le_bytes());
        let err = FrameHeader::parse(&head).expect_err("over-cap length accepted");
        assert!(matches!(err, FrameError::BodyTooLong { .. }), "{err}");
        assert!(err.to_string().contains("over the"), "{err}");
    }

    // Inside a body under the cap: a string (error message, frame type 10) and a byte
    // payload (hello's agent version is a string too) each claiming 64 GiB.
    let claims = [
        (
            10u8,
            [vec![5u8], varint_u64(64 << 30), vec![b'x'; 32]].concat(),
        ), // code 5, message
        (
            1u8,
            [vec![1u8, b'a'], varint_u64(64 << 30), vec![0u8; 32]].concat(),
        ), // server "a", version
    ];
    for (frame_type, body) in claims {
        let bytes = reframe(frame_type, &body);
        LARGEST.store(0, Ordering::Relaxed);
        let err = frame::decode(&bytes).expect_err("a 64 GiB claim decoded");
        let largest = LARGEST.load(Ordering::Relaxed);
        assert!(
            largest < MAX_FRAME_BODY as usize,
            "decoding allocated {largest} bytes"
        );
        assert!(matches!(err, FrameError::Body { .. }), "{err}");
    }
}
