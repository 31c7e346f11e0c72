//! Fixtures for end-to-end tests on real loop devices and filesystems. Every resource is
//! a guard that releases itself on drop (loop devices detached, mounts unmounted), so a
//! failing test cleans up too. Tests that need root say so by name and fail; they never
//! skip silently.

#![allow(
    dead_code,
    reason = "each test binary uses a different subset of the fixtures"
)]

pub(crate) mod console;
pub(crate) mod guest;
pub(crate) mod relay;

use std::path::{Path, PathBuf};
use std::process::Command;

/// Fails the test, naming the capability, unless running as root.
pub(crate) fn require_root(what: &str) {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "{what} needs root (loop devices and mounts); run the tests as root, as CI does"
    );
}

/// A TCP connection to `to` from the address `from` (any port): attackers in tests
/// come from addresses of their own (127.0.0.2, …), as they would in the field.
pub(crate) fn connect_from(
    from: std::net::Ipv4Addr,
    to: std::net::SocketAddr,
) -> std::io::Result<std::net::TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&std::net::SocketAddr::from((from, 0)).into())?;
    socket.connect(&to.into())?;
    Ok(socket.into())
}

/// Runs a command, panicking with its output if it fails; returns its stdout.
pub(crate) fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (is it installed?): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A loop device over a file; detached on drop.
#[derive(Debug)]
pub(crate) struct LoopDevice {
    pub(crate) path: PathBuf,
}

impl LoopDevice {
    /// Creates a sparse file of `size` bytes at `file` and attaches it.
    pub(crate) fn new_sparse(file: &Path, size: u64) -> Self {
        std::fs::File::create(file)
            .and_then(|f| f.set_len(size))
            .expect("creating a sparse file");
        Self::attach(file, false)
    }

    /// Attaches an existing file, read-only if asked.
    pub(crate) fn attach(file: &Path, read_only: bool) -> Self {
        Self::attach_with(file, if read_only { &["--read-only"] } else { &[] })
    }

    /// Creates a sparse file and attaches it with direct I/O to the backing file: reads
    /// and writes then run concurrently, as on a real disk, instead of one after another
    /// through the page cache.
    pub(crate) fn new_sparse_direct(file: &Path, size: u64) -> Self {
        std::fs::File::create(file)
            .and_then(|f| f.set_len(size))
            .expect("creating a sparse file");
        Self::attach_with(file, &["--direct-io=on"])
    }

    fn attach_with(file: &Path, options: &[&str]) -> Self {
        let mut args = vec!["--find", "--show"];
        args.extend_from_slice(options);
        let file = file.to_str().expect("utf-8 path");
        args.push(file);
        let path = run("losetup", &args).trim().to_owned();
        assert!(
            path.starts_with("/dev/loop"),
            "losetup gave {path:?}: loop devices unavailable?"
        );
        let device = Self {
            path: PathBuf::from(path),
        };
        // A partition left by an earlier user of this device number (a crashed run).
        device.drop_partitions();
        device
    }

    pub(crate) fn path_str(&self) -> &str {
        self.path.to_str().expect("utf-8 path")
    }

    /// Adds partition `n` (`START` and `SECTORS` in 512-byte sectors) with BLKPG: this
    /// kernel does not scan loop devices' partition tables. Returns its device path.
    pub(crate) fn add_partition(&self, n: u32, start: u64, sectors: u64) -> String {
        let n = n.to_string();
        run(
            "addpart",
            &[
                self.path_str(),
                &n,
                &start.to_string(),
                &sectors.to_string(),
            ],
        );
        let part = format!("{}p{n}", self.path_str());
        // devtmpfs makes the node at once; udev may take a moment more.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !Path::new(&part).exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        part
    }

    /// Partitions added with BLKPG outlive the detach; they must go first, or the next
    /// file attached to this device shows them (and an addpart there fails, busy).
    fn drop_partitions(&self) {
        let name = self
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let Ok(entries) = std::fs::read_dir(Path::new("/sys/block").join(name)) else {
            return;
        };
        for e in entries.flatten() {
            let part = e.file_name().to_string_lossy().into_owned();
            if let Some(n) = part.strip_prefix(&format!("{name}p")) {
                let _ = Command::new("delpart").arg(&self.path).arg(n).status();
            }
        }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        self.drop_partitions();
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
    }
}

/// A mounted filesystem; unmounted on drop.
#[derive(Debug)]
pub(crate) struct Mount {
    pub(crate) target: PathBuf,
}

impl Mount {
    pub(crate) fn new(device: &str, target: &Path, options: &str) -> Self {
        std::fs::create_dir_all(target).expect("creating the mount point");
        run(
            "mount",
            &["-o", options, device, target.to_str().expect("utf-8 path")],
        );
        Self {
            target: target.to_owned(),
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.target)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.target).status();
        }
    }
}

/// Runs the `ferry` binary under test; returns stdout, panicking with stderr on failure.
pub(crate) fn ferry(args: &[&str]) -> String {
    run(env!("CARGO_BIN_EXE_ferry"), args)
}

/// A TCP port free on loopback now (for a service the test starts next).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A deterministic pseudo-random sequence (xorshift64*), so failures reproduce.
#[derive(Debug, Clone)]
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..hi`.
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }

    pub(crate) fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// A buffer aligned for O_DIRECT (4 KiB), without unsafe: an over-allocated Vec and
/// the aligned window inside it.
#[derive(Debug)]
pub(crate) struct AlignedBuf {
    raw: Vec<u8>,
    offset: usize,
    len: usize,
}

impl AlignedBuf {
    pub(crate) fn new(len: usize) -> Self {
        let raw = vec![0u8; len + 4096];
        let offset = raw.as_ptr().align_offset(4096);
        Self { raw, offset, len }
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.raw[self.offset..self.offset + self.len]
    }

    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.offset..self.offset + self.len]
    }
}

/// Opens a block device for O_DIRECT reads and writes.
pub(crate) fn open_direct(path: &Path) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .unwrap_or_else(|e| panic!("opening {} with O_DIRECT: {e}", path.display()))
}

/// A `ferry standby` process; killed (SIGKILL) and reaped on drop. Its stderr (the log)
/// is collected for assertions.
#[derive(Debug)]
pub(crate) struct StandbyProcess {
    child: std::process::Child,
    pub(crate) addr: String,
    /// The pki beside the config (made by [`new_key`]): agents' certificates.
    pki: PathBuf,
    /// The control API's address, when the config has a `[control]` section.
    pub(crate) control: Option<String>,
    log: Log,
}

/// Log lines (stderr) of a child process, collected by a thread.
type Log = std::sync::Arc<std::sync::Mutex<String>>;

fn log_text(log: &Log) -> String {
    log.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Starts `ferry ARGS` with stdout and stderr piped; collects stderr into a log and
/// returns the child, the log and the first line of stdout (its readiness line).
fn spawn_ferry(args: &[&str]) -> (std::process::Child, Log, String) {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting ferry {args:?}: {e}"));
    let log = Log::default();
    let stderr = child.stderr.take().expect("piped stderr");
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut log = sink.lock().unwrap_or_else(|e| e.into_inner());
            log.push_str(&line);
            log.push('\n');
        }
    });
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("piped stdout"))
        .read_line(&mut first)
        .unwrap_or_else(|e| panic!("reading the stdout of ferry {args:?}: {e}"));
    (child, log, first)
}

impl StandbyProcess {
    /// Starts `ferry standby --config CONFIG` and waits for it to listen.
    pub(crate) fn start(config: &Path) -> Self {
        let (mut child, log, first) =
            spawn_ferry(&["standby", "--config", config.to_str().expect("utf-8 path")]);
        let (first, control) = match first.trim().split_once("; control API on ") {
            Some((data, control)) => (data.to_owned(), Some(control.to_owned())),
            None => (first.trim().to_owned(), None),
        };
        let Some(addr) = first.strip_prefix("listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            std::thread::sleep(std::time::Duration::from_millis(200));
            panic!(
                "ferry standby did not start: {first:?}; log: {}",
                log_text(&log)
            );
        };
        Self {
            addr: addr.to_owned(),
            pki: config.with_file_name("pki"),
            control,
            child,
            log,
        }
    }

    /// The log so far.
    pub(crate) fn log(&self) -> String {
        log_text(&self.log)
    }

    /// Waits until the log contains `needle`, panicking with the log after `timeout`.
    pub(crate) fn wait_for_log(&self, needle: &str, timeout: std::time::Duration) {
        let start = std::time::Instant::now();
        while !self.log().contains(needle) {
            assert!(
                start.elapsed() < timeout,
                "the standby never logged {needle:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// kill -9, and reap.
    pub(crate) fn kill(mut self) {
        self.kill_now();
    }

    fn kill_now(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for StandbyProcess {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// Writes a standby config file for `data_dir` and the allowed `servers`: its key is the
/// standby key beside the pair key `key` (see [`new_key`]), its recovery key the pair key,
/// its `[tls]` the certificate `standby` of the pki beside the key.
pub(crate) fn standby_config(
    path: &Path,
    data_dir: &Path,
    key: &Path,
    servers: &[&str],
    segment_mib: u64,
) {
    standby_config_as(path, data_dir, key, servers, segment_mib, "standby");
}

/// [`standby_config`] with the certificate `cert` (made by [`new_key`]); the top-level
/// keys come first, then `[tls]` and the `[[servers]]`, so a caller may prepend more
/// top-level keys or append more tables.
pub(crate) fn standby_config_as(
    path: &Path,
    data_dir: &Path,
    key: &Path,
    servers: &[&str],
    segment_mib: u64,
    cert: &str,
) {
    let mut text = format!(
        "data_dir = {:?}\nlisten = \"127.0.0.1:0\"\nkey_file = {:?}\nrecovery_key_file = {:?}\n\
         segment_size_mib = {segment_mib}\n",
        data_dir.to_str().expect("utf-8 path"),
        standby_key(key).to_str().expect("utf-8 path"),
        key.to_str().expect("utf-8 path"),
    );
    text.push_str(&tls_section(&pki_of(key), cert));
    for s in servers {
        text.push_str(&format!("\n[[servers]]\nid = \"{s}\"\n"));
    }
    std::fs::write(path, text).expect("writing the standby config");
}

/// A site's standby config with its control API: [`standby_config_as`] (certificate
/// `cert`) taking data on `listen`, the lines `top` first (scripts_dir, peer_sites …),
/// `[control]` on `127.0.0.1:control_port` (0: any) with `token`, and the tables
/// `tables` last ([sites], [storage_classes]).
#[expect(
    clippy::too_many_arguments,
    reason = "one line per setting of the config, each named at the call"
)]
pub(crate) fn site_config(
    path: &Path,
    data_dir: &Path,
    key: &Path,
    cert: &str,
    segment_mib: u64,
    listen: &str,
    control_port: u16,
    token: &Path,
    top: &str,
    tables: &str,
) {
    standby_config_as(path, data_dir, key, &[], segment_mib, cert);
    let text = std::fs::read_to_string(path).expect("the standby config");
    std::fs::write(
        path,
        format!(
            "{top}{}\n[control]\nlisten = \"127.0.0.1:{control_port}\"\ntoken_file = {:?}\n\n\
             {tables}",
            text.replace("127.0.0.1:0", listen),
            token.to_str().expect("utf-8 path"),
        ),
    )
    .expect("writing the standby config");
}

/// The pki (CA and certificates, [`new_pki`]) beside the pair key `pair`.
pub(crate) fn pki_of(pair: &Path) -> PathBuf {
    pair.with_file_name("pki")
}

/// The names [`new_key`] issues certificates for (all valid for 127.0.0.1).
pub(crate) const TEST_CERTS: &[&str] = &["standby", "web-1", "site-b", "zone-a"];

/// Makes a site pair's CA in `dir` (`ferry tls init`) and, for each of `names`, a
/// certificate also valid for 127.0.0.1 (`ferry tls issue --san 127.0.0.1`).
pub(crate) fn new_pki(dir: &Path, names: &[&str]) {
    ferry(&["tls", "init", "--dir", dir.to_str().expect("utf-8 path")]);
    for name in names {
        new_cert(dir, name);
    }
}

/// Issues the certificate `name` (also valid for 127.0.0.1) from the CA in `dir`.
pub(crate) fn new_cert(dir: &Path, name: &str) {
    let d = dir.to_str().expect("utf-8 path");
    ferry(&[
        "tls",
        "issue",
        "--dir",
        d,
        "--name",
        name,
        "--san",
        "127.0.0.1",
    ]);
}

/// The TLS files of `name` in `pki` (made by [`new_pki`]): the CA and its certificate.
pub(crate) fn tls_files(pki: &Path, name: &str) -> ferry_tls::TlsFiles {
    ferry_tls::TlsFiles {
        ca: pki.join("ca.pem"),
        cert: pki.join(format!("{name}.pem")),
        key: pki.join(format!("{name}.key")),
    }
}

/// The `[tls]` table of a config naming [`tls_files`].
pub(crate) fn tls_section(pki: &Path, name: &str) -> String {
    let files = tls_files(pki, name);
    let file = |f: &Path| f.to_str().expect("utf-8 path").to_owned();
    format!(
        "\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
        file(&files.ca),
        file(&files.cert),
        file(&files.key),
    )
}

/// web-1's agent config for `disks`, as the agent's own type writes it: its host key and
/// certificate from beside `pair` ([`host_key`], [`pki_of`]), no scheduled points. Tests
/// change what they need, then [`write_agent_config`].
pub(crate) fn agent_file(
    pair: &Path,
    standby: &str,
    disks: &[&str],
    state: &Path,
    pins: &str,
) -> ferry_replicator::config_file::AgentFile {
    let mut file = ferry_replicator::config_file::AgentFile::new(
        ferry_wire::ServerId::new("web-1").expect("a valid name"),
        standby.to_owned(),
        host_key(pair, "web-1"),
    );
    file.disks = Some(disks.iter().map(PathBuf::from).collect());
    file.state_dir = Some(state.to_owned());
    file.pin_dir = Some(PathBuf::from(pins));
    file.point_interval_minutes = Some(0);
    file.tls = Some(tls_files(&pki_of(pair), "web-1"));
    file
}

/// Writes an agent config file.
pub(crate) fn write_agent_config(path: &Path, file: &ferry_replicator::config_file::AgentFile) {
    let text = file.to_toml().expect("an agent config serializes");
    std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// Panics unless the image at `got` equals the disk at `want` byte for byte, naming the
/// first byte (and its 4 KiB grain) that differs; `context` says when.
pub(crate) fn assert_same_bytes(got: &Path, want: &Path, context: &str) {
    let want = std::fs::read(want)
        .unwrap_or_else(|e| panic!("{context}: reading {}: {e}", want.display()));
    let got =
        std::fs::read(got).unwrap_or_else(|e| panic!("{context}: reading {}: {e}", got.display()));
    assert_eq!(
        got.len(),
        want.len(),
        "{context}: the rebuilt disk has another size (a rewritten registration?)"
    );
    if let Some(at) = got.iter().zip(&want).position(|(a, b)| a != b) {
        panic!(
            "{context}: the rebuilt disk differs from the source first at byte {at} (grain at {})",
            at / 4096 * 4096
        );
    }
}

/// Runs `ferry keygen --out PATH` (a pair key), derives beside it a standby key
/// ([`standby_key`]) and the host key of web-1 ([`host_key`]), makes a pki beside it
/// ([`pki_of`], certificates [`TEST_CERTS`]), and returns web-1's keys.
pub(crate) fn new_key(path: &Path) -> ferry_wire::HostKeys {
    let utf8 = |p: &Path| p.to_str().expect("utf-8 path").to_owned();
    ferry(&["keygen", "--out", &utf8(path)]);
    new_pki(&pki_of(path), TEST_CERTS);
    ferry(&[
        "keygen",
        "--from",
        &utf8(path),
        "--standby",
        "--out",
        &utf8(&standby_key(path)),
    ]);
    host_keys(path, "web-1")
}

/// The standby key file beside the pair key `pair`.
pub(crate) fn standby_key(pair: &Path) -> PathBuf {
    pair.with_file_name("standby.key")
}

/// The host key file of `server` beside the pair key `pair`, derived on first use.
pub(crate) fn host_key(pair: &Path, server: &str) -> PathBuf {
    let path = pair.with_file_name(format!("{server}.key"));
    if !path.exists() {
        let utf8 = |p: &Path| p.to_str().expect("utf-8 path").to_owned();
        ferry(&[
            "keygen",
            "--from",
            &utf8(pair),
            "--host",
            server,
            "--out",
            &utf8(&path),
        ]);
    }
    path
}

/// The keys of `server`'s host key (derived from the pair key `pair`).
pub(crate) fn host_keys(pair: &Path, server: &str) -> ferry_wire::HostKeys {
    let text = std::fs::read_to_string(host_key(pair, server)).expect("reading a host key");
    ferry_wire::KeyFile::from_text(&text)
        .and_then(ferry_wire::KeyFile::into_host)
        .expect("keygen writes a valid host key")
        .keys()
}

impl StandbyProcess {
    /// An agent's link to this standby for `server`, retrying while it starts up.
    pub(crate) fn link(
        &self,
        server: &str,
        keys: &ferry_wire::HostKeys,
    ) -> ferry_replicator::link::Link {
        use ferry_replicator::link::{Link, LinkConfig};
        let config = LinkConfig {
            tls: self.tls_as(server),
            ..LinkConfig::default()
        };
        let server = ferry_wire::ServerId::new(server).expect("a valid server name");
        let start = std::time::Instant::now();
        loop {
            match Link::connect(self.addr.as_str(), &server, &keys.ingest.auth, &config) {
                Ok(link) => return link,
                Err(e)
                    if e.is_retryable() && start.elapsed() < std::time::Duration::from_secs(20) =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => panic!("cannot connect to the standby at {}: {e}", self.addr),
            }
        }
    }
}

impl StandbyProcess {
    /// TLS to this standby with the certificate `name` of its pki (issued if missing).
    pub(crate) fn tls_as(&self, name: &str) -> ferry_tls::LinkTls {
        let files = tls_files(&self.pki, name);
        if !files.cert.exists() {
            new_cert(&self.pki, name);
        }
        ferry_tls::LinkTls::Tls {
            config: files.client_config().expect("the test pki loads"),
            server_name: "127.0.0.1".try_into().expect("an IP server name"),
        }
    }
}

/// Runs `ferry rebuild` of server web-1 (not asserting success); extra args appended.
pub(crate) fn rebuild_web1(
    data_dir: &Path,
    point: &str,
    key: &Path,
    out: &Path,
    extra: &[&str],
) -> std::process::Output {
    let utf8 = |p: &Path| p.to_str().expect("utf-8 path").to_owned();
    let mut args = vec![
        "rebuild".to_owned(),
        "--data-dir".into(),
        utf8(data_dir),
        "--server".into(),
        "web-1".into(),
        "--point".into(),
        point.into(),
        "--key".into(),
        utf8(key),
        "--out".into(),
        utf8(out),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(&args)
        .output()
        .expect("running ferry rebuild")
}

/// A bpffs directory for an agent's pinned tracker, unique to the test; the tracker
/// pinned there is detached on drop (after the agents that used it are gone).
#[derive(Debug)]
pub(crate) struct PinDir(pub(crate) PathBuf);

impl PinDir {
    pub(crate) fn new(name: &str) -> Self {
        Self(PathBuf::from(format!(
            "/sys/fs/bpf/ferry-test-{name}-{}",
            std::process::id()
        )))
    }

    pub(crate) fn path_str(&self) -> &str {
        self.0.to_str().expect("utf-8 path")
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["track", "--detach", "--pin-dir"])
            .arg(&self.0)
            .output();
    }
}

/// A `ferry agent --config CONFIG` process; killed (SIGKILL) and reaped on drop.
#[derive(Debug)]
pub(crate) struct AgentProcess {
    child: Option<std::process::Child>,
    pub(crate) state_dir: PathBuf,
    log: Log,
}

impl AgentProcess {
    /// Starts the agent and waits until it tracks (its "tracking" line).
    pub(crate) fn start(config: &Path, state_dir: &Path) -> Self {
        let (child, log, first) =
            spawn_ferry(&["agent", "--config", config.to_str().expect("utf-8 path")]);
        let agent = Self {
            child: Some(child),
            state_dir: state_dir.to_owned(),
            log,
        };
        if first.trim() != "tracking" {
            std::thread::sleep(std::time::Duration::from_millis(300));
            panic!(
                "ferry agent did not start: {first:?}; log:\n{}",
                agent.log()
            );
        }
        agent
    }

    pub(crate) fn log(&self) -> String {
        log_text(&self.log)
    }

    /// Whether the process is still running (it has not exited).
    pub(crate) fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().is_ok_and(|status| status.is_none()))
    }

    /// The agent's status file.
    pub(crate) fn status(&self) -> ferry_replicator::status::Status {
        ferry_replicator::status::Status::load(&self.state_dir.join("status.json"))
            .expect("reading the agent's status")
    }

    /// Waits until `done(status)`, panicking with the status and log after `timeout`.
    pub(crate) fn wait_until(
        &self,
        what: &str,
        timeout: std::time::Duration,
        done: impl Fn(&ferry_replicator::status::Status) -> bool,
    ) -> ferry_replicator::status::Status {
        let start = std::time::Instant::now();
        loop {
            if let Ok(s) =
                ferry_replicator::status::Status::load(&self.state_dir.join("status.json"))
                && done(&s)
            {
                return s;
            }
            assert!(
                start.elapsed() < timeout,
                "the agent never reached {what}; status: {:?}\nlog:\n{}",
                ferry_replicator::status::Status::load(&self.state_dir.join("status.json")),
                self.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Waits until every write so far is acknowledged (nothing dirty, nothing unacked).
    pub(crate) fn wait_in_sync(&self, timeout: std::time::Duration) {
        use ferry_replicator::status::Phase;
        // The status is written every 0.5 s: wait for one written after now.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis();
        self.wait_until("realtime with no backlog", timeout, |s| {
            u128::from(s.updated_unix_ms) > now + 100
                && s.phase == Some(Phase::Realtime)
                && s.backlog_bytes == 0
        });
    }

    /// `ferry point create` against this agent; returns its JSON reply and whether it
    /// succeeded.
    pub(crate) fn create_point(
        &self,
        server: &str,
    ) -> (ferry_replicator::status::PointStatus, bool) {
        let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args([
                "agent",
                "point",
                "--server",
                server,
                "--state-dir",
                self.state_dir.to_str().expect("utf-8 path"),
                "--json",
            ])
            .output()
            .expect("running ferry point create");
        let point = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "ferry point create printed no JSON ({e}): {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (point, out.status.success())
    }

    /// SIGTERM and wait (the agent saves its state); returns the log.
    pub(crate) fn stop(mut self) -> String {
        if let Some(mut child) = self.child.take() {
            let pid = nix_pid(&child);
            // SAFETY: plain kill(2) on our own child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let _ = child.wait();
        }
        self.log()
    }

    /// kill -9 (no saved state) and reap.
    pub(crate) fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn nix_pid(child: &std::process::Child) -> libc::pid_t {
    libc::pid_t::try_from(child.id()).expect("a pid")
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Writes `count` files of `size` pseudo-random bytes under `dir`, fsynced; returns
/// their names and contents.
pub(crate) fn write_files(
    dir: &Path,
    prefix: &str,
    count: usize,
    size: usize,
    seed: u64,
) -> Vec<(PathBuf, Vec<u8>)> {
    let mut rng = Rng(seed);
    (0..count)
        .map(|i| {
            let path = dir.join(format!("{prefix}-{i}"));
            let mut data = vec![0u8; size];
            rng.fill(&mut data);
            let mut f = std::fs::File::create(&path).expect("create");
            std::io::Write::write_all(&mut f, &data).expect("write");
            f.sync_all().expect("fsync");
            (path, data)
        })
        .collect()
}

/// Removes what a test's operations may have left under its work directory `root`,
/// also when it failed half way: every process whose command line names it (standbys,
/// agents, qemu VMs the instances started), every mount below it, and every loop device
/// over a file in it but those in `keep` (the test's own guards detach those).
pub(crate) fn sweep(root: &Path, keep: &[&str]) {
    let root = root.to_string_lossy().into_owned();
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.flatten() {
            let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            let pid = p.file_name().to_string_lossy().parse::<i32>();
            if let Ok(pid) = pid
                && String::from_utf8_lossy(&cmdline).contains(&root)
                && pid != i32::try_from(std::process::id()).unwrap_or(0)
            {
                // SAFETY: kill(2) of a process this test started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for target in mounts.lines().filter_map(|l| l.split(' ').nth(1)) {
        if target.starts_with(&root) {
            let _ = std::process::Command::new("umount")
                .args(["-l", target])
                .status();
        }
    }
    let loops = run("losetup", &["-a"]);
    for line in loops.lines().filter(|l| l.contains(&root)) {
        if let Some(dev) = line.split(':').next()
            && !keep.contains(&dev)
        {
            let _ = std::process::Command::new("losetup")
                .args(["-d", dev])
                .status();
        }
    }
}
