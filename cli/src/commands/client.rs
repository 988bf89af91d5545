//! The operator's API client: address, token and CA from `ROAM_ADDR` /
//! `ROAM_TOKEN` / `ROAM_CA`, else from the config `roam up` writes.
//!
//! With a CA (the cluster's `ca.crt`, or the one that issued the
//! operator's `--tls-cert`) the client trusts that CA alone; without one,
//! the system's roots.

use std::path::PathBuf;

use anyhow::{Context, bail};
use roam_proto::paths::ApiPath;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Where the CLI finds the scheduler.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClientConfig {
    /// Scheduler URL.
    pub addr: String,
    /// Admin token.
    pub token: String,
    /// The CA certificate (PEM file) to trust for the scheduler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
}

/// `$XDG_CONFIG_HOME/roam/config.json` or `~/.config/roam/config.json`.
pub fn config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("roam").join("config.json"))
}

impl ClientConfig {
    /// From the environment, else the config file.
    pub fn load() -> anyhow::Result<ClientConfig> {
        let file: Option<ClientConfig> = config_path()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|s| serde_json::from_str(&s).ok());
        let addr = std::env::var("ROAM_ADDR")
            .ok()
            .or_else(|| file.as_ref().map(|f| f.addr.clone()));
        let token = std::env::var("ROAM_TOKEN")
            .ok()
            .or_else(|| file.as_ref().map(|f| f.token.clone()));
        let ca = std::env::var_os("ROAM_CA")
            .map(PathBuf::from)
            .or_else(|| file.as_ref().and_then(|f| f.ca.clone()));
        match (addr, token) {
            (Some(addr), Some(token)) => Ok(ClientConfig {
                addr: addr.trim_end_matches('/').to_string(),
                token,
                ca,
            }),
            _ => bail!(
                "no scheduler configured: set ROAM_ADDR and ROAM_TOKEN, or start a local cluster with `roam up`"
            ),
        }
    }
}

/// A small async client for the scheduler API.
pub struct Client {
    config: ClientConfig,
    http: reqwest::Client,
}

impl Client {
    /// A client for `config`.
    pub fn new(config: ClientConfig) -> anyhow::Result<Client> {
        // Scheduler and hosts close a connection idle for 10 s.
        let mut builder = reqwest::Client::builder().pool_idle_timeout(roam_tls::CLIENT_POOL_IDLE);
        if let Some(ca) = &config.ca {
            let pem = std::fs::read_to_string(ca)
                .with_context(|| format!("cannot read the CA certificate `{}`", ca.display()))?;
            let trust = roam_tls::Trust::from_pem(&pem)?;
            builder = builder.use_preconfigured_tls(trust.client_config(Default::default())?);
        }
        Ok(Client {
            config,
            http: builder.build()?,
        })
    }

    /// The scheduler URL.
    pub fn addr(&self) -> &str {
        &self.config.addr
    }

    /// Send a request to `path`, with the token.
    pub fn request(&self, method: reqwest::Method, path: &ApiPath) -> reqwest::RequestBuilder {
        self.http
            .request(method, path.on(&self.config.addr))
            .bearer_auth(&self.config.token)
    }

    /// Send and decode JSON, turning an error status into its message.
    pub async fn json<T: DeserializeOwned>(
        &self,
        rb: reqwest::RequestBuilder,
    ) -> anyhow::Result<T> {
        let r = self.send(rb).await?;
        r.json().await.context("bad response from the scheduler")
    }

    /// Send, turning an error status into its message.
    pub async fn send(&self, rb: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let r = rb
            .send()
            .await
            .with_context(|| format!("cannot reach the scheduler at {}", self.config.addr))?;
        if r.status().is_success() {
            return Ok(r);
        }
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        let message = serde_json::from_str::<roam_proto::ErrorBody>(&text)
            .map(|e| e.error)
            .unwrap_or(text);
        if status == reqwest::StatusCode::UNAUTHORIZED {
            bail!("{message} (is ROAM_TOKEN right?)");
        }
        bail!("{message}")
    }
}
