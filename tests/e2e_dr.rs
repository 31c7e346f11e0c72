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
//!   again: only what changed travels, no full copy.

mod support;

use serde_json::Value;
use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};
use support::*;

const WAIT: Duration = Duration::from_secs(90);

/// The operator's console: `ferry` commands against one standby's control API.
struct Console {
    control: String,
    token: PathBuf,
}

impl Console {
    fn run(&self, args: &[&str]) -> Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(args)
            .args(["--control", &self.control, "--token-file"])
            .arg(&self.token)
            .output()
            .expect("running ferry")
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "ferry {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// Runs a command that must fail; returns its error message.
    fn refused(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "ferry {args:?} should have failed; it printed {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).expect("utf-8 output")
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        serde_json::from_str(&self.ok(&all)).expect("JSON output")
    }

    fn server(&self, id: &str) -> Value {
        self.json(&["server", "show", id])
    }

    /// Waits until the server's shown state is `state`.
    fn wait_state(&self, id: &str, state: &str) -> Value {
        let start = Instant::now();
        loop {
            let s = self.server(id);
            if s["shown_state"] == state {
                return s;
            }
            assert!(
                start.elapsed() < WAIT,
                "server {id} never became {state}: {s}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A standby site with the control API, and one protected server's disk and agent.
struct Site {
    dir: tempfile::TempDir,
    key: PathBuf,
    token: PathBuf,
    data: PathBuf,
    standby_conf: PathBuf,
    agent_conf: PathBuf,
    state: PathBuf,
    /// Detaches the agent's pinned tracker when the test ends.
    _pins: PinDir,
    mnt: PathBuf,
    disk: LoopDevice,
}

impl Site {
    fn new(name: &str, size: u64, data_port: u16) -> Self {
        require_root("the DR operations' end-to-end tests");
        let dir = tempfile::tempdir().expect("tempdir");
        let p = |n: &str| dir.path().join(n);
        let (key, token) = (p("pair.key"), p("control.token"));
        new_key(&key);
        ferry(&["keygen", "--out", token.to_str().expect("utf-8")]);
        let data = p("standby");
        let standby_conf = p("standby.toml");
        let addr = format!("127.0.0.1:{data_port}");
        standby_config(&standby_conf, &data, &key, &[], 16);
        let text = std::fs::read_to_string(&standby_conf).expect("read config");
        std::fs::write(
            &standby_conf,
            format!(
                "{}\n[control]\nlisten = \"127.0.0.1:0\"\ntoken_file = {:?}\n",
                text.replace("127.0.0.1:0", &addr),
                token.to_str().expect("utf-8")
            ),
        )
        .expect("write config");
        let disk = LoopDevice::new_sparse(&p("disk.img"), size);
        run("mkfs.ext4", &["-q", "-F", disk.path_str()]);
        let pins = PinDir::new(name);
        let state = p("agent");
        let agent_conf = p("agent.toml");
        std::fs::write(
            &agent_conf,
            format!(
                "server = \"web-1\"\nstandby = \"{addr}\"\nkey_file = {:?}\ndisks = [{:?}]\n\
                 state_dir = {:?}\npin_dir = {:?}\npoint_interval_minutes = 0\n",
                key.to_str().expect("utf-8"),
                disk.path_str(),
                state.to_str().expect("utf-8"),
                pins.path_str(),
            ),
        )
        .expect("write agent config");
        Self {
            mnt: p("mnt"),
            dir,
            key,
            token,
            data,
            standby_conf,
            agent_conf,
            state,
            _pins: pins,
            disk,
        }
    }

    fn standby(&self) -> (StandbyProcess, Console) {
        let standby = StandbyProcess::start(&self.standby_conf);
        let console = Console {
            control: standby.control.clone().expect("the control API is served"),
            token: self.token.clone(),
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
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
    let e = console.refused(&["server", "add", "web-1", "--pair", "nope"]);
    assert!(e.contains("no pair named \"nope\""), "{e}");
    let wrong = Console {
        control: console.control.clone(),
        token: site.key.clone(),
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
    let s = console.json(&["server", "add", "web-1", "--pair", "prod.eu"]);
    assert_eq!(s["shown_state"], "installing", "{s}");

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
