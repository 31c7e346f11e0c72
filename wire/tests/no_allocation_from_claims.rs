//! Lengths claimed by a peer are never allocated before they are checked. In a test
//! binary of its own: it watches every allocation of the process, and other tests would
//! disturb the count.

mod common;

use common::{Body, record_body, reframe};
use ferry_wire::frame::{self, FRAME_HEADER_LEN, FrameError, FrameHeader, MAGIC};
use ferry_wire::record::RecordAddress;
use ferry_wire::{ByteLen, ByteOffset, DiskId, MasterKey, Sealer, Seq, ServerId};
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

    // Inside a body under the cap: lists and a payload each claiming gigabytes.
    let record = {
        let keys = MasterKey::from_bytes([1; 32])
            .host_key(&ServerId::new("a").unwrap())
            .keys();
        let mut r = Sealer::new(&keys, 1)
            .unwrap()
            .zeroes(
                RecordAddress {
                    server: ServerId::new("a").unwrap(),
                    disk: DiskId::new(0),
                    offset: ByteOffset::new(0),
                    seq: Seq::new(1),
                },
                ByteLen::new(4096),
            )
            .unwrap();
        r.header.payload_len = u32::MAX;
        r
    };
    let claims = [
        // a registration of 2^32 - 1 disks
        (
            5u8,
            Body::default().text("h").u32(u32::MAX).bytes(&[0; 64]).0,
        ),
        // digests of 2^32 - 1 chunks
        (12, Body::default().u64(1).u32(0).u64(0).u32(u32::MAX).0),
        // a record whose payload is 4 GiB long
        (6, record_body(&record)),
        // an error message of 64 KiB
        (10, Body::default().u8(5).u32(0xffff).bytes(&[b'x'; 32]).0),
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
