//! Wire types of the Roam cluster protocol (HTTP/JSON under `/v1/`).
//!
//! Shared by `roam scheduler`, `roam host` and the CLI so that no daemon
//! depends on another's internals. Every request carries
//! `Authorization: Bearer TOKEN`.
#![deny(missing_docs)]

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Labels: key → value.
pub type Labels = BTreeMap<String, String>;

/// `POST /v1/hosts/join` (join token): a host announces itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// Host name, unique in the cluster.
    pub name: String,
    /// Base URL of the host's API, for example `http://127.0.0.1:7801`.
    pub url: String,
    /// Labels the host claims; trusted ones must match its token.
    pub labels: Labels,
    /// Capacity.
    pub capacity: Capacity,
    /// CPU architecture (`x86_64`, `aarch64`, ...).
    pub arch: String,
    /// Engine compatibility key of the host's runtime.
    pub engine: String,
    /// How the host executes Wasm: `cranelift` (native code) or `pulley`
    /// (portable interpreter). Becomes the host's `engine` label.
    #[serde(default)]
    pub engine_kind: String,
    /// Workloads already running (a host rejoining a restarted scheduler).
    #[serde(default)]
    pub instances: Vec<InstanceStatus>,
}

/// The scheduler's answer to a join.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinResponse {
    /// Labels the host ended up with (its own plus the token's trusted ones).
    pub labels: Labels,
    /// Secret the scheduler presents on every call to this host's control API.
    pub host_secret: String,
    /// Heartbeat period in milliseconds.
    pub heartbeat_ms: u64,
}

/// What a host can hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    /// Memory for workloads, bytes.
    pub memory: u64,
    /// Instance slots.
    pub slots: u32,
}

/// `POST /v1/hosts/{name}/heartbeat` (join token).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Capacity (may change, for example when a provider resizes a node).
    #[serde(default)]
    pub capacity: Capacity,
    /// CPU architecture.
    #[serde(default)]
    pub arch: String,
    /// Engine compatibility key.
    #[serde(default)]
    pub engine: String,
    /// Memory reserved by running workloads, bytes.
    pub memory_used: u64,
    /// Running workloads.
    pub instances: Vec<InstanceStatus>,
}

/// One workload instance on a host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStatus {
    /// Workload name.
    pub workload: String,
    /// Module digest (`sha256:...`).
    pub digest: String,
    /// Memory reserved, bytes.
    pub memory: u64,
    /// Generation (fencing token) the instance runs at.
    #[serde(default)]
    pub generation: u64,
}

/// `PUT /v1/instances/{workload}` on a host (host secret): run a workload.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartInstance {
    /// Module digest; the host fetches the bytes from the scheduler.
    pub digest: String,
    /// Memory cap, bytes.
    pub memory: u64,
    /// Environment variables.
    pub env: BTreeMap<String, String>,
    /// ABI grants: `kv`, `timers`, `send`.
    pub grants: Grants,
    /// Generation (fencing token): the host refuses ingress requests that
    /// carry another one.
    #[serde(default)]
    pub generation: u64,
}

/// ABI grants in a manifest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grants {
    /// Key-value store.
    #[serde(default)]
    pub kv: bool,
    /// Timers.
    #[serde(default)]
    pub timers: bool,
    /// Workloads it may send to (`*` for any).
    #[serde(default)]
    pub send: Vec<String>,
}

/// A workload as the operator describes it (`workload.toml`, `POST /v1/workloads`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadSpec {
    /// Name, unique in the cluster.
    pub name: String,
    /// Module digest (`sha256:...`), uploaded with `PUT /v1/modules`.
    pub digest: String,
    /// Replicas.
    #[serde(default = "one")]
    pub replicas: u32,
    /// Label selector hosts must match.
    #[serde(default)]
    pub selector: String,
    /// Memory cap per replica, bytes.
    #[serde(default = "default_memory")]
    pub memory: u64,
    /// Spread replicas across this label.
    #[serde(default)]
    pub spread_by: Option<String>,
    /// Environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// ABI grants.
    #[serde(default)]
    pub grants: Grants,
}

fn one() -> u32 {
    1
}

fn default_memory() -> u64 {
    64 << 20
}

/// A host as `GET /v1/nodes` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Host name.
    pub name: String,
    /// API base URL.
    pub url: String,
    /// Labels.
    pub labels: Labels,
    /// `ready`, `down` or `cordoned`.
    pub status: String,
    /// CPU architecture.
    pub arch: String,
    /// Engine compatibility key (hosts with equal keys can share compiled code).
    #[serde(default)]
    pub engine: String,
    /// Capacity.
    pub capacity: Capacity,
    /// Memory in use, bytes.
    pub memory_used: u64,
    /// Workloads running there.
    pub instances: Vec<String>,
    /// Milliseconds since the last heartbeat.
    pub last_seen_ms: u64,
}

/// A workload as `GET /v1/workloads/{name}` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadInfo {
    /// The spec.
    pub spec: WorkloadSpec,
    /// Hosts running a replica now.
    pub hosts: Vec<String>,
    /// Why each other host was not chosen (from the last placement).
    pub rejected: BTreeMap<String, String>,
}

/// An error body.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
}

/// `PUT /v1/modules` answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleRef {
    /// `sha256:...` digest of the uploaded bytes.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
}

/// `POST /v1/tokens` (admin).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRequest {
    /// Trusted labels to bind (site, region, jurisdiction, provider).
    pub labels: Labels,
}

/// A new token, shown once.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenResponse {
    /// The token.
    pub token: String,
}

/// A replica as `GET /v1/instances` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// Workload name.
    pub workload: String,
    /// Host running it.
    pub host: String,
    /// Whether that host is alive.
    pub ready: bool,
}

/// Split an ingress path `/w/{workload}/{rest}` into the workload name and
/// the path the workload sees (always starting with `/`).
///
/// ```
/// assert_eq!(roam_proto::ingress_target("/w/counter/a/b"), Some(("counter", "/a/b")));
/// assert_eq!(roam_proto::ingress_target("/w/counter"), Some(("counter", "/")));
/// assert_eq!(roam_proto::ingress_target("/v1/nodes"), None);
/// ```
pub fn ingress_target(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/w/")?;
    let (workload, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    (!workload.is_empty()).then_some((workload, path))
}

/// Header carrying the workload generation a request was routed for. A host
/// refuses (409) a request whose generation is not the one its copy runs at,
/// before the workload sees it, so the sender may safely retry elsewhere.
pub const GENERATION_HEADER: &str = "x-roam-generation";

/// Header a host sets on an error it answered before the workload saw the
/// request (wrong generation, workload not or no longer here): an ingress
/// may send such a request again elsewhere without applying it twice.
/// Hosts strip `x-roam-*` headers from workload responses.
pub const NOT_DISPATCHED_HEADER: &str = "x-roam-not-dispatched";

/// Whether a header is one of Roam's own (`x-roam-*`, any case): hosts
/// strip them from workload responses, ingresses from client requests.
///
/// ```
/// assert!(roam_proto::is_roam_header("X-Roam-Generation"));
/// assert!(!roam_proto::is_roam_header("x-request-id"));
/// ```
pub fn is_roam_header(name: &str) -> bool {
    name.get(..7)
        .is_some_and(|p| p.eq_ignore_ascii_case("x-roam-"))
}

/// Tuning of a live migration's pre-copy phase.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationOptions {
    /// Pre-copy rounds (after the full copy) before the source stops anyway.
    #[serde(default = "default_max_rounds")]
    pub max_rounds: u32,
    /// Stop pre-copying once a round's delta is at most this many bytes.
    #[serde(default = "default_final_bytes")]
    pub max_final_bytes: u64,
    /// Skip pre-copy: freeze first and send one full snapshot (the
    /// stop-and-copy baseline live migration is measured against).
    #[serde(default)]
    pub stop_and_copy: bool,
    /// TCP connections the memory's pages are streamed over at once (1 to
    /// [`MAX_PAGE_STREAMS`]): one stream is bound by the work one core does
    /// for its socket, as QEMU's multifd channels are there for.
    #[serde(default = "default_page_streams")]
    pub page_streams: u32,
}

/// Most page streams one migration may use.
pub const MAX_PAGE_STREAMS: u32 = 8;

fn default_page_streams() -> u32 {
    2
}

fn default_max_rounds() -> u32 {
    30
}

fn default_final_bytes() -> u64 {
    256 << 10
}

impl Default for MigrationOptions {
    fn default() -> Self {
        MigrationOptions {
            max_rounds: default_max_rounds(),
            max_final_bytes: default_final_bytes(),
            stop_and_copy: false,
            page_streams: default_page_streams(),
        }
    }
}

/// `POST /v1/migrations` (admin): move a running workload live.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrateRequest {
    /// Workload name.
    pub workload: String,
    /// Target host; without it, placement picks one matching `selector`
    /// (and the workload's own rules).
    #[serde(default)]
    pub to: Option<String>,
    /// Extra label selector for the target when `to` is not given.
    #[serde(default)]
    pub selector: Option<String>,
    /// Source host, needed only when the workload has several replicas.
    #[serde(default)]
    pub from: Option<String>,
    /// Pre-copy tuning.
    #[serde(default)]
    pub options: MigrationOptions,
}

/// Where a workload runs, as its `roam_restored` hook is told.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Place {
    /// Host name.
    pub host: String,
    /// Site label of the host.
    pub site: String,
}

/// Scheduler → target host, `POST /v1/migrations/{id}/prepare`: get ready
/// to receive `workload`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrepareMigration {
    /// Workload name.
    pub workload: String,
    /// How to run it (module digest, memory cap, grants; the new generation).
    pub instance: StartInstance,
    /// Secret the source presents when it streams state to this host.
    pub key: String,
    /// Where the workload comes from.
    pub source: Place,
}

/// Scheduler → source host, `POST /v1/migrations/{id}/send`: stream the
/// workload's state to the target. The answer is a stream of
/// [`MigrationProgress`] lines (JSON, one per line); the last has phase
/// `prepared` (the source is frozen, the target holds the final state) or
/// `failed` (the source serves on).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendMigration {
    /// Workload name.
    pub workload: String,
    /// Target host's API base URL.
    pub target_url: String,
    /// Secret for the target (see [`PrepareMigration::key`]).
    pub key: String,
    /// Generation the workload runs at on the target.
    pub generation: u64,
    /// Pre-copy tuning.
    pub options: MigrationOptions,
}

/// One progress report of a migration's source.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MigrationProgress {
    /// `precopy`, `stopping`, `prepared`, `committed` or `failed`.
    pub phase: String,
    /// Pre-copy round (0 is the full copy).
    pub round: u32,
    /// Bytes sent to the target so far.
    pub bytes_sent: u64,
    /// Bytes of the last round.
    pub last_round_bytes: u64,
    /// Measured dirty rate, bytes per second.
    pub dirty_rate: f64,
    /// Why it failed; on `prepared`, why the source could not activate the
    /// target itself (the scheduler then decides).
    #[serde(default)]
    pub error: Option<String>,
    /// On `committed` (the source activated the target and handed off):
    /// microseconds from freezing to handing off.
    #[serde(default)]
    pub downtime_us: Option<u64>,
}

/// Scheduler → both hosts, `POST /v1/migrations/{id}/commit` or `/abort`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationDecision {
    /// Target host's API base URL (where the source forwards what it held).
    #[serde(default)]
    pub target_url: String,
    /// Generation from now on: the target's on commit; on an abort after a
    /// lost target, the source resumes at this one.
    #[serde(default)]
    pub generation: u64,
}

/// What a host knows of a migration: its answer to the scheduler's
/// `GET /v1/migrations/{id}/status?workload=W&generation=G`, which a
/// restarted scheduler asks to learn whether a migration it was running
/// reached its commit point.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationStatus {
    /// `source`, `target`, or empty when the host knows nothing of it.
    #[serde(default)]
    pub role: String,
    /// As source: `sending` (may still give up by itself), `prepared`
    /// (frozen, holding requests: never resumes by itself), `committing`
    /// (activating the target), `committed` or `aborted`. As target: `receiving`, `ready` (holds the final state,
    /// not serving) or `serving` (committed: runs the workload at the
    /// migration's generation or later).
    #[serde(default)]
    pub phase: String,
}

/// Query of [`MigrationStatus`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationStatusQuery {
    /// The migration's workload.
    pub workload: String,
    /// The generation the migration gives the workload on the target.
    pub generation: u64,
}

/// A host's answer to a commit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitOutcome {
    /// On the source: microseconds from freezing to handing off.
    #[serde(default)]
    pub downtime_us: Option<u64>,
}

/// A migration as `GET /v1/migrations/{id}` shows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MigrationInfo {
    /// Migration id.
    pub id: String,
    /// Workload name.
    pub workload: String,
    /// Source host.
    pub source: String,
    /// Target host.
    pub target: String,
    /// Generation the workload gets on the target.
    pub generation: u64,
    /// `preparing`, `precopy`, `stopping`, `prepared`, `committed`, `done`,
    /// `failed` or `aborted`; `resolving` while a restarted scheduler asks
    /// the hosts where an interrupted migration got to.
    pub phase: String,
    /// Pre-copy rounds so far (the full copy is round 0).
    pub rounds: u32,
    /// Bytes streamed from source to target.
    pub bytes_sent: u64,
    /// Last measured dirty rate, bytes per second.
    pub dirty_rate: f64,
    /// Start, milliseconds since the Unix epoch.
    pub started_ms: u64,
    /// Milliseconds from start to end (or until now).
    pub total_ms: u64,
    /// Microseconds the workload did not dispatch (source frozen until the
    /// target served), when known.
    #[serde(default)]
    pub downtime_us: Option<u64>,
    /// Why it failed or was aborted.
    #[serde(default)]
    pub error: Option<String>,
    /// Phases with milliseconds since start.
    #[serde(default)]
    pub history: Vec<(String, u64)>,
}

impl MigrationInfo {
    /// Whether the migration has ended (`done`, `failed` or `aborted`).
    pub fn finished(&self) -> bool {
        matches!(self.phase.as_str(), "done" | "failed" | "aborted")
    }
}

/// `POST /v1/nodes/{host}/drain` (admin): what happened to each workload.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainOutcome {
    /// Workload name.
    pub workload: String,
    /// `migrated`, `restarted` (live migration failed; started fresh
    /// elsewhere) or `failed`.
    pub outcome: String,
    /// The live migration's id, if one was tried.
    #[serde(default)]
    pub migration: Option<String>,
    /// Details (target host, or why).
    pub detail: String,
}
