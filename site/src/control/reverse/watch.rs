//! Following the reverse agents: a background thread reads each reverse-replicating
//! server's agent status every [`WATCH_EVERY`] and moves the server's state with the
//! agent's phase (`reverse-full`, `reverse-realtime`, `reverse-interrupted` when the
//! agent is gone). States change only here and in operations, never when the API is
//! read; the thread holds the control plane weakly, so it ends when that is dropped.

use super::agent::reverse_status;
use crate::control::Control;
use crate::lifecycle::{Phase, State, Step};
use ferry_replicator::status::{Phase as AgentPhase, Status};
use ferry_wire::{ServerId, error_chain};
use std::time::Duration;

/// How often the reverse agents' phases are read into their servers' states.
const WATCH_EVERY: Duration = Duration::from_secs(1);

impl Control {
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
    pub(super) fn refresh_reverse(&self, id: &ServerId) {
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
    pub(in crate::control) fn reverse_view(&self, id: &ServerId) -> Option<Status> {
        let server = self.catalog().server(id.as_str()).ok()?.clone();
        server.reverse.as_ref().and_then(reverse_status)
    }
}
