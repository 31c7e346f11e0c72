//! The control API's routes: each endpoint of docs/api.md mapped onto
//! [`Control`], and every error of the control plane mapped to an HTTP status with a
//! message naming the problem ([`ApiError`]). No I/O here: [`super::server`] hands a
//! route the method, the path and the body it read, on the blocking pool.

use super::{AddServer, ErrorCode};
use ferry_site::catalog::{CatalogError, Pair, Replication};
use ferry_site::control::{Control, ControlError};
use ferry_site::instance::Spec;
use ferry_site::lifecycle::Step;
use ferry_wire::{KeyFile, RecoveryKey, ServerId, error_chain};
use hyper::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;
use zeroize::Zeroizing;

/// Longest an operator's point request waits for the agent.
const POINT_TIMEOUT: Duration = Duration::from_secs(600);

/// A refusal: its code (the HTTP status follows) and message.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> Self {
        Self::new(e.code(), error_chain(&e))
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        Self::new(e.code(), error_chain(&e))
    }
}

/// A status and JSON answer, or a refusal.
pub(crate) type Reply = Result<(u16, serde_json::Value), ApiError>;

fn ok(value: impl Serialize) -> Reply {
    Ok((200, serde_json::to_value(value).expect("replies serialize")))
}

fn body<T: DeserializeOwned>(raw: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(raw).map_err(|e| {
        ApiError::new(
            ErrorCode::BadRequest,
            format!("request body is not valid: {e}"),
        )
    })
}

/// A launch's body: a [`Spec`] and, optionally, the server's recovery key
/// ([`super::RECOVERY_KEY_FIELD`]), checked to be `id`'s.
fn launch(raw: &[u8], id: &str) -> Result<(Spec, Option<RecoveryKey>), ApiError> {
    let mut value: serde_json::Value = body(raw)?;
    let text = match value.as_object_mut() {
        Some(fields) => fields.remove(super::RECOVERY_KEY_FIELD),
        None => None,
    };
    let spec: Spec = serde_json::from_value(value).map_err(|e| {
        ApiError::new(
            ErrorCode::BadRequest,
            format!("request body is not valid: {e}"),
        )
    })?;
    let key = match text {
        None => None,
        Some(serde_json::Value::String(text)) => Some(recovery_key(&Zeroizing::new(text), id)?),
        Some(_) => {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                "recovery_key must be the text of a recovery key file",
            ));
        }
    };
    Ok((spec, key))
}

/// The recovery key of `id` from key file text (a recovery, host or pair key).
fn recovery_key(text: &str, id: &str) -> Result<RecoveryKey, ApiError> {
    let server = server_id(id)?;
    KeyFile::from_text(text)
        .and_then(|k| k.recovery_for(&server))
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("recovery_key refused: {e}")))
}

fn server_id(text: &str) -> Result<ServerId, ApiError> {
    ServerId::new(text)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("server name refused: {e}")))
}

/// Serves `method path` with the request body `raw`.
pub(crate) fn route(method: &Method, path: &str, raw: &[u8], control: &Control) -> Reply {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, parts.as_slice()) {
        (&Method::GET, ["v1", "pairs"]) => ok(control.pairs()),
        (&Method::POST, ["v1", "pairs"]) => {
            let pair: Pair = body(raw)?;
            control.create_pair(pair.clone())?;
            ok(pair)
        }
        (&Method::DELETE, ["v1", "pairs", name]) => {
            control.delete_pair(name)?;
            ok(serde_json::json!({ "deleted": name }))
        }
        (&Method::GET, ["v1", "servers"]) => ok(control.servers()),
        (&Method::POST, ["v1", "servers"]) => {
            let add: AddServer = body(raw)?;
            let id = server_id(&add.server)?;
            control.add_server(&add.pair, id, &add.storage_class)?;
            ok(control.server(&add.server)?)
        }
        (&Method::GET, ["v1", "servers", id]) => ok(control.server(id)?),
        (&Method::DELETE, ["v1", "servers", id]) => {
            control.remove_server(id)?;
            ok(serde_json::json!({ "deleted": id }))
        }
        (&Method::POST, ["v1", "servers", id, "replication", "start"]) => {
            let settings: Replication = body(raw)?;
            settings
                .policy
                .check()
                .map_err(|e| ApiError::new(ErrorCode::BadRequest, error_chain(&e)))?;
            control.start_replication(id, settings)?;
            ok(control.server(id)?)
        }
        (&Method::POST, ["v1", "servers", id, "replication", "stop"]) => {
            control.step(id, Step::ReplicationStop)?;
            ok(control.server(id)?)
        }
        (&Method::GET, ["v1", "servers", id, "points"]) => ok(control.points(id)?),
        (&Method::POST, ["v1", "servers", id, "points"]) => {
            ok(control.request_point(id, POINT_TIMEOUT)?)
        }
        (&Method::GET, ["v1", "servers", id, "instances"]) => ok(control.instances(id)?),
        (&Method::POST, ["v1", "servers", id, "drills"]) => {
            let (spec, key) = launch(raw, id)?;
            ok(control.drill_start(id, spec, key.as_ref())?)
        }
        (&Method::DELETE, ["v1", "servers", id, "drills"]) => ok(control.drill_clean(id, None)?),
        (&Method::DELETE, ["v1", "servers", id, "drills", instance]) => {
            ok(control.drill_clean(id, Some(instance))?)
        }
        (&Method::POST, ["v1", "servers", id, "failover", "start"]) => {
            let (spec, key) = launch(raw, id)?;
            ok(control.failover_start(id, spec, key.as_ref())?)
        }
        (&Method::POST, ["v1", "servers", id, "failover", "change-point"]) => {
            let (spec, key) = launch(raw, id)?;
            ok(control.failover_change_point(id, spec, key.as_ref())?)
        }
        (&Method::POST, ["v1", "servers", id, "reverse", "register"]) => {
            control.reverse_register(id)?;
            ok(control.server(id)?)
        }
        (&Method::POST, ["v1", "servers", id, "reverse", "start"]) => {
            let start: super::StartReverse = body(raw)?;
            let key = match start.recovery_key.map(Zeroizing::new) {
                Some(text) => Some(recovery_key(&text, id)?),
                None => None,
            };
            control.reverse_start(id, start.original_machine, key.as_ref())?;
            ok(control.server(id)?)
        }
        (&Method::POST, ["v1", "servers", id, "failback"]) => {
            let (spec, key) = launch(raw, id)?;
            ok(control.failback(id, spec, key.as_ref())?)
        }
        (&Method::POST, ["v1", "servers", id, "register"]) => {
            control.register(id)?;
            ok(control.server(id)?)
        }
        (&Method::POST, ["v1", "servers", id, "restore"]) => {
            let (spec, key) = launch(raw, id)?;
            ok(control.restore(id, spec, key.as_ref())?)
        }
        (&Method::POST, ["v1", "servers", id, "failover", "confirm"]) => {
            control.failover_confirm(id)?;
            ok(control.server(id)?)
        }
        (_, ["v1", ..]) => Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no endpoint {method} {path} (see docs/api.md)"),
        )),
        _ => Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no endpoint {path}: the API lives under /v1 (see docs/api.md)"),
        )),
    }
}
