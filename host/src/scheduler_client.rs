//! Every call this host makes to the scheduler — join, heartbeat, module
//! fetch, message relay — with the join token, through one client.
//!
//! The host knows every scheduler replica (`--join URL[,URL...]`) and
//! talks to one at a time: when it does not answer it tries the next, and
//! when a follower answers `421` it goes to the leader the answer names.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use roam_proto::MAX_JSON_ANSWER;
use roam_proto::{
    Capacity, Heartbeat, JoinRequest, JoinResponse, PROTOCOL_VERSION, RenewCertificate,
    RenewedCertificate, headers, paths,
};
use roam_runtime::Digest;
use roam_runtime::abi::OutboundMessage;
use roam_runtime::driver::Delivery;
use roam_tls::answer;

use crate::daemon::Host;

/// How long one relayed message may take (the scheduler waits up to 10 s
/// for a destination that is on its way, and the receiver may wait for its
/// standby); past it, it is sent again (and dropped as a resend if the
/// first arrived).
const RELAY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a join may take before the host tries another replica.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest module the host downloads.
const MAX_MODULE_DOWNLOAD: usize = 64 << 20;

/// The scheduler's API, as a host calls it.
#[derive(Clone)]
pub(crate) struct SchedulerClient {
    http: reqwest::Client,
    targets: Arc<Targets>,
    token: String,
}

/// The scheduler replicas, and the one calls go to now.
pub(crate) struct Targets {
    /// As configured (what a `421` names the leader by).
    urls: Vec<String>,
    /// What is dialled for each.
    bases: Vec<String>,
    current: AtomicUsize,
}

impl Targets {
    /// `urls[i]` is reached at `bases[i]`; neither is empty.
    pub(crate) fn new(urls: Vec<String>, bases: Vec<String>) -> Targets {
        Targets {
            urls,
            bases,
            current: AtomicUsize::new(0),
        }
    }

    fn pick(&self) -> (usize, &str) {
        let i = self.current.load(Ordering::Acquire) % self.bases.len().max(1);
        (i, self.bases.get(i).map_or("", String::as_str))
    }

    /// Replica `i` did not answer: the next one, unless another call
    /// moved on already.
    fn failed(&self, i: usize) {
        let next = (i + 1) % self.bases.len().max(1);
        let _ = self
            .current
            .compare_exchange(i, next, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Replica `i` does not lead and says `leader` does (if it knows).
    fn redirected(&self, i: usize, leader: Option<&str>) {
        let known = leader.and_then(|l| {
            let l = l.trim_end_matches('/');
            self.urls.iter().position(|u| u.trim_end_matches('/') == l)
        });
        match known {
            Some(j) => self.current.store(j, Ordering::Release),
            None => self.failed(i),
        }
    }

    fn len(&self) -> usize {
        self.bases.len()
    }

    /// The configured URL of the replica calls go to now.
    fn current_url(&self) -> &str {
        let (i, _) = self.pick();
        self.urls.get(i).map_or("", String::as_str)
    }
}

/// How a call to the scheduler went.
pub(crate) enum Answer<T> {
    /// Accepted.
    Ok(T),
    /// Refused for good (4xx): status and body.
    Refused(reqwest::StatusCode, String),
    /// Worth trying again (5xx, unreachable).
    Retry(String),
}

impl SchedulerClient {
    pub(crate) fn new(http: reqwest::Client, targets: Targets, token: &str) -> SchedulerClient {
        SchedulerClient {
            http,
            targets: Arc::new(targets),
            token: token.to_string(),
        }
    }

    /// Send what `build` makes for a replica's base URL to the replica
    /// that leads: past replicas that refuse the connection (nothing was
    /// sent) and followers (`421`, nothing done), at most once around.
    async fn call(
        &self,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> reqwest::Result<reqwest::Response> {
        let mut tries = self.targets.len() + 1;
        loop {
            tries -= 1;
            let (i, base) = self.targets.pick();
            match build(base).send().await {
                Err(e) if e.is_connect() && tries > 0 => self.targets.failed(i),
                Ok(r) if r.status() == reqwest::StatusCode::MISDIRECTED_REQUEST && tries > 0 => {
                    let leader = r
                        .headers()
                        .get(headers::LEADER)
                        .and_then(|v| v.to_str().ok());
                    self.targets.redirected(i, leader);
                }
                Err(e) => {
                    // Timed out or cut: the next call tries another replica.
                    self.targets.failed(i);
                    return Err(e);
                }
                other => return other,
            }
        }
    }

    /// The configured URL of the replica this host talks to now (the one
    /// that answered its last call).
    pub(crate) fn current_url(&self) -> String {
        self.targets.current_url().to_string()
    }

    async fn join(&self, request: &JoinRequest) -> Answer<JoinResponse> {
        let sent = self
            .call(|base| {
                self.http
                    .post(paths::join().on(base))
                    .bearer_auth(&self.token)
                    // A first join's connection carries no client
                    // certificate; the calls after it must present the one
                    // the join brings, so they must not reuse it.
                    .header(reqwest::header::CONNECTION, "close")
                    .timeout(JOIN_TIMEOUT)
                    .json(request)
            })
            .await;
        match sent {
            Ok(r) if r.status().is_success() => match answer::json(r, MAX_JSON_ANSWER).await {
                Ok(joined) => Answer::Ok(joined),
                Err(e) => Answer::Retry(format!("bad join response: {e}")),
            },
            Ok(r) if r.status().is_client_error() => {
                let status = r.status();
                Answer::Refused(status, answer::error_text(r).await)
            }
            Ok(r) => Answer::Retry(format!("the scheduler answered {}", r.status())),
            Err(e) => Answer::Retry(format!("scheduler unreachable: {e}")),
        }
    }

    async fn heartbeat(&self, host: &str, beat: &Heartbeat, period: Duration) -> Answer<()> {
        // A replica that takes longer is given up for the next (a paused
        // leader accepts connections and answers nothing): the host must
        // reach the new leader before it counts this host as dead.
        let timeout = period + Duration::from_secs(1);
        let path = match paths::heartbeat(host) {
            Ok(p) => p,
            Err(e) => return Answer::Refused(reqwest::StatusCode::BAD_REQUEST, e.to_string()),
        };
        match self
            .call(|base| {
                self.http
                    .post(path.on(base))
                    .bearer_auth(&self.token)
                    .timeout(timeout)
                    .json(beat)
            })
            .await
        {
            Ok(r) if r.status().is_success() => Answer::Ok(()),
            Ok(r) if r.status().is_client_error() => Answer::Refused(r.status(), String::new()),
            Ok(r) => Answer::Retry(format!("the scheduler answered {}", r.status())),
            Err(e) => Answer::Retry(e.to_string()),
        }
    }

    /// Ask to be drained before stopping: the scheduler cordons this host
    /// and moves its workloads off live; the answer comes when it is done.
    pub(crate) async fn leave(
        &self,
        host: &str,
        timeout: Duration,
    ) -> anyhow::Result<Vec<roam_proto::DrainOutcome>> {
        let path = paths::host_drain(host)?;
        let r = self
            .call(|base| {
                self.http
                    .post(path.on(base))
                    .bearer_auth(&self.token)
                    .timeout(timeout)
            })
            .await?;
        json_answer(r).await
    }

    /// Renew this host's certificate (presenting the current one).
    pub(crate) async fn renew(
        &self,
        host: &str,
        request: &RenewCertificate,
    ) -> anyhow::Result<RenewedCertificate> {
        let path = paths::host_certificate(host)?;
        let r = self
            .call(|base| self.http.post(path.on(base)).json(request))
            .await?;
        json_answer(r).await
    }

    /// The module with `digest`, its size bounded and its sha256 checked.
    pub(crate) async fn fetch_module(&self, digest: &Digest) -> anyhow::Result<Vec<u8>> {
        let path = paths::module(&digest.to_string())?;
        let r = self
            .call(|base| self.http.get(path.on(base)).bearer_auth(&self.token))
            .await?;
        anyhow::ensure!(
            r.status().is_success(),
            "scheduler answered {} for module {digest}",
            r.status()
        );
        let bytes = answer::bytes(r, MAX_MODULE_DOWNLOAD)
            .await
            .with_context(|| format!("module {digest}"))?;
        let actual = Digest::of(&bytes);
        anyhow::ensure!(
            actual == *digest,
            "module bytes hash to {actual}, not {digest}: refused"
        );
        Ok(bytes.to_vec())
    }

    /// Hand a message to the scheduler, which forwards it to a host that
    /// runs `message.to` and answers once that host took it. `to` is the
    /// guest's choice: it only ever becomes one encoded path segment.
    async fn relay(&self, from: &str, message: OutboundMessage) -> Delivery {
        let path = match paths::message(&message.to) {
            Ok(p) => p,
            // No workload can have that name.
            Err(e) => return Delivery::Unknown(e.to_string()),
        };
        let body = axum::body::Bytes::from(message.body);
        let query = roam_proto::FromQuery {
            from: from.into(),
            stream: message.id.stream,
            seq: message.id.seq,
        };
        match self
            .call(|base| {
                self.http
                    .post(path.on(base))
                    .query(&query)
                    .bearer_auth(&self.token)
                    .timeout(RELAY_TIMEOUT)
                    .body(body.clone())
            })
            .await
        {
            Ok(r) if r.status().is_success() => Delivery::Delivered,
            Ok(r) if r.headers().contains_key(headers::UNKNOWN_WORKLOAD) => {
                Delivery::Unknown(answer::error_text(r).await)
            }
            Ok(r) => Delivery::Retry(format!("refused by the scheduler: {}", r.status())),
            Err(e) => Delivery::Retry(format!("not delivered: {e}")),
        }
    }
}

impl Host {
    fn capacity(&self) -> Capacity {
        Capacity {
            memory: self.config.capacity_memory,
            slots: self.config.slots,
        }
    }

    /// Join (or rejoin); returns the heartbeat period.
    pub(crate) async fn join(&self) -> anyhow::Result<Duration> {
        let (_, instances) = self.statuses().await;
        let mut pending = match &self.tls {
            Some(tls) => Some(tls.request()?),
            None => None,
        };
        let request = JoinRequest {
            csr: pending.as_ref().map(|p| p.csr.clone()).unwrap_or_default(),
            protocol: PROTOCOL_VERSION,
            instances,
            name: self.config.name.clone(),
            url: self.url.clone(),
            labels: self.config.labels.clone(),
            capacity: self.capacity(),
            arch: std::env::consts::ARCH.to_string(),
            engine: self.runtime.engine_key(),
            engine_kind: self.runtime.config().engine.name().to_string(),
        };
        let mut delay = Duration::from_millis(100);
        loop {
            match self.scheduler.join(&request).await {
                Answer::Ok(joined) => {
                    if let (Some(tls), Some(pending)) = (&self.tls, pending.take()) {
                        tls.install(pending, &joined.certificate)?;
                        tls.set_revoked(&joined.revoked)?;
                    }
                    *self.secret.lock().unwrap_or_else(|e| e.into_inner()) = joined.host_secret;
                    *self.scrape.lock().unwrap_or_else(|e| e.into_inner()) =
                        joined.scrape.unwrap_or_default();
                    self.term
                        .fetch_max(joined.term, std::sync::atomic::Ordering::AcqRel);
                    *self.labels.lock().unwrap_or_else(|e| e.into_inner()) = joined.labels;
                    let channel = match &joined.liveness {
                        Some(grant) => {
                            let url = self.scheduler.current_url();
                            match crate::liveness::Channel::open(&url, grant).await {
                                Ok(c) => Some(Arc::new(c)),
                                Err(e) => {
                                    tracing::warn!(error = %e, "no liveness channel: heartbeats go over HTTP");
                                    None
                                }
                            }
                        }
                        None => None,
                    };
                    *self.liveness.lock().unwrap_or_else(|e| e.into_inner()) = channel;
                    return Ok(Duration::from_millis(joined.heartbeat_ms.max(50)));
                }
                Answer::Refused(status, body) => anyhow::bail!(
                    "the scheduler refused to let host `{}` join ({status}): {body}",
                    self.config.name
                ),
                Answer::Retry(why) => tracing::warn!(%why, "join failed; retrying"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// Heartbeat every `period`; rejoin when the scheduler forgot this host
    /// (it restarted). A report that did not change goes as a liveness
    /// datagram (`liveness.rs`) while the scheduler answers those.
    pub(crate) async fn heartbeats(self: Arc<Self>, mut period: Duration) {
        let mut last_report: Option<(Heartbeat, std::time::Instant)> = None;
        loop {
            tokio::time::sleep(period).await;
            if self.tls.as_ref().is_some_and(|t| t.revoked()) {
                tracing::error!("this host's certificate is revoked; no more heartbeats");
                return;
            }
            let (memory_used, instances) = self.statuses().await;
            let beat = Heartbeat {
                capacity: self.capacity(),
                arch: std::env::consts::ARCH.to_string(),
                engine: self.runtime.engine_key(),
                memory_used,
                instances,
                standbys: self.standby_statuses().await,
            };
            let intervals: std::collections::HashMap<String, u64> = self
                .links
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(w, l)| (w.clone(), l.interval_ms))
                .collect();
            let material = crate::liveness::material(&beat, |w| intervals.get(w).copied());
            let channel = self
                .liveness
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if let Some(channel) = &channel
                && channel.usable()
                && crate::liveness::unchanged(last_report.as_ref(), &material)
            {
                channel.beat().await;
                continue;
            }
            match self
                .scheduler
                .heartbeat(&self.config.name, &beat, period)
                .await
            {
                Answer::Ok(()) => {
                    last_report = Some((material, std::time::Instant::now()));
                    if let Some(channel) = &channel {
                        channel.reported();
                    }
                }
                Answer::Refused(reqwest::StatusCode::NOT_FOUND, _) => {
                    last_report = None;
                    tracing::info!("scheduler does not know this host; rejoining");
                    match self.join().await {
                        Ok(p) => period = p,
                        Err(e) => tracing::error!(error = %e, "rejoin failed"),
                    }
                }
                Answer::Refused(status, _) => tracing::warn!(%status, "heartbeat refused"),
                Answer::Retry(why) => tracing::warn!(%why, "heartbeat failed"),
            }
        }
    }

    /// Where a workload's sent messages go: delivered here when the
    /// destination runs here, else through the scheduler, which forwards
    /// them to a host that runs it.
    pub(crate) fn router(&self) -> roam_runtime::driver::Router {
        let bus = self.bus.clone();
        let local = bus.router();
        let scheduler = Arc::new(self.scheduler.clone());
        let links = self.links.clone();
        Arc::new(move |from: &str, message: OutboundMessage| {
            // A copy whose lease from its standby ran out may be stale (its
            // standby may be serving already): what it sends waits.
            let leased = links
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(from)
                .is_none_or(|l| l.leased(Duration::ZERO));
            if !leased {
                return Box::pin(async {
                    Delivery::Retry("this copy's lease from its standby ran out".into())
                });
            }
            if bus.contains(&message.to) {
                return local(from, message);
            }
            let scheduler = scheduler.clone();
            let from = from.to_string();
            Box::pin(async move { scheduler.relay(&from, message).await })
        })
    }
}

/// The scheduler's JSON answer, or its error status and message.
async fn json_answer<T: serde::de::DeserializeOwned>(r: reqwest::Response) -> anyhow::Result<T> {
    let status = r.status();
    if !status.is_success() {
        anyhow::bail!(
            "the scheduler answered {status}: {}",
            answer::error_text(r).await
        );
    }
    Ok(answer::json(r, MAX_JSON_ANSWER).await?)
}
