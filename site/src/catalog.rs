//! The control catalogue of a standby site: the site pairs and the servers they protect,
//! each with its lifecycle state ([`crate::lifecycle`]). It is persisted as one JSON file
//! (`control.json` in the data directory), replaced atomically — written beside it,
//! fsynced, renamed, the directory fsynced — so that it survives a crash of the standby at
//! any moment, and reloaded on start.
//!
//! Every change is checked first and made whole or not at all (DESIGN.md I7): a bad name,
//! an unknown pair or server, a pair still in use or a step the state does not allow gets
//! an error naming the problem and leaves the catalogue — in memory and on disk — as it
//! was.

use crate::api::ErrorCode;
use crate::lifecycle::{NotAllowed, State, Step};
use ferry_standby::retention::Policy;
use ferry_wire::ids::{NameError, validate_name};
use ferry_wire::{PointId, ServerId};
use serde::{Deserialize, Serialize};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// How far apart the two sites of a pair are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PairKind {
    RegionToRegion,
    ZoneToZone,
}

/// A named pair of sites: servers at the primary are protected into the secondary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pair {
    pub name: String,
    pub kind: PairKind,
    pub primary: String,
    pub secondary: String,
}

/// A server a pair protects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtectedServer {
    pub id: ServerId,
    pub pair: String,
    pub state: State,
    /// Why the last operation or event on the server failed, until an operation succeeds.
    pub error: Option<String>,
    /// How its replication runs, from the last `replication start`.
    #[serde(default)]
    pub replication: Option<Replication>,
    /// Where its replica is kept: a storage class of the standby ("standard": the data
    /// directory).
    #[serde(default = "standard")]
    pub storage_class: String,
    /// The instance that runs the server at this site after a failover.
    #[serde(default)]
    pub instance: Option<String>,
    /// Reverse replication of the failed-over instance back to the original site.
    #[serde(default)]
    pub reverse: Option<Reverse>,
    /// When its agent first reported real time (Unix ms): its first full copy was then
    /// acknowledged whole. Until then nothing of the server can be recovered ("not
    /// protected yet"), whatever its RPO lag says. 0 for a server that was past its first
    /// full copy when the catalogue was upgraded from version 1.
    pub copied_unix_ms: Option<u64>,
}

fn standard() -> String {
    "standard".to_owned()
}

/// Reverse replication: an agent at this site protects the failover instance's devices
/// and ships them to the standby of the pair's primary site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reverse {
    /// The site replicated back to (the pair's primary).
    pub site: String,
    /// Onto the original machine's disks (only differences travel).
    pub original_machine: bool,
    /// The reverse agent's process, config and state.
    pub agent_pid: Option<u32>,
    pub config: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub pin_dir: Option<PathBuf>,
    /// The last point of the reverse replica, taken for the failback.
    pub final_point: Option<PointId>,
    /// The instance the peer restored at failback (a retry does not restore again).
    #[serde(default)]
    pub restored: Option<crate::instance::Instance>,
}

/// How a server's replication runs (`replication start`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replication {
    /// Which points are kept (retention thins scheduled points to one per interval).
    pub policy: Policy,
    /// Where the replica is stored: a storage class of the standby's config.
    pub storage_class: String,
    /// The address agents send to (the standby's replication network), for the record.
    pub replication_network: Option<String>,
    /// The network drill and failover instances are attached to.
    pub recovery_network: Option<String>,
    /// Whether replication resumes by itself after an interruption; when off, an
    /// interrupted server waits for `replication start`.
    pub auto_restart: bool,
    /// The disks this site will restore the server onto, which already hold most of
    /// its data (reverse replication onto the original machine): compared by digest so
    /// only what differs travels, and written over at failback. Each is found by the
    /// identity and size the server registered, and checked unused, when replication
    /// starts, and checked again before the restore ([`crate::original_disks`]).
    #[serde(default)]
    pub original_disks: Vec<crate::original_disks::OriginalDisk>,
}

impl ProtectedServer {
    /// The state `step` would lead to, or why the server's state does not allow it.
    pub fn check(&self, step: Step) -> Result<State, CatalogError> {
        self.state
            .apply(step)
            .map_err(|source| CatalogError::NotAllowed {
                server: self.id.clone(),
                source,
            })
    }

    /// The state as the operator sees it: `error` while a failure is unresolved.
    pub fn shown_state(&self) -> &'static str {
        if self.error.is_some() {
            "error"
        } else {
            self.state.name()
        }
    }
}

/// Why a catalogue change was refused.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("pair name refused: {0}")]
    BadName(#[from] NameError),
    #[error("site name {0:?} is empty or longer than 60 characters")]
    BadSite(String),
    #[error("a pair named {0:?} already exists")]
    PairExists(String),
    #[error("no pair named {0:?}")]
    UnknownPair(String),
    #[error("pair {pair:?} still protects {}: remove them first", servers.join(", "))]
    PairInUse { pair: String, servers: Vec<String> },
    #[error("server {0} is already protected (by pair {1:?})")]
    ServerExists(ServerId, String),
    #[error("no protected server named {0}")]
    UnknownServer(String),
    #[error(
        "server {0} cannot be removed while it is {1}: stop its replication (or finish its \
         failover) first"
    )]
    ServerBusy(ServerId, State),
    #[error("server {server}: {source}")]
    NotAllowed {
        server: ServerId,
        #[source]
        source: NotAllowed,
    },
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{} is a control catalogue of version {found}; this ferry reads version {VERSION}",
        path.display()
    )]
    Version { path: PathBuf, found: u32 },
    #[error("{} is not a valid control catalogue", path.display())]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl CatalogError {
    /// The API's code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            CatalogError::BadName(_) | CatalogError::BadSite(_) => ErrorCode::BadRequest,
            CatalogError::UnknownPair(_) | CatalogError::UnknownServer(_) => ErrorCode::NotFound,
            CatalogError::PairExists(_) => ErrorCode::PairExists,
            CatalogError::ServerExists(..) => ErrorCode::ServerExists,
            CatalogError::PairInUse { .. }
            | CatalogError::ServerBusy(..)
            | CatalogError::NotAllowed { .. } => ErrorCode::NotAllowed,
            CatalogError::Io { .. }
            | CatalogError::Version { .. }
            | CatalogError::Corrupt { .. } => ErrorCode::Internal,
        }
    }
}

/// The pairs and servers, and where they are kept.
#[derive(Debug)]
pub struct Catalog {
    path: PathBuf,
    pairs: Vec<Pair>,
    servers: Vec<ProtectedServer>,
}

/// The file: servers are read as JSON values first, so that an older version's can be
/// completed before they are typed.
#[derive(Serialize, Deserialize)]
struct OnDisk<S> {
    version: u32,
    pairs: Vec<Pair>,
    servers: Vec<S>,
}

/// Version 2 added `copied_unix_ms`; version 1 is read (see [`upgrade_v1`]).
const VERSION: u32 = 2;

/// A version-1 server record, completed: a server whose state lies past its first full
/// copy (real time, or any failover, reverse or failback state) was copied; one that has
/// not reached real time yet (or is `interrupted`, which may be before it) is taken as
/// not copied until its agent reports real time again.
fn upgrade_v1(server: &mut serde_json::Value) {
    let past_first_copy = !matches!(
        server.get("state").and_then(|s| s.as_str()),
        Some("installing" | "initialized" | "starting" | "full" | "interrupted")
    );
    if let Some(fields) = server.as_object_mut() {
        fields.insert(
            "copied_unix_ms".to_owned(),
            past_first_copy.then_some(0u64).into(),
        );
    }
}

impl Catalog {
    /// Loads the catalogue from `path`, or starts an empty one if there is none yet.
    pub fn open(path: &Path) -> Result<Self, CatalogError> {
        let (pairs, servers) = match std::fs::read(path) {
            Ok(bytes) => {
                let corrupt = |source| CatalogError::Corrupt {
                    path: path.to_owned(),
                    source,
                };
                // The version first, alone: a newer file is refused by its version, not
                // as damaged because a field of it is not known here.
                #[derive(Deserialize)]
                struct Version {
                    version: u32,
                }
                let Version { version } = serde_json::from_slice(&bytes).map_err(corrupt)?;
                if version != VERSION && version != 1 {
                    return Err(CatalogError::Version {
                        path: path.to_owned(),
                        found: version,
                    });
                }
                let d: OnDisk<serde_json::Value> =
                    serde_json::from_slice(&bytes).map_err(corrupt)?;
                let mut servers = d.servers;
                if version == 1 {
                    servers.iter_mut().for_each(upgrade_v1);
                }
                let servers = servers
                    .into_iter()
                    .map(serde_json::from_value)
                    .collect::<Result<_, _>>()
                    .map_err(corrupt)?;
                (d.pairs, servers)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => (Vec::new(), Vec::new()),
            Err(source) => {
                return Err(CatalogError::Io {
                    action: "read",
                    path: path.to_owned(),
                    source,
                });
            }
        };
        Ok(Self {
            path: path.to_owned(),
            pairs,
            servers,
        })
    }

    pub fn pairs(&self) -> &[Pair] {
        &self.pairs
    }

    pub fn servers(&self) -> &[ProtectedServer] {
        &self.servers
    }

    pub fn server(&self, id: &str) -> Result<&ProtectedServer, CatalogError> {
        self.servers
            .iter()
            .find(|s| s.id.as_str() == id)
            .ok_or_else(|| CatalogError::UnknownServer(id.to_owned()))
    }

    /// Creates a pair.
    pub fn create_pair(&mut self, pair: Pair) -> Result<(), CatalogError> {
        validate_name(&pair.name)?;
        for site in [&pair.primary, &pair.secondary] {
            if site.is_empty() || site.chars().count() > 60 || site.chars().any(char::is_control) {
                return Err(CatalogError::BadSite(site.clone()));
            }
        }
        if self.pairs.iter().any(|p| p.name == pair.name) {
            return Err(CatalogError::PairExists(pair.name));
        }
        self.change(|c| c.pairs.push(pair))
    }

    /// Deletes a pair that protects no server.
    pub fn delete_pair(&mut self, name: &str) -> Result<(), CatalogError> {
        self.pair(name)?;
        let servers: Vec<String> = self
            .servers
            .iter()
            .filter(|s| s.pair == name)
            .map(|s| s.id.to_string())
            .collect();
        if !servers.is_empty() {
            return Err(CatalogError::PairInUse {
                pair: name.to_owned(),
                servers,
            });
        }
        self.change(|c| c.pairs.retain(|p| p.name != name))
    }

    /// Adds a server to a pair: `installing` until its agent registers.
    pub fn add_server(&mut self, pair: &str, id: ServerId) -> Result<(), CatalogError> {
        self.pair(pair)?;
        if let Some(s) = self.servers.iter().find(|s| s.id == id) {
            return Err(CatalogError::ServerExists(id, s.pair.clone()));
        }
        self.change(|c| {
            c.servers.push(ProtectedServer {
                id,
                pair: pair.to_owned(),
                state: State::Installing,
                error: None,
                replication: None,
                storage_class: standard(),
                instance: None,
                reverse: None,
                copied_unix_ms: None,
            });
        })
    }

    /// Removes a server that neither replicates nor runs at this site.
    pub fn remove_server(&mut self, id: &str) -> Result<(), CatalogError> {
        let s = self.server(id)?;
        if !matches!(
            s.state,
            State::Installing | State::Initialized | State::FailedBack
        ) {
            return Err(CatalogError::ServerBusy(s.id.clone(), s.state));
        }
        self.change(|c| c.servers.retain(|s| s.id.as_str() != id))
    }

    /// Applies a lifecycle step to a server and returns its new state; a step that
    /// succeeds clears the server's error.
    pub fn step(&mut self, id: &str, step: Step) -> Result<State, CatalogError> {
        self.step_and(id, step, |_| {})
    }

    /// Applies a step and, in the same durable change, `edit` (e.g. the settings the
    /// step takes).
    pub fn step_and(
        &mut self,
        id: &str,
        step: Step,
        edit: impl FnOnce(&mut ProtectedServer),
    ) -> Result<State, CatalogError> {
        let s = self.server(id)?;
        let next = s.check(step)?;
        let mut edited = s.clone();
        edited.state = next;
        edited.error = None;
        edit(&mut edited);
        if edited == *s {
            return Ok(next);
        }
        self.edit(id, |s| *s = edited)?;
        Ok(next)
    }

    /// Records why an operation or event failed; the server keeps its state.
    pub fn fail(&mut self, id: &str, reason: String) -> Result<(), CatalogError> {
        self.server(id)?;
        self.edit(id, |s| s.error = Some(reason))
    }

    /// Changes a server's record (not its state: that takes a [`Step`]).
    pub fn edit(
        &mut self,
        id: &str,
        f: impl FnOnce(&mut ProtectedServer),
    ) -> Result<(), CatalogError> {
        self.server(id)?;
        self.change(|c| {
            f(c.servers
                .iter_mut()
                .find(|s| s.id.as_str() == id)
                .expect("checked above"));
        })
    }

    fn pair(&self, name: &str) -> Result<&Pair, CatalogError> {
        self.pairs
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| CatalogError::UnknownPair(name.to_owned()))
    }

    /// Makes a change on a copy, persists the copy, and only then keeps it.
    fn change(&mut self, f: impl FnOnce(&mut Self)) -> Result<(), CatalogError> {
        let mut next = Self {
            path: self.path.clone(),
            pairs: self.pairs.clone(),
            servers: self.servers.clone(),
        };
        f(&mut next);
        let replaced = next.save();
        // Once the new file is in place it is what a restart reads: keep it in memory
        // too, even if making the rename durable failed (that is still reported).
        if matches!(
            replaced,
            Ok(())
                | Err(CatalogError::Io {
                    action: "fsync the directory of",
                    ..
                })
        ) {
            *self = next;
        }
        replaced
    }

    fn save(&self) -> Result<(), CatalogError> {
        let io_err = |action, source| CatalogError::Io {
            action,
            path: self.path.clone(),
            source,
        };
        let text = serde_json::to_vec_pretty(&OnDisk {
            version: VERSION,
            pairs: self.pairs.clone(),
            servers: self.servers.clone(),
        })
        .expect("the catalogue serialises");
        let tmp = self.path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp).map_err(|e| io_err("create", e))?;
        f.write_all(&text).map_err(|e| io_err("write", e))?;
        f.sync_all().map_err(|e| io_err("fsync", e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| io_err("replace", e))?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err("fsync the directory of", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> Pair {
        Pair {
            name: name.into(),
            kind: PairKind::ZoneToZone,
            primary: "zone-a".into(),
            secondary: "zone-b".into(),
        }
    }

    fn id(name: &str) -> ServerId {
        ServerId::new(name).unwrap()
    }

    #[test]
    fn pairs_and_servers_persist_and_refusals_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.json");
        let mut c = Catalog::open(&path).unwrap();
        c.create_pair(pair("prod.eu-1")).unwrap();
        c.add_server("prod.eu-1", id("web-1")).unwrap();
        c.step("web-1", Step::AgentRegistered).unwrap();
        c.step("web-1", Step::ReplicationStart).unwrap();
        let on_disk = std::fs::read(&path).unwrap();

        for (what, err) in [
            ("bad name", c.create_pair(pair("1st")).unwrap_err()),
            ("bad name", c.create_pair(pair("a b")).unwrap_err()),
            ("duplicate", c.create_pair(pair("prod.eu-1")).unwrap_err()),
            ("in use", c.delete_pair("prod.eu-1").unwrap_err()),
            (
                "unknown pair",
                c.add_server("nope", id("db-1")).unwrap_err(),
            ),
            (
                "duplicate server",
                c.add_server("prod.eu-1", id("web-1")).unwrap_err(),
            ),
            ("busy", c.remove_server("web-1").unwrap_err()),
            (
                "unknown server",
                c.step("db-9", Step::ReplicationStart).unwrap_err(),
            ),
            ("not allowed", c.step("web-1", Step::Register).unwrap_err()),
        ] {
            let text = ferry_wire::error_chain(&err);
            assert!(!text.is_empty(), "{what}");
            match what {
                "in use" => assert!(text.contains("web-1"), "{text}"),
                "not allowed" => assert!(
                    text.contains("web-1")
                        && text.contains("starting")
                        && text.contains("replication stop"),
                    "{text}"
                ),
                "busy" => assert!(text.contains("starting"), "{text}"),
                _ => {}
            }
        }
        assert_eq!(
            std::fs::read(&path).unwrap(),
            on_disk,
            "refusals wrote nothing"
        );

        let again = Catalog::open(&path).unwrap();
        assert_eq!(again.pairs(), c.pairs());
        assert_eq!(again.servers(), c.servers());
        assert_eq!(again.server("web-1").unwrap().state, State::Starting);

        c.fail("web-1", "disk gone".into()).unwrap();
        let failed = Catalog::open(&path).unwrap();
        let s = failed.server("web-1").unwrap();
        assert_eq!(
            (s.shown_state(), s.state, s.error.as_deref()),
            ("error", State::Starting, Some("disk gone")),
            "an error is shown over the state it happened in, and persists"
        );
        assert!(c.step("web-1", Step::Register).is_err());
        assert_eq!(
            c.server("web-1").unwrap().error.as_deref(),
            Some("disk gone")
        );
        c.step("web-1", Step::ReplicationStop).unwrap();
        let s = c.server("web-1").unwrap();
        assert_eq!((s.shown_state(), s.error.as_deref()), ("initialized", None));
        c.remove_server("web-1").unwrap();
        c.delete_pair("prod.eu-1").unwrap();
        assert!(Catalog::open(&path).unwrap().pairs().is_empty());
    }

    #[test]
    fn a_damaged_catalogue_is_an_error_naming_the_file_not_an_empty_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.json");
        std::fs::write(&path, b"{\"version\": 1, \"pairs\": [").unwrap();
        let err = Catalog::open(&path).unwrap_err();
        assert!(err.to_string().contains("control.json"), "{err}");
    }

    #[test]
    fn a_reverse_reads_and_writes_the_json_it_always_has() {
        let golden = r#"{"site":"zone-a","original_machine":true,"agent_pid":12,"config":null,"state_dir":null,"pin_dir":null,"final_point":1795533480000,"restored":null}"#;
        let read: Reverse = serde_json::from_str(golden).expect("the golden reverse reads");
        assert_eq!(read.final_point, Some(PointId::new(1795533480000)));
        assert_eq!(
            serde_json::to_string(&read).expect("serializes"),
            golden,
            "a reverse is written as it was read"
        );
    }

    /// A version-1 catalogue as ferry wrote it before `copied_unix_ms`.
    const GOLDEN_V1: &str = r#"{"version":1,"pairs":[{"name":"prod","kind":"zone-to-zone","primary":"zone-a","secondary":"zone-b"}],"servers":[
        {"id":"web-1","pair":"prod","state":"realtime","error":null,"replication":null,"storage_class":"standard","instance":null,"reverse":null},
        {"id":"web-2","pair":"prod","state":"full","error":null,"replication":null,"storage_class":"standard","instance":null,"reverse":null},
        {"id":"web-3","pair":"prod","state":"failed-over","error":null,"replication":null,"storage_class":"standard","instance":"i-1","reverse":null},
        {"id":"web-4","pair":"prod","state":"interrupted","error":null,"replication":null,"storage_class":"standard","instance":null,"reverse":null}]}"#;

    #[test]
    fn a_version_1_catalogue_is_read_with_its_first_copies_inferred_and_a_newer_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.json");
        std::fs::write(&path, GOLDEN_V1).unwrap();
        let c = Catalog::open(&path).expect("version 1 reads");
        let copied: Vec<(&str, Option<u64>)> = c
            .servers()
            .iter()
            .map(|s| (s.id.as_str(), s.copied_unix_ms))
            .collect();
        assert_eq!(
            copied,
            [
                ("web-1", Some(0)),
                ("web-2", None),
                ("web-3", Some(0)),
                ("web-4", None)
            ]
        );
        assert_eq!(c.server("web-3").unwrap().instance.as_deref(), Some("i-1"));
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            GOLDEN_V1,
            "reading wrote nothing"
        );

        std::fs::write(
            &path,
            GOLDEN_V1.replacen("\"version\":1", "\"version\":3", 1),
        )
        .unwrap();
        let err = Catalog::open(&path).unwrap_err().to_string();
        assert!(
            err.contains("version 3") && err.contains("reads version 2"),
            "{err}"
        );
    }
}
