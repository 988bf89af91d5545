//! Every contract between Roam's processes: the cluster protocol (HTTP/JSON
//! under `/v1/`), the ingress, and live migration.
//!
//! Shared by `roam scheduler`, `roam host` and the CLI so that no daemon
//! depends on another's internals, and so that no route, header or phase is
//! written twice:
//! - request and response bodies (this module and [`migration`]);
//! - [`paths`]: every route pattern, and builders that percent-encode typed
//!   segments;
//! - [`headers`]: every header and upgrade name;
//! - [`pages`]: the page-stream frame format and its checks;
//! - [`auth`]: bearer credentials; [`reply`] (feature `server`): error
//!   answers as both daemons give them;
//! - [`PROTOCOL_VERSION`], carried in the join and the migration prepare.
//!
//! Every request carries `Authorization: Bearer TOKEN`.
#![deny(missing_docs)]

pub mod auth;
mod digest;
pub mod headers;
pub mod liveness;
pub mod logs;
pub mod migration;
pub mod names;
pub mod pages;
pub mod paths;
#[cfg(feature = "server")]
pub mod reply;

pub use digest::Digest;
pub use migration::*;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Labels: key → value.
pub type Labels = BTreeMap<String, String>;

/// The version of the protocol this build speaks. Providers upgrade their
/// hosts on their own schedule: a scheduler refuses a join, and a host a
/// migration prepare, that carries another version, naming both. Raise it
/// whenever a message, route or frame changes incompatibly.
pub const PROTOCOL_VERSION: u32 = 3;

/// A refusal for a peer speaking another protocol version.
///
/// ```
/// use roam_proto::{PROTOCOL_VERSION, check_protocol};
/// assert!(check_protocol("host `h`", PROTOCOL_VERSION).is_ok());
/// let e = check_protocol("host `h`", 0).unwrap_err();
/// assert!(e.contains("speaks Roam protocol 0"), "{e}");
/// assert!(e.contains(&format!("speaks {PROTOCOL_VERSION}")), "{e}");
/// ```
pub fn check_protocol(peer: &str, theirs: u32) -> Result<(), String> {
    if theirs == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(format!(
            "{peer} speaks Roam protocol {theirs}, this build speaks {PROTOCOL_VERSION}: run the same Roam release on both"
        ))
    }
}

/// `POST /v1/hosts/join` (join token): a host announces itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The host's [`PROTOCOL_VERSION`]; a scheduler refuses another.
    #[serde(default)]
    pub protocol: u32,
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
    /// A certificate signing request (PEM) for the host's key: over TLS the
    /// scheduler answers with a certificate naming this host. Empty in
    /// plaintext clusters.
    #[serde(default)]
    pub csr: String,
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
    /// The host's certificate, then the cluster CA's (PEM; TLS only).
    #[serde(default)]
    pub certificate: String,
    /// Fingerprints of the revoked certificates (sha256 of the DER, hex),
    /// which the host refuses from then on.
    #[serde(default)]
    pub revoked: Vec<String>,
    /// The leadership term of the scheduler that let it in: the host
    /// refuses control calls of older terms from then on.
    #[serde(default)]
    pub term: u64,
    /// sha256 (hex) of the cluster's scrape credential, which the host's
    /// `/metrics` asks of its callers; `None`: none is set, and the host
    /// serves its metrics to nobody. Never the credential itself, so a
    /// host's memory holds nothing that scrapes its peers.
    #[serde(default)]
    pub scrape: Option<String>,
    /// Where and with what key this host sends its liveness datagrams
    /// ([`liveness`]); `None`: it sends full reports over HTTP only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness: Option<LivenessGrant>,
}

/// A host's liveness channel to the scheduler that let it in
/// ([`liveness`]): UDP, to the address and port the host reaches the
/// scheduler's API at (what cuts the host off from the API cuts this off
/// too).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LivenessGrant {
    /// Names this host in its datagrams (random, new at every join).
    pub id: u64,
    /// The HMAC key of this host's datagrams, hex ([`liveness::KEY_LEN`]
    /// bytes); only this host and the scheduler know it.
    pub key: String,
}

/// `PUT /v1/revoked` on a host: the revoked certificates, replacing the
/// list it had.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocations {
    /// sha256 of each certificate's DER, hex.
    pub fingerprints: Vec<String>,
}

/// The answer to `POST /v1/nodes/{name}/revoke`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRevoked {
    /// The host.
    pub host: String,
    /// How many of its certificates were revoked (a host that renewed holds
    /// two for a while).
    pub certificates: usize,
    /// The workloads it ran, placed elsewhere from now on.
    pub workloads: Vec<String>,
    /// The id of the join token it joined with, if still valid: it admits
    /// new hosts until revoked (`roam token revoke ID`).
    pub join_token: Option<String>,
}

/// `POST /v1/hosts/{name}/certificate`: a host renews its certificate,
/// presenting the current one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewCertificate {
    /// A certificate signing request (PEM) for a new key.
    pub csr: String,
}

/// The answer to [`RenewCertificate`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewedCertificate {
    /// The host's new certificate, then the cluster CA's (PEM).
    pub certificate: String,
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
    /// Standbys kept here (their memory is in `memory_used`).
    #[serde(default)]
    pub standbys: Vec<StandbyStatus>,
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
    /// The workload's revision it runs.
    #[serde(default)]
    pub revision: u64,
    /// Guest failures (traps, CPU budget, memory cap) after which the
    /// instance was rolled back to its last good state, since it started
    /// on this host.
    #[serde(default)]
    pub rolled_back: u64,
    /// Guest failures after which it restarted from its initial state (it
    /// had no good state to go back to).
    #[serde(default)]
    pub restarted: u64,
    /// The last failure, as text (at most [`MAX_FAILURE_TEXT`] bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
    /// The host its checkpoints stream to, if it has a standby.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby: Option<String>,
    /// Milliseconds since the standby acknowledged the last checkpoint
    /// (the state a failover would lose is at most that old); `None`
    /// until it acknowledged one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_age_ms: Option<u64>,
    /// Bytes of checkpoints the standby acknowledged since the stream to
    /// it began (encoded, before TLS).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub checkpoint_bytes: u64,
    /// Its answers (`sync`) are held with no standby to commit them to:
    /// it waits for one, or for the scheduler to grant "unprotected".
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub waiting_for_standby: bool,
}

/// A standby a host keeps: a copy of a workload's state that is not
/// running, brought up to date by its primary's checkpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StandbyStatus {
    /// Workload name.
    pub workload: String,
    /// The host whose checkpoints it accepts.
    pub primary: String,
    /// Generation it stands by for.
    pub generation: u64,
    /// Memory it holds (the workload's cap), bytes.
    pub memory: u64,
    /// The sequence of the last checkpoint applied (0: none yet).
    pub sequence: u64,
}

/// `PUT /v1/standbys/{workload}` on a host (scheduler): keep a standby of
/// the workload for its primary on host `primary`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartStandby {
    /// How the workload runs once promoted (its generation is the one the
    /// standby stands by for).
    pub instance: StartInstance,
    /// The only host whose checkpoints it accepts.
    pub primary: String,
    /// That host's site (the promoted workload's `roam_restored` hook is
    /// told it came from there).
    #[serde(default)]
    pub primary_site: String,
    /// A secret the primary presents with each checkpoint (as its bearer
    /// token), besides its certificate.
    pub key: String,
    /// How long each grant of a lease to the primary lasts (every
    /// checkpoint it takes, and every lease request, is one), milliseconds;
    /// promotion waits until the last one has run out. 0: no leases.
    #[serde(default)]
    pub lease_ms: u64,
}

/// `PUT /v1/instances/{workload}/standby` on a host (scheduler): stream
/// the workload's checkpoints to this standby.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StandbyTarget {
    /// The standby's host.
    pub host: String,
    /// Its registered address.
    pub url: String,
    /// The key the standby expects ([`StartStandby::key`]).
    pub key: String,
    /// A checkpoint at least this often, milliseconds.
    pub interval_ms: u64,
    /// The primary serves only while it holds a lease from its standby,
    /// this long from when it sent the request the standby granted,
    /// milliseconds (0: no leases).
    #[serde(default)]
    pub lease_ms: u64,
}

/// The longest lease a host accepts, milliseconds (leases are a fraction
/// of the failure-detection time).
pub const MAX_LEASE_MS: u64 = 10 * 60 * 1000;

/// `POST /v1/standbys/{workload}/promote` on a host (scheduler): the
/// primary is gone; serve from the last checkpoint at `generation`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promote {
    /// The generation the promoted copy runs at (above the primary's).
    pub generation: u64,
}

/// `POST /v1/instances/{workload}/generation` on a host (host secret): the
/// copy there is a current replica of a workload whose generation rose
/// (another replica failed over or moved); it runs at this one from now on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaiseGeneration {
    /// The workload's generation.
    pub generation: u64,
}

/// The answer to a checkpoint (`POST /v1/standbys/{workload}/checkpoint`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointAck {
    /// The sequence the standby now holds.
    pub sequence: u64,
}

/// The largest HTTP body a workload takes or answers (its quota), and so
/// the most a proxy reads of one.
pub const MAX_HTTP_BODY: usize = 8 << 20;

/// The largest encoded snapshot a host restores from, and so the most the
/// scheduler reads of one.
pub const MAX_SNAPSHOT: usize = 1 << 30;

/// The most of a control-plane JSON answer read (a host's or the
/// scheduler's), logs pages aside.
pub const MAX_JSON_ANSWER: usize = 16 << 20;

/// The longest failure text a host reports per instance.
pub const MAX_FAILURE_TEXT: usize = 512;

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
    /// The workload's durability: how often the host keeps its last good
    /// state for rollbacks.
    #[serde(default)]
    pub durability: Durability,
    /// The workload's revision this is (`WorkloadSpec::revision`).
    #[serde(default)]
    pub revision: u64,
}

/// Capabilities of the guest ABI granted to a workload (`workload.toml`,
/// the instance spec, the runtime's checks). Everything is denied by
/// default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grants {
    /// The private key-value store.
    #[serde(default)]
    pub kv: bool,
    /// Timers.
    #[serde(default)]
    pub timers: bool,
    /// Workloads it may send messages to; `*` means any.
    #[serde(default)]
    pub send: Vec<String>,
}

impl Grants {
    /// Every capability, for a developer's local loop.
    pub fn all() -> Grants {
        Grants {
            kv: true,
            timers: true,
            send: vec!["*".into()],
        }
    }

    /// Whether `name` is granted (`kv`, `timers`, `send`).
    pub fn allows(&self, capability: &str) -> bool {
        match capability {
            "kv" => self.kv,
            "timers" => self.timers,
            "send" => !self.send.is_empty(),
            _ => false,
        }
    }

    /// Whether messages to `to` are allowed.
    pub fn may_send_to(&self, to: &str) -> bool {
        self.send.iter().any(|s| s == "*" || s == to)
    }
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
    /// What a failure may cost the workload's state.
    #[serde(default)]
    pub durability: Durability,
    /// With `async` durability, the longest time between two checkpoints,
    /// milliseconds (default [`DEFAULT_CHECKPOINT_INTERVAL_MS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_interval_ms: Option<u64>,
    /// How a change of what each replica runs reaches the running ones.
    #[serde(default, skip_serializing_if = "RolloutPolicy::is_default")]
    pub rollout: RolloutPolicy,
    /// Where the module came from: `oci://REGISTRY/REPOSITORY:TAG` as
    /// deployed (the scheduler pulls it, checks it, and pins it here as
    /// `…@sha256:MANIFEST`, with `digest` the module's); `None` for a
    /// module uploaded to the scheduler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// What each replica runs, numbered: set by the scheduler, one more
    /// each time a deploy changes the module or an instance setting
    /// (memory, environment, grants, durability). A caller's value is
    /// ignored.
    #[serde(default)]
    pub revision: u64,
}

/// How a new revision replaces a workload's running replicas (`roam deploy
/// --max-unavailable`, `--discard-state`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutPolicy {
    /// Replicas being replaced at once (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<u32>,
    /// Let a version without the upgrade hooks replace one that runs: its
    /// linear memory starts anew (host-side state — key-value data,
    /// timers, messages — still carries over). Without it such a rollout
    /// is refused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub discard_state: bool,
}

impl RolloutPolicy {
    /// Replicas replaced at once.
    pub fn max_unavailable(&self) -> u32 {
        self.max_unavailable.unwrap_or(1).max(1)
    }

    fn is_default(&self) -> bool {
        *self == RolloutPolicy::default()
    }
}

/// The most replicas a rollout replaces at once.
pub const MAX_UNAVAILABLE: u32 = 1000;

impl WorkloadSpec {
    /// What a host is told to run for one copy of this workload at
    /// `generation`.
    pub fn instance(&self, generation: u64) -> StartInstance {
        StartInstance {
            digest: self.digest.clone(),
            memory: self.memory,
            env: self.env.clone(),
            grants: self.grants.clone(),
            generation,
            durability: self.durability,
            revision: self.revision,
        }
    }

    /// Whether `other` runs as this one does: the same module and
    /// instance settings (a change of replicas, placement rules or
    /// rollout policy is not a new revision).
    pub fn same_instance(&self, other: &WorkloadSpec) -> bool {
        let other = WorkloadSpec {
            revision: self.revision,
            ..other.clone()
        };
        self.instance(0) == other.instance(0)
    }
}

/// `POST /v1/instances/{workload}/upgrade` on a host: run `instance` (a
/// newer or older revision) in place of the copy here, with its state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeInstance {
    /// What to run instead (its generation is the copy's).
    pub instance: StartInstance,
    /// Start the new version's memory anew when the two versions cannot
    /// hand it over through the upgrade hooks.
    #[serde(default)]
    pub discard_state: bool,
}

/// How a copy's linear memory reached its new revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateCarried {
    /// The same module: its whole state, exactly (a snapshot restored).
    Snapshot,
    /// Through the upgrade hooks (`roam_upgrade_export`, then
    /// `roam_upgrade_import`).
    Hooks,
    /// Started anew (`--discard-state`); host-side state carried over.
    Discarded,
    /// Nothing to do: the copy runs this revision already.
    Unchanged,
}

/// A host's answer to an upgrade.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpgradeDone {
    /// The revision now running.
    pub revision: u64,
    /// How the state came across.
    pub state: StateCarried,
    /// Bytes the old version exported (hooks) or the snapshot's memory.
    pub state_bytes: u64,
    /// How long requests were held, milliseconds.
    pub paused_ms: f64,
}

/// Where a workload's rollout stands (`GET /v1/workloads/{name}/rollout`,
/// `roam rollout status`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutStatus {
    /// Workload name.
    pub workload: String,
    /// The revision wanted.
    pub revision: u64,
    /// Its module digest.
    pub digest: String,
    /// The revision before it, which `roam rollout undo` goes back to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<u64>,
    /// Replicas wanted.
    pub replicas: u32,
    /// Replicas that run the wanted revision.
    pub updated: u32,
    /// `progressing`, `complete` or `failed`.
    pub state: String,
    /// Why it stopped, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Each replica: host → revision it runs.
    pub hosts: BTreeMap<String, u64>,
}

/// [`RolloutStatus::state`] values.
pub mod rollout_state {
    /// Replicas are being replaced.
    pub const PROGRESSING: &str = "progressing";
    /// Every replica runs the wanted revision.
    pub const COMPLETE: &str = "complete";
    /// A replica refused the new revision; the others were left as they
    /// were. A new deploy or `roam rollout undo` goes on.
    pub const FAILED: &str = "failed";
}

/// `async` durability's checkpoint interval when none is given.
pub const DEFAULT_CHECKPOINT_INTERVAL_MS: u64 = 100;
/// The shortest and longest checkpoint intervals a workload may ask for.
pub const CHECKPOINT_INTERVAL_MS: std::ops::RangeInclusive<u64> = 5..=60_000;

/// What a failure may cost a workload's state (`durability` in
/// workload.toml, `roam deploy --durability`).
///
/// Whatever the durability, a guest that traps or exceeds its CPU budget is
/// rolled back to its last good state on its host: `none` keeps one at most
/// a second old, `async` and `sync` one after every event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// The state is expendable: after its host is lost the workload starts
    /// empty elsewhere.
    #[default]
    None,
    /// Checkpoints reach a standby on another host at least every interval:
    /// a host's loss costs at most that interval's work.
    Async,
    /// Outputs are released only once the standby has the state that
    /// produced them: a host's loss costs no acknowledged request.
    Sync,
}

impl Durability {
    /// The name used in workload.toml, the CLI and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::None => "none",
            Durability::Async => "async",
            Durability::Sync => "sync",
        }
    }
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Durability {
    type Err = String;

    fn from_str(s: &str) -> Result<Durability, String> {
        match s {
            "none" => Ok(Durability::None),
            "async" => Ok(Durability::Async),
            "sync" => Ok(Durability::Sync),
            other => Err(format!(
                "unknown durability `{other}`: use none, async or sync"
            )),
        }
    }
}

fn one() -> u32 {
    1
}

fn default_memory() -> u64 {
    64 << 20
}

/// A scheduler replica, as it records itself in the shared store.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedulerMember {
    /// Its name (unique among the replicas).
    pub id: String,
    /// Where hosts and clients reach it.
    pub url: String,
    /// When it started, Unix milliseconds.
    pub started_unix_ms: u64,
    /// In the leader key: when it took the lead, Unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leading_since_unix_ms: Option<u64>,
}

/// `GET /v1/schedulers`: the replicas, as the answering one sees them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedulersInfo {
    /// The replica that answered.
    pub answered_by: String,
    /// Every live replica (one, with the embedded store).
    pub replicas: Vec<SchedulerInfo>,
    /// The store: `redb PATH` or `etcd ...`.
    pub store: String,
    /// The store's health, or why it is unhealthy.
    pub store_health: String,
    /// Whether the store answered.
    pub store_healthy: bool,
}

/// One replica in [`SchedulersInfo`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedulerInfo {
    /// Its record.
    #[serde(flatten)]
    pub member: SchedulerMember,
    /// Whether it leads.
    pub leader: bool,
    /// Its term, if it leads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<u64>,
    /// Since when it leads (Unix milliseconds), as far as the answering
    /// replica knows (exact when the leader answers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_since_unix_ms: Option<u64>,
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
    /// Whether it takes workloads.
    pub status: NodeStatus,
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

/// A host's status, as `GET /v1/nodes` shows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    /// Alive, takes workloads.
    #[default]
    Ready,
    /// Missed its heartbeats.
    Down,
    /// Alive, takes no new workloads.
    Cordoned,
}

impl std::fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NodeStatus::Ready => "ready",
            NodeStatus::Down => "down",
            NodeStatus::Cordoned => "cordoned",
        })
    }
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
    /// Durable workloads: each replica's standby, by the replica's host.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub protection: BTreeMap<String, Protection>,
    /// Its generation (fencing token): 0 until its first migration or
    /// failover, raised by each.
    #[serde(default)]
    pub generation: u64,
}

/// How well a replica of a durable workload is protected.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Protection {
    /// The host keeping its standby, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby: Option<String>,
    /// Milliseconds since the standby last held the whole state, as the
    /// primary's host last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_age_ms: Option<u64>,
    /// Whether a failover now would bring it back with its state: it has a
    /// standby whose last checkpoint is recent
    /// ([`Protection::is_recent`]).
    pub protected: bool,
}

impl Protection {
    /// Whether a checkpoint `age_ms` old is recent for a workload
    /// checkpointed every `interval_ms`: within five intervals and a
    /// second (the report itself is up to a heartbeat old).
    pub fn is_recent(age_ms: u64, interval_ms: u64) -> bool {
        age_ms <= interval_ms.saturating_mul(5).saturating_add(1000)
    }
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
    /// What the token may do (default: join).
    #[serde(default)]
    pub role: TokenRole,
    /// Trusted labels to bind (site, region, jurisdiction, provider); join
    /// tokens only.
    #[serde(default)]
    pub labels: Labels,
    /// Seconds until it expires (default: 24 h for a join token, never for
    /// the others); 0 is refused.
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    /// How many joins it admits (join tokens only; default: no limit).
    #[serde(default)]
    pub uses: Option<u32>,
}

/// What a token may do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenRole {
    /// Every call, tokens included.
    Admin,
    /// Deploy, migrate, drain, cordon, and everything a viewer sees.
    Operator,
    /// Read-only: hosts, workloads (without environment values), replicas,
    /// migrations, logs, events.
    Viewer,
    /// A host joining, once (then it has its certificate).
    #[default]
    Join,
}

impl TokenRole {
    /// The role's name, as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenRole::Admin => "admin",
            TokenRole::Operator => "operator",
            TokenRole::Viewer => "viewer",
            TokenRole::Join => "join",
        }
    }
}

/// A new token, shown once.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenResponse {
    /// The token.
    pub token: String,
    /// Its id, by which it is listed and revoked (not a secret).
    #[serde(default)]
    pub id: String,
    /// When it expires, seconds since the Unix epoch.
    #[serde(default)]
    pub expires_unix: Option<u64>,
}

/// A token as `GET /v1/tokens` lists it: never the token itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// Its id.
    pub id: String,
    /// What it may do.
    pub role: TokenRole,
    /// Trusted labels a join token binds.
    #[serde(default)]
    pub labels: Labels,
    /// When it was made, seconds since the Unix epoch.
    #[serde(default)]
    pub created_unix: u64,
    /// When it expires, if it does.
    #[serde(default)]
    pub expires_unix: Option<u64>,
    /// Joins it still admits, if limited.
    #[serde(default)]
    pub uses_left: Option<u32>,
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
    /// Guest failures rolled back to the last good state there (as the
    /// host reports).
    #[serde(default)]
    pub rolled_back: u64,
    /// Guest failures after which it restarted from its initial state.
    #[serde(default)]
    pub restarted: u64,
    /// The last failure, as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
    /// Where its standby is (durable workloads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby: Option<String>,
    /// Milliseconds since the standby acknowledged the last checkpoint, as
    /// the host last reported: a host reports an age of a second or more
    /// every heartbeat, and one under a second (recent) only when it sends
    /// its full report ([`liveness`]: a change, or every 30 minutes), so a value
    /// under a second means "recent" rather than exactly that old. The
    /// host's own `/metrics` has it live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_age_ms: Option<u64>,
    /// Bytes of checkpoints its standby acknowledged, as the host last
    /// reported (at most 30 minutes ago).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub checkpoint_bytes: u64,
    /// The generation the copy runs at, as the host last reported.
    #[serde(default)]
    pub generation: u64,
}

/// Query of `POST /v1/messages/{workload}` (scheduler and host) and of a
/// message a migration's source forwards: the sending workload, and the
/// message's id in the sender's stream (`stream` 0: no id; such a message
/// is never recognised as a resend).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FromQuery {
    /// The workload that sent the message.
    pub from: String,
    /// The sender's stream.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub stream: u64,
    /// The message's place in the stream.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub seq: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Query of `DELETE /v1/instances/{workload}` on a host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopQuery {
    /// Stop only a copy whose generation is below this one.
    #[serde(default)]
    pub below_generation: Option<u64>,
}

/// Query of `POST /v1/workloads/{name}/snapshot` and `.../restore` on the
/// scheduler: the host to take the snapshot from or restore it on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostQuery {
    /// Host name.
    pub host: String,
}
