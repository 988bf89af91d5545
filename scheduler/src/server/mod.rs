//! The scheduler daemon (`roam scheduler`), in files by concern:
//!
//! | file | what it does |
//! | --- | --- |
//! | `mod.rs` | the shared state, the routes, desired state (store first, then memory), events |
//! | `registry.rs` | hosts: join, heartbeat, liveness, `GET /v1/nodes`, cordon |
//! | `liveness.rs` | liveness datagrams: the UDP beats of hosts with nothing new to report, and their answers |
//! | `reconciler.rs` | the reconcile loop: desired vs running → start/stop calls, stale copies |
//! | `ingress.rs` | `/w/{workload}/...` and the message relay: routing with the generation, resend on not-dispatched |
//! | `api.rs` | the operator API: tokens, modules, workloads, logs, snapshot/restore, instances, events |
//! | `metrics.rs` | `/metrics` |
//! | `host_client.rs` | [`HostClient`](host_client): every call to a host |
//! | `migrations.rs` | live migrations: start, pre-copy progress, the commit, its completion |
//! | `recovery.rs` | migrations the scheduler is unsure of: ask the hosts, decide with `crate::verdict` |
//! | `drain.rs` | `roam drain`: cordon, migrate everything off, fall back to a restart |
//! | `leadership.rs` | several replicas on etcd: the election, the term that fences writes and host calls |
//! | `follower.rs` | a follower: its copy of the stored state (an etcd watch), calls forwarded to the leader, hosts sent there (`421`) |
//!
//! Desired state (workloads, tokens, cordons) lives in the [`Store`] and is
//! committed before a change is acknowledged; workloads and cordons are also
//! mirrored in memory, so reconcile rounds and lookups read no file. Hosts
//! are soft state: they join with a token, heartbeat, and rejoin (reporting
//! what they run) when a restarted scheduler does not know them. A host
//! that misses heartbeats for `heartbeat_timeout` counts as down and its
//! workloads are placed again on hosts that meet their rules. Live
//! migrations raise a workload's generation at their commit point; the
//! ingress routes with it and resends what a host refused before dispatch.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use dashmap::DashMap;
use roam_proto::reply::error;
use roam_proto::{Capacity, InstanceStatus, WorkloadSpec};

use crate::auth::{self, Role, TokenRecord};
use crate::store::Store;

pub mod access;
mod api;
mod console;
mod drain;
mod events;
mod follower;
mod host_client;
mod identity;
mod ingress;
mod leadership;
mod liveness;
mod metrics;
mod migrations;
mod mmsg;
mod reconciler;
mod recovery;
mod registry;
mod rollout;
mod standby;

use host_client::{Endpoint, HostClient};

/// How the scheduler runs.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// API address.
    pub listen: SocketAddr,
    /// Data directory (state store unless `store` says otherwise,
    /// modules, CA, admin token).
    pub data_dir: PathBuf,
    /// Where desired and recorded state lives (`None`: `state.redb` in
    /// the data directory).
    pub store: Option<crate::store::StoreLocation>,
    /// A host missing heartbeats this long is down.
    pub heartbeat_timeout: Duration,
    /// Heartbeat period asked of hosts.
    pub heartbeat: Duration,
    /// Serve and call over cleartext HTTP (no CA, no certificates): for a
    /// trusted network only.
    pub insecure_plaintext: bool,
    /// The operator's certificate chain and key (PEM) for clients outside
    /// the cluster (browsers, the CLI, ingress clients); cluster peers are
    /// always shown the cluster certificate.
    pub tls_cert: Option<PathBuf>,
    /// See `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Extra DNS names or IP addresses the scheduler's own certificate
    /// carries (how the CLI reaches it), besides `localhost`, the loopback
    /// addresses and the listen address.
    pub tls_san: Vec<String>,
    /// How long a host certificate is valid; hosts renew at half-life.
    pub host_cert_lifetime: Duration,
    /// The URL hosts and clients reach this replica at (default: the
    /// listen address); a follower points callers at the leader's.
    pub advertise: Option<String>,
    /// This replica's name among the replicas sharing an etcd store
    /// (default: the advertised URL's host and port).
    pub replica: Option<String>,
    /// The time to live of a replica's etcd lease: a leader that stops
    /// renewing it is replaced this long after its last renewal.
    pub leader_ttl: Duration,
    /// Connections one client address may hold open at once.
    pub max_connections_per_address: usize,
    /// A file holding the cluster's scrape credential: the bearer token
    /// Prometheus presents to every `/metrics` (the scheduler's and each
    /// host's; hosts learn only its sha256, at join). `None`: hosts serve
    /// their metrics to nobody, and the scheduler's takes a viewer token.
    pub metrics_token_file: Option<PathBuf>,
    /// Extra roots (PEM) for OCI registries, besides the system's.
    pub registry_ca: Option<PathBuf>,
    /// OCI registries (`host:port`) reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Public keys (SPKI PEM) one of which must have signed a module
    /// deployed from a registry; with any, modules uploaded directly are
    /// refused.
    pub require_signed: Vec<PathBuf>,
}

impl ServerConfig {
    /// A scheduler on `listen` keeping its state in `data_dir`, with the
    /// defaults of `roam scheduler`.
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> ServerConfig {
        ServerConfig {
            listen,
            data_dir,
            store: None,
            heartbeat_timeout: Duration::from_secs(3),
            heartbeat: Duration::from_millis(500),
            insecure_plaintext: false,
            tls_cert: None,
            tls_key: None,
            tls_san: Vec::new(),
            host_cert_lifetime: Duration::from_secs(24 * 3600),
            advertise: None,
            replica: None,
            leader_ttl: Duration::from_secs(3),
            max_connections_per_address: 512,
            metrics_token_file: None,
            registry_ca: None,
            insecure_registries: Vec::new(),
            require_signed: Vec::new(),
        }
    }
}

/// A host as the registry knows it.
struct HostEntry {
    /// The URL the host registered.
    url: String,
    /// What the scheduler dials (see [`Endpoint::base`]).
    base: String,
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
    /// Standbys it keeps, as it last reported.
    standbys: Vec<roam_proto::StandbyStatus>,
    /// The [`Scheduler::revocations`] count this host has the list of.
    revocations_seen: u64,
    /// Its liveness key (`liveness.rs`), if it was given one.
    liveness: Option<liveness::HostLiveness>,
}

impl HostEntry {
    /// How host `name` (this entry) is reached.
    fn endpoint(&self, name: &str) -> Endpoint {
        Endpoint {
            name: name.to_string(),
            url: self.url.clone(),
            base: self.base.clone(),
            secret: self.secret.clone(),
        }
    }
}

struct Scheduler {
    config: ServerConfig,
    /// The CA and certificates; `None` with `--insecure-plaintext`.
    tls: Option<identity::ClusterTls>,
    /// How hosts are reached (shared with `client`'s resolver).
    transport: roam_tls::Transport,
    store: Store,
    /// Token records by hash (expired and used-up ones included, so they can
    /// be listed; they admit nothing).
    tokens: RwLock<HashMap<String, TokenRecord>>,
    /// Who may call which route (`access.rs`).
    access: HashMap<(String, &'static str), access::Access>,
    hosts: DashMap<String, HostEntry>,
    /// The liveness datagram socket, and the host each id names.
    liveness: liveness::Liveness,
    assignments: Mutex<BTreeMap<String, BTreeSet<String>>>,
    /// Every call to a host.
    client: HostClient,
    /// Who leads (see `leadership.rs`).
    leadership: Arc<leadership::Leadership>,
    /// When this replica last started to lead (or started): hosts get
    /// until `heartbeat_timeout` after it to report.
    started: Mutex<Instant>,
    placements: AtomicU64,
    host_losses: AtomicU64,
    /// Cluster events, live and the last kept (`events.rs`).
    events: events::Events,
    down: Mutex<BTreeSet<String>>,
    /// (workload, host) pairs whose start the host confirmed.
    confirmed: Mutex<BTreeSet<(String, String)>>,
    /// Replicas being upgraded, and rollouts a host refused.
    rollouts: Mutex<rollout::Rollouts>,
    /// Live migrations by id.
    migrations: Mutex<BTreeMap<String, roam_proto::MigrationInfo>>,
    /// Workloads an operator's restore is moving: the reconciler leaves them
    /// alone meanwhile.
    busy: Mutex<BTreeSet<String>>,
    /// Replicas (workload, host) the reconciler is moving off a host that
    /// no longer meets their rules.
    moving: Mutex<BTreeSet<(String, String)>>,
    /// Drains under way, by host: whoever asks for a host's drain again
    /// (the CLI after losing its connection, the host on SIGTERM) waits
    /// for the same one.
    drains: Mutex<HashMap<String, drain::Draining>>,
    /// Migrations the scheduler is unsure of (a restart interrupted them,
    /// an abort did not arrive, a target did not answer after the commit
    /// point), whose hosts are still to be asked where they got to.
    pending: Mutex<BTreeSet<String>>,
    /// Workload generations (fencing tokens), mirrored from the store.
    generations: Mutex<HashMap<String, u64>>,
    metrics: metrics::Metrics,
    /// Host revocations since start: a host whose `revocations_seen` is
    /// lower is sent the revocation list again.
    revocations: AtomicU64,
    /// Wakes the loop that sends hosts the revocation list.
    revocations_changed: tokio::sync::Notify,
    /// Something the reconciler should look at changed since its last round.
    changed: std::sync::atomic::AtomicBool,
    /// Wakes the reconciler as soon as something changed.
    wake: tokio::sync::Notify,
    /// Workloads and cordons as the store holds them, kept in memory so a
    /// reconcile round or a lookup reads no file: every change goes to the
    /// store first, then here.
    desired: RwLock<Desired>,
    /// Standbys by workload, then by primary host (recorded in the store
    /// with the placement, role `standby`).
    standbys: Mutex<BTreeMap<String, BTreeMap<String, StandbyPair>>>,
    /// When each (workload, primary) pair was last sent to its hosts.
    standby_sent: Mutex<HashMap<(String, String), Instant>>,
    /// Routes read from a shared store, by workload: how a follower (and a
    /// leader whose hosts have not reported yet) serves the ingress.
    stored_routes: RwLock<HashMap<String, ingress::StoredRoute>>,
    /// Held while a follower applies what it read from the store, and
    /// while a replica takes the lead (`follower.rs`).
    view_lock: Mutex<()>,
    /// How a follower reaches the leader (`follower.rs`).
    leader_http: reqwest::Client,
    /// See [`Scheduler::spec_lock`].
    spec_locks: [Mutex<()>; SPEC_LOCKS],
    /// Signs the operator console's sessions (`console.rs`).
    console: console::Console,
    /// sha256 (hex) of the scrape credential, if one is set.
    scrape: Option<String>,
    /// OCI registries, for deploys by reference.
    registries: crate::oci::Registries,
    /// Keys one of which must have signed a module (`--require-signed`).
    trusted_keys: Vec<crate::oci::PublicKey>,
}

/// Locks spec changes take, by workload name.
const SPEC_LOCKS: usize = 64;

/// What a replica is to its workload.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum ReplicaRole {
    /// Serves the workload.
    Primary,
    /// Keeps the state of the primary on host `of`, from the checkpoints
    /// only that host may send (with `key`).
    Standby {
        /// The primary's host.
        of: String,
        /// The secret the primary presents with each checkpoint.
        key: String,
    },
}

/// A primary's standby, as the scheduler records it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct StandbyPair {
    /// The standby's host.
    host: String,
    /// The secret the primary presents with each checkpoint.
    key: String,
}

/// Where a workload is placed, as the store keeps it: host → role.
type Placement = BTreeMap<String, ReplicaRole>;

/// The store's record of a workload's placement: its primaries and the
/// standbys of those that have one.
fn placement_record(
    primaries: impl IntoIterator<Item = String>,
    standbys: Option<&BTreeMap<String, StandbyPair>>,
) -> Placement {
    let mut placement: Placement = primaries
        .into_iter()
        .map(|h| (h, ReplicaRole::Primary))
        .collect();
    for (primary, pair) in standbys.into_iter().flatten() {
        placement.insert(
            pair.host.clone(),
            ReplicaRole::Standby {
                of: primary.clone(),
                key: pair.key.clone(),
            },
        );
    }
    placement
}

/// A workload as the store keeps it: its spec, and the revision before
/// (older records have none).
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredWorkload {
    #[serde(flatten)]
    spec: WorkloadSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    previous: Option<WorkloadSpec>,
}

/// The stored state every replica keeps in memory.
struct View {
    tokens: HashMap<String, TokenRecord>,
    assignments: BTreeMap<String, BTreeSet<String>>,
    standbys: BTreeMap<String, BTreeMap<String, StandbyPair>>,
    desired: Desired,
    generations: HashMap<String, u64>,
}

#[derive(Default)]
struct Desired {
    workloads: BTreeMap<String, WorkloadSpec>,
    /// Each workload's revision before its current one (what `roam
    /// rollout undo` goes back to, and what replicas not yet replaced
    /// run).
    previous: BTreeMap<String, WorkloadSpec>,
    cordoned: BTreeSet<String>,
    /// Cordoned hosts whose drain has not ended.
    draining: BTreeSet<String>,
}

/// A refusal: the status and message of an error answer (small, unlike a
/// `Response`, so helpers can return it in a `Result`).
#[derive(Debug)]
struct Refusal(StatusCode, String);

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Refusal {
        Refusal(status, message.into())
    }
}

impl axum::response::IntoResponse for Refusal {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

/// Parse a JSON body after the caller has been authenticated, so a wrong
/// token gets 401 whatever the body.
fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))
}

/// Run the scheduler until Ctrl-C.
pub async fn run(config: ServerConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(config.data_dir.join("modules"))
        .with_context(|| format!("cannot create `{}`", config.data_dir.display()))?;
    if matches!(config.store, Some(crate::store::StoreLocation::Etcd { .. }))
        && (config.leader_ttl < Duration::from_secs(2) || config.leader_ttl.subsec_nanos() != 0)
    {
        anyhow::bail!(
            "--leader-ttl must be whole seconds, 2 s at least (etcd leases count whole seconds, and etcd's minimum is 2 s with its default election timeout)"
        );
    }
    let store = match &config.store {
        Some(location) => Store::at(location)?,
        None => Store::open(&config.data_dir.join("state.redb"))?,
    };
    // The CA first: `roam up` and the tests wait for the admin token, and
    // the CA is there by then.
    let tls = if config.insecure_plaintext {
        tracing::warn!(
            "--insecure-plaintext: tokens, secrets, workload state and memory pages cross the network in cleartext, and hosts are not authenticated"
        );
        None
    } else {
        Some(identity::ClusterTls::load(&config, &store)?)
    };
    bootstrap_admin(&config, &store)?;
    let console = console::Console::load(&store)?;
    let registries = crate::oci::Registries::new(
        config.registry_ca.as_deref(),
        config.insecure_registries.clone(),
        crate::oci::Credentials::from_docker_config()?,
    )?;
    let trusted_keys = config
        .require_signed
        .iter()
        .map(|p| crate::oci::PublicKey::load(p))
        .collect::<Result<Vec<_>, _>>()?;
    let scrape = match &config.metrics_token_file {
        Some(path) => Some(metrics::load_scrape_credential(path)?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on `{}`", config.listen))?;
    let local = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = config
        .advertise
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{}", roam_tls::reachable(local, None)));
    let me = roam_proto::SchedulerMember {
        id: config.replica.clone().unwrap_or_else(|| {
            url.split("://")
                .nth(1)
                .unwrap_or(&url)
                .trim_end_matches('/')
                .to_string()
        }),
        url,
        started_unix_ms: migrations::now_ms(),
        leading_since_unix_ms: None,
    };
    let epoch = me.started_unix_ms;
    let leadership = Arc::new(leadership::Leadership::new(
        store.election(),
        me,
        config.leader_ttl,
    ));
    let transport = match &tls {
        Some(t) => t.transport()?,
        None => roam_tls::Transport::Plain,
    };
    let server_tls = match &tls {
        Some(t) => Some(t.server_config()?),
        None => None,
    };
    let mut serve_options = roam_tls::ServeOptions::new(server_tls);
    serve_options.max_connections_per_ip = config.max_connections_per_address.max(1);
    if let Some(t) = &tls {
        serve_options.revoked = t.revoked.clone();
    }
    // No overall timeout: the event stream a follower passes on is long.
    let leader_http =
        transport.client(reqwest::Client::builder().connect_timeout(follower::CONNECT_TIMEOUT))?;
    let scheduler = Arc::new(Scheduler {
        tls,
        store,
        tokens: RwLock::new(HashMap::new()),
        access: access::rules(),
        hosts: DashMap::new(),
        liveness: liveness::Liveness::bind(local),
        assignments: Mutex::new(BTreeMap::new()),
        client: HostClient::new(&transport, leadership.clone())?,
        leadership,
        transport,
        started: Mutex::new(Instant::now()),
        placements: AtomicU64::new(0),
        host_losses: AtomicU64::new(0),
        revocations: AtomicU64::new(0),
        revocations_changed: tokio::sync::Notify::new(),
        events: events::Events::new(epoch),
        down: Mutex::new(BTreeSet::new()),
        confirmed: Mutex::new(BTreeSet::new()),
        rollouts: Mutex::default(),
        migrations: Mutex::new(BTreeMap::new()),
        pending: Mutex::new(BTreeSet::new()),
        busy: Mutex::new(BTreeSet::new()),
        moving: Mutex::new(BTreeSet::new()),
        drains: Mutex::new(HashMap::new()),
        generations: Mutex::new(HashMap::new()),
        metrics: metrics::Metrics::default(),
        changed: std::sync::atomic::AtomicBool::new(true),
        wake: tokio::sync::Notify::new(),
        desired: RwLock::new(Desired::default()),
        standbys: Mutex::new(BTreeMap::new()),
        standby_sent: Mutex::new(HashMap::new()),
        stored_routes: RwLock::new(HashMap::new()),
        view_lock: Mutex::new(()),
        leader_http,
        spec_locks: std::array::from_fn(|_| Mutex::new(())),
        console,
        scrape,
        registries,
        trusted_keys,
        config,
    });
    if scheduler.leadership.leads() {
        // The embedded store: this scheduler alone, leading from the start.
        scheduler.reload()?;
    } else {
        // A first campaign before serving: the first replica of a cluster
        // leads as soon as it listens.
        let s = scheduler.clone();
        tokio::task::spawn_blocking(move || s.first_campaign()).await?;
    }
    tokio::spawn(scheduler.clone().leadership_loop());
    tokio::spawn(scheduler.clone().view_loop());
    tokio::spawn(scheduler.clone().reconcile_loop());
    tokio::spawn(scheduler.clone().renew_own_loop());
    tokio::spawn(scheduler.clone().revocations_loop());
    tokio::spawn(scheduler.clone().liveness_loop());
    // Every route from the access table, its rule checked before any body
    // is read; a follower sends callers to the leader first.
    let app = access::router(&scheduler)
        .route_layer(axum::middleware::from_fn_with_state(
            scheduler.clone(),
            leadership::leader_only,
        ))
        .with_state(scheduler.clone());
    eprintln!("roam scheduler: listening on {scheme}://{local}");
    let served = roam_tls::serve(listener, app, serve_options, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await;
    // Hand the lead over now rather than after the lease's TTL.
    let s = scheduler.clone();
    let _ = tokio::task::spawn_blocking(move || s.resign()).await;
    served.context("scheduler API server failed")
}

/// Create the first admin token, once for the cluster, and write it to the
/// data directory (`admin.token`) of the scheduler that created it.
fn bootstrap_admin(config: &ServerConfig, store: &Store) -> anyhow::Result<()> {
    let token_file = config.data_dir.join("admin.token");
    let has_admin = |store: &Store| -> anyhow::Result<bool> {
        Ok(store
            .tokens::<TokenRecord>()?
            .iter()
            .any(|(_, r)| r.role == Role::Admin))
    };
    if has_admin(store)? {
        return Ok(());
    }
    let token = auth::new_token()?;
    let hash = auth::hash_token(&token);
    let record = TokenRecord {
        hash: hash.clone(),
        role: Role::Admin,
        created: auth::now_unix(),
        expires: None,
        uses_left: None,
    };
    // The file first: a token recorded but written nowhere would admit
    // nobody.
    write_private(&token_file, &token)?;
    let created = if store.shared() {
        store.bootstrap_admin(&hash, &record)?
    } else {
        store.put_token(&hash, &record)?;
        true
    };
    if created {
        eprintln!(
            "roam scheduler: admin token written to {}",
            token_file.display()
        );
    } else {
        // Another replica created the cluster's first one.
        let _ = std::fs::remove_file(&token_file);
    }
    Ok(())
}

pub use roam_tls::write_private;

impl Scheduler {
    /// Load every record from the store into memory, as at start or when
    /// this replica takes the lead, and forget the hosts (they report
    /// again).
    fn reload(&self) -> anyhow::Result<()> {
        let view = self.read_view()?;
        self.apply_view(view);
        self.hosts.clear();
        self.liveness.clear();
        for set in [&self.down, &self.busy] {
            set.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
        self.confirmed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.moving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.standby_sent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.migrations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.load_migrations()?;
        self.load_revoked()?;
        *self.started.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        Ok(())
    }

    /// The stored state a follower keeps a copy of, read from the store.
    fn read_view(&self) -> anyhow::Result<View> {
        let tokens: HashMap<String, TokenRecord> =
            self.store.tokens::<TokenRecord>()?.into_iter().collect();
        // Exactly the recorded placements: what hosts report is checked
        // against them, never taken as they say.
        let mut assignments: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut standbys: BTreeMap<String, BTreeMap<String, StandbyPair>> = BTreeMap::new();
        for (workload, placement) in self.store.assignments::<Placement>()? {
            for (host, role) in placement {
                match role {
                    ReplicaRole::Primary => {
                        assignments
                            .entry(workload.clone())
                            .or_default()
                            .insert(host);
                    }
                    ReplicaRole::Standby { of, key } => {
                        standbys
                            .entry(workload.clone())
                            .or_default()
                            .insert(of, StandbyPair { host, key });
                    }
                }
            }
        }
        let mut workloads = BTreeMap::new();
        let mut previous = BTreeMap::new();
        for (name, stored) in self.store.workloads::<StoredWorkload>()? {
            if let Some(p) = stored.previous {
                previous.insert(name.clone(), p);
            }
            workloads.insert(name, stored.spec);
        }
        let desired = Desired {
            workloads,
            previous,
            cordoned: self.store.cordoned()?.into_iter().collect(),
            draining: self.store.draining()?.into_iter().collect(),
        };
        let generations = self.store.generations()?.into_iter().collect();
        Ok(View {
            tokens,
            assignments,
            standbys,
            desired,
            generations,
        })
    }

    /// Put what [`Scheduler::read_view`] read in memory.
    fn apply_view(&self, view: View) {
        *self.tokens.write().unwrap_or_else(|e| e.into_inner()) = view.tokens;
        *self.assignments.lock().unwrap_or_else(|e| e.into_inner()) = view.assignments;
        *self.standbys.lock().unwrap_or_else(|e| e.into_inner()) = view.standbys;
        *self.desired.write().unwrap_or_else(|e| e.into_inner()) = view.desired;
        *self.generations.lock().unwrap_or_else(|e| e.into_inner()) = view.generations;
    }

    /// How long ago this replica started, or last took the lead.
    fn leading_for(&self) -> Duration {
        self.started
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
    }

    /// Where the store is, for `roam get schedulers`.
    fn store_description(&self) -> String {
        match &self.config.store {
            Some(crate::store::StoreLocation::Etcd {
                endpoints,
                prefix,
                tls,
            }) => format!(
                "etcd {} (prefix {prefix}{})",
                endpoints.join(","),
                if tls.is_some() {
                    ", TLS with a client certificate"
                } else {
                    ", plaintext"
                }
            ),
            Some(crate::store::StoreLocation::Redb(path)) => format!("redb {}", path.display()),
            None => format!("redb {}", self.config.data_dir.join("state.redb").display()),
        }
    }

    /// Publish an event to `/v1/events` subscribers (and the log).
    fn role(&self, headers: &HeaderMap) -> Option<(String, Role)> {
        // Without a bearer token, the console's session cookie.
        let Some(bearer) = roam_proto::reply::bearer(headers) else {
            return self.session_role(headers);
        };
        // A join token may be presented whole, with the CA hash it carries.
        let token = roam_proto::auth::JoinToken::parse(bearer).secret;
        let hash = auth::hash_token(token);
        let tokens = self.tokens.read().unwrap_or_else(|e| e.into_inner());
        tokens
            .get(&hash)
            .filter(|r| r.live(auth::now_unix()))
            .map(|r| (hash, r.role.clone()))
    }

    /// The hash of the join token presented, if it is one (no copy of the
    /// token's labels: this runs for every heartbeat).
    fn join_token(&self, headers: &HeaderMap) -> Option<String> {
        let token = roam_proto::auth::JoinToken::parse(roam_proto::reply::bearer(headers)?).secret;
        let hash = auth::hash_token(token);
        let tokens = self.tokens.read().unwrap_or_else(|e| e.into_inner());
        tokens
            .get(&hash)
            .is_some_and(|r| matches!(r.role, Role::Join { .. }) && r.live(auth::now_unix()))
            .then_some(hash)
    }

    /// Whether the token presented was one, but has expired or run out.
    fn spent_token(&self, headers: &HeaderMap) -> bool {
        let Some(token) = roam_proto::reply::bearer(headers) else {
            return false;
        };
        let hash = auth::hash_token(roam_proto::auth::JoinToken::parse(token).secret);
        self.tokens
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&hash)
            .is_some_and(|r| !r.live(auth::now_unix()))
    }

    /// Count one join against a join token's uses, if it still has one
    /// (checked and taken under one lock, so two joins cannot share the
    /// last use). `false`: used up or gone.
    fn take_join_use(&self, hash: &str) -> Result<bool, crate::store::StoreError> {
        let mut tokens = self.tokens.write().unwrap_or_else(|e| e.into_inner());
        let Some(record) = tokens.get_mut(hash) else {
            return Ok(false);
        };
        if !record.live(auth::now_unix()) {
            return Ok(false);
        }
        if let Some(left) = record.uses_left {
            let mut used = record.clone();
            used.uses_left = Some(left.saturating_sub(1));
            self.store.put_token(hash, &used)?;
            *record = used;
        }
        Ok(true)
    }

    /// The host calling a route meant for hosts: over TLS the one its
    /// certificate names, if the registry knows it; in plaintext anyone with
    /// a join token (`None`: no host in particular).
    fn calling_host(
        &self,
        peer: &roam_tls::Peer,
        headers: &HeaderMap,
    ) -> Result<Option<String>, Refusal> {
        if self.tls.is_some() {
            match peer.host() {
                Some(h) if self.hosts.contains_key(h) => Ok(Some(h.to_string())),
                Some(h) => Err(Refusal::new(
                    StatusCode::FORBIDDEN,
                    format!("host `{h}` has not joined"),
                )),
                None => Err(Refusal::new(
                    StatusCode::UNAUTHORIZED,
                    "a host certificate is required",
                )),
            }
        } else if self.join_token(headers).is_some() {
            Ok(None)
        } else {
            Err(Refusal::new(
                StatusCode::UNAUTHORIZED,
                "a join token is required",
            ))
        }
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

    /// Whether the desired state has a workload called `name`.
    fn has_workload(&self, name: &str) -> bool {
        self.desired
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .workloads
            .contains_key(name)
    }

    fn cordoned(&self) -> BTreeSet<String> {
        self.desired
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .cordoned
            .clone()
    }

    /// Create or replace a workload: in the store, then in memory. A
    /// change of what its replicas run (module, instance settings) is a
    /// new revision, and the one it replaces is kept as the previous;
    /// `undo` swaps the two instead. Returns the spec as stored.
    fn put_spec(
        &self,
        spec: &WorkloadSpec,
        undo: bool,
    ) -> Result<WorkloadSpec, crate::store::StoreError> {
        // Two changes of one workload one after the other, so memory ends
        // as the store does; changes of different workloads side by side.
        let _one = self.spec_lock(&spec.name);
        let (current, previous) = {
            let desired = self.desired.read().unwrap_or_else(|e| e.into_inner());
            (
                desired.workloads.get(&spec.name).cloned(),
                desired.previous.get(&spec.name).cloned(),
            )
        };
        let mut spec = spec.clone();
        let previous = match current {
            None => {
                spec.revision = 1;
                None
            }
            Some(current) if !undo && current.same_instance(&spec) => {
                spec.revision = current.revision;
                previous
            }
            Some(current) => {
                // Revisions only grow: an undo runs the old settings as a
                // new revision, so every host sees a change.
                spec.revision = current.revision.max(previous.map_or(0, |p| p.revision)) + 1;
                Some(current)
            }
        };
        let stored = StoredWorkload {
            spec: spec.clone(),
            previous: previous.clone(),
        };
        self.store.put_workload(&spec.name, &stored)?;
        let mut desired = self.desired.write().unwrap_or_else(|e| e.into_inner());
        desired.workloads.insert(spec.name.clone(), spec.clone());
        match previous {
            Some(p) => desired.previous.insert(spec.name.clone(), p),
            None => desired.previous.remove(&spec.name),
        };
        drop(desired);
        self.touch();
        Ok(spec)
    }

    /// The revision of `workload` the copy on `host` runs and its module,
    /// as the host last reported.
    fn running_revision(&self, workload: &str, host: &str) -> Option<(u64, String)> {
        self.hosts.get(host).and_then(|e| {
            e.instances
                .iter()
                .find(|i| i.workload == workload)
                .map(|i| (i.revision, i.digest.clone()))
        })
    }

    /// What a host is told to run for the copy of `spec`'s workload on
    /// `host` (a migration's target, its standby): the revision that copy
    /// runs — the current one, the one before, or, after deploys in quick
    /// succession, an older one, run with the current settings and the
    /// module it reports.
    fn instance_for(
        &self,
        spec: &WorkloadSpec,
        host: &str,
        generation: u64,
    ) -> roam_proto::StartInstance {
        let Some((revision, digest)) = self.running_revision(&spec.name, host) else {
            return spec.instance(generation);
        };
        if revision == spec.revision {
            return spec.instance(generation);
        }
        match self.previous_spec(&spec.name) {
            Some(p) if p.revision == revision => p.instance(generation),
            _ => roam_proto::StartInstance {
                digest,
                revision,
                ..spec.instance(generation)
            },
        }
    }

    /// The revision before `name`'s current one.
    fn previous_spec(&self, name: &str) -> Option<WorkloadSpec> {
        self.desired
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .previous
            .get(name)
            .cloned()
    }

    /// Delete a workload; `true` if it existed.
    fn delete_spec(&self, name: &str) -> Result<bool, crate::store::StoreError> {
        let _one = self.spec_lock(name);
        let existed = self.store.delete_workload(name)?;
        let mut desired = self.desired.write().unwrap_or_else(|e| e.into_inner());
        desired.workloads.remove(name);
        desired.previous.remove(name);
        drop(desired);
        self.touch();
        Ok(existed)
    }

    /// The lock changes of workload `name`'s spec take (one of
    /// [`SPEC_LOCKS`], by the name's hash).
    fn spec_lock(&self, name: &str) -> std::sync::MutexGuard<'_, ()> {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let hash = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .hash_one(name);
        let i = (hash % SPEC_LOCKS as u64) as usize;
        self.spec_locks[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Cordon or uncordon a host: in the store, then in memory.
    fn set_cordoned(&self, host: &str, on: bool) -> Result<(), crate::store::StoreError> {
        self.store.set_cordoned(host, on)?;
        let mut desired = self.desired.write().unwrap_or_else(|e| e.into_inner());
        if on {
            desired.cordoned.insert(host.to_string());
        } else {
            desired.cordoned.remove(host);
            desired.draining.remove(host);
        }
        drop(desired);
        self.touch();
        Ok(())
    }

    /// Cordon `host` and mark it as being drained (`true`), or as drained
    /// (`false`: still cordoned).
    fn set_draining(&self, host: &str, draining: bool) -> Result<(), crate::store::StoreError> {
        self.store.set_draining(host, draining)?;
        let mut desired = self.desired.write().unwrap_or_else(|e| e.into_inner());
        desired.cordoned.insert(host.to_string());
        if draining {
            desired.draining.insert(host.to_string());
        } else {
            desired.draining.remove(host);
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

    /// Record in the store that `workload` is placed on `hosts`, before
    /// anything acts on it (the caller holds the assignments' lock).
    fn record_placement(
        &self,
        workload: &str,
        hosts: &BTreeSet<String>,
    ) -> Result<(), crate::store::StoreError> {
        self.store
            .put_assignment(workload, self.placement_of(workload, hosts).as_ref())
    }

    /// What the store keeps of `workload` placed on `hosts` (with its
    /// standbys); `None`: placed nowhere.
    fn placement_of(&self, workload: &str, hosts: &BTreeSet<String>) -> Option<Placement> {
        let standbys = self.standbys.lock().unwrap_or_else(|e| e.into_inner());
        let placement = placement_record(hosts.iter().cloned(), standbys.get(workload));
        (!placement.is_empty()).then_some(placement)
    }

    /// One reconcile round's placement changes, recorded in as few store
    /// commits as it allows (the reconciler places thousands of replicas in
    /// one round when many hosts die): every replica on a host not in
    /// `alive` is lost (recorded so: a host that comes back does not get it
    /// back by reporting it), and each of `adds` is placed. A workload's
    /// loss and its new placement are one write. `recorded` hears of the
    /// adds of each commit as it lands, before the other commits do, so
    /// their starts can be sent meanwhile; an add whose commit failed is
    /// never passed on (nor started).
    pub(super) fn record_round(
        &self,
        alive: &BTreeSet<String>,
        adds: &[(String, String)],
        mut recorded: impl FnMut(Vec<(String, String)>),
    ) {
        let began = Instant::now();
        // Held throughout: no other writer interleaves with these records,
        // so memory and store stay in step.
        let mut assignments = self.assignments.lock().unwrap_or_else(|e| e.into_inner());
        let mut next: BTreeMap<String, (BTreeSet<String>, usize)> = BTreeMap::new();
        for (workload, hosts) in assignments.iter() {
            let kept: BTreeSet<String> = hosts
                .iter()
                .filter(|h| alive.contains(h.as_str()))
                .cloned()
                .collect();
            if kept.len() < hosts.len() {
                let lost = hosts.len() - kept.len();
                next.insert(workload.clone(), (kept, lost));
            }
        }
        for (workload, host) in adds {
            next.entry(workload.clone())
                .or_insert_with(|| (assignments.get(workload).cloned().unwrap_or_default(), 0))
                .0
                .insert(host.clone());
        }
        if next.is_empty() {
            return;
        }
        let changes: Vec<(String, BTreeSet<String>, usize)> = next
            .into_iter()
            .map(|(w, (hosts, lost))| (w, hosts, lost))
            .collect();
        let records: Vec<(String, Option<Placement>)> = changes
            .iter()
            .map(|(w, hosts, _)| (w.clone(), self.placement_of(w, hosts)))
            .collect();
        let mut adds_of: HashMap<&str, Vec<&String>> = HashMap::new();
        for (workload, host) in adds {
            adds_of.entry(workload.as_str()).or_default().push(host);
        }
        let mut commits = 0usize;
        self.store.put_assignments_each(&records, |range, result| {
            commits += 1;
            let mut started = Vec::new();
            for (workload, hosts, lost) in changes.get(range).into_iter().flatten() {
                if let Err(e) = &result {
                    tracing::error!(%workload, error = %e, "cannot record the placement; not starting");
                    continue;
                }
                self.host_losses.fetch_add(*lost as u64, Ordering::Relaxed);
                if hosts.is_empty() {
                    assignments.remove(workload);
                } else {
                    assignments.insert(workload.clone(), hosts.clone());
                }
                for host in adds_of.get(workload.as_str()).into_iter().flatten() {
                    started.push((workload.clone(), (*host).clone()));
                }
            }
            if !started.is_empty() {
                recorded(started);
            }
        });
        tracing::debug!(
            records = records.len(),
            adds = adds.len(),
            commits,
            took_ms = began.elapsed().as_secs_f64() * 1e3,
            "reconcile round recorded"
        );
    }

    /// Where `workload` is placed now, as the store keeps it.
    fn placement(&self, workload: &str) -> Placement {
        let primaries = self.placed_on(workload);
        let standbys = self.standbys.lock().unwrap_or_else(|e| e.into_inner());
        placement_record(primaries, standbys.get(workload))
    }

    /// The hosts `workload` is placed on (starts in flight included).
    fn placed_on(&self, workload: &str) -> Vec<String> {
        self.assignments
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(workload)
            .map(|h| h.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Where `host` is reached, if the registry knows it.
    fn endpoint(&self, host: &str) -> Option<Endpoint> {
        self.hosts.get(host).map(|e| e.endpoint(host))
    }
}
