//! `reverse start`: a reverse agent protects the failover instance's devices and ships
//! them to the peer, which then takes its records. The invariants:
//! - a restart after an interruption keeps the target (and, with the original machine,
//!   its disks) and stops the old agent but keeps its tracker, so nothing is missed;
//! - only a kernel disk name the agent registered becomes an original disk's path, and
//!   the peer finds each by the identity and size registered with it;
//! - the agent's key (0600, secret) and config are written with the serializer before it
//!   starts; an agent that fails to start leaves no tracker behind, and a peer that
//!   does not take its records stops the agent and its tracker.

use crate::catalog::Reverse;
use crate::control::{Control, ControlError};
use crate::instance::Instance;
use crate::lifecycle::{State, Step};
use crate::original_disks::OriginalDisk;
use ferry_replicator::config_file::AgentFile;
use ferry_wire::ServerId;
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Longest the peer may take to see the reverse agent's registration.
const PEER_WAIT: Duration = Duration::from_secs(60);

/// Where the reverse agent's files are, in the failover instance's directory.
struct AgentFiles {
    config: PathBuf,
    state_dir: PathBuf,
    pin_dir: PathBuf,
}

impl Control {
    /// Starts the reverse agent on the instance's devices, and the peer's replication.
    pub fn reverse_start(
        &self,
        id: &str,
        original_machine: bool,
        supplied: Option<&ferry_wire::RecoveryKey>,
    ) -> Result<State, ControlError> {
        let _op = self.operation(id)?;
        let server = self.catalog().server(id)?.clone();
        server.check(Step::ReverseStart)?;
        let mut reverse = server.reverse.clone().expect("reverse-registered has it");
        // Started again after an interruption: the same target; the old agent (if it still
        // runs) is stopped and its tracker kept, so the new one resumes without a gap.
        let original_machine = original_machine || reverse.original_machine;
        if server.state == State::ReverseInterrupted {
            self.stop_reverse_agent(&server.id, &reverse, false);
        }
        let instance = self.failover_instance(&server.id, server.instance.as_deref())?;
        let address = self
            .tools()?
            .peers
            .data_address(&reverse.site)
            .ok_or_else(|| {
                ControlError::Reverse(format!("site {} is not in [sites]", reverse.site))
            })?;
        let original_disks = if original_machine {
            self.original_disks(&server.id)?
        } else {
            Vec::new()
        };
        let files = self.write_agent_files(&server.id, &instance, &reverse, address, supplied)?;
        let pid = match self.spawn_reverse_agent(&server.id, &files.config, &files.state_dir) {
            Ok(pid) => pid,
            Err(e) => {
                self.detach_tracker(&server.id, &files.pin_dir);
                return Err(self.failed(id, e));
            }
        };
        reverse.agent_pid = Some(pid);
        reverse.config = Some(files.config);
        reverse.state_dir = Some(files.state_dir);
        reverse.pin_dir = Some(files.pin_dir);
        reverse.original_machine = original_machine;
        if let Err(e) = self.start_peer_replication(&reverse.site, id, original_disks) {
            self.stop_reverse_agent(&server.id, &reverse, true);
            return Err(self.failed(id, e));
        }
        Ok(self.change(|c| c.step_and(id, Step::ReverseStart, |s| s.reverse = Some(reverse)))?)
    }

    /// The disks the server registered here, as the original disks the peer restores
    /// onto.
    fn original_disks(&self, id: &ServerId) -> Result<Vec<OriginalDisk>, ControlError> {
        let state = self
            .data
            .read_server(id)
            .map_err(|e| ControlError::Store(id.clone(), e))?;
        let registration = state.registration().cloned().ok_or_else(|| {
            ControlError::Reverse(format!("server {id} never registered its disks here"))
        })?;
        // The names came from the agent: only a kernel disk name becomes a path. The
        // peer finds each disk by the identity and size registered with it.
        registration
            .disks
            .iter()
            .map(|d| {
                ferry_wire::ids::validate_disk_name(&d.name)
                    .map(|()| OriginalDisk {
                        path: PathBuf::from(format!("/dev/{}", d.name)),
                        size: d.size.get(),
                        identity: d.identity.clone(),
                    })
                    .map_err(|e| {
                        ControlError::Reverse(format!("server {id}: disk {}: {e}", d.disk.get()))
                    })
            })
            .collect()
    }

    /// Writes the reverse agent's host key and config into the instance's directory.
    fn write_agent_files(
        &self,
        id: &ServerId,
        instance: &Instance,
        reverse: &Reverse,
        address: String,
        supplied: Option<&ferry_wire::RecoveryKey>,
    ) -> Result<AgentFiles, ControlError> {
        let tools = self.tools()?;
        let state_dir = instance.dir.join("reverse-agent");
        let pin_dir = tools.pin_root.join(format!("ferry-reverse-{id}"));
        let config = instance.dir.join("reverse-agent.toml");
        let key_file = instance.dir.join("reverse-agent.key");
        let host_key = tools.standby_key.host_key(self.recovery_key(id, supplied)?);
        ferry_standby::private_files::write_secret(
            &key_file,
            ferry_wire::KeyFile::Host(host_key).to_text().as_bytes(),
        )
        .map_err(|e| ControlError::Io {
            action: "write",
            path: key_file.clone(),
            source: e,
        })?;
        // The instance's devices, shipped back; points only when the failback asks.
        let agent = AgentFile {
            insecure_plaintext: tools.link_tls.is_none(),
            disks: Some(
                instance
                    .disks
                    .iter()
                    .map(|d| PathBuf::from(&d.device))
                    .collect(),
            ),
            state_dir: Some(state_dir.clone()),
            pin_dir: Some(pin_dir.clone()),
            point_interval_minutes: Some(0),
            tls: tools.link_tls.clone(),
            ..AgentFile::new(id.clone(), address, key_file)
        };
        let text = agent
            .to_toml()
            .map_err(|e| ControlError::Reverse(ferry_wire::error_chain(&e)))?;
        ferry_standby::private_files::write(
            &config,
            format!(
                "# The reverse agent of {id}: the failover instance's devices, shipped back to \
                 site {}.\n{text}",
                reverse.site
            )
            .as_bytes(),
        )
        .map_err(|e| ControlError::Io {
            action: "write",
            path: config.clone(),
            source: e,
        })?;
        Ok(AgentFiles {
            config,
            state_dir,
            pin_dir,
        })
    }

    /// Once the peer sees the reverse agent, starts its replication (unless it was
    /// started before: auto-restart takes the agent back by itself).
    fn start_peer_replication(
        &self,
        site: &str,
        id: &str,
        original_disks: Vec<OriginalDisk>,
    ) -> Result<(), ControlError> {
        let peer = self.wait_peer_state(
            site,
            id,
            &["initialized", "interrupted", "starting", "full", "realtime"],
        )?;
        if peer != "initialized" {
            // Its replication was started before (auto-restart on: an interrupted
            // one takes the agent back by itself).
            return Ok(());
        }
        let start = crate::catalog::Replication {
            policy: ferry_standby::retention::Policy::default(),
            storage_class: "standard".to_owned(),
            replication_network: None,
            recovery_network: None,
            auto_restart: true,
            original_disks,
        };
        let start = serde_json::to_value(start).expect("settings serialize");
        self.peer(
            site,
            "POST",
            &format!("/v1/servers/{id}/replication/start"),
            &start,
        )
        .map(drop)
    }

    fn failover_instance(
        &self,
        id: &ServerId,
        instance: Option<&str>,
    ) -> Result<Instance, ControlError> {
        let name = instance.ok_or_else(|| {
            ControlError::Reverse(format!(
                "server {id} has no failover instance to replicate back"
            ))
        })?;
        Ok(self.instances.get(name)?)
    }

    /// Waits until the server is in one of `states` at `site`; returns which.
    fn wait_peer_state(
        &self,
        site: &str,
        id: &str,
        states: &[&str],
    ) -> Result<String, ControlError> {
        let deadline = Instant::now() + PEER_WAIT;
        loop {
            let s = self.peer(site, "GET", &format!("/v1/servers/{id}"), &Value::Null)?;
            if let Some(found) = states.iter().find(|w| s["state"] == **w) {
                return Ok((*found).to_owned());
            }
            if Instant::now() >= deadline {
                return Err(ControlError::Reverse(format!(
                    "server {id} at site {site} is {} after {PEER_WAIT:?} (waiting for {})",
                    s["state"],
                    states.join(" or ")
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
