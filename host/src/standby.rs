//! Standbys, both roles.
//!
//! A durable workload (`durability = async` or `sync`) has a **standby** on
//! another host: a copy of its state that does not run. The scheduler tells
//! the standby's host which primary it stands by for
//! (`PUT /v1/standbys/{workload}`), then tells the primary's host where its
//! standby is (`PUT /v1/instances/{workload}/standby`). From then on the
//! primary's host streams the workload's checkpoints to it: every interval,
//! the driver's export of its last good state (the whole of it first, then
//! only the pages written since, with globals, tables and host state: kv,
//! timers, inbox, outbox), which the standby checks and applies into an
//! instance that does not run, and acknowledges. Only the recorded primary may send
//! them: its certificate, and the key the scheduler gave both.
//!
//! When the primary's host is declared dead the scheduler promotes the
//! standby (`POST /v1/standbys/{workload}/promote`): the instance already
//! holds the last checkpoint, so it starts serving without a restore, and
//! its `roam_restored` hook is told it came from the primary's host.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post, put};
use roam_proto::reply::error;
use roam_proto::{
    CHECKPOINT_INTERVAL_MS, CheckpointAck, Durability, MAX_LEASE_MS, Promote, StandbyStatus,
    StandbyTarget, StartStandby, paths,
};
use roam_runtime::Snapshot;
use roam_runtime::abi::Place;
use roam_runtime::abi::codec::MoveKind;
use roam_runtime::driver::{CommitRefused, CommitRequest, CommitScope};
use roam_runtime::snapshot::codec::{self, DecodeLimits};
use roam_runtime::{Digest, Instance, Module, Workload};

use crate::access::HostAccess::{Primary, Scheduler};
use crate::access::{Route, SMALL, SPEC, rule};
use crate::daemon::Host;

/// Largest checkpoint accepted (a full one of the largest memory).
pub(crate) const MAX_CHECKPOINT: usize = 1 << 30;

/// After a checkpoint the standby did not take, the next try waits at
/// least this long (it will be a full one).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// A `sync` commit the standby did not take is tried again (in full) after
/// this pause; the answers wait meanwhile.
const COMMIT_RETRY: Duration = Duration::from_millis(100);

/// A standby kept here.
pub(crate) struct Standby {
    start: StartStandby,
    digest: Digest,
    /// Compiled and held, so promotion does not wait for a fetch.
    module: Module,
    /// An instance that never runs while it is a standby: the first full
    /// checkpoint restored into it, every later delta applied (a slot and
    /// the workload's memory held here, as a running copy would).
    state: Option<Instance>,
    /// When it last granted the primary a lease (took a checkpoint or a
    /// lease request).
    granted: Option<Instant>,
    /// Told to promote: it grants nothing more.
    promoting: bool,
}

impl Standby {
    /// Memory it holds against this host's capacity.
    pub(crate) fn memory(&self) -> u64 {
        self.start.instance.memory
    }
}

/// A primary's stream to its standby, as this host reports it.
#[derive(Default)]
pub(crate) struct Link {
    /// The standby's host.
    pub(crate) host: String,
    /// When the standby last held everything the workload had done (it
    /// acknowledged the latest export, or nothing changed since).
    synced_at: Mutex<Option<Instant>>,
    task: Mutex<Option<tokio::task::AbortHandle>>,
    /// How long a grant lasts (zero: no leases).
    lease: Duration,
    /// Until when the primary may serve: the send time of the last
    /// request the standby granted, plus the lease (at first, the link's
    /// creation plus the lease).
    lease_until: Mutex<Option<Instant>>,
    /// Bytes of checkpoints the standby acknowledged on this link.
    bytes: std::sync::atomic::AtomicU64,
    /// A checkpoint at least this often, milliseconds.
    pub(crate) interval_ms: u64,
}

impl Link {
    /// Milliseconds since the standby was last known to hold the whole
    /// state.
    pub(crate) fn age_ms(&self) -> Option<u64> {
        self.synced_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|at| at.elapsed().as_millis().try_into().unwrap_or(u64::MAX))
    }

    fn synced(&self) {
        *self.synced_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    /// The standby granted a request sent at `sent`.
    fn renewed(&self, sent: Instant) {
        let mut until = self.lease_until.lock().unwrap_or_else(|e| e.into_inner());
        let new = sent + self.lease;
        if until.is_none_or(|u| u < new) {
            *until = Some(new);
        }
    }

    /// Whether the primary holds a lease for at least `margin` more.
    pub(crate) fn leased(&self, margin: Duration) -> bool {
        self.lease.is_zero()
            || self
                .lease_until
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some_and(|u| Instant::now() + margin < u)
    }

    pub(crate) fn stop(&self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }
}

/// The standby routes. The checkpoint route is the primary's; the others
/// the scheduler's.
pub(crate) fn routes() -> Vec<Route> {
    use paths::host as h;
    vec![
        rule("PUT", h::STANDBY, Scheduler, SPEC, put(keep)),
        rule("DELETE", h::STANDBY, Scheduler, SMALL, delete(drop_standby)),
        rule("POST", h::STANDBY_PROMOTE, Scheduler, SMALL, post(promote)),
        rule(
            "POST",
            h::STANDBY_CHECKPOINT,
            Primary,
            MAX_CHECKPOINT,
            post(checkpoint),
        ),
        rule("POST", h::STANDBY_LEASE, Primary, SMALL, post(lease)),
        rule("PUT", h::INSTANCE_STANDBY, Scheduler, SMALL, put(stream_to)),
        rule(
            "DELETE",
            h::INSTANCE_STANDBY,
            Scheduler,
            SMALL,
            delete(stop_stream),
        ),
    ]
}

/// Refuse a checkpoint from anyone but the recorded primary: over TLS its
/// certificate, and always the standby's key.
pub(crate) async fn require_primary(
    State(host): State<Arc<Host>>,
    Path(workload): Path<String>,
    peer: roam_tls::Peer,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let expected = {
        let standbys = host.standbys.lock().await;
        standbys
            .get(&workload)
            .map(|s| (s.start.primary.clone(), s.start.key.clone()))
    };
    let Some((primary, key)) = expected else {
        return error(
            StatusCode::UNAUTHORIZED,
            format!("no standby of `{workload}` here; only its primary may call this"),
        );
    };
    if host.tls.is_some() && peer.host() != Some(primary.as_str()) {
        return error(
            if peer.host().is_some() {
                StatusCode::FORBIDDEN
            } else {
                StatusCode::UNAUTHORIZED
            },
            format!("the standby of `{workload}` takes checkpoints from host `{primary}` only"),
        );
    }
    if !roam_proto::reply::presents(request.headers(), &key) {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong standby key");
    }
    next.run(request).await
}

/// `PUT /v1/standbys/{workload}`: keep a standby (its module fetched and
/// compiled now). The same standby again changes nothing; another primary,
/// generation or module starts it over, empty.
async fn keep(
    State(host): State<Arc<Host>>,
    Path(workload): Path<String>,
    Json(start): Json<StartStandby>,
) -> Response {
    let Some(digest) = Digest::parse(&start.instance.digest) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("`{}` is not a sha256 digest", start.instance.digest),
        );
    };
    if roam_proto::names::host(&start.primary).is_err() || start.key.len() < 16 {
        return error(
            StatusCode::BAD_REQUEST,
            "a standby needs its primary's host name and a key",
        );
    }
    if start.lease_ms > MAX_LEASE_MS {
        return lease_too_long(start.lease_ms);
    }
    if start.primary == host.config.name {
        return error(
            StatusCode::CONFLICT,
            "a standby is never on its primary's host",
        );
    }
    {
        let workloads = host.workloads.lock().await;
        if workloads.contains_key(&workload) {
            return error(
                StatusCode::CONFLICT,
                format!("`{workload}` runs here; its standby must be elsewhere"),
            );
        }
        let standbys = host.standbys.lock().await;
        if standbys.get(&workload).is_some_and(|s| s.start == start) {
            return StatusCode::OK.into_response();
        }
        if let Err(full) = host.room_for(&workloads, &standbys, &workload, start.instance.memory) {
            return full.into_response();
        }
    }
    let module = match host.module(&digest).await {
        Ok(m) => m,
        Err(e) => return e.reply(),
    };
    tracing::info!(%workload, primary = %start.primary, generation = start.instance.generation, "keeping a standby");
    host.standbys.lock().await.insert(
        workload,
        Standby {
            start,
            digest,
            module,
            state: None,
            granted: None,
            promoting: false,
        },
    );
    StatusCode::CREATED.into_response()
}

async fn drop_standby(State(host): State<Arc<Host>>, Path(workload): Path<String>) -> Response {
    match host.standbys.lock().await.remove(&workload) {
        Some(_) => StatusCode::OK.into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no standby of `{workload}` on this host"),
        ),
    }
}

/// `POST /v1/standbys/{workload}/checkpoint`: the primary's checkpoint,
/// checked (module, memory bound, lineage and base) and applied; a delta
/// that does not follow what the standby holds is refused (409) and
/// changes nothing, and the primary sends a full one next.
/// Checkpoints up to this size are encoded and decoded on the task that
/// has them (a few microseconds; a `sync` workload sends one per group, and
/// a hand-off to the blocking pool would cost more than the work); larger
/// ones on the blocking pool, off the runtime's threads.
const INLINE_CODEC: usize = 256 << 10;

async fn checkpoint(
    State(host): State<Arc<Host>>,
    Path(workload): Path<String>,
    body: Bytes,
) -> Response {
    let (digest, memory) = {
        let standbys = host.standbys.lock().await;
        match standbys.get(&workload) {
            Some(s) => (s.digest, s.start.instance.memory),
            None => {
                return error(
                    StatusCode::NOT_FOUND,
                    format!("no standby of `{workload}` on this host"),
                );
            }
        }
    };
    let limits = DecodeLimits {
        max_memory_bytes: memory,
        ..Default::default()
    };
    let decoded = if body.len() <= INLINE_CODEC {
        Ok(codec::decode(&body, Some(&digest), &limits))
    } else {
        tokio::task::spawn_blocking(move || codec::decode(&body, Some(&digest), &limits)).await
    };
    let decoded = match decoded {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let mut standbys = host.standbys.lock().await;
    let Some(standby) = standbys.get_mut(&workload) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no standby of `{workload}` on this host"),
        );
    };
    if standby.promoting {
        return promoting(&workload);
    }
    if decoded.is_full() {
        // A fresh instance, not booted: the full checkpoint is its state.
        standby.state = None;
        let config = host.instance_config(&workload, &standby.start.instance);
        match host
            .runtime
            .restore(&standby.module, config, &decoded)
            .await
        {
            Ok(instance) => standby.state = Some(instance),
            Err(e) => return error(StatusCode::CONFLICT, e.to_string()),
        }
    } else {
        let Some(instance) = &mut standby.state else {
            return error(
                StatusCode::CONFLICT,
                "the standby holds no checkpoint yet; send a full one",
            );
        };
        // Checked against the instance's lineage and sequence first; a
        // delta that fails part-way poisons it, so it is dropped and the
        // primary sends a full one.
        if let Err(e) = instance.apply(&decoded) {
            if instance.is_poisoned() {
                standby.state = None;
            }
            return error(StatusCode::CONFLICT, e.to_string());
        }
    }
    match &standby.state {
        Some(instance) => {
            standby.granted = Some(Instant::now());
            Json(CheckpointAck {
                sequence: instance.sequence(),
            })
            .into_response()
        }
        None => error(StatusCode::INTERNAL_SERVER_ERROR, "no checkpoint"),
    }
}

/// A lease this long would overflow the clock arithmetic (and promote
/// never): refused.
fn lease_too_long(ms: u64) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        format!("a lease of {ms} ms; at most {MAX_LEASE_MS} ms"),
    )
}

fn promoting(workload: &str) -> Response {
    error(
        StatusCode::CONFLICT,
        format!("the standby of `{workload}` is being promoted; it grants nothing more"),
    )
}

/// `POST /v1/standbys/{workload}/lease`: a lease for a primary with no
/// checkpoint to send; refused once the standby is told to promote.
async fn lease(State(host): State<Arc<Host>>, Path(workload): Path<String>) -> Response {
    let mut standbys = host.standbys.lock().await;
    match standbys.get_mut(&workload) {
        None => error(
            StatusCode::NOT_FOUND,
            format!("no standby of `{workload}` on this host"),
        ),
        Some(s) if s.promoting => promoting(&workload),
        Some(s) => {
            s.granted = Some(Instant::now());
            StatusCode::NO_CONTENT.into_response()
        }
    }
}

/// `POST /v1/standbys/{workload}/promote`: serve from the last checkpoint
/// at the given generation. The instance holds that state already (every
/// checkpoint was applied into it as it came), so promotion restores
/// nothing: it checks the ABI version, calls the `roam_restored` hook and
/// starts the driver. Refused (and the standby kept) when it holds
/// no checkpoint or the generation is below the one it stood by for.
async fn promote(
    State(host): State<Arc<Host>>,
    Path(workload): Path<String>,
    Json(promote): Json<Promote>,
) -> Response {
    let wait = {
        let mut standbys = host.standbys.lock().await;
        match standbys.get_mut(&workload) {
            Some(s) if s.state.is_some() && promote.generation >= s.start.instance.generation => {
                s.promoting = true;
                let lease = Duration::from_millis(s.start.lease_ms);
                s.granted
                    .map(|at| (at + lease).saturating_duration_since(Instant::now()))
                    .unwrap_or_default()
            }
            _ => Duration::ZERO,
        }
    };
    // The primary may serve until the last lease granted runs out (on its
    // clock from before the grant): only then may this copy answer.
    if !wait.is_zero() {
        tracing::info!(%workload, wait_ms = wait.as_millis(), "waiting for the primary's last lease to run out");
        tokio::time::sleep(wait).await;
    }
    let taken = {
        let mut standbys = host.standbys.lock().await;
        match standbys.get(&workload) {
            None => {
                return error(
                    StatusCode::NOT_FOUND,
                    format!("no standby of `{workload}` on this host"),
                );
            }
            Some(s) if s.state.is_none() => {
                return error(
                    StatusCode::CONFLICT,
                    format!("the standby of `{workload}` has no checkpoint yet"),
                );
            }
            Some(s) if promote.generation < s.start.instance.generation => {
                return error(
                    StatusCode::CONFLICT,
                    format!(
                        "promotion at generation {} is below the primary's {}",
                        promote.generation, s.start.instance.generation
                    ),
                );
            }
            Some(_) => standbys.remove(&workload),
        }
    };
    let Some(Standby {
        start,
        module,
        state: Some(state),
        ..
    }) = taken
    else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "standby vanished");
    };
    let began = Instant::now();
    let mut spec = start.instance;
    spec.generation = promote.generation;
    let config = host.instance_config(&workload, &spec);
    let from = Place {
        host: start.primary.clone(),
        site: start.primary_site.clone(),
    };
    let sequence = state.sequence();
    let mut state = state;
    // The checkpoint may be older than messages the primary sent (async):
    // new messages take a new stream, never an id those had; and older
    // than log records it wrote: new records take a new timeline, so a
    // reader's cursor never skips them as numbers it saw.
    state.abi_mut().new_stream();
    state.abi_mut().new_log_timeline();
    let mut instance = match Workload::resume(state, Some((&from, MoveKind::FailedOver))).await {
        Ok(w) => w,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
    };
    instance.instance_mut().set_generation(spec.generation);
    host.run_workload(module, config, instance, spec, false)
        .await;
    tracing::info!(
        %workload,
        primary = %start.primary,
        generation = promote.generation,
        sequence,
        took_ms = began.elapsed().as_secs_f64() * 1e3,
        "standby promoted"
    );
    StatusCode::CREATED.into_response()
}

/// `PUT /v1/instances/{workload}/standby`: stream the workload's
/// checkpoints to this standby (replacing any earlier one).
async fn stream_to(
    State(host): State<Arc<Host>>,
    Path(workload): Path<String>,
    Json(target): Json<StandbyTarget>,
) -> Response {
    if roam_proto::names::host(&target.host).is_err() || target.host == host.config.name {
        return error(StatusCode::BAD_REQUEST, "a standby on another, named host");
    }
    if target.lease_ms > MAX_LEASE_MS {
        return lease_too_long(target.lease_ms);
    }
    if !CHECKPOINT_INTERVAL_MS.contains(&target.interval_ms) {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "the checkpoint interval must be {} to {} ms",
                CHECKPOINT_INTERVAL_MS.start(),
                CHECKPOINT_INTERVAL_MS.end()
            ),
        );
    }
    let base = match host.peer_base(&target.host, &target.url) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let urls = match (
        paths::standby_checkpoint(&workload),
        paths::standby_lease(&workload),
    ) {
        (Ok(c), Ok(l)) => (c.on(&base), l.on(&base)),
        (Err(e), _) | (_, Err(e)) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let Some((handle, durability)) = host.durable_handle(&workload).await else {
        return crate::control::not_here(&workload);
    };
    let link = {
        let mut links = host.links.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = links.get(&workload) {
            if old.host == target.host && old.task.lock().is_ok_and(|t| t.is_some()) {
                return StatusCode::OK.into_response();
            }
            // A `sync` workload's held answers are released when the old
            // link goes: the scheduler gave it up.
            old.stop();
        }
        let lease = Duration::from_millis(target.lease_ms);
        let link = Arc::new(Link {
            host: target.host.clone(),
            lease,
            lease_until: Mutex::new(Some(Instant::now() + lease)),
            interval_ms: target.interval_ms,
            ..Link::default()
        });
        links.insert(workload.clone(), link.clone());
        link
    };
    let scope = commit_scope(durability);
    let (committer, requests) = {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        (Some(tx), Some(rx))
    };
    let task = tokio::spawn(stream(
        host.clone(),
        workload.clone(),
        urls,
        target,
        link.clone(),
        requests,
    ));
    handle.commit_to(committer, scope).await;
    *link.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task.abort_handle());
    StatusCode::CREATED.into_response()
}

/// Send one checkpoint to the standby; the error says why it did not take
/// it.
async fn send_checkpoint(
    host: &Host,
    link: &Link,
    url: &str,
    key: &str,
    snapshot: Snapshot,
) -> Result<(), String> {
    let pages: usize = snapshot.memories.iter().map(|m| m.pages.len()).sum();
    let bytes = if pages * 4096 <= INLINE_CODEC {
        codec::encode(&snapshot)
    } else {
        tokio::task::spawn_blocking(move || codec::encode(&snapshot))
            .await
            .map_err(|e| e.to_string())?
    };
    let len = bytes.len() as u64;
    let r = host
        .http
        .post(url)
        .bearer_auth(key)
        .body(bytes)
        .send()
        .await
        .map_err(|e| {
            host.metrics.checkpoint(None);
            e.to_string()
        })?;
    if r.status().is_success() {
        link.bytes
            .fetch_add(len, std::sync::atomic::Ordering::Relaxed);
        host.metrics.checkpoint(Some(len));
        return Ok(());
    }
    host.metrics.checkpoint(None);
    let status = r.status();
    Err(format!(
        "{status}: {}",
        roam_tls::answer::error_text(r).await
    ))
}

/// What output commit holds: `sync` its answers, acknowledgements and
/// sent messages; `async` only the acknowledgements of messages it
/// received, so a sender forgets a message only once the standby has it.
impl Host {
    /// The handle of `workload`'s copy here and its durability, if it runs
    /// here.
    async fn durable_handle(
        &self,
        workload: &str,
    ) -> Option<(roam_runtime::driver::WorkloadHandle, Durability)> {
        self.workloads
            .lock()
            .await
            .get(workload)
            .map(|r| (r.handle.clone(), r.durability))
    }
}

fn commit_scope(durability: Durability) -> CommitScope {
    if durability == Durability::Sync {
        CommitScope::All
    } else {
        CommitScope::Messages
    }
}

/// `DELETE /v1/instances/{workload}/standby`: the scheduler's grant to
/// serve unprotected (it dropped the standby, or has none to give): the
/// stream stops, and what output commit holds goes out.
async fn stop_stream(State(host): State<Arc<Host>>, Path(workload): Path<String>) -> Response {
    let link = host
        .links
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&workload);
    if let Some(link) = &link {
        link.stop();
    }
    match (host.durable_handle(&workload).await, link) {
        (Some((handle, durability)), _) => {
            handle.commit_to(None, commit_scope(durability)).await;
            StatusCode::OK.into_response()
        }
        (None, Some(_)) => StatusCode::OK.into_response(),
        (None, None) => StatusCode::NOT_FOUND.into_response(),
    }
}

/// The primary's side. Every interval, export what changed and send it;
/// after a refusal or a failure, a full checkpoint next. For a `sync`
/// workload it also carries the driver's output commits (`requests`),
/// serving them even while it waits for an export (the driver commits
/// before it exports): each is sent and acknowledged once the standby took
/// it, or refused after a short pause so the driver sends a full one,
/// its answers held meanwhile. Ends when the workload no longer runs here.
async fn stream(
    host: Arc<Host>,
    workload: String,
    (url, lease_url): (String, String),
    target: StandbyTarget,
    link: Arc<Link>,
    mut requests: Option<tokio::sync::mpsc::Receiver<CommitRequest>>,
) {
    // Often enough to renew the lease well before it runs out.
    let mut every = Duration::from_millis(target.interval_ms);
    if target.lease_ms > 0 {
        every = every.min(Duration::from_millis(target.lease_ms) / 4);
    }
    let mut full = true;
    let mut failing = false;
    // Serve commit requests until `until` is ready.
    macro_rules! serving {
        ($until:expr) => {{
            let until = $until;
            tokio::pin!(until);
            loop {
                tokio::select! {
                    out = &mut until => break out,
                    request = next(&mut requests) => match request {
                        Some((snapshot, ack)) => {
                            let sent = Instant::now();
                            match send_checkpoint(&host, &link, &url, &target.key, snapshot).await {
                                Ok(()) => {
                                    link.renewed(sent);
                                    link.synced();
                                    let _ = ack.send(Ok(()));
                                }
                                Err(e) => {
                                    tracing::warn!(%workload, standby = %target.host, error = %e, "the standby did not take a commit; its answers wait");
                                    tokio::time::sleep(COMMIT_RETRY).await;
                                    let _ = ack.send(Err(CommitRefused));
                                }
                            }
                        }
                        None => requests = None,
                    },
                }
            }
        }};
    }
    loop {
        serving!(tokio::time::sleep(if failing {
            every.max(RETRY_AFTER_FAILURE)
        } else {
            every
        }));
        let running = host
            .workloads
            .lock()
            .await
            .get(&workload)
            .map(|r| r.handle.clone());
        let Some(handle) = running else {
            tracing::info!(%workload, "the workload left this host; its checkpoint stream ends");
            break;
        };
        let export = match serving!(handle.export(full)) {
            Ok(Some(s)) => s,
            Ok(None) => {
                // Nothing to send: ask for the lease alone.
                let sent = Instant::now();
                let granted = serving!(host.http.post(&lease_url).bearer_auth(&target.key).send());
                match granted {
                    Ok(r) if r.status().is_success() => {
                        link.renewed(sent);
                        if !full && !failing {
                            link.synced();
                        }
                    }
                    Ok(r) => {
                        tracing::warn!(%workload, standby = %target.host, status = %r.status(), "the standby refused a lease");
                        failing = true;
                    }
                    Err(e) => {
                        tracing::warn!(%workload, standby = %target.host, error = %e, "no lease from the standby");
                        failing = true;
                    }
                }
                continue;
            }
            Err(e) => {
                tracing::debug!(%workload, error = %e, "no checkpoint this interval");
                continue;
            }
        };
        let was_full = export.is_full();
        let sent = Instant::now();
        match serving!(send_checkpoint(&host, &link, &url, &target.key, export)) {
            Ok(()) => {
                full = false;
                failing = false;
                link.renewed(sent);
                link.synced();
            }
            Err(e) => {
                tracing::warn!(%workload, standby = %target.host, error = %e, was_full, "checkpoint not taken; sending a full one next");
                full = true;
                failing = true;
            }
        }
    }
    host.links
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|w, l| !(w == &workload && Arc::ptr_eq(l, &link)));
}

/// The next commit request, or never without a driver that commits.
async fn next(
    requests: &mut Option<tokio::sync::mpsc::Receiver<CommitRequest>>,
) -> Option<CommitRequest> {
    match requests {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// A host without room for one more instance or standby.
pub(crate) struct FullHost(String);

impl IntoResponse for FullHost {
    fn into_response(self) -> Response {
        error(StatusCode::SERVICE_UNAVAILABLE, self.0)
    }
}

/// How long a request to a workload whose lease ran out waits for it to
/// come back (or for the scheduler to say it serves unprotected) before
/// it is refused.
const LEASE_HOLD: Duration = Duration::from_secs(5);

impl Host {
    /// Whether the copy of `workload` here may take a request: it has no
    /// standby, or holds a lease from it for a fifth of a lease more (time
    /// for the request to run). A request waits up to [`LEASE_HOLD`] for
    /// one.
    pub(crate) async fn may_serve(&self, workload: &str) -> bool {
        let deadline = Instant::now() + LEASE_HOLD;
        loop {
            let leased = self
                .links
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(workload)
                .is_none_or(|l| l.leased(l.lease / 5));
            if leased {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Whether the copy of `workload` here still holds its lease (or has
    /// no standby): an answer is given only then.
    pub(crate) fn still_leased(&self, workload: &str) -> bool {
        self.links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(workload)
            .is_none_or(|l| l.leased(Duration::ZERO))
    }

    /// The standbys kept here, as reported to the scheduler.
    pub(crate) async fn standby_statuses(&self) -> Vec<StandbyStatus> {
        self.standbys
            .lock()
            .await
            .iter()
            .map(|(workload, s)| StandbyStatus {
                workload: workload.clone(),
                primary: s.start.primary.clone(),
                generation: s.start.instance.generation,
                memory: s.start.instance.memory,
                sequence: s.state.as_ref().map_or(0, Instance::sequence),
            })
            .collect()
    }

    /// The standby and checkpoint age of a workload running here.
    pub(crate) fn link_of(&self, workload: &str) -> (Option<String>, Option<u64>, u64) {
        let links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        match links.get(workload) {
            Some(l) => (
                Some(l.host.clone()),
                l.age_ms(),
                l.bytes.load(std::sync::atomic::Ordering::Relaxed),
            ),
            None => (None, None, 0),
        }
    }

    /// Whether `memory` more bytes and one more slot fit, counting
    /// running workloads and standbys other than `workload`'s; else the
    /// refusal (503).
    pub(crate) fn room_for(
        &self,
        workloads: &HashMap<String, crate::daemon::Running>,
        standbys: &HashMap<String, Standby>,
        workload: &str,
        memory: u64,
    ) -> Result<(), FullHost> {
        let (used, count) = workloads
            .iter()
            .filter(|(name, _)| *name != workload)
            .map(|(_, r)| r.status.memory)
            .chain(
                standbys
                    .iter()
                    .filter(|(name, _)| *name != workload)
                    .map(|(_, s)| s.start.instance.memory),
            )
            .fold((0u64, 0u32), |(m, n), mem| (m.saturating_add(mem), n + 1));
        let (capacity, slots) = (self.config.capacity_memory, self.config.slots);
        if count >= slots || used.saturating_add(memory) > capacity {
            return Err(FullHost(format!(
                "host `{}` is full: {count} of {slots} slots and {used} of {capacity} bytes in use, `{workload}` needs {memory} bytes",
                self.config.name
            )));
        }
        Ok(())
    }
}
