//! The tracker's state file, written on clean shutdown and read (then removed, once
//! tracking runs) on start,
//! so that a restart loses nothing and a crash is detected (no file → a gap).
//!
//! ```text
//!  0   8   magic "FRYTRK02" (01: before `skipped_seen`)
//!  8   4   body length n (u32 LE, at most MAX_STATE_BYTES)
//!  12  n   body: bincode (standard) of `Saved`
//!  12+n 4  crc32 of bytes 0..12+n
//! ```
//!
//! Written to a temporary file, fsynced, renamed into place, directory fsynced.

use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"FRYTRK02"; // 02: skipped_seen
/// Largest state file read (bounds the allocation for the body).
pub const MAX_STATE_BYTES: u32 = 1 << 30;

/// One disk's saved state: byte ranges as (start, end).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedDisk {
    /// Kernel dev_t and size: a different disk at the same index is not restored.
    pub dev: u32,
    pub size: u64,
    pub dirty: Vec<(u64, u64)>,
    pub suspect: Vec<(u64, u64)>,
    /// Ranges in flight at shutdown: restored as dirty and unresolved (swept later).
    pub in_flight: Vec<(u64, u64)>,
    /// Fallback counters as last seen: (chunk index, value) for non-zero ones.
    pub fallback_seen: Vec<(u32, u64)>,
    /// A gap not yet caught up, with its reason.
    pub gap: Option<String>,
}

/// Everything saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    /// The pinned BPF instance this state belongs to.
    pub epoch: u64,
    pub drops_seen: u64,
    /// The programs' skipped submission runs already turned into gaps.
    pub skipped_seen: u64,
    pub disks: Vec<SavedDisk>,
}

/// Why a state file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("{path}: {what}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a ferry tracker state file (bad magic, length or crc32)")]
    Corrupt { path: PathBuf },
    #[error("{path}: state does not decode")]
    Decode {
        path: PathBuf,
        #[source]
        source: bincode::error::DecodeError,
    },
}

fn io<'a>(path: &'a Path, what: &'static str) -> impl Fn(std::io::Error) -> PersistError + 'a {
    move |source| PersistError::Io {
        path: path.to_owned(),
        what,
        source,
    }
}

/// Writes `saved` to `path` atomically.
pub fn save(path: &Path, saved: &Saved) -> Result<(), PersistError> {
    let body = bincode::serde::encode_to_vec(saved, bincode::config::standard()).map_err(|e| {
        PersistError::Io {
            path: path.to_owned(),
            what: "cannot encode",
            source: std::io::Error::other(e),
        }
    })?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&n| n <= MAX_STATE_BYTES)
        .ok_or_else(|| PersistError::Io {
            path: path.to_owned(),
            what: "state too large",
            source: std::io::Error::other("over cap"),
        })?;
    let mut bytes = Vec::with_capacity(body.len() + 16);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes.extend_from_slice(&body);
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp).map_err(io(&tmp, "cannot create"))?;
    f.write_all(&bytes).map_err(io(&tmp, "cannot write"))?;
    f.sync_all().map_err(io(&tmp, "cannot fsync"))?;
    fs::rename(&tmp, path).map_err(io(path, "cannot rename into place"))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir, "cannot fsync directory"))?;
    }
    Ok(())
}

/// Reads the state file: `None` if there is none (first start, or a crash). The caller
/// [`remove`]s it once the state is in use.
pub fn load(path: &Path) -> Result<Option<Saved>, PersistError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path, "cannot read")(e)),
    };
    let corrupt = || PersistError::Corrupt {
        path: path.to_owned(),
    };
    if bytes.len() < 16 || &bytes[..8] != MAGIC {
        return Err(corrupt());
    }
    let len = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if len > MAX_STATE_BYTES || bytes.len() != 16 + len as usize {
        return Err(corrupt());
    }
    let (head, crc) = bytes.split_at(12 + len as usize);
    if crc32fast::hash(head) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err(corrupt());
    }
    let (saved, _) = bincode::serde::decode_from_slice(&head[12..], bincode::config::standard())
        .map_err(|source| PersistError::Decode {
            path: path.to_owned(),
            source,
        })?;
    Ok(Some(saved))
}

/// Removes the state file (missing is fine).
pub fn remove(path: &Path) -> Result<(), PersistError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(path, "cannot remove")(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_state_round_trips_once_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tracker.state");
        let saved = Saved {
            epoch: 42,
            drops_seen: 3,
            skipped_seen: 1,
            disks: vec![SavedDisk {
                dev: 7 << 20,
                size: 1 << 30,
                dirty: vec![(0, 4096), (8192, 16384)],
                suspect: vec![(8192, 12288)],
                in_flight: vec![(1 << 20, 2 << 20)],
                fallback_seen: vec![(5, 1)],
                gap: None,
            }],
        };
        save(&path, &saved).unwrap();
        assert_eq!(load(&path).unwrap(), Some(saved.clone()));
        remove(&path).unwrap();
        assert_eq!(
            load(&path).unwrap(),
            None,
            "a removed state file still loads"
        );
        save(&path, &saved).unwrap();
        let mut bytes = fs::read(&path).unwrap();
        bytes[20] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(load(&path), Err(PersistError::Corrupt { .. })));
    }
}
