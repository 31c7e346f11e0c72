//! Post-launch scripts (root): a script, or a scripts directory, owned by another user
//! is refused, naming the owner, the rule and the directory — even when every mode bit
//! is right. (The rest of the rule is unit-tested in `scripts.rs`.)

use ferry_site::scripts::{ScriptError, ScriptsDir};
use std::os::unix::fs::PermissionsExt;

#[test]
fn a_script_or_directory_another_user_owns_is_refused() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test hands files to another user (chown): run it as root, as CI does"
    );
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("scripts");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let script = dir.join("up.sh");
    std::fs::write(&script, "#!/bin/sh\n").expect("write");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let scripts = ScriptsDir::new(dir.clone());
    scripts
        .admit(&script)
        .expect("root's script in root's directory");
    let nobody = nix::unistd::Uid::from_raw(65534);
    for owned in [&script, &dir] {
        nix::unistd::chown(owned, Some(nobody), None).expect("chown");
        let err = scripts.admit(&script).expect_err("another user's");
        let text = err.to_string();
        assert!(
            matches!(err, ScriptError::Owner { uid: 65534, .. })
                && text.contains("not root")
                && text.contains(dir.to_str().expect("utf-8")),
            "{}: {text}",
            owned.display()
        );
        nix::unistd::chown(owned, Some(nix::unistd::Uid::from_raw(0)), None).expect("chown");
    }
    scripts.admit(&script).expect("root's again");
}
