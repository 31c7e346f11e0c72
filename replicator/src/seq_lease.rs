//! The agent's seq lease: an upper bound, kept on disk, of every seq this agent has ever
//! sent, so that a standby's `Welcome { last_durable }` can be checked (DESIGN.md I8). A
//! standby that claims more is durable than the agent ever sent is lying (or is another
//! standby's store); believing it would skip records that were never stored, so the
//! link is refused instead.
//!
//! File `STATE_DIR/seq.lease`, 20 bytes, replaced atomically (written to a temporary
//! file, fsynced, renamed, directory fsynced):
//!
//! ```text
//!  0   8  magic "FRYSEQ01"
//!  8   8  bound (u64 LE): no seq above it was ever sent
//!  16  4  crc32 (IEEE) of bytes 0..16
//! ```
//!
//! The bound is raised in steps of [`LEASE_STEP`] before a seq past it is sent, so the
//! file is written about once per million records. No file means the agent has never
//! sent anything from this state directory (a new install): the first Welcome is taken
//! as it is, bounded only by the seq space.

use ferry_wire::Seq;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// How far ahead of the seqs sent the bound is raised at a time.
pub const LEASE_STEP: u64 = 1 << 20;

const MAGIC: &[u8; 8] = b"FRYSEQ01";
const LEN: usize = 20;

/// Why the lease could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("cannot {what} the seq lease {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the seq lease {} is damaged ({reason}); if this host's state directory was \
         restored or copied, remove the file to start over",
        path.display()
    )]
    Damaged { path: PathBuf, reason: &'static str },
}

/// The lease of one agent's state directory.
#[derive(Debug)]
pub struct SeqLease {
    path: PathBuf,
    /// `None` until the first seq is covered on a new install.
    bound: Option<Seq>,
}

impl SeqLease {
    /// Reads the lease in `state_dir` (none yet is fine).
    pub fn open(state_dir: &Path) -> Result<Self, LeaseError> {
        let path = state_dir.join("seq.lease");
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Self { path, bound: None });
            }
            Err(source) => {
                return Err(LeaseError::Io {
                    what: "read",
                    path,
                    source,
                });
            }
        };
        let damaged = |reason| LeaseError::Damaged {
            path: path.clone(),
            reason,
        };
        if bytes.len() != LEN {
            return Err(damaged("wrong length"));
        }
        if &bytes[..8] != MAGIC {
            return Err(damaged("wrong magic"));
        }
        let crc = u32::from_le_bytes(bytes[16..20].try_into().map_err(|_| damaged("crc"))?);
        if crc32fast::hash(&bytes[..16]) != crc {
            return Err(damaged("checksum mismatch"));
        }
        let bound = u64::from_le_bytes(bytes[8..16].try_into().map_err(|_| damaged("bound"))?);
        Ok(Self {
            path,
            bound: Some(Seq::new(bound)),
        })
    }

    /// The highest seq a standby may truthfully call durable, if known.
    pub fn bound(&self) -> Option<Seq> {
        self.bound
    }

    /// Makes sure `seq` is covered before it is sent (raising the bound on disk if not).
    pub fn cover(&mut self, seq: Seq) -> Result<(), LeaseError> {
        if self.bound.is_some_and(|b| seq <= b) {
            return Ok(());
        }
        let bound = Seq::new(seq.get().saturating_add(LEASE_STEP));
        let mut bytes = [0u8; LEN];
        bytes[..8].copy_from_slice(MAGIC);
        bytes[8..16].copy_from_slice(&bound.get().to_le_bytes());
        let crc = crc32fast::hash(&bytes[..16]);
        bytes[16..].copy_from_slice(&crc.to_le_bytes());
        let io = |what, source| LeaseError::Io {
            what,
            path: self.path.clone(),
            source,
        };
        let tmp = self.path.with_extension("tmp");
        let mut f = File::create(&tmp).map_err(|e| io("create", e))?;
        f.write_all(&bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| io("write", e))?;
        fs::rename(&tmp, &self.path).map_err(|e| io("replace", e))?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io("sync the directory of", e))?;
        }
        self.bound = Some(bound);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_survives_a_restart_and_only_grows_in_steps() {
        let dir = tempfile::tempdir().unwrap();
        let mut lease = SeqLease::open(dir.path()).unwrap();
        assert_eq!(lease.bound(), None, "a new install has no bound");
        lease.cover(Seq::new(1)).unwrap();
        assert_eq!(lease.bound(), Some(Seq::new(1 + LEASE_STEP)));
        lease.cover(Seq::new(LEASE_STEP)).unwrap();
        assert_eq!(
            lease.bound(),
            Some(Seq::new(1 + LEASE_STEP)),
            "rewritten too early"
        );
        lease.cover(Seq::new(LEASE_STEP + 2)).unwrap();
        let again = SeqLease::open(dir.path()).unwrap();
        assert_eq!(again.bound(), Some(Seq::new(2 * LEASE_STEP + 2)));
    }

    #[test]
    fn a_damaged_lease_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        SeqLease::open(dir.path())
            .unwrap()
            .cover(Seq::new(5))
            .unwrap();
        let path = dir.path().join("seq.lease");
        let mut bytes = fs::read(&path).unwrap();
        bytes[9] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let err = SeqLease::open(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("seq.lease") && err.contains("checksum"),
            "{err}"
        );
    }
}
