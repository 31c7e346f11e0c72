//! The control API of a standby site: HTTP/1.1 + JSON over TLS 1.3 (plain HTTP only on
//! loopback when asked), served by `ferry standby` on its own address (loopback by
//! default) and used by the operator commands (`ferry pair`,
//! `ferry server`, `ferry replication`, `ferry point`, …). Every request carries
//! `Authorization: Bearer <token>` (the token file of the standby's `[control]`
//! config); every error is `{"error": "<message naming the problem>", "code": "<code>"}`
//! with the code's 4xx/5xx status ([`ferry_site::api::ErrorCode`]). The endpoints are listed in `docs/api.md`; [`server`] serves them and
//! [`routes`] maps them onto [`ferry_site::control::Control`], [`client`] calls them.
//!
//! The request bodies and error codes are defined once, for both sides and for peer
//! sites, in [`ferry_site::api`].

pub(crate) mod client;
mod routes;
pub(crate) mod server;

/// Default control address of a standby, and of the operator commands.
pub(crate) const DEFAULT_CONTROL: &str = "127.0.0.1:7421";
/// Default token file of both sides.
pub(crate) const DEFAULT_TOKEN_FILE: &str = "/etc/ferry/keys/control.token";
/// Default CA file of the operator commands (the site pair's ca.pem).
pub(crate) const DEFAULT_CA_FILE: &str = "/etc/ferry/tls/ca.pem";

pub(crate) use ferry_site::api::{
    AddServer, ErrorBody, ErrorCode, RECOVERY_KEY_FIELD, StartReverse,
};
