//! The few raw syscalls the standby makes that `std` does not offer.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Zeroes `len` bytes at `offset` of a block device without writing them
/// (`fallocate(FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE)`, Linux 4.9+ for block
/// devices). The range must be aligned to the device's logical block size; callers fall
/// back to writing zeroes when this fails.
pub(crate) fn zero_range(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    // SAFETY: fallocate takes a file descriptor that `file` keeps open for the duration of
    // the call and plain integers; it touches no memory of ours.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
