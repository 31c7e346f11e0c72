//! A managed server's points: those retained in its store, and a point an operator asks
//! for now, which travels to the agent as a `PointRequest` and returns as its
//! `PointResult` (made only while the server replicates and its agent is connected).

use super::{Control, ControlError, Gate, PointView, point_views};
use ferry_wire::message::{PointRequest, PointResult};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

impl Control {
    /// The retained points of a managed server.
    pub fn points(&self, id: &str) -> Result<Vec<PointView>, ControlError> {
        let server = self.catalog().server(id)?.id.clone();
        let state = self
            .data
            .read_server(&server)
            .map_err(|e| ControlError::Store(server.clone(), e))?;
        Ok(point_views(&state))
    }

    /// Asks the agent of `id` for a point now and waits for its answer.
    pub fn request_point(&self, id: &str, timeout: Duration) -> Result<PointResult, ControlError> {
        let server = self.catalog().server(id)?.clone();
        let gate = Gate::of(&server);
        if !gate.takes_records() {
            return Err(ControlError::NotReplicating(server.id, server.state));
        }
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        let session = {
            let mut live = self.live();
            let session = live
                .get(&server.id)
                .and_then(|l| l.conn.clone())
                .ok_or_else(|| ControlError::NotConnected(server.id.clone()))?;
            live.entry(server.id.clone())
                .or_default()
                .points
                .insert(request, None);
            session
        };
        let sent = session.request_point(PointRequest { request });
        let conn = session.id();
        let mut live = self.live();
        if sent.is_err() {
            if let Some(l) = live.get_mut(&server.id) {
                l.points.remove(&request);
            }
            return Err(ControlError::NotConnected(server.id.clone()));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let entry = live.get_mut(&server.id).expect("inserted above");
            if let Some(Some(result)) = entry.points.get(&request) {
                let result = result.clone();
                entry.points.remove(&request);
                return match result.error {
                    Some(e) => Err(ControlError::Failed(server.id, e)),
                    None => Ok(result),
                };
            }
            if entry.conn.as_ref().is_none_or(|c| c.id() != conn) {
                entry.points.remove(&request);
                return Err(ControlError::NotConnected(server.id));
            }
            let now = Instant::now();
            if now >= deadline {
                entry.points.remove(&request);
                return Err(ControlError::Timeout(server.id, timeout));
            }
            live = self
                .changed
                .wait_timeout(live, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}
