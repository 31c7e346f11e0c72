//! The script launcher: runs an admitted post-launch script with the instance in its
//! environment (see the parent module's doc), its output (stdout and stderr) in
//! `script.log` (0600), to its end or until [`SCRIPT_TIMEOUT`], when it is killed. Only
//! the last [`OUTPUT_TAIL`] bytes of the output are kept in `instance.json`.

use super::{Instance, InstanceError, ScriptRun, io_err, millis};
use ferry_standby::private_files;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest a post-launch script may run.
pub const SCRIPT_TIMEOUT: Duration = Duration::from_secs(600);
/// Most output of a script kept in `instance.json` (the whole is in `script.log`).
pub const OUTPUT_TAIL: usize = 16 << 10;

/// The environment a post-launch script gets.
fn script_env(instance: &Instance) -> Vec<(String, String)> {
    let devices: Vec<&str> = instance.disks.iter().map(|d| d.device.as_str()).collect();
    let mut env = vec![
        ("FERRY_INSTANCE".to_owned(), instance.id.clone()),
        ("FERRY_KIND".to_owned(), instance.kind.name().to_owned()),
        ("FERRY_SERVER".to_owned(), instance.server.to_string()),
        (
            "FERRY_POINT".to_owned(),
            instance
                .point
                .map_or_else(|| "latest".to_owned(), |p| p.get().to_string()),
        ),
        ("FERRY_SEQ".to_owned(), instance.seq.to_string()),
        ("FERRY_DEVICES".to_owned(), devices.join(" ")),
        (
            "FERRY_INSTANCE_DIR".to_owned(),
            instance.dir.to_string_lossy().into_owned(),
        ),
        (
            "FERRY_NETWORK".to_owned(),
            instance.spec.network.clone().unwrap_or_default(),
        ),
        (
            "FERRY_IP".to_owned(),
            instance.spec.ip.clone().unwrap_or_default(),
        ),
    ];
    for d in &instance.disks {
        env.push((format!("FERRY_DEVICE_{}", d.disk.get()), d.device.clone()));
    }
    for f in instance.vm.iter().flat_map(|vm| &vm.forwards) {
        env.push((
            format!("FERRY_FORWARD_{}", f.guest),
            format!("127.0.0.1:{}", f.host),
        ));
    }
    env
}

/// Runs the post-launch script to its end (or [`SCRIPT_TIMEOUT`]).
pub(super) fn run_script(instance: &Instance, script: &Path) -> Result<ScriptRun, InstanceError> {
    let started = Instant::now();
    let log = instance.dir.join("script.log");
    let out = private_files::create(&log).map_err(io_err("create", &log))?;
    let err = out.try_clone().map_err(io_err("open", &log))?;
    let mut child = Command::new(script)
        .envs(script_env(instance))
        .current_dir(&instance.dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(io_err("run", script))?;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(io_err("wait for", script))? {
            break Some(status);
        }
        if started.elapsed() > SCRIPT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut output = String::new();
    if let Ok(f) = std::fs::File::open(&log) {
        let len = f.metadata().map_or(0, |m| m.len());
        let skip = len.saturating_sub(OUTPUT_TAIL as u64);
        let mut bytes = Vec::new();
        let mut f = f;
        if std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(skip)).is_ok() {
            let _ = f.read_to_end(&mut bytes);
        }
        output = String::from_utf8_lossy(&bytes).into_owned();
    }
    Ok(ScriptRun {
        script: script.to_owned(),
        exit_code: status.and_then(|s| s.code()),
        output,
        log,
        millis: millis(started.elapsed()),
    })
}
