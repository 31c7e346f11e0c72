//! The control API of a standby site: HTTP/1.1 + JSON over TLS 1.3 (plain HTTP only on
//! loopback when asked), served by `ferry standby` on its own address (loopback by
//! default) and used by the operator commands (`ferry pair`,
//! `ferry server`, `ferry replication`, `ferry point`, …). Every request carries
//! `Authorization: Bearer <token>` (the token file of the standby's `[control]`
//! config); every error is `{"error": "<message naming the problem>"}` with a 4xx/5xx
//! status. The endpoints are listed in `docs/api.md`; [`server`] serves them and
//! [`routes`] maps them onto [`ferry_standby::control::Control`], [`client`] calls them.
//!
//! The request bodies are defined here, once, for both sides.

pub(crate) mod client;
mod routes;
pub(crate) mod server;

use serde::{Deserialize, Serialize};

/// Default control address of a standby, and of the operator commands.
pub(crate) const DEFAULT_CONTROL: &str = "127.0.0.1:7421";
/// Default token file of both sides.
pub(crate) const DEFAULT_TOKEN_FILE: &str = "/etc/ferry/keys/control.token";
/// Default CA file of the operator commands (the site pair's ca.pem).
pub(crate) const DEFAULT_CA_FILE: &str = "/etc/ferry/tls/ca.pem";

/// `POST /v1/servers`
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AddServer {
    pub pair: String,
    pub server: String,
    /// Where its replica is kept: "standard" (the data directory) or a class of the
    /// standby's `[storage_classes]`.
    #[serde(default = "standard")]
    pub storage_class: String,
}

fn standard() -> String {
    "standard".to_owned()
}

/// An error as the API returns it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ErrorBody {
    pub error: String,
}

/// `POST /v1/servers/{id}/reverse/start`
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StartReverse {
    /// Onto the original machine's disks: only what differs travels.
    pub original_machine: bool,
    /// The server's recovery key (key file text), if the standby holds none
    /// ([`RECOVERY_KEY_FIELD`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_key: Option<String>,
}

/// The body field that carries a recovery key with an operation (drill, failover, change
/// point, failback, restore, reverse start): the text of a recovery key file (or the pair
/// key). The standby holds it only for the operation; TLS carries it.
pub(crate) const RECOVERY_KEY_FIELD: &str = "recovery_key";
