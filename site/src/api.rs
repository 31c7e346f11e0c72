//! The control API's types, shared by its server (`ferry standby`), its clients (the
//! `ferry` commands) and peer sites (reverse replication, failback): the request bodies,
//! and errors that keep their HTTP status and a machine-readable code end to end, so no
//! side ever decides by a message's wording.
//!
//! Every error answer is `{"error": "<message naming the problem>", "code": "<code>"}`
//! (docs/api.md lists the codes).

use serde::{Deserialize, Serialize};

/// What kind of refusal or failure an answer is; each has one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: the request is not valid (a name, a body, a setting).
    BadRequest,
    /// 401: no token, or another one.
    Unauthorized,
    /// 404: no such pair, server, instance, point or endpoint.
    NotFound,
    /// 408: the body did not arrive in time.
    TooSlow,
    /// 409: a pair of that name exists.
    PairExists,
    /// 409: the server is protected already (the message names its pair).
    ServerExists,
    /// 409: not allowed now: the server's state, an operation in progress, in use.
    NotAllowed,
    /// 413: the body is too large.
    TooLarge,
    /// 422: an instance came up and its post-launch script failed.
    ScriptFailed,
    /// 500: the standby failed (the message says what).
    Internal,
    /// 502: a peer site refused or could not be reached.
    Peer,
    /// 503: too many requests at once.
    Overloaded,
    /// 504: an agent did not answer in time.
    Timeout,
}

impl ErrorCode {
    /// The HTTP status of an answer with this code.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::NotFound => 404,
            ErrorCode::TooSlow => 408,
            ErrorCode::PairExists | ErrorCode::ServerExists | ErrorCode::NotAllowed => 409,
            ErrorCode::TooLarge => 413,
            ErrorCode::ScriptFailed => 422,
            ErrorCode::Internal => 500,
            ErrorCode::Peer => 502,
            ErrorCode::Overloaded => 503,
            ErrorCode::Timeout => 504,
        }
    }
}

/// An error as the API returns it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    /// Absent in answers of ferry 0.1 standbys.
    #[serde(default)]
    pub code: Option<ErrorCode>,
}

/// A call that did not succeed, as its caller sees it: the answer's code (none when no
/// API answer came: no connection, TLS refused, not JSON) and the message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct CallError {
    pub code: Option<ErrorCode>,
    pub message: String,
}

/// `POST /v1/servers`
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddServer {
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

/// `POST /v1/servers/{id}/reverse/start`
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartReverse {
    /// Onto the original machine's disks: only what differs travels.
    pub original_machine: bool,
    /// The server's recovery key (key file text), if the standby holds none
    /// ([`RECOVERY_KEY_FIELD`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_key: Option<String>,
}

/// The body field that carries a recovery key with an operation (drill, failover, change
/// point, failback, restore, reverse start): the text of a recovery key file (or the pair
/// key, from which the server's is derived). The standby holds it for that operation
/// only.
pub const RECOVERY_KEY_FIELD: &str = "recovery_key";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_travel_as_snake_case_and_an_old_answer_without_one_still_reads() {
        let body = ErrorBody {
            error: "server web-1 is already protected (by pair \"p2\")".into(),
            code: Some(ErrorCode::ServerExists),
        };
        let text = serde_json::to_string(&body).unwrap();
        assert!(text.contains(r#""code":"server_exists""#), "{text}");
        let old: ErrorBody = serde_json::from_str(r#"{"error":"no pair named \"x\""}"#).unwrap();
        assert_eq!(old.code, None);
        assert_eq!(ErrorCode::ServerExists.status(), 409);
    }
}
