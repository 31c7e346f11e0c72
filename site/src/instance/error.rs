//! Why an instance could not be brought up or cleaned, and the API code of each cause:
//! a bad spec or script is the caller's ([`ErrorCode::BadRequest`]), a missing point or
//! instance is [`ErrorCode::NotFound`], what the host's tools and files did is
//! [`ErrorCode::Internal`]. Every I/O failure names its action and path.

use crate::api::ErrorCode;
use ferry_standby::points::PointSelector;
use ferry_standby::rebuild;
use ferry_wire::{DiskId, ServerId};
use std::path::{Path, PathBuf};

/// Why an instance could not be brought up or cleaned.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// A post-launch script refused ([`crate::scripts`]).
    #[error(transparent)]
    Script(#[from] crate::scripts::ScriptError),
    #[error("the script launcher needs a post-launch script (--script)")]
    NoScript,
    #[error("cpus must be 1 to 64 and memory 128 to 262144 MiB (got {0} CPUs, {1} MiB)")]
    Size(u32, u32),
    #[error(
        "network {0:?} is not \"user\", \"none\" or a bridge name (1 to 15 letters, digits, . _ -)"
    )]
    BadNetwork(String),
    #[error("{0:?} is not an IP address (optionally with /prefix)")]
    BadIp(String),
    #[error("cannot forward ports {0:?}: {1}")]
    BadForward(Vec<u16>, &'static str),
    #[error("server {0} has no retained point {1}; see `ferry point list --server {0}`")]
    NoPoint(ServerId, PointSelector),
    #[error("server {0} has not registered its disks yet")]
    NotRegistered(ServerId),
    #[error("cannot read the store of server {0}")]
    Store(ServerId, #[source] ferry_standby::server::OpenError),
    #[error(transparent)]
    Rebuild(#[from] rebuild::RebuildError),
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} failed: {output}")]
    Tool { command: String, output: String },
    #[error("no original disk is given for disk {}", .0.get())]
    NoOriginal(DiskId),
    #[error("no instance {0}")]
    Unknown(String),
    #[error("instance {} of {} is not valid", .0.display(), "instance.json")]
    Corrupt(PathBuf, #[source] serde_json::Error),
}

impl InstanceError {
    /// The API's code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            InstanceError::Script(_)
            | InstanceError::NoScript
            | InstanceError::Size(..)
            | InstanceError::BadNetwork(_)
            | InstanceError::BadIp(_)
            | InstanceError::BadForward(..)
            | InstanceError::NoOriginal(_) => ErrorCode::BadRequest,
            InstanceError::NoPoint(..) | InstanceError::Unknown(_) => ErrorCode::NotFound,
            InstanceError::NotRegistered(_) => ErrorCode::NotAllowed,
            InstanceError::Store(..)
            | InstanceError::Rebuild(_)
            | InstanceError::Io { .. }
            | InstanceError::Tool { .. }
            | InstanceError::Corrupt(..) => ErrorCode::Internal,
        }
    }
}

pub(super) fn io_err(
    action: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> InstanceError {
    let path = path.to_owned();
    move |source| InstanceError::Io {
        action,
        path,
        source,
    }
}
