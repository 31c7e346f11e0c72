//! A relay on the path between the real `ferry agent` and `ferry standby` that holds no
//! key (DESIGN.md I8: nothing on the path can cost a write), as root on a loop device:
//!
//! - over TLS, it flips, drops, duplicates and replays bytes in both directions and cuts
//!   connections, at random points (handshakes included): the link fails and is made
//!   again, the agent never stops or panics, and after quiesce the rebuild of `latest`
//!   equals the disk byte for byte;
//! - in plaintext (loopback, `insecure_plaintext`), where it can parse frames, it injects
//!   a forged `Ack { durable: 2^62 }`, answers a reconnect with a forged
//!   `Welcome { last_durable: u64::MAX }` and then `2^62`, rewrites `RegisterServer` (a
//!   4096-byte disk) and replays a barrier: every write still reaches the standby.
//!
//! Every loop is bounded in count and time; only 127.0.0.1 addresses are used.

mod support;

use ferry_wire::frame::FrameHeader;
use ferry_wire::message::{Ack, Welcome};
use ferry_wire::{FRAME_HEADER_LEN, Message, Seq};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

const WAIT: Duration = Duration::from_secs(120);
const DISK: u64 = 64 << 20;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// What the relay does to the bytes it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Forwards faithfully.
    Pass,
    /// Damages chunks of bytes at random (TLS: it cannot read them).
    Bytes,
    /// Forwards whole frames, applying the [`Forgeries`] armed.
    Frames,
}

/// Frame-level attacks armed by the test; each fires once.
#[derive(Debug, Default)]
struct Forgeries {
    /// Inject `Ack { durable }` towards the agent.
    ack: Option<u64>,
    /// Answer the next Welcome with this `last_durable` instead.
    welcome: Option<u64>,
    /// Rewrite the next RegisterServer's first disk to this size.
    register_size: Option<u64>,
    /// Send the barrier captured earlier to the standby again.
    replay_barrier: bool,
    /// The first barrier seen (raw frame).
    barrier: Option<Vec<u8>>,
}

/// What the relay did (so the test knows its attacks really happened).
#[derive(Debug, Default, Clone)]
struct Stats {
    connections: u64,
    flips: u64,
    drops: u64,
    duplicates: u64,
    replays: u64,
    cuts: u64,
    /// Of the above, how many hit a connection's first chunks (its TLS handshake).
    in_handshakes: u64,
    /// Flips in the standby's first handshake flight.
    handshake_flips_to_agent: u64,
    forged_acks: u64,
    forged_welcomes: u64,
    rewritten_registrations: u64,
    replayed_barriers: u64,
}

struct RelayShared {
    target: String,
    mode: Mutex<Mode>,
    forge: Mutex<Forgeries>,
    stats: Mutex<Stats>,
    rng: Mutex<Rng>,
    /// Chunks seen per direction (0: to the standby, 1: to the agent), for replays.
    seen: Mutex<[Vec<Vec<u8>>; 2]>,
    /// Bumped to cut every live connection.
    generation: AtomicU64,
    stop: AtomicBool,
}

/// The relay: listens on 127.0.0.1, forwards each connection to the standby.
struct Relay {
    port: u16,
    shared: Arc<RelayShared>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    fn start(target: &str, seed: u64) -> Self {
        assert!(target.starts_with("127.0.0.1:"), "loopback only: {target}");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        let port = listener.local_addr().expect("addr").port();
        let shared = Arc::new(RelayShared {
            target: target.to_owned(),
            mode: Mutex::new(Mode::Pass),
            forge: Mutex::default(),
            stats: Mutex::default(),
            rng: Mutex::new(Rng(seed)),
            seen: Mutex::default(),
            generation: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let accept = std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&s.target) else {
                    continue;
                };
                lock(&s.stats).connections += 1;
                let mine = s.generation.load(Ordering::SeqCst);
                for (dir, from, to) in [
                    (0, client.try_clone(), server.try_clone()),
                    (1, Ok(server), Ok(client)),
                ] {
                    let (Ok(from), Ok(to)) = (from, to) else {
                        continue;
                    };
                    let s = s.clone();
                    std::thread::spawn(move || pump(&s, dir, from, to, mine));
                }
            }
        });
        Self {
            port,
            shared,
            accept: Some(accept),
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn set_mode(&self, mode: Mode) {
        *lock(&self.shared.mode) = mode;
    }

    fn forge(&self) -> std::sync::MutexGuard<'_, Forgeries> {
        lock(&self.shared.forge)
    }

    fn stats(&self) -> Stats {
        lock(&self.shared.stats).clone()
    }

    /// Drops every live connection (new ones are accepted).
    fn cut(&self) {
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.cut();
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// One direction of one connection: `dir` 0 is agent → standby, 1 standby → agent.
fn pump(s: &RelayShared, dir: usize, mut from: TcpStream, mut to: TcpStream, generation: u64) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(100)));
    let mut frames = FrameReader::default();
    let mut buf = vec![0u8; 64 << 10];
    let started = Instant::now();
    let mut chunks = 0u64;
    // Bounded: a connection lives at most 10 minutes in the relay.
    while started.elapsed() < Duration::from_secs(600) {
        if s.generation.load(Ordering::SeqCst) != generation || s.stop.load(Ordering::SeqCst) {
            break;
        }
        let mode = *lock(&s.mode);
        if mode == Mode::Frames && dir == 1 {
            let forged = lock(&s.forge).ack.take();
            if let Some(durable) = forged {
                let frame = Message::Ack(Ack {
                    durable: Seq(durable),
                })
                .encode()
                .expect("encode an ack");
                if to.write_all(&frame).is_err() {
                    break;
                }
                lock(&s.stats).forged_acks += 1;
            }
        }
        if mode == Mode::Frames && dir == 0 {
            let mut forge = lock(&s.forge);
            if forge.replay_barrier
                && let Some(b) = forge.barrier.clone()
            {
                forge.replay_barrier = false;
                drop(forge);
                if to.write_all(&b).is_err() {
                    break;
                }
                lock(&s.stats).replayed_barriers += 1;
            }
        }
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if is_timeout(&e) => continue,
            Err(_) => break,
        };
        chunks += 1;
        let out = match mode {
            Mode::Pass => vec![buf[..n].to_vec()],
            Mode::Bytes => match damage(s, dir, chunks, &buf[..n]) {
                Some(out) => out,
                None => break,
            },
            Mode::Frames => {
                frames.push(&buf[..n]);
                match frames.take(s, dir) {
                    Some(out) => out,
                    None => break,
                }
            }
        };
        if out.iter().any(|c| to.write_all(c).is_err()) {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// Uniform in `0..n`.
fn pick(rng: &mut Rng, n: usize) -> usize {
    usize::try_from(rng.range(0, n as u64)).expect("below n")
}

/// Byte-level damage to one chunk: what to write instead (`None`: cut the connection).
fn damage(s: &RelayShared, dir: usize, chunk: u64, bytes: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut rng = lock(&s.rng);
    {
        let mut seen = lock(&s.seen);
        if seen[dir].len() < 64 {
            seen[dir].push(bytes.to_vec());
        } else {
            let i = pick(&mut rng, 64);
            seen[dir][i] = bytes.to_vec();
        }
    }
    // Handshake chunks (the first few of a connection) are hit more often, so that
    // damaged handshakes are part of every run.
    let odds = if chunk <= 4 { 25 } else { 10 };
    if rng.range(0, odds) != 0 {
        return Some(vec![bytes.to_vec()]);
    }
    let mut stats = lock(&s.stats);
    // In a handshake, half the attacks are flips: one in the standby's flight fails the
    // agent's handshake with a TLS error (not a dropped connection).
    let attack = if chunk <= 4 {
        stats.in_handshakes += 1;
        if rng.range(0, 2) == 0 {
            0
        } else {
            rng.range(0, 5)
        }
    } else {
        rng.range(0, 5)
    };
    if attack == 0 && chunk <= 2 && dir == 1 {
        stats.handshake_flips_to_agent += 1;
    }
    match attack {
        0 => {
            let mut b = bytes.to_vec();
            let at = pick(&mut rng, b.len());
            b[at] ^= 1 << rng.range(0, 8);
            stats.flips += 1;
            Some(vec![b])
        }
        1 => {
            stats.drops += 1;
            Some(Vec::new())
        }
        2 => {
            stats.duplicates += 1;
            Some(vec![bytes.to_vec(), bytes.to_vec()])
        }
        3 => {
            let seen = lock(&s.seen);
            let old = seen[dir][pick(&mut rng, seen[dir].len())].clone();
            stats.replays += 1;
            Some(vec![bytes.to_vec(), old])
        }
        _ => {
            stats.cuts += 1;
            None
        }
    }
}

/// Reassembles whole frames from a byte stream and applies the armed forgeries.
#[derive(Default)]
struct FrameReader {
    pending: Vec<u8>,
}

impl FrameReader {
    fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    /// Whole frames ready to forward (forged where armed); `None`: not a frame stream.
    fn take(&mut self, s: &RelayShared, dir: usize) -> Option<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        loop {
            if self.pending.len() < FRAME_HEADER_LEN {
                return Some(out);
            }
            let head: [u8; FRAME_HEADER_LEN] = self.pending[..FRAME_HEADER_LEN]
                .try_into()
                .expect("16 bytes");
            let header = FrameHeader::parse(&head).ok()?;
            let total = FRAME_HEADER_LEN + header.body_len();
            if self.pending.len() < total {
                return Some(out);
            }
            let frame: Vec<u8> = self.pending.drain(..total).collect();
            let message = header.decode_body(&frame[FRAME_HEADER_LEN..]).ok()?;
            out.push(forge(s, dir, message).unwrap_or(frame));
        }
    }
}

/// The forged replacement of one frame, if an armed forgery applies to it.
fn forge(s: &RelayShared, dir: usize, message: Message) -> Option<Vec<u8>> {
    let mut f = lock(&s.forge);
    let forged = match (dir, message) {
        (0, Message::Barrier(b)) => {
            if f.barrier.is_none() {
                f.barrier = Some(Message::Barrier(b).encode().expect("encode"));
            }
            return None;
        }
        (0, Message::RegisterServer(mut r)) => {
            let size = f.register_size.take()?;
            r.disks[0].size = ferry_wire::ByteLen(size);
            lock(&s.stats).rewritten_registrations += 1;
            Message::RegisterServer(r)
        }
        (1, Message::Welcome(w)) => {
            let last = f.welcome.take()?;
            lock(&s.stats).forged_welcomes += 1;
            Message::Welcome(Welcome {
                last_durable: Seq(last),
                ..w
            })
        }
        _ => return None,
    };
    Some(forged.encode().expect("encode a forged frame"))
}

/// A loop-device disk, a standby and an agent config reaching it through a relay.
struct Site {
    dir: tempfile::TempDir,
    key: PathBuf,
    data: PathBuf,
    agent_conf: PathBuf,
    state: PathBuf,
    /// Detaches the agent's pinned tracker when the test ends (after the agent).
    _pins: PinDir,
    disk: LoopDevice,
    relay: Relay,
    standby: StandbyProcess,
}

impl Site {
    /// `tls`: the link over TLS (else `insecure_plaintext` on both sides).
    fn new(name: &str, tls: bool, seed: u64) -> Self {
        require_root("the relay's end-to-end tests");
        let dir = tempfile::tempdir().expect("tempdir");
        let p = |n: &str| dir.path().join(n);
        let key = p("pair.key");
        new_key(&key);
        let data = p("standby");
        let standby_conf = p("standby.toml");
        standby_config(&standby_conf, &data, &key, &["web-1"], 16);
        if !tls {
            let text = std::fs::read_to_string(&standby_conf).expect("read config");
            let (top, rest) = text.split_once("\n[tls]").expect("a [tls] table");
            let servers = rest.find("\n[[servers]]").expect("a server");
            std::fs::write(
                &standby_conf,
                format!("{top}\ninsecure_plaintext = true\n{}", &rest[servers..]),
            )
            .expect("write config");
        }
        let standby = StandbyProcess::start(&standby_conf);
        let relay = Relay::start(&standby.addr, seed);
        let disk = LoopDevice::new_sparse(&p("disk.img"), DISK);
        let pins = PinDir::new(name);
        let state = p("agent");
        let agent_conf = p("agent.toml");
        let link = if tls {
            tls_section(&pki_of(&key), "web-1")
        } else {
            "insecure_plaintext = true\n".to_owned()
        };
        std::fs::write(
            &agent_conf,
            format!(
                "server = \"web-1\"\nstandby = \"{}\"\nkey_file = {:?}\ndisks = [{:?}]\n\
                 state_dir = {:?}\npin_dir = {:?}\npoint_interval_minutes = 0\n\
                 window_mib = 4\n{link}",
                relay.addr(),
                host_key(&key, "web-1").to_str().expect("utf-8"),
                disk.path_str(),
                state.to_str().expect("utf-8"),
                pins.path_str(),
            ),
        )
        .expect("write agent config");
        Self {
            dir,
            key,
            data,
            agent_conf,
            state,
            _pins: pins,
            disk,
            relay,
            standby,
        }
    }

    fn agent(&self) -> AgentProcess {
        AgentProcess::start(&self.agent_conf, &self.state)
    }

    /// Writes `count` blocks of 4 KiB to 256 KiB of pseudo-random bytes at random
    /// 4 KiB-aligned offsets, O_DIRECT (so the tracker sees each at once).
    fn write_blocks(&self, count: u64, rng: &mut Rng) {
        let disk = open_direct(&self.disk.path);
        for _ in 0..count {
            let len = rng.range(1, 65) * 4096;
            let at = rng.range(0, (DISK - len) / 4096) * 4096;
            let mut buf = AlignedBuf::new(usize::try_from(len).expect("a small length"));
            rng.fill(buf.bytes_mut());
            disk.write_all_at(buf.bytes(), at)
                .unwrap_or_else(|e| panic!("writing {len} bytes at {at}: {e}"));
        }
        disk.sync_all().expect("fsync the disk");
    }

    /// Panics unless `ferry rebuild --point latest` equals the disk byte for byte.
    fn assert_latest_identical(&self, when: &str) {
        let out = self.dir.path().join(format!("latest-{when}.img"));
        let result = rebuild_web1(&self.data, "latest", &self.key, &out, &[]);
        assert!(
            result.status.success(),
            "{when}: ferry rebuild --point latest failed: {}",
            String::from_utf8_lossy(&result.stderr)
        );
        let want = std::fs::read(&self.disk.path).expect("reading the disk");
        let got = std::fs::read(&out).expect("reading the rebuilt image");
        assert_eq!(
            got.len(),
            want.len(),
            "{when}: the rebuilt disk has another size (a rewritten registration?)"
        );
        if let Some(at) = got.iter().zip(&want).position(|(a, b)| a != b) {
            let grain = at / 4096 * 4096;
            panic!(
                "{when}: a write was lost: the rebuild of latest differs from the disk first \
                 at byte {at} (grain at {grain}); relay: {:?}",
                self.relay.stats()
            );
        }
        let _ = std::fs::remove_file(&out);
    }
}

/// Panics (with its log) unless the agent process is still running and never panicked.
fn assert_agent_alive(agent: &mut AgentProcess, when: &str) {
    assert!(
        agent.is_running(),
        "{when}: the agent exited; status {:?}\nlog:\n{}",
        agent.status(),
        agent.log()
    );
    assert!(
        !agent.log().contains("panicked"),
        "{when}: the agent panicked:\n{}",
        agent.log()
    );
}

#[test]
fn a_tls_relay_damaging_bytes_both_ways_costs_no_write_and_never_stops_the_agent() {
    let site = Site::new("relay-tls", true, 0x7e1a_5eed);
    let mut agent = site.agent();
    wait_in_sync(&mut agent);
    let mut rng = Rng(41);

    // Damage (handshakes included) while the disk is written: until 20 attacks hit, at
    // most 90 s (each failed link waits out the agent's backoff).
    site.relay.set_mode(Mode::Bytes);
    let start = Instant::now();
    let mut rounds = 0;
    while start.elapsed() < Duration::from_secs(90)
        && rounds < 900
        && (attacks(&site) < 20 || site.relay.stats().handshake_flips_to_agent < 2)
    {
        site.write_blocks(4, &mut rng);
        std::thread::sleep(Duration::from_millis(100));
        rounds += 1;
        assert_agent_alive(&mut agent, "while the relay damages bytes");
    }
    let attacked = site.relay.stats();
    assert!(
        attacks(&site) >= 10 && attacked.handshake_flips_to_agent >= 1 && attacked.connections >= 3,
        "the relay barely attacked: {attacked:?}"
    );

    // Quiesce: an honest path, more writes, and everything must arrive.
    site.relay.set_mode(Mode::Pass);
    site.write_blocks(32, &mut rng);
    wait_in_sync(&mut agent);
    assert_agent_alive(&mut agent, "after quiesce");
    let s = agent.status();
    assert!(
        s.reconnects >= 2,
        "the damaged link failed and was made again: {s:?}; relay: {attacked:?}"
    );
    site.assert_latest_identical("after the byte attack");
    assert!(
        !site.standby.log().contains("panicked"),
        "{}",
        site.standby.log()
    );
}

#[test]
fn a_plaintext_relay_forging_acks_welcomes_registrations_and_barriers_costs_no_write() {
    let site = Site::new("relay-frames", false, 0xf0_12ce);
    site.relay.set_mode(Mode::Frames);
    let mut agent = site.agent();
    wait_in_sync(&mut agent);
    let mut rng = Rng(43);
    site.write_blocks(16, &mut rng);
    let (point, ok) = agent.create_point("web-1");
    assert!(ok, "a point before the attacks: {point:?}\n{}", agent.log());
    assert!(
        site.relay.forge().barrier.is_some(),
        "the relay saw the point's barrier"
    );

    // 1. A forged ack far above anything sent, while writes are in flight.
    site.write_blocks(64, &mut rng);
    site.relay.forge().ack = Some(1 << 62);
    site.write_blocks(64, &mut rng);
    wait_for(&site, "the forged ack sent", |s| s.forged_acks == 1);
    site.write_blocks(16, &mut rng);
    wait_in_sync(&mut agent);
    assert_agent_alive(&mut agent, "after a forged Ack{2^62}");
    site.assert_latest_identical("after a forged Ack{2^62}");

    // 2. Forged Welcomes on reconnect: u64::MAX, then 2^62 — with writes in flight when
    //    the connection is cut.
    for (i, last) in [u64::MAX, 1 << 62].into_iter().enumerate() {
        site.relay.forge().welcome = Some(last);
        site.write_blocks(96, &mut rng);
        site.relay.cut();
        site.write_blocks(32, &mut rng);
        wait_for(&site, "the forged Welcome sent", |s| {
            s.forged_welcomes == i as u64 + 1
        });
        site.write_blocks(16, &mut rng);
        wait_in_sync(&mut agent);
        assert_agent_alive(&mut agent, &format!("after a forged Welcome{{{last}}}"));
        site.assert_latest_identical(&format!("after a forged Welcome{{{last}}}"));
    }

    // 3. A registration rewritten to a 4096-byte disk on reconnect.
    site.relay.forge().register_size = Some(4096);
    site.write_blocks(32, &mut rng);
    site.relay.cut();
    wait_for(&site, "the rewritten registration sent", |s| {
        s.rewritten_registrations == 1
    });
    site.write_blocks(16, &mut rng);
    wait_in_sync(&mut agent);
    assert_agent_alive(&mut agent, "after a rewritten RegisterServer");
    site.assert_latest_identical("after a rewritten RegisterServer");

    // 4. The old barrier replayed into the live session.
    site.relay.forge().replay_barrier = true;
    site.write_blocks(32, &mut rng);
    wait_for(&site, "the barrier replayed", |s| s.replayed_barriers == 1);
    site.write_blocks(16, &mut rng);
    wait_in_sync(&mut agent);
    assert_agent_alive(&mut agent, "after a replayed barrier");
    let (point, ok) = agent.create_point("web-1");
    assert!(ok, "a point after the attacks: {point:?}\n{}", agent.log());
    site.assert_latest_identical("after a replayed barrier");
    assert!(
        !site.standby.log().contains("panicked"),
        "{}",
        site.standby.log()
    );
}

/// Waits until every write so far is acknowledged, panicking at once if the agent exits.
fn wait_in_sync(agent: &mut AgentProcess) {
    use ferry_replicator::status::Phase;
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis();
    let start = Instant::now();
    loop {
        assert_agent_alive(agent, "waiting for the agent to catch up");
        let status = ferry_replicator::status::Status::load(&agent.state_dir.join("status.json"));
        if let Ok(s) = &status
            && u128::from(s.updated_unix_ms) > since + 100
            && s.phase == Some(Phase::Realtime)
            && s.backlog_bytes == 0
        {
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "the agent never caught up (realtime, no backlog) within {WAIT:?}; status: \
             {status:?}\nlog:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How many byte-level attacks the relay made.
fn attacks(site: &Site) -> u64 {
    let s = site.relay.stats();
    s.flips + s.drops + s.duplicates + s.replays + s.cuts
}

/// Waits (at most 60 s) until the relay's stats satisfy `done`.
fn wait_for(site: &Site, what: &str, done: impl Fn(&Stats) -> bool) {
    let start = Instant::now();
    while !done(&site.relay.stats()) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "never happened: {what}; relay: {:?}",
            site.relay.stats()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
