//! `ferry tls init` and `ferry tls issue` as an operator runs them: private keys under any
//! umask, certificates that chain to the CA, refusals that name the problem.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

/// Runs ferry under `umask` (through sh, so the child starts with it).
fn ferry(umask: &str, args: &[&str]) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(format!("umask {umask}; exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .output()
        .expect("running ferry")
}

fn ok(umask: &str, args: &[&str]) {
    let out = ferry(umask, args);
    assert!(
        out.status.success(),
        "ferry {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn fails(args: &[&str]) -> String {
    let out = ferry("022", args);
    assert!(!out.status.success(), "ferry {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn init_and_issue_write_private_keys_and_certificates_that_verify() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("pki");
    let d = dir.to_str().expect("utf-8 path");
    ok("000", &["tls", "init", "--dir", d]);
    assert_eq!(mode(&dir), 0o700, "CA directory");
    assert_eq!(mode(&dir.join("ca.key")), 0o600, "ca.key under umask 000");
    assert_eq!(mode(&dir.join("ca.pem")), 0o644, "ca.pem");

    ok(
        "000",
        &[
            "tls",
            "issue",
            "--dir",
            d,
            "--name",
            "site-b",
            "--san",
            "127.0.0.1",
        ],
    );
    ok(
        "077",
        &[
            "tls", "issue", "--dir", d, "--name", "web-1", "--days", "30",
        ],
    );
    assert_eq!(mode(&dir.join("site-b.key")), 0o600, "key under umask 000");
    assert_eq!(mode(&dir.join("web-1.pem")), 0o644, "cert under umask 077");
    for name in ["site-b", "web-1"] {
        let files = ferry_tls::TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
        };
        files
            .load_identity()
            .unwrap_or_else(|e| panic!("{name}: {}", ferry_wire::error_chain(&e)));
        let chain = ferry_tls::config::load_certs(&files.cert).expect("cert");
        ferry_tls::check_peer_name(Some(&chain), name).expect("names itself");
    }

    let err = fails(&["tls", "init", "--dir", d]);
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );
    let err = fails(&["tls", "issue", "--dir", d, "--name", "9web"]);
    assert!(err.contains("must start with a letter"), "{err}");
    let err = fails(&["tls", "issue", "--dir", d, "--name", "web..1"]);
    assert!(err.contains("not a DNS name"), "{err}");
    let err = fails(&["tls", "issue", "--dir", d, "--name", "web-1"]);
    assert!(err.contains("--force"), "{err}");
    let missing = tmp.path().join("nothing");
    let err = fails(&[
        "tls",
        "issue",
        "--dir",
        missing.to_str().expect("utf-8"),
        "--name",
        "x",
    ]);
    assert!(err.contains("ferry tls init"), "{err}");
}
