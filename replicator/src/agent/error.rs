//! Why the agent stopped, and which of those reasons a reconnect may cure.

use crate::link::LinkError;
use crate::read::ReadError;
use crate::seal_pool::SealPoolError;
use ferry_tracker::TrackerError;
use std::path::PathBuf;

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Tracker(#[from] TrackerError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Seal(#[from] SealPoolError),
    #[error("cannot use the state directory {}", path.display())]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot find the filesystems mounted on the protected disks")]
    Mounts(#[from] ferry_tracker::check::CheckError),
    #[error("the standby broke the protocol: {0}")]
    Protocol(String),
    #[error(transparent)]
    Lease(#[from] crate::seq_lease::LeaseError),
    /// A protected disk whose kernel name the standby would refuse (it becomes a device
    /// path at the other site): the registration could never be sent.
    #[error("cannot protect {}", path.display())]
    DiskName {
        path: PathBuf,
        #[source]
        source: ferry_wire::ids::DiskNameError,
    },
}

impl AgentError {
    /// Link trouble, a standby that said what cannot be true (it is dropped and asked
    /// again: nothing it says clears a dirty range), and an I/O error of a kind that
    /// passes ([`transient_errno`]) anywhere beneath a disk read, the tracker or the seq
    /// lease. Everything else needs an operator.
    pub fn is_retryable(&self) -> bool {
        match self {
            AgentError::Link(e) => e.is_retryable(),
            AgentError::Protocol(_) => true,
            AgentError::Read(_) | AgentError::Tracker(_) | AgentError::Lease(_) => {
                caused_by_transient_io(self)
            }
            AgentError::Seal(_)
            | AgentError::StateDir { .. }
            | AgentError::Mounts(_)
            | AgentError::DiskName { .. } => false,
        }
    }
}

/// Whether an I/O error somewhere in `e`'s chain of sources is transient.
fn caused_by_transient_io(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return io.raw_os_error().is_some_and(transient_errno);
        }
        next = e.source();
    }
    false
}

/// Errors that a retry may not see again: a medium or transport error (EIO, EREMOTEIO:
/// a path of a multipath disk, a SAN blip), interruption, and lack of a resource that
/// comes back (memory, buffers, a busy device, a timeout). Not: a missing or read-only
/// device, a bad argument, no space — those stay until someone acts.
pub fn transient_errno(errno: i32) -> bool {
    matches!(
        errno,
        libc::EIO
            | libc::EREMOTEIO
            | libc::EAGAIN
            | libc::EINTR
            | libc::ENOMEM
            | libc::ENOBUFS
            | libc::EBUSY
            | libc::ETIMEDOUT
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_error(errno: i32) -> AgentError {
        AgentError::Read(ReadError::Read {
            path: PathBuf::from("/dev/vdb"),
            offset: 0,
            len: 4096,
            source: std::io::Error::from_raw_os_error(errno),
        })
    }

    #[test]
    fn a_transient_read_error_is_retried_and_a_lasting_one_is_not() {
        for errno in [libc::EIO, libc::EREMOTEIO, libc::EAGAIN, libc::ETIMEDOUT] {
            assert!(read_error(errno).is_retryable(), "errno {errno}");
        }
        for errno in [libc::ENODEV, libc::ENXIO, libc::EROFS, libc::EINVAL] {
            assert!(!read_error(errno).is_retryable(), "errno {errno}");
        }
    }

    #[test]
    fn a_seq_lease_that_cannot_be_written_for_lack_of_memory_is_retried() {
        let io = |errno| {
            AgentError::Lease(crate::seq_lease::LeaseError::Io {
                what: "write",
                path: PathBuf::from("/var/lib/ferry/seq.lease"),
                source: std::io::Error::from_raw_os_error(errno),
            })
        };
        assert!(io(libc::ENOMEM).is_retryable());
        assert!(!io(libc::ENOSPC).is_retryable());
    }
}
