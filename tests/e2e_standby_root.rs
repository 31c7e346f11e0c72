//! The standby on real, small and block storage (root: loop devices and mounts).
//!
//! - Disk full: the data directory is a small ext4 filesystem; a client streams
//!   incompressible 1 MiB records until it fills. The standby stops acknowledging, logs
//!   the problem, tells the agent `StorageFull` (retryable), and stops reading, so the
//!   client blocks (back-pressure). Freeing space lets it continue by itself; in the end
//!   every record rebuilds exactly.
//! - Rebuild onto a block device: a device smaller than the disk is refused; a larger one
//!   full of old data receives the disk exactly (holes and zero records zeroed).

mod support;

use ferry_replicator::link::{Link, LinkConfig};
use ferry_replicator::sim::{SimServer, noise};
use ferry_wire::message::{ErrorCode, PointKind};
use ferry_wire::{Seq, ServerId};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use support::{
    LoopDevice, Mount, StandbyProcess, new_key, rebuild_web1, require_root, run, standby_config,
};

#[test]
fn a_full_data_directory_stops_acks_pushes_back_and_recovers_when_space_is_freed() {
    require_root("the disk-full test (a small loop-mounted ext4 as the data directory)");
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |n: &str| dir.path().join(n);
    let keys = new_key(&p("pair.key"));
    let device = LoopDevice::new_sparse(&p("small.img"), 64 << 20);
    run("mkfs.ext4", &["-q", "-F", "-m", "0", device.path_str()]);
    let mount = Mount::new(device.path_str(), &p("data"), "rw");
    // Leave about 20 MiB free.
    let free = {
        let out = run(
            "df",
            &[
                "-B1",
                "--output=avail",
                mount.target.to_str().expect("utf-8"),
            ],
        );
        out.lines()
            .nth(1)
            .and_then(|l| l.trim().parse::<u64>().ok())
            .expect("df output")
    };
    let ballast = mount.target.join("ballast");
    run(
        "fallocate",
        &[
            "-l",
            &(free - (20 << 20)).to_string(),
            ballast.to_str().expect("utf-8"),
        ],
    );
    standby_config(
        &p("standby.toml"),
        &mount.target,
        &p("pair.key"),
        &["web-1"],
        2,
    );
    let standby = StandbyProcess::start(&p("standby.toml"));

    let server = ServerId::new("web-1").expect("name");
    let config = LinkConfig {
        window_bytes: 8 << 20,
        tls: standby.tls_as("web-1"),
        ..LinkConfig::default()
    };
    let mut link =
        Link::connect(standby.addr.as_str(), &server, &keys.ingest.auth, &config).expect("connect");
    let monitor = link.monitor();
    let mut sim = SimServer::new(&keys, &[48 << 20]).expect("sim");
    link.register(sim.registration()).expect("register");
    let records = 40u64; // 40 MiB into 20 MiB of room
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let messages: Vec<_> = (0..records)
        .map(|i| sim.write(0, i << 20, &noise(1 << 20, i)).expect("seal"))
        .collect();
    let sender = std::thread::spawn(move || {
        for m in &messages {
            link.send(m)
                .expect("send: the link must hold through a full disk");
            counter.fetch_add(1, Ordering::SeqCst);
        }
        link.wait_durable(Seq::new(records), Duration::from_secs(120))
            .expect("all acked");
        link
    });

    standby.wait_for_log("storage is full", Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(500));
    let (durable, count) = (monitor.durable(), sent.load(Ordering::SeqCst));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        monitor.durable(),
        durable,
        "acks went on while the disk was full"
    );
    assert_eq!(
        sent.load(Ordering::SeqCst),
        count,
        "the client was not pushed back"
    );
    assert!(count < records, "everything was sent: no back-pressure");
    let warnings = monitor.warnings();
    let full = warnings
        .iter()
        .find(|w| w.code == ErrorCode::StorageFull)
        .unwrap_or_else(|| panic!("the agent was not told the storage is full: {warnings:?}"));
    assert!(
        full.code.is_retryable() && full.message.contains("full"),
        "{full:?}"
    );
    assert!(
        monitor.closed().is_none(),
        "the link must stay up: {:?}",
        monitor.closed()
    );

    std::fs::remove_file(&ballast).expect("freeing space");
    let link = sender
        .join()
        .expect("the sender finishes once space is freed");
    assert_eq!(link.durable(), Seq::new(records));
    standby.wait_for_log("ingest resumed", Duration::from_secs(10));
    drop(link);
    drop(standby);

    let out = p("latest.img");
    let done = rebuild_web1(&mount.target, "latest", &p("pair.key"), &out, &[]);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let got = std::fs::read(&out).expect("image");
    assert!(
        got == sim.disks()[0],
        "the rebuilt disk differs from what was acknowledged"
    );
    drop(mount);
}

#[test]
fn rebuild_onto_a_block_device_refuses_a_small_one_and_fills_a_large_one_exactly() {
    require_root("rebuilding onto a block device (loop devices)");
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |n: &str| dir.path().join(n);
    let keys = new_key(&p("pair.key"));
    standby_config(
        &p("standby.toml"),
        &p("data"),
        &p("pair.key"),
        &["web-1"],
        2,
    );
    let standby = StandbyProcess::start(&p("standby.toml"));
    let mut link = standby.link("web-1", &keys);
    let disk = 6 << 20;
    let mut sim = SimServer::new(&keys, &[disk]).expect("sim");
    link.register(sim.registration()).expect("register");
    link.send(&sim.write(0, 4096, &noise(1 << 20, 1)).expect("seal"))
        .expect("send");
    link.send(&sim.write(0, 3 << 20, &noise(300_000, 2)).expect("seal"))
        .expect("send");
    link.send(&sim.write_zeroes(0, 8192, 65_536).expect("seal"))
        .expect("send");
    link.send(&sim.discard(0, 3 << 20, 4096).expect("seal"))
        .expect("send");
    link.send(&sim.barrier(PointKind::Manual, 5).0)
        .expect("send");
    link.wait_durable(sim.last_seq(), Duration::from_secs(30))
        .expect("acked");
    drop(link);
    drop(standby);

    let rebuild = |out: &str| rebuild_web1(&p("data"), "1", &p("pair.key"), Path::new(out), &[]);
    let small = LoopDevice::new_sparse(&p("small.img"), 4 << 20);
    let refused = rebuild(small.path_str());
    assert!(!refused.status.success(), "a smaller device was accepted");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("smaller than disk 0"), "{err}");

    // A larger device full of old data: afterwards its first `disk` bytes are the disk.
    std::fs::write(p("large.img"), vec![0xa5u8; disk + (2 << 20)]).expect("old data");
    let large = LoopDevice::attach(&p("large.img"), false);
    let done = rebuild(large.path_str());
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let got = std::fs::read(&large.path).expect("reading the device");
    if let Some(at) = got[..disk]
        .iter()
        .zip(&sim.disks()[0])
        .position(|(a, b)| a != b)
    {
        panic!("the device differs from the disk at byte {at}");
    }
}
