//! Recovery points (DESIGN.md I5). Freeze every mounted filesystem on the protected
//! disks, drain the tracker, read the whole remaining dirty set (and every suspect range)
//! into memory, thaw, then send those records and the barrier: only local reads happen
//! under the freeze, and the freezer's guard thaws on every path (and a watchdog after
//! twice `max_freeze`). The point is marked consistent only if no write was submitted or
//! completed from the freeze to the end of the reads and none was in flight. A freeze
//! that would pass `max_freeze` (or [`FREEZE_READ_CAP`]) is abandoned (thawed) and retried
//! after shipping more.

use super::parts::{DirtySource, ExtentReader, Freezer};
use super::ship::Stream;
use super::{Agent, FREEZE_READ_CAP, disk_id, lock, now_ms};
use crate::freeze::run_hook;
use crate::status::PointStatus;
use ferry_tracker_core::range::RangeSet;
use ferry_wire::message::{Barrier, PointKind};
use ferry_wire::{Message, PointId, Seq, error_chain};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

impl<D: DirtySource, R: ExtentReader, F: Freezer> Agent<D, R, F> {
    /// A point an operator asked for (on the control socket or through the standby):
    /// refused while disconnected or while a disk catches up.
    pub(super) fn manual_point(&mut self, stream: Option<&mut Stream>) -> PointStatus {
        let catching_up = self
            .catch_up
            .iter()
            .zip(&self.registration.disks)
            .find_map(|(c, d)| c.as_ref().map(|c| (d.name.clone(), c.method.name())));
        let refused = |error| PointStatus {
            unix_time_ms: now_ms(),
            error: Some(error),
            ..PointStatus::default()
        };
        match (stream, catching_up) {
            (None, _) => refused(format!(
                "not connected to the standby at {}: {}",
                self.config.standby,
                self.status.last_error.clone().unwrap_or_default()
            )),
            // Until a catch-up is acknowledged, the standby may lack changes made during
            // the gap: no point could be consistent (DESIGN.md I5).
            (Some(_), Some((disk, method))) => refused(format!(
                "disk {disk} is catching up after a tracking gap ({method}); a point now \
                 could not hold every change: try again once it is in real time (`ferry \
                 agent status`)"
            )),
            (Some(s), None) => self.point(s, PointKind::Manual),
        }
    }
    /// Makes a recovery point; see the module doc. Never leaves a filesystem frozen.
    pub(super) fn point(&mut self, stream: &mut Stream, kind: PointKind) -> PointStatus {
        let started = now_ms();
        let result = self.try_point(stream, kind);
        let status = match result {
            Ok(mut s) => {
                s.unix_time_ms = started;
                s
            }
            Err(e) => PointStatus {
                unix_time_ms: started,
                error: Some(e),
                ..PointStatus::default()
            },
        };
        match &status.error {
            None => {
                tracing::info!(point = ?status.point.map(PointId::get), seq = ?status.seq.map(Seq::get), consistent = status.consistent, freeze_ms = status.freeze_ms, "recovery point made")
            }
            Some(e) => tracing::error!("recovery point failed: {e}"),
        }
        self.status.last_point = Some(status.clone());
        self.write_status();
        status
    }
    pub(super) fn try_point(
        &mut self,
        stream: &mut Stream,
        kind: PointKind,
    ) -> Result<PointStatus, String> {
        let names: Vec<String> = self
            .registration
            .disks
            .iter()
            .map(|d| d.name.clone())
            .collect();
        let mounts = self.freezer.mounts(&names).map_err(|e| error_chain(&e))?;
        let point = PointId::new(now_ms());
        let env = [
            ("FERRY_SERVER", self.config.server.to_string()),
            ("FERRY_POINT", point.get().to_string()),
        ];
        // Ship first what can be shipped without freezing.
        self.drain_dirty(stream, self.config.batch_bytes * 4)
            .map_err(|e| error_chain(&e))?;
        if let Some(hook) = &self.config.pre_freeze {
            run_hook("pre-freeze", hook, &env)?;
        }
        let mut attempt = 0;
        let result = loop {
            attempt += 1;
            match self.frozen_barrier(stream, &mounts, point, kind) {
                Ok(Some(s)) => break Ok(s),
                Ok(None) if attempt < 3 && !self.stop.load(Ordering::SeqCst) => {
                    tracing::warn!(
                        attempt,
                        "the remaining dirty set could not be read within the freeze limit; thawed, shipping more before retrying"
                    );
                    if let Err(e) = self.drain_dirty(stream, self.config.batch_bytes * 8) {
                        break Err(error_chain(&e));
                    }
                }
                Ok(None) => {
                    break Err(format!(
                        "the dirty set could not be read within {:?} of freeze in {attempt} attempts (writes outpace the link)",
                        self.config.max_freeze
                    ));
                }
                Err(e) => break Err(e),
            }
        };
        if let Some(hook) = &self.config.post_thaw
            && let Err(e) = run_hook("post-thaw", hook, &env)
        {
            tracing::warn!("{e}");
        }
        let mut status = result?;
        let seq = status.seq.expect("a barrier was sent");
        stream
            .link
            .wait_durable(seq, Duration::from_secs(60))
            .map_err(|e| {
                format!(
                    "the point's barrier was not acknowledged: {}",
                    error_chain(&e)
                )
            })?;
        self.apply_acks(stream.link.durable());
        status.ok = true;
        Ok(status)
    }
    /// Freezes, reads the remaining dirty set (and every suspect range) into memory,
    /// thaws, then seals and sends it and the barrier: nothing but local reads happens
    /// while the filesystems are frozen, so a slow or dead link cannot prolong a freeze.
    /// `Ok(None)` when the freeze limit (time, or [`FREEZE_READ_CAP`] bytes) passed first
    /// (thawed, no barrier). The point is consistent when no write was submitted or
    /// completed between the freeze and the end of the reads and none is in flight.
    pub(super) fn frozen_barrier(
        &mut self,
        stream: &mut Stream,
        mounts: &[PathBuf],
        point: PointId,
        kind: PointKind,
    ) -> Result<Option<PointStatus>, String> {
        let started = Instant::now();
        let (frozen, frozen_mounts) = self
            .freezer
            .freeze(mounts, self.config.max_freeze * 2 + Duration::from_secs(1))
            .map_err(|e| error_chain(&e))?;
        let frozen_at = ferry_tracker::sys::monotonic_ns();
        let n = self.sizes.len();
        // Writes submitted before the freeze are complete now; any the tracker still
        // counts as in flight lost their completion: readable, as suspect. Suspect ranges
        // are read inside this freeze; they are given back unless the point is consistent.
        let (before, suspects) = {
            let mut t = lock(&self.tracker);
            t.poll().map_err(|e| error_chain(&e))?;
            let state = t.state_mut();
            state.sweep(frozen_at);
            let mut suspects = Vec::with_capacity(n);
            for i in 0..n {
                let disk = disk_id(i);
                let suspect = std::mem::take(&mut state.disk_mut(disk).suspect);
                for r in suspect.iter() {
                    state.mark_dirty(disk, r);
                }
                suspects.push(suspect);
            }
            (state.counters, suspects)
        };
        let give_back = |agent: &mut Self, suspects: Vec<RangeSet>| {
            let mut t = lock(&agent.tracker);
            for (i, set) in suspects.into_iter().enumerate() {
                for r in set.iter() {
                    t.state_mut().disk_mut(disk_id(i)).suspect.insert(r);
                }
            }
        };
        // Everything dirty is read again, shipping or not (it may have changed since it
        // was picked); each range once.
        let mut read = vec![RangeSet::new(); n];
        let mut batches = Vec::new();
        let mut bytes = 0;
        loop {
            let batch = self.pick(self.config.batch_bytes, Some(&read));
            if batch.is_empty() {
                break;
            }
            if started.elapsed() > self.config.max_freeze || bytes > FREEZE_READ_CAP {
                drop(frozen);
                give_back(self, suspects);
                return Ok(None);
            }
            for p in &batch {
                read[p.disk.index()].insert(p.range);
                bytes += p.range.len();
            }
            let reqs = match self.read_batch(&batch) {
                Ok(r) => r,
                Err(e) => {
                    drop(frozen);
                    give_back(self, suspects);
                    return Err(error_chain(&e));
                }
            };
            batches.push((batch, reqs));
        }
        let quiet = {
            let mut t = lock(&self.tracker);
            t.poll().map_err(|e| error_chain(&e))?;
            let now = t.state().counters;
            now.submitted == before.submitted
                && now.completed == before.completed
                && now.fallback_ranges == before.fallback_ranges
                && t.state().in_flight_count() == 0
        };
        drop(frozen);
        let freeze_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        if !quiet {
            give_back(self, suspects);
        }
        for (batch, reqs) in batches {
            self.send_batch(stream, batch, &reqs)
                .map_err(|e| error_chain(&e))?;
        }
        let seq = stream.next_seq;
        self.lease.cover(seq).map_err(|e| error_chain(&e))?;
        let barrier = ferry_wire::seal::sign_barrier(
            &self.keys,
            Barrier {
                server: self.config.server.clone(),
                seq,
                point,
                kind,
                consistent: quiet,
                unix_time_ms: now_ms(),
                registration: self.registration.seal,
                seal: [0; 32],
                mac: [0; 32],
            },
        );
        stream.next_seq = seq.saturating_next();
        stream
            .link
            .send(&Message::Barrier(barrier.clone()))
            .and_then(|()| stream.link.flush())
            .map_err(|e| error_chain(&e))?;
        Ok(Some(PointStatus {
            point: Some(point),
            seq: Some(seq),
            consistent: barrier.consistent,
            freeze_ms,
            frozen: frozen_mounts,
            ..PointStatus::default()
        }))
    }
}
