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
//! [`ErrorCode::Paused`]: ferry_wire::message::ErrorCode::Paused

mod reverse;

pub use reverse::{Peers, ReverseTools};

use crate::api::{CallError, ErrorCode};
use crate::catalog::{Catalog, CatalogError, Pair, ProtectedServer, Replication};
use crate::instance::{Instance, InstanceError, Instances, Kind, Spec};
use crate::lifecycle::{Phase, State, Step};
use ferry_standby::receiver::{ControlPlane, Session};
use ferry_standby::retention::Policy;
use ferry_standby::server::{DataDir, OpenError, ServerState};
use ferry_wire::message::Barrier;
use ferry_wire::message::PointKind;
use ferry_wire::message::{PointRequest, PointResult, Progress, ReplicationPhase};
use ferry_wire::{DigestKey, RecoveryKey, RecoveryKeys, ServerId};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::{Duration, Instant};

/// Loads a server's recovery keys when an instance of it is rebuilt (the data and seal
/// keys are needed then and only then, DESIGN.md I6); the error says why it could not.
pub type KeyLoader = Box<dyn Fn(&ServerId) -> Result<RecoveryKey, String> + Send + Sync>;

/// Longest a failover waits for the forward agent's session to end.
const DISCONNECT_WAIT: Duration = Duration::from_secs(15);

/// What an agent reported last, and its connection.
#[derive(Debug, Default)]
struct Live {
    conn: Option<Session>,
    progress: Option<(Progress, u64)>,
    /// Point requests sent and their results, once they arrive.
    points: HashMap<u64, Option<PointResult>>,
    /// The newest point stored (read from the store the first time it is asked for).
    last_point: Option<PointView>,
}

/// A server as the operator sees it now.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ServerView {
    #[serde(flatten)]
    pub server: ProtectedServer,
    /// `state`, or `error` while an error is unresolved.
    pub shown_state: String,
    pub connected: bool,
    /// The agent's last progress report (and when it came, Unix ms).
    pub progress: Option<ProgressView>,
    pub last_point: Option<PointView>,
    /// The reverse agent's status (its `ferry agent status --json`), while it runs.
    pub reverse_agent: Option<ferry_replicator::status::Status>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ProgressView {
    pub phase: String,
    pub full_done: u64,
    pub full_total: u64,
    pub backlog_bytes: u64,
    pub rpo_lag_ms: u64,
    pub unix_time_ms: u64,
}

/// A recovery point as the operator sees it; the last row is "latest" (`id` is `None`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PointView {
    pub id: Option<u64>,
    pub seq: u64,
    pub unix_time_ms: Option<u64>,
    pub consistent: bool,
    /// "scheduled", "manual" or "latest".
    pub kind: String,
}

impl PointView {
    /// The point a stored barrier makes.
    pub fn of_barrier(b: &ferry_wire::message::Barrier) -> Self {
        Self {
            id: Some(b.point.0),
            seq: b.seq.0,
            unix_time_ms: Some(b.unix_time_ms),
            consistent: b.consistent,
            kind: kind_name(b.kind).to_owned(),
        }
    }
}

fn kind_name(kind: PointKind) -> &'static str {
    match kind {
        PointKind::Scheduled => "scheduled",
        PointKind::Manual => "manual",
    }
}

/// The retained points of a server's store, oldest first, then "latest".
pub fn point_views(state: &ServerState) -> Vec<PointView> {
    let mut rows: Vec<PointView> = state
        .points()
        .iter()
        .map(|p| PointView {
            id: Some(p.id.0),
            seq: p.seq.0,
            unix_time_ms: Some(p.unix_time_ms),
            consistent: p.consistent,
            kind: kind_name(p.kind).to_owned(),
        })
        .collect();
    rows.push(PointView {
        id: None,
        seq: state.log.last_seq().0,
        unix_time_ms: None,
        consistent: false,
        kind: "latest".to_owned(),
    });
    rows
}

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
            catalog: Mutex::new(catalog),
            states: RwLock::new(states),
            live: Mutex::default(),
            changed: Condvar::new(),
            next_request: AtomicU64::new(1),
        })
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

    // --- the operator's operations --------------------------------------------------

    pub fn pairs(&self) -> Vec<Pair> {
        self.catalog().pairs().to_vec()
    }

    pub fn create_pair(&self, pair: Pair) -> Result<(), CatalogError> {
        self.change(|c| c.create_pair(pair))
    }

    pub fn delete_pair(&self, name: &str) -> Result<(), CatalogError> {
        self.change(|c| c.delete_pair(name))
    }

    /// Adds a server to a pair, its replica to be kept in `storage_class` (placed now,
    /// before its agent first connects).
    pub fn add_server(
        &self,
        pair: &str,
        id: ServerId,
        storage_class: &str,
    ) -> Result<(), ControlError> {
        self.class_dir(storage_class)?;
        {
            let catalog = self.catalog();
            if !catalog.pairs().iter().any(|p| p.name == pair) {
                return Err(CatalogError::UnknownPair(pair.to_owned()).into());
            }
            if let Some(s) = catalog.servers().iter().find(|s| s.id == id) {
                return Err(CatalogError::ServerExists(id, s.pair.clone()).into());
            }
        }
        self.place(&id, storage_class)?;
        let class = storage_class.to_owned();
        Ok(self.change(|c| {
            c.add_server(pair, id.clone())?;
            c.edit(id.as_str(), |s| s.storage_class = class)
        })?)
    }

    /// Removes a server that neither replicates nor has instances here.
    pub fn remove_server(&self, id: &str) -> Result<(), ControlError> {
        let _op = self.operation(id)?;
        let instances = self.instances(id)?;
        if !instances.is_empty() {
            let ids: Vec<String> = instances.into_iter().map(|i| i.id).collect();
            return Err(ControlError::HasInstances(
                self.catalog().server(id)?.id.clone(),
                ids.join(", "),
            ));
        }
        Ok(self.change(|c| c.remove_server(id))?)
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

    /// Every managed server as the operator sees it.
    pub fn servers(&self) -> Vec<ServerView> {
        let ids: Vec<ServerId> = self
            .catalog()
            .servers()
            .iter()
            .map(|s| s.id.clone())
            .collect();
        let reverse: HashMap<ServerId, ferry_replicator::status::Status> = ids
            .iter()
            .filter_map(|id| Some((id.clone(), self.reverse_view(id)?)))
            .collect();
        let servers = self.catalog().servers().to_vec();
        for s in &servers {
            let known = self
                .live()
                .get(&s.id)
                .is_some_and(|l| l.last_point.is_some());
            if !known && let Ok(points) = self.points(s.id.as_str()) {
                let newest = points.into_iter().rev().find(|p| p.id.is_some());
                self.live().entry(s.id.clone()).or_default().last_point = newest;
            }
        }
        let live = self.live();
        servers
            .into_iter()
            .map(|server| {
                let l = live.get(&server.id);
                ServerView {
                    shown_state: server.shown_state().to_owned(),
                    connected: l.is_some_and(|l| l.conn.is_some()),
                    progress: l.and_then(|l| l.progress).map(|(p, at)| ProgressView {
                        phase: match p.phase {
                            ReplicationPhase::Full => "full",
                            ReplicationPhase::Realtime => "realtime",
                        }
                        .to_owned(),
                        full_done: p.full_done,
                        full_total: p.full_total,
                        backlog_bytes: p.backlog_bytes,
                        rpo_lag_ms: p.rpo_lag_ms,
                        unix_time_ms: at,
                    }),
                    last_point: l.and_then(|l| l.last_point.clone()),
                    reverse_agent: reverse.get(&server.id).cloned(),
                    server,
                }
            })
            .collect()
    }

    pub fn server(&self, id: &str) -> Result<ServerView, CatalogError> {
        self.catalog().server(id)?;
        self.servers()
            .into_iter()
            .find(|s| s.server.id.as_str() == id)
            .ok_or_else(|| CatalogError::UnknownServer(id.to_owned()))
    }

    /// Applies an operator's step (or records why it failed, see [`Control::fail`]).
    pub fn step(&self, id: &str, step: Step) -> Result<State, CatalogError> {
        self.change(|c| c.step(id, step))
    }

    /// Starts replication with `settings`, placing the replica in its storage class.
    pub fn start_replication(
        &self,
        id: &str,
        mut settings: Replication,
    ) -> Result<State, ControlError> {
        let server = self.catalog().server(id)?.clone();
        server.check(Step::ReplicationStart)?;
        // Found by identity and size (the name may have changed), and unused.
        settings.original_disks = settings
            .original_disks
            .iter()
            .map(crate::original_disks::locate)
            .collect::<Result<_, _>>()?;
        self.class_dir(&settings.storage_class)?;
        if settings.storage_class != server.storage_class {
            return Err(ControlError::ClassChange {
                server: server.id.clone(),
                current: server.storage_class.clone(),
                wanted: settings.storage_class.clone(),
            });
        }
        Ok(self.change(|c| {
            c.step_and(id, Step::ReplicationStart, |s| {
                s.replication = Some(settings)
            })
        })?)
    }

    /// Puts the store of `server` in `class`: "standard" is the data directory; another
    /// class's store is `<class dir>/servers/<id>`, reached through a symbolic link at
    /// the usual place. A store that exists stays where it is.
    fn place(&self, id: &ServerId, class: &str) -> Result<(), ControlError> {
        let Some(class_dir) = self.class_dir(class)? else {
            return Ok(());
        };
        let io = |action, path: &Path| {
            let path = path.to_owned();
            move |source| ControlError::Io {
                action,
                path,
                source,
            }
        };
        let link = self.data.server_dir(id);
        let target = class_dir.join("servers").join(id.as_str());
        if std::fs::symlink_metadata(&link).is_ok() {
            if std::fs::read_link(&link).is_ok_and(|t| t == target) {
                return Ok(());
            }
            return Err(ControlError::ClassChange {
                server: id.clone(),
                current: "standard".to_owned(),
                wanted: class.to_owned(),
            });
        }
        ferry_standby::private_files::create_dir_all(&target).map_err(io("create", &target))?;
        let parent = link.parent().expect("a server directory has a parent");
        std::fs::create_dir_all(parent).map_err(io("create", parent))?;
        std::os::unix::fs::symlink(&target, &link).map_err(io("link", &link))?;
        std::fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync", parent))
    }

    /// The directory of a storage class (`None` for "standard", the data directory).
    fn class_dir(&self, class: &str) -> Result<Option<&std::path::PathBuf>, ControlError> {
        if class == "standard" {
            return Ok(None);
        }
        self.storage_classes.get(class).map(Some).ok_or_else(|| {
            let mut known: Vec<String> = self.storage_classes.keys().cloned().collect();
            known.push("standard".to_owned());
            known.sort();
            ControlError::UnknownStorageClass {
                class: class.to_owned(),
                known,
            }
        })
    }

    /// Records that an operation on `id` failed; its state stays.
    pub fn fail(&self, id: &str, reason: String) -> Result<(), CatalogError> {
        self.change(|c| c.fail(id, reason))
    }

    /// The retained points of a managed server.
    pub fn points(&self, id: &str) -> Result<Vec<PointView>, ControlError> {
        let server = self.catalog().server(id)?.id.clone();
        let state = self
            .data
            .read_server(&server)
            .map_err(|e| ControlError::Store(server.clone(), e))?;
        Ok(point_views(&state))
    }

    /// Asks the agent of `id` for a point now and waits for its answer.
    pub fn request_point(&self, id: &str, timeout: Duration) -> Result<PointResult, ControlError> {
        let server = self.catalog().server(id)?.clone();
        let gate = Gate::of(&server);
        if !gate.takes_records() {
            return Err(ControlError::NotReplicating(server.id, server.state));
        }
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        let session = {
            let mut live = self.live();
            let session = live
                .get(&server.id)
                .and_then(|l| l.conn.clone())
                .ok_or_else(|| ControlError::NotConnected(server.id.clone()))?;
            live.entry(server.id.clone())
                .or_default()
                .points
                .insert(request, None);
            session
        };
        let sent = session.request_point(PointRequest { request });
        let conn = session.id();
        let mut live = self.live();
        if sent.is_err() {
            if let Some(l) = live.get_mut(&server.id) {
                l.points.remove(&request);
            }
            return Err(ControlError::NotConnected(server.id.clone()));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let entry = live.get_mut(&server.id).expect("inserted above");
            if let Some(Some(result)) = entry.points.get(&request) {
                let result = result.clone();
                entry.points.remove(&request);
                return match result.error {
                    Some(e) => Err(ControlError::Failed(server.id, e)),
                    None => Ok(result),
                };
            }
            if entry.conn.as_ref().is_none_or(|c| c.id() != conn) {
                entry.points.remove(&request);
                return Err(ControlError::NotConnected(server.id));
            }
            let now = Instant::now();
            if now >= deadline {
                entry.points.remove(&request);
                return Err(ControlError::Timeout(server.id, timeout));
            }
            live = self
                .changed
                .wait_timeout(live, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    // --- instances: drills and failovers --------------------------------------------

    /// Sets the directory post-launch scripts must be in (once, at start; the default is
    /// [`crate::scripts::DEFAULT_SCRIPTS_DIR`]).
    pub fn set_scripts_dir(&self, dir: crate::scripts::ScriptsDir) {
        self.instances.set_scripts_dir(dir);
    }

    /// Sets how the keys are loaded for rebuilding instances (once, at start).
    pub fn set_key_loader(&self, loader: KeyLoader) {
        let _ = self.keys.set(loader);
    }

    /// The recovery key of `server`: the one supplied with the operation (held only for
    /// it, zeroized when dropped), else the standby's `recovery_key_file`.
    pub fn recovery_key(
        &self,
        server: &ServerId,
        supplied: Option<&RecoveryKey>,
    ) -> Result<RecoveryKey, ControlError> {
        if let Some(key) = supplied {
            if &key.server != server {
                return Err(ControlError::Keys(format!(
                    "the recovery key supplied is server {}'s, not {server}'s",
                    key.server
                )));
            }
            return Ok(key.clone());
        }
        let loader = self.keys.get().ok_or_else(|| {
            ControlError::Keys(format!(
                "this standby holds no recovery key: supply server {server}'s with the \
                 operation (--recovery-key), or set recovery_key_file (then this standby \
                 can read the replicas that key opens)"
            ))
        })?;
        loader(server).map_err(ControlError::Keys)
    }

    /// The recovery keys of `server` (see [`Control::recovery_key`]).
    pub fn load_keys(
        &self,
        server: &ServerId,
        supplied: Option<&RecoveryKey>,
    ) -> Result<RecoveryKeys, ControlError> {
        self.recovery_key(server, supplied).map(|k| k.keys())
    }

    /// Every instance of `id`.
    pub fn instances(&self, id: &str) -> Result<Vec<Instance>, ControlError> {
        let server = self.catalog().server(id)?.id.clone();
        Ok(self
            .instances
            .list()?
            .into_iter()
            .filter(|i| i.server == server)
            .collect())
    }

    /// Checks a launch before anything changes: the spec, the point (which must exist;
    /// "latest" only once the disks are consistent, i.e. after the full copy), the keys.
    fn prepare(
        &self,
        server: &ProtectedServer,
        spec: &Spec,
        supplied: Option<&RecoveryKey>,
    ) -> Result<RecoveryKeys, ControlError> {
        if spec.point == "latest" && !matches!(server.state, State::Realtime | State::Interrupted) {
            return Err(ControlError::LatestInconsistent(
                server.id.clone(),
                server.state,
            ));
        }
        self.instances.resolve(&server.id, spec)?;
        self.load_keys(&server.id, supplied)
    }

    /// Brings up a drill of `id` beside its running replication (the state stays).
    /// `supplied`: the recovery key, when the operator sends it with the operation.
    pub fn drill_start(
        &self,
        id: &str,
        spec: Spec,
        supplied: Option<&RecoveryKey>,
    ) -> Result<Instance, ControlError> {
        let _op = self.operation(id)?;
        let server = self.catalog().server(id)?.clone();
        server.check(Step::DrillStart)?;
        let keys = self.prepare(&server, &spec, supplied)?;
        let instance = self
            .instances
            .launch(Kind::Drill, &server.id, spec, &keys, &[])?;
        if !instance.launched() {
            return Err(ControlError::ScriptFailed(Box::new(instance)));
        }
        Ok(instance)
    }

    /// Cleans the drills of `id` (or only `instance`); returns what was removed.
    pub fn drill_clean(
        &self,
        id: &str,
        instance: Option<&str>,
    ) -> Result<Vec<Instance>, ControlError> {
        let _op = self.operation(id)?;
        self.clean_drills(id, instance)
    }

    fn clean_drills(
        &self,
        id: &str,
        instance: Option<&str>,
    ) -> Result<Vec<Instance>, ControlError> {
        let drills: Vec<Instance> = self
            .instances(id)?
            .into_iter()
            .filter(|i| i.kind == Kind::Drill && instance.is_none_or(|want| i.id == want))
            .collect();
        if let Some(want) = instance
            && drills.is_empty()
        {
            return Err(InstanceError::Unknown(want.to_owned()).into());
        }
        drills
            .into_iter()
            .map(|i| Ok(self.instances.clean(&i.id)?))
            .collect()
    }

    /// Fails over: replication stops (durably, the agent's session ends), the point is
    /// brought up as the production instance. The request is checked whole first: a bad
    /// one changes nothing.
    pub fn failover_start(
        &self,
        id: &str,
        spec: Spec,
        supplied: Option<&RecoveryKey>,
    ) -> Result<Instance, ControlError> {
        let _op = self.operation(id)?;
        let server = self.catalog().server(id)?.clone();
        server.check(Step::FailoverStart)?;
        let keys = self.prepare(&server, &spec, supplied)?;
        self.change(|c| c.step(id, Step::FailoverStart))?;
        if let Err(e) = self.wait_disconnected(&server.id) {
            return Err(self.failed(id, e));
        }
        self.bring_up(id, &server.id, spec, &keys)
    }

    /// Replaces the failover instance by one at an earlier point.
    pub fn failover_change_point(
        &self,
        id: &str,
        spec: Spec,
        supplied: Option<&RecoveryKey>,
    ) -> Result<Instance, ControlError> {
        let _op = self.operation(id)?;
        if spec.point == "latest" {
            return Err(ControlError::LatestUsed);
        }
        let current = self.catalog().server(id)?.clone();
        current.check(Step::ChangePoint)?;
        let keys = self.prepare(&current, &spec, supplied)?;
        self.change(|c| c.step(id, Step::ChangePoint))?;
        if let Some(old) = &current.instance {
            match self.instances.clean(old) {
                Ok(_) | Err(InstanceError::Unknown(_)) => {}
                Err(e) => return Err(self.failed(id, e.into())),
            }
        }
        self.change(|c| c.edit(id, |s| s.instance = None))?;
        self.bring_up(id, &current.id, spec, &keys)
    }

    /// Confirms the failover: the instance is production; drills are released.
    pub fn failover_confirm(&self, id: &str) -> Result<State, ControlError> {
        let _op = self.operation(id)?;
        let state = self.change(|c| c.step(id, Step::FailoverConfirm))?;
        if let Err(e) = self.clean_drills(id, None) {
            return Err(self.failed(id, e));
        }
        Ok(state)
    }

    /// Launches the failover instance; one that does not come up is removed and the
    /// failure recorded (the server stays failing-over: change-point retries).
    fn bring_up(
        &self,
        id: &str,
        server: &ServerId,
        spec: Spec,
        keys: &RecoveryKeys,
    ) -> Result<Instance, ControlError> {
        let instance = match self
            .instances
            .launch(Kind::Failover, server, spec, keys, &[])
        {
            Ok(i) if i.launched() => i,
            Ok(i) => {
                if let Err(e) = self.instances.clean(&i.id) {
                    tracing::error!(instance = %i.id, "cannot remove a failed failover instance: {}", ferry_wire::error_chain(&e));
                }
                return Err(self.failed(id, ControlError::ScriptFailed(Box::new(i))));
            }
            Err(e) => return Err(self.failed(id, e.into())),
        };
        let up = instance.id.clone();
        if let Err(e) = self.change(|c| c.step_and(id, Step::InstanceUp, |s| s.instance = Some(up)))
        {
            return Err(self.failed(id, e.into()));
        }
        Ok(instance)
    }

    /// Records `e` as the server's error and returns it.
    fn failed(&self, id: &str, e: ControlError) -> ControlError {
        if let Err(record) = self.fail(id, ferry_wire::error_chain(&e)) {
            tracing::error!(
                server = id,
                "cannot record a failure: {}",
                ferry_wire::error_chain(&record)
            );
        }
        e
    }

    fn wait_disconnected(&self, id: &ServerId) -> Result<(), ControlError> {
        let deadline = Instant::now() + DISCONNECT_WAIT;
        let mut live = self.live();
        while live.get(id).is_some_and(|l| l.conn.is_some()) {
            let now = Instant::now();
            if now >= deadline {
                return Err(ControlError::StillConnected(id.clone(), DISCONNECT_WAIT));
            }
            live = self
                .changed
                .wait_timeout(live, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(())
    }
}

/// The data path's questions and reports (the store's receiver asks them).
impl ControlPlane for Control {
    fn manages(&self, id: &ServerId) -> bool {
        self.gate(id).is_some()
    }

    fn paused(&self, id: &ServerId) -> Option<String> {
        let gate = self.gate(id)?;
        if gate.takes_records() {
            return None;
        }
        Some(match gate.state {
            State::Installing | State::Initialized => format!(
                "replication of server {id} is not started (it is {}): an operator runs \
                 `ferry replication start --server {id}`",
                gate.state
            ),
            State::Interrupted => format!(
                "replication of server {id} was interrupted and auto-restart is off: an \
                 operator runs `ferry replication start --server {id}`"
            ),
            other => format!("server {id} is {other}: this standby takes no records of it"),
        })
    }

    /// After a failover the disks this site knows are what its instances are built from,
    /// so a returning original agent cannot replace them (it registers again with
    /// `register`).
    fn registration_refused(&self, id: &ServerId) -> Option<String> {
        let gate = self.gate(id)?;
        match gate.state {
            State::Installing | State::Initialized => None,
            s if s.replicating() => None,
            _ => self.paused(id),
        }
    }

    fn baseline_disks(&self, id: &ServerId) -> Option<Vec<std::path::PathBuf>> {
        let catalog = self.catalog();
        let r = catalog.server(id.as_str()).ok()?.replication.as_ref()?;
        (!r.original_disks.is_empty())
            .then(|| r.original_disks.iter().map(|d| d.path.clone()).collect())
    }

    fn digest_key(&self, id: &ServerId) -> Result<DigestKey, String> {
        self.load_keys(id, None)
            .map(|k| k.digest)
            .map_err(|e| ferry_wire::error_chain(&e))
    }

    fn policies(&self) -> Vec<(ServerId, Policy)> {
        self.catalog()
            .servers()
            .iter()
            .filter_map(|s| Some((s.id.clone(), s.replication.as_ref()?.policy)))
            .collect()
    }

    fn connected(&self, id: &ServerId, session: Session) {
        self.live().entry(id.clone()).or_default().conn = Some(session);
    }

    /// A replicating server is `interrupted` unless a newer session took over.
    fn disconnected(&self, id: &ServerId, conn: u64) {
        {
            let mut live = self.live();
            let Some(l) = live.get_mut(id) else { return };
            if l.conn.as_ref().is_none_or(|c| c.id() != conn) {
                return;
            }
            l.conn = None;
        }
        self.changed.notify_all();
        if self
            .gate(id)
            .is_some_and(|g| matches!(g.state, State::Starting | State::Full | State::Realtime))
            && let Err(e) = self.change(|c| c.step(id.as_str(), Step::Forward(Phase::Interrupted)))
        {
            tracing::error!(server = %id, "cannot record the interruption: {}", ferry_wire::error_chain(&e));
        }
    }

    /// An `installing` server becomes `initialized`.
    fn registered(&self, id: &ServerId) -> Result<(), String> {
        if self.gate(id).is_some_and(|g| g.state == State::Installing) {
            self.change(|c| c.step(id.as_str(), Step::AgentRegistered))
                .map_err(|e| ferry_wire::error_chain(&e))?;
        }
        Ok(())
    }

    /// Kept for the operator, and it moves the server's phase.
    fn progress(&self, id: &ServerId, p: Progress) {
        self.live().entry(id.clone()).or_default().progress = Some((p, ferry_standby::now_ms()));
        let phase = match p.phase {
            ReplicationPhase::Full => Phase::Full,
            ReplicationPhase::Realtime => Phase::Realtime,
        };
        let want = match phase {
            Phase::Full => State::Full,
            _ => State::Realtime,
        };
        if let Some(g) = self.gate(id)
            && g.state.replicating()
            && g.state != want
            && let Err(e) = self.change(|c| c.step(id.as_str(), Step::Forward(phase)))
        {
            tracing::error!(server = %id, "cannot record progress: {}", ferry_wire::error_chain(&e));
        }
    }

    fn point_stored(&self, id: &ServerId, barrier: &Barrier) {
        self.live().entry(id.clone()).or_default().last_point =
            Some(PointView::of_barrier(barrier));
    }

    fn point_result(&self, id: &ServerId, result: PointResult) {
        if let Some(slot) = self
            .live()
            .get_mut(id)
            .and_then(|l| l.points.get_mut(&result.request))
        {
            *slot = Some(result);
        }
        self.changed.notify_all();
    }
}
