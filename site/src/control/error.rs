//! Why an operator's operation was refused or failed, and the API code each reason maps
//! to (its HTTP status follows).

use crate::api::{CallError, ErrorCode};
use crate::catalog::CatalogError;
use crate::instance::{Instance, InstanceError};
use crate::lifecycle::State;
use ferry_standby::server::OpenError;
use ferry_wire::ServerId;
use std::time::Duration;

/// Why an operator's operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("server {0} is {1}: points are made only while it replicates")]
    NotReplicating(ServerId, State),
    #[error("the agent of server {0} is not connected; a point needs it")]
    NotConnected(ServerId),
    #[error("the agent of server {0} did not answer within {1:?}")]
    Timeout(ServerId, Duration),
    #[error("the agent of server {0} could not make the point: {1}")]
    Failed(ServerId, String),
    #[error("cannot read the store of server {0}")]
    Store(ServerId, #[source] OpenError),
    #[error("no storage class {class:?}; this standby has: {}", known.join(", "))]
    UnknownStorageClass { class: String, known: Vec<String> },
    #[error(
        "the replica of server {server} is in storage class {current:?} (chosen by `server \
         add --storage-class`); moving it to {wanted:?} is not supported"
    )]
    ClassChange {
        server: ServerId,
        current: String,
        wanted: String,
    },
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    NotADisk(#[from] crate::original_disks::OriginalDiskError),
    #[error(transparent)]
    Instance(#[from] InstanceError),
    #[error("no recovery key to rebuild with: {0}")]
    Keys(String),
    #[error(
        "the post-launch script of {} exited with {}; its output ends with:\n{}\n(the \
         instance stays for inspection: `ferry drill status`, then `ferry drill clean`)",
        .0.id,
        .0.script.as_ref().and_then(|s| s.exit_code).map_or_else(|| "no status (killed)".to_owned(), |c| c.to_string()),
        .0.script.as_ref().map_or("", |s| s.output.trim_end())
    )]
    ScriptFailed(Box<Instance>),
    #[error("\"latest\" can be used only once, by `failover start`; choose an earlier point")]
    LatestUsed,
    #[error("the agent of server {0} is still connected after {1:?}; failover needs it stopped")]
    StillConnected(ServerId, Duration),
    #[error("reverse replication: {0}")]
    Reverse(String),
    #[error("reverse replication: site {site}: {call}: {source}")]
    Peer {
        site: String,
        call: String,
        #[source]
        source: CallError,
    },
    #[error("another operation on server {0} is in progress; try again when it ends")]
    Busy(ServerId),
    #[error(
        "\"latest\" of server {0} is not a consistent state while it is {1} (its disks are \
         being copied): choose a point from `ferry point list`"
    )]
    LatestInconsistent(ServerId, State),
    #[error(
        "server {0} is not protected yet: its first full copy has not completed, so no \
         state of its disks can be recovered (`ferry server list` shows the copy's progress)"
    )]
    NotProtectedYet(ServerId),
    #[error("server {0} still has instances ({1}): clean them first (`ferry drill clean`)")]
    HasInstances(ServerId, String),
}

impl ControlError {
    /// The API's code for this error (its HTTP status follows).
    pub fn code(&self) -> ErrorCode {
        match self {
            ControlError::Catalog(e) => e.code(),
            ControlError::Instance(e) => e.code(),
            ControlError::UnknownStorageClass { .. }
            | ControlError::LatestUsed
            | ControlError::NotADisk(_) => ErrorCode::BadRequest,
            ControlError::NotReplicating(..)
            | ControlError::NotConnected(_)
            | ControlError::StillConnected(..)
            | ControlError::Busy(_)
            | ControlError::LatestInconsistent(..)
            | ControlError::NotProtectedYet(_)
            | ControlError::HasInstances(..)
            | ControlError::ClassChange { .. } => ErrorCode::NotAllowed,
            ControlError::Timeout(..) => ErrorCode::Timeout,
            ControlError::ScriptFailed(_) => ErrorCode::ScriptFailed,
            ControlError::Reverse(_) | ControlError::Peer { .. } => ErrorCode::Peer,
            ControlError::Keys(_)
            | ControlError::Failed(..)
            | ControlError::Store(..)
            | ControlError::Io { .. } => ErrorCode::Internal,
        }
    }
}
