//! The agent's life: connect and register, replicate until stopped, and on an
//! interruption keep tracking and reconnect (backing off), or stop with an error that
//! needs an operator.

use super::parts::{DirtySource, ExtentReader, Freezer};
use super::ship::Stream;
use super::{Agent, AgentError, NEEDS_OPERATOR_RETRY, PAUSED_RETRY, PROGRESS_EVERY, now_ms};
use crate::link::{Link, LinkConfig, LinkError};
use crate::status::Phase;
use ferry_wire::message::{ErrorCode, PointKind, PointResult};
use ferry_wire::{Message, Seq, error_chain};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

impl<D: DirtySource, R: ExtentReader, F: Freezer> Agent<D, R, F> {
    /// Replicates until `stop` is set (Ok) or an error that needs an operator.
    pub fn run(mut self) -> Result<(), AgentError> {
        let mut backoff = Duration::from_millis(200);
        let result = loop {
            if self.stop.load(Ordering::SeqCst) {
                break Ok(());
            }
            let outcome = self.connect().and_then(|stream| {
                backoff = Duration::from_millis(200);
                self.replicate(stream)
            });
            match outcome {
                Ok(()) => break Ok(()),
                Err(AgentError::Link(e)) if e.is_paused() => {
                    if self.status.phase != Some(Phase::Waiting) {
                        tracing::info!(reason = %error_chain(&e), "the standby takes no records now; tracking goes on, asking again every {PAUSED_RETRY:?}");
                    }
                    self.status.phase = Some(Phase::Waiting);
                    self.status.last_error = Some(error_chain(&e));
                    self.write_status();
                    self.idle(PAUSED_RETRY);
                }
                Err(e) if e.is_retryable() && self.config.auto_restart => {
                    tracing::warn!(error = %error_chain(&e), retry_in = ?backoff, "replication interrupted; reconnecting");
                    self.wait_to_reconnect(Phase::Interrupted, &e, &mut backoff);
                }
                // A refusal, a frame that does not check out, a failed TLS handshake: they
                // may need an operator (keys, certificates, the standby's server list), but
                // a relay on the path can cause each of them too, so none stops the agent
                // (DESIGN.md I8). Tracking goes on; the state shows the error; the standby
                // is asked again, less and less often.
                Err(AgentError::Link(e)) if self.config.auto_restart => {
                    backoff = backoff.max(NEEDS_OPERATOR_RETRY);
                    tracing::error!(error = %error_chain(&e), retry_in = ?backoff, "the standby refused, or the link failed in a way that may need an operator; tracking goes on and the standby is asked again");
                    self.wait_to_reconnect(Phase::Error, &e, &mut backoff);
                }
                Err(e) => break Err(e),
            }
        };
        self.status.phase = Some(match &result {
            Ok(()) => Phase::Stopped,
            Err(e) => {
                self.status.last_error = Some(error_chain(e));
                Phase::Error
            }
        });
        self.write_status();
        let stopped = self.shutdown();
        result.and(stopped)
    }
    /// Shows `phase` and `error` in the status, waits `backoff` (answering the control
    /// socket), and doubles `backoff` up to 30 s for the next time.
    pub(super) fn wait_to_reconnect(
        &mut self,
        phase: Phase,
        error: &dyn std::error::Error,
        backoff: &mut Duration,
    ) {
        self.status.phase = Some(phase);
        self.status.last_error = Some(error_chain(error));
        self.status.reconnects += 1;
        self.write_status();
        self.idle(*backoff);
        *backoff = (*backoff * 2).min(Duration::from_secs(30));
    }

    /// Waits `time` while disconnected, answering the control socket.
    pub(super) fn idle(&mut self, time: Duration) {
        let until = Instant::now() + time;
        while Instant::now() < until && !self.stop.load(Ordering::SeqCst) {
            self.serve_control(None);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    pub(super) fn connect(&mut self) -> Result<Stream, AgentError> {
        let config = LinkConfig {
            window_bytes: self.config.window_bytes,
            tls: self.config.tls.clone(),
            ..LinkConfig::default()
        };
        let mut link = Link::connect(
            self.config.standby.as_str(),
            &self.config.server,
            &self.keys.ingest.auth,
            &config,
        )?;
        link.register(self.registration.clone())?;
        if let Some(reason) = link.welcome().paused.clone() {
            // Nothing is shipped and no catch-up starts until the standby takes records
            // (it may then also hold what a catch-up compares against).
            link.flush()?;
            return Err(LinkError::Refused {
                code: ErrorCode::Paused,
                message: reason,
            }
            .into());
        }
        let welcome = link.welcome_durable();
        // A standby claiming more than was ever sent would have us skip what it never stored.
        if let Some(bound) = self.lease.bound().filter(|&b| welcome > b) {
            return Err(AgentError::Protocol(format!(
                "it says seq {welcome} is durable, but this agent never sent a seq above \
                 {bound}: another server's store, a restored standby, or a forgery"
            )));
        }
        let next_seq = welcome.checked_next().ok_or_else(|| {
            AgentError::Protocol(format!("it says seq {welcome} is durable: no seq is left"))
        })?;
        tracing::info!(standby = %self.config.standby, last_durable = %welcome, "connected to the standby");
        // What the standby already holds is safe; the rest is read again.
        self.apply_acks(welcome);
        self.forget_unacked();
        self.standby_has_data = link.welcome().digests;
        self.start_catch_ups();
        Ok(Stream {
            link: Box::new(link),
            next_seq,
        })
    }
    pub(super) fn replicate(&mut self, mut stream: Stream) -> Result<(), AgentError> {
        loop {
            if self.stop.load(Ordering::SeqCst) {
                // Give what is in flight a moment to be acknowledged.
                let last = stream.next_seq.get().saturating_sub(1);
                if let Ok(d) = stream
                    .link
                    .wait_durable(Seq::new(last), Duration::from_secs(5))
                {
                    self.apply_acks(d);
                }
                return Ok(());
            }
            self.apply_acks(stream.link.durable());
            if let Some(e) = stream.link.closed() {
                return Err(e.into());
            }
            for w in stream.link.take_warnings() {
                tracing::warn!(code = ?w.code, "the standby warns: {}", w.message);
                self.status.last_warning = Some(format!("{:?}: {}", w.code, w.message));
                self.status.last_warning_unix_ms = now_ms();
            }
            self.serve_control(Some(&mut stream));
            for request in stream.link.take_point_requests() {
                let status = self.manual_point(Some(&mut stream));
                stream.link.send(&Message::PointResult(PointResult {
                    request: request.request,
                    point: status.point.filter(|_| status.ok),
                    consistent: status.consistent,
                    freeze_ms: status.freeze_ms,
                    error: status.error,
                }))?;
            }
            if self.last_progress.elapsed() >= PROGRESS_EVERY {
                self.last_progress = Instant::now();
                stream.link.send(&Message::Progress(self.progress()))?;
            }
            if self.next_point.is_some_and(|t| Instant::now() >= t) {
                if self.catch_up.iter().any(Option::is_some) {
                    // A point during a catch-up could not be consistent; try again later.
                    self.next_point = Some(Instant::now() + Duration::from_secs(60));
                } else {
                    self.next_point = self.config.point_interval.map(|i| Instant::now() + i);
                    self.point(&mut stream, PointKind::Scheduled);
                }
            }
            self.digest_step(&mut stream)?;
            let batch = self.pick(self.config.batch_bytes, None);
            if batch.is_empty() {
                stream.link.flush()?;
                self.update_status(false);
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            self.ship(&mut stream, batch)?;
            self.update_status(false);
        }
    }
}
