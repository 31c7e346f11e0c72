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

/// A connection to one standby's control API.
#[derive(Debug)]
pub(crate) struct Client {
    base: String,
    token: Zeroizing<String>,
    agent: ureq::Agent,
}

impl ControlArgs {
    pub(crate) fn connect(&self) -> Result<Client> {
        let token = keyfile::load_token(&self.token_file)?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .build()
            .into();
        Ok(Client {
            base: format!("http://{}", self.control),
            token,
            agent,
        })
    }
}

impl Client {
    pub(crate) fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let request = self.agent.get(format!("{}{path}", self.base));
        self.finish(
            "GET",
            path,
            request.header("Authorization", self.bearer()).call(),
        )
    }

    pub(crate) fn post<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T> {
        let request = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Authorization", self.bearer())
            .header("Content-Type", "application/json");
        let body = serde_json::to_string(body).expect("request bodies serialize");
        self.finish("POST", path, request.send(body))
    }

    pub(crate) fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let request = self.agent.delete(format!("{}{path}", self.base));
        self.finish(
            "DELETE",
            path,
            request.header("Authorization", self.bearer()).call(),
        )
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.token.as_str())
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
