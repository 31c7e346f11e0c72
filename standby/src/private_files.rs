//! Files and directories that hold plaintext or secrets: decrypted images (`ferry
//! rebuild`, instances, seed restores), an instance's description, its script's and
//! VM's output, a reverse agent's config and state, and the standby's data directory.
//!
//! Invariant: whatever the process's umask, such a file is created mode
//! [`FILE_MODE`] (0600) and such a directory [`DIR_MODE`] (0700), from the start
//! (`O_CREAT` with the mode; `mkdir` with the mode), so there is no window in which
//! another user can open it. A umask only removes permission bits, so asking for 0600
//! or 0700 is enough for new files and directories; a directory the standby owns that
//! already exists with wider permissions is tightened ([`ensure_dir`]). An existing
//! directory the operator named (`ferry rebuild --out DIR`) is left as it is
//! ([`create_dir_all`]): tightening `/tmp` or a shared mount would break the system,
//! and the images made in it are 0600 anyway.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of a file holding plaintext or secrets.
pub const FILE_MODE: u32 = 0o600;
/// Mode of a directory holding such files.
pub const DIR_MODE: u32 = 0o700;

/// Creates `path` and its missing parents, each new one mode 0700; an existing
/// directory keeps its mode.
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
}

/// Creates `path` (and missing parents) mode 0700, or tightens an existing directory
/// to 0700: for directories the standby owns.
pub fn ensure_dir(path: &Path) -> io::Result<()> {
    create_dir_all(path)?;
    let meta = fs::metadata(path)?;
    if meta.permissions().mode() & 0o7777 != DIR_MODE {
        fs::set_permissions(path, fs::Permissions::from_mode(DIR_MODE))?;
    }
    Ok(())
}

/// Creates a new file at `path` (refused if something exists there) mode 0600, open
/// for reading and writing.
pub fn create_new(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
}

/// Creates or truncates the file at `path`, mode 0600 (an existing file is tightened
/// to 0600 too), open for writing.
pub fn create(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)?;
    if file.metadata()?.permissions().mode() & 0o7777 != FILE_MODE {
        file.set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
    }
    Ok(file)
}

/// Writes `bytes` to `path` (created or truncated, mode 0600).
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    io::Write::write_all(&mut create(path)?, bytes)
}

/// Writes a secret (a key file) to `path`: created with mode 0600 from the start (never
/// wider, whatever the umask), replacing an older file, fsynced.
pub fn write_secret(path: &std::path::Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut f = create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("stat").permissions().mode() & 0o7777
    }

    #[test]
    fn existing_wide_files_and_owned_directories_are_tightened() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sub = dir.path().join("owned");
        fs::create_dir(&sub).expect("mkdir");
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o777)).expect("chmod");
        ensure_dir(&sub).expect("ensure");
        assert_eq!(mode(&sub), 0o700, "an owned directory is tightened");
        let file = sub.join("f");
        fs::write(&file, b"x").expect("write");
        fs::set_permissions(&file, fs::Permissions::from_mode(0o666)).expect("chmod");
        write(&file, b"secret").expect("write");
        assert_eq!(mode(&file), 0o600, "an existing file is tightened");
        assert_eq!(fs::read(&file).expect("read"), b"secret");
        assert!(
            create_new(&file).is_err(),
            "create_new never opens an existing file"
        );
        let operators = dir.path().join("theirs");
        fs::create_dir(&operators).expect("mkdir");
        fs::set_permissions(&operators, fs::Permissions::from_mode(0o755)).expect("chmod");
        create_dir_all(&operators).expect("create");
        assert_eq!(
            mode(&operators),
            0o755,
            "an operator's directory is left alone"
        );
        create_dir_all(&operators.join("a/b")).expect("create");
        assert_eq!(mode(&operators.join("a")), 0o700);
        assert_eq!(mode(&operators.join("a/b")), 0o700);
    }
}
