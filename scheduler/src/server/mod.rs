//! The scheduler daemon (`roam scheduler`): host registry, desired state,
//! reconciler, HTTP/JSON API under `/v1`, `/metrics` and the ingress.
//!
//! Desired state (workloads, tokens, cordons) lives in the [`Store`] and is
//! committed before a change is acknowledged; workloads and cordons are also
//! mirrored in memory, so reconcile rounds and lookups read no file. Hosts are soft state: they
//! join with a token, heartbeat, and rejoin (reporting what they run) when a
//! restarted scheduler does not know them. A reconcile loop turns the
//! difference between desired and running into start/stop calls on hosts; a
//! host that misses heartbeats for `heartbeat_timeout` counts as down and its
//! workloads are placed again on hosts that meet their rules. Live
//! migrations (`migration.rs`) raise a workload's generation at their commit
//! point; the ingress routes with it and resends what a host refused before
//! dispatch.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post, put};
use axum::{Json, Router};
use dashmap::DashMap;
use futures_util::StreamExt;
use roam_proto::{
    Capacity, ErrorBody, Heartbeat, InstanceInfo, InstanceStatus, JoinRequest, JoinResponse,
    ModuleRef, NodeInfo, StartInstance, TokenRequest, TokenResponse, WorkloadInfo, WorkloadSpec,
};
use sha2::{Digest, Sha256};

use crate::auth::{self, Role, TokenRecord};
use crate::placement::{self, HostView, PlacementRequest};
use crate::reconcile::{self, Command, Running};
use crate::selector::Selector;
use crate::store::Store;

mod migration;

/// Largest module accepted by `PUT /v1/modules`.
const MAX_MODULE: usize = 64 << 20;
/// Largest request body proxied by the ingress.
const MAX_INGRESS_BODY: usize = 8 << 20;
/// Start and stop calls to hosts the reconciler keeps in flight at once.
const COMMANDS_IN_FLIGHT: usize = 64;

/// How the scheduler runs.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// API address.
    pub listen: SocketAddr,
    /// Data directory (state store, modules, admin token).
    pub data_dir: PathBuf,
    /// A host missing heartbeats this long is down.
    pub heartbeat_timeout: Duration,
    /// Heartbeat period asked of hosts.
    pub heartbeat: Duration,
}

struct HostEntry {
    url: String,
    /// Shared with every `HostView` the reconciler takes.
    labels: Arc<roam_proto::Labels>,
    capacity: Capacity,
    arch: String,
    engine: String,
    secret: String,
    token_hash: String,
    last_seen: Instant,
    memory_used: u64,
    instances: Vec<InstanceStatus>,
}

struct Scheduler {
    config: ServerConfig,
    store: Store,
    tokens: RwLock<HashMap<String, Role>>,
    hosts: DashMap<String, HostEntry>,
    assignments: Mutex<BTreeMap<String, BTreeSet<String>>>,
    http: reqwest::Client,
    started: Instant,
    placements: AtomicU64,
    host_losses: AtomicU64,
    events: tokio::sync::broadcast::Sender<String>,
    down: Mutex<BTreeSet<String>>,
    /// (workload, host) pairs whose start the host confirmed.
    confirmed: Mutex<BTreeSet<(String, String)>>,
    /// Client without an overall timeout, for a migration's progress stream.
    stream_http: reqwest::Client,
    /// Live migrations by id.
    migrations: Mutex<BTreeMap<String, roam_proto::MigrationInfo>>,
    /// Migrations a restart interrupted, whose hosts are still to be asked
    /// where they got to.
    pending: Mutex<BTreeSet<String>>,
    /// Workload generations (fencing tokens), mirrored from the store.
    generations: Mutex<HashMap<String, u64>>,
    migration_metrics: Mutex<migration::MigrationMetrics>,
    /// Something the reconciler should look at changed since its last round.
    changed: std::sync::atomic::AtomicBool,
    /// Wakes the reconciler as soon as something changed.
    wake: tokio::sync::Notify,
    /// Workloads and cordons as the store holds them, kept in memory so a
    /// reconcile round or a lookup reads no file: every change goes to the
    /// store first, then here.
    desired: RwLock<Desired>,
}

#[derive(Default)]
struct Desired {
    workloads: BTreeMap<String, WorkloadSpec>,
    cordoned: BTreeSet<String>,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(ErrorBody {
            error: message.into(),
        }),
    )
        .into_response()
}

/// Parse a JSON body after the caller has been authenticated, so a wrong
/// token gets 401 whatever the body.
fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// Run the scheduler until Ctrl-C.
pub async fn run(config: ServerConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(config.data_dir.join("modules"))
        .with_context(|| format!("cannot create `{}`", config.data_dir.display()))?;
    let store = Store::open(&config.data_dir.join("state.redb"))?;
    let mut tokens: HashMap<String, Role> = store
        .tokens::<TokenRecord>()?
        .into_iter()
        .map(|(hash, r)| (hash, r.role))
        .collect();
    let token_file = config.data_dir.join("admin.token");
    if !tokens.values().any(|r| *r == Role::Admin) {
        let token = auth::new_token()?;
        let hash = auth::hash_token(&token);
        store.put_token(
            &hash,
            &TokenRecord {
                hash: hash.clone(),
                role: Role::Admin,
            },
        )?;
        tokens.insert(hash, Role::Admin);
        write_private(&token_file, &token)?;
        eprintln!(
            "roam scheduler: admin token written to {}",
            token_file.display()
        );
    }
    let desired = Desired {
        workloads: store.workloads::<WorkloadSpec>()?.into_iter().collect(),
        cordoned: store.cordoned()?.into_iter().collect(),
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on `{}`", config.listen))?;
    let local = listener.local_addr()?;
    let scheduler = Arc::new(Scheduler {
        store,
        tokens: RwLock::new(tokens),
        hosts: DashMap::new(),
        assignments: Mutex::new(BTreeMap::new()),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?,
        started: Instant::now(),
        placements: AtomicU64::new(0),
        host_losses: AtomicU64::new(0),
        events: tokio::sync::broadcast::channel(1024).0,
        down: Mutex::new(BTreeSet::new()),
        confirmed: Mutex::new(BTreeSet::new()),
        stream_http: reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()?,
        migrations: Mutex::new(BTreeMap::new()),
        pending: Mutex::new(BTreeSet::new()),
        generations: Mutex::new(HashMap::new()),
        migration_metrics: Mutex::new(migration::MigrationMetrics::default()),
        changed: std::sync::atomic::AtomicBool::new(true),
        wake: tokio::sync::Notify::new(),
        desired: RwLock::new(desired),
        config,
    });
    scheduler.load_migrations();
    tokio::spawn(scheduler.clone().reconcile_loop());
    // Operator routes: every one needs the admin token, checked before any
    // body is read.
    let admin = Router::new()
        .route("/v1/tokens", post(create_token))
        .route("/v1/nodes", get(nodes))
        .route("/v1/nodes/{name}/{action}", post(cordon))
        .route("/v1/modules", put(upload_module))
        .route("/v1/workloads", get(workloads).post(deploy))
        .route(
            "/v1/workloads/{name}",
            get(workload).delete(delete_workload),
        )
        .route("/v1/workloads/{name}/logs", get(workload_logs))
        .route("/v1/workloads/{name}/snapshot", post(snapshot_workload))
        .route("/v1/workloads/{name}/restore", post(restore_workload))
        .route("/v1/instances", get(instances))
        .route(
            "/v1/migrations",
            get(migration::list).post(migration::create),
        )
        .route("/v1/migrations/{id}", get(migration::show))
        .route("/v1/events", get(events))
        .route_layer(axum::middleware::from_fn_with_state(
            scheduler.clone(),
            require_admin,
        ));
    let app = Router::new()
        .merge(admin)
        .route("/v1/hosts/join", post(join))
        .route("/v1/hosts/{name}/heartbeat", post(heartbeat))
        .route("/v1/modules/{digest}", get(download_module))
        .route("/v1/messages/{workload}", post(relay_message))
        .route("/metrics", get(metrics))
        .route("/w/{workload}", any(ingress))
        .route("/w/{workload}/", any(ingress))
        .route("/w/{workload}/{*path}", any(ingress))
        .layer(DefaultBodyLimit::max(MAX_MODULE))
        .with_state(scheduler);
    eprintln!("roam scheduler: listening on http://{local}");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("scheduler API server failed")
}

/// Refuse operator routes without the admin token.
async fn require_admin(
    State(s): State<Arc<Scheduler>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if s.is_admin(request.headers()) {
        next.run(request).await
    } else {
        error(StatusCode::UNAUTHORIZED, "an admin token is required")
    }
}

/// Write a file readable only by its owner.
pub fn write_private(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut f = options.open(path)?;
    f.write_all(contents.as_bytes())
}

impl Scheduler {
    /// Publish an event to `/v1/events` subscribers (and the log).
    fn event(&self, kind: &str, fields: serde_json::Value) {
        let mut value = fields;
        value["type"] = serde_json::Value::String(kind.to_string());
        tracing::info!(event = %value, "cluster event");
        let _ = self.events.send(value.to_string());
    }

    fn role(&self, headers: &HeaderMap) -> Option<(String, Role)> {
        let token = bearer(headers)?;
        let hash = auth::hash_token(token);
        let tokens = self.tokens.read().unwrap_or_else(|e| e.into_inner());
        tokens.get(&hash).map(|r| (hash, r.clone()))
    }

    /// The hash of the join token presented, if it is one (no copy of the
    /// token's labels: this runs for every heartbeat).
    fn join_token(&self, headers: &HeaderMap) -> Option<String> {
        let hash = auth::hash_token(bearer(headers)?);
        let tokens = self.tokens.read().unwrap_or_else(|e| e.into_inner());
        matches!(tokens.get(&hash), Some(Role::Join { .. })).then_some(hash)
    }

    fn is_admin(&self, headers: &HeaderMap) -> bool {
        matches!(self.role(headers), Some((_, Role::Admin)))
    }

    fn alive(&self, entry: &HostEntry) -> bool {
        entry.last_seen.elapsed() < self.config.heartbeat_timeout
    }

    fn host_views(&self) -> Vec<HostView> {
        let cordoned = self.cordoned();
        let mut views: Vec<HostView> = self
            .hosts
            .iter()
            .map(|e| HostView {
                id: e.key().clone(),
                labels: e.labels.clone(),
                alive: self.alive(&e),
                cordoned: cordoned.contains(e.key()),
                memory_total: e.capacity.memory,
                memory_used: e.memory_used,
                slots_total: e.capacity.slots,
                slots_used: e.instances.len() as u32,
            })
            .collect();
        views.sort_by(|a, b| a.id.cmp(&b.id));
        views
    }

    fn specs(&self) -> Vec<WorkloadSpec> {
        self.desired
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .workloads
            .values()
            .cloned()
            .collect()
    }

    fn spec(&self, name: &str) -> Option<WorkloadSpec> {
        self.desired
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .workloads
            .get(name)
            .cloned()
    }

    fn cordoned(&self) -> BTreeSet<String> {
        self.desired
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .cordoned
            .clone()
    }

    /// Create or replace a workload: in the store, then in memory.
    fn put_spec(&self, spec: &WorkloadSpec) -> Result<(), crate::store::StoreError> {
        self.store.put_workload(&spec.name, spec)?;
        self.desired
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .workloads
            .insert(spec.name.clone(), spec.clone());
        self.touch();
        Ok(())
    }

    /// Delete a workload; `true` if it existed.
    fn delete_spec(&self, name: &str) -> Result<bool, crate::store::StoreError> {
        let existed = self.store.delete_workload(name)?;
        self.desired
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .workloads
            .remove(name);
        self.touch();
        Ok(existed)
    }

    /// Cordon or uncordon a host: in the store, then in memory.
    fn set_cordoned(&self, host: &str, on: bool) -> Result<(), crate::store::StoreError> {
        self.store.set_cordoned(host, on)?;
        let mut desired = self.desired.write().unwrap_or_else(|e| e.into_inner());
        if on {
            desired.cordoned.insert(host.to_string());
        } else {
            desired.cordoned.remove(host);
        }
        drop(desired);
        self.touch();
        Ok(())
    }

    /// Ask for a reconcile round soon: desired state, a host's report or a
    /// placement changed.
    fn touch(&self) {
        self.changed.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// Whether a host went down or came back since the last round (a scan
    /// of the registry that copies nothing).
    fn liveness_changed(&self) -> bool {
        let down = self.down.lock().unwrap_or_else(|e| e.into_inner());
        self.hosts
            .iter()
            .any(|e| self.alive(&e) == down.contains(e.key()))
    }

    async fn reconcile_loop(self: Arc<Self>) {
        // Give hosts of a restarted scheduler time to rejoin and report what they run.
        let grace = self.config.heartbeat * 2;
        // Rounds run when something changed, and at least this often anyway.
        let every = Duration::from_secs(2);
        let mut last = Instant::now();
        loop {
            // A change wakes the loop at once; liveness and retries are
            // looked at every 200 ms.
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            if self.started.elapsed() < grace {
                continue;
            }
            let pending = !self
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty();
            let due = self.changed.swap(false, Ordering::Relaxed)
                || pending
                || self.liveness_changed()
                || last.elapsed() >= every;
            if due {
                last = Instant::now();
                self.reconcile_once().await;
            }
        }
    }

    async fn reconcile_once(&self) {
        self.resolve_pending().await;
        self.stop_stale().await;
        let frozen = self.frozen();
        let views = self.host_views();
        let alive: BTreeSet<&str> = views
            .iter()
            .filter(|v| v.alive)
            .map(|v| v.id.as_str())
            .collect();
        {
            let mut down = self.down.lock().unwrap_or_else(|e| e.into_inner());
            for v in &views {
                if !v.alive && down.insert(v.id.clone()) {
                    self.event("host_down", serde_json::json!({ "host": v.id }));
                } else if v.alive {
                    down.remove(&v.id);
                }
            }
        }
        let specs = self.specs();
        let mut desired = Vec::new();
        for s in specs.iter().filter(|s| !frozen.contains(&s.name)) {
            match Selector::parse(&s.selector) {
                Ok(selector) => desired.push(reconcile::WorkloadSpec {
                    name: s.name.clone(),
                    replicas: s.replicas,
                    selector,
                    memory: s.memory,
                    spread_by: s.spread_by.clone(),
                }),
                Err(e) => {
                    tracing::error!(workload = %s.name, error = %e, "stored selector does not parse")
                }
            }
        }
        let running: Vec<Running> = {
            let mut assignments = self.assignments.lock().unwrap_or_else(|e| e.into_inner());
            // Replicas on hosts that are down are lost.
            for hosts in assignments.values_mut() {
                let before = hosts.len();
                hosts.retain(|h| alive.contains(h.as_str()));
                if hosts.len() < before {
                    self.host_losses
                        .fetch_add((before - hosts.len()) as u64, Ordering::Relaxed);
                }
            }
            assignments
                .iter()
                .filter(|(w, _)| !frozen.contains(*w))
                .flat_map(|(w, hosts)| {
                    hosts.iter().map(|h| Running {
                        workload: w.clone(),
                        host: h.clone(),
                    })
                })
                .collect()
        };
        // A host's report lags the starts in flight and those it confirmed
        // since its last heartbeat: count what is assigned to it, if more.
        let mut views = views;
        let memory: HashMap<&str, u64> =
            specs.iter().map(|s| (s.name.as_str(), s.memory)).collect();
        let mut assigned: HashMap<&str, (u64, u32)> = HashMap::new();
        for r in &running {
            let e = assigned.entry(r.host.as_str()).or_default();
            e.0 += memory.get(r.workload.as_str()).copied().unwrap_or(0);
            e.1 += 1;
        }
        for v in &mut views {
            if let Some((mem, n)) = assigned.get(v.id.as_str()) {
                v.memory_used = v.memory_used.max(*mem);
                v.slots_used = v.slots_used.max(*n);
            }
        }
        let planning = Instant::now();
        let plan = reconcile::reconcile(&desired, &running, &views);
        tracing::debug!(
            workloads = desired.len(),
            hosts = views.len(),
            commands = plan.commands.len(),
            took_ms = planning.elapsed().as_secs_f64() * 1e3,
            "reconcile round planned"
        );
        for u in &plan.unplaceable {
            tracing::warn!(workload = %u.workload, missing = u.missing, "no eligible host");
        }
        // Stops first, then starts; each group runs up to COMMANDS_IN_FLIGHT
        // calls at a time, so re-placing the workloads of many lost hosts
        // does not wait on one host after another.
        let (stops, starts): (Vec<Command>, Vec<Command>) = plan
            .commands
            .into_iter()
            .partition(|c| matches!(c, Command::Stop { .. }));
        for group in [stops, starts] {
            futures_util::stream::iter(group)
                .for_each_concurrent(COMMANDS_IN_FLIGHT, |command| self.perform(command, &specs))
                .await;
        }
    }

    async fn perform(&self, command: Command, specs: &[WorkloadSpec]) {
        match command {
            Command::Start { workload, host } => {
                let Some(spec) = specs.iter().find(|s| s.name == workload) else {
                    return;
                };
                // Count it as placed while the start is in flight, so
                // the next round does not place it twice.
                self.assign(&workload, &host, true);
                if let Err(e) = self.start_on(&host, spec).await {
                    tracing::warn!(%workload, %host, error = %e, "start failed");
                    self.assign(&workload, &host, false);
                    self.touch();
                } else {
                    self.placements.fetch_add(1, Ordering::Relaxed);
                    self.confirmed
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert((workload.clone(), host.clone()));
                    self.event(
                        "workload_started",
                        serde_json::json!({ "workload": workload, "host": host }),
                    );
                }
            }
            Command::Stop { workload, host } => {
                if let Err(e) = self.stop_on(&host, &workload).await {
                    tracing::warn!(%workload, %host, error = %e, "stop failed");
                }
                self.event(
                    "workload_stopped",
                    serde_json::json!({ "workload": workload, "host": host }),
                );
                self.assign(&workload, &host, false);
            }
        }
    }

    /// Stop copies that hosts report at a generation below the workload's:
    /// left behind by a migration whose source missed the hand-off.
    async fn stop_stale(&self) {
        let frozen = self.frozen();
        let stale: Vec<(String, String)> = self
            .hosts
            .iter()
            .flat_map(|e| {
                e.instances
                    .iter()
                    .filter(|i| {
                        !frozen.contains(&i.workload) && i.generation < self.generation(&i.workload)
                    })
                    .map(|i| (e.key().clone(), i.workload.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (host, workload) in stale {
            // Only a copy still below the generation: the report may be
            // older than a migration that brought the workload back here.
            let generation = self.generation(&workload);
            let Some((url, secret)) = self.host_endpoint(&host) else {
                continue;
            };
            let stopped = self
                .http
                .delete(format!("{url}/v1/instances/{workload}"))
                .query(&[("below_generation", generation)])
                .bearer_auth(secret)
                .send()
                .await;
            tracing::info!(%workload, %host, generation, "stopping a copy fenced off by a newer generation, if still there");
            if stopped.is_ok_and(|r| r.status().is_success() || r.status() == StatusCode::NOT_FOUND)
                && let Some(mut e) = self.hosts.get_mut(&host)
            {
                e.instances.retain(|i| i.workload != workload);
            }
        }
    }

    /// Send a request built by `build(url, secret, generation)` to the host
    /// that serves `workload`. A host's refusal before dispatch (wrong
    /// generation, workload moved) or a refused connection means the request
    /// was not applied: resolve again and resend, for a while, so requests
    /// that race a migration's commit are neither lost nor applied twice.
    async fn send_to_serving(
        &self,
        workload: &str,
        build: impl Fn(&str, &str, u64) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, Response> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut pause = Duration::from_millis(1);
        loop {
            let retry = match self.serving(workload) {
                Some((url, secret)) => {
                    match build(&url, &secret, self.generation(workload)).send().await {
                        Ok(r) if r.headers().contains_key(roam_proto::NOT_DISPATCHED_HEADER) => {
                            let status = r.status();
                            let text = r.text().await.unwrap_or_default();
                            error(
                                StatusCode::from_u16(status.as_u16())
                                    .unwrap_or(StatusCode::BAD_GATEWAY),
                                text,
                            )
                        }
                        Ok(r) => return Ok(r),
                        Err(e) if e.is_connect() => {
                            error(StatusCode::BAD_GATEWAY, format!("host unreachable: {e}"))
                        }
                        Err(e) => {
                            return Err(error(
                                StatusCode::BAD_GATEWAY,
                                format!("host unreachable: {e}"),
                            ));
                        }
                    }
                }
                None => {
                    let refusal = error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("workload `{workload}` is not running anywhere"),
                    );
                    // Worth waiting for: a migration's commit, or a start
                    // that is on its way.
                    let placed = self
                        .assignments
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(workload)
                        .is_some_and(|hosts| !hosts.is_empty());
                    if !placed && !self.frozen().contains(workload) {
                        return Err(refusal);
                    }
                    refusal
                }
            };
            if Instant::now() + pause > deadline {
                return Err(retry);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    fn assign(&self, workload: &str, host: &str, on: bool) {
        {
            let mut assignments = self.assignments.lock().unwrap_or_else(|e| e.into_inner());
            let hosts = assignments.entry(workload.to_string()).or_default();
            if on {
                hosts.insert(host.to_string());
            } else {
                hosts.remove(host);
            }
        }
        if !on {
            self.confirmed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&(workload.to_string(), host.to_string()));
        }
    }

    fn host_endpoint(&self, host: &str) -> Option<(String, String)> {
        self.hosts
            .get(host)
            .map(|e| (e.url.clone(), e.secret.clone()))
    }

    async fn start_on(&self, host: &str, spec: &WorkloadSpec) -> anyhow::Result<()> {
        let (url, secret) = self.host_endpoint(host).context("host vanished")?;
        let r = self
            .http
            .put(format!("{url}/v1/instances/{}", spec.name))
            .bearer_auth(secret)
            .json(&StartInstance {
                digest: spec.digest.clone(),
                memory: spec.memory,
                env: spec.env.clone(),
                grants: spec.grants.clone(),
                generation: self.generation(&spec.name),
            })
            .send()
            .await?;
        anyhow::ensure!(
            r.status().is_success(),
            "host answered {}: {}",
            r.status(),
            r.text().await.unwrap_or_default()
        );
        Ok(())
    }

    async fn stop_on(&self, host: &str, workload: &str) -> anyhow::Result<()> {
        let (url, secret) = self.host_endpoint(host).context("host vanished")?;
        let r = self
            .http
            .delete(format!("{url}/v1/instances/{workload}"))
            .bearer_auth(secret)
            .send()
            .await?;
        anyhow::ensure!(
            r.status().is_success() || r.status() == reqwest::StatusCode::NOT_FOUND,
            "host answered {}",
            r.status()
        );
        Ok(())
    }

    fn module_path(&self, digest: &str) -> Option<PathBuf> {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| {
            self.config
                .data_dir
                .join("modules")
                .join(format!("{}.wasm", hex.to_ascii_lowercase()))
        })
    }

    /// URL and secret of a live host where `workload` is known to run: its
    /// start was confirmed, or the host reported it.
    fn serving(&self, workload: &str) -> Option<(String, String)> {
        let assignments = self.assignments.lock().unwrap_or_else(|e| e.into_inner());
        let confirmed = self.confirmed.lock().unwrap_or_else(|e| e.into_inner());
        assignments.get(workload)?.iter().find_map(|h| {
            let e = self.hosts.get(h)?;
            let running = confirmed.contains(&(workload.to_string(), h.clone()))
                || e.instances.iter().any(|i| i.workload == workload);
            (self.alive(&e) && running).then(|| (e.url.clone(), e.secret.clone()))
        })
    }
}

async fn create_token(State(s): State<Arc<Scheduler>>, body: Bytes) -> Response {
    let req: TokenRequest = match parse(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if let Err(e) = auth::check_join_labels(&req.labels) {
        return error(StatusCode::BAD_REQUEST, e.to_string());
    }
    let token = match auth::new_token() {
        Ok(t) => t,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let hash = auth::hash_token(&token);
    let role = Role::Join { labels: req.labels };
    if let Err(e) = s.store.put_token(
        &hash,
        &TokenRecord {
            hash: hash.clone(),
            role: role.clone(),
        },
    ) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    s.tokens
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(hash, role);
    (StatusCode::CREATED, Json(TokenResponse { token })).into_response()
}

async fn join(State(s): State<Arc<Scheduler>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some((hash, Role::Join { labels: bound })) = s.role(&headers) else {
        return error(StatusCode::UNAUTHORIZED, "a join token is required");
    };
    let req: JoinRequest = match parse(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if req.name.is_empty() || req.name.len() > 253 {
        return error(
            StatusCode::BAD_REQUEST,
            "host name must be 1-253 characters",
        );
    }
    let mut labels = match auth::host_labels(&req.labels, &bound) {
        Ok(l) => l,
        Err(e) => return error(StatusCode::FORBIDDEN, e.to_string()),
    };
    labels.insert("arch".into(), req.arch.clone());
    let engine = match req.engine_kind.as_str() {
        "" | "cranelift" => "cranelift",
        "pulley" => "pulley",
        other => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("unknown engine `{other}` (hosts run `cranelift` or `pulley`)"),
            );
        }
    };
    labels.insert("engine".into(), engine.to_string());
    if let Some(existing) = s.hosts.get(&req.name)
        && existing.token_hash != hash
        && s.alive(&existing)
    {
        return error(
            StatusCode::CONFLICT,
            format!("host `{}` is already joined with another token", req.name),
        );
    }
    let secret = match auth::new_token() {
        Ok(t) => t,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    // A copy older than the workload's generation was fenced off by a
    // migration; the reconciler stops it.
    for i in &req.instances {
        if i.generation >= s.generation(&i.workload) {
            s.assign(&i.workload, &req.name, true);
        }
    }
    s.hosts.insert(
        req.name.clone(),
        HostEntry {
            url: req.url,
            labels: Arc::new(labels.clone()),
            capacity: req.capacity,
            arch: req.arch,
            engine: req.engine,
            secret: secret.clone(),
            token_hash: hash,
            last_seen: Instant::now(),
            memory_used: req.instances.iter().map(|i| i.memory).sum(),
            instances: req.instances,
        },
    );
    s.event("host_joined", serde_json::json!({ "host": req.name }));
    s.touch();
    Json(JoinResponse {
        labels,
        host_secret: secret,
        heartbeat_ms: s.config.heartbeat.as_millis() as u64,
    })
    .into_response()
}

async fn heartbeat(
    State(s): State<Arc<Scheduler>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(hash) = s.join_token(&headers) else {
        return error(StatusCode::UNAUTHORIZED, "a join token is required");
    };
    let beat: Heartbeat = match parse(&body) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let Some(mut entry) = s.hosts.get_mut(&name) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("unknown host `{name}`; join first"),
        );
    };
    if entry.token_hash != hash {
        return error(StatusCode::FORBIDDEN, "heartbeat with another host's token");
    }
    entry.last_seen = Instant::now();
    if beat.capacity.slots > 0 && entry.capacity != beat.capacity {
        entry.capacity = beat.capacity;
        s.touch();
    }
    if !beat.arch.is_empty() {
        entry.arch = beat.arch;
    }
    if !beat.engine.is_empty() {
        entry.engine = beat.engine;
    }
    if entry.memory_used != beat.memory_used || entry.instances != beat.instances {
        entry.memory_used = beat.memory_used;
        entry.instances = beat.instances;
        drop(entry);
        s.touch();
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn nodes(State(s): State<Arc<Scheduler>>) -> Response {
    let cordoned = s.cordoned();
    let mut out: Vec<NodeInfo> = s
        .hosts
        .iter()
        .map(|e| NodeInfo {
            name: e.key().clone(),
            url: e.url.clone(),
            labels: (*e.labels).clone(),
            status: if !s.alive(&e) {
                "down".into()
            } else if cordoned.contains(e.key()) {
                "cordoned".into()
            } else {
                "ready".into()
            },
            arch: e.arch.clone(),
            engine: e.engine.clone(),
            capacity: e.capacity,
            memory_used: e.memory_used,
            instances: e.instances.iter().map(|i| i.workload.clone()).collect(),
            last_seen_ms: e.last_seen.elapsed().as_millis() as u64,
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Json(out).into_response()
}

async fn cordon(
    State(s): State<Arc<Scheduler>>,
    Path((name, action)): Path<(String, String)>,
) -> Response {
    let on = match action.as_str() {
        "drain" => return migration::drain(s, name).await,
        "cordon" => true,
        "uncordon" => false,
        other => return error(StatusCode::NOT_FOUND, format!("unknown action `{other}`")),
    };
    if !s.hosts.contains_key(&name) {
        return error(StatusCode::NOT_FOUND, format!("no host `{name}`"));
    }
    match s.set_cordoned(&name, on) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn upload_module(State(s): State<Arc<Scheduler>>, body: Bytes) -> Response {
    if !body.starts_with(b"\0asm") {
        return error(
            StatusCode::BAD_REQUEST,
            "not a WebAssembly module (no `\\0asm` header)",
        );
    }
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
    let Some(path) = s.module_path(&digest) else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "bad digest");
    };
    let tmp = path.with_extension("tmp");
    if let Err(e) = std::fs::write(&tmp, &body).and_then(|()| std::fs::rename(&tmp, &path)) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    (
        StatusCode::CREATED,
        Json(ModuleRef {
            digest,
            size: body.len() as u64,
        }),
    )
        .into_response()
}

async fn download_module(
    State(s): State<Arc<Scheduler>>,
    Path(digest): Path<String>,
    headers: HeaderMap,
) -> Response {
    if s.role(&headers).is_none() {
        return error(StatusCode::UNAUTHORIZED, "a token is required");
    }
    let Some(path) = s.module_path(&digest) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("`{digest}` is not a sha256 digest"),
        );
    };
    match tokio::fs::read(&path).await {
        Ok(bytes) => bytes.into_response(),
        Err(_) => error(StatusCode::NOT_FOUND, format!("no module {digest}")),
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

async fn deploy(State(s): State<Arc<Scheduler>>, body: Bytes) -> Response {
    let spec: WorkloadSpec = match parse(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if !valid_name(&spec.name) {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "`{}` is not a valid name (lowercase letters, digits, `-`, at most 63)",
                spec.name
            ),
        );
    }
    if let Err(e) = Selector::parse(&spec.selector) {
        return error(StatusCode::BAD_REQUEST, e.to_string());
    }
    if s.module_path(&spec.digest).is_none_or(|p| !p.exists()) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("no module {}; upload it with PUT /v1/modules", spec.digest),
        );
    }
    if spec.replicas > 1000 {
        return error(StatusCode::BAD_REQUEST, "at most 1000 replicas");
    }
    match s.put_spec(&spec) {
        Ok(()) => {
            s.event(
                "workload_deployed",
                serde_json::json!({ "workload": spec.name, "digest": spec.digest }),
            );
            (StatusCode::CREATED, Json(spec)).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// A workload with where it runs and why every other host is not used,
/// computed when asked (`describe`), not on every reconcile round.
fn info(s: &Scheduler, spec: WorkloadSpec) -> WorkloadInfo {
    let hosts: Vec<String> = s
        .assignments
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&spec.name)
        .map(|h| h.iter().cloned().collect())
        .unwrap_or_default();
    let request = PlacementRequest {
        workload: spec.name.clone(),
        selector: Selector::parse(&spec.selector).unwrap_or_default(),
        memory: spec.memory,
        spread_by: spec.spread_by.clone(),
        placed_on: hosts.clone(),
    };
    let rejected = placement::place(&request, &s.host_views())
        .rejected
        .into_iter()
        .filter(|(h, _)| !hosts.contains(h))
        .map(|(h, r)| (h, r.to_string()))
        .collect();
    WorkloadInfo {
        spec,
        hosts,
        rejected,
    }
}

async fn workloads(State(s): State<Arc<Scheduler>>) -> Response {
    let out: Vec<WorkloadInfo> = s.specs().into_iter().map(|spec| info(&s, spec)).collect();
    Json(out).into_response()
}

async fn workload(State(s): State<Arc<Scheduler>>, Path(name): Path<String>) -> Response {
    match s.spec(&name) {
        Some(spec) => Json(info(&s, spec)).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no workload `{name}`")),
    }
}

async fn delete_workload(State(s): State<Arc<Scheduler>>, Path(name): Path<String>) -> Response {
    match s.delete_spec(&name) {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => error(StatusCode::NOT_FOUND, format!("no workload `{name}`")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn workload_logs(State(s): State<Arc<Scheduler>>, Path(name): Path<String>) -> Response {
    let hosts: Vec<String> = s
        .assignments
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&name)
        .map(|h| h.iter().cloned().collect())
        .unwrap_or_default();
    let mut out = String::new();
    for host in hosts {
        let Some((url, secret)) = s.host_endpoint(&host) else {
            continue;
        };
        if let Ok(r) = s
            .http
            .get(format!("{url}/v1/instances/{name}/logs"))
            .bearer_auth(secret)
            .send()
            .await
        {
            for line in r.text().await.unwrap_or_default().lines() {
                out.push_str(&format!("[{host}] {line}\n"));
            }
        }
    }
    out.into_response()
}

#[derive(serde::Deserialize)]
struct HostQuery {
    host: String,
}

/// `POST /v1/workloads/{name}/snapshot?host=H`: the encoded snapshot of the
/// replica on host H, taken at its next safe point.
async fn snapshot_workload(
    State(s): State<Arc<Scheduler>>,
    Path(name): Path<String>,
    axum::extract::Query(q): axum::extract::Query<HostQuery>,
) -> Response {
    let Some((url, secret)) = s.host_endpoint(&q.host) else {
        return error(StatusCode::NOT_FOUND, format!("no host `{}`", q.host));
    };
    match s
        .http
        .post(format!("{url}/v1/instances/{name}/snapshot"))
        .bearer_auth(secret)
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => {
            r.bytes().await.unwrap_or_default().to_vec().into_response()
        }
        Ok(r) => error(
            StatusCode::BAD_GATEWAY,
            format!(
                "host answered {}: {}",
                r.status(),
                r.text().await.unwrap_or_default()
            ),
        ),
        Err(e) => error(StatusCode::BAD_GATEWAY, format!("host unreachable: {e}")),
    }
}

/// `POST /v1/workloads/{name}/restore?host=H` with a snapshot as the body:
/// restore the workload on host H from it, then stop its other replicas (a
/// stop-and-copy move; live migration is pre-copy and comes separately).
async fn restore_workload(
    State(s): State<Arc<Scheduler>>,
    Path(name): Path<String>,
    axum::extract::Query(q): axum::extract::Query<HostQuery>,
    body: Bytes,
) -> Response {
    let Some(spec) = s.spec(&name) else {
        return error(StatusCode::NOT_FOUND, format!("no workload `{name}`"));
    };
    // The target must meet the workload's rules, like any placement.
    let views = s.host_views();
    let Some(view) = views.iter().find(|v| v.id == q.host) else {
        return error(StatusCode::NOT_FOUND, format!("no host `{}`", q.host));
    };
    let selector = Selector::parse(&spec.selector).unwrap_or_default();
    let request = PlacementRequest {
        workload: name.clone(),
        selector,
        memory: spec.memory,
        spread_by: None,
        placed_on: Vec::new(),
    };
    if let Some(reason) = placement::check(&request, view) {
        return error(
            StatusCode::CONFLICT,
            format!("host `{}` cannot take `{name}`: {reason}", q.host),
        );
    }
    let Some((url, secret)) = s.host_endpoint(&q.host) else {
        return error(StatusCode::NOT_FOUND, format!("no host `{}`", q.host));
    };
    let instance = StartInstance {
        digest: spec.digest.clone(),
        memory: spec.memory,
        env: spec.env.clone(),
        grants: spec.grants.clone(),
        generation: s.generation(&name),
    };
    let header = serde_json::to_string(&instance).unwrap_or_default();
    let sent = s
        .http
        .put(format!("{url}/v1/instances/{name}/restore"))
        .bearer_auth(secret)
        .header("x-roam-instance", header)
        .body(body.to_vec())
        .send()
        .await;
    match sent {
        Ok(r) if r.status().is_success() => {}
        Ok(r) => {
            let status = r.status();
            return error(
                StatusCode::BAD_GATEWAY,
                format!(
                    "host answered {status}: {}",
                    r.text().await.unwrap_or_default()
                ),
            );
        }
        Err(e) => return error(StatusCode::BAD_GATEWAY, format!("host unreachable: {e}")),
    }
    let others: Vec<String> = {
        let mut assignments = s.assignments.lock().unwrap_or_else(|e| e.into_inner());
        let hosts = assignments.entry(name.clone()).or_default();
        let others = hosts.iter().filter(|h| **h != q.host).cloned().collect();
        *hosts = BTreeSet::from([q.host.clone()]);
        others
    };
    s.confirmed
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert((name.clone(), q.host.clone()));
    for host in &others {
        s.confirmed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(name.clone(), host.clone()));
        if let Err(e) = s.stop_on(host, &name).await {
            tracing::warn!(workload = %name, %host, error = %e, "stop after restore failed");
        }
    }
    s.event(
        "workload_restored",
        serde_json::json!({ "workload": name, "host": q.host, "stopped": others }),
    );
    s.touch();
    StatusCode::NO_CONTENT.into_response()
}

#[derive(serde::Deserialize)]
struct FromQuery {
    from: String,
}

/// A message from a workload on one host to a workload on another.
async fn relay_message(
    State(s): State<Arc<Scheduler>>,
    Path(workload): Path<String>,
    axum::extract::Query(q): axum::extract::Query<FromQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if s.join_token(&headers).is_none() {
        return error(StatusCode::UNAUTHORIZED, "a join token is required");
    }
    let sent = s
        .send_to_serving(&workload, |url, secret, _| {
            s.http
                .post(format!("{url}/v1/messages/{workload}"))
                .query(&[("from", q.from.as_str())])
                .bearer_auth(secret)
                .body(body.clone())
        })
        .await;
    match sent {
        Err(response) => response,
        Ok(r) if r.status().is_success() => StatusCode::ACCEPTED.into_response(),
        Ok(r) => error(
            StatusCode::BAD_GATEWAY,
            format!("host answered {}", r.status()),
        ),
    }
}

async fn instances(State(s): State<Arc<Scheduler>>) -> Response {
    let assignments = s
        .assignments
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let out: Vec<InstanceInfo> = assignments
        .into_iter()
        .flat_map(|(w, hosts)| {
            let s = &s;
            hosts.into_iter().map(move |h| InstanceInfo {
                ready: s.hosts.get(&h).is_some_and(|e| s.alive(&e)),
                workload: w.clone(),
                host: h,
            })
        })
        .collect();
    Json(out).into_response()
}

/// `GET /v1/events`: cluster events as server-sent events, one JSON object each.
async fn events(State(s): State<Arc<Scheduler>>) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let rx = s.events.subscribe();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(data) => {
                    return Some((
                        Ok::<_, std::convert::Infallible>(Event::default().data(data)),
                        rx,
                    ));
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn metrics(State(s): State<Arc<Scheduler>>) -> Response {
    let views = s.host_views();
    let ready = views.iter().filter(|v| v.alive).count();
    let instances: usize = s
        .assignments
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .map(|h| h.len())
        .sum();
    let body = format!(
        "# HELP roam_hosts Hosts known to the scheduler.\n# TYPE roam_hosts gauge\nroam_hosts{{status=\"ready\"}} {ready}\nroam_hosts{{status=\"down\"}} {}\n\
         # HELP roam_workloads Workloads in the desired state.\n# TYPE roam_workloads gauge\nroam_workloads {}\n\
         # HELP roam_instances Replicas placed.\n# TYPE roam_instances gauge\nroam_instances {instances}\n\
         # HELP roam_placements_total Replicas started by the reconciler.\n# TYPE roam_placements_total counter\nroam_placements_total {}\n\
         # HELP roam_replicas_lost_total Replicas lost with their host.\n# TYPE roam_replicas_lost_total counter\nroam_replicas_lost_total {}\n",
        views.len() - ready,
        s.specs().len(),
        s.placements.load(Ordering::Relaxed),
        s.host_losses.load(Ordering::Relaxed),
    ) + &s
        .migration_metrics
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .render();
    ([("content-type", "text/plain; version=0.0.4")], body).into_response()
}

/// `/w/{workload}/{path...}`: proxied to a live host that runs the workload.
async fn ingress(
    State(s): State<Arc<Scheduler>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some((workload, path)) = roam_proto::ingress_target(uri.path()) else {
        return error(StatusCode::NOT_FOUND, "ingress paths are /w/{workload}/...");
    };
    if body.len() > MAX_INGRESS_BODY {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
    }
    let Ok(method) = reqwest::Method::from_bytes(method.as_str().as_bytes()) else {
        return error(StatusCode::METHOD_NOT_ALLOWED, "unsupported method");
    };
    let sent = s
        .send_to_serving(workload, |url, _, generation| {
            let target = match uri.query() {
                Some(q) => format!("{url}/w/{workload}{path}?{q}"),
                None => format!("{url}/w/{workload}{path}"),
            };
            let mut request = s
                .http
                .request(method.clone(), target)
                .header(roam_proto::GENERATION_HEADER, generation.to_string())
                .body(body.clone());
            for (k, v) in &headers {
                if k != "host"
                    && k != "authorization"
                    && k != "content-length"
                    && !roam_proto::is_roam_header(k.as_str())
                {
                    request = request.header(k.as_str(), v.as_bytes());
                }
            }
            request
        })
        .await;
    match sent {
        Err(response) => response,
        Ok(r) => {
            let status =
                StatusCode::from_u16(r.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            let mut out_headers = Vec::new();
            for (k, v) in r.headers() {
                if let Ok(v) = v.to_str() {
                    out_headers.push((k.to_string(), v.to_string()));
                }
            }
            let bytes = r.bytes().await.unwrap_or_default();
            let mut out = (status, bytes.to_vec()).into_response();
            for (k, v) in out_headers {
                if let (Ok(k), Ok(v)) = (
                    axum::http::HeaderName::try_from(k),
                    axum::http::HeaderValue::try_from(v),
                ) && k != "content-length"
                    && k != "transfer-encoding"
                {
                    out.headers_mut().insert(k, v);
                }
            }
            out
        }
    }
}
