//! The live-migration protocol's messages and the vocabulary of its phases.
//!
//! `docs/migration-protocol.md` describes the protocol as one state machine
//! per role; these enums are its states as they cross the wire (JSON,
//! lowercase), so a renamed phase is a compile error wherever it is used.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::StartInstance;

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
    /// Whether pages and deltas go compressed.
    #[serde(default)]
    pub compression: Compression,
}

/// Whether a migration compresses what it sends (zstd).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// While the link, not the CPU, holds the page streams back (on
    /// loopback and fast links: never), and deltas once round 0 ended
    /// compressed.
    #[default]
    Auto,
    /// Never: every page as it is.
    Never,
    /// Every frame and delta that shrinks.
    Always,
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Compression::Auto => "auto",
            Compression::Never => "never",
            Compression::Always => "always",
        })
    }
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Compression::Auto),
            "never" => Ok(Compression::Never),
            "always" => Ok(Compression::Always),
            other => Err(format!("{other:?} is not auto, never or always")),
        }
    }
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
            compression: Compression::Auto,
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
    /// The scheduler's [`crate::PROTOCOL_VERSION`]; a host refuses another.
    #[serde(default)]
    pub protocol: u32,
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
/// [`ProgressPhase::Committed`] (the source activated the target and handed
/// off), [`ProgressPhase::Prepared`] with an error (the commit point was
/// reached but the source could not activate the target: the scheduler
/// decides), or [`ProgressPhase::Failed`] (the source serves on).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendMigration {
    /// Workload name.
    pub workload: String,
    /// Target host's API base URL.
    pub target_url: String,
    /// Target host's name: over TLS its certificate must name it.
    #[serde(default)]
    pub target: String,
    /// Secret for the target (see [`PrepareMigration::key`]).
    pub key: String,
    /// Generation the workload runs at on the target.
    pub generation: u64,
    /// Pre-copy tuning.
    pub options: MigrationOptions,
}

/// Where a source's pre-copy is, as its progress lines say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProgressPhase {
    /// Copying while the workload runs.
    #[default]
    Precopy,
    /// Pre-copy converged: the source freezes for the last delta once the
    /// scheduler orders it (its ingress then sends the workload's requests
    /// to the target, which holds them until it serves), or after a bound.
    Stopping,
    /// The commit point: frozen, the target holds the final state.
    Prepared,
    /// The source activated the target and handed off.
    Committed,
    /// Gave up before the commit point; the source serves on.
    Failed,
}

/// One progress report of a migration's source.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MigrationProgress {
    /// Where the source is.
    pub phase: ProgressPhase,
    /// Pre-copy round (0 is the full copy).
    pub round: u32,
    /// Bytes of state and memory sent to the target so far.
    pub bytes_sent: u64,
    /// Bytes on the wire for them so far: fewer where pages were
    /// compressed (0 from a source that does not count them).
    #[serde(default)]
    pub wire_bytes: u64,
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
    /// target that can no longer serve, the source resumes at this one.
    #[serde(default)]
    pub generation: u64,
}

/// A migration's source, as the source host knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourcePhase {
    /// Pre-copying; gives up by itself if its progress stream breaks.
    Sending,
    /// The commit point: frozen, holding requests; never resumes by itself.
    Prepared,
    /// Activating the target; settles on prepared or committed.
    Committing,
    /// Handed off to the target.
    Committed,
    /// Gave up or was aborted; serves on.
    Aborted,
}

/// A migration's target, as the target host knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetPhase {
    /// Prepared, receiving rounds.
    Receiving,
    /// Holds the final state, not serving; may still be activated.
    Ready,
    /// Activated: runs the workload at the migration's generation or later.
    Serving,
}

/// A host's part in a migration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sends the workload.
    Source,
    /// Receives it.
    Target,
}

/// What a host knows of a migration: its answer to the scheduler's
/// `GET /v1/migrations/{id}/status?workload=W&generation=G`, which a
/// restarted or unsure scheduler asks to learn whether a migration reached
/// its commit point (JSON: `{"role":"source","phase":"prepared"}`,
/// `{"role":"unknown"}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", content = "phase", rename_all = "lowercase")]
pub enum MigrationStatus {
    /// This host is the migration's source.
    Source(SourcePhase),
    /// This host is the migration's target.
    Target(TargetPhase),
    /// This host knows nothing of it (never did, forgot it, or restarted),
    /// and does not run the workload at the migration's generation.
    Unknown,
}

impl MigrationStatus {
    /// The role, if the host has one.
    pub fn role(self) -> Option<Role> {
        match self {
            MigrationStatus::Source(_) => Some(Role::Source),
            MigrationStatus::Target(_) => Some(Role::Target),
            MigrationStatus::Unknown => None,
        }
    }
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

/// A migration as the scheduler records and shows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MigrationPhase {
    /// The target fetches the module and reserves a slot.
    #[default]
    Preparing,
    /// The source copies while the workload runs.
    Precopy,
    /// Pre-copy converged; the ingress sends the workload's requests to
    /// the target (which holds them until it serves), and the source
    /// freezes.
    Stopping,
    /// The commit point: the source is frozen, the target holds the state.
    Prepared,
    /// Past the commit point; the hand-off is under way.
    Committed,
    /// Ended: the workload serves on the target.
    Done,
    /// Ended: the workload serves where it was (or a fallback, see error).
    Failed,
    /// Ended: aborted before the commit point.
    Aborted,
    /// Interrupted (a scheduler restart, an abort that did not arrive, a
    /// target that did not answer after the commit point): the scheduler
    /// asks the hosts where it got to.
    Resolving,
}

impl MigrationPhase {
    /// Whether the migration has ended (`done`, `failed` or `aborted`).
    pub fn finished(self) -> bool {
        matches!(
            self,
            MigrationPhase::Done | MigrationPhase::Failed | MigrationPhase::Aborted
        )
    }

    /// The lowercase name, as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationPhase::Preparing => "preparing",
            MigrationPhase::Precopy => "precopy",
            MigrationPhase::Stopping => "stopping",
            MigrationPhase::Prepared => "prepared",
            MigrationPhase::Committed => "committed",
            MigrationPhase::Done => "done",
            MigrationPhase::Failed => "failed",
            MigrationPhase::Aborted => "aborted",
            MigrationPhase::Resolving => "resolving",
        }
    }
}

impl fmt::Display for MigrationPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<ProgressPhase> for MigrationPhase {
    fn from(p: ProgressPhase) -> MigrationPhase {
        match p {
            ProgressPhase::Precopy => MigrationPhase::Precopy,
            ProgressPhase::Stopping => MigrationPhase::Stopping,
            ProgressPhase::Prepared => MigrationPhase::Prepared,
            ProgressPhase::Committed => MigrationPhase::Committed,
            ProgressPhase::Failed => MigrationPhase::Failed,
        }
    }
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
    /// Where it is.
    pub phase: MigrationPhase,
    /// Pre-copy rounds so far (the full copy is round 0).
    pub rounds: u32,
    /// Bytes of state and memory streamed from source to target.
    pub bytes_sent: u64,
    /// Bytes on the wire for them: fewer where pages were compressed.
    #[serde(default)]
    pub wire_bytes: u64,
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
    pub history: Vec<(MigrationPhase, u64)>,
}

impl MigrationInfo {
    /// Whether the migration has ended (`done`, `failed` or `aborted`).
    pub fn finished(&self) -> bool {
        self.phase.finished()
    }
}

/// What draining did with one workload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DrainResult {
    /// Moved live.
    Migrated,
    /// Live migration failed; moved by stop-and-copy (paused for the whole
    /// copy, state kept).
    Copied,
    /// Its host was unreachable: started elsewhere without its state.
    Restarted,
    /// Neither worked; it still runs on the drained host.
    #[default]
    Failed,
}

impl fmt::Display for DrainResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DrainResult::Migrated => "migrated",
            DrainResult::Copied => "copied",
            DrainResult::Restarted => "restarted",
            DrainResult::Failed => "failed",
        })
    }
}

/// What a failover did with a replica whose host was declared dead (the
/// `failover` event's `outcome`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailoverOutcome {
    /// Its standby was promoted: it serves with the state of the last
    /// checkpoint the standby acknowledged.
    Promoted,
    /// The standby could not be promoted: it starts elsewhere without its
    /// state.
    Restarted,
}

impl FailoverOutcome {
    /// The lowercase name, as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            FailoverOutcome::Promoted => "promoted",
            FailoverOutcome::Restarted => "restarted",
        }
    }
}

/// `POST /v1/nodes/{host}/drain` (admin): what happened to each workload.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainOutcome {
    /// Workload name.
    pub workload: String,
    /// What happened.
    pub outcome: DrainResult,
    /// The live migration's id, if one was tried.
    #[serde(default)]
    pub migration: Option<String>,
    /// Details (target host, or why).
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_cross_the_wire_in_lowercase() {
        let s = serde_json::to_string(&MigrationStatus::Source(SourcePhase::Prepared)).unwrap();
        assert_eq!(s, r#"{"role":"source","phase":"prepared"}"#);
        let s = serde_json::to_string(&MigrationStatus::Unknown).unwrap();
        assert_eq!(s, r#"{"role":"unknown"}"#);
        let back: MigrationStatus =
            serde_json::from_str(r#"{"role":"target","phase":"serving"}"#).unwrap();
        assert_eq!(back, MigrationStatus::Target(TargetPhase::Serving));
        assert_eq!(
            serde_json::to_string(&MigrationPhase::Resolving).unwrap(),
            r#""resolving""#
        );
        assert_eq!(
            serde_json::to_string(&DrainResult::Restarted).unwrap(),
            r#""restarted""#
        );
    }
}
