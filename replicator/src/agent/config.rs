//! How the agent runs: every setting, with the defaults a config file may leave out.

use ferry_wire::ServerId;
use std::path::PathBuf;
use std::time::Duration;

/// How the agent runs (the `ferry agent` config file maps onto this).
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub server: ServerId,
    /// The standby's address (`host:port`).
    pub standby: String,
    /// Whole-disk block devices to protect.
    pub disks: Vec<PathBuf>,
    /// Status file, control socket and the tracker's saved state live here.
    pub state_dir: PathBuf,
    /// Where the tracker's BPF programs and maps are pinned (on bpffs).
    pub pin_dir: PathBuf,
    /// Time between scheduled points; `None`: only on demand.
    pub point_interval: Option<Duration>,
    /// Run before freezing / after thawing (`sh -c`); a failing pre-freeze hook fails the
    /// point (nothing is frozen).
    pub pre_freeze: Option<String>,
    pub post_thaw: Option<String>,
    /// Longest the filesystems may stay frozen for one attempt.
    pub max_freeze: Duration,
    /// Bytes per second on the link; `None`: unlimited.
    pub bandwidth: Option<u64>,
    /// Reconnect by itself after an interruption (else the agent stops with the error).
    pub auto_restart: bool,
    pub window_bytes: u64,
    /// Largest extent per record.
    pub extent_max: u64,
    /// Bytes read and sealed per batch.
    pub batch_bytes: u64,
    pub seal_threads: usize,
    pub zstd_level: i32,
    pub io_uring: bool,
    /// How the link runs: TLS (what a config file gives), or plain TCP to loopback.
    pub tls: ferry_tls::LinkTls,
}

impl AgentConfig {
    /// Defaults for everything but what identifies the server, its standby and disks.
    pub fn new(server: ServerId, standby: String, disks: Vec<PathBuf>, state_dir: PathBuf) -> Self {
        Self {
            server,
            standby,
            disks,
            state_dir,
            pin_dir: PathBuf::from("/sys/fs/bpf/ferry"),
            point_interval: Some(Duration::from_secs(3600)),
            pre_freeze: None,
            post_thaw: None,
            max_freeze: Duration::from_secs(5),
            bandwidth: None,
            auto_restart: true,
            window_bytes: 64 << 20,
            extent_max: 1 << 20,
            batch_bytes: 16 << 20,
            seal_threads: std::thread::available_parallelism().map_or(2, usize::from),
            zstd_level: ferry_wire::seal::DEFAULT_ZSTD_LEVEL,
            io_uring: true,
            tls: ferry_tls::LinkTls::PlaintextLoopback,
        }
    }

    pub fn status_path(&self) -> PathBuf {
        self.state_dir.join("status.json")
    }

    pub fn socket_path(&self) -> PathBuf {
        self.state_dir.join("agent.sock")
    }
}
