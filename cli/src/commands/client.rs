//! The operator's API client: address, token and CA from `ROAM_ADDR` /
//! `ROAM_TOKEN` / `ROAM_CA`, else from the chosen context of the client
//! config (`config.rs`).
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

impl ClientConfig {
    /// From the environment, else the chosen context of the config file.
    pub fn load() -> anyhow::Result<ClientConfig> {
        let contexts = super::config::ConfigFile::load()?;
        let file = contexts.chosen()?.map(|(_, c)| c);
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
                "no scheduler configured: set ROAM_ADDR and ROAM_TOKEN, add a context (roam config set-context), or start a local cluster with `roam up`"
            ),
        }
    }
}

/// The most of a scheduler's JSON answer read: a logs page merges up to a
/// page from each replica's host, every other answer is far smaller.
const MAX_ANSWER: usize = 256 << 20;

/// How long the CLI waits for a replica to lead when none does.
const LEADERLESS_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

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

    /// A request to `path` without this client's token: for the ingress,
    /// where the operator's token would reach the workload.
    pub fn request_anonymous(
        &self,
        method: reqwest::Method,
        path: &ApiPath,
    ) -> reqwest::RequestBuilder {
        self.http.request(method, path.on(self.addr()))
    }

    /// Send `rb` to the replica that leads (found by [`Client::leader`]).
    /// While none does (one just died, and the others wait for its lease
    /// to end), or the one found stopped answering before the request
    /// went out, it is sent again to the next leader found, for a while:
    /// a `421` or a refused connection means nothing was done. A request
    /// that cannot be sent again (a streamed body) goes once.
    pub async fn dispatch(&self, rb: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        self.dispatch_as(rb, false).await
    }

    /// [`Client::dispatch`]; with `idempotent`, also sent again when the
    /// connection was lost after the request went out (the leader died
    /// while answering): doing it twice does what doing it once does.
    async fn dispatch_as(
        &self,
        rb: reqwest::RequestBuilder,
        idempotent: bool,
    ) -> anyhow::Result<reqwest::Response> {
        let mut request = rb.build()?;
        let mut wait_until = std::time::Instant::now() + LEADERLESS_WAIT;
        loop {
            if let Some(base) = self.leader().await {
                rebase(request.url_mut(), &base)?;
            }
            let again = request.try_clone();
            let tried = request.url().clone();
            let sent = self.http.execute(request).await;
            let nothing_done = match &sent {
                Err(e) if idempotent && !e.is_connect() && !e.is_builder() => {
                    // It may have run for long: wait for a leader afresh.
                    wait_until = std::time::Instant::now() + LEADERLESS_WAIT;
                    true
                }
                Err(e) => e.is_connect(),
                Ok(r) => {
                    r.status() == reqwest::StatusCode::MISDIRECTED_REQUEST
                        // A follower lost the leader while forwarding: a
                        // call that may be repeated is sent again.
                        || (idempotent && r.status() == reqwest::StatusCode::BAD_GATEWAY)
                }
            };
            match again {
                Some(again) if nothing_done && std::time::Instant::now() < wait_until => {
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                    request = again;
                }
                _ => {
                    return sent.with_context(|| format!("cannot reach the scheduler at {tried}"));
                }
            }
        }
    }

    /// The replica that leads, from the current one on: each is asked
    /// `POST /v1/hosts/join` without a token or a body, which a follower
    /// answers `421` naming the leader (it sends hosts there, where it
    /// would forward an operator call) and the leader `401`. A replica that does not
    /// answer within a short while (dead, paused, cut off) is passed over.
    /// `None`: none leads or answers now.
    async fn leader(&self) -> Option<String> {
        let n = self.addrs.len();
        let start = self.current.load(std::sync::atomic::Ordering::Relaxed);
        for k in 0..n {
            let i = (start + k) % n;
            let probe = self
                .http
                .post(roam_proto::paths::join().on(&self.addrs[i]))
                .timeout(PROBE_TIMEOUT)
                .send()
                .await;
            let Ok(answer) = probe else { continue };
            if answer.status() != reqwest::StatusCode::MISDIRECTED_REQUEST {
                self.current.store(i, std::sync::atomic::Ordering::Relaxed);
                return Some(self.addrs[i].clone());
            }
            let named = answer
                .headers()
                .get(roam_proto::headers::LEADER)
                .and_then(|v| v.to_str().ok())
                .map(|l| l.trim_end_matches('/').to_string());
            match named {
                // One of ours: asked next (it may have just died).
                Some(l) if self.addrs.contains(&l) && l != self.addrs[i] => {
                    let j = self.addrs.iter().position(|a| *a == l).unwrap_or(i);
                    self.current.store(j, std::sync::atomic::Ordering::Relaxed);
                    let confirmed = self
                        .http
                        .post(roam_proto::paths::join().on(&l))
                        .timeout(PROBE_TIMEOUT)
                        .send()
                        .await
                        .is_ok_and(|a| a.status() != reqwest::StatusCode::MISDIRECTED_REQUEST);
                    if confirmed {
                        return Some(l);
                    }
                }
                // A leader this client was not given: trusted as the
                // follower named it (the cluster CA vouches for both).
                Some(l) if !self.addrs.contains(&l) => return Some(l),
                _ => {}
            }
        }
        None
    }

    /// Send and decode JSON, turning an error status into its message.
    pub async fn json<T: DeserializeOwned>(
        &self,
        rb: reqwest::RequestBuilder,
    ) -> anyhow::Result<T> {
        let r = self.send(rb).await?;
        roam_tls::answer::json(r, MAX_ANSWER)
            .await
            .context("bad response from the scheduler")
    }

    /// [`Client::json`] for a request that may be sent twice
    /// ([`Client::dispatch_as`]).
    pub async fn json_idempotent<T: DeserializeOwned>(
        &self,
        rb: reqwest::RequestBuilder,
    ) -> anyhow::Result<T> {
        let r = self.send_as(rb, true).await?;
        roam_tls::answer::json(r, MAX_ANSWER)
            .await
            .context("bad response from the scheduler")
    }

    /// Send, turning an error status into its message.
    pub async fn send(&self, rb: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        self.send_as(rb, false).await
    }

    async fn send_as(
        &self,
        rb: reqwest::RequestBuilder,
        idempotent: bool,
    ) -> anyhow::Result<reqwest::Response> {
        let r = self.dispatch_as(rb, idempotent).await?;
        if r.status().is_success() {
            return Ok(r);
        }
        let status = r.status();
        let text = roam_tls::answer::error_text(r).await;
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
