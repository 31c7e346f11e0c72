//! The agent end to end, as root: loop-device disks with ext4 mounted on them, a
//! `ferry standby` on loopback, `ferry agent` protecting the disk.
//!
//! - full copy → real time → points that rebuild byte-identical to the source; a clean
//!   agent restart resumes without a full copy;
//! - a standby kill -9 and a 30 s network cut (a TCP proxy the test controls): the agent
//!   resumes by itself, nothing acknowledged is lost, no full copy;
//! - an agent kill -9 mid-stream: the restarted agent catches up by digest, shipping
//!   only what differs, and the disk rebuilds identical;
//! - convergence: fio random writes with verification during the full copy (through an
//!   agent kill -9 in the middle of it) and real time, within the bandwidth limit, then a
//!   point identical to the disk;
//! - freeze safety: a failing hook and an unreachable standby fail the point, leave the
//!   filesystem writable, and replication continues;
//! - write order (DESIGN.md I5): every consistent point shows a prefix of dependent writes.

mod support;

use ferry_replicator::config_file::AgentFile;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support::*;

const WAIT: Duration = Duration::from_secs(90);

/// One protected disk, its standby and its agent's config, in a temporary directory.
struct Site {
    dir: tempfile::TempDir,
    key: PathBuf,
    data: PathBuf,
    standby_conf: PathBuf,
    agent_conf: PathBuf,
    state: PathBuf,
    /// Detaches the agent's pinned tracker when the test ends.
    pins: PinDir,
    mnt: PathBuf,
    disk: LoopDevice,
}

impl Site {
    /// A `size`-byte disk with ext4 (not mounted), a standby config listening on
    /// `listen`, and an agent config connecting to `connect` (as `change` leaves it).
    fn new(
        name: &str,
        size: u64,
        listen: &str,
        connect: &str,
        change: impl FnOnce(&mut AgentFile),
    ) -> Self {
        require_root("the agent's end-to-end tests");
        let dir = tempfile::tempdir().expect("tempdir");
        let p = |n: &str| dir.path().join(n);
        let key = p("pair.key");
        new_key(&key);
        let data = p("standby");
        let standby_conf = p("standby.toml");
        standby_config(&standby_conf, &data, &key, &["web-1"], 16);
        let text = std::fs::read_to_string(&standby_conf).expect("read config");
        std::fs::write(&standby_conf, text.replace("127.0.0.1:0", listen)).expect("write config");
        let disk = LoopDevice::new_sparse(&p("disk.img"), size);
        run("mkfs.ext4", &["-q", "-F", disk.path_str()]);
        let pins = PinDir::new(name);
        let state = p("agent");
        let agent_conf = p("agent.toml");
        let mut file = agent_file(&key, connect, &[disk.path_str()], &state, pins.path_str());
        change(&mut file);
        write_agent_config(&agent_conf, &file);
        Self {
            mnt: p("mnt"),
            dir,
            key,
            data,
            standby_conf,
            agent_conf,
            state,
            pins,
            disk,
        }
    }

    fn standby(&self) -> StandbyProcess {
        StandbyProcess::start(&self.standby_conf)
    }

    fn agent(&self) -> AgentProcess {
        AgentProcess::start(&self.agent_conf, &self.state)
    }

    fn mount(&self) -> Mount {
        Mount::new(self.disk.path_str(), &self.mnt, "rw")
    }

    /// Rebuilds `point` into a new image file and returns its path.
    fn rebuild(&self, point: &str) -> PathBuf {
        let out = self.dir.path().join(format!("rebuilt-{point}.img"));
        let result = rebuild_web1(&self.data, point, &self.key, &out, &[]);
        assert!(
            result.status.success(),
            "ferry rebuild --point {point} failed: {}",
            String::from_utf8_lossy(&result.stderr)
        );
        out
    }

    /// Panics unless the rebuilt image equals the disk byte for byte.
    fn assert_identical(&self, image: &Path) {
        assert_same_bytes(image, &self.disk.path, "rebuilt");
    }
}

#[test]
fn full_copy_then_realtime_and_points_rebuild_identical_and_a_clean_restart_resumes() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let site = Site::new("full", 128 << 20, &addr, &addr, |_| {});
    let before = {
        let _m = site.mount();
        write_files(&site.mnt, "before", 8, 1 << 20, 1)
    };
    let _standby = site.standby();
    let agent = site.agent();
    let s = agent.wait_until("the end of the full copy", WAIT, |s| {
        s.disks[0].full_total > 0 && s.disks[0].full_done == s.disks[0].full_total
    });
    assert_eq!(s.catch_ups, 1, "the first start copies the disk once");
    assert!(
        s.shipped_bytes >= 128 << 20,
        "the full copy read the whole disk: {s:?}"
    );
    agent.wait_in_sync(WAIT);

    let mounted = site.mount();
    let during = write_files(&site.mnt, "during", 40, 256 << 10, 2);
    let (point, ok) = agent.create_point("web-1");
    assert!(ok, "point failed: {point:?}\n{}", agent.log());
    assert!(
        point.consistent,
        "a frozen ext4 makes a consistent point: {point:?}"
    );
    assert_eq!(
        point.frozen,
        vec![site.mnt.display().to_string()],
        "{point:?}"
    );

    // The consistent point, mounted from its rebuild, holds every file written before it.
    let image = site.rebuild(&point.point.expect("an id").get().to_string());
    {
        let disk = LoopDevice::attach(&image, true);
        let m = Mount::new(disk.path_str(), &site.dir.path().join("check"), "ro,noload");
        for (path, data) in before.iter().chain(&during) {
            let name = path.file_name().expect("a name");
            let got = std::fs::read(m.target.join(name)).expect("a file in the point");
            assert!(
                got == *data,
                "{} differs in the point",
                name.to_string_lossy()
            );
        }
    }
    drop(mounted);

    // Unmounted, the disk is still: the latest point equals it byte for byte.
    let (_, ok) = agent.create_point("web-1");
    assert!(ok);
    site.assert_identical(&site.rebuild("latest"));

    // A clean restart (state saved, programs pinned) resumes without a full copy.
    let log = agent.stop();
    assert!(!log.contains("panicked"), "{log}");
    let _m = site.mount();
    write_files(&site.mnt, "after-restart", 2, 1 << 20, 3);
    let agent = site.agent();
    agent.wait_in_sync(WAIT);
    let s = agent.status();
    assert_eq!(
        s.catch_ups,
        0,
        "a clean restart needs no catch-up: {s:?}\n{}",
        agent.log()
    );
    assert!(
        s.shipped_bytes < 16 << 20,
        "only the changes travel after a restart, not the disk: {} bytes",
        s.shipped_bytes
    );
}

/// A TCP proxy the test controls: forwards to `target`; `cut` drops every connection
/// and refuses new ones for a while.
struct Proxy {
    port: u16,
    cut_until: Arc<std::sync::Mutex<Instant>>,
    generation: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("addr").port();
        let cut_until = Arc::new(std::sync::Mutex::new(Instant::now()));
        let generation = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (cut, generation_, stop_) = (cut_until.clone(), generation.clone(), stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop_.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                if Instant::now() < *cut.lock().expect("lock") {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                let mine = generation_.load(Ordering::SeqCst);
                for (mut from, mut to) in [
                    (
                        client.try_clone().expect("clone"),
                        server.try_clone().expect("clone"),
                    ),
                    (server, client),
                ] {
                    let generation = generation_.clone();
                    std::thread::spawn(move || {
                        from.set_read_timeout(Some(Duration::from_millis(200))).ok();
                        let mut buf = vec![0u8; 64 << 10];
                        loop {
                            if generation.load(Ordering::SeqCst) != mine {
                                break;
                            }
                            match from.read(&mut buf) {
                                Ok(0) => break,
                                Ok(n) => {
                                    if to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock
                                            | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => break,
                            }
                        }
                        let _ = from.shutdown(std::net::Shutdown::Both);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Self {
            port,
            cut_until,
            generation,
            stop,
        }
    }

    /// Drops every connection and refuses new ones for `d`.
    fn cut(&self, d: Duration) {
        *self.cut_until.lock().expect("lock") = Instant::now() + d;
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

#[test]
fn resumes_after_a_standby_kill_and_a_30s_network_cut_without_a_full_copy() {
    let standby_port = free_port();
    let standby_addr = format!("127.0.0.1:{standby_port}");
    let proxy = Proxy::start(standby_addr.clone());
    let site = Site::new(
        "resume",
        256 << 20,
        &standby_addr,
        &format!("127.0.0.1:{}", proxy.port),
        |_| {},
    );
    let standby = site.standby();
    let agent = site.agent();
    agent.wait_in_sync(WAIT);
    let after_full = agent.status().shipped_bytes;
    let mounted = site.mount();

    // Writes while the standby is killed and comes back on the same port.
    let writer = {
        let mnt = site.mnt.clone();
        std::thread::spawn(move || write_files(&mnt, "burst", 30, 1 << 20, 4))
    };
    std::thread::sleep(Duration::from_millis(300));
    standby.kill();
    std::thread::sleep(Duration::from_secs(2));
    let standby = site.standby();
    writer.join().expect("writer");
    agent.wait_in_sync(WAIT);

    // A 30 s network cut with writes during it.
    proxy.cut(Duration::from_secs(30));
    let during = write_files(&site.mnt, "cut", 10, 1 << 20, 5);
    std::thread::sleep(Duration::from_secs(5));
    let s = agent.status();
    assert_ne!(
        s.phase,
        Some(ferry_replicator::status::Phase::Realtime),
        "the agent noticed the cut: {s:?}"
    );
    agent.wait_in_sync(WAIT);
    let s = agent.status();
    assert_eq!(s.catch_ups, 1, "no full copy after the first: {s:?}");
    assert!(
        s.reconnects >= 2,
        "a reconnect after each interruption: {s:?}"
    );
    let resent = s.shipped_bytes - after_full;
    assert!(
        resent < 128 << 20,
        "40 MiB written; {resent} bytes shipped after the full copy: that is a copy of the disk"
    );
    assert!(!standby.log().contains("panicked"), "{}", standby.log());

    drop(mounted);
    let (point, ok) = agent.create_point("web-1");
    assert!(ok, "{point:?}\n{}", agent.log());
    let image = site.rebuild("latest");
    site.assert_identical(&image);
    drop(during);
}

#[test]
fn an_agent_killed_mid_stream_or_rebooted_catches_up_by_digest_without_a_full_copy() {
    const SIZE: u64 = 256 << 20;
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let site = Site::new("digest", SIZE, &addr, &addr, |_| {});
    {
        let _m = site.mount();
        write_files(&site.mnt, "before", 32, 1 << 20, 11);
    }
    let standby = site.standby();
    let agent = site.agent();
    agent.wait_in_sync(WAIT);
    let mounted = site.mount();

    // kill -9 while a burst is being written and shipped, then more writes while it is
    // down: the killed agent's dirty map is lost, the tracker's pins remain.
    let writer = {
        let mnt = site.mnt.clone();
        std::thread::spawn(move || write_files(&mnt, "burst", 24, 1 << 20, 12))
    };
    std::thread::sleep(Duration::from_millis(400));
    agent.kill();
    writer.join().expect("writer");
    write_files(&site.mnt, "while-down", 8, 1 << 20, 13);
    let agent = site.agent();
    let (report, shipped) = digest_catch_up(&agent, "without saving its state");
    assert_eq!(
        report.compared_bytes, SIZE,
        "every chunk compared: {report:?}"
    );
    assert!(
        shipped < SIZE / 4,
        "32 MiB written around the kill; {shipped} bytes shipped is a copy of the disk"
    );
    let (point, ok) = agent.create_point("web-1");
    assert!(ok, "{point:?}\n{}", agent.log());

    // As after a reboot: the tracker is gone too, and what is written meanwhile is seen
    // by nobody. Only the digest compare can find it.
    agent.kill();
    let detach = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["track", "--detach", "--pin-dir", site.pins.path_str()])
        .output()
        .expect("ferry track --detach");
    assert!(detach.status.success(), "{detach:?}");
    write_files(&site.mnt, "unseen", 8, 1 << 20, 14);
    let agent = site.agent();
    let (report, shipped) = digest_catch_up(&agent, "no tracking before this start");
    assert!(
        report.differing_bytes >= 8 << 20 && report.differing_bytes < SIZE / 4,
        "the 8 MiB written unseen (and only about that) differ: {report:?}"
    );
    assert!(
        shipped < SIZE / 4,
        "{shipped} bytes shipped is a copy of the disk"
    );
    assert!(!standby.log().contains("panicked"), "{}", standby.log());

    drop(mounted);
    let (point, ok) = agent.create_point("web-1");
    assert!(ok, "{point:?}\n{}", agent.log());
    site.assert_identical(&site.rebuild("latest"));
}

/// Waits for `agent` to be in sync after a digest catch-up whose reason contains
/// `reason`; returns its report and the bytes the agent shipped.
fn digest_catch_up(
    agent: &AgentProcess,
    reason: &str,
) -> (ferry_replicator::status::CatchUpReport, u64) {
    agent.wait_in_sync(WAIT);
    let s = agent.status();
    let report = s.disks[0]
        .last_catch_up
        .clone()
        .unwrap_or_else(|| panic!("a catch-up after the gap: {s:?}\n{}", agent.log()));
    eprintln!(
        "catch-up: {report:?}; the agent shipped {} bytes",
        s.shipped_bytes
    );
    assert_eq!(s.catch_ups, 1, "one catch-up for the gap: {s:?}");
    assert_eq!(report.method, "digest compare", "{report:?}");
    assert!(
        report.reason.contains(reason),
        "the gap names its cause: {report:?}"
    );
    (report, s.shipped_bytes)
}

#[test]
fn converges_under_fio_with_verify_through_a_kill_in_the_full_copy_within_the_bandwidth_limit() {
    const SIZE: u64 = 256 << 20;
    const LIMIT: u64 = 48 << 20;
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let site = Site::new("fio", SIZE, &addr, &addr, |f| {
        f.bandwidth_mib_per_sec = Some(LIMIT >> 20)
    });
    let mounted = site.mount();
    // Incompressible data before protection: its full copy takes seconds at the limit.
    write_files(&site.mnt, "before", 96, 1 << 20, 21);
    let standby = site.standby();
    // fio writes at random and reads its blocks back to verify them the whole time.
    let fio = std::process::Command::new("fio")
        .args([
            "--name=converge",
            &format!("--directory={}", site.mnt.display()),
            "--size=48M",
            "--rw=randwrite",
            "--bs=4k",
            "--ioengine=io_uring",
            "--iodepth=8",
            "--direct=1",
            "--verify=crc32c",
            "--verify_backlog=512",
            "--verify_fatal=1",
            "--verify_state_save=0",
            "--time_based",
            "--runtime=12",
            "--output=/dev/null",
        ])
        .spawn()
        .expect("fio (installed by scripts/test.sh)");
    let agent = site.agent();
    agent.wait_until("the full copy under way", WAIT, |s| {
        s.shipped_bytes >= 16 << 20
    });
    agent.kill();
    let agent = site.agent();
    let started = Instant::now();
    let fio_status = fio.wait_with_output().expect("waiting for fio");
    assert!(
        fio_status.status.success(),
        "fio's verification failed: {fio_status:?}"
    );
    agent.wait_in_sync(WAIT);
    let elapsed = started.elapsed().as_secs_f64();
    let s = agent.status();
    let report = s.disks[0].last_catch_up.clone().expect("a catch-up");
    assert_eq!(report.method, "digest compare", "{report:?}");
    eprintln!(
        "catch-up: {report:?}; {} bytes shipped in {elapsed:.1} s",
        s.shipped_bytes
    );
    assert_eq!(report.compared_bytes, SIZE, "{report:?}");
    // The disk holds at most 96 MiB of files, fio's 48 MiB and ext4's metadata: however
    // little the killed agent had copied (it depends on the machine's load), the
    // never-written rest digests equal on both sides and does not travel again.
    assert!(
        report.differing_bytes <= 160 << 20,
        "only chunks holding data may differ, not the never-written rest: {report:?}"
    );
    // Payload bytes (incompressible, so about the bytes on the wire) within the limit,
    // with one second of burst.
    #[expect(clippy::cast_precision_loss, reason = "sizes far below 2^52")]
    let allowed = LIMIT as f64 * (elapsed + 1.5);
    #[expect(clippy::cast_precision_loss, reason = "sizes far below 2^52")]
    let shipped = s.shipped_bytes as f64;
    assert!(
        shipped <= allowed,
        "{} bytes shipped in {elapsed:.1} s is over the {} MiB/s limit",
        s.shipped_bytes,
        LIMIT >> 20
    );
    assert!(!standby.log().contains("panicked"), "{}", standby.log());

    drop(mounted);
    let (point, ok) = agent.create_point("web-1");
    assert!(ok, "{point:?}\n{}", agent.log());
    site.assert_identical(&site.rebuild("latest"));
}

/// Runs a write + fsync on `dir` in a thread; panics unless it finishes within `limit`
/// (a frozen filesystem would block it).
fn assert_writable(dir: &Path, limit: Duration) {
    let path = dir.join("probe");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = std::fs::write(&path, b"probe")
            .and_then(|()| std::fs::File::open(&path).and_then(|f| f.sync_all()));
        let _ = tx.send(r);
    });
    match rx.recv_timeout(limit) {
        Ok(r) => r.expect("the probe write"),
        Err(_) => panic!("a write did not finish within {limit:?}: the filesystem is frozen"),
    }
}

#[test]
fn a_failing_hook_or_an_unreachable_standby_fails_the_point_and_thaws() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let site = Site::new("freeze", 128 << 20, &addr, &addr, |f| {
        f.pre_freeze = Some("echo database not ready >&2; exit 3".into())
    });
    let standby = site.standby();
    let agent = site.agent();
    agent.wait_in_sync(WAIT);
    let _m = site.mount();

    let (point, ok) = agent.create_point("web-1");
    assert!(
        !ok,
        "a failing pre-freeze hook must fail the point: {point:?}"
    );
    let error = point.error.expect("an error");
    assert!(
        error.contains("pre-freeze hook") && error.contains("database not ready"),
        "{error}"
    );
    assert_writable(&site.mnt, Duration::from_secs(10));

    standby.kill();
    agent.wait_until("interrupted", WAIT, |s| {
        s.phase == Some(ferry_replicator::status::Phase::Interrupted)
    });
    let (point, ok) = agent.create_point("web-1");
    assert!(!ok, "no point without the standby: {point:?}");
    assert!(point.error.expect("an error").contains("not connected"));
    assert_writable(&site.mnt, Duration::from_secs(10));

    // Replication continues once the standby is back.
    write_files(&site.mnt, "later", 4, 1 << 20, 6);
    let _standby = site.standby();
    agent.wait_in_sync(WAIT);
}

#[test]
fn every_consistent_point_shows_a_prefix_of_dependent_writes() {
    const BLOCKS: u64 = 4096;
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let site = Site::new("order", 128 << 20, &addr, &addr, |_| {});
    let _standby = site.standby();
    let agent = site.agent();
    agent.wait_in_sync(WAIT);
    let m = site.mount();
    let log_path = m.target.join("log");
    let file = std::fs::File::create(&log_path).expect("create");
    file.set_len(BLOCKS * 4096).expect("size");
    file.sync_all().expect("fsync");

    // Write i (1-based) fills block i-1 with i; each waits for the previous to be durable.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut i = 1u64;
            while !stop.load(Ordering::SeqCst) && i <= BLOCKS {
                let block: Vec<u8> = i.to_le_bytes().repeat(512);
                file.write_all_at(&block, (i - 1) * 4096).expect("write");
                file.sync_data().expect("fdatasync");
                i += 1;
            }
            i - 1
        })
    };
    let mut points = Vec::new();
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(700));
        let (point, ok) = agent.create_point("web-1");
        assert!(ok && point.consistent, "{point:?}\n{}", agent.log());
        points.push(point.point.expect("an id").get());
    }
    stop.store(true, Ordering::SeqCst);
    let written = writer.join().expect("writer");
    drop(m);

    let mut prefixes = Vec::new();
    for id in points {
        let image = site.rebuild(&id.to_string());
        let disk = LoopDevice::attach(&image, true);
        let m = Mount::new(
            disk.path_str(),
            &site.dir.path().join(format!("p{id}")),
            "ro,noload",
        );
        let bytes = std::fs::read(m.target.join("log")).expect("the log in the point");
        let block = |b: u64| &bytes[usize::try_from(b * 4096).expect("small")..][..4096];
        let value = |b: u64| u64::from_le_bytes(block(b)[..8].try_into().expect("8 bytes"));
        let k = (0..BLOCKS).take_while(|&b| value(b) == b + 1).count() as u64;
        for b in k..BLOCKS {
            assert!(
                block(b).iter().all(|&x| x == 0),
                "point {id}: write {} is present but write {} is not: not a prefix",
                value(b),
                k + 1
            );
        }
        prefixes.push(k);
    }
    assert!(
        prefixes.windows(2).all(|w| w[0] <= w[1]) && prefixes[prefixes.len() - 1] > 0,
        "points hold growing prefixes of the {written} writes: {prefixes:?}"
    );
}
