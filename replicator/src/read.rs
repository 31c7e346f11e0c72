//! Reading extents of the protected disks: `O_DIRECT` (the page cache neither serves
//! stale data nor fills up with the copy), many reads in flight through io_uring, and a
//! synchronous `pread` fallback where io_uring is unavailable.
//!
//! Invariants: every request is read whole or the batch fails (a short read is an
//! error, never a record of partly old bytes); buffers are aligned to [`ALIGN`] as
//! `O_DIRECT` requires, and requests are whole sectors.

use io_uring::{IoUring, opcode, types};
use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Alignment of read buffers (and of request offsets and lengths, in practice whole grains).
pub const ALIGN: usize = 4096;
/// Reads in flight at once on the ring.
const RING_DEPTH: u32 = 64;

/// A heap buffer aligned to [`ALIGN`], for `O_DIRECT`.
pub struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: the buffer is uniquely owned heap memory, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out `&[u8]`.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes (rounded up to [`ALIGN`] for the allocation).
    pub fn new(len: usize) -> Self {
        let layout = Self::layout(len);
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr =
            std::ptr::NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        Self { ptr, len }
    }

    fn layout(len: usize) -> Layout {
        Layout::from_size_align(len.max(1).next_multiple_of(ALIGN), ALIGN)
            .expect("a read buffer's size fits a layout")
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialised (zeroed) bytes, owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with the same layout.
        unsafe { dealloc(self.ptr.as_ptr(), Self::layout(self.len)) }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} bytes)", self.len)
    }
}

/// One extent to read: disk index, byte offset, and the buffer (its length is the length).
#[derive(Debug)]
pub struct ReadReq {
    pub disk: usize,
    pub offset: u64,
    pub buf: AlignedBuf,
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot open {} for O_DIRECT reads", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading {len} bytes at offset {offset} of {}", path.display())]
    Read {
        path: PathBuf,
        offset: u64,
        len: usize,
        #[source]
        source: io::Error,
    },
}

/// Reads the protected disks.
pub struct DiskReader {
    files: Vec<(File, PathBuf)>,
    ring: Option<IoUring>,
}

impl std::fmt::Debug for DiskReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskReader")
            .field("disks", &self.files.len())
            .field("io_uring", &self.ring.is_some())
            .finish()
    }
}

impl DiskReader {
    /// Opens every disk with `O_DIRECT`; sets up io_uring when `use_io_uring` and the
    /// kernel allows it (a refusal is logged and the synchronous path used).
    pub fn open(paths: &[PathBuf], use_io_uring: bool) -> Result<Self, ReadError> {
        let files = paths
            .iter()
            .map(|p| open_direct(p).map(|f| (f, p.clone())))
            .collect::<Result<_, _>>()?;
        let ring = if use_io_uring {
            match IoUring::new(RING_DEPTH) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(error = %e, "io_uring is unavailable; reading synchronously");
                    None
                }
            }
        } else {
            None
        };
        Ok(Self { files, ring })
    }

    /// Whether reads go through io_uring.
    pub fn uses_io_uring(&self) -> bool {
        self.ring.is_some()
    }

    /// Fills every request's buffer from its disk.
    pub fn read(&mut self, reqs: &mut [ReadReq]) -> Result<(), ReadError> {
        match self.ring.take() {
            Some(mut ring) => {
                let result = self.read_ring(&mut ring, reqs);
                self.ring = Some(ring);
                result
            }
            None => reqs.iter_mut().try_for_each(|r| self.read_sync(r)),
        }
    }

    fn read_sync(&self, r: &mut ReadReq) -> Result<(), ReadError> {
        let (file, path) = &self.files[r.disk];
        file.read_exact_at(&mut r.buf, r.offset)
            .map_err(|source| ReadError::Read {
                path: path.clone(),
                offset: r.offset,
                len: r.buf.len(),
                source,
            })
    }

    fn read_ring(&self, ring: &mut IoUring, reqs: &mut [ReadReq]) -> Result<(), ReadError> {
        let mut next = 0;
        let mut in_flight = 0usize;
        // Requests that completed short or were interrupted are finished synchronously.
        let mut retry = Vec::new();
        // After a failure nothing more is submitted, but what is in flight is waited for:
        // the kernel writes into those buffers until it completes them.
        let mut failed = None;
        while (next < reqs.len() && failed.is_none()) || in_flight > 0 {
            while failed.is_none() && next < reqs.len() && in_flight < RING_DEPTH as usize {
                let r = &mut reqs[next];
                let len = u32::try_from(r.buf.len()).expect("extents are at most a few MiB");
                let entry = opcode::Read::new(
                    types::Fd(self.files[r.disk].0.as_raw_fd()),
                    r.buf.as_mut_ptr(),
                    len,
                )
                .offset(r.offset)
                .build()
                .user_data(next as u64);
                // SAFETY: the buffer outlives the operation: this function waits for every
                // submitted entry before it returns, and `reqs` is borrowed until then.
                unsafe { ring.submission().push(&entry) }
                    .expect("the queue has room: in_flight < RING_DEPTH");
                next += 1;
                in_flight += 1;
            }
            match ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if is_transient(&e) => continue,
                // Returning (or unwinding) would free buffers the kernel may still write
                // into: stop the process.
                Err(e) => {
                    tracing::error!(error = %e, in_flight, "io_uring failed with reads in flight; aborting");
                    std::process::abort();
                }
            }
            for cqe in ring.completion() {
                in_flight -= 1;
                let i = usize::try_from(cqe.user_data()).expect("an index");
                let res = cqe.result();
                if res < 0 {
                    let err = io::Error::from_raw_os_error(-res);
                    if is_transient(&err) {
                        retry.push(i);
                    } else if failed.is_none() {
                        let r = &reqs[i];
                        failed = Some(ReadError::Read {
                            path: self.files[r.disk].1.clone(),
                            offset: r.offset,
                            len: r.buf.len(),
                            source: err,
                        });
                    }
                } else if usize::try_from(res).expect("non-negative") != reqs[i].buf.len() {
                    retry.push(i);
                }
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        for i in retry {
            self.read_sync(&mut reqs[i])?;
        }
        Ok(())
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock | io::ErrorKind::ResourceBusy
    )
}

fn open_direct(path: &Path) -> Result<File, ReadError> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(|source| ReadError::Open {
            path: path.to_owned(),
            source,
        })
}
