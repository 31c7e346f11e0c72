//! A protected server's life as the operator sees it (DESIGN.md §5), as a pure state
//! machine: every operator operation and every event reported by an agent or an
//! instance is a [`Step`]; [`State::apply`] returns the next state or an error that names
//! the current state and what is allowed in it. Nothing here does I/O; the control
//! service persists the state and performs the work a step stands for.
//!
//! ```text
//!  installing ─agent registered─▶ initialized ─replication start─▶ starting ─▶ full ─▶ realtime
//!                                     ▲    ◀──replication stop── (starting, full, realtime, interrupted)
//!                                     │                           a drill runs beside these
//!                                     │    realtime / interrupted ─failover start─▶ failing-over
//!                                     │    failing-over ─instance up─▶ failed-over ─change point─▶ failing-over
//!                                     │    failed-over ─confirm─▶ failover-confirmed ─reverse register─▶
//!                                     │    reverse-registered ─reverse start─▶ reverse-starting ─▶
//!                                     │    reverse-full ─▶ reverse-realtime ─failback─▶ failing-back
//!                                     └─register── failed-back ◀─instance up── failing-back
//! ```
//!
//! `interrupted` (the link is down; the agent reconnects by itself when auto-restart is
//! on) can follow any replicating phase, forward or reverse, and is left by the agent's
//! next phase report. An *error* is not a state of its own: it is a reason shown over the
//! state the server is in (so nothing forgets where the server was), the operations of
//! that state stay allowed, and the first one that succeeds clears it (the catalogue
//! keeps the flag, [`crate::catalog`]).

use serde::{Deserialize, Serialize};
use std::fmt;

/// Where a protected server is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    Installing,
    Initialized,
    Starting,
    Full,
    Realtime,
    FailingOver,
    FailedOver,
    FailoverConfirmed,
    ReverseRegistered,
    ReverseStarting,
    ReverseFull,
    ReverseRealtime,
    FailingBack,
    FailedBack,
    Interrupted,
    ReverseInterrupted,
}

/// A phase an agent reports while it replicates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Starting,
    Full,
    Realtime,
    Interrupted,
}

/// What can happen to a server: an operator's operation or a reported event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The agent registered the server and its disks.
    AgentRegistered,
    ReplicationStart,
    ReplicationStop,
    /// The forward agent's phase.
    Forward(Phase),
    /// A drill may start (it runs beside replication and leaves the state as it is).
    DrillStart,
    FailoverStart,
    ChangePoint,
    /// The failover (or failback) instance is up.
    InstanceUp,
    FailoverConfirm,
    ReverseRegister,
    ReverseStart,
    /// The reverse agent's phase.
    Reverse(Phase),
    Failback,
    /// Protect the server forward again after a failback, without a full copy.
    Register,
}

impl Step {
    /// How an operator (or the log) names the step.
    pub fn name(self) -> &'static str {
        match self {
            Step::AgentRegistered => "agent registration",
            Step::ReplicationStart => "replication start",
            Step::ReplicationStop => "replication stop",
            Step::Forward(_) => "replication progress",
            Step::DrillStart => "drill start",
            Step::FailoverStart => "failover start",
            Step::ChangePoint => "failover change-point",
            Step::InstanceUp => "instance up",
            Step::FailoverConfirm => "failover confirm",
            Step::ReverseRegister => "reverse register",
            Step::ReverseStart => "reverse start",
            Step::Reverse(_) => "reverse replication progress",
            Step::Failback => "failback",
            Step::Register => "register",
        }
    }

    /// The operator's operations, for "allowed now" lists.
    const OPERATIONS: [Step; 11] = [
        Step::ReplicationStart,
        Step::ReplicationStop,
        Step::DrillStart,
        Step::FailoverStart,
        Step::ChangePoint,
        Step::FailoverConfirm,
        Step::ReverseRegister,
        Step::ReverseStart,
        Step::Failback,
        Step::Register,
        Step::AgentRegistered,
    ];
}

/// An operation or event that the server's state does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{step} is not allowed while the server is {state}; allowed now: {}",
    if allowed.is_empty() { "nothing but waiting".to_owned() } else { allowed.join(", ") }
)]
pub struct NotAllowed {
    pub state: State,
    pub step: &'static str,
    pub allowed: Vec<&'static str>,
}

impl State {
    /// The name the operator sees.
    pub fn name(self) -> &'static str {
        match self {
            State::Installing => "installing",
            State::Initialized => "initialized",
            State::Starting => "starting",
            State::Full => "full",
            State::Realtime => "realtime",
            State::FailingOver => "failing-over",
            State::FailedOver => "failed-over",
            State::FailoverConfirmed => "failover-confirmed",
            State::ReverseRegistered => "reverse-registered",
            State::ReverseStarting => "reverse-starting",
            State::ReverseFull => "reverse-full",
            State::ReverseRealtime => "reverse-realtime",
            State::FailingBack => "failing-back",
            State::FailedBack => "failed-back",
            State::Interrupted => "interrupted",
            State::ReverseInterrupted => "reverse-interrupted",
        }
    }

    /// Forward replication runs (its agent ships to this site).
    pub fn replicating(self) -> bool {
        matches!(
            self,
            State::Starting | State::Full | State::Realtime | State::Interrupted
        )
    }

    /// Reverse replication runs (the failed-over instance ships back).
    pub fn reverse_replicating(self) -> bool {
        matches!(
            self,
            State::ReverseStarting
                | State::ReverseFull
                | State::ReverseRealtime
                | State::ReverseInterrupted
        )
    }

    /// The state after `step`, or why it is not allowed.
    pub fn apply(self, step: Step) -> Result<State, NotAllowed> {
        self.next(step).ok_or_else(|| NotAllowed {
            state: self,
            step: step.name(),
            allowed: Step::OPERATIONS
                .iter()
                .filter(|op| self.next(**op).is_some())
                .map(|op| op.name())
                .collect(),
        })
    }

    fn next(self, step: Step) -> Option<State> {
        use State as S;
        let forward = |p: Phase| match p {
            Phase::Starting => S::Starting,
            Phase::Full => S::Full,
            Phase::Realtime => S::Realtime,
            Phase::Interrupted => S::Interrupted,
        };
        let reverse = |p: Phase| match p {
            Phase::Starting => S::ReverseStarting,
            Phase::Full => S::ReverseFull,
            Phase::Realtime => S::ReverseRealtime,
            Phase::Interrupted => S::ReverseInterrupted,
        };
        Some(match (self, step) {
            (S::Installing | S::Initialized, Step::AgentRegistered) => S::Initialized,
            // From `interrupted`: an operator restarts replication that does not restart
            // by itself (auto-restart off).
            (S::Initialized | S::Interrupted, Step::ReplicationStart) => S::Starting,
            (s, Step::ReplicationStop) if s.replicating() => S::Initialized,
            (s, Step::Forward(p)) if s.replicating() => forward(p),
            // Both need a recovery point, which the service checks: a server whose
            // first point exists can be recovered whatever phase its replication is in.
            (s, Step::DrillStart) if s.replicating() => s,
            (s, Step::FailoverStart) if s.replicating() => S::FailingOver,
            (S::FailingOver, Step::InstanceUp) => S::FailedOver,
            // From failing-over too: a failover whose instance did not come up is
            // retried at another point.
            (S::FailingOver | S::FailedOver, Step::ChangePoint) => S::FailingOver,
            (S::FailedOver, Step::FailoverConfirm) => S::FailoverConfirmed,
            (S::FailoverConfirmed, Step::ReverseRegister) => S::ReverseRegistered,
            // From reverse-interrupted: the reverse agent is started again (e.g. after the
            // standby that runs it restarted).
            (S::ReverseRegistered | S::ReverseInterrupted, Step::ReverseStart) => {
                S::ReverseStarting
            }
            (s, Step::Reverse(p)) if s.reverse_replicating() => reverse(p),
            // From failing-back too: a failback whose instance did not come up is retried.
            (S::ReverseRealtime | S::FailingBack, Step::Failback) => S::FailingBack,
            (S::FailingBack, Step::InstanceUp) => S::FailedBack,
            (S::FailedBack, Step::Register) => S::Initialized,
            _ => return None,
        })
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [State; 16] = [
        State::Installing,
        State::Initialized,
        State::Starting,
        State::Full,
        State::Realtime,
        State::FailingOver,
        State::FailedOver,
        State::FailoverConfirmed,
        State::ReverseRegistered,
        State::ReverseStarting,
        State::ReverseFull,
        State::ReverseRealtime,
        State::FailingBack,
        State::FailedBack,
        State::Interrupted,
        State::ReverseInterrupted,
    ];

    #[test]
    fn the_whole_cycle_goes_through_in_order() {
        use Phase as P;
        let steps = [
            (Step::AgentRegistered, State::Initialized),
            (Step::ReplicationStart, State::Starting),
            (Step::Forward(P::Full), State::Full),
            (Step::Forward(P::Interrupted), State::Interrupted),
            (Step::Forward(P::Realtime), State::Realtime),
            (Step::DrillStart, State::Realtime),
            (Step::FailoverStart, State::FailingOver),
            (Step::InstanceUp, State::FailedOver),
            (Step::ChangePoint, State::FailingOver),
            (Step::InstanceUp, State::FailedOver),
            (Step::FailoverConfirm, State::FailoverConfirmed),
            (Step::ReverseRegister, State::ReverseRegistered),
            (Step::ReverseStart, State::ReverseStarting),
            (Step::Reverse(P::Full), State::ReverseFull),
            (Step::Reverse(P::Realtime), State::ReverseRealtime),
            (Step::Failback, State::FailingBack),
            (Step::InstanceUp, State::FailedBack),
            (Step::Register, State::Initialized),
        ];
        let mut state = State::Installing;
        for (step, want) in steps {
            state = state
                .apply(step)
                .unwrap_or_else(|e| panic!("{} from {state}: {e}", step.name()));
            assert_eq!(state, want, "after {}", step.name());
        }
    }

    #[test]
    fn a_refusal_names_the_state_and_exactly_the_operations_that_would_be_allowed() {
        let err = State::Initialized.apply(Step::FailoverStart).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("failover start is not allowed while the server is initialized"),
            "{text}"
        );
        assert_eq!(err.allowed, vec!["replication start", "agent registration"]);
        for state in ALL {
            for op in Step::OPERATIONS {
                match state.apply(op) {
                    Ok(_) => {}
                    Err(e) => {
                        assert_eq!(e.state, state);
                        assert!(!e.allowed.contains(&op.name()), "{e}");
                        for allowed in &e.allowed {
                            let op = Step::OPERATIONS.iter().find(|o| o.name() == *allowed);
                            assert!(state.apply(*op.unwrap()).is_ok(), "{allowed} in {state}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn failover_stops_forward_replication_and_reverse_needs_a_confirmed_failover() {
        for state in [State::Installing, State::Initialized] {
            assert!(state.apply(Step::FailoverStart).is_err(), "{state}");
            assert!(state.apply(Step::DrillStart).is_err(), "{state}");
        }
        for state in [
            State::FailingOver,
            State::FailedOver,
            State::FailoverConfirmed,
        ] {
            assert!(
                !state.replicating(),
                "{state} must not accept forward records"
            );
            assert!(state.apply(Step::Forward(Phase::Realtime)).is_err());
        }
        for state in ALL {
            let reverse = state.apply(Step::ReverseStart).is_ok();
            assert_eq!(
                reverse,
                matches!(state, State::ReverseRegistered | State::ReverseInterrupted),
                "{state}"
            );
        }
    }

    #[test]
    fn states_serialize_as_their_names() {
        for state in ALL {
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.name()));
            assert_eq!(serde_json::from_str::<State>(&json).unwrap(), state);
        }
    }
}
