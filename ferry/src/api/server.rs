//! Serves the control API over HTTPS (or, on loopback when asked, plain HTTP) on hyper
//! and tokio, bounded against abuse:
//!
//! | bound | value | past it |
//! |---|---|---|
//! | connections at once | [`MAX_CONNECTIONS`], [`MAX_PER_ADDRESS`] from one IP | a new connection is closed at once |
//! | TLS handshake | [`HANDSHAKE_TIMEOUT`], absolute | the connection is closed |
//! | request line and headers | [`MAX_HEADER_BYTES`] | `431`, connection closed |
//! | time to send the headers (also the idle time between requests) | [`HEADER_TIMEOUT`] | connection closed |
//! | body | [`MAX_BODY`] bytes within [`BODY_TIMEOUT`] | `413` / `408` |
//! | requests being handled | [`MAX_REQUESTS`] | `503` |
//!
//! Two tokio workers run the connections; the handlers call the blocking
//! [`Control`] on tokio's blocking pool (some wait for an agent or an instance), at most
//! [`MAX_REQUESTS`] at once. The token is checked, in constant time, before the body is
//! read; every refusal is a JSON error naming the problem. The routes are in
//! [`super::routes`].

use super::routes::{ApiError, Reply, route};
use super::{ErrorBody, ErrorCode};
use ferry_site::control::Control;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

/// Requests handled at once; more get 503.
pub(crate) const MAX_REQUESTS: usize = 16;
/// Connections open at once (TLS handshakes included); more are closed at once.
pub(crate) const MAX_CONNECTIONS: usize = 256;
/// Connections open at once from one IP address: one flooding host cannot take every
/// slot from the operators.
pub(crate) const MAX_PER_ADDRESS: usize = 32;
/// Largest request body read.
pub(crate) const MAX_BODY: usize = 64 << 10;
/// Largest request head (request line and headers) buffered; hyper's minimum is 8 KiB.
pub(crate) const MAX_HEADER_BYTES: usize = 16 << 10;
/// Longest a TLS handshake may take, from accept to its end.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a client may take to send a request's head, counted from the moment the
/// server waits for it: on a kept-alive connection, that is also the idle timeout.
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a client may take to send a request's body.
pub(crate) const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// What every connection's handlers share.
struct Shared {
    control: Arc<Control>,
    token: Zeroizing<String>,
    /// Handlers running (on the blocking pool).
    busy: Arc<Semaphore>,
}

/// Serves the control API on `listener` until the process ends: TLS with `tls`, plain
/// HTTP with `None` (the caller allows that only on loopback, when asked).
pub(crate) fn serve(
    listener: std::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    control: Arc<Control>,
    token: Zeroizing<String>,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(MAX_REQUESTS + 2)
        .thread_name("ferry-api")
        .enable_io()
        .enable_time()
        .build()?;
    listener.set_nonblocking(true)?;
    let shared = Arc::new(Shared {
        control,
        token,
        busy: Arc::new(Semaphore::new(MAX_REQUESTS)),
    });
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        accept_loop(listener, tls.map(tokio_rustls::TlsAcceptor::from), shared).await;
        Ok(())
    })
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
) {
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let per_address = Arc::new(std::sync::Mutex::new(HashMap::new()));
    let mut refused = 0u64;
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, most likely: wait rather than spin.
                tracing::warn!(error = %e, "control API: cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let admitted = PerAddress::take(&per_address, peer.ip())
            .ok_or(format!(
                "{MAX_PER_ADDRESS} connections from this address are open"
            ))
            .and_then(|slot| {
                let permit = connections.clone().try_acquire_owned();
                permit
                    .map(|p| (p, slot))
                    .map_err(|_| format!("{MAX_CONNECTIONS} connections are open"))
            });
        let (permit, slot) = match admitted {
            Ok(admitted) => admitted,
            Err(why) => {
                drop(tcp);
                refused += 1;
                if refused.is_power_of_two() {
                    tracing::warn!(%peer, refused, "control API: {why}; closing new ones");
                }
                continue;
            }
        };
        let (tls, shared) = (tls.clone(), shared.clone());
        tokio::spawn(async move {
            let _permit = (permit, slot);
            let _ = tcp.set_nodelay(true);
            match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => serve_http(stream, shared).await,
                        Ok(Err(e)) => {
                            let reason = tls_reason(&e);
                            tracing::info!(%peer, "control API: tls handshake failed: {reason}");
                        }
                        Err(_) => tracing::info!(
                            %peer,
                            "control API: tls handshake did not finish within {HANDSHAKE_TIMEOUT:?}"
                        ),
                    }
                }
                None => serve_http(tcp, shared).await,
            }
        });
    }
}

/// Connections open per IP address.
type Counts = Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>;

/// One connection counted against its address; counted out when dropped.
struct PerAddress {
    counts: Counts,
    ip: IpAddr,
}

impl PerAddress {
    /// A slot for `ip`, unless it has [`MAX_PER_ADDRESS`] already.
    fn take(counts: &Counts, ip: IpAddr) -> Option<Self> {
        let ip = ip.to_canonical();
        let mut map = counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = map.entry(ip).or_insert(0);
        if *n >= MAX_PER_ADDRESS {
            return None;
        }
        *n += 1;
        Some(Self {
            counts: counts.clone(),
            ip,
        })
    }
}

impl Drop for PerAddress {
    fn drop(&mut self) {
        let mut map = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// The rustls error inside an I/O error, worded for the operator.
fn tls_reason(e: &std::io::Error) -> String {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .map_or_else(|| e.to_string(), ferry_tls::describe_tls_error)
}

async fn serve_http<S>(stream: S, shared: Arc<Shared>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let shared = shared.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(request, shared).await) }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES)
        .keep_alive(true);
    if let Err(e) = http
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(error = %e, "control API connection ended");
    }
}

async fn handle(request: Request<Incoming>, shared: Arc<Shared>) -> Response<Full<Bytes>> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let reply = if authorized(request.headers(), &shared.token) {
        match shared.busy.clone().try_acquire_owned() {
            Ok(permit) => match read_body(request.into_body()).await {
                Ok(body) => {
                    let (control, m, p) = (shared.control.clone(), method.clone(), path.clone());
                    tokio::task::spawn_blocking(move || {
                        let _permit = permit;
                        route(&m, &p, &body, &control)
                    })
                    .await
                    .unwrap_or_else(|e| {
                        Err(ApiError::new(
                            ErrorCode::Internal,
                            format!("the request's handler failed: {e}"),
                        ))
                    })
                }
                Err(e) => Err(e),
            },
            Err(_) => Err(ApiError::new(
                ErrorCode::Overloaded,
                "too many requests at once; retry",
            )),
        }
    } else {
        Err(ApiError::new(
            ErrorCode::Unauthorized,
            "missing or wrong token: send `Authorization: Bearer <token>` with the token of \
             the standby's [control] token_file",
        ))
    };
    if let Err(e) = &reply {
        tracing::warn!(%method, url = %path, status = e.code.status(), "{}", e.message);
    } else if method != Method::GET {
        tracing::info!(%method, url = %path, "control request done");
    }
    respond(reply)
}

/// The body, at most [`MAX_BODY`] bytes within [`BODY_TIMEOUT`].
async fn read_body(body: Incoming) -> Result<Bytes, ApiError> {
    match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            ErrorCode::TooLarge,
            format!("request body over {MAX_BODY} bytes"),
        )),
        Ok(Err(e)) => Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("cannot read the request body: {e}"),
        )),
        Err(_) => Err(ApiError::new(
            ErrorCode::TooSlow,
            format!("the request body did not arrive within {BODY_TIMEOUT:?}"),
        )),
    }
}

fn respond(reply: Reply) -> Response<Full<Bytes>> {
    let (status, body) = match reply {
        Ok(r) => r,
        Err(e) => (
            e.code.status(),
            serde_json::to_value(ErrorBody {
                error: e.message,
                code: Some(e.code),
            })
            .expect("serializes"),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Compares the bearer token in constant time.
fn authorized(headers: &hyper::HeaderMap, token: &str) -> bool {
    use subtle::ConstantTimeEq;
    let Some(given) = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    bool::from(given.trim().as_bytes().ct_eq(token.as_bytes()))
}
