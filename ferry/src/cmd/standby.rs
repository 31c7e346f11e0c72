//! `ferry standby`: run the standby service.
//!
//! Settings come from a TOML file (`--config`) and/or flags; a flag overrides the file.
//! The file, with every field's default and bounds:
//!
//! ```toml
//! data_dir = "/var/lib/ferry/standby"   # required (here or --data-dir)
//! listen = "0.0.0.0:7420"               # required (here or --listen); plain TCP for now
//! key_file = "/etc/ferry/keys/standby.key" # required (here or --key); mode 0600: a
//!                                       # standby key (`ferry keygen --standby`)
//! recovery_key_file = "/etc/ferry/keys/pair.key" # optional; the pair key or one server's
//!                                       # recovery key: drills and failovers need it, and
//!                                       # with it this standby can read those replicas
//! segment_size_mib = 64                 # 2 to 4096
//! clean_interval_minutes = 10           # 1 to 10080
//! scripts_dir = "/etc/ferry/scripts"    # default; absolute. Post-launch scripts run as
//!                                       # root: only executables in it, it and they
//!                                       # root-owned and not writable by group/others
//! qemu_accel = "kvm:tcg"                # default; the qemu launcher's accelerators:
//!                                       # "kvm:tcg", "kvm" or "tcg" (where KVM exists but
//!                                       # cannot run guests, e.g. nested)
//! volumes_dir = "/run/ferry/volumes"    # optional; absolute. This host's virtual
//!                                       # machines' disks: links named by the serial (or
//!                                       # WWID) a guest sees, each to the host block
//!                                       # device behind it; a restore onto an original
//!                                       # machine that is a VM finds its disks here
//!
//! [retention]                           # default policy for every server
//! interval_hours = 1                    # 1 to 720
//! keep = 24                             # 1 to 10000
//!
//! [control]                             # the control API (HTTPS); without it, none is served
//! listen = "127.0.0.1:7421"             # default; keep it on loopback or a private network
//! token_file = "/etc/ferry/keys/control.token"  # required in [control]; mode 0600
//! insecure_plaintext = false            # true: plain HTTP, allowed on a loopback listen only
//!
//! [tls]                                 # this site's certificate (`ferry tls init`/`issue`);
//! ca = "/etc/ferry/tls/ca.pem"          # required for [control] unless insecure_plaintext,
//! cert = "/etc/ferry/tls/site-b.pem"    # and for [sites] reached over TLS (it is the
//! key = "/etc/ferry/tls/site-b.key"     # client certificate there); key mode 0600
//!
//! [storage_classes]                     # more places for replicas ("standard" is data_dir)
//! ssd = "/srv/ferry-ssd"
//!
//! [sites.eu-west]                       # peer sites: reverse replication goes there
//! data = "10.0.0.5:7420"                # its standby's data address
//! control = "10.0.0.5:7421"             # its control API
//! token_file = "/etc/ferry/keys/eu-west.token"  # its control API's token; mode 0600
//! insecure_plaintext = false            # true: plain HTTP to it, loopback addresses only
//!
//! [[servers]]                           # static servers: replicate as soon as they connect
//! id = "web-1"
//! [[servers]]
//! id = "db-1"
//! retention = { interval_hours = 4, keep = 12 }
//! ```

use crate::keyfile;
use anyhow::{Context, Result, bail};
use ferry_site::control::Control;
use ferry_site::scripts::{DEFAULT_SCRIPTS_DIR, ScriptsDir};
use ferry_standby::log::{MAX_SEGMENT_SIZE, MIN_SEGMENT_SIZE};
use ferry_standby::receiver::{ServiceConfig, Standby};
use ferry_standby::retention::Policy;
use ferry_wire::ServerId;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Run the standby service: receive, verify and store agents' sealed extents.
///
/// Example: `ferry standby --config /etc/ferry/standby.toml`
/// or: `ferry standby --data-dir /srv/ferry --listen 0.0.0.0:7420 --key pair.key --server web-1`
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// TOML config file (see docs/standby.md).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Directory holding the servers' logs (overrides the file's data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address to listen on, e.g. 0.0.0.0:7420 (overrides the file's listen).
    #[arg(long)]
    listen: Option<String>,
    /// Standby key file (`ferry keygen --from pair.key --standby`): ingest keys only.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Recovery key file (the pair key, or a server's recovery key), for drills,
    /// failovers and restores; without it this standby can read no replica.
    #[arg(long)]
    recovery_key: Option<PathBuf>,
    /// Allow this server to connect (repeatable; adds to the file's [[servers]]).
    #[arg(long = "server")]
    servers: Vec<ServerId>,
    /// Segment size in MiB (overrides the file's segment_size_mib).
    #[arg(long)]
    segment_size_mib: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    key_file: Option<PathBuf>,
    recovery_key_file: Option<PathBuf>,
    segment_size_mib: Option<u64>,
    clean_interval_minutes: Option<u64>,
    #[serde(default)]
    retention: Policy,
    #[serde(default)]
    servers: Vec<ServerEntry>,
    control: Option<ControlConfig>,
    #[serde(default)]
    storage_classes: HashMap<String, PathBuf>,
    #[serde(default)]
    sites: HashMap<String, SiteConfig>,
    scripts_dir: Option<PathBuf>,
    qemu_accel: Option<String>,
    volumes_dir: Option<PathBuf>,
    tls: Option<ferry_tls::TlsFiles>,
    /// The data link in plain TCP (loopback only): no [tls] needed for it.
    #[serde(default)]
    insecure_plaintext: bool,
    /// Sites whose certificates may replicate any server back (reverse agents).
    /// Default: the names of [sites].
    peer_sites: Option<Vec<String>>,
}

/// A peer site (`[sites.NAME]`): reverse replication ships there and is driven there.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SiteConfig {
    /// Its standby's data address (host:port), where the reverse agent sends.
    pub data: String,
    /// Its standby's control API (host:port).
    pub control: String,
    /// The token of its control API (mode 0600).
    pub token_file: PathBuf,
    /// Plain HTTP to its control API (loopback addresses only). Default false: HTTPS,
    /// with this standby's `[tls]` certificate as client certificate.
    #[serde(default)]
    pub insecure_plaintext: bool,
}

/// The `[control]` section: where the control API listens and its token.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ControlConfig {
    #[serde(default = "default_control")]
    pub listen: String,
    pub token_file: PathBuf,
    /// Serve plain HTTP instead of HTTPS; allowed only on a loopback listen. Default
    /// false: HTTPS with the `[tls]` files (required then).
    #[serde(default)]
    pub insecure_plaintext: bool,
}

fn default_control() -> String {
    crate::api::DEFAULT_CONTROL.to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerEntry {
    id: ServerId,
    retention: Option<Policy>,
}

pub(crate) fn run(args: Args) -> Result<()> {
    let Settings {
        service: mut config,
        key_file,
        recovery_key_file,
        control,
        scripts: scripts_dir,
        qemu_accel,
        volumes,
        tls: link_tls,
        insecure_plaintext,
    } = load_config(args)?;
    let api = match &control {
        Some((c, _, tls)) => {
            let token = keyfile::load_token(&c.token_file)?;
            let tls = match tls {
                Some(files) if !c.insecure_plaintext => Some(
                    files
                        .server_config_client_optional()
                        .context("cannot serve the control API over TLS")?,
                ),
                _ => {
                    tracing::warn!(
                        listen = %c.listen,
                        "the control API is plain HTTP (insecure_plaintext): loopback only"
                    );
                    None
                }
            };
            let listener = std::net::TcpListener::bind(&c.listen)
                .with_context(|| format!("cannot listen for the control API on {}", c.listen))?;
            Some((listener, tls, token))
        }
        None => None,
    };
    let keys = keyfile::load_standby(&key_file)?;
    config.tls = match (&link_tls, insecure_plaintext) {
        (_, true) => ferry_tls::LinkListen::PlaintextLoopback,
        (Some(files), false) => ferry_tls::LinkListen::Tls(
            files
                .server_config_client_required()
                .context("cannot serve the data link over TLS")?,
        ),
        (None, false) => bail!(
            "the data link on {} is TLS only, and the config has no [tls]: {TLS_SETUP}; or, \
             on a loopback listen only, set insecure_plaintext = true",
            config.listen
        ),
    };
    let control_plane = Arc::new(
        Control::open(&config.data_dir, config.storage_classes.clone())
            .context("cannot open the site's catalogue")?,
    );
    control_plane.set_scripts_dir(scripts_dir);
    control_plane.set_qemu_accel(&qemu_accel);
    control_plane.set_volumes(volumes);
    // Drills and failovers rebuild points: the recovery key file is read then, and the
    // keys live only as long as that rebuild.
    if let Some(path) = recovery_key_file {
        control_plane.set_key_loader(Box::new(move |server| {
            keyfile::load_recovery(&path, server).map_err(|e| format!("{e:#}"))
        }));
    }
    if let Some((_, sites, tls)) = control {
        control_plane.set_reverse_tools(ferry_site::control::ReverseTools {
            ferry: std::env::current_exe().context("cannot find the ferry executable")?,
            standby_key: keys.clone(),
            pin_root: PathBuf::from("/sys/fs/bpf"),
            peers: Box::new(crate::api::client::HttpPeers { sites, tls }),
            link_tls: (!insecure_plaintext).then_some(link_tls).flatten(),
        });
        control_plane
            .watch_reverse_agents()
            .context("cannot start following the reverse agents")?;
    }
    config.control = control_plane.clone();
    let standby = Standby::bind(config, keys)?;
    let mut status = format!("listening on {}", standby.local_addr()?);
    if let Some((listener, tls, token)) = api {
        status += &format!("; control API on {}", listener.local_addr()?);
        let control = control_plane;
        std::thread::Builder::new()
            .name("ferry-api".into())
            .spawn(move || {
                if let Err(e) = crate::api::server::serve(listener, tls, control, token) {
                    tracing::error!(error = %e, "the control API stopped");
                }
            })
            .context("cannot start the control API")?;
    } else {
        tracing::info!("no [control] section: the control API is not served");
    }
    // Scripts and tests wait for this line (stdout) to know the service is up; systemd
    // waits for the notification.
    println!("{status}");
    crate::sd_notify::ready_or_warn(&status);
    standby.run();
    Ok(())
}

/// Reads the config file (if any) and the flags, and checks every setting; returns the
/// service's config and the key file to load.
/// The `[control]` section, the peer sites it drives, and the site's `[tls]` files.
pub(crate) type ControlSettings = (
    ControlConfig,
    HashMap<String, SiteConfig>,
    Option<ferry_tls::TlsFiles>,
);

/// Everything `ferry standby` runs with, checked; the files it names are read at start.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) service: ServiceConfig,
    /// The standby key file.
    pub(crate) key_file: PathBuf,
    /// The recovery key file, if any.
    pub(crate) recovery_key_file: Option<PathBuf>,
    pub(crate) control: Option<ControlSettings>,
    pub(crate) scripts: ScriptsDir,
    /// The qemu launcher's accelerators (one of [`ferry_site::instance::QEMU_ACCELS`]).
    pub(crate) qemu_accel: String,
    /// This host's virtual machines' disks (`volumes_dir`).
    pub(crate) volumes: ferry_site::original_disks::Volumes,
    /// The `[tls]` table (the data link and the control API).
    pub(crate) tls: Option<ferry_tls::TlsFiles>,
    /// The data link in plain TCP, loopback only.
    pub(crate) insecure_plaintext: bool,
}

pub(crate) fn load_config(args: Args) -> Result<Settings> {
    let file: FileConfig = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?;
            toml::from_str(&text)
                .with_context(|| format!("config file {} is not valid", path.display()))?
        }
        None => FileConfig::default(),
    };
    let data_dir = args
        .data_dir
        .or(file.data_dir)
        .context("no data directory: set data_dir in the config file or pass --data-dir")?;
    let listen = args
        .listen
        .or(file.listen)
        .context("no listen address: set listen in the config file or pass --listen")?;
    let key_file = args
        .key
        .or(file.key_file)
        .context("no key file: set key_file in the config file or pass --key")?;
    let recovery_key_file = args.recovery_key.or(file.recovery_key_file);
    let segment_mib = args
        .segment_size_mib
        .or(file.segment_size_mib)
        .unwrap_or(64);
    let segment_size = segment_mib.saturating_mul(1 << 20);
    if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&segment_size) {
        bail!(
            "segment_size_mib is {segment_mib}; it must be {} to {}",
            MIN_SEGMENT_SIZE >> 20,
            MAX_SEGMENT_SIZE >> 20
        );
    }
    let clean_minutes = file.clean_interval_minutes.unwrap_or(10);
    if !(1..=10_080).contains(&clean_minutes) {
        bail!("clean_interval_minutes is {clean_minutes}; it must be 1 to 10080");
    }
    file.retention
        .check()
        .context("the config file's [retention] is not valid")?;
    let mut servers = HashMap::new();
    for entry in file.servers {
        let policy = entry.retention.unwrap_or(file.retention);
        policy
            .check()
            .with_context(|| format!("retention of server {}", entry.id))?;
        if servers.insert(entry.id.clone(), policy).is_some() {
            bail!("server {} is listed twice in the config file", entry.id);
        }
    }
    for id in args.servers {
        servers.entry(id).or_insert(file.retention);
    }
    if servers.is_empty() && file.control.is_none() {
        tracing::warn!(
            "no servers can connect: add [[servers]] to the config file, pass --server, or \
             serve the control API ([control]) and add them with `ferry server add`"
        );
    }
    for (name, dir) in &file.storage_classes {
        ferry_wire::ids::validate_name(name)
            .with_context(|| format!("storage class {name:?} of the config file"))?;
        if !dir.is_absolute() {
            bail!(
                "storage class {name}: {} is not an absolute path",
                dir.display()
            );
        }
    }
    if let Some(c) = &file.control
        && c.listen.parse::<std::net::SocketAddr>().is_err()
    {
        bail!(
            "[control] listen is {:?}; it must be an address:port such as 127.0.0.1:7421",
            c.listen
        );
    }

    let scripts_dir = file
        .scripts_dir
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SCRIPTS_DIR));
    if !scripts_dir.is_absolute() {
        bail!(
            "scripts_dir is {}; it must be an absolute path (default {DEFAULT_SCRIPTS_DIR})",
            scripts_dir.display()
        );
    }
    let qemu_accel = file
        .qemu_accel
        .clone()
        .unwrap_or_else(|| ferry_site::instance::DEFAULT_QEMU_ACCEL.to_owned());
    if !ferry_site::instance::QEMU_ACCELS.contains(&qemu_accel.as_str()) {
        bail!(
            "qemu_accel is {qemu_accel:?}; it must be one of {:?}",
            ferry_site::instance::QEMU_ACCELS
        );
    }
    if let Some(dir) = &file.volumes_dir
        && !dir.is_absolute()
    {
        bail!(
            "volumes_dir is {}; it must be an absolute path",
            dir.display()
        );
    }
    if let Some(tls) = &file.tls {
        tls.validate()
            .context("the config file's [tls] is not valid")?;
    }
    if file.insecure_plaintext {
        // The data link's own refusal (plain TCP, records and the challenge–response in
        // clear), not the control API's (plain HTTP and its token).
        let addr = listen.parse::<std::net::SocketAddr>().with_context(|| {
            format!(
                "insecure_plaintext: the data link may go without TLS only on a loopback \
                 listen written as an address (e.g. 127.0.0.1:7420), not {listen}"
            )
        })?;
        ferry_tls::LinkListen::PlaintextLoopback
            .check(addr)
            .context("insecure_plaintext (the data link)")?;
    }
    if let Some(c) = &file.control {
        check_control_tls(c, file.tls.as_ref())?;
    }
    for (name, site) in &file.sites {
        if site.insecure_plaintext {
            crate::api::client::check_plaintext_address(&site.control)
                .with_context(|| format!("[sites.{name}] insecure_plaintext"))?;
        } else if file.tls.is_none() {
            bail!(
                "[sites.{name}] is reached over HTTPS with this site's certificate, and the \
                 config has no [tls]: {TLS_SETUP}"
            );
        }
    }

    let mut config = ServiceConfig::new(data_dir, listen);
    config.segment_size = segment_size;
    config.servers = servers;
    config.clean_interval = Duration::from_secs(clean_minutes * 60);
    config.storage_classes = file.storage_classes;
    config.peer_sites = match file.peer_sites {
        Some(names) => names.into_iter().collect(),
        None => file.sites.keys().cloned().collect(),
    };
    Ok(Settings {
        service: config,
        key_file,
        recovery_key_file,
        control: file.control.map(|c| (c, file.sites, file.tls.clone())),
        scripts: ScriptsDir::new(scripts_dir),
        qemu_accel,
        volumes: ferry_site::original_disks::Volumes::new(file.volumes_dir),
        tls: file.tls,
        insecure_plaintext: file.insecure_plaintext,
    })
}

/// How to give a site its certificate, for refusals.
const TLS_SETUP: &str = "make the site pair's CA once with `ferry tls init --dir \
    /etc/ferry/tls`, issue this site a certificate with `ferry tls issue --dir \
    /etc/ferry/tls --name SITE --san ADDRESS` (ADDRESS: the host or IP clients connect \
    to), and set [tls] ca, cert and key in the config (docs/api.md)";

/// The control API is HTTPS, or plain HTTP on loopback when asked explicitly.
fn check_control_tls(c: &ControlConfig, tls: Option<&ferry_tls::TlsFiles>) -> Result<()> {
    let loopback = c
        .listen
        .parse::<std::net::SocketAddr>()
        .is_ok_and(|a| ferry_tls::is_loopback(a.ip()));
    match (c.insecure_plaintext, tls) {
        (true, _) if !loopback => bail!(
            "[control] insecure_plaintext is allowed only on a loopback listen, not on {}: \
             the token would cross the network in clear; remove it and serve HTTPS: \
             {TLS_SETUP}",
            c.listen
        ),
        (true, _) | (false, Some(_)) => Ok(()),
        (false, None) => bail!(
            "the control API on {} is served over HTTPS only, and the config has no [tls]: \
             {TLS_SETUP}; or, on a loopback listen only, set insecure_plaintext = true in \
             [control]",
            c.listen
        ),
    }
}
