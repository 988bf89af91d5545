//! The daemon: shared state, the listener and its routes, and the workloads
//! running here.
//!
//! Three kinds of routes on one listener:
//! - control, for the scheduler only (`Authorization: Bearer HOST_SECRET`,
//!   the secret handed out at join): `control.rs` and the migration steps
//!   the scheduler drives (`migration/mod.rs`);
//! - migration streams from another host, authenticated by a per-migration
//!   key instead (`migration/target.rs`);
//! - the ingress, `/w/{workload}/...` (`ingress.rs`).
//!
//! The router is built from one table of every route and its rule
//! (`access.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use roam_proto::{Durability, InstanceStatus, Labels, StartInstance};
use roam_runtime::abi::Place;
use roam_runtime::driver::{
    self, Checkpoints, CommitScope, DriverOptions, LocalBus, WorkloadHandle,
};
use roam_runtime::{Digest, InstanceConfig, Module, Runtime, RuntimeConfig, Workload};

use roam_proto::auth::JoinToken;
use roam_tls::{Identity, Transport};

use crate::config::HostConfig;

/// How old the last good state of a `durability = none` workload may be: a
/// trap rolls it back to a state at most this old (durable workloads keep
/// one after every event).
const LAST_GOOD_STATE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
use crate::identity::HostTls;
use crate::migration::Migrations;
use crate::scheduler_client::{SchedulerClient, Targets};

/// A workload running here: its driver, and the record reported to the
/// scheduler (module digest, memory, the generation this copy runs at).
pub(crate) struct Running {
    pub(crate) handle: WorkloadHandle,
    pub(crate) status: InstanceStatus,
    /// Its durability (`sync`: answers wait for the standby).
    pub(crate) durability: Durability,
    /// Its place in `/metrics`.
    pub(crate) tracking: crate::metrics::Tracking,
}

/// The daemon's shared state.
pub(crate) struct Host {
    pub(crate) config: HostConfig,
    pub(crate) runtime: Runtime,
    pub(crate) bus: LocalBus,
    /// Calls to other hosts (migration streams, forwarding).
    pub(crate) http: reqwest::Client,
    /// The CA and this host's certificate; `None` with
    /// `--insecure-plaintext`.
    pub(crate) tls: Option<HostTls>,
    /// How other hosts are reached (shared with `http`'s resolver).
    pub(crate) transport: Transport,
    pub(crate) scheduler: SchedulerClient,
    /// The secret the scheduler presents; set at (re)join.
    pub(crate) secret: Mutex<String>,
    /// The newest scheduler leadership term seen: control calls of older
    /// terms come from a deposed leader and are refused.
    pub(crate) term: std::sync::atomic::AtomicU64,
    /// Labels the scheduler gave this host at join.
    pub(crate) labels: Mutex<Labels>,
    pub(crate) workloads: tokio::sync::Mutex<HashMap<String, Running>>,
    /// What `/metrics` shows.
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    /// sha256 (hex) of the cluster's scrape credential, from the last
    /// join; empty: none is set, and `/metrics` is refused to everyone.
    pub(crate) scrape: Mutex<String>,
    /// The liveness channel the last join granted (`liveness.rs`).
    pub(crate) liveness: Mutex<Option<Arc<crate::liveness::Channel>>>,
    /// The URL this host's API is reached at.
    pub(crate) url: String,
    pub(crate) migrations: Migrations,
    /// Standbys kept here, by workload.
    pub(crate) standbys: tokio::sync::Mutex<HashMap<String, crate::standby::Standby>>,
    /// Checkpoint streams of workloads running here to their standbys.
    pub(crate) links: Arc<Mutex<HashMap<String, Arc<crate::standby::Link>>>>,
    /// Modules being fetched and compiled, one gate each (`modules.rs`).
    pub(crate) loading: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
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

/// Run the host daemon until the process is stopped.
pub async fn run(config: HostConfig) -> anyhow::Result<()> {
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
    let tls = if config.insecure_plaintext {
        tracing::warn!(
            "--insecure-plaintext: secrets, workload state and memory pages cross the network in cleartext, and peers are not authenticated"
        );
        None
    } else {
        Some(HostTls::bootstrap(&config).await?)
    };
    let transport = tls.as_ref().map_or(Transport::Plain, HostTls::transport);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on `{}`", config.listen))?;
    let local = listener.local_addr()?;
    let http =
        transport.client(reqwest::Client::builder().timeout(std::time::Duration::from_secs(30)))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let urls = config.schedulers();
    let reachable = roam_tls::reachable(local, urls.first().map(String::as_str));
    let bases = urls
        .iter()
        .map(|u| transport.base(&Identity::Scheduler, u))
        .collect::<Result<Vec<_>, _>>()?;
    let scheduler = SchedulerClient::new(
        http.clone(),
        Targets::new(urls, bases),
        JoinToken::parse(&config.token).secret,
    );
    let host = Arc::new(Host {
        url: config
            .advertise
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{reachable}")),
        runtime,
        bus: LocalBus::new(),
        scheduler,
        http,
        tls,
        transport,
        secret: Mutex::new(String::new()),
        term: std::sync::atomic::AtomicU64::new(0),
        labels: Mutex::new(Labels::new()),
        workloads: tokio::sync::Mutex::new(HashMap::new()),
        metrics: crate::metrics::Metrics::new(config.metrics, config.metrics_workloads),
        scrape: Mutex::new(String::new()),
        liveness: Mutex::new(None),
        migrations: Migrations::default(),
        standbys: tokio::sync::Mutex::default(),
        links: Arc::default(),
        loading: Mutex::default(),
        config,
    });
    let heartbeat = host.join().await?;
    eprintln!(
        "roam host `{}`: serving on {} (joined {}; labels {:?})",
        host.config.name,
        host.url,
        host.config.join,
        host.labels.lock().unwrap_or_else(|e| e.into_inner())
    );
    tokio::spawn(host.clone().heartbeats(heartbeat));
    tokio::spawn(host.clone().renewals());
    let server_tls = match &host.tls {
        Some(tls) => Some(tls.server_config()?),
        None => None,
    };
    let revoked = host.tls.as_ref().map(|t| t.trust.revoked().clone());

    // Every route from the access table, with the check its rule asks for.
    let leaving = host.clone();
    let app = crate::access::router(&host).with_state(host);
    let mut options = roam_tls::ServeOptions::new(server_tls);
    if let Some(revoked) = revoked {
        options.revoked = revoked;
    }
    roam_tls::serve(listener, app, options, async {
        stop_signal().await;
        tokio::select! {
            () = leaving.leave() => {}
            () = stop_signal() => tracing::warn!("a second signal: stopping now"),
        }
    })
    .await
    .context("host API server failed")
}

/// How a host runs an instance of `workload`: its memory cap, environment
/// and grants, on `place`, every other limit (CPU budget per call, ABI
/// quotas) at the runtime's defaults. `roam run --listen -f` runs a
/// workload with the same.
pub fn workload_config(
    workload: &str,
    memory: u64,
    env: &std::collections::BTreeMap<String, String>,
    grants: &roam_proto::Grants,
    place: Place,
) -> InstanceConfig {
    let mut config = InstanceConfig::new(workload);
    config.memory_limit = memory;
    config.env = env.clone().into_iter().collect();
    config.grants = grants.clone();
    config.info = place;
    config
}

impl Host {
    /// Memory in use and what runs here, as reported to the scheduler.
    pub(crate) async fn statuses(&self) -> (u64, Vec<InstanceStatus>) {
        let workloads = self.workloads.lock().await;
        let standby_memory: u64 = self
            .standbys
            .lock()
            .await
            .values()
            .map(crate::standby::Standby::memory)
            .sum();
        let status = |r: &Running| {
            let failures = r.handle.failures();
            let (standby, checkpoint_age_ms, checkpoint_bytes) = self.link_of(&r.status.workload);
            InstanceStatus {
                standby,
                checkpoint_age_ms,
                checkpoint_bytes,
                waiting_for_standby: r.handle.waiting_for_standby(),
                rolled_back: failures.rolled_back,
                restarted: failures.restarted,
                last_failure: failures.last.map(|mut text| {
                    text.truncate(text.floor_char_boundary(roam_proto::MAX_FAILURE_TEXT));
                    text
                }),
                ..r.status.clone()
            }
        };
        (
            workloads.values().map(|r| r.status.memory).sum::<u64>() + standby_memory,
            workloads.values().map(status).collect(),
        )
    }

    /// What to dial for host `name`, which registered `url`: over TLS its
    /// identity name (so its certificate must name it), else `url`.
    pub(crate) fn peer_base(&self, name: &str, url: &str) -> Result<String, roam_tls::TlsError> {
        if !self.transport.is_tls() {
            return Ok(url.trim_end_matches('/').to_string());
        }
        self.transport.base(&Identity::host(name)?, url)
    }

    pub(crate) fn authorized(&self, headers: &axum::http::HeaderMap) -> bool {
        let secret = self.secret.lock().unwrap_or_else(|e| e.into_inner());
        roam_proto::reply::presents(headers, &secret)
    }

    /// How an instance of `workload` runs here.
    pub(crate) fn instance_config(&self, workload: &str, spec: &StartInstance) -> InstanceConfig {
        let labels = self
            .labels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        workload_config(
            workload,
            spec.memory,
            &spec.env,
            &spec.grants,
            Place {
                host: self.config.name.clone(),
                site: labels.get("site").cloned().unwrap_or_default(),
            },
        )
    }

    /// Drive `instance` as `workload` (run as `spec` says) and route
    /// requests to it; a copy already running here is replaced. `fresh`: it
    /// starts from nothing, not moved here by the scheduler; a `sync` one
    /// then holds its answers until a standby has its state or the
    /// scheduler grants "unprotected" (a moved one serves under the
    /// scheduler's grant until its new standby is seeded).
    pub(crate) async fn run_workload(
        &self,
        module: Module,
        config: InstanceConfig,
        instance: Workload,
        spec: StartInstance,
        fresh: bool,
    ) {
        if let Some(old) = self
            .drive(module, config, instance, spec, fresh, None)
            .await
        {
            old.handle.stop().await;
        }
    }

    /// [`Host::run_workload`]'s work: drive `instance`, route to it, and
    /// give back the copy it replaces (its place in `/metrics` passed on
    /// with `tracking`, as an upgrade does). `hold`: a `sync` copy holds
    /// its answers until a standby has its state or the scheduler grants
    /// "unprotected" (a fresh start, or an upgrade, whose old standby
    /// holds another revision).
    pub(crate) async fn drive(
        &self,
        module: Module,
        config: InstanceConfig,
        instance: Workload,
        spec: StartInstance,
        hold: bool,
        tracking: Option<crate::metrics::Tracking>,
    ) -> Option<Running> {
        let workload = config.name.clone();
        let checkpoints = match spec.durability {
            Durability::None => Checkpoints::Every(LAST_GOOD_STATE_EVERY),
            Durability::Async | Durability::Sync => Checkpoints::EachEvent,
        };
        let handle = driver::spawn(
            self.runtime.clone(),
            module,
            config,
            instance,
            DriverOptions {
                router: Some(self.router()),
                checkpoints,
                hold: (hold && spec.durability == Durability::Sync).then_some(CommitScope::All),
                ..DriverOptions::default()
            },
        );
        self.bus.register(handle.clone());
        self.migrations.arrived(&workload);
        self.workloads.lock().await.insert(
            workload.clone(),
            Running {
                handle,
                tracking: tracking.unwrap_or_else(|| self.metrics.track()),
                durability: spec.durability,
                status: InstanceStatus {
                    workload,
                    digest: spec.digest,
                    memory: spec.memory,
                    generation: spec.generation,
                    revision: spec.revision,
                    ..InstanceStatus::default()
                },
            },
        )
    }
}

/// SIGTERM (what `systemctl stop` and `docker stop` send) or Ctrl-C.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

impl Host {
    /// Before stopping: ask the scheduler to move this host's workloads
    /// away (live), and wait until they have gone or the shutdown timeout
    /// has passed. Whatever is still here then stops with the process (the
    /// scheduler starts it elsewhere).
    pub(crate) async fn leave(&self) {
        if self.workloads.lock().await.is_empty() {
            return;
        }
        let timeout = self.config.shutdown_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        tracing::info!(
            ?timeout,
            "stopping: moving this host's workloads away first"
        );
        match self.scheduler.leave(&self.config.name, timeout).await {
            Ok(outcomes) => {
                for o in outcomes {
                    tracing::info!(workload = %o.workload, outcome = ?o.outcome, detail = %o.detail, "moved off");
                }
            }
            Err(e) => tracing::warn!(error = %e, "the scheduler could not drain this host"),
        }
        while tokio::time::Instant::now() < deadline && !self.workloads.lock().await.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let left: Vec<String> = self.workloads.lock().await.keys().cloned().collect();
        if !left.is_empty() {
            tracing::warn!(?left, "stopping with workloads still here");
        }
    }
}
