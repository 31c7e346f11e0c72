//! `ferry agent`: protect this host's disks, replicating them to a standby;
//! `ferry agent status`: what a running agent is doing.
//!
//! The config file, with every field's default and bounds:
//!
//! ```toml
//! server = "web-1"                        # required: this server's id at the standby
//! standby = "standby.example:7420"        # required: the standby's address
//! key_file = "/etc/ferry/keys/host.key"   # required: this host's key (keygen --host), mode 0600
//! insecure_plaintext = false              # true: plain TCP, to a loopback standby only
//! disks = ["/dev/vda"]                    # default: every whole disk under a mounted filesystem
//! state_dir = "/var/lib/ferry/agent"      # status.json, agent.sock, tracker state
//! pin_dir = "/sys/fs/bpf/ferry"           # the tracker's pinned programs (bpffs)
//! point_interval_minutes = 60             # 0 = points only on demand; 1 to 10080
//! pre_freeze = "/usr/local/bin/db-flush"  # optional, run with sh -c before freezing
//! post_thaw = "/usr/local/bin/db-resume"  # optional, run after thawing
//! max_freeze_ms = 5000                    # 100 to 60000: longest freeze per attempt
//! bandwidth_mib_per_sec = 0               # 0 = unlimited
//! auto_restart = true                     # reconnect by itself after an interruption
//! window_mib = 64                         # 1 to 4096: unacknowledged bytes in flight
//! zstd_level = 1                          # 1 to 19
//! seal_threads = 0                        # 0 = every core
//! io_uring = true                         # false: synchronous reads
//!
//! [tls]                                   # required unless insecure_plaintext
//! ca = "/etc/ferry/tls/ca.pem"            # the site pair's CA
//! cert = "/etc/ferry/tls/host.pem"        # this host's certificate: it names the server
//! key = "/etc/ferry/tls/host.key"         # its key, mode 0600
//! ```

use crate::cmd::human_bytes;
use crate::keyfile;
use anyhow::{Context, Result, bail};
use ferry_replicator::agent::{Agent, AgentConfig};
use ferry_replicator::config_file::AgentFile;
use ferry_replicator::status::Status;
use ferry_wire::ServerId;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

pub(crate) use ferry_replicator::config_file::DEFAULT_STATE_DIR;

/// Run the agent (protect this host's disks), or show a running agent's status.
///
/// Examples: `ferry agent --config /etc/ferry/agent.toml`,
/// `ferry agent status`, `ferry agent status --json`, `ferry agent point --server web-1`
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Option<Sub>,
    /// TOML config file (format in `ferry agent --help` and docs/agent.md).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// Show what a running agent is doing: phase, progress, backlog, RPO lag, drops, last ack.
    Status(StatusArgs),
    /// Make a recovery point now, asking this host's running agent (the agent freezes,
    /// ships the remaining changes, sends the point and thaws). From the standby site:
    /// `ferry point create`.
    ///
    /// Example: `ferry agent point --server web-1`
    Point(PointArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct PointArgs {
    /// The protected server (must be the one the agent protects).
    #[arg(long)]
    server: ServerId,
    /// The agent's state directory.
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Print JSON instead of a line of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct StatusArgs {
    /// The agent's state directory.
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// What the link runs on: the `[tls]` files (read at start), or `None` for plain TCP to
/// a loopback standby (`insecure_plaintext = true`).
pub(crate) type AgentTls = Option<ferry_tls::TlsFiles>;

/// Reads and checks an agent config file.
pub(crate) fn load_config(path: &Path) -> Result<(AgentConfig, PathBuf, AgentTls)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let file: AgentFile = toml::from_str(&text)
        .with_context(|| format!("config file {} is not valid", path.display()))?;
    let v = file.validate(|| ferry_tracker::check::disks_with_mounts(Path::new("/")))?;
    Ok((v.config, v.key_file, v.tls))
}

/// The link's TLS from the config's files: the standby's certificate is checked for the
/// host part of `standby` (a DNS name or an IP address).
fn link_tls(standby: &str, tls: AgentTls) -> Result<ferry_tls::LinkTls> {
    let Some(files) = tls else {
        return Ok(ferry_tls::LinkTls::PlaintextLoopback);
    };
    let host = standby
        .rsplit_once(':')
        .map_or(standby, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let server_name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .with_context(|| format!("standby {standby:?}: {host:?} is not a host name or address"))?;
    Ok(ferry_tls::LinkTls::Tls {
        config: files
            .client_config()
            .context("cannot set up TLS to the standby")?,
        server_name,
    })
}

pub(crate) fn run(args: Args) -> Result<()> {
    match args.command {
        Some(Sub::Status(s)) => status(&s),
        Some(Sub::Point(p)) => point(&p),
        None => {
            let Some(path) = args.config else {
                bail!("ferry agent needs --config FILE (or: ferry agent status)");
            };
            run_agent(&path)
        }
    }
}

fn run_agent(path: &Path) -> Result<()> {
    crate::require_root("ferry agent")?;
    let (mut config, key_file, tls) = load_config(path)?;
    config.tls = link_tls(&config.standby, tls)?;
    let report = ferry_tracker::check::check(Path::new("/"))
        .context("the registration checks could not run")?;
    if !report.refusals.is_empty() {
        bail!(
            "this host cannot be protected:\n  - {}",
            report.refusals.join("\n  - ")
        );
    }
    let keys = keyfile::load_host(&key_file, &config.server)?.keys();
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone())
            .context("cannot install the signal handlers")?;
    }
    tracing::info!(server = %config.server, standby = %config.standby, disks = ?config.disks, "agent starting");
    let agent = Agent::start(config, keys, stop).context("the agent could not start")?;
    // Scripts and tests wait for this line (stdout) to know tracking runs; systemd waits
    // for the notification. Ready means tracking, not connected: writes are recorded from
    // here on even while the standby is unreachable (the agent reconnects by itself), so
    // a standby outage must not fail the agent's start.
    println!("tracking");
    crate::sd_notify::ready_or_warn("tracking");
    agent.run().context("the agent stopped")
}

fn point(args: &PointArgs) -> Result<()> {
    let status = ferry_replicator::status::Status::load(&args.state_dir.join("status.json"))
        .with_context(|| {
            format!(
                "no agent status in {} (is the agent running with this state_dir?)",
                args.state_dir.display()
            )
        })?;
    anyhow::ensure!(
        status.server == args.server.as_str(),
        "the agent in {} protects server {}, not {}",
        args.state_dir.display(),
        status.server,
        args.server
    );
    let socket = args.state_dir.join("agent.sock");
    let point =
        ferry_replicator::agent::request_point(&socket, std::time::Duration::from_secs(600))
            .with_context(|| format!("cannot reach the agent at {}", socket.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&point)?);
    }
    if let Some(e) = &point.error {
        anyhow::bail!("the point failed: {e}");
    }
    if !args.json {
        println!(
            "point {} of {} at seq {}: {}, filesystems frozen {} ms ({})",
            point.point.map_or(0, |p| p.get()),
            args.server,
            point.seq.map_or(0, |s| s.get()),
            if point.consistent {
                "consistent"
            } else {
                "crash-consistent only"
            },
            point.freeze_ms,
            if point.frozen.is_empty() {
                "none".to_owned()
            } else {
                point.frozen.join(", ")
            }
        );
    }
    Ok(())
}

fn status(args: &StatusArgs) -> Result<()> {
    let path = args.state_dir.join("status.json");
    let s = Status::load(&path).with_context(|| {
        format!(
            "no agent status in {} (is the agent running with this state_dir?)",
            args.state_dir.display()
        )
    })?;
    let running = Path::new(&format!("/proc/{}", s.pid)).exists();
    if args.json {
        let mut v = serde_json::to_value(&s)?;
        v["running"] = running.into();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let phase = s.phase.map_or("unknown", |p| p.name());
    println!(
        "server {}  phase {}{}  standby {}",
        s.server,
        phase,
        if running { "" } else { " (agent not running)" },
        s.standby
    );
    println!(
        "backlog {}  RPO {}  shipped {} in {} records  last ack seq {}  drops {}  catch-ups {}  reconnects {}",
        human_bytes(s.backlog_bytes),
        rpo(&s),
        human_bytes(s.shipped_bytes),
        s.records_sent,
        s.acked_seq,
        s.drops,
        s.catch_ups,
        s.reconnects
    );
    println!(
        "\n{:<12} {:>12} {:>12} {:>20}  GAP",
        "DISK", "SIZE", "DIRTY", "CATCH-UP"
    );
    for d in &s.disks {
        let catch_up = match &d.catch_up {
            Some(method) if d.full_total > 0 => format!(
                "{method} {:.0}%",
                100.0 * d.full_done as f64 / d.full_total as f64
            ),
            _ => "-".to_owned(),
        };
        println!(
            "{:<12} {:>12} {:>12} {:>20}  {}",
            d.name,
            human_bytes(d.size),
            human_bytes(d.dirty_bytes),
            catch_up,
            d.gap.as_deref().unwrap_or("-")
        );
    }
    for d in &s.disks {
        if let Some(c) = &d.last_catch_up {
            println!(
                "last catch-up of {}: {} ({}): {} compared, {} differed, {} shipped, {:.1} s",
                d.name,
                c.method,
                c.reason,
                human_bytes(c.compared_bytes),
                human_bytes(c.differing_bytes),
                human_bytes(c.shipped_bytes),
                c.millis as f64 / 1000.0
            );
        }
    }
    if let Some(p) = &s.last_point {
        match &p.error {
            None => println!(
                "\nlast point: id {} at seq {}, {}, frozen {} ms ({})",
                p.point.map_or(0, |p| p.get()),
                p.seq.map_or(0, |s| s.get()),
                if p.consistent {
                    "consistent"
                } else {
                    "crash-consistent only"
                },
                p.freeze_ms,
                p.frozen.join(", ")
            ),
            Some(e) => println!("\nlast point FAILED: {e}"),
        }
    }
    if let Some(e) = &s.last_error {
        println!("last error: {e}");
    }
    if let Some(w) = &s.last_warning {
        println!(
            "standby warning: {w} ({} s ago)",
            ferry_standby::now_ms().saturating_sub(s.last_warning_unix_ms) / 1000
        );
    }
    Ok(())
}

/// The RPO as the operator should read it: a lag only while the standby holds a whole
/// copy of every disk. During a full copy nothing can be recovered yet; during a digest
/// compare after a gap the standby's latest state is a mix until it ends (whether points
/// from before the gap exist, only the site knows: `ferry server list`).
fn rpo(s: &Status) -> String {
    let running = |method: &str| {
        s.disks
            .iter()
            .filter(|d| d.catch_up.as_deref() == Some(method) && d.full_total > 0)
            .map(|d| {
                format!(
                    "{} {:.0}%",
                    d.name,
                    100.0 * d.full_done as f64 / d.full_total as f64
                )
            })
            .collect::<Vec<_>>()
    };
    let (full, digest) = (running("full copy"), running("digest compare"));
    if !full.is_empty() {
        format!("not protected yet (full copy: {})", full.join(", "))
    } else if !digest.is_empty() {
        format!(
            "catching up after a gap (digest compare: {}; latest is not whole until it ends)",
            digest.join(", ")
        )
    } else {
        format!("lag {:.1} s", s.rpo_lag_ms as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_replicator::status::DiskStatus;

    #[test]
    fn the_rpo_is_a_lag_only_once_the_standby_holds_whole_disks() {
        let disk = |catch_up: Option<&str>, done| DiskStatus {
            name: "vda".into(),
            catch_up: catch_up.map(str::to_owned),
            full_total: 1 << 40,
            full_done: done,
            ..DiskStatus::default()
        };
        let mut s = Status {
            rpo_lag_ms: 500,
            disks: vec![disk(Some("full copy"), 1 << 38)],
            ..Status::default()
        };
        assert_eq!(rpo(&s), "not protected yet (full copy: vda 25%)");
        s.disks[0] = disk(Some("digest compare"), 1 << 39);
        assert!(
            rpo(&s).starts_with("catching up after a gap (digest compare: vda 50%"),
            "{}",
            rpo(&s)
        );
        s.disks[0] = disk(None, 1 << 40);
        assert_eq!(rpo(&s), "lag 0.5 s");
    }
}
