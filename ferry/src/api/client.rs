//! The operator commands' side of the control API, and the standby's side of its peer
//! sites' control APIs.
//!
//! HTTPS trusting only the site pair's CA (`--ca`/`FERRY_CA` for the CLI; a standby
//! uses its `[tls]` files and presents its certificate to peer sites), TLS 1.3 only on
//! ferry's ring provider. Plain HTTP only when asked (`--insecure-plaintext`, or
//! `insecure_plaintext = true` for a peer site) and only to a loopback address.

use super::{DEFAULT_CA_FILE, DEFAULT_CONTROL, DEFAULT_TOKEN_FILE, ErrorBody};
use crate::keyfile;
use anyhow::{Context, Result, bail};
use ferry_site::api::CallError;
use ferry_tls::TlsFiles;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig, TlsProvider};
use zeroize::Zeroizing;

/// Where the standby's control API is, for every operator command.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ControlArgs {
    /// The standby's control address (host:port).
    #[arg(long, env = "FERRY_CONTROL", default_value = DEFAULT_CONTROL)]
    control: String,
    /// File holding the control API's token (mode 0600).
    #[arg(long, env = "FERRY_TOKEN_FILE", default_value = DEFAULT_TOKEN_FILE)]
    token_file: PathBuf,
    /// The site pair's CA certificate (PEM): the only CA the control API's certificate
    /// is checked against.
    #[arg(long, env = "FERRY_CA", default_value = DEFAULT_CA_FILE)]
    ca: PathBuf,
    /// Speak plain HTTP (no TLS) to a standby on loopback that serves it
    /// (`insecure_plaintext = true` in its [control]); refused for any other address.
    #[arg(long, env = "FERRY_INSECURE_PLAINTEXT")]
    insecure_plaintext: bool,
    /// Print JSON instead of tables and sentences.
    #[arg(long)]
    pub json: bool,
}

/// How a client reaches a control API.
#[derive(Debug, Clone)]
pub(crate) enum Transport {
    /// HTTPS, trusting only the CA in `ca`; with `identity`, presenting that certificate.
    Tls {
        ca: PathBuf,
        identity: Option<TlsFiles>,
    },
    /// Plain HTTP, to loopback only.
    Plaintext,
}

/// Other sites' control APIs, for reverse replication (the standby's `[sites]`).
#[derive(Debug)]
pub(crate) struct HttpPeers {
    pub sites: std::collections::HashMap<String, crate::cmd::standby::SiteConfig>,
    /// The standby's own `[tls]`: its certificate is its client certificate at peers.
    pub tls: Option<TlsFiles>,
}

impl ferry_site::control::Peers for HttpPeers {
    fn data_address(&self, site: &str) -> Option<String> {
        self.sites.get(site).map(|s| s.data.clone())
    }

    fn call(
        &self,
        site: &str,
        method: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, CallError> {
        let refused = |message: String| CallError {
            code: None,
            message,
        };
        let s = self
            .sites
            .get(site)
            .ok_or_else(|| refused(format!("site {site} is not in this standby's [sites]")))?;
        let transport = if s.insecure_plaintext {
            Transport::Plaintext
        } else {
            match &self.tls {
                Some(tls) => Transport::Tls {
                    ca: tls.ca.clone(),
                    identity: Some(tls.clone()),
                },
                None => {
                    return Err(refused(format!(
                        "site {site} is reached over TLS and this standby has no [tls] files"
                    )));
                }
            }
        };
        Client::new(&s.control, &s.token_file, &transport)
            .and_then(|c| c.request(method, path, Some(body)))
            .map_err(|e| match e.downcast_ref::<CallError>() {
                Some(answer) => answer.clone(),
                None => refused(format!("{e:#}")),
            })
    }
}

/// A connection to one standby's control API.
#[derive(Debug)]
pub(crate) struct Client {
    base: String,
    token: Zeroizing<String>,
    agent: ureq::Agent,
    /// The CA file, for messages.
    ca: Option<PathBuf>,
}

impl ControlArgs {
    pub(crate) fn connect(&self) -> Result<Client> {
        let transport = if self.insecure_plaintext {
            Transport::Plaintext
        } else {
            Transport::Tls {
                ca: self.ca.clone(),
                identity: None,
            }
        };
        Client::new(&self.control, &self.token_file, &transport)
    }
}

/// Refuses plain HTTP to anything but a loopback address.
pub(crate) fn check_plaintext_address(control: &str) -> Result<()> {
    match control.parse::<std::net::SocketAddr>() {
        Ok(addr) if ferry_tls::is_loopback(addr.ip()) => Ok(()),
        _ => bail!(
            "plain HTTP (insecure plaintext) is allowed only to a loopback address such as \
             127.0.0.1:7421, not to {control}: the token would cross the network in clear; \
             use HTTPS with the site pair's CA (--ca or FERRY_CA)"
        ),
    }
}

/// ureq's TLS settings: ferry's provider, the CA as the only root, an optional client
/// certificate.
fn tls_config(ca: &Path, identity: Option<&TlsFiles>) -> Result<TlsConfig> {
    let roots: Vec<Certificate<'static>> = ferry_tls::config::load_ca_certs(ca)
        .with_context(|| {
            format!(
                "cannot load the CA for the control API (pass the site pair's ca.pem with \
                 --ca or FERRY_CA; it was {})",
                ca.display()
            )
        })?
        .iter()
        .map(|c| Certificate::from_der(c.as_ref()).to_owned())
        .collect();
    let mut builder = TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(ferry_tls::provider())
        .root_certs(RootCerts::Specific(Arc::new(roots)));
    if let Some(files) = identity {
        let id = files
            .load_identity()
            .context("cannot load this standby's [tls] certificate for a peer site")?;
        let chain: Vec<Certificate<'static>> = id
            .chain
            .iter()
            .map(|c| Certificate::from_der(c.as_ref()).to_owned())
            .collect();
        let pem = ferry_tls::config::load_private_key_pem(&files.key)
            .context("cannot load this standby's [tls] key for a peer site")?;
        let key = PrivateKey::from_pem(&pem)
            .with_context(|| format!("private key {} cannot be used", files.key.display()))?;
        builder = builder.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
    }
    Ok(builder.build())
}

impl Client {
    /// A client of the control API at `control` (host:port), with the token in
    /// `token_file`, over `transport`.
    pub(crate) fn new(control: &str, token_file: &Path, transport: &Transport) -> Result<Self> {
        let (scheme, tls, ca) = match transport {
            Transport::Plaintext => {
                check_plaintext_address(control)?;
                ("http", TlsConfig::default(), None)
            }
            Transport::Tls { ca, identity } => (
                "https",
                tls_config(ca, identity.as_ref())?,
                Some(ca.clone()),
            ),
        };
        let token = keyfile::load_token(token_file)?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .tls_config(tls)
            .build()
            .into();
        Ok(Client {
            base: format!("{scheme}://{control}"),
            token,
            agent,
            ca,
        })
    }

    pub(crate) fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.request("GET", path, None::<&()>)
    }

    pub(crate) fn post<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T> {
        self.request("POST", path, Some(body))
    }

    pub(crate) fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.request("DELETE", path, None::<&()>)
    }

    /// `method path` (GET, POST or DELETE), with a JSON body for POST.
    pub(crate) fn request<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T> {
        let url = format!("{}{path}", self.base);
        let bearer = format!("Bearer {}", self.token.as_str());
        let response = match method {
            "POST" => {
                let body = body.map_or_else(
                    || "null".to_owned(),
                    |b| serde_json::to_string(b).expect("request bodies serialize"),
                );
                self.agent
                    .post(&url)
                    .header("Authorization", &bearer)
                    .header("Content-Type", "application/json")
                    .send(body)
            }
            "DELETE" => self
                .agent
                .delete(&url)
                .header("Authorization", &bearer)
                .call(),
            _ => self.agent.get(&url).header("Authorization", &bearer).call(),
        };
        self.finish(method, path, response)
    }
    fn finish<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T> {
        let mut response = match response {
            Ok(r) => r,
            Err(e) => {
                if let Some(tls) = rustls_error(&e) {
                    let ca = self.ca.as_ref().map_or_else(String::new, |ca| {
                        format!(" (this side trusts only {})", ca.display())
                    });
                    bail!(
                        "tls with the standby's control API at {} failed: {}{ca}",
                        self.base,
                        ferry_tls::describe_tls_error(tls)
                    );
                }
                return Err(anyhow::Error::new(e).context(format!(
                    "cannot reach the standby's control API at {} (is `ferry standby` \
                     running with a [control] section, and does it speak {}?)",
                    self.base,
                    if self.ca.is_some() {
                        "HTTPS"
                    } else {
                        "plain HTTP"
                    }
                )));
            }
        };
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
            .with_context(|| format!("cannot read the answer to {method} {path}"))?;
        if status >= 400 {
            match serde_json::from_str::<ErrorBody>(&text) {
                // The code travels on (peer calls decide by it, never by the wording).
                Ok(e) => {
                    return Err(CallError {
                        code: e.code,
                        message: e.error,
                    }
                    .into());
                }
                Err(_) => bail!("{method} {path}: HTTP {status}: {text}"),
            }
        }
        serde_json::from_str(&text)
            .with_context(|| format!("the answer to {method} {path} is not what ferry expects"))
    }
}

/// The rustls error behind a ureq error, if TLS is what failed.
fn rustls_error(e: &ureq::Error) -> Option<&rustls::Error> {
    match e {
        ureq::Error::Rustls(tls) => Some(tls),
        ureq::Error::Io(io) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_site::control::Peers;
    use ferry_tls::pki::{IssueRequest, init_ca, issue};
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::Mutex;
    use std::time::Instant;

    /// A peer site's control API that requires a client certificate: answers one
    /// request with `{}` and reports whose certificate the client presented.
    fn peer_site(files: &TlsFiles) -> (String, std::thread::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let config = files
            .server_config_client_required()
            .expect("server config");
        let serving = std::thread::spawn(move || {
            let (tcp, _) = listener.accept().expect("accept");
            let stream =
                ferry_tls::TlsStream::accept(tcp, config, Instant::now() + Duration::from_secs(10))
                    .expect("the standby's call completes a mutual TLS handshake");
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = (&stream).read(&mut buf).expect("request");
                assert!(n > 0, "the request ended early");
                request.extend_from_slice(&buf[..n]);
            }
            (&stream)
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
                .expect("answer");
            let _ = stream.close();
            stream
                .peer_certificates()
                .and_then(|c| c.first().map(ferry_tls::peer_dns_names))
                .unwrap_or_default()
        });
        (addr, serving)
    }

    /// A relay to `target` recording the bytes of both directions.
    fn relay(target: String) -> (String, Arc<Mutex<Vec<u8>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        std::thread::spawn(move || {
            let (client, _) = listener.accept().expect("accept");
            let server = TcpStream::connect(&target).expect("connect");
            for (mut from, mut to) in [
                (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                ),
                (server, client),
            ] {
                let record = record.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 << 10];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 || to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        record.lock().expect("record").extend_from_slice(&buf[..n]);
                    }
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        (addr, seen)
    }

    #[test]
    fn a_peer_site_call_presents_the_sites_certificate_and_hides_the_token() {
        let dir = tempfile::tempdir().expect("tempdir");
        init_ca(dir.path(), false).expect("CA");
        let mut names = Vec::new();
        for name in ["site-a", "site-b"] {
            let mut request = IssueRequest::new(name);
            request.sans = vec!["127.0.0.1".into()];
            names.push(issue(dir.path(), &request).expect("issue"));
        }
        let files = |i: usize| TlsFiles {
            ca: dir.path().join("ca.pem"),
            cert: names[i].cert.clone(),
            key: names[i].key.clone(),
        };
        let token = "peer-token-0123456789abcdef";
        let token_file = dir.path().join("site-a.token");
        std::fs::write(&token_file, token).expect("token");
        std::fs::set_permissions(
            &token_file,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .expect("chmod");

        let (site_a, serving) = peer_site(&files(0));
        let (via, seen) = relay(site_a);
        let site = crate::cmd::standby::SiteConfig {
            data: "127.0.0.1:1".into(),
            control: via,
            token_file,
            insecure_plaintext: false,
        };
        let peers = HttpPeers {
            sites: [("site-a".to_owned(), site)].into(),
            tls: Some(files(1)),
        };
        let answer = peers
            .call("site-a", "POST", "/v1/pairs", &serde_json::json!({"x": 1}))
            .expect("the call succeeds");
        assert_eq!(answer, serde_json::json!({}));
        let presented = serving.join().expect("peer site");
        assert_eq!(
            presented,
            ["site-b"],
            "the standby presented its own certificate"
        );
        let bytes = seen.lock().expect("record").clone();
        assert!(bytes.len() > 500, "the relay saw {} bytes", bytes.len());
        assert!(
            !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
            "the token crossed the relay in clear"
        );

        let no_tls = HttpPeers {
            sites: peers.sites,
            tls: None,
        };
        let err = no_tls
            .call("site-a", "GET", "/v1/pairs", &serde_json::Value::Null)
            .expect_err("a TLS site was called without [tls]");
        assert!(err.message.contains("no [tls]"), "{err}");
    }
}
