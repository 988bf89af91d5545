//! The host agent (`roam host`): joins a scheduler, heartbeats, and runs the
//! workloads the scheduler places on it.
//!
//! Two APIs on one listener:
//! - control, for the scheduler only (`Authorization: Bearer HOST_SECRET`,
//!   the secret handed out at join): `PUT /v1/instances/{workload}` starts a
//!   workload (the module is fetched from the scheduler by digest and its
//!   sha256 checked before use), `DELETE` stops it, `GET .../logs` returns
//!   its recent log records;
//!   `/v1/migrations/{id}/{prepare,send,commit,abort}` drive live
//!   migrations (see `migration.rs`);
//! - migration streams, authenticated by a per-migration key instead:
//!   `/v1/migrations/{id}/rounds/{n}`, `.../messages`, `DELETE .../{id}`;
//! - ingress: `/w/{workload}/{path...}` goes to the workload's `handle`,
//!   refused before dispatch when it carries another generation.
//!
//! The agent rejoins on its own when the scheduler forgets it (restart).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{any, get, put};
use axum::{Json, Router};
use roam_proto::{
    Capacity, Heartbeat, InstanceStatus, JoinRequest, JoinResponse, Labels, StartInstance,
};

use crate::abi::codec::Request;
use crate::abi::{Grants, HostInfo};
use crate::driver::{self, DriverOptions, LocalBus, WorkloadHandle};
use crate::module::Digest;
use crate::{InstanceConfig, Runtime, RuntimeConfig, Workload};

/// Largest snapshot accepted by `PUT .../restore`.
const MAX_SNAPSHOT: usize = 1 << 30;

/// Largest module the agent downloads.
const MAX_MODULE_DOWNLOAD: usize = 64 << 20;

/// How a host agent runs.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Host name (unique in the cluster).
    pub name: String,
    /// Address of the agent's API.
    pub listen: SocketAddr,
    /// URL others reach the API at, if not `http://{listen}`.
    pub advertise: Option<String>,
    /// Scheduler base URL.
    pub join: String,
    /// Join token.
    pub token: String,
    /// Data directory (compiled-code cache).
    pub data_dir: PathBuf,
    /// Memory for workloads, bytes.
    pub capacity_memory: u64,
    /// Instance slots.
    pub slots: u32,
    /// Largest memory of one instance (default: the capacity, at most 4 GiB).
    pub max_instance_memory: Option<u64>,
    /// Bytes of each freed instance slot's written memory kept faulted in
    /// (zeroed in place) rather than given back to the kernel (wasmtime's
    /// `linear_memory_keep_resident`; freed slots are reused first): the
    /// next instance or incoming migration writes into memory faulted in
    /// already.
    pub keep_resident: u64,
    /// Native code or the portable interpreter.
    pub engine: crate::config::EngineKind,
    /// Untrusted labels the host reports (trusted ones come from the token).
    pub labels: Labels,
}

mod migration;

struct Running {
    handle: WorkloadHandle,
    digest: String,
    memory: u64,
    /// Generation (fencing token) this copy runs at.
    generation: u64,
}

struct Agent {
    config: AgentConfig,
    runtime: Runtime,
    bus: LocalBus,
    http: reqwest::Client,
    secret: Mutex<String>,
    labels: Mutex<Labels>,
    workloads: tokio::sync::Mutex<HashMap<String, Running>>,
    url: String,
    migrations: migration::Migrations,
    /// Modules being fetched and compiled, one gate each.
    loading: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
}

/// Memory mappings a full host needs: each slot's fiber stack and its guard
/// (2), each running instance's memory split around its copy-on-write image
/// and guard (4), and the process itself.
fn mappings_needed(slots: u32) -> u64 {
    6 * u64::from(slots) + 4096
}

/// Tell the operator when the kernel's mapping limit would refuse instances
/// before the slots run out (instantiation then fails cleanly, but so may
/// any other allocation of the process).
fn warn_if_mappings_short(slots: u32) {
    let limit = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    if let Some(limit) = limit
        && mappings_needed(slots) > limit
    {
        tracing::warn!(
            slots,
            needed = mappings_needed(slots),
            vm_max_map_count = limit,
            "this many slots needs more memory mappings than the kernel allows; raise it with `sysctl -w vm.max_map_count={}`",
            mappings_needed(slots).next_power_of_two()
        );
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> HttpResponse {
    (
        status,
        Json(roam_proto::ErrorBody {
            error: message.into(),
        }),
    )
        .into_response()
}

/// Run the agent until the process is stopped.
pub async fn run(config: AgentConfig) -> anyhow::Result<()> {
    warn_if_mappings_short(config.slots);
    let runtime = Runtime::new(RuntimeConfig {
        slots: config.slots.max(1) + 2,
        max_instance_memory: config
            .max_instance_memory
            .unwrap_or(config.capacity_memory)
            .clamp(64 << 10, 4 << 30),
        cache_dir: Some(config.data_dir.join("compiled")),
        engine: config.engine,
        keep_resident: usize::try_from(config.keep_resident).unwrap_or(usize::MAX),
        ..RuntimeConfig::default()
    })?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on `{}`", config.listen))?;
    let local = listener.local_addr()?;
    let agent = Arc::new(Agent {
        url: config
            .advertise
            .clone()
            .unwrap_or_else(|| format!("http://{local}")),
        runtime,
        bus: LocalBus::new(),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?,
        secret: Mutex::new(String::new()),
        labels: Mutex::new(Labels::new()),
        workloads: tokio::sync::Mutex::new(HashMap::new()),
        migrations: migration::Migrations::default(),
        loading: Mutex::default(),
        config,
    });
    let heartbeat = agent.join().await?;
    eprintln!(
        "roam host `{}`: serving on {} (joined {}; labels {:?})",
        agent.config.name,
        agent.url,
        agent.config.join,
        agent.labels.lock().unwrap_or_else(|e| e.into_inner())
    );
    tokio::spawn(agent.clone().heartbeats(heartbeat));

    // Control routes are the scheduler's: every one needs the host secret.
    let control = Router::new()
        .route("/v1/instances/{workload}", put(start).delete(stop))
        .route("/v1/instances/{workload}/logs", get(logs))
        .route(
            "/v1/instances/{workload}/snapshot",
            axum::routing::post(snapshot),
        )
        .route("/v1/instances/{workload}/restore", put(restore))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_SNAPSHOT))
        .route("/v1/messages/{workload}", axum::routing::post(message))
        .merge(migration::control_routes())
        .route_layer(axum::middleware::from_fn_with_state(
            agent.clone(),
            require_secret,
        ));
    let app = Router::new()
        .merge(control)
        .merge(migration::stream_routes())
        .route("/w/{workload}", any(ingress))
        .route("/w/{workload}/", any(ingress))
        .route("/w/{workload}/{*path}", any(ingress))
        .with_state(agent);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("host API server failed")
}

impl Agent {
    async fn statuses(&self) -> (u64, Vec<InstanceStatus>) {
        let workloads = self.workloads.lock().await;
        (
            workloads.values().map(|r| r.memory).sum(),
            workloads
                .iter()
                .map(|(name, r)| InstanceStatus {
                    workload: name.clone(),
                    digest: r.digest.clone(),
                    memory: r.memory,
                    generation: r.generation,
                })
                .collect(),
        )
    }

    /// Join (or rejoin); returns the heartbeat period.
    async fn join(&self) -> anyhow::Result<Duration> {
        let (_, instances) = self.statuses().await;
        let request = JoinRequest {
            instances,
            name: self.config.name.clone(),
            url: self.url.clone(),
            labels: self.config.labels.clone(),
            capacity: Capacity {
                memory: self.config.capacity_memory,
                slots: self.config.slots,
            },
            arch: std::env::consts::ARCH.to_string(),
            engine: self.runtime.engine_key(),
            engine_kind: self.runtime.config().engine.name().to_string(),
        };
        let mut delay = Duration::from_millis(100);
        loop {
            let sent = self
                .http
                .post(format!("{}/v1/hosts/join", self.config.join))
                .bearer_auth(&self.config.token)
                .json(&request)
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => {
                    let joined: JoinResponse = r.json().await.context("bad join response")?;
                    *self.secret.lock().unwrap_or_else(|e| e.into_inner()) = joined.host_secret;
                    *self.labels.lock().unwrap_or_else(|e| e.into_inner()) = joined.labels;
                    return Ok(Duration::from_millis(joined.heartbeat_ms.max(50)));
                }
                Ok(r) if r.status().is_client_error() => {
                    let status = r.status();
                    let body = r.text().await.unwrap_or_default();
                    anyhow::bail!(
                        "the scheduler refused to let host `{}` join ({status}): {body}",
                        self.config.name
                    );
                }
                Ok(r) => tracing::warn!(status = %r.status(), "join failed; retrying"),
                Err(e) => tracing::warn!(error = %e, "scheduler unreachable; retrying"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    async fn heartbeats(self: Arc<Self>, mut period: Duration) {
        loop {
            tokio::time::sleep(period).await;
            let (memory_used, instances) = self.statuses().await;
            let beat = Heartbeat {
                capacity: Capacity {
                    memory: self.config.capacity_memory,
                    slots: self.config.slots,
                },
                arch: std::env::consts::ARCH.to_string(),
                engine: self.runtime.engine_key(),
                memory_used,
                instances,
            };
            let sent = self
                .http
                .post(format!(
                    "{}/v1/hosts/{}/heartbeat",
                    self.config.join, self.config.name
                ))
                .bearer_auth(&self.config.token)
                .json(&beat)
                .send()
                .await;
            match sent {
                Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => {
                    tracing::info!("scheduler does not know this host; rejoining");
                    match self.join().await {
                        Ok(p) => period = p,
                        Err(e) => tracing::error!(error = %e, "rejoin failed"),
                    }
                }
                Ok(r) if !r.status().is_success() => {
                    tracing::warn!(status = %r.status(), "heartbeat refused")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
            }
        }
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let secret = self.secret.lock().unwrap_or_else(|e| e.into_inner());
        presents(headers, &secret)
    }

    /// Deliver locally when the destination runs here, else through the
    /// scheduler, which forwards to a host that runs it.
    fn router(&self) -> crate::driver::Router {
        let bus = self.bus.clone();
        let local = bus.router();
        let http = self.http.clone();
        let join = self.config.join.clone();
        let token = self.config.token.clone();
        Arc::new(move |from: &str, message: crate::abi::OutboundMessage| {
            if bus.contains(&message.to) {
                return local(from, message);
            }
            let (http, token) = (http.clone(), token.clone());
            let url = format!("{join}/v1/messages/{}?from={from}", message.to);
            let to = message.to.clone();
            tokio::spawn(async move {
                match http
                    .post(&url)
                    .bearer_auth(token)
                    .body(message.body)
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => {}
                    Ok(r) => {
                        tracing::warn!(%to, status = %r.status(), "message refused by the scheduler")
                    }
                    Err(e) => tracing::warn!(%to, error = %e, "message not delivered"),
                }
            });
            Ok(())
        })
    }

    /// How an instance of `workload` runs here.
    fn instance_config(&self, workload: &str, spec: &StartInstance) -> InstanceConfig {
        let labels = self
            .labels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut config = InstanceConfig::new(workload);
        config.memory_limit = spec.memory;
        config.env = spec.env.clone().into_iter().collect();
        config.grants = Grants {
            kv: spec.grants.kv,
            timers: spec.grants.timers,
            send: spec.grants.send.clone(),
        };
        config.info = self.here_with(&labels);
        config
    }

    fn here_with(&self, labels: &Labels) -> HostInfo {
        HostInfo {
            host: self.config.name.clone(),
            site: labels.get("site").cloned().unwrap_or_default(),
        }
    }

    /// Drive `instance` as `workload` and route requests to it; a copy
    /// already running here is replaced.
    async fn run_workload(
        &self,
        module: crate::Module,
        config: InstanceConfig,
        instance: Workload,
        digest: String,
        memory: u64,
        generation: u64,
    ) {
        let workload = config.name.clone();
        let handle = driver::spawn(
            self.runtime.clone(),
            module,
            config,
            instance,
            DriverOptions {
                router: Some(self.router()),
                ..DriverOptions::default()
            },
        );
        self.bus.register(handle.clone());
        self.migrations.arrived(&workload);
        let old = self.workloads.lock().await.insert(
            workload,
            Running {
                handle,
                digest,
                memory,
                generation,
            },
        );
        if let Some(old) = old {
            old.handle.stop().await;
        }
    }

    /// The module with `digest`: the copy already in use here, else fetched
    /// from the scheduler and compiled (or taken from the compiled cache).
    async fn module(&self, digest: &Digest) -> Result<crate::Module, HttpResponse> {
        if let Some(module) = self.runtime.loaded(digest) {
            return Ok(module);
        }
        // One fetch and compile per module, however many starts wait for it.
        let gate = {
            let mut loading = self.loading.lock().unwrap_or_else(|e| e.into_inner());
            loading.retain(|_, g| Arc::strong_count(g) > 1);
            loading.entry(*digest).or_default().clone()
        };
        let _turn = gate.lock().await;
        if let Some(module) = self.runtime.loaded(digest) {
            return Ok(module);
        }
        let bytes = self
            .fetch_module(digest)
            .await
            .map_err(|e| error(StatusCode::BAD_GATEWAY, format!("{e:#}")))?;
        self.runtime
            .load(bytes)
            .await
            .map_err(|e| error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))
    }

    async fn fetch_module(&self, digest: &Digest) -> anyhow::Result<Vec<u8>> {
        let r = self
            .http
            .get(format!("{}/v1/modules/{}", self.config.join, digest))
            .bearer_auth(&self.config.token)
            .send()
            .await?;
        anyhow::ensure!(
            r.status().is_success(),
            "scheduler answered {} for module {digest}",
            r.status()
        );
        if r.content_length()
            .is_some_and(|n| n as usize > MAX_MODULE_DOWNLOAD)
        {
            anyhow::bail!("module {digest} is over {MAX_MODULE_DOWNLOAD} bytes");
        }
        let bytes = r.bytes().await?;
        anyhow::ensure!(
            bytes.len() <= MAX_MODULE_DOWNLOAD,
            "module {digest} is too large"
        );
        let actual = Digest::of(&bytes);
        anyhow::ensure!(
            actual == *digest,
            "module bytes hash to {actual}, not {digest}: refused"
        );
        Ok(bytes.to_vec())
    }
}

/// Whether `headers` carry `Authorization: Bearer SECRET` (compared in
/// constant time; an empty secret matches nothing).
fn presents(headers: &HeaderMap, secret: &str) -> bool {
    let presented = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    !secret.is_empty()
        && constant_time_eq::constant_time_eq(presented.as_bytes(), secret.as_bytes())
}

/// Refuse control routes without the host secret handed out at join.
async fn require_secret(
    State(agent): State<Arc<Agent>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> HttpResponse {
    if agent.authorized(request.headers()) {
        next.run(request).await
    } else {
        error(StatusCode::UNAUTHORIZED, "missing or wrong host secret")
    }
}

/// The answer for a workload that does not run on this host.
fn not_here(workload: &str) -> HttpResponse {
    not_dispatched(
        StatusCode::NOT_FOUND,
        format!("no workload `{workload}` on this host"),
    )
}

/// An error answered before the workload saw the request, marked so that
/// an ingress may retry it elsewhere without applying it twice.
fn not_dispatched(status: StatusCode, message: String) -> HttpResponse {
    let mut r = error(status, message);
    r.headers_mut().insert(
        roam_proto::NOT_DISPATCHED_HEADER,
        axum::http::HeaderValue::from_static("1"),
    );
    r
}

async fn start(
    State(agent): State<Arc<Agent>>,
    Path(workload): Path<String>,
    Json(spec): Json<StartInstance>,
) -> HttpResponse {
    launch(agent, workload, spec, None).await
}

/// `PUT /v1/instances/{workload}/restore`: the header `x-roam-instance`
/// carries the instance spec as JSON, the body the encoded snapshot.
async fn restore(
    State(agent): State<Arc<Agent>>,
    Path(workload): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> HttpResponse {
    let spec: StartInstance = match headers
        .get("x-roam-instance")
        .and_then(|v| serde_json::from_slice(v.as_bytes()).ok())
    {
        Some(s) => s,
        None => {
            return error(
                StatusCode::BAD_REQUEST,
                "header `x-roam-instance` must hold the instance spec as JSON",
            );
        }
    };
    launch(agent, workload, spec, Some(body)).await
}

async fn snapshot(State(agent): State<Arc<Agent>>, Path(workload): Path<String>) -> HttpResponse {
    let Some(handle) = agent.bus.get(&workload) else {
        return not_here(&workload);
    };
    match handle.snapshot().await {
        Ok(bytes) => bytes.into_response(),
        Err(e) => error(StatusCode::CONFLICT, e.to_string()),
    }
}

/// Start `workload` fresh, or from `snapshot` bytes (checked against the
/// module and the memory cap before anything is restored).
async fn launch(
    agent: Arc<Agent>,
    workload: String,
    spec: StartInstance,
    snapshot: Option<Bytes>,
) -> HttpResponse {
    let Some(digest) = Digest::parse(&spec.digest) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("`{}` is not a sha256 digest", spec.digest),
        );
    };
    {
        let workloads = agent.workloads.lock().await;
        if workloads
            .get(&workload)
            .is_some_and(|r| r.digest == spec.digest)
        {
            return StatusCode::OK.into_response();
        }
        // Hold to the capacity this host advertises, whatever the caller
        // believes (its view may lag).
        let (used, count) = workloads
            .iter()
            .filter(|(name, _)| **name != workload)
            .fold((0u64, 0u32), |(m, n), (_, r)| (m + r.memory, n + 1));
        let (capacity, slots) = (agent.config.capacity_memory, agent.config.slots);
        if count >= slots || used.saturating_add(spec.memory) > capacity {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "host `{}` is full: {count} of {slots} slots and {used} of {capacity} bytes in use, `{workload}` needs {} bytes",
                    agent.config.name, spec.memory
                ),
            );
        }
    }
    let module = match agent.module(&digest).await {
        Ok(m) => m,
        Err(e) => return e,
    };
    let config = agent.instance_config(&workload, &spec);
    let started = match &snapshot {
        None => Workload::start(&agent.runtime, &module, config.clone()).await,
        Some(bytes) => {
            let limits = crate::snapshot::codec::DecodeLimits {
                max_memory_bytes: spec.memory,
                ..Default::default()
            };
            let decoded = match crate::snapshot::codec::decode(bytes, Some(&digest), &limits) {
                Ok(s) if s.is_full() => s,
                Ok(_) => return error(StatusCode::BAD_REQUEST, "a delta cannot start a workload"),
                Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
            };
            Workload::restore(&agent.runtime, &module, config.clone(), &decoded, None).await
        }
    };
    let mut instance = match started {
        Ok(w) => w,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
    };
    instance.instance_mut().set_generation(spec.generation);
    agent
        .run_workload(
            module,
            config,
            instance,
            spec.digest,
            spec.memory,
            spec.generation,
        )
        .await;
    StatusCode::CREATED.into_response()
}

#[derive(serde::Deserialize)]
struct StopQuery {
    /// Stop only a copy whose generation is below this one.
    below_generation: Option<u64>,
}

async fn stop(
    State(agent): State<Arc<Agent>>,
    Path(workload): Path<String>,
    axum::extract::Query(q): axum::extract::Query<StopQuery>,
) -> HttpResponse {
    let mut workloads = agent.workloads.lock().await;
    if let (Some(below), Some(r)) = (q.below_generation, workloads.get(&workload))
        && r.generation >= below
    {
        return error(
            StatusCode::CONFLICT,
            format!(
                "`{workload}` runs here at generation {}, not below {below}",
                r.generation
            ),
        );
    }
    let removed = workloads.remove(&workload);
    drop(workloads);
    match removed {
        Some(r) => {
            agent.bus.unregister(&workload);
            r.handle.stop().await;
            StatusCode::OK.into_response()
        }
        None => error(
            StatusCode::NOT_FOUND,
            format!("no workload `{workload}` on this host"),
        ),
    }
}

async fn logs(State(agent): State<Arc<Agent>>, Path(workload): Path<String>) -> HttpResponse {
    let Some(handle) = agent.bus.get(&workload) else {
        return not_here(&workload);
    };
    match handle.logs().await {
        Ok(text) => text.into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

#[derive(serde::Deserialize)]
struct FromQuery {
    from: String,
}

async fn message(
    State(agent): State<Arc<Agent>>,
    Path(workload): Path<String>,
    axum::extract::Query(q): axum::extract::Query<FromQuery>,
    body: Bytes,
) -> HttpResponse {
    let Some(handle) = agent.bus.get(&workload) else {
        return not_here(&workload);
    };
    match handle.message(&q.from, body.to_vec()).await {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// `/w/{workload}/{path...}`: a request to a workload on this host.
async fn ingress(
    State(agent): State<Arc<Agent>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> HttpResponse {
    let Some((workload, path)) = roam_proto::ingress_target(uri.path()) else {
        return error(StatusCode::NOT_FOUND, "ingress paths are /w/{workload}/...");
    };
    let wanted = headers
        .get(roam_proto::GENERATION_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let handle = {
        let workloads = agent.workloads.lock().await;
        match workloads.get(workload) {
            Some(r) if wanted.is_none_or(|g| g == r.generation) => r.handle.clone(),
            Some(r) => {
                return not_dispatched(
                    StatusCode::CONFLICT,
                    format!(
                        "stale generation: `{workload}` runs here at generation {}, the request was routed for {}",
                        r.generation,
                        wanted.unwrap_or_default()
                    ),
                );
            }
            None => {
                return match agent.migrations.moved_to(workload) {
                    Some(url) => {
                        not_dispatched(StatusCode::CONFLICT, format!("`{workload}` moved to {url}"))
                    }
                    None => not_here(workload),
                };
            }
        }
    };
    let request = from_http(&method, path.to_string(), &uri, &headers, &body);
    match handle.http(request).await {
        Ok(r) => crate::agent::into_http(r),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Turn an HTTP request into a workload request for `path`. The
/// `authorization` header is dropped: it is meant for Roam, not the guest.
pub fn from_http(
    method: &Method,
    path: String,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Request {
    Request {
        method: method.to_string(),
        path,
        query: uri.query().unwrap_or("").to_string(),
        headers: headers
            .iter()
            .filter(|(k, _)| *k != "authorization")
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
    }
}

/// Turn a workload response into an HTTP response.
pub fn into_http(r: crate::abi::codec::Response) -> HttpResponse {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut out = (status, r.body).into_response();
    // `x-roam-*` headers are Roam's word to an ingress; a guest cannot speak it.
    for (k, v) in r
        .headers
        .into_iter()
        .filter(|(k, _)| !roam_proto::is_roam_header(k))
    {
        if let (Ok(k), Ok(v)) = (
            axum::http::HeaderName::try_from(k),
            axum::http::HeaderValue::try_from(v),
        ) {
            out.headers_mut().append(k, v);
        }
    }
    out
}
