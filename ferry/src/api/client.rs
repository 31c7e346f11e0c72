//! The operator commands' side of the control API.

use super::{DEFAULT_CONTROL, DEFAULT_TOKEN_FILE, ErrorBody};
use crate::keyfile;
use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::PathBuf;
use std::time::Duration;
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
    /// Print JSON instead of tables and sentences.
    #[arg(long)]
    pub json: bool,
}

/// Other sites' control APIs, for reverse replication (the standby's `[sites]`).
#[derive(Debug)]
pub(crate) struct HttpPeers {
    pub sites: std::collections::HashMap<String, crate::cmd::standby::SiteConfig>,
}

impl ferry_standby::control::Peers for HttpPeers {
    fn data_address(&self, site: &str) -> Option<String> {
        self.sites.get(site).map(|s| s.data.clone())
    }

    fn call(
        &self,
        site: &str,
        method: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        let s = self
            .sites
            .get(site)
            .ok_or_else(|| format!("site {site} is not in this standby's [sites]"))?;
        Client::new(&s.control, &s.token_file)
            .and_then(|c| c.request(method, path, Some(body)))
            .map_err(|e| format!("{e:#}"))
    }
}

/// A connection to one standby's control API.
#[derive(Debug)]
pub(crate) struct Client {
    base: String,
    token: Zeroizing<String>,
    agent: ureq::Agent,
}

impl ControlArgs {
    pub(crate) fn connect(&self) -> Result<Client> {
        Client::new(&self.control, &self.token_file)
    }
}

impl Client {
    /// A client of the control API at `control` (host:port), with the token in `token_file`.
    pub(crate) fn new(control: &str, token_file: &std::path::Path) -> Result<Self> {
        let token = keyfile::load_token(token_file)?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .build()
            .into();
        Ok(Client {
            base: format!("http://{control}"),
            token,
            agent,
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
        let mut response = response.with_context(|| {
            format!(
                "cannot reach the standby's control API at {} (is `ferry standby` running \
                 with a [control] section?)",
                self.base
            )
        })?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
            .with_context(|| format!("cannot read the answer to {method} {path}"))?;
        if status >= 400 {
            match serde_json::from_str::<ErrorBody>(&text) {
                Ok(e) => bail!("{}", e.error),
                Err(_) => bail!("{method} {path}: HTTP {status}: {text}"),
            }
        }
        serde_json::from_str(&text)
            .with_context(|| format!("the answer to {method} {path} is not what ferry expects"))
    }
}
