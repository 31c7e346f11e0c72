//! Reverse replication, failback and registering forward again (DESIGN.md §1.8), run by
//! the standby site that holds the failed-over instance:
//!
//! - `reverse register`: the pair's primary site's standby (a peer, reached through its
//!   control API) is told of the server (pair and server added there);
//! - `reverse start [--original-machine]`: a reverse agent — the same `ferry agent`,
//!   tracker and all — protects the instance's devices and ships to the peer; the peer
//!   starts taking its records (with the original machine's disks as the baseline its
//!   digests are computed over, so only what differs travels). The agent's phases move
//!   the server through `reverse-starting`, `reverse-full`, `reverse-realtime`;
//! - `failback`: a last point of the reverse replica, the reverse agent stopped, and the
//!   peer restores that point (onto the original disks, writing only what the reverse
//!   replica holds) and runs the launcher; then this site's instance is released;
//! - `register`: the server is `initialized` here again; its own agent resumes forward
//!   protection, catching up by digest (no full copy).

use super::{Control, ControlError};
use crate::api::{AddServer, CallError, ErrorCode};
use crate::catalog::{CatalogError, Pair, Reverse};
use crate::instance::{Instance, Kind, Spec};
use crate::lifecycle::{Phase, State, Step};
use crate::original_disks::OriginalDisk;
use ferry_replicator::agent::request_point;
use ferry_replicator::config_file::AgentFile;
use ferry_replicator::status::{Phase as AgentPhase, Status};
use ferry_standby::points::PointSelector;
use ferry_wire::{PointId, ServerId, error_chain};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest the peer may take to see the reverse agent's registration, and the reverse
/// agent to make the failback's point.
const PEER_WAIT: Duration = Duration::from_secs(60);
const POINT_WAIT: Duration = Duration::from_secs(600);
/// How often the reverse agents' phases are read into their servers' states.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Another site's control API.
pub trait Peers: Send + Sync {
    /// The site's data address (where agents send), if this standby knows the site.
    fn data_address(&self, site: &str) -> Option<String>;
    /// `method path` with a JSON body at `site`; the answer, or why not (with the
    /// answer's code when the peer's API answered).
    fn call(&self, site: &str, method: &str, path: &str, body: &Value) -> Result<Value, CallError>;
}

/// What reverse replication needs from the program that runs the standby.
pub struct ReverseTools {
    /// The `ferry` executable: the reverse agent is `ferry agent`.
    pub ferry: PathBuf,
    /// This standby's key: with a server's recovery key it makes the host key the reverse
    /// agent runs with.
    pub standby_key: ferry_wire::StandbyKey,
    /// Where reverse agents pin their trackers (a bpffs directory).
    pub pin_root: PathBuf,
    pub peers: Box<dyn Peers>,
    /// This site's `[tls]` files: the reverse agent connects to the peer site with this
    /// site's certificate (the peer lists this site in its `peer_sites`). `None`: this
    /// site runs plain TCP on loopback, and so does its reverse agent.
    pub link_tls: Option<ferry_tls::TlsFiles>,
}

impl std::fmt::Debug for ReverseTools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReverseTools")
            .field("ferry", &self.ferry)
            .field("pin_root", &self.pin_root)
            .finish_non_exhaustive()
    }
}

impl Control {
    /// Sets what reverse replication needs (once, at start).
    pub fn set_reverse_tools(&self, tools: ReverseTools) {
        let _ = self.reverse_tools.set(tools);
    }

    fn tools(&self) -> Result<&ReverseTools, ControlError> {
        self.reverse_tools.get().ok_or_else(|| {
            ControlError::Reverse("this standby cannot run reverse replication".into())
        })
    }

    fn peer(
        &self,
        site: &str,
        method: &str,
        path: &str,
        body: &Value,
    ) -> Result<Value, ControlError> {
        self.tools()?
            .peers
            .call(site, method, path, body)
            .map_err(|source| ControlError::Peer {
                site: site.to_owned(),
                call: format!("{method} {path}"),
                source,
            })
    }

    /// Makes `pair` exist at `site`: a repeated registration finds it there already,
    /// which is fine only if what is there is this pair (read back, never judged by the
    /// refusal's wording).
    fn ensure_peer_pair(&self, site: &str, pair: &Pair) -> Result<(), ControlError> {
        let body = serde_json::to_value(pair).expect("a pair serializes");
        match self.peer(site, "POST", "/v1/pairs", &body) {
            Err(ControlError::Peer { source, .. })
                if source.code == Some(ErrorCode::PairExists) =>
            {
                let theirs: Vec<Pair> =
                    serde_json::from_value(self.peer(site, "GET", "/v1/pairs", &Value::Null)?)
                        .map_err(|e| {
                            ControlError::Reverse(format!(
                                "site {site}: its pairs do not read: {e}"
                            ))
                        })?;
                match theirs.iter().find(|p| p.name == pair.name) {
                    Some(p) if p == pair => Ok(()),
                    other => Err(ControlError::Reverse(format!(
                        "site {site} has a pair named {:?} that is not this pair mirrored \
                         (it has {other:?}, this site expects {pair:?})",
                        pair.name
                    ))),
                }
            }
            other => other.map(drop),
        }
    }

    /// Makes `server` a server of `pair` at `site`: one already there is fine only in
    /// the same pair.
    fn ensure_peer_server(
        &self,
        site: &str,
        pair: &str,
        server: &ServerId,
    ) -> Result<(), ControlError> {
        let add = serde_json::to_value(AddServer {
            pair: pair.to_owned(),
            server: server.to_string(),
            storage_class: "standard".to_owned(),
        })
        .expect("a request serializes");
        match self.peer(site, "POST", "/v1/servers", &add) {
            Err(ControlError::Peer { source, .. })
                if source.code == Some(ErrorCode::ServerExists) =>
            {
                let theirs =
                    self.peer(site, "GET", &format!("/v1/servers/{server}"), &Value::Null)?;
                if theirs["pair"] == pair {
                    Ok(())
                } else {
                    Err(ControlError::Reverse(format!(
                        "site {site} protects server {server} in pair {} already, not in pair \
                         {pair}: remove it there first",
                        theirs["pair"]
                    )))
                }
            }
            other => other.map(drop),
        }
    }

    /// Registers the server at the pair's primary site for reverse replication.
    pub fn reverse_register(&self, id: &str) -> Result<State, ControlError> {
        let _op = self.operation(id)?;
        let server = self.catalog().server(id)?.clone();
        server.check(Step::ReverseRegister)?;
        let pair = self
            .catalog()
            .pairs()
            .iter()
            .find(|p| p.name == server.pair)
            .cloned()
            .ok_or_else(|| CatalogError::UnknownPair(server.pair.clone()))?;
        let site = pair.primary.clone();
        if self.tools()?.peers.data_address(&site).is_none() {
            return Err(ControlError::Reverse(format!(
                "site {site} (the primary of pair {}) is not in this standby's [sites]: add its \
                 data and control addresses and token file",
                pair.name
            )));
        }
        let mirrored = Pair {
            name: pair.name.clone(),
            kind: pair.kind,
            primary: pair.secondary.clone(),
            secondary: pair.primary.clone(),
        };
        self.ensure_peer_pair(&site, &mirrored)?;
        self.ensure_peer_server(&site, &pair.name, &server.id)?;
        let reverse = Reverse {
            site,
            original_machine: false,
            agent_pid: None,
            config: None,
            state_dir: None,
            pin_dir: None,
            final_point: None,
            restored: None,
        };
        Ok(self.change(|c| c.step_and(id, Step::ReverseRegister, |s| s.reverse = Some(reverse)))?)
    }

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
        let tools = self.tools()?;
        let address = tools.peers.data_address(&reverse.site).ok_or_else(|| {
            ControlError::Reverse(format!("site {} is not in [sites]", reverse.site))
        })?;
        let original_disks: Vec<OriginalDisk> = if original_machine {
            let state = self
                .data
                .read_server(&server.id)
                .map_err(|e| ControlError::Store(server.id.clone(), e))?;
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
                            ControlError::Reverse(format!(
                                "server {id}: disk {}: {e}",
                                d.disk.get()
                            ))
                        })
                })
                .collect::<Result<_, _>>()?
        } else {
            Vec::new()
        };
        let state_dir = instance.dir.join("reverse-agent");
        let pin_dir = tools.pin_root.join(format!("ferry-reverse-{}", server.id));
        let config = instance.dir.join("reverse-agent.toml");
        let key_file = instance.dir.join("reverse-agent.key");
        let host_key = tools
            .standby_key
            .host_key(self.recovery_key(&server.id, supplied)?);
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
            ..AgentFile::new(server.id.clone(), address, key_file)
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
        let pid = match self.spawn_reverse_agent(&server.id, &config, &state_dir) {
            Ok(pid) => pid,
            Err(e) => {
                self.detach_tracker(&server.id, &pin_dir);
                return Err(self.failed(id, e));
            }
        };
        reverse.agent_pid = Some(pid);
        reverse.config = Some(config);
        reverse.state_dir = Some(state_dir);
        reverse.pin_dir = Some(pin_dir);
        reverse.original_machine = original_machine;
        let started = (|| {
            let peer = self.wait_peer_state(
                &reverse.site,
                id,
                &["initialized", "interrupted", "starting", "full", "realtime"],
            )?;
            if peer != "initialized" {
                // Its replication was started before (auto-restart on: an interrupted
                // one takes the agent back by itself).
                return Ok(Value::Null);
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
                &reverse.site,
                "POST",
                &format!("/v1/servers/{id}/replication/start"),
                &start,
            )
        })();
        if let Err(e) = started {
            self.stop_reverse_agent(&server.id, &reverse, true);
            return Err(self.failed(id, e));
        }
        Ok(self.change(|c| c.step_and(id, Step::ReverseStart, |s| s.reverse = Some(reverse)))?)
    }

    /// Follows the reverse agents on a background thread (until the control plane is
    /// dropped): their phases move their servers' states, so that reading the API never
    /// changes anything.
    pub fn watch_reverse_agents(self: &std::sync::Arc<Self>) -> std::io::Result<()> {
        let control = std::sync::Arc::downgrade(self);
        std::thread::Builder::new()
            .name("ferry-reverse-watch".into())
            .spawn(move || {
                while let Some(control) = control.upgrade() {
                    let following: Vec<ServerId> = control
                        .catalog()
                        .servers()
                        .iter()
                        .filter(|s| s.state.reverse_replicating())
                        .map(|s| s.id.clone())
                        .collect();
                    for id in &following {
                        control.refresh_reverse(id);
                    }
                    drop(control);
                    std::thread::sleep(WATCH_EVERY);
                }
            })
            .map(drop)
    }

    /// Moves a reverse-replicating server's state with its reverse agent's phase.
    fn refresh_reverse(&self, id: &ServerId) {
        let Ok(server) = self.catalog().server(id.as_str()).cloned() else {
            return;
        };
        if !server.state.reverse_replicating() {
            return;
        }
        let Some(status) = server.reverse.as_ref().and_then(reverse_status) else {
            return;
        };
        let alive = server
            .reverse
            .as_ref()
            .is_some_and(|r| self.reverse_agent_alive(id, r));
        let phase = match status.phase {
            _ if !alive => Phase::Interrupted,
            Some(AgentPhase::Full) => Phase::Full,
            Some(AgentPhase::Realtime) => Phase::Realtime,
            Some(AgentPhase::Interrupted) => Phase::Interrupted,
            _ => return,
        };
        let want = match phase {
            Phase::Full => State::ReverseFull,
            Phase::Realtime => State::ReverseRealtime,
            _ => State::ReverseInterrupted,
        };
        if server.state != want
            && let Err(e) = self.change(|c| c.step(id.as_str(), Step::Reverse(phase)))
        {
            tracing::error!(server = %id, "cannot record the reverse phase: {}", error_chain(&e));
        }
    }

    /// The reverse agent's status, for the operator.
    pub(super) fn reverse_view(&self, id: &ServerId) -> Option<Status> {
        let server = self.catalog().server(id.as_str()).ok()?.clone();
        server.reverse.as_ref().and_then(reverse_status)
    }

    /// Fails back: a last point of the reverse replica, the reverse agent stopped, the
    /// peer restores the point and launches it; this site's instance is released.
    /// `supplied` (the recovery key sent with the operation) goes on to the peer's
    /// restore.
    pub fn failback(
        &self,
        id: &str,
        spec: Spec,
        supplied: Option<&ferry_wire::RecoveryKey>,
    ) -> Result<Instance, ControlError> {
        let _op = self.operation(id)?;
        crate::instance::Instances::check(&Spec {
            point: PointSelector::Latest,
            ..spec.clone()
        })?;
        let sid = self.catalog().server(id)?.id.clone();
        self.refresh_reverse(&sid);
        let server = self.catalog().server(id)?.clone();
        server.check(Step::Failback)?;
        self.change(|c| c.step(id, Step::Failback))?;
        let mut reverse = server.reverse.clone().expect("reverse replication ran");
        let result = (|| {
            if reverse.final_point.is_none() {
                // Production stops here first, so nothing it writes can miss the point.
                if let Some(old) = &server.instance {
                    self.instances.stop(old)?;
                }
                let point = self.final_reverse_point(&reverse)?;
                reverse.final_point = Some(point);
                let saved = reverse.clone();
                self.change(|c| c.edit(id, |s| s.reverse = Some(saved)))?;
                self.stop_reverse_agent(&server.id, &reverse, true);
            }
            let point = reverse.final_point.expect("set above");
            if let Some(restored) = &reverse.restored {
                // A retry after the restore succeeded: never restore twice.
                return Ok(restored.clone());
            }
            // The peer's replication stops (its agent is gone) before it restores.
            let _ = self.peer(
                &reverse.site,
                "POST",
                &format!("/v1/servers/{id}/replication/stop"),
                &Value::Null,
            );
            let restore = Spec {
                point: PointSelector::Id(point),
                ..spec
            };
            let mut body = serde_json::to_value(&restore).expect("a spec serializes");
            if let (Some(key), Some(fields)) = (supplied, body.as_object_mut()) {
                let text = ferry_wire::KeyFile::Recovery(key.clone()).to_text();
                fields.insert("recovery_key".into(), Value::String(text.to_string()));
            }
            let up = self.peer(
                &reverse.site,
                "POST",
                &format!("/v1/servers/{id}/restore"),
                &body,
            )?;
            let instance = serde_json::from_value::<Instance>(up).map_err(|e| {
                ControlError::Reverse(format!("the peer's answer is not an instance: {e}"))
            })?;
            reverse.restored = Some(instance.clone());
            let saved = reverse.clone();
            self.change(|c| c.edit(id, |s| s.reverse = Some(saved)))?;
            if let Some(old) = &server.instance {
                self.instances.clean(old)?;
            }
            Ok(instance)
        })();
        let instance = match result {
            Ok(i) => i,
            Err(e) => return Err(self.failed(id, e)),
        };
        self.change(|c| c.step_and(id, Step::InstanceUp, |s| s.instance = None))?;
        Ok(instance)
    }

    /// Registers the failed-back server forward again: `initialized`, its replica here
    /// kept, so its agent catches up by digest; the peer forgets the reverse replica.
    pub fn register(&self, id: &str) -> Result<State, ControlError> {
        let _op = self.operation(id)?;
        let server = self.catalog().server(id)?.clone();
        server.check(Step::Register)?;
        if let Some(r) = &server.reverse
            && let Err(e) = self.peer(
                &r.site,
                "DELETE",
                &format!("/v1/servers/{id}"),
                &Value::Null,
            )
        {
            tracing::warn!(
                server = id,
                "the peer kept its reverse replica: {}",
                error_chain(&e)
            );
        }
        Ok(self.change(|c| c.step_and(id, Step::Register, |s| s.reverse = None))?)
    }

    /// At the original site: restores a point of a server's replica (onto its original
    /// disks when replication had them) and launches it. The replica must not be taking
    /// records.
    pub fn restore(
        &self,
        id: &str,
        spec: Spec,
        supplied: Option<&ferry_wire::RecoveryKey>,
    ) -> Result<Instance, ControlError> {
        let _op = self.operation(id)?;
        let server = self.catalog().server(id)?.clone();
        if server.state.replicating() {
            return Err(ControlError::Reverse(format!(
                "server {id} is {}: stop its replication before restoring it",
                server.state
            )));
        }
        // Still the disks found at replication start (identity, size), and unused.
        let onto: Vec<PathBuf> = server
            .replication
            .as_ref()
            .map(|r| r.original_disks.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|d| crate::original_disks::verify(&d).map(|()| d.path))
            .collect::<Result<_, _>>()?;
        let keys = self.load_keys(&server.id, supplied)?;
        let instance = self
            .instances
            .launch(Kind::Failback, &server.id, spec, &keys, &onto)?;
        if !instance.launched() {
            // Nothing of a failed restore is left running (its disks stay written).
            if let Err(e) = self.instances.clean(&instance.id) {
                tracing::error!(instance = %instance.id, "cannot remove a failed restore: {}", error_chain(&e));
            }
            return Err(ControlError::ScriptFailed(Box::new(instance)));
        }
        Ok(instance)
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

    fn spawn_reverse_agent(
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
    fn stop_reverse_agent(&self, id: &ServerId, reverse: &Reverse, detach: bool) {
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
    fn detach_tracker(&self, id: &ServerId, pins: &Path) {
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
    fn reverse_agent_alive(&self, id: &ServerId, reverse: &Reverse) -> bool {
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
    fn final_reverse_point(&self, reverse: &Reverse) -> Result<PointId, ControlError> {
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

/// Whether process `pid` is `ferry agent --config <config>` (and not a zombie).
fn is_reverse_agent(pid: u32, config: &Path) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    !cmdline.is_empty() && String::from_utf8_lossy(&cmdline).contains(&*config.to_string_lossy())
}

/// The reverse agent's status file, if it has one.
fn reverse_status(r: &Reverse) -> Option<Status> {
    Status::load(&r.state_dir.as_ref()?.join("status.json")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A peer site that answers every `POST` with one refusal and every `GET` with one
    /// body, and records the calls.
    struct Answering {
        refusal: CallError,
        get: Value,
        calls: Mutex<Vec<String>>,
    }

    impl Peers for Answering {
        fn data_address(&self, _: &str) -> Option<String> {
            Some("127.0.0.1:1".into())
        }
        fn call(&self, _: &str, method: &str, path: &str, _: &Value) -> Result<Value, CallError> {
            self.calls.lock().unwrap().push(format!("{method} {path}"));
            match method {
                "GET" => Ok(self.get.clone()),
                _ => Err(self.refusal.clone()),
            }
        }
    }

    fn control_with(peer: Answering) -> (tempfile::TempDir, Control) {
        let dir = tempfile::tempdir().unwrap();
        let control = Control::open(dir.path(), std::collections::HashMap::new()).unwrap();
        control.set_reverse_tools(ReverseTools {
            ferry: PathBuf::from("/nonexistent/ferry"),
            standby_key: ferry_wire::MasterKey::from_bytes([3; 32]).standby_key(),
            pin_root: dir.path().join("pins"),
            peers: Box::new(peer),
            link_tls: None,
        });
        (dir, control)
    }

    fn exists(code: ErrorCode, message: &str) -> CallError {
        CallError {
            code: Some(code),
            message: message.into(),
        }
    }

    #[test]
    fn a_server_the_peer_protects_in_another_pair_is_not_taken_as_registered() {
        let server = ServerId::new("web-1").unwrap();
        // The refusal's wording says "already": only the code and the read-back decide.
        let (_dir, control) = control_with(Answering {
            refusal: exists(
                ErrorCode::ServerExists,
                "server web-1 is already protected (by pair \"other\")",
            ),
            get: serde_json::json!({ "id": "web-1", "pair": "other" }),
            calls: Mutex::default(),
        });
        let refused = control
            .ensure_peer_server("zone-a", "p1", &server)
            .expect_err("another pair's server is not this registration");
        let text = ferry_wire::error_chain(&refused);
        assert!(
            text.contains("in pair \"other\" already, not in pair p1"),
            "{text}"
        );

        let (_dir, control) = control_with(Answering {
            refusal: exists(ErrorCode::ServerExists, "server web-1 is already protected"),
            get: serde_json::json!({ "id": "web-1", "pair": "p1" }),
            calls: Mutex::default(),
        });
        control
            .ensure_peer_server("zone-a", "p1", &server)
            .expect("the same pair's server is a repeated registration");
    }

    #[test]
    fn only_an_exists_code_is_tolerated_and_a_pair_must_read_back_the_same() {
        let pair = Pair {
            name: "p1".into(),
            kind: crate::catalog::PairKind::ZoneToZone,
            primary: "zone-a".into(),
            secondary: "zone-b".into(),
        };
        // A refusal that merely says "already" is an error.
        let (_dir, control) = control_with(Answering {
            refusal: CallError {
                code: Some(ErrorCode::NotAllowed),
                message: "already busy".into(),
            },
            get: Value::Null,
            calls: Mutex::default(),
        });
        assert!(control.ensure_peer_pair("zone-a", &pair).is_err());
        // A pair of that name, defined otherwise, is an error; the same pair is fine.
        let mut other = serde_json::to_value(&pair).unwrap();
        other["primary"] = "zone-c".into();
        for (theirs, ok) in [(other, false), (serde_json::to_value(&pair).unwrap(), true)] {
            let (_dir, control) = control_with(Answering {
                refusal: exists(ErrorCode::PairExists, "a pair named \"p1\" already exists"),
                get: Value::Array(vec![theirs]),
                calls: Mutex::default(),
            });
            assert_eq!(control.ensure_peer_pair("zone-a", &pair).is_ok(), ok);
        }
    }
}
