//! The reverse agent's process: started (`ferry agent --config`, taken as started only
//! once it prints `tracking`, else its log is the error), asked for the failback's point
//! over its control socket, stopped with SIGTERM so it saves its state (SIGKILL after
//! 30 s), and its tracker detached when replication back is over. A reverse agent left
//! by an earlier run of the standby is signalled only while `/proc/<pid>/cmdline` still
//! names its config: a reused pid is never killed.

use crate::catalog::Reverse;
use crate::control::{Control, ControlError};
use ferry_replicator::agent::request_point;
use ferry_replicator::status::Status;
use ferry_wire::{PointId, ServerId};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Longest the reverse agent may take to make the failback's point.
const POINT_WAIT: Duration = Duration::from_secs(600);

impl Control {
    /// Starts `ferry agent --config <config>`, its log in `state_dir/agent.log`; its pid
    /// once it reports `tracking`.
    pub(super) fn spawn_reverse_agent(
        &self,
        id: &ServerId,
        config: &Path,
        state_dir: &Path,
    ) -> Result<u32, ControlError> {
        let tools = self.tools()?;
        ferry_standby::private_files::ensure_dir(state_dir).map_err(|e| ControlError::Io {
            action: "create",
            path: state_dir.to_owned(),
            source: e,
        })?;
        let log_path = state_dir.join("agent.log");
        let log =
            ferry_standby::private_files::create(&log_path).map_err(|e| ControlError::Io {
                action: "create",
                path: log_path.clone(),
                source: e,
            })?;
        let mut child = Command::new(&tools.ferry)
            .arg("agent")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| ControlError::Io {
                action: "start the reverse agent",
                path: tools.ferry.clone(),
                source: e,
            })?;
        let mut first = String::new();
        let stdout = child.stdout.take().expect("piped");
        let _ = BufReader::new(stdout).read_line(&mut first);
        if first.trim() != "tracking" {
            let _ = child.kill();
            let _ = child.wait();
            let mut text = String::new();
            let _ = std::fs::File::open(&log_path).and_then(|mut f| f.read_to_string(&mut text));
            return Err(ControlError::Reverse(format!(
                "the reverse agent of {id} did not start: {}",
                text.trim()
            )));
        }
        let pid = child.id();
        self.reverse_agents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), child);
        Ok(pid)
    }

    /// Stops the reverse agent (SIGTERM: it saves its state) and, with `detach`, its
    /// tracker.
    pub(super) fn stop_reverse_agent(&self, id: &ServerId, reverse: &Reverse, detach: bool) {
        let child = self
            .reverse_agents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        match child {
            Some(mut c) => {
                if let Ok(pid) = i32::try_from(c.id()) {
                    crate::instance::terminate(
                        nix::unistd::Pid::from_raw(pid),
                        Duration::from_secs(30),
                    );
                }
                let _ = c.wait();
            }
            // Started by an earlier run of the standby: signal it only if it still is
            // the reverse agent of this config.
            None => {
                if let (Some(pid), Some(config)) = (reverse.agent_pid, &reverse.config)
                    && is_reverse_agent(pid, config)
                    && let Ok(pid) = i32::try_from(pid)
                {
                    crate::instance::terminate(
                        nix::unistd::Pid::from_raw(pid),
                        Duration::from_secs(30),
                    );
                }
            }
        }
        if let (true, Some(pins)) = (detach, &reverse.pin_dir) {
            self.detach_tracker(id, pins);
        }
    }

    /// Detaches the reverse agent's tracker pinned in `pins` (`ferry track --detach`).
    pub(super) fn detach_tracker(&self, id: &ServerId, pins: &Path) {
        let Ok(tools) = self.tools() else { return };
        match Command::new(&tools.ferry)
            .args(["track", "--detach", "--pin-dir"])
            .arg(pins)
            .output()
        {
            Ok(o) if o.status.success() => {}
            other => {
                tracing::error!(server = %id, pins = %pins.display(), "cannot detach the reverse agent's tracker: {other:?}")
            }
        }
    }

    /// Whether the reverse agent of `id` runs.
    pub(super) fn reverse_agent_alive(&self, id: &ServerId, reverse: &Reverse) -> bool {
        if let Some(child) = self
            .reverse_agents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(id)
        {
            return matches!(child.try_wait(), Ok(None));
        }
        match (reverse.agent_pid, &reverse.config) {
            (Some(pid), Some(config)) => is_reverse_agent(pid, config),
            _ => false,
        }
    }

    /// Asks the reverse agent for a point (its control socket) and returns its id.
    pub(super) fn final_reverse_point(&self, reverse: &Reverse) -> Result<PointId, ControlError> {
        let state_dir = reverse
            .state_dir
            .as_ref()
            .ok_or_else(|| ControlError::Reverse("the reverse agent never ran".into()))?;
        let socket = state_dir.join("agent.sock");
        let reply = request_point(&socket, POINT_WAIT).map_err(|e| {
            ControlError::Reverse(format!(
                "cannot reach the reverse agent at {}: {e}",
                socket.display()
            ))
        })?;
        match (reply.ok, reply.point) {
            (true, Some(point)) => Ok(point),
            _ => Err(ControlError::Reverse(format!(
                "the reverse agent could not make the failback's point: {}",
                reply.error.as_deref().unwrap_or("no reason given")
            ))),
        }
    }
}

/// Whether process `pid` is `ferry agent --config <config>` (and not a zombie).
fn is_reverse_agent(pid: u32, config: &Path) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    !cmdline.is_empty() && String::from_utf8_lossy(&cmdline).contains(&*config.to_string_lossy())
}

/// The reverse agent's status file, if it has one.
pub(super) fn reverse_status(r: &Reverse) -> Option<Status> {
    Status::load(&r.state_dir.as_ref()?.join("status.json")).ok()
}
