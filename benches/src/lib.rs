//! Shared pieces of ferry's benchmarks: the data they run on.
//!
//! Realistic data is the machine's own binaries and libraries under `/usr/lib`, read in
//! a fixed (sorted) order so that two runs on one machine see the same bytes. Random
//! data is the incompressible worst case.

use anyhow::{Context, Result, ensure};
use std::path::{Path, PathBuf};

/// Collects `len` bytes from regular files under `root`, in sorted path order.
pub fn corpus_from(root: &Path, len: usize) -> Result<Vec<u8>> {
    let mut files = Vec::new();
    collect_files(root, &mut files)?;
    files.sort();
    let mut out = Vec::with_capacity(len);
    for file in files {
        if out.len() >= len {
            break;
        }
        // Unreadable files (permissions, races with package upgrades) are skipped.
        if let Ok(bytes) = std::fs::read(&file) {
            out.extend_from_slice(&bytes[..bytes.len().min(len - out.len())]);
        }
    }
    ensure!(
        out.len() == len,
        "only {} bytes of files under {}",
        out.len(),
        root.display()
    );
    Ok(out)
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            collect_files(&entry.path(), out)?;
        } else if kind.is_file() {
            out.push(entry.path());
        }
    }
    Ok(())
}

/// The realistic corpus: `len` bytes of `/usr/lib`.
pub fn usr_lib_corpus(len: usize) -> Result<Vec<u8>> {
    corpus_from(Path::new("/usr/lib"), len)
}

/// `len` random bytes.
pub fn random_bytes(len: usize) -> Vec<u8> {
    use rand_core::RngCore;
    let mut out = vec![0u8; len];
    rand_core::OsRng.fill_bytes(&mut out);
    out
}
