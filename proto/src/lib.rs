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
