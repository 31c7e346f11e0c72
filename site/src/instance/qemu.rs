//! The qemu launcher: boots the instance's first device with `qemu-system-x86_64`
//! (daemonized, its pid in `qemu.pid`, its serial console in `console.log`, made 0600
//! before qemu opens it), and stops it again. On network "user" the VM is restricted
//! (`restrict=on`): a replica reaches no address at all, so a drill cannot talk to
//! production; the standby reaches the guest ports of `Spec::forward` on its loopback.
//! The accelerators are the site's (`qemu_accel` in the standby's config). A VM is signalled only while
//! `/proc/<pid>/cmdline` still names this instance (`ferry-<id>`): a pid reused by
//! another process after a restart is left alone.

use super::{Instance, InstanceError, Spec, Vm, io_err, tool};
use ferry_standby::private_files;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::{Duration, Instant};

/// What `qemu_accel` may be: KVM (falling back to TCG), only KVM, only TCG (where KVM
/// exists but cannot run the guest, e.g. nested without support).
pub const QEMU_ACCELS: &[&str] = &["kvm:tcg", "kvm", "tcg"];

/// The accelerators unless the site's config says otherwise.
pub const DEFAULT_QEMU_ACCEL: &str = "kvm:tcg";

/// A guest TCP port and the standby's loopback port that reaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forward {
    pub guest: u16,
    pub host: u16,
}

/// The qemu command line that boots `disks` (the first one is the boot disk) with the
/// accelerators `accel`, forwarding `forwards` on network "user".
pub fn qemu_command(
    id: &str,
    spec: &Spec,
    disks: &[String],
    dir: &Path,
    accel: &str,
    forwards: &[Forward],
) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "qemu-system-x86_64".into(),
        "-name".into(),
        format!("ferry-{id}"),
        "-machine".into(),
        format!("q35,accel={accel}"),
        "-smp".into(),
        spec.cpus.to_string(),
        "-m".into(),
        spec.memory_mib.to_string(),
        "-display".into(),
        "none".into(),
        "-monitor".into(),
        "none".into(),
        "-serial".into(),
        format!("file:{}", dir.join("console.log").display()),
        "-daemonize".into(),
        "-pidfile".into(),
        dir.join("qemu.pid").display().to_string(),
    ];
    for (i, disk) in disks.iter().enumerate() {
        args.push("-drive".into());
        args.push(format!(
            "file={disk},format=raw,if=virtio,cache=none,index={i}{}",
            if i == 0 { ",media=disk" } else { "" }
        ));
    }
    args.extend(["-boot".into(), "c".into()]);
    match spec.network.as_deref() {
        None | Some("none") => args.extend(["-nic".into(), "none".into()]),
        Some("user") => {
            let mut nic = "user,model=virtio-net-pci,restrict=on".to_owned();
            for f in forwards {
                nic.push_str(&format!(",hostfwd=tcp:127.0.0.1:{}-:{}", f.host, f.guest));
            }
            args.extend(["-nic".into(), nic]);
        }
        Some(bridge) => args.extend([
            "-nic".into(),
            format!("bridge,br={bridge},model=virtio-net-pci"),
        ]),
    }
    if let Some(ip) = &spec.ip {
        args.extend(["-fw_cfg".into(), format!("name=opt/ferry/ip,string={ip}")]);
    }
    args
}

pub(super) fn start_vm(instance: &Instance, accel: &str) -> Result<Vm, InstanceError> {
    let devices: Vec<String> = instance.disks.iter().map(|d| d.device.clone()).collect();
    let forwards = instance
        .spec
        .forward
        .iter()
        .map(|&guest| {
            // A free loopback port now; qemu binds it a moment later.
            let probe = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(io_err("bind", Path::new("127.0.0.1:0")))?;
            Ok(Forward {
                guest,
                host: probe.port(),
            })
        })
        .collect::<Result<Vec<_>, InstanceError>>()?;
    let command = qemu_command(
        &instance.id,
        &instance.spec,
        &devices,
        &instance.dir,
        accel,
        &forwards,
    );
    // qemu opens its serial file without truncating the mode: made 0600 here first (the
    // console shows the guest's boot, which may print secrets).
    let console = instance.dir.join("console.log");
    private_files::create(&console).map_err(io_err("create", &console))?;
    let args: Vec<&str> = command[1..].iter().map(String::as_str).collect();
    tool(&command[0], &args)?;
    let pidfile = instance.dir.join("qemu.pid");
    let pid = std::fs::read_to_string(&pidfile)
        .map_err(io_err("read", &pidfile))?
        .trim()
        .parse()
        .map_err(|_| InstanceError::Tool {
            command: command[0].clone(),
            output: format!("{} holds no pid", pidfile.display()),
        })?;
    Ok(Vm {
        pid,
        console: instance.dir.join("console.log"),
        command,
        forwards,
    })
}

/// Stops the instance's VM (if it is still the qemu this instance started).
pub(super) fn stop_vm(instance: &Instance) {
    let Some(vm) = &instance.vm else { return };
    let ours = std::fs::read(format!("/proc/{}/cmdline", vm.pid))
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&format!("ferry-{}", instance.id)));
    if ours && let Ok(pid) = i32::try_from(vm.pid) {
        terminate(nix::unistd::Pid::from_raw(pid), Duration::from_secs(5));
    }
}

/// SIGTERM, up to `grace` for the process to end, then SIGKILL.
pub(crate) fn terminate(pid: nix::unistd::Pid, grace: Duration) {
    use nix::sys::signal::{Signal, kill};
    if kill(pid, Signal::SIGTERM).is_err() {
        return;
    }
    let deadline = Instant::now() + grace;
    while kill(pid, None).is_ok() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = kill(pid, Signal::SIGKILL);
}

#[cfg(test)]
mod tests {
    use super::super::test_spec as spec;
    use super::*;

    #[test]
    fn the_qemu_command_boots_the_first_disk_with_the_chosen_size_and_network() {
        let disks = vec!["/dev/loop7".to_owned(), "/dev/loop8".to_owned()];
        let cmd = qemu_command(
            "drill-web-1-1",
            &spec(),
            &disks,
            Path::new("/i"),
            DEFAULT_QEMU_ACCEL,
            &[],
        );
        let text = cmd.join(" ");
        for want in [
            "qemu-system-x86_64 -name ferry-drill-web-1-1 -machine q35,accel=kvm:tcg",
            "-smp 2 -m 2048",
            "-serial file:/i/console.log",
            "-daemonize -pidfile /i/qemu.pid",
            "-drive file=/dev/loop7,format=raw,if=virtio,cache=none,index=0,media=disk",
            "-drive file=/dev/loop8,format=raw,if=virtio,cache=none,index=1 ",
            "-boot c",
            "-nic bridge,br=br0,model=virtio-net-pci",
            "-fw_cfg name=opt/ferry/ip,string=10.0.0.5/24",
        ] {
            assert!(text.contains(want), "{want:?} missing from {text}");
        }
        let user = Spec {
            network: Some("user".into()),
            ip: None,
            ..spec()
        };
        let forward = [Forward {
            guest: 8080,
            host: 40123,
        }];
        let text = qemu_command("x", &user, &disks, Path::new("/i"), "tcg", &forward).join(" ");
        assert!(
            text.contains(
                "-nic user,model=virtio-net-pci,restrict=on,hostfwd=tcp:127.0.0.1:40123-:8080"
            ),
            "a user network reaches nothing but the forwarded ports: {text}"
        );
        assert!(text.contains("-machine q35,accel=tcg"), "{text}");
        assert!(!text.contains("fw_cfg"), "{text}");
        let none = Spec {
            network: None,
            ..spec()
        };
        let text = qemu_command("x", &none, &disks, Path::new("/i"), "tcg", &[]).join(" ");
        assert!(text.contains("-nic none"), "{text}");
    }
}
