//! The control plane of a standby site: the operator's view of its protected servers
//! ([`crate::catalog`], persisted) joined with what their agents report live, and the
//! rules that tie the two to the data path (the store's receiver, through
//! [`ferry_standby::receiver::ControlPlane`]):
//!
//! - A server is served if the standby's config lists it (*static*: no lifecycle, it
//!   replicates as soon as its agent connects) or the catalogue holds it (*managed*).
//! - A managed server's first registration moves it from `installing` to `initialized`.
//! - A managed server's records are taken only while its state replicates
//!   ([`State::replicating`]); otherwise the agent is told [`ErrorCode::Paused`] with the
//!   reason and keeps tracking until it is. A step that ends replication (stop,
//!   failover) is durable, then published to the ingest path (checked under the
//!   server's lock before every append), then the connection is closed; a failover waits
//!   for the session to end before it resolves "latest". Registrations are not stored
//!   after a failover (the disks instances are built from stay as they were).
//! - The agent's progress reports move `starting` → `full` → `realtime`; a lost
//!   connection makes a replicating server `interrupted` (with auto-restart off it then
//!   waits for `replication start`).
//! - A point an operator asks for travels to the agent as a `PointRequest`; the answer is
//!   its `PointResult`.
//!
//! A file per job: `views` (what the operator sees), `servers` (pairs, servers,
//! replication start and the replica's placement), `points` (listing and requesting
//! points), `keys` (recovery keys for rebuilding), `instances` (drills and failovers),
//! `reverse` (replicating a failed-over server back), `data_path` (the receiver's
//! questions and reports) and `error`. This file holds [`Control`] itself: the
//! catalogue, the live reports and the gate the ingest path reads.
//!
//! [`ErrorCode::Paused`]: ferry_wire::message::ErrorCode::Paused

mod data_path;
mod error;
mod instances;
mod keys;
mod points;
mod reverse;
mod servers;
mod views;

pub use error::ControlError;
pub use keys::KeyLoader;
pub use reverse::{Peers, ReverseTools};
pub use views::{PointView, ProgressView, ServerView, point_views};

use crate::catalog::{Catalog, CatalogError, ProtectedServer};
use crate::instance::Instances;
use crate::lifecycle::State;
use ferry_standby::receiver::Session;
use ferry_standby::server::DataDir;
use ferry_wire::ServerId;
use ferry_wire::message::{PointResult, Progress};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, RwLock};

/// What an agent reported last, and its connection.
#[derive(Debug, Default)]
struct Live {
    conn: Option<Session>,
    progress: Option<(Progress, u64)>,
    /// While a full copy or compare runs: its `full_done` and the time (Unix ms) of its
    /// first report, the base of its ETA.
    copy_started: Option<(u64, u64)>,
    /// Point requests sent and their results, once they arrive.
    points: HashMap<u64, Option<PointResult>>,
    /// The newest point stored (read from the store the first time it is asked for).
    last_point: Option<PointView>,
}

/// The catalogue, the live reports, and the rules above.
pub struct Control {
    data: DataDir,
    instances: Instances,
    keys: OnceLock<KeyLoader>,
    reverse_tools: OnceLock<ReverseTools>,
    /// Reverse agents this process started (reaped when stopped).
    reverse_agents: Mutex<HashMap<ServerId, std::process::Child>>,
    /// Servers an operation is running on (one at a time per server).
    busy: Mutex<std::collections::HashSet<ServerId>>,
    storage_classes: HashMap<String, std::path::PathBuf>,
    /// Where this site's virtual machines' disks are found (original machines).
    volumes: OnceLock<crate::original_disks::Volumes>,
    catalog: Mutex<Catalog>,
    /// Managed servers' states, for the ingest path (read per record).
    states: RwLock<HashMap<ServerId, Gate>>,
    live: Mutex<HashMap<ServerId, Live>>,
    changed: Condvar,
    next_request: AtomicU64,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("data", &self.data)
            .field("keys", &self.keys.get().map(|_| "loader"))
            .finish_non_exhaustive()
    }
}

/// An operation running on a server ([`Control::operation`]).
#[derive(Debug)]
pub(crate) struct Operation<'a> {
    control: &'a Control,
    server: ServerId,
}

impl Drop for Operation<'_> {
    fn drop(&mut self) {
        self.control
            .busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.server);
    }
}

/// What the ingest path needs to know of a managed server.
#[derive(Debug, Clone, Copy)]
struct Gate {
    state: State,
    auto_restart: bool,
}

impl Gate {
    fn of(s: &ProtectedServer) -> Self {
        Self {
            state: s.state,
            auto_restart: s.replication.as_ref().is_none_or(|r| r.auto_restart),
        }
    }

    fn takes_records(self) -> bool {
        self.state.replicating() && (self.auto_restart || self.state != State::Interrupted)
    }
}

impl Control {
    /// Loads the catalogue of the standby whose data directory is `data_dir`
    /// (`control.json` there).
    pub fn open(
        data_dir: &Path,
        storage_classes: HashMap<String, std::path::PathBuf>,
    ) -> Result<Self, CatalogError> {
        let catalog = Catalog::open(&data_dir.join("control.json"))?;
        let states = catalog
            .servers()
            .iter()
            .map(|s| (s.id.clone(), Gate::of(s)))
            .collect();
        Ok(Self {
            data: DataDir::new(data_dir),
            instances: Instances::new(data_dir),
            keys: OnceLock::new(),
            reverse_tools: OnceLock::new(),
            reverse_agents: Mutex::default(),
            busy: Mutex::default(),
            storage_classes,
            volumes: OnceLock::new(),
            catalog: Mutex::new(catalog),
            states: RwLock::new(states),
            live: Mutex::default(),
            changed: Condvar::new(),
            next_request: AtomicU64::new(1),
        })
    }

    /// Sets where this site's virtual machines' disks are found (once, at start; the
    /// default is nowhere: only by the identity the host sees).
    pub fn set_volumes(&self, volumes: crate::original_disks::Volumes) {
        let _ = self.volumes.set(volumes);
    }

    fn volumes(&self) -> &crate::original_disks::Volumes {
        self.volumes.get_or_init(Default::default)
    }

    fn catalog(&self) -> MutexGuard<'_, Catalog> {
        self.catalog.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn live(&self) -> MutexGuard<'_, HashMap<ServerId, Live>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn gate(&self, id: &ServerId) -> Option<Gate> {
        self.states
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .copied()
    }

    /// Makes the ingest path see the catalogue's states; closes the connection of a
    /// server whose records are no longer taken.
    fn publish(&self, catalog: &Catalog) {
        let mut kick = Vec::new();
        {
            let mut states = self.states.write().unwrap_or_else(|e| e.into_inner());
            states.clear();
            for s in catalog.servers() {
                let gate = Gate::of(s);
                if !gate.takes_records() {
                    kick.push(s.id.clone());
                }
                states.insert(s.id.clone(), gate);
            }
        }
        let live = self.live();
        for id in kick {
            if let Some(session) = live.get(&id).and_then(|l| l.conn.as_ref()) {
                session.close();
            }
        }
    }

    /// Runs a change of the catalogue and publishes the result.
    fn change<T>(
        &self,
        f: impl FnOnce(&mut Catalog) -> Result<T, CatalogError>,
    ) -> Result<T, CatalogError> {
        let mut catalog = self.catalog();
        let result = f(&mut catalog);
        self.publish(&catalog);
        result
    }

    /// Marks an operation running on `id` until the guard drops; refuses a second one.
    pub(crate) fn operation(&self, id: &str) -> Result<Operation<'_>, ControlError> {
        let server = self.catalog().server(id)?.id.clone();
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        if !busy.insert(server.clone()) {
            return Err(ControlError::Busy(server));
        }
        Ok(Operation {
            control: self,
            server,
        })
    }
}
