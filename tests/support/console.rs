//! The operator's console in tests: `ferry` commands against a standby's control API
//! (HTTPS with the site pair's CA, the control token).

use serde_json::Value;
use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

/// The operator's console: `ferry` commands against one standby's control API.
pub(crate) struct Console {
    pub(crate) control: String,
    pub(crate) token: PathBuf,
    /// The site pair's CA: the control API is HTTPS.
    pub(crate) ca: PathBuf,
    /// How long [`Console::wait_state`] waits.
    pub(crate) wait: Duration,
}

impl Console {
    pub(crate) fn run(&self, args: &[&str]) -> Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(args)
            .args(["--control", &self.control, "--token-file"])
            .arg(&self.token)
            .arg("--ca")
            .arg(&self.ca)
            .output()
            .expect("running ferry")
    }

    /// Runs a command that must succeed; returns its stdout.
    pub(crate) fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "ferry {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// Runs a command that must fail; returns its error message.
    pub(crate) fn refused(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "ferry {args:?} should have failed; it printed {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).expect("utf-8 output")
    }

    pub(crate) fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        serde_json::from_str(&self.ok(&all)).expect("JSON output")
    }

    /// Creates the pair prod.eu (zone-a to zone-b) and adds server web-1 to it.
    pub(crate) fn add_web1(&self) {
        self.ok(&[
            "pair",
            "create",
            "prod.eu",
            "--kind",
            "zone-to-zone",
            "--primary",
            "zone-a",
            "--secondary",
            "zone-b",
        ]);
        self.ok(&["server", "add", "web-1", "--pair", "prod.eu"]);
    }

    pub(crate) fn server(&self, id: &str) -> Value {
        self.json(&["server", "show", id])
    }

    /// Waits until the server's shown state is `state`.
    pub(crate) fn wait_state(&self, id: &str, state: &str) -> Value {
        let start = Instant::now();
        loop {
            let s = self.server(id);
            if s["shown_state"] == state {
                return s;
            }
            assert!(
                start.elapsed() < self.wait,
                "server {id} never became {state}: {s}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
