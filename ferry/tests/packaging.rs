//! Fast checks of `packaging/` that need neither root nor a built package: the systemd
//! units pass `systemd-analyze verify` (pointed at the ferry binary under test, as the
//! installed units point at /usr/bin/ferry), and the maintainer scripts parse. The slow
//! checks — packages built, installed and run under a real systemd in a container — are
//! `bash scripts/test-packaging.sh`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn packaging() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging")
}

const UNITS: [&str; 2] = ["ferry-agent.service", "ferry-standby.service"];

#[test]
fn units_pass_systemd_analyze_verify() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut args: Vec<PathBuf> = Vec::new();
    for unit in UNITS {
        let text = std::fs::read_to_string(packaging().join("systemd").join(unit))
            .unwrap_or_else(|e| panic!("reading packaging/systemd/{unit}: {e}"));
        assert!(
            text.contains("ExecStart=/usr/bin/ferry "),
            "{unit} does not start /usr/bin/ferry"
        );
        let copy = dir.path().join(unit);
        let text = text.replace(
            "/usr/bin/ferry ",
            &format!("{} ", env!("CARGO_BIN_EXE_ferry")),
        );
        std::fs::write(&copy, text).expect("writing the unit copy");
        args.push(copy);
    }
    // --man=no: the man pages named in Documentation= exist only once the package is
    // installed (scripts/test-packaging.sh verifies the installed units with them).
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg("--man=no")
        .args(&args)
        .output()
        .expect("cannot run systemd-analyze: install systemd (apt install systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Warnings about the host's own units (pulled in through After=) are not ours.
    let ours: Vec<&str> = stderr.lines().filter(|l| l.contains("ferry")).collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify refuses the units ({}):\n{stderr}",
        out.status
    );
}

#[test]
fn maintainer_scripts_parse() {
    for script in [
        "deb/postinst",
        "deb/prerm",
        "deb/postrm",
        "rpm/post.sh",
        "rpm/preun.sh",
        "rpm/postun.sh",
    ] {
        let path = packaging().join(script);
        let out = Command::new("sh")
            .arg("-n")
            .arg(&path)
            .output()
            .expect("cannot run sh");
        assert!(
            out.status.success(),
            "packaging/{script} does not parse: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
