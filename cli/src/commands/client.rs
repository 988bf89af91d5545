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
    /// Scheduler URL, or the URLs of every replica, comma-separated (the
    /// client moves to the next when one does not answer, and to the
    /// leader when a follower names it).
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

/// How long a replica may take to answer the CLI's probe.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// A small async client for the scheduler API.
pub struct Client {
    config: ClientConfig,
    /// Every replica's URL.
    addrs: Vec<String>,
    /// The one requests go to first.
    current: std::sync::atomic::AtomicUsize,
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
        let addrs: Vec<String> = config
            .addr
            .split(',')
            .map(|a| a.trim().trim_end_matches('/').to_string())
            .filter(|a| !a.is_empty())
            .collect();
        if addrs.is_empty() {
            bail!("no scheduler address configured");
        }
        Ok(Client {
            config,
            addrs,
            current: Default::default(),
            http: builder.build()?,
        })
    }

    /// The scheduler URL requests go to first.
    pub fn addr(&self) -> &str {
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed);
        &self.addrs[i % self.addrs.len()]
    }

    /// Send a request to `path`, with the token.
    pub fn request(&self, method: reqwest::Method, path: &ApiPath) -> reqwest::RequestBuilder {
        self.http
            .request(method, path.on(self.addr()))
            .bearer_auth(&self.config.token)
    }

    /// Send `rb` to the replica that leads: past replicas that refuse the
    /// connection (nothing was sent) and followers (`421`, nothing done),
    /// once around the list at most. A request that cannot be sent again
    /// (a streamed body) goes once.
    pub async fn dispatch(&self, rb: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let mut request = rb.build()?;
        if let Some(base) = self.responsive().await {
            rebase(request.url_mut(), &base)?;
        }
        let mut tries = self.addrs.len() + 1;
        let mut next = Some(request);
        loop {
            let Some(request) = next.take() else {
                bail!("no scheduler replica could take the request");
            };
            tries -= 1;
            let again = if tries > 0 { request.try_clone() } else { None };
            let tried = request.url().clone();
            let sent = self.http.execute(request).await;
            let moved = match &sent {
                Err(e) if e.is_connect() => Some(None),
                Ok(r) if r.status() == reqwest::StatusCode::MISDIRECTED_REQUEST => Some(
                    r.headers()
                        .get(roam_proto::headers::LEADER)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string),
                ),
                _ => None,
            };
            match (moved, again) {
                (Some(leader), Some(mut request)) => {
                    let base = self.move_on(&tried, leader.as_deref());
                    rebase(request.url_mut(), &base)?;
                    next = Some(request);
                }
                _ => {
                    return sent.with_context(|| format!("cannot reach the scheduler at {tried}"));
                }
            }
        }
    }

    /// With several replicas: the first, from the current one on, that
    /// answers at all within a short while (a paused or cut-off replica
    /// accepts connections and answers nothing, and a request sent there
    /// would wait for ever). `None`: one replica, or none answers (the
    /// request then goes to the current one and fails there).
    async fn responsive(&self) -> Option<String> {
        if self.addrs.len() < 2 {
            return None;
        }
        let start = self.current.load(std::sync::atomic::Ordering::Relaxed);
        for k in 0..self.addrs.len() {
            let i = (start + k) % self.addrs.len();
            let probe = self
                .http
                .get(roam_proto::paths::ca().on(&self.addrs[i]))
                .timeout(PROBE_TIMEOUT)
                .send()
                .await;
            if probe.is_ok() {
                self.current.store(i, std::sync::atomic::Ordering::Relaxed);
                return Some(self.addrs[i].clone());
            }
        }
        None
    }

    /// After `tried` failed: the leader it named if it is one of ours,
    /// else the next replica.
    fn move_on(&self, tried: &reqwest::Url, leader: Option<&str>) -> String {
        let n = self.addrs.len();
        let at = self
            .addrs
            .iter()
            .position(|a| tried.as_str().starts_with(a.as_str()))
            .unwrap_or(0);
        let to = leader
            .and_then(|l| {
                let l = l.trim_end_matches('/');
                self.addrs.iter().position(|a| a == l)
            })
            .unwrap_or((at + 1) % n);
        self.current.store(to, std::sync::atomic::Ordering::Relaxed);
        self.addrs[to].clone()
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
        let r = self.dispatch(rb).await?;
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

/// Point `url` (on one replica) at `base` (another), keeping its path and
/// query.
fn rebase(url: &mut reqwest::Url, base: &str) -> anyhow::Result<()> {
    let base = reqwest::Url::parse(base).with_context(|| format!("bad scheduler URL `{base}`"))?;
    let path = format!("{}{}", base.path().trim_end_matches('/'), url.path());
    let query = url.query().map(str::to_string);
    let mut moved = base;
    moved.set_path(&path);
    moved.set_query(query.as_deref());
    *url = moved;
    Ok(())
}
