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

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use support::relay::{Mode, Relay, Stats};
use support::*;

const WAIT: Duration = Duration::from_secs(120);
const DISK: u64 = 64 << 20;

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
        let mut file = agent_file(
            &key,
            &relay.addr(),
            &[disk.path_str()],
            &state,
            pins.path_str(),
        );
        file.window_mib = Some(4);
        if !tls {
            file.tls = None;
            file.insecure_plaintext = true;
        }
        write_agent_config(&agent_conf, &file);
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
        assert_same_bytes(
            &out,
            &self.disk.path,
            &format!("{when}: a write was lost? relay: {:?}", self.relay.stats()),
        );
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
        && (site.relay.stats().attacks() < 20 || site.relay.stats().handshake_flips_to_agent < 2)
    {
        site.write_blocks(4, &mut rng);
        std::thread::sleep(Duration::from_millis(100));
        rounds += 1;
        assert_agent_alive(&mut agent, "while the relay damages bytes");
    }
    let attacked = site.relay.stats();
    assert!(
        site.relay.stats().attacks() >= 10
            && attacked.handshake_flips_to_agent >= 1
            && attacked.connections >= 3,
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
