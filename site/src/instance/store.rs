//! Where instances are kept: `DATA/instances/<id>/instance.json`, one JSON object per
//! instance ([`Instance`], ids and seqs as bare numbers), written to a temporary file
//! (0600) and renamed over the old one, so a reader sees the old or the new whole file
//! and a restarted standby still knows every instance. A directory without
//! `instance.json` is not an instance; one whose file does not parse is an error naming
//! the file, never skipped.

use super::{Instance, InstanceError, Instances, io_err};
use ferry_standby::private_files;
use std::path::Path;

impl Instances {
    /// Every instance, oldest first.
    pub fn list(&self) -> Result<Vec<Instance>, InstanceError> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io_err("list", &self.root)(e)),
        };
        for entry in entries {
            let path = entry.map_err(io_err("list", &self.root))?.path();
            if let Some(i) = Self::load(&path)? {
                out.push(i);
            }
        }
        out.sort_by_key(|i| (i.created_unix_ms, i.id.clone()));
        Ok(out)
    }

    pub fn get(&self, id: &str) -> Result<Instance, InstanceError> {
        Self::load(&self.root.join(id))?.ok_or_else(|| InstanceError::Unknown(id.to_owned()))
    }

    fn load(dir: &Path) -> Result<Option<Instance>, InstanceError> {
        let file = dir.join("instance.json");
        match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| InstanceError::Corrupt(file, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("read", &file)(e)),
        }
    }
}

pub(super) fn save(instance: &Instance) -> Result<(), InstanceError> {
    let path = instance.dir.join("instance.json");
    let tmp = instance.dir.join("instance.json.tmp");
    let text = serde_json::to_vec_pretty(instance).expect("an instance serializes");
    private_files::write(&tmp, &text).map_err(io_err("write", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_err("replace", &path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_wire::{DiskId, PointId, Seq};

    #[test]
    fn an_instance_reads_and_writes_the_json_it_always_has() {
        // Ids and seqs are bare numbers in `instance.json` and in the API's answers.
        let golden = r#"{"id":"failover-web-1-5","kind":"failover","server":"web-1","spec":{"point":"7","launcher":"script","script":"/s/up.sh","cpus":1,"memory_mib":512,"network":null,"ip":null},"point":7,"seq":42,"dir":"/d/instances/failover-web-1-5","disks":[{"disk":0,"name":"vda","image":"/d/i/disk-0.img","device":"/dev/loop3"}],"script":null,"vm":null,"created_unix_ms":5,"rebuild_ms":10,"ready_ms":20}"#;
        let read: Instance = serde_json::from_str(golden).expect("the golden instance reads");
        assert_eq!(
            (read.point, read.seq, read.disks[0].disk),
            (Some(PointId::new(7)), Seq::new(42), DiskId::new(0))
        );
        assert_eq!(
            serde_json::to_string(&read).expect("serializes"),
            golden,
            "an instance is written as it was read"
        );
    }
}
