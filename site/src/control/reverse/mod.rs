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
//!
//! A file per job: `register` (both registrations), `start` (`reverse start`), `agent`
//! (the reverse agent's process), `watch` (its phases into the server's state) and
//! `failback` (with the original site's `restore`). This file holds what they share:
//! the peer sites ([`Peers`]) and the tools the program gives ([`ReverseTools`]). Every
//! step is checked against the server's state first and every call to a peer goes
//! through `Control::peer`, so a peer's refusal keeps its code.

mod agent;
mod failback;
mod register;
mod start;
mod watch;

use super::{Control, ControlError};
use crate::api::CallError;
use serde_json::Value;
use std::path::PathBuf;

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
}
