//! Serves the control API: one thread per request (at most [`MAX_REQUESTS`] at once;
//! some wait for an agent or an instance), the token checked before anything else,
//! bodies at most [`MAX_BODY`] bytes, every refusal a JSON error naming the problem.

use super::{AddServer, ErrorBody};
use ferry_standby::catalog::{CatalogError, Pair, Replication};
use ferry_standby::control::{Control, ControlError};
use ferry_standby::instance::{InstanceError, Spec};
use ferry_standby::lifecycle::Step;
use ferry_wire::{ServerId, error_chain};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tiny_http::{Header, Method, Request, Response};
use zeroize::Zeroizing;

/// Requests served at once; more get 503.
pub(crate) const MAX_REQUESTS: usize = 16;
/// Largest request body read.
pub(crate) const MAX_BODY: u64 = 64 << 10;
/// Longest an operator's point request waits for the agent.
const POINT_TIMEOUT: Duration = Duration::from_secs(600);

/// A refusal: HTTP status and message.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: u16,
    message: String,
}

impl ApiError {
    fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> Self {
        let status = match &e {
            CatalogError::BadName(_) | CatalogError::BadSite(_) => 400,
            CatalogError::UnknownPair(_) | CatalogError::UnknownServer(_) => 404,
            CatalogError::PairExists(_)
            | CatalogError::PairInUse { .. }
            | CatalogError::ServerExists(..)
            | CatalogError::ServerBusy(..)
            | CatalogError::NotAllowed { .. } => 409,
            CatalogError::Io { .. }
            | CatalogError::Version { .. }
            | CatalogError::Corrupt { .. } => 500,
        };
        Self::new(status, error_chain(&e))
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::Catalog(e) => e.into(),
            ControlError::NotReplicating(..) | ControlError::NotConnected(_) => {
                Self::new(409, error_chain(&e))
            }
            ControlError::Timeout(..) => Self::new(504, error_chain(&e)),
            ControlError::UnknownStorageClass { .. }
            | ControlError::LatestUsed
            | ControlError::NotADisk(_) => Self::new(400, error_chain(&e)),
            ControlError::Instance(i) => {
                let status = match &i {
                    InstanceError::Script(_)
                    | InstanceError::NoScript
                    | InstanceError::Size(..)
                    | InstanceError::BadNetwork(_)
                    | InstanceError::BadIp(_)
                    | InstanceError::NoOriginal(_)
                    | InstanceError::BadPoint(_) => 400,
                    InstanceError::NoPoint(..) | InstanceError::Unknown(_) => 404,
                    InstanceError::NotRegistered(_) => 409,
                    _ => 500,
                };
                Self::new(status, error_chain(&i))
            }
            ControlError::ScriptFailed(_) => Self::new(422, error_chain(&e)),
            ControlError::StillConnected(..)
            | ControlError::Busy(_)
            | ControlError::LatestInconsistent(..)
            | ControlError::HasInstances(..) => Self::new(409, error_chain(&e)),
            ControlError::Keys(_) => Self::new(500, error_chain(&e)),
            ControlError::Reverse(_) => Self::new(502, error_chain(&e)),
            ControlError::ClassChange { .. } => Self::new(409, error_chain(&e)),
            ControlError::Failed(..) | ControlError::Store(..) | ControlError::Io { .. } => {
                Self::new(500, error_chain(&e))
            }
        }
    }
}

type Reply = Result<(u16, serde_json::Value), ApiError>;

fn ok(value: impl Serialize) -> Reply {
    Ok((200, serde_json::to_value(value).expect("replies serialize")))
}

/// Serves `server` until the process ends.
pub(crate) fn serve(server: tiny_http::Server, control: Arc<Control>, token: Zeroizing<String>) {
    let token = Arc::new(token);
    let busy = Arc::new(AtomicUsize::new(0));
    for request in server.incoming_requests() {
        if busy.fetch_add(1, Ordering::SeqCst) >= MAX_REQUESTS {
            busy.fetch_sub(1, Ordering::SeqCst);
            respond(
                request,
                Err(ApiError::new(503, "too many requests at once; retry")),
            );
            continue;
        }
        let (control, token, busy) = (control.clone(), token.clone(), busy.clone());
        let spawned = std::thread::Builder::new()
            .name("ferry-api".into())
            .spawn(move || {
                // Counted out even if the handler panics.
                let _slot = Slot(busy);
                handle(request, &control, &token);
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a control API thread");
        }
    }
}

/// One request being served.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn handle(mut request: Request, control: &Control, token: &str) {
    let reply = if authorized(&request, token) {
        route(&mut request, control)
    } else {
        Err(ApiError::new(
            401,
            "missing or wrong token: send `Authorization: Bearer <token>` with the token of \
             the standby's [control] token_file",
        ))
    };
    if let Err(e) = &reply {
        tracing::warn!(method = %request.method(), url = request.url(), status = e.status, "{}", e.message);
    } else if *request.method() != Method::Get {
        tracing::info!(method = %request.method(), url = request.url(), "control request done");
    }
    respond(request, reply);
}

fn respond(request: Request, reply: Reply) {
    let (status, body) = match reply {
        Ok(r) => r,
        Err(e) => (
            e.status,
            serde_json::to_value(ErrorBody { error: e.message }).expect("serializes"),
        ),
    };
    let json = Header::from_bytes("Content-Type", "application/json").expect("valid header");
    let _ = request.respond(
        Response::from_string(body.to_string())
            .with_status_code(status)
            .with_header(json),
    );
}

/// Compares the bearer token in constant time.
fn authorized(request: &Request, token: &str) -> bool {
    let Some(given) = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
        .and_then(|h| h.value.as_str().strip_prefix("Bearer "))
    else {
        return false;
    };
    let (a, b) = (given.trim().as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn body<T: DeserializeOwned>(request: &mut Request) -> Result<T, ApiError> {
    let mut text = String::new();
    request
        .as_reader()
        .take(MAX_BODY + 1)
        .read_to_string(&mut text)
        .map_err(|e| ApiError::new(400, format!("cannot read the request body: {e}")))?;
    if text.len() as u64 > MAX_BODY {
        return Err(ApiError::new(
            413,
            format!("request body over {MAX_BODY} bytes"),
        ));
    }
    serde_json::from_str(&text)
        .map_err(|e| ApiError::new(400, format!("request body is not valid: {e}")))
}

fn server_id(text: &str) -> Result<ServerId, ApiError> {
    ServerId::new(text).map_err(|e| ApiError::new(400, format!("server name refused: {e}")))
}

fn route(request: &mut Request, control: &Control) -> Reply {
    let method = request.method().clone();
    let url = request.url().to_owned();
    let path = url.split('?').next().unwrap_or_default();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (&method, parts.as_slice()) {
        (Method::Get, ["v1", "pairs"]) => ok(control.pairs()),
        (Method::Post, ["v1", "pairs"]) => {
            let pair: Pair = body(request)?;
            control.create_pair(pair.clone())?;
            ok(pair)
        }
        (Method::Delete, ["v1", "pairs", name]) => {
            control.delete_pair(name)?;
            ok(serde_json::json!({ "deleted": name }))
        }
        (Method::Get, ["v1", "servers"]) => ok(control.servers()),
        (Method::Post, ["v1", "servers"]) => {
            let add: AddServer = body(request)?;
            let id = server_id(&add.server)?;
            control.add_server(&add.pair, id, &add.storage_class)?;
            ok(control.server(&add.server)?)
        }
        (Method::Get, ["v1", "servers", id]) => ok(control.server(id)?),
        (Method::Delete, ["v1", "servers", id]) => {
            control.remove_server(id)?;
            ok(serde_json::json!({ "deleted": id }))
        }
        (Method::Post, ["v1", "servers", id, "replication", "start"]) => {
            let settings: Replication = body(request)?;
            settings
                .policy
                .check()
                .map_err(|e| ApiError::new(400, error_chain(&e)))?;
            control.start_replication(id, settings)?;
            ok(control.server(id)?)
        }
        (Method::Post, ["v1", "servers", id, "replication", "stop"]) => {
            control.step(id, Step::ReplicationStop)?;
            ok(control.server(id)?)
        }
        (Method::Get, ["v1", "servers", id, "points"]) => ok(control.points(id)?),
        (Method::Post, ["v1", "servers", id, "points"]) => {
            ok(control.request_point(id, POINT_TIMEOUT)?)
        }
        (Method::Get, ["v1", "servers", id, "instances"]) => ok(control.instances(id)?),
        (Method::Post, ["v1", "servers", id, "drills"]) => {
            let spec: Spec = body(request)?;
            ok(control.drill_start(id, spec)?)
        }
        (Method::Delete, ["v1", "servers", id, "drills"]) => ok(control.drill_clean(id, None)?),
        (Method::Delete, ["v1", "servers", id, "drills", instance]) => {
            ok(control.drill_clean(id, Some(instance))?)
        }
        (Method::Post, ["v1", "servers", id, "failover", "start"]) => {
            let spec: Spec = body(request)?;
            ok(control.failover_start(id, spec)?)
        }
        (Method::Post, ["v1", "servers", id, "failover", "change-point"]) => {
            let spec: Spec = body(request)?;
            ok(control.failover_change_point(id, spec)?)
        }
        (Method::Post, ["v1", "servers", id, "reverse", "register"]) => {
            control.reverse_register(id)?;
            ok(control.server(id)?)
        }
        (Method::Post, ["v1", "servers", id, "reverse", "start"]) => {
            let start: super::StartReverse = body(request)?;
            control.reverse_start(id, start.original_machine)?;
            ok(control.server(id)?)
        }
        (Method::Post, ["v1", "servers", id, "failback"]) => {
            let spec: Spec = body(request)?;
            ok(control.failback(id, spec)?)
        }
        (Method::Post, ["v1", "servers", id, "register"]) => {
            control.register(id)?;
            ok(control.server(id)?)
        }
        (Method::Post, ["v1", "servers", id, "restore"]) => {
            let spec: Spec = body(request)?;
            ok(control.restore(id, spec)?)
        }
        (Method::Post, ["v1", "servers", id, "failover", "confirm"]) => {
            control.failover_confirm(id)?;
            ok(control.server(id)?)
        }
        (_, ["v1", ..]) => Err(ApiError::new(
            404,
            format!("no endpoint {method} {path} (see docs/api.md)"),
        )),
        _ => Err(ApiError::new(
            404,
            format!("no endpoint {path}: the API lives under /v1 (see docs/api.md)"),
        )),
    }
}
