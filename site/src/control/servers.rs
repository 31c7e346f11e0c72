//! The catalogue's operations: site pairs, servers (added to a pair, removed), the
//! lifecycle's steps, replication start, and where each server's replica is placed
//! (its storage class).

use super::{Control, ControlError};
use crate::catalog::{CatalogError, Pair, Replication};
use crate::lifecycle::{State, Step};
use ferry_wire::ServerId;
use std::path::Path;

impl Control {
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
            .map(|d| crate::original_disks::locate(d, self.volumes()))
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
}
