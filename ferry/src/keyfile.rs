//! Key files on disk: the pair key, a host key, a recovery key or a standby key (formats
//! in `ferry_wire::keys`), in a file of mode 0600 owned by whoever runs ferry. Each
//! loader takes one kind and refuses the others with the command that makes the right
//! one (a ferry 0.1 single-key config is refused that way).
//!
//! Loading refuses a file that group or others may read or write, a file that is not a
//! regular file, and anything but exactly one key; every refusal names the file and says
//! how to fix it. Writing never leaves a partly written key behind: a new file is created
//! with mode 0600 from the start (never widened then narrowed), written, fsynced, and
//! only then renamed into place.

use anyhow::{Context, Result, bail};
use ferry_wire::{HostKey, KeyFile, RecoveryKey, ServerId, StandbyKey};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use zeroize::Zeroizing;

/// Longest key file read; anything longer is not a key file.
const MAX_KEY_FILE: u64 = 256;

/// Loads a key file of any kind from `path`, refusing unsafe permissions and malformed
/// content.
pub(crate) fn load(path: &Path) -> Result<KeyFile> {
    let text = read_secret(path, "key file")?;
    KeyFile::from_text(&text)
        .with_context(|| format!("key file {} is not a ferry key", path.display()))
}

/// The text of a key file of any kind (checked like [`load`]), to send with an
/// operation.
pub(crate) fn read_key_text(path: &Path) -> Result<Zeroizing<String>> {
    let text = read_secret(path, "key file")?;
    KeyFile::from_text(&text)
        .with_context(|| format!("key file {} is not a ferry key", path.display()))?;
    Ok(text)
}

/// Loads a host key (an agent's), for `server`.
pub(crate) fn load_host(path: &Path, server: &ServerId) -> Result<HostKey> {
    let key = load(path)?
        .into_host()
        .with_context(|| format!("key file {}", path.display()))?;
    if key.server() != server {
        bail!(
            "key file {} is the host key of server {}, not {server}",
            path.display(),
            key.server()
        );
    }
    Ok(key)
}

/// The host key of `server` from its host key file or the pair key (the operator seals a
/// seed with either).
pub(crate) fn load_sealing(path: &Path, server: &ServerId) -> Result<HostKey> {
    match load(path)? {
        KeyFile::Pair(pair) => Ok(pair.host_key(server)),
        _ => load_host(path, server),
    }
}

/// Loads a standby key.
pub(crate) fn load_standby(path: &Path) -> Result<StandbyKey> {
    load(path)?
        .into_standby()
        .with_context(|| format!("key file {}", path.display()))
}

/// Loads the recovery key of `server` from a pair, host or recovery key file.
pub(crate) fn load_recovery(path: &Path, server: &ServerId) -> Result<RecoveryKey> {
    load(path)?
        .recovery_for(server)
        .with_context(|| format!("key file {}", path.display()))
}

/// Loads the control API's token from `path` (same permission rules as a key file; any
/// 16 to 256 printable characters, e.g. a file made by `ferry keygen`).
pub(crate) fn load_token(path: &Path) -> Result<Zeroizing<String>> {
    let text = read_secret(path, "token file")?;
    let token = Zeroizing::new(text.trim().to_owned());
    if token.len() < 16 || token.chars().any(|c| c.is_control() || c.is_whitespace()) {
        bail!(
            "token file {} must hold one token of 16 to 256 printable characters without \
             spaces (make one with `ferry keygen --out {}`)",
            path.display(),
            path.display()
        );
    }
    Ok(token)
}

/// Reads a small secret file of mode 0600 (or stricter).
fn read_secret(path: &Path, what: &str) -> Result<Zeroizing<String>> {
    let file =
        File::open(path).with_context(|| format!("cannot open {what} {}", path.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("cannot stat {what} {}", path.display()))?;
    if !meta.is_file() {
        bail!("{what} {} is not a regular file", path.display());
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "{what} {} has mode {mode:04o}: group or others can access it; \
             run `chmod 600 {}` (and consider the secret exposed)",
            path.display(),
            path.display()
        );
    }
    if meta.len() > MAX_KEY_FILE {
        bail!(
            "{what} {} is {} bytes long; a ferry key file is at most four short lines",
            path.display(),
            meta.len()
        );
    }
    let mut text = Zeroizing::new(String::new());
    file.take(MAX_KEY_FILE)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    Ok(text)
}

/// Writes `key` to `path` with mode 0600. Refuses an existing file unless `force`.
pub(crate) fn write(path: &Path, key: &KeyFile, force: bool) -> Result<()> {
    if !force && fs::symlink_metadata(path).is_ok() {
        bail!(
            "{} already exists; pass --force to replace it (the old key is lost)",
            path.display()
        );
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| -> Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        file.write_all(key.to_text().as_bytes())?;
        file.sync_all()?;
        if force {
            fs::rename(&tmp, path)
        } else {
            // hard_link fails if `path` appeared meanwhile: never replace without --force.
            fs::hard_link(&tmp, path).and_then(|()| fs::remove_file(&tmp))
        }
        .with_context(|| format!("cannot put the key in place at {}", path.display()))?;
        File::open(dir)?.sync_all()?;
        Ok(())
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}
