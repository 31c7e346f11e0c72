//! Which post-launch scripts the standby runs. A script runs as the standby's user —
//! root, since instances need loop devices and mounts — so whoever can write a script
//! it runs owns the standby site. The rule:
//!
//! - scripts live in one directory, `scripts_dir` in the standby's config (default
//!   [`DEFAULT_SCRIPTS_DIR`]); a script named anywhere else is refused, naming the rule
//!   and the directory;
//! - the script is the canonical path (symbolic links resolved) of the name given, and it
//!   must stay under the canonical scripts directory: a link that leads out is refused;
//! - the directory, every directory above it and between it and the script, and the
//!   script itself are owned by root (or by the user the standby runs as) and not
//!   writable by group or others — except that a directory above the scripts directory
//!   may be world-writable with the sticky bit (as `/tmp` is), where nobody else can
//!   rename or remove what root made;
//! - the script is a regular file with an execute bit.
//!
//! What runs is the canonical path checked ([`ScriptsDir::admit`]), so a link swapped
//! after the check is not followed; nobody but root can change the files the chain
//! leads through.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Where post-launch scripts live unless the config says otherwise.
pub const DEFAULT_SCRIPTS_DIR: &str = "/etc/ferry/scripts";

/// The rule, as error messages state it.
const RULE: &str = "post-launch scripts run as root, so only executables in the scripts \
                    directory (scripts_dir in the standby's config), owned by root and not \
                    writable by group or others, are run";

/// Why a post-launch script is refused.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    #[error("the post-launch script {} is not an absolute path", .0.display())]
    NotAbsolute(PathBuf),
    #[error("cannot use the scripts directory {}: {source} ({RULE})", dir.display())]
    Dir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot use the post-launch script {}: {source}", script.display())]
    Unreadable {
        script: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the post-launch script {} ({}) is not in the scripts directory {}: {RULE}",
        script.display(), resolved.display(), dir.display()
    )]
    Outside {
        script: PathBuf,
        resolved: PathBuf,
        dir: PathBuf,
    },
    #[error(
        "{} is owned by uid {uid}, not root: {RULE} (scripts directory {})",
        path.display(), dir.display()
    )]
    Owner {
        path: PathBuf,
        uid: u32,
        dir: PathBuf,
    },
    #[error(
        "{} is writable by group or others (mode {mode:04o}): {RULE} (scripts directory {})",
        path.display(), dir.display()
    )]
    Writable {
        path: PathBuf,
        mode: u32,
        dir: PathBuf,
    },
    #[error("the post-launch script {} is not an executable file", .0.display())]
    NotExecutable(PathBuf),
}

/// The configured scripts directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptsDir {
    dir: PathBuf,
}

impl Default for ScriptsDir {
    fn default() -> Self {
        Self::new(PathBuf::from(DEFAULT_SCRIPTS_DIR))
    }
}

impl ScriptsDir {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Checks `script` against the rule (module doc); returns the path to run.
    pub fn admit(&self, script: &Path) -> Result<PathBuf, ScriptError> {
        if !script.is_absolute() {
            return Err(ScriptError::NotAbsolute(script.to_owned()));
        }
        let dir = self.dir.canonicalize().map_err(|source| ScriptError::Dir {
            dir: self.dir.clone(),
            source,
        })?;
        let resolved = script
            .canonicalize()
            .map_err(|source| ScriptError::Unreadable {
                script: script.to_owned(),
                source,
            })?;
        if resolved == dir || !resolved.starts_with(&dir) {
            return Err(ScriptError::Outside {
                script: script.to_owned(),
                resolved,
                dir: self.dir.clone(),
            });
        }
        // Above the directory: trusted, or sticky; the directory and below: trusted.
        for above in dir.ancestors().skip(1) {
            self.check_trusted(above, true)?;
        }
        let parent = resolved.parent().unwrap_or(&dir);
        for inside in parent.ancestors().take_while(|p| p.starts_with(&dir)) {
            self.check_trusted(inside, false)?;
        }
        let meta = self.check_trusted(&resolved, false)?;
        if !meta.is_file() || meta.mode() & 0o111 == 0 {
            return Err(ScriptError::NotExecutable(resolved));
        }
        Ok(resolved)
    }

    /// Checks that `path` is owned by root (or this process's user) and not writable by
    /// group or others (unless `sticky_ok` and it has the sticky bit).
    fn check_trusted(
        &self,
        path: &Path,
        sticky_ok: bool,
    ) -> Result<std::fs::Metadata, ScriptError> {
        let meta = std::fs::metadata(path).map_err(|source| ScriptError::Unreadable {
            script: path.to_owned(),
            source,
        })?;
        let uid = meta.uid();
        if uid != 0 && uid != nix::unistd::geteuid().as_raw() {
            return Err(ScriptError::Owner {
                path: path.to_owned(),
                uid,
                dir: self.dir.clone(),
            });
        }
        let mode = meta.mode() & 0o7777;
        let sticky = mode & 0o1000 != 0;
        if mode & 0o022 != 0 && !(sticky_ok && sticky) {
            return Err(ScriptError::Writable {
                path: path.to_owned(),
                mode,
                dir: self.dir.clone(),
            });
        }
        Ok(meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
    }

    /// A scripts directory (0755) holding `ok.sh` (0755), and a script outside it.
    fn setup() -> (tempfile::TempDir, ScriptsDir) {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("scripts");
        fs::create_dir(&dir).expect("mkdir");
        chmod(&dir, 0o755);
        for script in [dir.join("ok.sh"), root.path().join("elsewhere.sh")] {
            fs::write(&script, "#!/bin/sh\nexit 0\n").expect("write");
            chmod(&script, 0o755);
        }
        (root, ScriptsDir::new(dir))
    }

    #[test]
    fn only_a_safe_executable_inside_the_scripts_directory_is_admitted() {
        let (root, scripts) = setup();
        let dir = scripts.path().to_owned();
        let ok = dir.join("ok.sh");
        assert_eq!(
            scripts.admit(&ok).expect("admitted"),
            ok.canonicalize().expect("canonical")
        );
        // Through `..`, out of the directory.
        let err = scripts
            .admit(&dir.join("../elsewhere.sh"))
            .expect_err("outside");
        assert!(matches!(err, ScriptError::Outside { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains(&dir.display().to_string()) && text.contains("scripts_dir"),
            "the refusal names the directory and the rule: {text}"
        );
        // A symbolic link in the directory that leads out.
        let link = dir.join("escape.sh");
        std::os::unix::fs::symlink(root.path().join("elsewhere.sh"), &link).expect("symlink");
        let err = scripts.admit(&link).expect_err("a link out");
        assert!(matches!(err, ScriptError::Outside { .. }), "{err}");
        // A link that stays inside is fine, and what runs is its target.
        let inside = dir.join("alias.sh");
        std::os::unix::fs::symlink(&ok, &inside).expect("symlink");
        assert_eq!(
            scripts.admit(&inside).expect("admitted"),
            ok.canonicalize().expect("canonical")
        );
        // Relative, missing, not executable, group-writable script or directory.
        assert!(matches!(
            scripts.admit(Path::new("ok.sh")),
            Err(ScriptError::NotAbsolute(_))
        ));
        assert!(matches!(
            scripts.admit(&dir.join("missing.sh")),
            Err(ScriptError::Unreadable { .. })
        ));
        chmod(&ok, 0o644);
        assert!(matches!(
            scripts.admit(&ok),
            Err(ScriptError::NotExecutable(_))
        ));
        chmod(&ok, 0o775);
        assert!(matches!(
            scripts.admit(&ok),
            Err(ScriptError::Writable { .. })
        ));
        chmod(&ok, 0o755);
        chmod(&dir, 0o757);
        let err = scripts.admit(&ok).expect_err("a writable directory");
        assert!(matches!(err, ScriptError::Writable { .. }), "{err}");
        // A sticky world-writable directory is no scripts directory either.
        chmod(&dir, 0o1777);
        assert!(matches!(
            scripts.admit(&ok),
            Err(ScriptError::Writable { .. })
        ));
        chmod(&dir, 0o755);
        // A directory above that others can write (no sticky bit): refused.
        chmod(root.path(), 0o777);
        assert!(matches!(
            scripts.admit(&ok),
            Err(ScriptError::Writable { .. })
        ));
        chmod(root.path(), 0o1777);
        scripts
            .admit(&ok)
            .expect("a sticky directory above is fine");
        chmod(root.path(), 0o700);
        // No directory at all.
        let none = ScriptsDir::new(root.path().join("none"));
        let err = none.admit(&ok).expect_err("no directory");
        assert!(matches!(err, ScriptError::Dir { .. }), "{err}");
    }
}
