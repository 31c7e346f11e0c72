//! One protected server's state at the standby: its log, its registration (disks and
//! sizes) and its recovery-point catalogue, and the ingest rules every incoming frame
//! must pass before it is stored.
//!
//! Files in the server's directory `DATA/servers/<server>/`:
//! - `registrations.json`: the agent's sealed `RegisterServer`s (host name, disks,
//!   sizes), oldest first, at most [`MAX_REGISTRATIONS`] (the oldest beyond are
//!   forgotten); replaced atomically; at most [`MAX_META_FILE`] bytes. Every barrier names
//!   the registration it was taken under by its seal, so a point is rebuilt with the disks
//!   it had, whatever was registered since. (Version 1 kept one `registration.json`: a
//!   store that has it is refused, see [`OpenError::OldStore`].)
//! - `points.json`: `{"dropped": [point ids]}`, the points retention has dropped, replaced
//!   atomically *before* cleaning may delete their records, so a dropped point never
//!   comes back; at most [`MAX_META_FILE`] bytes.
//! - `log/`: the segments and sidecar indexes ([`crate::log`]).
//!
//! Ingest rules (DESIGN.md I6, I7, I8): a record must be for this server, for a disk of
//! the newest registration and inside it, cover at least one byte, carry an ingest MAC
//! that checks with the server's MAC key (no data or seal key is ever involved), and
//! have the seq right after the log's last one (seq ≤ the last one is a duplicate from a
//! resend and is ignored). A barrier follows the same seq rule, must name this server
//! and a stored registration. A registration must carry this server's MAC. A refused
//! frame changes nothing.

use crate::log::{LogError, OpenMode, OpenReport, ServerLog};
use crate::points::{Catalog, Point};
use crate::storage::{FsDir, LogDir};
use ferry_wire::message::{ErrorCode, RegisterServer};
use ferry_wire::seal::{self, SealError};
use ferry_wire::{DiskId, MacKey, Message, Seq, ServerId};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Largest metadata file read (registrations, catalogue).
pub const MAX_META_FILE: u64 = 4 << 20;

/// Most registrations a server's store remembers.
pub const MAX_REGISTRATIONS: usize = 64;

/// Why a frame was refused at ingest, or could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("record seq {seq} arrived before the server registered its disks")]
    NotRegistered { seq: Seq },
    #[error("record seq {seq} is for server {found}, but this connection is for {expected}")]
    WrongServer {
        seq: Seq,
        found: ServerId,
        expected: ServerId,
    },
    #[error("record seq {seq} is for disk {}, which the server did not register", disk.get())]
    UnknownDisk { seq: Seq, disk: DiskId },
    #[error("record seq {seq} ends at byte {end}, past the end of disk {} ({size} bytes)", disk.get())]
    PastEndOfDisk {
        seq: Seq,
        disk: DiskId,
        end: u64,
        size: u64,
    },
    #[error("record seq {seq} covers no bytes")]
    EmptyRecord { seq: Seq },
    #[error("record or barrier seq {seq} fails its check (wrong MAC key, or altered in transit)")]
    BadRecord {
        seq: Seq,
        #[source]
        source: SealError,
    },
    #[error("seq {got} is out of order: the log's last seq is {last}, so {last}+1 was expected")]
    OutOfOrder { last: Seq, got: Seq },
    #[error("a {0:?} frame cannot be stored")]
    NotStorable(ferry_wire::frame::FrameType),
    #[error("registration lists disk {} twice", disk.get())]
    DuplicateDisk { disk: DiskId },
    #[error("barrier seq {seq} is for server {found}, but this connection is for {expected}")]
    BarrierOfAnotherServer {
        seq: Seq,
        found: ServerId,
        expected: ServerId,
    },
    #[error("barrier seq {seq} names a registration this store does not hold")]
    UnknownRegistration { seq: Seq },
    #[error("the registration fails its check (not this server's MAC key, or altered)")]
    BadRegistration(#[source] SealError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("cannot write {}", path.display())]
    Meta {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl IngestError {
    /// The protocol error code the agent receives.
    pub fn code(&self) -> ErrorCode {
        match self {
            IngestError::Log(e) if e.is_retryable() => ErrorCode::StorageFull,
            IngestError::Meta { source, .. } if crate::storage::is_out_of_space(source) => {
                ErrorCode::StorageFull
            }
            IngestError::Log(_) | IngestError::Meta { .. } => ErrorCode::Internal,
            _ => ErrorCode::Malformed,
        }
    }

    /// Whether the agent may retry the same frame later (a full disk); the rest is permanent.
    pub fn is_retryable(&self) -> bool {
        self.code() == ErrorCode::StorageFull
    }

    /// Whether the log failed an fsync: its in-memory state must be discarded (cut back
    /// to what is durable) and the log reopened before anything more is stored.
    pub fn needs_reopen(&self) -> bool {
        matches!(
            self,
            IngestError::Log(LogError::FsyncFailed { .. } | LogError::Discarded)
        )
    }
}

/// What happened to an accepted frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingested {
    Stored(Seq),
    /// At or below the log's last seq: a resend after a reconnect; ignored.
    Duplicate(Seq),
}

/// Why a server's state could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not valid: {reason}", path.display())]
    BadMeta { path: PathBuf, reason: String },
    #[error(
        "another ferry process (a running standby?) holds the lock {}; stop it first",
        path.display()
    )]
    Locked { path: PathBuf },
    #[error(
        "{} was written by ferry 0.1 (one key for every server), which this version does \
         not read: its records cannot be checked end to end. Keep it for that version's \
         `ferry rebuild`, move it aside, and let the agent copy the server again",
        path.display()
    )]
    OldStore { path: PathBuf },
    #[error(transparent)]
    Log(#[from] LogError),
}

/// A server's log, registration and catalogue.
#[derive(Debug)]
pub struct ServerState {
    id: ServerId,
    meta: Arc<dyn LogDir>,
    pub log: ServerLog,
    /// Sealed registrations, oldest first.
    registrations: Vec<RegisterServer>,
    catalog: Catalog,
}

fn read_json<T: serde::de::DeserializeOwned>(
    dir: &dyn LogDir,
    name: &str,
) -> Result<Option<T>, OpenError> {
    let path = dir.describe(name);
    match dir.read_small(name, MAX_META_FILE) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| OpenError::BadMeta {
                path,
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(OpenError::Io { path, source }),
    }
}

impl ServerState {
    /// Opens the state of `id` under `server_dir` (created if read-write and missing).
    pub fn open(
        id: ServerId,
        server_dir: &Path,
        segment_size: u64,
        mode: OpenMode,
    ) -> Result<(Self, OpenReport), OpenError> {
        let create = mode == OpenMode::ReadWrite;
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| OpenError::Io { path, source }
        };
        let meta: Arc<dyn LogDir> =
            Arc::new(FsDir::open(server_dir, create).map_err(io(server_dir))?);
        let log_path = server_dir.join("log");
        let log_dir: Arc<dyn LogDir> =
            Arc::new(FsDir::open(&log_path, create).map_err(io(&log_path))?);
        Self::open_in(id, meta, log_dir, segment_size, mode)
    }

    /// Opens with explicit storage (tests inject faulty directories here).
    pub fn open_in(
        id: ServerId,
        meta: Arc<dyn LogDir>,
        log_dir: Arc<dyn LogDir>,
        segment_size: u64,
        mode: OpenMode,
    ) -> Result<(Self, OpenReport), OpenError> {
        let names = meta.list().map_err(|source| OpenError::Io {
            path: meta.describe(""),
            source,
        })?;
        if names.iter().any(|n| n == "registration.json") {
            return Err(OpenError::OldStore {
                path: meta.describe("registration.json"),
            });
        }
        let registrations = read_json::<Vec<RegisterServer>>(meta.as_ref(), "registrations.json")?
            .unwrap_or_default();
        // The log first, then the catalogue: retention saves dropped points before
        // cleaning deletes anything, so a catalogue read after the log is never older
        // than the records the log still holds (a rebuild beside a live standby cannot
        // resolve a point whose records were just cleaned away).
        let (log, report) = ServerLog::open(log_dir, segment_size, mode)?;
        let catalog = read_json::<Catalog>(meta.as_ref(), "points.json")?.unwrap_or_default();
        Ok((
            Self {
                id,
                meta,
                log,
                registrations,
                catalog,
            },
            report,
        ))
    }

    pub fn id(&self) -> &ServerId {
        &self.id
    }

    /// The server's disks as last registered.
    pub fn registration(&self) -> Option<&RegisterServer> {
        self.registrations.last()
    }

    /// The registration whose seal is `seal` (the one a barrier names).
    pub fn registration_sealed(&self, seal: &[u8; 32]) -> Option<&RegisterServer> {
        self.registrations.iter().rev().find(|r| &r.seal == seal)
    }

    /// Records the server's disks, once its MAC checks: the newest registration from now
    /// on (an earlier one with the same seal moves to the end).
    pub fn register(&mut self, reg: RegisterServer, mac_key: &MacKey) -> Result<(), IngestError> {
        seal::verify_registration(mac_key, &self.id, &reg).map_err(IngestError::BadRegistration)?;
        let mut seen = std::collections::HashSet::new();
        if let Some(d) = reg.disks.iter().find(|d| !seen.insert(d.disk)) {
            return Err(IngestError::DuplicateDisk { disk: d.disk });
        }
        if self.registration() == Some(&reg) {
            return Ok(());
        }
        let mut next: Vec<RegisterServer> = self
            .registrations
            .iter()
            .filter(|r| r.seal != reg.seal)
            .cloned()
            .collect();
        next.push(reg);
        let excess = next.len().saturating_sub(MAX_REGISTRATIONS);
        next.drain(..excess);
        self.write_json("registrations.json", &next)?;
        self.registrations = next;
        Ok(())
    }

    fn write_json<T: serde::Serialize>(&self, name: &str, value: &T) -> Result<(), IngestError> {
        let bytes = serde_json::to_vec_pretty(value).expect("metadata serializes");
        self.meta
            .replace(name, &bytes)
            .map_err(|source| IngestError::Meta {
                path: self.meta.describe(name),
                source,
            })
    }

    /// Checks a decoded frame against the ingest rules and appends it (raw bytes as
    /// received). Nothing is stored when it is refused.
    pub fn ingest(
        &mut self,
        frame: &[u8],
        message: &Message,
        mac_key: &MacKey,
    ) -> Result<Ingested, IngestError> {
        let seq = match message {
            Message::Record(record) => {
                let h = &record.header;
                if h.seq <= self.log.last_seq() {
                    return Ok(Ingested::Duplicate(h.seq));
                }
                if h.server != self.id {
                    return Err(IngestError::WrongServer {
                        seq: h.seq,
                        found: h.server.clone(),
                        expected: self.id.clone(),
                    });
                }
                let reg = self
                    .registration()
                    .ok_or(IngestError::NotRegistered { seq: h.seq })?;
                let disk = reg.disks.iter().find(|d| d.disk == h.disk).ok_or(
                    IngestError::UnknownDisk {
                        seq: h.seq,
                        disk: h.disk,
                    },
                )?;
                if h.length.get() == 0 {
                    return Err(IngestError::EmptyRecord { seq: h.seq });
                }
                let end = h.offset.get().saturating_add(h.length.get());
                if end > disk.size.get() {
                    return Err(IngestError::PastEndOfDisk {
                        seq: h.seq,
                        disk: h.disk,
                        end,
                        size: disk.size.get(),
                    });
                }
                seal::verify(mac_key, record)
                    .map_err(|source| IngestError::BadRecord { seq: h.seq, source })?;
                h.seq
            }
            Message::Barrier(b) => {
                if b.seq <= self.log.last_seq() {
                    return Ok(Ingested::Duplicate(b.seq));
                }
                if b.server != self.id {
                    return Err(IngestError::BarrierOfAnotherServer {
                        seq: b.seq,
                        found: b.server.clone(),
                        expected: self.id.clone(),
                    });
                }
                seal::verify_barrier(mac_key, b)
                    .map_err(|source| IngestError::BadRecord { seq: b.seq, source })?;
                if self.registration_sealed(&b.registration).is_none() {
                    return Err(IngestError::UnknownRegistration { seq: b.seq });
                }
                b.seq
            }
            other => return Err(IngestError::NotStorable(other.frame_type())),
        };
        let last = self.log.last_seq();
        if Some(seq) != last.checked_next() {
            return Err(IngestError::OutOfOrder { last, got: seq });
        }
        self.log.append(frame, message)?;
        Ok(Ingested::Stored(seq))
    }

    /// Retained recovery points (barriers not dropped by retention), oldest first.
    pub fn points(&self) -> Vec<Point> {
        self.catalog.points(self.log.entries())
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Drops the points with these barrier seqs for good (persisted before anything is
    /// cleaned).
    pub fn drop_points(&mut self, barrier_seqs: &[Seq]) -> Result<(), IngestError> {
        if barrier_seqs.is_empty() {
            return Ok(());
        }
        let mut next = self.catalog.clone();
        next.drop_points(barrier_seqs);
        self.write_json("points.json", &next)?;
        self.catalog = next;
        Ok(())
    }
}

/// The standby's data directory: `DATA/servers/<server>/…` and a lock file.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

/// Holds the data directory's exclusive lock while alive.
#[derive(Debug)]
pub struct DataDirLock {
    _file: std::fs::File,
}

impl DataDir {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn server_dir(&self, id: &ServerId) -> PathBuf {
        self.root.join("servers").join(id.as_str())
    }

    /// Takes the directory's exclusive lock: one standby (or offline maintenance command)
    /// at a time may change it. Readers (rebuild, point list) do not take it.
    pub fn lock(&self) -> Result<DataDirLock, OpenError> {
        let io = |source| OpenError::Io {
            path: self.root.clone(),
            source,
        };
        // The standby's own directory: 0700 (tightened if it exists), so nothing under
        // it — instances' images among them — is reachable by other users.
        crate::private_files::ensure_dir(&self.root).map_err(io)?;
        let path = self.root.join("lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => Ok(DataDirLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(OpenError::Locked { path }),
            Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
        }
    }

    /// Opens one server's state.
    pub fn open_server(
        &self,
        id: &ServerId,
        segment_size: u64,
        mode: OpenMode,
    ) -> Result<(ServerState, OpenReport), OpenError> {
        let dir = self.server_dir(id);
        if mode == OpenMode::ReadOnly && !dir.is_dir() {
            return Err(OpenError::Io {
                path: dir,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("the standby holds no data for server {id}"),
                ),
            });
        }
        ServerState::open(id.clone(), &dir, segment_size, mode)
    }

    /// Opens the store of `id` read-only, beside a live standby (a rebuild, a point
    /// list, an instance): it never appends, so no segment size applies.
    pub fn read_server(&self, id: &ServerId) -> Result<ServerState, OpenError> {
        self.open_server(id, crate::log::DEFAULT_SEGMENT_SIZE, OpenMode::ReadOnly)
            .map(|(state, _)| state)
    }
}
