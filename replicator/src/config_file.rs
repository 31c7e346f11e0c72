//! The agent's config file (`ferry agent --config`), typed both ways: the operator's TOML
//! is read into [`AgentFile`] and checked by [`AgentFile::validate`]; a program that
//! starts an agent (a standby's reverse agent) builds an [`AgentFile`] and writes it with
//! [`AgentFile::to_toml`], so no config is ever assembled as text.
//!
//! Every field, its default and bounds are listed in `ferry agent --help` and
//! docs/agent.md. Invariant: a file that validates is one the agent runs with as read;
//! every bound is checked here, before anything starts.

use crate::agent::AgentConfig;
use ferry_tls::TlsFiles;
use ferry_wire::ServerId;
use serde::{Deserialize, Serialize};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The agent's default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/ferry/agent";

/// The config file as written: absent fields take their defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    pub server: ServerId,
    pub standby: String,
    pub key_file: PathBuf,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_plaintext: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disks: Option<Vec<PathBuf>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pin_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub point_interval_minutes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_freeze: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub post_thaw: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_freeze_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bandwidth_mib_per_sec: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_restart: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_mib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zstd_level: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seal_threads: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub io_uring: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFiles>,
}

/// What a config file gives the agent: its settings, its host key file, and the `[tls]`
/// files (`None`: plain TCP to a loopback standby).
#[derive(Debug)]
pub struct Validated {
    pub config: AgentConfig,
    pub key_file: PathBuf,
    pub tls: Option<TlsFiles>,
}

/// Why a config file cannot be used. All are permanent: the operator fixes the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{name} is {value}; it must be {} to {}", range.start(), range.end())]
    OutOfRange {
        name: &'static str,
        value: i64,
        range: RangeInclusive<i64>,
    },
    #[error(
        "disks is empty: list the disks to protect, or leave it out to protect every disk \
         under a mounted filesystem"
    )]
    NoDisks,
    #[error("cannot find the disks under the mounted filesystems")]
    MountedDisks(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the config file's [tls] is not valid")]
    Tls(#[source] ferry_tls::ConfigError),
    #[error(
        "the link to the standby is TLS only, and the config has no [tls]: get this host a \
         certificate naming its server (`ferry tls issue --dir pki --name {0}`) and set \
         [tls] ca, cert and key; or, to a loopback standby only, set insecure_plaintext = \
         true"
    )]
    NoTls(ServerId),
    #[error("the config cannot be written as TOML")]
    Write(#[source] toml::ser::Error),
}

fn bounded(name: &'static str, value: u64, range: RangeInclusive<u64>) -> Result<u64, ConfigError> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError::OutOfRange {
            name,
            value: i64::try_from(value).unwrap_or(i64::MAX),
            range: i64::try_from(*range.start()).unwrap_or(i64::MAX)
                ..=i64::try_from(*range.end()).unwrap_or(i64::MAX),
        })
    }
}

impl AgentFile {
    /// A file naming what identifies the agent, every other setting at its default.
    pub fn new(server: ServerId, standby: String, key_file: PathBuf) -> Self {
        Self {
            server,
            standby,
            key_file,
            insecure_plaintext: false,
            disks: None,
            state_dir: None,
            pin_dir: None,
            point_interval_minutes: None,
            pre_freeze: None,
            post_thaw: None,
            max_freeze_ms: None,
            bandwidth_mib_per_sec: None,
            auto_restart: None,
            window_mib: None,
            zstd_level: None,
            seal_threads: None,
            io_uring: None,
            tls: None,
        }
    }

    /// The file as TOML (every string escaped by the TOML encoder).
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string(self).map_err(ConfigError::Write)
    }

    /// Checks every setting; `mounted_disks` lists the whole disks under mounted
    /// filesystems, asked only when the file names no disks.
    pub fn validate<E: std::error::Error + Send + Sync + 'static>(
        self,
        mounted_disks: impl FnOnce() -> Result<Vec<String>, E>,
    ) -> Result<Validated, ConfigError> {
        let (server, standby, key_file) = (self.server, self.standby, self.key_file);
        let disks = match self.disks {
            Some(d) if d.is_empty() => return Err(ConfigError::NoDisks),
            Some(d) => d,
            None => mounted_disks()
                .map_err(|e| ConfigError::MountedDisks(Box::new(e)))?
                .into_iter()
                .map(|name| Path::new("/dev").join(name))
                .collect(),
        };
        let state_dir = self
            .state_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let mut config = AgentConfig::new(server, standby, disks, state_dir);
        if let Some(p) = self.pin_dir {
            config.pin_dir = p;
        }
        if let Some(m) = self.point_interval_minutes {
            config.point_interval = match m {
                0 => None,
                m => Some(Duration::from_secs(
                    bounded("point_interval_minutes", m, 1..=10_080)? * 60,
                )),
            };
        }
        config.pre_freeze = self.pre_freeze;
        config.post_thaw = self.post_thaw;
        if let Some(ms) = self.max_freeze_ms {
            config.max_freeze = Duration::from_millis(bounded("max_freeze_ms", ms, 100..=60_000)?);
        }
        if let Some(b) = self.bandwidth_mib_per_sec {
            config.bandwidth = (b > 0).then(|| b.saturating_mul(1 << 20));
        }
        if let Some(a) = self.auto_restart {
            config.auto_restart = a;
        }
        if let Some(w) = self.window_mib {
            config.window_bytes = bounded("window_mib", w, 1..=4096)? << 20;
        }
        if let Some(z) = self.zstd_level {
            if !(1..=19).contains(&z) {
                return Err(ConfigError::OutOfRange {
                    name: "zstd_level",
                    value: i64::from(z),
                    range: 1..=19,
                });
            }
            config.zstd_level = z;
        }
        if let Some(t) = self.seal_threads
            && t > 0
        {
            config.seal_threads = t;
        }
        if let Some(u) = self.io_uring {
            config.io_uring = u;
        }
        let tls = match (self.insecure_plaintext, self.tls) {
            (true, _) => None,
            (false, Some(tls)) => {
                tls.validate().map_err(ConfigError::Tls)?;
                Some(tls)
            }
            (false, None) => return Err(ConfigError::NoTls(config.server)),
        };
        Ok(Validated {
            config,
            key_file,
            tls,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> AgentFile {
        AgentFile {
            insecure_plaintext: true,
            disks: Some(vec!["/dev/loop0".into()]),
            ..AgentFile::new(
                ServerId::new("web-1").unwrap(),
                "127.0.0.1:7420".into(),
                "/k".into(),
            )
        }
    }

    #[test]
    fn a_written_file_reads_back_the_same_whatever_its_strings_hold() {
        let mut file = minimal();
        // Quotes, backslashes, newlines and non-ASCII: TOML escaping, not Rust's Debug.
        file.disks = Some(vec![
            r#"/dev/disk/by-id/a "b" \c"#.into(),
            "/dev/é\nx".into(),
        ]);
        file.pre_freeze = Some("echo \"it's\" \\ done\t".into());
        file.point_interval_minutes = Some(0);
        let text = file.to_toml().unwrap();
        let back: AgentFile = toml::from_str(&text).unwrap();
        assert_eq!(back, file, "{text}");
    }

    #[test]
    fn every_bound_and_missing_field_is_named() {
        type Change = fn(&mut AgentFile);
        let cases: [(Change, &str); 5] = [
            (
                |f| f.window_mib = Some(0),
                "window_mib is 0; it must be 1 to 4096",
            ),
            (
                |f| f.zstd_level = Some(20),
                "zstd_level is 20; it must be 1 to 19",
            ),
            (|f| f.max_freeze_ms = Some(50), "max_freeze_ms is 50"),
            (
                |f| f.point_interval_minutes = Some(20_000),
                "point_interval_minutes",
            ),
            (|f| f.disks = Some(Vec::new()), "disks is empty"),
        ];
        for (change, want) in cases {
            let mut file = minimal();
            change(&mut file);
            let e = file
                .validate(|| Ok::<_, std::io::Error>(Vec::new()))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e}");
        }
        let mut no_tls = minimal();
        no_tls.insecure_plaintext = false;
        let e = no_tls
            .validate(|| Ok::<_, std::io::Error>(Vec::new()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("TLS only") && e.contains("--name web-1"), "{e}");
        let ok = minimal()
            .validate(|| -> std::io::Result<Vec<String>> { panic!("disks were named") })
            .unwrap();
        assert_eq!(ok.config.disks, vec![PathBuf::from("/dev/loop0")]);
    }
}
