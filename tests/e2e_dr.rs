//! DR operations end to end, as root, as an operator runs them: `ferry pair|server|
//! replication|point` against a standby's control API, a real agent protecting an ext4
//! loop-device disk.
//!
//! - pair → server → the agent registers (`initialized`) and waits → replication start →
//!   `full` → `realtime` → a point made through the standby rebuilds with every file;
//! - every operation the state does not allow, bad names, unknown pairs and servers, a
//!   wrong token: a clear error, and nothing changes;
//! - the catalogue survives a kill -9 of the standby; the agent resumes by itself;
//! - replication stop: the standby takes no record (the agent waits, tracking); start
//!   again: only what changed travels, no full copy;
//! - drills: bad scripts, points and a failing script are clear errors (a failed drill
//!   stays for inspection, `clean` removes it); a drill of the latest state, checked by
//!   its script against the source's files, while replication goes on in real time;
//! - failover at the latest state (replication stops: the agent is paused), a change of
//!   point to an earlier one (its files, without the later ones; "latest" only once),
//!   confirm; what each state refuses;
//! - the whole cycle with two standbys on loopback as sites A and B, site B reaching
//!   site A through relays that hold no key: failover after the protected host is lost,
//!   writes on the instance, a reverse register whose peer call the relay damages
//!   (refused, naming the site; nothing changes) and then made, reverse start onto
//!   the original machine (only the differences travel), both standbys killed and
//!   restarted mid-reverse, the reverse agent's link damaged by the relay (flips, drops,
//!   duplicates, replays, cuts) while the instance is written, the reverse agent killed
//!   and started again, failback (the original disk then equals the instance byte for
//!   byte), register and forward replication again by digest (no full copy);
//! - auto-restart off: an interrupted server stays interrupted (its agent is told why)
//!   until the operator starts replication again;
//! - the qemu launcher: a drill boots the replicated system disk (a boot sector that
//!   prints to the serial console) with the chosen memory, network and IP; clean stops it.

mod support;

use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use support::console::Console;
use support::relay::{Mode, Relay};
use support::*;

const WAIT: Duration = Duration::from_secs(90);

/// A standby site with the control API, and one protected server's disk and agent.
struct Site {
    dir: tempfile::TempDir,
    key: PathBuf,
    token: PathBuf,
    /// The site pair's CA and the sites' certificates (site-b, zone-a).
    pki: PathBuf,
    data: PathBuf,
    standby_conf: PathBuf,
    /// Site A, the pair's primary: a second standby that reverse replication ships to.
    primary_conf: PathBuf,
    agent_conf: PathBuf,
    state: PathBuf,
    /// The standbys' scripts directory (root's, 0755): post-launch scripts go here.
    scripts: PathBuf,
    /// Detaches the agent's pinned tracker when the test ends.
    _pins: PinDir,
    mnt: PathBuf,
    disk: LoopDevice,
    /// Relays that site B reaches site A through (its data port, its control API), for
    /// the tests that damage the path between the sites.
    between_sites: Option<(Relay, Relay)>,
}

impl Site {
    fn new(name: &str, size: u64, data_port: u16) -> Self {
        Self::build(name, size, data_port, false)
    }

    /// A site pair whose site B reaches site A through two relays that hold no key.
    fn relayed(name: &str, size: u64, data_port: u16) -> Self {
        Self::build(name, size, data_port, true)
    }

    fn build(name: &str, size: u64, data_port: u16, relayed: bool) -> Self {
        require_root("the DR operations' end-to-end tests");
        let dir = tempfile::tempdir().expect("tempdir");
        let p = |n: &str| dir.path().join(n);
        let (key, token) = (p("pair.key"), p("control.token"));
        new_key(&key);
        ferry(&["keygen", "--out", token.to_str().expect("utf-8")]);
        let pki = pki_of(&key);
        let data = p("standby");
        let addr = format!("127.0.0.1:{data_port}");
        let (primary_data, primary_control) = (free_port(), free_port());
        let standby_conf = p("standby.toml");
        let primary_conf = p("primary.toml");
        let scripts = p("scripts");
        std::fs::create_dir(&scripts).expect("mkdir scripts");
        run("chmod", &["755", scripts.to_str().expect("utf-8")]);
        let token_text = token.to_str().expect("utf-8");
        let (primary_data_addr, primary_control_addr) = (
            format!("127.0.0.1:{primary_data}"),
            format!("127.0.0.1:{primary_control}"),
        );
        let between_sites = relayed.then(|| {
            (
                Relay::start(&primary_data_addr, 0x5eed_da7a),
                Relay::start(&primary_control_addr, 0x5eed_c0de),
            )
        });
        let (peer_data, peer_control) = match &between_sites {
            Some((data, control)) => (data.addr(), control.addr()),
            None => (primary_data_addr, primary_control_addr),
        };
        let sites = format!(
            "[storage_classes]\nssd = {:?}\n\n[sites.zone-a]\ndata = \"{peer_data}\"\n\
             control = \"{peer_control}\"\ntoken_file = {token_text:?}\n",
            p("ssd").to_str().expect("utf-8")
        );
        // Site A takes site B's reverse agents (site B's certificate) for any server.
        let scripts_dir = format!("scripts_dir = {:?}\n", scripts.to_str().expect("utf-8"));
        site_config(
            &standby_conf,
            &data,
            &key,
            "site-b",
            16,
            &addr,
            0,
            &token,
            &scripts_dir,
            &sites,
        );
        site_config(
            &primary_conf,
            &p("primary"),
            &key,
            "zone-a",
            16,
            &format!("127.0.0.1:{primary_data}"),
            primary_control,
            &token,
            &format!("{scripts_dir}peer_sites = [\"site-b\"]\n"),
            "",
        );
        let disk = LoopDevice::new_sparse(&p("disk.img"), size);
        run("mkfs.ext4", &["-q", "-F", disk.path_str()]);
        let pins = PinDir::new(name);
        let state = p("agent");
        let agent_conf = p("agent.toml");
        let file = agent_file(&key, &addr, &[disk.path_str()], &state, pins.path_str());
        write_agent_config(&agent_conf, &file);
        Self {
            mnt: p("mnt"),
            dir,
            key,
            token,
            pki,
            data,
            standby_conf,
            primary_conf,
            agent_conf,
            state,
            scripts,
            _pins: pins,
            disk,
            between_sites,
        }
    }

    fn standby(&self) -> (StandbyProcess, Console) {
        let standby = StandbyProcess::start(&self.standby_conf);
        let console = Console {
            control: standby.control.clone().expect("the control API is served"),
            token: self.token.clone(),
            ca: self.pki.join("ca.pem"),
            wait: WAIT,
        };
        (standby, console)
    }

    /// Site A's standby and its console.
    fn primary(&self) -> (StandbyProcess, Console) {
        let standby = StandbyProcess::start(&self.primary_conf);
        let console = Console {
            control: standby.control.clone().expect("the control API is served"),
            token: self.token.clone(),
            ca: self.pki.join("ca.pem"),
            wait: WAIT,
        };
        (standby, console)
    }

    fn agent(&self) -> AgentProcess {
        AgentProcess::start(&self.agent_conf, &self.state)
    }

    fn mount(&self) -> Mount {
        Mount::new(self.disk.path_str(), &self.mnt, "rw")
    }

    /// Rebuilds `point`, mounts it read-only and checks every file in `files`.
    fn assert_point_holds(&self, point: &str, files: &[(PathBuf, Vec<u8>)]) {
        let image = self.dir.path().join(format!("rebuilt-{point}.img"));
        let out = rebuild_web1(&self.data, point, &self.key, &image, &[]);
        assert!(
            out.status.success(),
            "rebuild of point {point} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let disk = LoopDevice::attach(&image, true);
        let m = Mount::new(disk.path_str(), &self.dir.path().join("check"), "ro,noload");
        for (path, data) in files {
            let name = path.file_name().expect("a name");
            let got = std::fs::read(m.target.join(name)).expect("a file in the point");
            assert!(
                got == *data,
                "{} differs in point {point}",
                name.to_string_lossy()
            );
        }
    }
}

/// Whatever a test left behind under its directory: processes (a reverse agent is the
/// standby's child and outlives it), mounts, loop devices.
impl Drop for Site {
    fn drop(&mut self) {
        sweep(self.dir.path(), &[self.disk.path_str()]);
    }
}

/// The last seq the standby holds for web-1 ("latest").
fn latest_seq(console: &Console) -> u64 {
    let points = console.json(&["point", "list", "--server", "web-1"]);
    points
        .as_array()
        .and_then(|p| p.last())
        .and_then(|l| l["seq"].as_u64())
        .expect("a latest row")
}

#[test]
fn an_operator_takes_a_server_from_a_new_pair_to_realtime_points_and_back() {
    let site = Site::new("dr-ops", 256 << 20, free_port());
    let before = {
        let _m = site.mount();
        write_files(&site.mnt, "before", 6, 1 << 20, 1)
    };
    let (standby, console) = site.standby();

    // Bad input: clear errors naming the problem.
    let e = console.refused(&[
        "pair",
        "create",
        "1st",
        "--kind",
        "zone-to-zone",
        "--primary",
        "a",
        "--secondary",
        "b",
    ]);
    assert!(e.contains("1st"), "{e}");
    let e = console.refused(&[
        "pair",
        "create",
        "ok",
        "--kind",
        "diagonal",
        "--primary",
        "a",
        "--secondary",
        "b",
    ]);
    assert!(e.contains("region-to-region or zone-to-zone"), "{e}");
    let e = console.refused(&[
        "server",
        "add",
        "web-1",
        "--pair",
        "prod.eu",
        "--storage-class",
        "gold",
    ]);
    assert!(e.contains("no storage class \"gold\""), "{e}");
    let e = console.refused(&["server", "add", "web-1", "--pair", "nope"]);
    assert!(e.contains("no pair named \"nope\""), "{e}");
    let wrong = Console {
        control: console.control.clone(),
        token: site.key.clone(),
        ca: console.ca.clone(),
        wait: WAIT,
    };
    let e = wrong.refused(&["pair", "list"]);
    assert!(e.contains("token"), "{e}");

    console.ok(&[
        "pair",
        "create",
        "prod.eu",
        "--kind",
        "region-to-region",
        "--primary",
        "eu-west",
        "--secondary",
        "eu-central",
    ]);
    let e = console.refused(&[
        "pair",
        "create",
        "prod.eu",
        "--kind",
        "zone-to-zone",
        "--primary",
        "a",
        "--secondary",
        "b",
    ]);
    assert!(e.contains("already exists"), "{e}");
    let s = console.json(&[
        "server",
        "add",
        "web-1",
        "--pair",
        "prod.eu",
        "--storage-class",
        "ssd",
    ]);
    assert_eq!(s["shown_state"], "installing", "{s}");
    assert!(
        site.dir.path().join("ssd/servers/web-1").is_dir(),
        "the replica is placed in its storage class"
    );

    // The agent registers and waits for the operator; nothing is stored meanwhile.
    let agent = site.agent();
    console.wait_state("web-1", "initialized");
    agent.wait_until("waiting for replication start", WAIT, |s| {
        s.phase == Some(ferry_replicator::status::Phase::Waiting)
    });
    let e = console.refused(&["replication", "stop", "web-1"]);
    assert!(
        e.contains("replication stop is not allowed while the server is initialized")
            && e.contains("allowed now: replication start"),
        "{e}"
    );
    let e = console.refused(&["point", "create", "--server", "web-1"]);
    assert!(e.contains("initialized"), "{e}");
    let e = console.refused(&["pair", "delete", "prod.eu"]);
    assert!(e.contains("web-1"), "{e}");
    let e = console.refused(&["replication", "start", "web-1", "--storage-class", "gold"]);
    assert!(e.contains("no storage class \"gold\""), "{e}");
    assert_eq!(console.server("web-1")["state"], "initialized");

    // Replication: full copy, then real time; a point made through the standby.
    console.ok(&["replication", "start", "web-1", "--keep", "5"]);
    console.wait_state("web-1", "realtime");
    agent.wait_in_sync(WAIT);
    let during = {
        let _m = site.mount();
        write_files(&site.mnt, "during", 10, 256 << 10, 2)
    };
    let point = console.json(&["point", "create", "--server", "web-1"]);
    let id = point["point"].as_u64().expect("a point id").to_string();
    let listed = console.json(&["point", "list", "--server", "web-1"]);
    assert!(
        listed
            .as_array()
            .expect("rows")
            .iter()
            .any(|p| p["id"].as_u64().map(|i| i.to_string()) == Some(id.clone())),
        "{listed}"
    );
    let list = console.ok(&["server", "list"]);
    assert!(list.contains("realtime") && list.contains(&id), "{list}");
    let mut files = before.clone();
    files.extend(during);
    site.assert_point_holds(&id, &files);

    // The catalogue survives a kill -9; the agent resumes by itself.
    standby.kill();
    let (_standby, console) = site.standby();
    let s = console.server("web-1");
    assert!(
        s["state"] == "realtime" || s["state"] == "interrupted",
        "the state survived the restart: {s}"
    );
    console.wait_state("web-1", "realtime");

    // Stop: no record is taken while the agent keeps tracking; start: only the changes.
    let e = console.refused(&["server", "remove", "web-1"]);
    assert!(e.contains("realtime"), "{e}");
    console.ok(&["replication", "stop", "web-1"]);
    agent.wait_until("waiting after the stop", WAIT, |s| {
        s.phase == Some(ferry_replicator::status::Phase::Waiting)
    });
    let seq = latest_seq(&console);
    let shipped = agent.status().shipped_bytes;
    let after = {
        let _m = site.mount();
        write_files(&site.mnt, "stopped", 4, 1 << 20, 3)
    };
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        latest_seq(&console),
        seq,
        "records were stored after the stop"
    );
    console.ok(&["replication", "start", "web-1"]);
    console.wait_state("web-1", "realtime");
    agent.wait_in_sync(WAIT);
    let point = console.json(&["point", "create", "--server", "web-1"]);
    let id = point["point"].as_u64().expect("a point id").to_string();
    let resumed = agent.status().shipped_bytes - shipped;
    assert!(
        resumed < 32 << 20,
        "a restart after a stop ships what changed, not the disk: {resumed} bytes"
    );
    files.extend(after);
    site.assert_point_holds(&id, &files);

    console.ok(&["replication", "stop", "web-1"]);
    agent.stop();
    console.ok(&["server", "remove", "web-1"]);
    console.ok(&["pair", "delete", "prod.eu"]);
    assert_eq!(console.json(&["pair", "list"]), Value::Array(vec![]));
}

/// Brings web-1 of `site` to real time through the operator's commands (`start`: more
/// arguments of `replication start`).
fn protect(site: &Site, start: &[&str]) -> (StandbyProcess, Console, AgentProcess) {
    let (standby, console) = site.standby();
    console.add_web1();
    let agent = site.agent();
    console.wait_state("web-1", "initialized");
    let s = console.json(&[&["replication", "start", "web-1"], start].concat());
    assert_eq!(s["state"], "starting", "{s}");
    console.wait_state("web-1", "realtime");
    agent.wait_in_sync(WAIT);
    (standby, console, agent)
}

/// A post-launch script that mounts the instance's first device read-only and checks
/// the files `manifest` lists (sha256sum format), and that `absent` files are not there.
fn check_script(dir: &std::path::Path, name: &str, manifest: &str, absent: &[&str]) -> PathBuf {
    let path = dir.join(name);
    let manifest_path = dir.join(format!("{name}.sha256"));
    std::fs::write(&manifest_path, manifest).expect("write manifest");
    let absent: String = absent
        .iter()
        .map(|f| {
            format!("test ! -e \"$m/{f}\" || {{ echo \"{f} should not be there\"; fail=1; }}\n")
        })
        .collect();
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nset -u\necho \"instance $FERRY_INSTANCE point $FERRY_POINT devices $FERRY_DEVICES\"\n\
             m=\"$FERRY_INSTANCE_DIR/mnt\"\nmkdir -p \"$m\"\nmount -o ro,noload \"$FERRY_DEVICE_0\" \"$m\" || exit 2\n\
             fail=0\n(cd \"$m\" && sha256sum -c {:?}) || fail=1\n{absent}umount \"$m\"\nexit $fail\n",
            manifest_path.to_str().expect("utf-8")
        ),
    )
    .expect("write script");
    run("chmod", &["755", path.to_str().expect("utf-8")]);
    path
}

/// sha256sum lines for `files` (by file name).
fn manifest(files: &[(PathBuf, Vec<u8>)]) -> String {
    files
        .iter()
        .map(|(path, data)| {
            let name = path.file_name().expect("a name").to_string_lossy();
            let tmp = tempfile::NamedTempFile::new().expect("temp");
            std::fs::write(tmp.path(), data).expect("write");
            let sum = run("sha256sum", &[tmp.path().to_str().expect("utf-8")]);
            format!(
                "{}  {name}\n",
                sum.split_whitespace().next().expect("a sum")
            )
        })
        .collect()
}

/// Detaches the loop devices of the instances left running (a confirmed failover's
/// instance is production: nothing but the test removes it).
struct Detach(Vec<String>);

impl Drop for Detach {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = std::process::Command::new("losetup")
                .args(["-d", d])
                .status();
        }
    }
}

#[test]
fn a_drill_runs_beside_replication_then_a_failover_changes_point_and_is_confirmed() {
    let site = Site::new("dr-failover", 256 << 20, free_port());
    let (_standby, console, agent) = protect(&site, &[]);
    let first = {
        let _m = site.mount();
        write_files(&site.mnt, "first", 4, 1 << 20, 11)
    };
    let p1 = console.json(&["point", "create", "--server", "web-1"])["point"]
        .as_u64()
        .expect("a point id")
        .to_string();
    let second = {
        let _m = site.mount();
        write_files(&site.mnt, "second", 4, 1 << 20, 12)
    };
    agent.wait_in_sync(WAIT);
    let scripts = site.scripts.as_path();
    let mut both = first.clone();
    both.extend(second.clone());

    // Bad drills: clear errors, nothing made.
    let e = console.refused(&[
        "drill",
        "start",
        "web-1",
        "--script",
        "/nonexistent/check.sh",
    ]);
    assert!(
        e.contains("/nonexistent/check.sh") && e.contains("No such file"),
        "{e}"
    );
    // Post-launch scripts run as root: only from the scripts directory, no link out.
    let outside = check_script(site.dir.path(), "outside.sh", "", &[]);
    let e = console.refused(&[
        "drill",
        "start",
        "web-1",
        "--script",
        outside.to_str().unwrap(),
    ]);
    assert!(
        e.contains("is not in the scripts directory")
            && e.contains(scripts.to_str().unwrap())
            && e.contains("owned by root"),
        "the refusal names the rule and the directory: {e}"
    );
    let link = scripts.join("link-out.sh");
    std::os::unix::fs::symlink(&outside, &link).expect("symlink");
    let e = console.refused(&[
        "drill",
        "start",
        "web-1",
        "--script",
        link.to_str().unwrap(),
    ]);
    assert!(e.contains("is not in the scripts directory"), "{e}");
    assert_eq!(
        console.json(&["drill", "status", "web-1"])["instances"]
            .as_array()
            .map(Vec::len),
        Some(0),
        "a refused script makes no instance"
    );
    let e = console.refused(&["drill", "start", "web-1"]);
    assert!(e.contains("needs a post-launch script"), "{e}");
    let ok_script = check_script(scripts, "check-latest.sh", &manifest(&both), &[]);
    let e = console.refused(&[
        "drill",
        "start",
        "web-1",
        "--point",
        "12345",
        "--script",
        ok_script.to_str().unwrap(),
    ]);
    assert!(e.contains("no retained point 12345"), "{e}");
    let failing = check_script(scripts, "check-wrong.sh", &manifest(&second), &["first-0"]);
    let e = console.refused(&[
        "drill",
        "start",
        "web-1",
        "--point",
        &p1,
        "--script",
        failing.to_str().unwrap(),
    ]);
    assert!(e.contains("exited with 1") && e.contains("FAILED"), "{e}");
    assert_eq!(
        console.json(&["drill", "status", "web-1"])["instances"]
            .as_array()
            .map(Vec::len),
        Some(1),
        "a drill whose script failed stays for inspection"
    );
    console.ok(&["drill", "clean", "web-1"]);

    // A drill of the latest state while writes go on: replication is untouched.
    let drill = console.json(&[
        "drill",
        "start",
        "web-1",
        "--script",
        ok_script.to_str().unwrap(),
    ]);
    assert_eq!(drill["script"]["exit_code"], 0, "{drill}");
    // The instance holds the server's plaintext: 0700 directories, 0600 files, whatever
    // the umask the standby was started under (the test's, 022).
    let dir = PathBuf::from(drill["dir"].as_str().expect("a dir"));
    let image = PathBuf::from(drill["disks"][0]["image"].as_str().expect("an image"));
    for (path, want) in [
        (dir.parent().expect("instances/").to_owned(), "700"),
        (dir.clone(), "700"),
        (image, "600"),
        (dir.join("instance.json"), "600"),
        (dir.join("script.log"), "600"),
    ] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
            .permissions()
            .mode();
        assert_eq!(format!("{:o}", mode & 0o7777), want, "{}", path.display());
    }
    let during = {
        let _m = site.mount();
        write_files(&site.mnt, "during-drill", 2, 1 << 20, 13)
    };
    agent.wait_in_sync(WAIT);
    let status = console.json(&["drill", "status", "web-1"]);
    assert_eq!(status["server"]["state"], "realtime", "{status}");
    let device = drill["disks"][0]["device"]
        .as_str()
        .expect("a device")
        .to_owned();
    assert!(std::path::Path::new(&device).exists());
    console.ok(&["drill", "clean", "web-1"]);
    assert!(
        !run("losetup", &["-a"]).contains(drill["dir"].as_str().expect("dir")),
        "the drill's devices are detached"
    );
    assert!(!std::path::Path::new(drill["dir"].as_str().expect("dir")).exists());

    // Failover at the latest state: replication stops, the files are all there.
    both.extend(during);
    let all_script = check_script(scripts, "check-all.sh", &manifest(&both), &[]);
    let e = console.refused(&["failover", "confirm", "web-1"]);
    assert!(e.contains("is realtime"), "{e}");
    let failover = console.json(&[
        "failover",
        "start",
        "web-1",
        "--script",
        all_script.to_str().unwrap(),
    ]);
    let mut detach = Detach(vec![
        failover["disks"][0]["device"].as_str().unwrap().into(),
    ]);
    assert_eq!(failover["script"]["exit_code"], 0, "{failover}");
    assert_eq!(console.server("web-1")["state"], "failed-over");
    agent.wait_until("paused by the failover", WAIT, |s| {
        s.phase == Some(ferry_replicator::status::Phase::Waiting)
    });
    let e = console.refused(&["replication", "start", "web-1"]);
    assert!(e.contains("failed-over"), "{e}");
    let e = console.refused(&[
        "drill",
        "start",
        "web-1",
        "--script",
        all_script.to_str().unwrap(),
    ]);
    assert!(
        e.contains("drill start is not allowed while the server is failed-over"),
        "{e}"
    );

    // Change point: the earlier point, without the later files.
    let e = console.refused(&[
        "failover",
        "change-point",
        "web-1",
        "--script",
        all_script.to_str().unwrap(),
    ]);
    assert!(e.contains("only once"), "{e}");
    let p1_script = check_script(scripts, "check-p1.sh", &manifest(&first), &["second-0"]);
    let changed = console.json(&[
        "failover",
        "change-point",
        "web-1",
        "--point",
        &p1,
        "--script",
        p1_script.to_str().unwrap(),
    ]);
    detach
        .0
        .push(changed["disks"][0]["device"].as_str().unwrap().into());
    assert_eq!(changed["script"]["exit_code"], 0, "{changed}");
    assert_eq!(changed["point"].as_u64().map(|p| p.to_string()), Some(p1));
    assert!(
        !std::path::Path::new(failover["dir"].as_str().unwrap()).exists(),
        "the instance at the latest point was replaced"
    );
    let s = console.json(&["failover", "confirm", "web-1"]);
    assert_eq!(s["state"], "failover-confirmed", "{s}");
    assert_eq!(s["instance"], changed["id"], "{s}");
}

/// sha256 of a whole device or file.
fn digest_of(path: &str) -> String {
    run("sha256sum", &[path])
        .split_whitespace()
        .next()
        .expect("a sum")
        .to_owned()
}

#[test]
fn the_whole_cycle_fails_over_replicates_back_onto_the_original_machine_and_fails_back() {
    let site = Site::relayed("dr-cycle", 256 << 20, free_port());
    let (data_relay, control_relay) = site.between_sites.as_ref().expect("relayed");
    // The reverse agent's tracker, detached when the test ends (only this test has one).
    let _reverse_pins = PinDir(PathBuf::from("/sys/fs/bpf/ferry-reverse-web-1"));
    let (primary, site_a) = site.primary();
    let (standby, console, agent) = protect(&site, &[]);
    let scripts = site.scripts.as_path();
    let before = {
        let _m = site.mount();
        write_files(&site.mnt, "before", 6, 1 << 20, 21)
    };
    agent.wait_in_sync(WAIT);

    // Disaster: the protected host is lost; fail over at the latest state.
    agent.kill();
    let failover = console.json(&[
        "failover",
        "start",
        "web-1",
        "--script",
        check_script(scripts, "check-before.sh", &manifest(&before), &[])
            .to_str()
            .unwrap(),
    ]);
    assert_eq!(failover["script"]["exit_code"], 0, "{failover}");
    let instance_dev = failover["disks"][0]["device"].as_str().unwrap().to_owned();
    console.ok(&["failover", "confirm", "web-1"]);
    let e = console.refused(&["reverse", "start", "web-1"]);
    assert!(e.contains("allowed now: reverse register"), "{e}");

    // The instance is production now: it takes writes.
    let instance_mnt = site.dir.path().join("instance-mnt");
    let on_instance = {
        let _m = Mount::new(&instance_dev, &instance_mnt, "rw");
        write_files(&instance_mnt, "failed-over", 3, 1 << 20, 22)
    };

    // The path between the sites holds no key: a peer call whose TLS is damaged fails,
    // naming the site, and changes nothing; made again on an honest path, it succeeds.
    let confirmed = console.server("web-1")["state"].clone();
    control_relay.set_mode(Mode::FlipFirst);
    let e = console.refused(&["reverse", "register", "web-1"]);
    assert!(e.contains("site zone-a") && e.contains("tls"), "{e}");
    eprintln!("cycle: a damaged peer call: {}", e.trim());
    assert!(
        control_relay.stats().flips >= 1,
        "the relay damaged nothing"
    );
    assert_eq!(
        console.server("web-1")["state"],
        confirmed,
        "a failed call changed the state"
    );
    control_relay.set_mode(Mode::Pass);

    // Reverse: registered at site A, replicated onto the original machine's disk.
    console.ok(&["reverse", "register", "web-1"]);
    assert_eq!(site_a.server("web-1")["state"], "installing");
    console.ok(&["reverse", "start", "web-1", "--original-machine"]);
    let s = console.wait_state("web-1", "reverse-realtime");
    let shipped = s["reverse_agent"]["shipped_bytes"]
        .as_u64()
        .expect("shipped bytes");
    let catch_up = &s["reverse_agent"]["disks"][0]["last_catch_up"];
    assert_eq!(catch_up["method"], "digest compare", "{s}");
    assert!(
        shipped < 32 << 20,
        "onto the original machine only the differences travel: {shipped} bytes of 256 MiB"
    );
    eprintln!(
        "cycle: failover ready in {} ms; reverse onto the original machine shipped {shipped} bytes \
         ({catch_up})",
        failover["ready_ms"]
    );
    // The relay damages the reverse agent's link (flips, drops, duplicates, replays,
    // cuts) while the instance is written: the link fails and is made again, and every
    // byte still arrives (the failback below compares the whole disk).
    data_relay.set_mode(Mode::Bytes);
    let during = {
        let _m = Mount::new(&instance_dev, &instance_mnt, "rw");
        let mut files = write_files(&instance_mnt, "reverse", 2, 1 << 20, 23);
        let start = Instant::now();
        for round in 0..300u64 {
            if data_relay.stats().attacks() >= 10 || start.elapsed() > Duration::from_secs(90) {
                break;
            }
            let prefix = format!("damaged-{round}");
            files.extend(write_files(
                &instance_mnt,
                &prefix,
                1,
                256 << 10,
                100 + round,
            ));
            std::thread::sleep(Duration::from_millis(200));
        }
        files
    };
    data_relay.set_mode(Mode::Pass);
    let attacked = data_relay.stats();
    assert!(
        attacked.attacks() >= 5 && attacked.connections >= 2,
        "the relay between the sites barely attacked: {attacked:?}"
    );
    eprintln!("cycle: the reverse agent's link attacked: {attacked:?}");
    // Both sites' standbys crash (kill -9) and come back: the states hold, the reverse
    // agent reconnects by itself.
    primary.kill();
    standby.kill();
    let (_primary, site_a) = site.primary();
    let (_standby, console) = site.standby();
    // Site A found the original disk by what the agent registered: its loop device's
    // backing file and its size.
    let original = &site_a.server("web-1")["replication"]["original_disks"][0];
    assert_eq!(original["path"], site.disk.path_str(), "{original}");
    assert_eq!(
        original["identity"]["loop-backing-file"],
        site.dir.path().join("disk.img").to_str().unwrap(),
        "{original}"
    );
    assert_eq!(original["size"], 256 << 20, "{original}");
    let s = console.wait_state("web-1", "reverse-realtime");
    assert_eq!(s["state"], "reverse-realtime");
    site_a.wait_state("web-1", "realtime");
    // The reverse agent dies (as when the service that started it is stopped): the
    // server shows reverse-interrupted, and `reverse start` brings it back.
    let pid = s["reverse_agent"]["pid"]
        .as_u64()
        .expect("the reverse agent's pid");
    run("kill", &["-9", &pid.to_string()]);
    console.wait_state("web-1", "reverse-interrupted");
    let late = {
        let _m = Mount::new(&instance_dev, &instance_mnt, "rw");
        write_files(&instance_mnt, "while-interrupted", 1, 1 << 20, 24)
    };
    console.ok(&["reverse", "start", "web-1"]);
    console.wait_state("web-1", "reverse-realtime");
    site_a.wait_state("web-1", "realtime");
    let want = digest_of(&instance_dev);

    // Failback: at site A, onto the original disk, which then equals the instance.
    let mut all = before.clone();
    all.extend(on_instance);
    all.extend(during);
    all.extend(late);
    let back = console.json(&[
        "failback",
        "web-1",
        "--script",
        check_script(scripts, "check-all.sh", &manifest(&all), &[])
            .to_str()
            .unwrap(),
    ]);
    assert_eq!(back["script"]["exit_code"], 0, "{back}");
    assert_eq!(back["disks"][0]["device"], site.disk.path_str(), "{back}");
    assert_eq!(console.server("web-1")["state"], "failed-back");
    assert_eq!(
        digest_of(site.disk.path_str()),
        want,
        "the original disk equals the failed-over server's"
    );

    // Register: forward protection resumes without a full copy.
    console.ok(&["register", "web-1"]);
    let agent = site.agent();
    console.ok(&["replication", "start", "web-1"]);
    console.wait_state("web-1", "realtime");
    let status = agent.wait_until("caught up after the failback", WAIT, |s| {
        s.disks[0].last_catch_up.is_some() && s.backlog_bytes == 0
    });
    let report = status.disks[0].last_catch_up.clone().expect("a catch-up");
    eprintln!(
        "cycle: failback ready in {} ms; forward again after register: {report:?}",
        back["ready_ms"]
    );
    assert_eq!(report.method, "digest compare", "{report:?}");
    assert!(
        report.shipped_bytes < 64 << 20,
        "registering forward again ships what changed, not the disk: {report:?}"
    );
    let point = console.json(&["point", "create", "--server", "web-1"]);
    let id = point["point"].as_u64().expect("a point").to_string();
    site.assert_point_holds(&id, &all);
}

/// A boot sector that writes "ferry boot ok" to the first serial port and halts:
/// `mov si, msg; l: lodsb; or al, al; jz h; mov dx, 0x3f8; out dx, al; jmp l;
/// h: cli; hlt; msg: db "ferry boot ok", 13, 10, 0`, signed 0x55aa.
fn boot_sector() -> [u8; 512] {
    let mut s = [0u8; 512];
    let code = [
        0xbe, 0x10, 0x7c, 0xac, 0x08, 0xc0, 0x74, 0x06, 0xba, 0xf8, 0x03, 0xee, 0xeb, 0xf5, 0xfa,
        0xf4,
    ];
    s[..code.len()].copy_from_slice(&code);
    let msg = b"ferry boot ok\r\n\0";
    s[code.len()..code.len() + msg.len()].copy_from_slice(msg);
    s[510] = 0x55;
    s[511] = 0xaa;
    s
}

#[test]
fn a_qemu_drill_boots_the_replicated_system_disk_and_clean_stops_it() {
    let site = Site::new("dr-qemu", 64 << 20, free_port());
    // ext4 leaves its first 1 KiB alone: room for a boot sector on the same disk.
    std::os::unix::fs::FileExt::write_all_at(
        &std::fs::OpenOptions::new()
            .write(true)
            .open(site.disk.path_str())
            .expect("open the disk"),
        &boot_sector(),
        0,
    )
    .expect("write the boot sector");
    let (_standby, console, agent) = protect(&site, &[]);
    agent.wait_in_sync(WAIT);
    let e = console.refused(&[
        "drill",
        "start",
        "web-1",
        "--launcher",
        "qemu",
        "--cpus",
        "0",
    ]);
    assert!(e.contains("cpus must be 1 to 64"), "{e}");
    let drill = console.json(&[
        "drill",
        "start",
        "web-1",
        "--launcher",
        "qemu",
        "--memory-mib",
        "128",
        "--network",
        "none",
        "--ip",
        "10.0.0.5/24",
    ]);
    let console_log = PathBuf::from(drill["vm"]["console"].as_str().expect("a console"));
    let pid = drill["vm"]["pid"].as_u64().expect("a pid");
    let command = drill["vm"]["command"].to_string();
    assert!(
        command.contains("-m\",\"128\"") && command.contains("opt/ferry/ip,string=10.0.0.5/24"),
        "{command}"
    );
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(&console_log).unwrap_or_default();
        if text.contains("ferry boot ok") {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "the VM never printed its boot message; console: {text:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    console.ok(&["drill", "clean", "web-1"]);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "clean stopped the VM"
    );
}

#[test]
fn with_auto_restart_off_an_interrupted_server_waits_for_the_operator() {
    let site = Site::new("dr-norestart", 64 << 20, free_port());
    let (_standby, console, agent) = protect(&site, &["--no-auto-restart"]);
    assert_eq!(
        console.server("web-1")["replication"]["auto_restart"],
        false
    );
    agent.kill();
    console.wait_state("web-1", "interrupted");
    let agent = site.agent();
    let waiting = agent.wait_until("waiting for the operator", WAIT, |s| {
        s.phase == Some(ferry_replicator::status::Phase::Waiting)
    });
    assert!(
        waiting
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("auto-restart is off")),
        "{waiting:?}"
    );
    assert_eq!(console.server("web-1")["state"], "interrupted");
    console.ok(&["replication", "start", "web-1"]);
    console.wait_state("web-1", "realtime");
}

/// A standby that holds no recovery key reads no replica: a drill needs the server's
/// recovery key sent with the operation (over TLS), and only that server's opens it.
#[test]
fn a_standby_without_a_recovery_key_takes_one_with_the_operation_only() {
    let site = Site::new("dr-recovery-key", 64 << 20, free_port());
    let conf = std::fs::read_to_string(&site.standby_conf).expect("read config");
    let without: String = conf
        .lines()
        .filter(|l| !l.starts_with("recovery_key_file"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(
        without, conf,
        "the harness gives standbys a recovery key file"
    );
    std::fs::write(&site.standby_conf, without).expect("write config");
    let (_standby, console, agent) = protect(&site, &[]);
    let files = {
        let _m = site.mount();
        write_files(&site.mnt, "keyed", 2, 1 << 20, 21)
    };
    agent.wait_in_sync(WAIT);
    let script = check_script(&site.scripts, "keyed.sh", &manifest(&files), &[]);
    let script = script.to_str().expect("utf-8");
    let e = console.refused(&["drill", "start", "web-1", "--script", script]);
    assert!(
        e.contains("holds no recovery key") && e.contains("--recovery-key"),
        "a standby without a key must say how to give one: {e}"
    );
    let key_of = |server: &str| {
        let path = site.dir.path().join(format!("{server}.recovery.key"));
        ferry(&[
            "keygen",
            "--from",
            site.key.to_str().expect("utf-8"),
            "--recovery",
            server,
            "--out",
            path.to_str().expect("utf-8"),
        ]);
        path
    };
    let other = key_of("web-2");
    let e = console.refused(&[
        "drill",
        "start",
        "web-1",
        "--script",
        script,
        "--recovery-key",
        other.to_str().expect("utf-8"),
    ]);
    assert!(
        e.contains("web-2") && e.contains("web-1"),
        "another server's recovery key must be refused by name: {e}"
    );
    let mine = key_of("web-1");
    let drill = console.json(&[
        "drill",
        "start",
        "web-1",
        "--script",
        script,
        "--recovery-key",
        mine.to_str().expect("utf-8"),
    ]);
    assert_eq!(
        drill["script"]["exit_code"], 0,
        "the drill with the server's own key checks its files: {drill}"
    );
    console.ok(&["drill", "clean", "web-1"]);
}
