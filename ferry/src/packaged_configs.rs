//! Tests of the default configs the packages install as `/etc/ferry/agent.toml` and
//! `/etc/ferry/standby.toml` (`packaging/etc/`): they load with the very loaders the
//! services use, every setting they leave commented out (`#key = value`) loads too once
//! uncommented, and every key the docs describe is in them. So an admin who installs the
//! package, or uncomments a documented default, never meets a config the service refuses.

use crate::cmd;
use clap::Parser;
use ferry_replicator::agent::AgentConfig;
use ferry_standby::retention::Policy;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

fn read(relative: &str) -> String {
    let path = repo_file(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The file with every commented-out setting (a line starting `#` followed by a key, a
/// table header or an array-of-tables header) made active.
fn uncommented(text: &str) -> String {
    text.lines()
        .map(|line| match line.strip_prefix('#') {
            Some(rest)
                if rest.starts_with('[') || rest.starts_with(|c: char| c.is_ascii_lowercase()) =>
            {
                rest
            }
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Writes `text` to a temporary file and returns it (kept alive by the caller).
fn temp_config(text: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().expect("temporary file");
    std::fs::write(file.path(), text).expect("writing the temporary config");
    file
}

fn load_agent(path: &Path) -> (AgentConfig, PathBuf, cmd::agent::AgentTls) {
    cmd::agent::load_config(path)
        .unwrap_or_else(|e| panic!("the agent refuses {}: {e:#}", path.display()))
}

fn load_standby(path: &Path) -> cmd::standby::Settings {
    let config = path.to_str().expect("utf-8 path");
    let cli = crate::Cli::try_parse_from(["ferry", "standby", "--config", config])
        .expect("parsing the standby's command line");
    let crate::Command::Standby(args) = cli.command else {
        panic!("`ferry standby` parsed as another command");
    };
    cmd::standby::load_config(args)
        .unwrap_or_else(|e| panic!("the standby refuses {}: {e:#}", path.display()))
}

/// Keys set in the first ```toml block of a doc page (`key = …` at a line's start).
fn documented_keys(doc: &str) -> Vec<String> {
    let block = doc
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the doc page has a ```toml block");
    let mut keys: Vec<String> = block
        .lines()
        .filter_map(|l| l.split_once(" = ").map(|(k, _)| k.trim().to_owned()))
        .filter(|k| k.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .collect();
    keys.dedup();
    keys
}

fn assert_documents_every_key(packaged: &str, doc_page: &str) {
    let text = read(packaged);
    for key in documented_keys(&read(doc_page)) {
        let set = |prefix: &str| {
            text.lines()
                .any(|l| l.starts_with(&format!("{prefix}{key} = ")))
        };
        assert!(
            set("") || set("#"),
            "{packaged} does not mention `{key}`, which {doc_page} documents"
        );
    }
}

#[test]
fn packaged_agent_config_loads_with_the_documented_defaults() {
    let path = repo_file("packaging/etc/agent.toml");
    let (config, key_file, tls) = load_agent(&path);
    assert_eq!(
        tls.map(|t| t.cert),
        Some(PathBuf::from("/etc/ferry/tls/host.pem")),
        "the packaged agent names its [tls] files"
    );
    assert_eq!(key_file, Path::new("/etc/ferry/keys/host.key"));
    assert_eq!(config.state_dir, Path::new(cmd::agent::DEFAULT_STATE_DIR));
    let defaults = AgentConfig::new(
        config.server.clone(),
        config.standby.clone(),
        config.disks.clone(),
        config.state_dir.clone(),
    );
    assert_eq!(config.pin_dir, defaults.pin_dir);
    assert_eq!(config.point_interval, defaults.point_interval);
    assert_eq!(config.max_freeze, defaults.max_freeze);
    assert_eq!(config.window_bytes, defaults.window_bytes);
    assert_eq!(config.zstd_level, defaults.zstd_level);
    assert_eq!(config.bandwidth, None);
    assert!(config.auto_restart && config.io_uring);
}

#[test]
fn packaged_agent_config_loads_with_every_commented_setting_enabled() {
    let text = uncommented(&read("packaging/etc/agent.toml"));
    let file = temp_config(&text);
    let (config, _, _) = load_agent(file.path());
    // The commented values are the defaults, so they change nothing but the examples.
    assert_eq!(config.disks, [PathBuf::from("/dev/vda")]);
    assert_eq!(config.point_interval, Some(Duration::from_secs(3600)));
    assert_eq!(config.max_freeze, Duration::from_secs(5));
    assert_eq!(
        config.pre_freeze.as_deref(),
        Some("/usr/local/bin/db-flush")
    );
}

#[test]
fn packaged_standby_config_loads_with_the_documented_defaults() {
    let path = repo_file("packaging/etc/standby.toml");
    let cmd::standby::Settings {
        service: config,
        key_file,
        recovery_key_file,
        control,
        scripts,
        qemu_accel,
        volumes,
        tls,
        insecure_plaintext,
    } = load_standby(&path);
    assert!(
        !volumes.is_set(),
        "a packaged standby restores onto no VM's volumes"
    );
    assert_eq!(
        qemu_accel,
        ferry_site::instance::DEFAULT_QEMU_ACCEL,
        "the packaged qemu launcher uses KVM where it works"
    );
    assert!(!insecure_plaintext, "the packaged data link is TLS");
    assert_eq!(
        tls.map(|t| t.ca),
        Some(PathBuf::from("/etc/ferry/tls/ca.pem")),
        "the packaged standby names its [tls] files"
    );
    assert_eq!(
        recovery_key_file, None,
        "a packaged standby reads no replica"
    );
    assert!(
        control.is_none(),
        "the control API is served once the admin enables it"
    );
    let defaults = ferry_standby::receiver::ServiceConfig::new(PathBuf::new(), String::new());
    assert_eq!(key_file, Path::new("/etc/ferry/keys/standby.key"));
    assert_eq!(config.data_dir, Path::new("/var/lib/ferry/standby"));
    assert_eq!(config.listen, "0.0.0.0:7420");
    assert_eq!(config.segment_size, defaults.segment_size);
    assert_eq!(config.clean_interval, defaults.clean_interval);
    assert_eq!(
        scripts.path(),
        Path::new(ferry_site::scripts::DEFAULT_SCRIPTS_DIR),
        "post-launch scripts only from the root-owned scripts directory"
    );
    assert!(
        config.servers.is_empty(),
        "no server is allowed until the admin lists it"
    );
}

#[test]
fn packaged_standby_config_loads_with_every_commented_setting_enabled() {
    let text = uncommented(&read("packaging/etc/standby.toml"));
    let file = temp_config(&text);
    let settings = load_standby(file.path());
    let config = settings.service;
    assert_eq!(settings.scripts, ferry_site::scripts::ScriptsDir::default());
    let (control, sites, _tls) = settings
        .control
        .expect("[control] is in the packaged config");
    assert_eq!(
        sites.get("eu-west").map(|s| s.data.as_str()),
        Some("10.0.0.5:7420")
    );
    assert_eq!(control.listen, crate::api::DEFAULT_CONTROL);
    assert_eq!(
        control.token_file,
        Path::new(crate::api::DEFAULT_TOKEN_FILE)
    );
    assert_eq!(
        config.storage_classes.get("ssd").map(PathBuf::as_path),
        Some(Path::new("/srv/ferry-ssd"))
    );
    let web = "web-1".parse().expect("server id");
    let db = "db-1".parse().expect("server id");
    assert_eq!(config.servers.get(&web), Some(&Policy::default()));
    assert_eq!(
        config.servers.get(&db),
        Some(&Policy {
            interval_hours: 4,
            keep: 12
        })
    );
    assert_eq!(config.segment_size, 64 << 20);
}

#[test]
fn packaged_configs_mention_every_key_the_docs_describe() {
    assert_documents_every_key("packaging/etc/agent.toml", "docs/agent.md");
    assert_documents_every_key("packaging/etc/standby.toml", "docs/standby.md");
}

#[test]
fn uncommenting_keeps_prose_comments() {
    let text = "# Prose.\n#key = 1\n#[table]\n# [not a header]\nkey = 2";
    assert_eq!(
        uncommented(text),
        "# Prose.\nkey = 1\n[table]\n# [not a header]\nkey = 2"
    );
}
