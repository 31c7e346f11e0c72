//! Crash: `ferry standby` is killed with SIGKILL at random moments while a client streams
//! records. After every restart the standby's `Welcome.last_durable` covers every seq it
//! had acknowledged (DESIGN.md I2), the client resumes from there, and in the end every
//! record rebuilds into exactly the client's model of the disk. No root needed.
//!
//! The run is random; its seed is printed, and `FERRY_CRASH_SEED=N` repeats it.

mod support;

use ferry_replicator::sim::{SimServer, noise};
use ferry_wire::message::PointKind;
use ferry_wire::{Message, Seq};
use std::time::Duration;
use support::{Rng, StandbyProcess, new_key, rebuild_web1, standby_config};

const DISK: usize = 16 << 20;

#[test]
fn every_acknowledged_seq_survives_kill_9_and_rebuilds() {
    let seed: u64 = std::env::var("FERRY_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("a clock after 1970")
                .subsec_nanos()
                .into()
        });
    println!("FERRY_CRASH_SEED={seed}");
    let mut rng = Rng(seed | 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |name: &str| dir.path().join(name);
    let key = p("pair.key");
    let keys = new_key(&key);
    standby_config(&p("standby.toml"), &p("data"), &key, &["web-1"], 2);
    let mut sim = SimServer::new(&keys, &[DISK]).expect("sim");
    let mut sent: Vec<Message> = Vec::new(); // the agent's memory of every record it made
    let mut acked = Seq::new(0);

    for round in 0..6 {
        let standby = StandbyProcess::start(&p("standby.toml"));
        let mut link = standby.link("web-1", &keys);
        assert!(
            link.welcome_durable() >= acked,
            "round {round}: the standby acknowledged seq {acked} but after kill -9 says its \
             last durable seq is {}",
            link.welcome_durable()
        );
        link.register(sim.registration()).expect("register");
        // Resend what the standby does not have (the link skips what it has).
        for m in &sent {
            link.send(m).expect("resend");
        }
        // Stream new records; a killer strikes after a random delay.
        let pid = standby.pid();
        let delay = Duration::from_millis(rng.range(100, 1000));
        let killer = std::thread::spawn(move || {
            std::thread::sleep(delay);
            // SAFETY: kill has no memory preconditions; pid is our own child, not reaped yet.
            unsafe { libc::kill(i32::try_from(pid).expect("a pid"), libc::SIGKILL) };
        });
        let monitor = link.monitor();
        for i in 0..4000u64 {
            let len =
                [4096usize, 65_536, 1 << 20][usize::try_from(rng.range(0, 3)).expect("small")];
            let offset = rng.range(0, ((DISK - len) / 4096) as u64) * 4096;
            let m = if i % 50 == 49 {
                sim.barrier(PointKind::Scheduled, i).0
            } else {
                sim.write(0, offset, &noise(len, seed ^ (round * 10_000 + i)))
                    .expect("seal")
            };
            sent.push(m.clone());
            if link.send(&m).is_err() {
                break;
            }
        }
        let _ = link.flush();
        killer.join().expect("killer thread");
        standby.kill();
        acked = acked.max(monitor.durable());
        println!(
            "round {round}: acknowledged up to seq {acked} of {}",
            sim.last_seq()
        );
    }

    // Last run: everything goes through; then rebuild what the standby holds.
    let standby = StandbyProcess::start(&p("standby.toml"));
    let mut link = standby.link("web-1", &keys);
    assert!(link.welcome_durable() >= acked, "acknowledged seqs lost");
    link.register(sim.registration()).expect("register");
    for m in &sent {
        link.send(m).expect("resend");
    }
    let (barrier, _) = sim.barrier(PointKind::Manual, 1);
    link.send(&barrier).expect("barrier");
    link.wait_durable(sim.last_seq(), Duration::from_secs(60))
        .expect("everything acknowledged");
    drop(link);
    drop(standby);
    assert!(
        acked > Seq::new(0),
        "no round acknowledged anything: the test proved nothing"
    );

    let out = p("latest.img");
    let done = rebuild_web1(&p("data"), "latest", &key, &out, &[]);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let got = std::fs::read(&out).expect("rebuilt image");
    if let Some(at) = got.iter().zip(&sim.disks()[0]).position(|(a, b)| a != b) {
        panic!("the rebuilt disk differs from the model at byte {at} (seed {seed})");
    }
}
