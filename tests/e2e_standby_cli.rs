//! The standby as an operator uses it, no root needed: `ferry standby` with a config
//! file, an agent streaming over TCP, `ferry point list` (table and JSON), `ferry rebuild`
//! of a point and of several disks (sparse images, exact bytes), `ferry retention run`
//! (space shrinks, retained points still exact), and a tampered segment making rebuild
//! fail with an error naming segment and offset. Rebuilt images are 0600 in 0700
//! directories whatever the umask, and so is the standby's data directory.

mod support;

use ferry_replicator::sim::{SimServer, noise};
use ferry_wire::message::PointKind;
use ferry_wire::{HostKeys, PointId};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::{StandbyProcess, ferry, new_key, rebuild_web1, standby_config};

const DISKS: [usize; 2] = [8 << 20, 3 << 20];

struct Site {
    dir: tempfile::TempDir,
    keys: HostKeys,
    /// Point id → the disks at that point.
    points: Vec<(PointId, Vec<Vec<u8>>)>,
    sim: SimServer,
}

impl Site {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn s(&self, name: &str) -> String {
        self.path(name).to_str().expect("utf-8").to_owned()
    }
}

/// A standby that received 10 rounds of writes to two disks, a point after each.
fn populated() -> Site {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("pair.key");
    let keys = new_key(&key);
    let config = dir.path().join("standby.toml");
    standby_config(&config, &dir.path().join("data"), &key, &["web-1"], 2);
    let standby = StandbyProcess::start(&config);
    let mut link = standby.link("web-1", &keys);
    let mut sim = SimServer::new(&keys, &DISKS).expect("sim");
    link.register(sim.registration()).expect("register");
    let mut points = Vec::new();
    for round in 0..10u64 {
        for k in 0..6u64 {
            let disk = u32::from(k % 3 == 2);
            let size = DISKS[disk as usize] as u64;
            let offset = (round * 7 + k * 5) % (size / (256 << 10)) * (256 << 10);
            link.send(
                &sim.write(disk, offset, &noise(256 << 10, round * 100 + k))
                    .expect("seal"),
            )
            .expect("send");
        }
        let kind = if round % 3 == 0 {
            PointKind::Manual
        } else {
            PointKind::Scheduled
        };
        let (barrier, id) = sim.barrier(kind, 1_800_000_000_000 + round * 3_600_000);
        link.send(&barrier).expect("send");
        points.push((id, sim.disks().to_vec()));
    }
    link.wait_durable(sim.last_seq(), Duration::from_secs(30))
        .expect("acked");
    drop(link);
    drop(standby);
    Site {
        dir,
        keys,
        points,
        sim,
    }
}

fn rebuild(site: &Site, point: &str, out: &Path, extra: &[&str]) -> std::process::Output {
    rebuild_web1(
        &site.path("data"),
        point,
        &site.path("pair.key"),
        out,
        extra,
    )
}

/// `ferry point list` of web-1, with `extra` arguments.
fn point_list(site: &Site, extra: &[&str]) -> String {
    let data = site.s("data");
    let mut args = vec!["point", "list", "--data-dir", &data, "--server", "web-1"];
    args.extend_from_slice(extra);
    ferry(&args)
}

/// `ferry point list --json` of web-1.
fn points_json(site: &Site) -> serde_json::Value {
    let out = point_list(site, &["--json"]);
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("point list --json is not JSON ({e}): {out}"))
}

fn assert_image(path: &Path, want: &[u8], what: &str) {
    let got =
        std::fs::read(path).unwrap_or_else(|e| panic!("{what}: reading {}: {e}", path.display()));
    assert_eq!(got.len(), want.len(), "{what}: size");
    if let Some(at) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{what}: differs from the model at byte {at}");
    }
}

#[test]
fn points_list_rebuild_and_retention_work_from_the_command_line() {
    let site = populated();
    let table = point_list(&site, &[]);
    assert!(table.starts_with("ID"), "a table with a header: {table}");
    assert!(
        table.contains("manual") && table.contains("scheduled") && table.contains("latest"),
        "{table}"
    );
    let json = points_json(&site);
    let rows = json.as_array().expect("an array");
    assert_eq!(rows.len(), 11, "10 points and latest: {json}");
    assert_eq!(rows[0]["id"], 1);
    assert_eq!(rows[0]["kind"], "manual");
    assert_eq!(rows[10]["kind"], "latest");
    assert_eq!(
        rows[10]["id"],
        serde_json::Value::Null,
        "latest is no stored point"
    );

    // One disk of point 4, by id, into an image file: exact and sparse.
    let out = site.path("p4-disk1.img");
    let done = rebuild(&site, "4", &out, &["--disk", "1"]);
    assert!(
        done.status.success(),
        "rebuild failed: {}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert_image(&out, &site.points[3].1[1], "point 4 disk 1");
    // All disks at latest into a directory.
    let all = site.path("latest");
    let done = rebuild(&site, "latest", &all, &[]);
    assert!(
        done.status.success(),
        "rebuild failed: {}",
        String::from_utf8_lossy(&done.stderr)
    );
    for d in 0..2 {
        assert_image(
            &all.join(format!("disk-{d}.img")),
            &site.sim.disks()[d],
            "latest",
        );
    }
    let meta = std::fs::metadata(all.join("disk-0.img")).expect("stat");
    let written: u64 = site.sim.disks()[0].iter().filter(|&&b| b != 0).count() as u64;
    assert!(
        meta.blocks() * 512 < meta.len() && meta.blocks() * 512 < written + (4 << 20),
        "the image is not sparse: {} bytes allocated for a {}-byte disk",
        meta.blocks() * 512,
        meta.len()
    );
    // An existing file is never overwritten; an unknown point is refused.
    let again = rebuild(&site, "4", &out, &["--disk", "1"]);
    assert!(
        !again.status.success(),
        "rebuild overwrote an existing file"
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let missing = rebuild(&site, "99", &site.path("none.img"), &["--disk", "0"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no retained point 99"));

    // Retention keeps 3 points: space shrinks, the 3 newest still rebuild exactly.
    let said = ferry(&[
        "retention",
        "run",
        "--data-dir",
        &site.s("data"),
        "--server",
        "web-1",
        "--key",
        &site.s("standby.key"),
        "--keep",
        "3",
        "--segment-size-mib",
        "2",
    ]);
    let (before, after) = parse_space(&said);
    assert!(after < before, "space did not shrink: {said}");
    let json = points_json(&site);
    let ids: Vec<_> = json
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r["id"].clone())
        .collect();
    assert_eq!(
        ids,
        [
            serde_json::json!(8),
            serde_json::json!(9),
            serde_json::json!(10),
            serde_json::Value::Null
        ],
        "{said}"
    );
    for (id, model) in &site.points[7..] {
        let out = site.path(&format!("kept-{}", id.get()));
        let done = rebuild(&site, &id.get().to_string(), &out, &[]);
        assert!(
            done.status.success(),
            "{}",
            String::from_utf8_lossy(&done.stderr)
        );
        for (d, want) in model.iter().enumerate() {
            assert_image(&out.join(format!("disk-{d}.img")), want, "a retained point");
        }
    }
    let gone = rebuild(&site, "2", &site.path("gone"), &[]);
    assert!(!gone.status.success(), "a dropped point must not rebuild");
    let _ = &site.keys;
}

fn parse_space(said: &str) -> (u64, u64) {
    let rest = said
        .split("space used ")
        .nth(1)
        .unwrap_or_else(|| panic!("no space report: {said}"));
    let mut nums = rest
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty());
    let before = nums
        .next()
        .and_then(|n| n.parse().ok())
        .expect("space before");
    let after = nums
        .next()
        .and_then(|n| n.parse().ok())
        .expect("space after");
    (before, after)
}

#[test]
fn a_tampered_segment_fails_rebuild_naming_segment_and_offset() {
    let site = populated();
    let log = site.path("data").join("servers/web-1/log");
    let first = log.join("00000000000000000001.seg");
    // Disk 0's record at offset 0 of the first round is overwritten later only in part;
    // damage every 64 KiB of the first segment's payload so some live record is hit.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&first)
        .expect("segment");
    let len = file.metadata().expect("stat").len();
    let mut at = 100_000;
    while at < len {
        let mut b = [0u8; 1];
        file.read_exact_at(&mut b, at).expect("read");
        file.write_all_at(&[b[0] ^ 0x20], at).expect("write");
        at += 65_536;
    }
    drop(file);
    let out = site.path("tampered");
    let done = rebuild(&site, "latest", &out, &[]);
    assert!(
        !done.status.success(),
        "rebuild of a tampered store succeeded"
    );
    let err = String::from_utf8_lossy(&done.stderr);
    assert!(
        err.contains(first.to_str().expect("utf-8")) && err.contains("corrupt at offset"),
        "the error must name the segment and the offset: {err}"
    );
    assert!(
        !out.join("disk-0.img").exists(),
        "no partial image left behind"
    );
}

/// `ferry rebuild` of web-1 run with `umask` (set in the child between fork and exec).
fn rebuild_with_umask(site: &Site, umask: libc::mode_t, out: &Path, extra: &[&str]) {
    use std::os::unix::process::CommandExt;
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"));
    command
        .args([
            "rebuild",
            "--data-dir",
            &site.s("data"),
            "--server",
            "web-1",
        ])
        .args(["--point", "latest", "--key", &site.s("pair.key"), "--out"])
        .arg(out)
        .args(extra);
    // SAFETY: umask(2) is async-signal-safe and touches nothing but the child's own
    // file-mode mask; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(move || {
            libc::umask(umask);
            Ok(())
        });
    }
    let done = command.output().expect("running ferry rebuild");
    assert!(
        done.status.success(),
        "rebuild under umask {umask:03o} failed: {}",
        String::from_utf8_lossy(&done.stderr)
    );
}

/// The permission bits of `path`, in octal ("600").
fn mode_of(path: &Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode();
    format!("{:o}", mode & 0o7777)
}

#[test]
fn rebuilt_images_are_0600_in_0700_directories_whatever_the_umask() {
    let site = populated();
    assert_eq!(
        mode_of(&site.path("data")),
        "700",
        "the standby's data directory (made under the test's umask)"
    );
    for umask in [0o022, 0o000] {
        // Several disks: a new directory (and its missing parent) for the images.
        let dir = site.path(&format!("umask-{umask:03o}/images"));
        rebuild_with_umask(&site, umask, &dir, &[]);
        for d in [dir.parent().expect("a parent"), dir.as_path()] {
            assert_eq!(
                mode_of(d),
                "700",
                "{} made by rebuild under umask {umask:03o}",
                d.display()
            );
        }
        for disk in 0..2 {
            let image = dir.join(format!("disk-{disk}.img"));
            assert_eq!(
                mode_of(&image),
                "600",
                "{} under umask {umask:03o}",
                image.display()
            );
            assert_image(&image, &site.sim.disks()[disk], "a 0600 image");
        }
        // One disk into an image file.
        let image = site.path(&format!("umask-{umask:03o}/disk-1.img"));
        rebuild_with_umask(&site, umask, &image, &["--disk", "1"]);
        assert_eq!(
            mode_of(&image),
            "600",
            "{} under umask {umask:03o}",
            image.display()
        );
    }
}

#[test]
fn a_point_list_into_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let site = populated();
    let data = site.s("data");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["point", "list", "--data-dir", &data, "--server", "web-1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running ferry");
    // The reader goes away before ferry writes a line, as `| head -0` would.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("ferry ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked") && out.status.signal() == Some(libc::SIGPIPE),
        "ferry point list into a closed pipe: {:?}, stderr: {stderr}",
        out.status
    );
}
