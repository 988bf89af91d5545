//! Every route of Roam's APIs: the patterns the daemons serve (for axum's
//! router, `{name}` captures a segment) and builders that make a path from
//! typed values, each segment percent-encoded.
//!
//! Nothing else in Roam writes a path. A segment that cannot be encoded
//! safely — empty, `.` or `..` (URL parsers resolve those, and their
//! `%2e` spellings, as dot segments) — is refused with [`BadSegment`], so a
//! name chosen by a guest or a remote host can never reach another route.
//!
//! ```
//! use roam_proto::paths;
//! assert_eq!(paths::instance("counter").unwrap().as_str(), "/v1/instances/counter");
//! assert_eq!(paths::message("a/b?x#").unwrap().as_str(), "/v1/messages/a%2Fb%3Fx%23");
//! assert!(paths::message("..").is_err());
//! assert_eq!(
//!     paths::instance("w").unwrap().on("http://127.0.0.1:7801"),
//!     "http://127.0.0.1:7801/v1/instances/w"
//! );
//! ```

use std::fmt;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// Characters left as they are in a segment: RFC 3986's unreserved ones.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A path on a Roam API, made only by this module's builders.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ApiPath(String);

impl ApiPath {
    /// The path, starting with `/`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The URL of this path on the API at `base` (a configured URL such as
    /// `http://127.0.0.1:7700`; a trailing `/` is ignored).
    pub fn on(&self, base: &str) -> String {
        let base = base.trim_end_matches('/');
        let mut url = String::with_capacity(base.len() + self.0.len());
        url.push_str(base);
        url.push_str(&self.0);
        url
    }

    fn from_parts(parts: &[Part<'_>]) -> Result<ApiPath, BadSegment> {
        let mut path = String::new();
        for part in parts {
            path.push('/');
            match part {
                Part::Fixed(s) => path.push_str(s),
                Part::Segment(s) => {
                    if s.is_empty() || *s == "." || *s == ".." {
                        return Err(BadSegment(s.chars().take(64).collect()));
                    }
                    path.extend(utf8_percent_encode(s, SEGMENT));
                }
            }
        }
        Ok(ApiPath(path))
    }
}

impl fmt::Display for ApiPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A value that cannot be a path segment (empty, `.` or `..`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` cannot name anything in a path")]
pub struct BadSegment(pub String);

enum Part<'a> {
    Fixed(&'static str),
    Segment(&'a str),
}
use Part::{Fixed, Segment};

fn build(parts: &[Part<'_>]) -> Result<ApiPath, BadSegment> {
    ApiPath::from_parts(parts)
}

/// Route patterns (axum syntax) of the scheduler's API.
pub mod scheduler {
    /// `POST` (admin): a token; `GET` (admin): every token (never the
    /// tokens themselves).
    pub const TOKENS: &str = "/v1/tokens";
    /// `DELETE` (admin): revoke a token by its id.
    pub const TOKEN: &str = "/v1/tokens/{id}";
    /// `GET` (public): the operator console's page.
    pub const UI: &str = "/ui";
    /// `GET` (public): the console's scripts and styles, embedded in the
    /// binary (nothing is fetched from elsewhere).
    pub const UI_ASSET: &str = "/ui/assets/{file}";
    /// `POST` (viewer): sign in to the console, the token as the bearer,
    /// for a session cookie; `GET` (viewer): who is signed in, and the
    /// session's cross-site request token; `DELETE` (public): sign out.
    pub const UI_SESSION: &str = "/ui/session";
    /// `GET` (admin): the hosts.
    pub const NODES: &str = "/v1/nodes";
    /// `GET` (viewer): the scheduler replicas, which one leads, and the
    /// store's health; any replica answers itself.
    pub const SCHEDULERS: &str = "/v1/schedulers";
    /// `POST` (admin): `cordon`, `uncordon` or `drain` a host.
    pub const NODE_ACTION: &str = "/v1/nodes/{name}/{action}";
    /// `POST` (admin): end a host's identity (`roam node revoke`).
    pub const NODE_REVOKE: &str = "/v1/nodes/{name}/revoke";
    /// `PUT` (admin): upload a module.
    pub const MODULES: &str = "/v1/modules";
    /// `GET` (any token): a module's bytes by digest.
    pub const MODULE: &str = "/v1/modules/{digest}";
    /// `GET`, `POST` (admin): list or deploy workloads.
    pub const WORKLOADS: &str = "/v1/workloads";
    /// `GET`, `DELETE` (admin): one workload.
    pub const WORKLOAD: &str = "/v1/workloads/{name}";
    /// `GET` (admin): a workload's logs from every replica.
    pub const WORKLOAD_LOGS: &str = "/v1/workloads/{name}/logs";
    /// `POST ?host=H` (admin): a replica's snapshot.
    pub const WORKLOAD_SNAPSHOT: &str = "/v1/workloads/{name}/snapshot";
    /// `POST ?host=H` (admin): restore a snapshot on host H.
    pub const WORKLOAD_RESTORE: &str = "/v1/workloads/{name}/restore";
    /// `GET` (viewer): the workload's rollout: revision, replicas updated.
    pub const WORKLOAD_ROLLOUT: &str = "/v1/workloads/{name}/rollout";
    /// `POST` (admin): roll back to the previous revision.
    pub const WORKLOAD_UNDO: &str = "/v1/workloads/{name}/rollout/undo";
    /// `GET` (admin): every replica.
    pub const INSTANCES: &str = "/v1/instances";
    /// `GET`, `POST` (admin): list or start live migrations.
    pub const MIGRATIONS: &str = "/v1/migrations";
    /// `GET` (admin): one migration.
    pub const MIGRATION: &str = "/v1/migrations/{id}";
    /// `GET` (admin): cluster events, server-sent.
    pub const EVENTS: &str = "/v1/events";
    /// `POST` (join token): a host joins.
    pub const JOIN: &str = "/v1/hosts/join";
    /// `POST` (join token): a host's heartbeat.
    pub const HEARTBEAT: &str = "/v1/hosts/{name}/heartbeat";
    /// `POST ?from=W` (join token): a message to a workload on another host.
    pub const MESSAGE: &str = "/v1/messages/{workload}";
    /// `GET` (the scrape credential, or a viewer token): Prometheus metrics.
    pub const METRICS: &str = "/metrics";
    /// `GET` (no credentials): the cluster CA certificate, PEM. A host
    /// fetches it over a connection pinned to the hash its join token
    /// carries.
    pub const CA: &str = "/v1/ca";
    /// `POST` (the host's own certificate): renew it from a new request.
    pub const HOST_CERTIFICATE: &str = "/v1/hosts/{name}/certificate";
    /// `POST` (the host's own certificate): a host being stopped asks to
    /// be drained (cordoned, its workloads moved off live).
    pub const HOST_DRAIN: &str = "/v1/hosts/{name}/drain";
}

/// Route patterns (axum syntax) of a host's API.
pub mod host {
    /// `PUT` start, `DELETE ?below_generation=G` stop (host secret).
    pub const INSTANCE: &str = "/v1/instances/{workload}";
    /// `GET` (host secret): recent log records.
    pub const INSTANCE_LOGS: &str = "/v1/instances/{workload}/logs";
    /// `POST` (host secret): a snapshot at the next safe point.
    pub const INSTANCE_SNAPSHOT: &str = "/v1/instances/{workload}/snapshot";
    /// `PUT` (host secret): start from a snapshot.
    pub const INSTANCE_RESTORE: &str = "/v1/instances/{workload}/restore";
    /// `POST` (host secret): the copy here runs at a newer generation now
    /// (another replica of its workload failed over or moved).
    pub const INSTANCE_GENERATION: &str = "/v1/instances/{workload}/generation";
    /// `POST` (host secret): replace the copy here with another revision
    /// of its workload, in place, its state carried over.
    pub const INSTANCE_UPGRADE: &str = "/v1/instances/{workload}/upgrade";
    /// `POST ?from=W` (host secret): a message for a workload here.
    pub const MESSAGE: &str = "/v1/messages/{workload}";
    /// `POST` (host secret), scheduler → target: get ready to receive.
    pub const MIGRATION_PREPARE: &str = "/v1/migrations/{id}/prepare";
    /// `POST` (host secret), scheduler → source: stream the state.
    pub const MIGRATION_SEND: &str = "/v1/migrations/{id}/send";
    /// `POST` (host secret): the scheduler's commit.
    pub const MIGRATION_COMMIT: &str = "/v1/migrations/{id}/commit";
    /// `POST` (host secret): the scheduler's abort.
    pub const MIGRATION_ABORT: &str = "/v1/migrations/{id}/abort";
    /// `POST` (host secret), scheduler → source: the ingress now sends the
    /// workload's requests to the target; freeze.
    pub const MIGRATION_FREEZE: &str = "/v1/migrations/{id}/freeze";
    /// `GET` (host secret): what this host knows of a migration.
    pub const MIGRATION_STATUS: &str = "/v1/migrations/{id}/status";
    /// `PUT` (migration key), source → target: a part of a round.
    pub const MIGRATION_ROUND: &str = "/v1/migrations/{id}/rounds/{round}";
    /// `POST` upgraded to `roam-pages` (migration key): round 0's pages.
    pub const MIGRATION_PAGES: &str = "/v1/migrations/{id}/pages";
    /// `POST ?from=W` (migration key): a message forwarded after the commit.
    pub const MIGRATION_MESSAGES: &str = "/v1/migrations/{id}/messages";
    /// `POST` (migration key), source → target: serve now.
    pub const MIGRATION_ACTIVATE: &str = "/v1/migrations/{id}/activate";
    /// `DELETE` (migration key), source → target: the source gave up.
    /// `GET` (migration key): `204` while the target receives it (the
    /// source opens connections with it ahead of its commit message).
    pub const MIGRATION: &str = "/v1/migrations/{id}";
    /// `PUT` (host secret): the revoked certificates, replacing the list
    /// the host had.
    pub const REVOKED: &str = "/v1/revoked";
    /// `PUT` stream checkpoints to a standby, `DELETE` stop (host secret).
    pub const INSTANCE_STANDBY: &str = "/v1/instances/{workload}/standby";
    /// `PUT` keep a standby, `DELETE` drop it (host secret).
    pub const STANDBY: &str = "/v1/standbys/{workload}";
    /// `GET` (the cluster's scrape credential): Prometheus metrics.
    pub const METRICS: &str = "/metrics";
    /// `POST` (the recorded primary's certificate and the standby key): a
    /// checkpoint.
    pub const STANDBY_CHECKPOINT: &str = "/v1/standbys/{workload}/checkpoint";
    /// `POST` (host secret): promote the standby.
    pub const STANDBY_PROMOTE: &str = "/v1/standbys/{workload}/promote";
    /// `POST` (the recorded primary's certificate and the standby key): a
    /// lease, when there is no checkpoint to send.
    pub const STANDBY_LEASE: &str = "/v1/standbys/{workload}/lease";
}

/// Route patterns of the ingress, on the scheduler and on every host.
pub mod ingress {
    /// A workload's root.
    pub const ROOT: &str = "/w/{workload}";
    /// A workload's root, with a trailing `/`.
    pub const ROOT_SLASH: &str = "/w/{workload}/";
    /// Any path below a workload.
    pub const ANY: &str = "/w/{workload}/{*path}";
    /// What a request outside these paths is told.
    pub const USAGE: &str = "ingress paths are /w/{workload}/...";
}

/// `/v1/tokens`.
pub fn tokens() -> ApiPath {
    ApiPath(scheduler::TOKENS.into())
}
/// `/v1/schedulers`.
pub fn schedulers() -> ApiPath {
    ApiPath(scheduler::SCHEDULERS.into())
}
/// `/v1/nodes`.
pub fn nodes() -> ApiPath {
    ApiPath(scheduler::NODES.into())
}
/// `/v1/nodes/{name}/{action}`.
pub fn node_action(name: &str, action: NodeAction) -> Result<ApiPath, BadSegment> {
    build(&[
        Fixed("v1"),
        Fixed("nodes"),
        Segment(name),
        Fixed(action.as_str()),
    ])
}
/// `/v1/modules`.
pub fn modules() -> ApiPath {
    ApiPath(scheduler::MODULES.into())
}
/// `/v1/modules/{digest}`.
pub fn module(digest: &str) -> Result<ApiPath, BadSegment> {
    build(&[Fixed("v1"), Fixed("modules"), Segment(digest)])
}
/// `/v1/workloads`.
pub fn workloads() -> ApiPath {
    ApiPath(scheduler::WORKLOADS.into())
}
/// `/v1/workloads/{name}`.
pub fn workload(name: &str) -> Result<ApiPath, BadSegment> {
    build(&[Fixed("v1"), Fixed("workloads"), Segment(name)])
}
/// `/v1/workloads/{name}/logs`.
pub fn workload_logs(name: &str) -> Result<ApiPath, BadSegment> {
    build(&[
        Fixed("v1"),
        Fixed("workloads"),
        Segment(name),
        Fixed("logs"),
    ])
}
/// `/v1/workloads/{name}/snapshot`.
pub fn workload_snapshot(name: &str) -> Result<ApiPath, BadSegment> {
    build(&[
        Fixed("v1"),
        Fixed("workloads"),
        Segment(name),
        Fixed("snapshot"),
    ])
}
/// `/v1/workloads/{name}/restore`.
pub fn workload_restore(name: &str) -> Result<ApiPath, BadSegment> {
    build(&[
        Fixed("v1"),
        Fixed("workloads"),
        Segment(name),
        Fixed("restore"),
    ])
}
/// `/v1/workloads/{name}/rollout`.
pub fn workload_rollout(name: &str) -> Result<ApiPath, BadSegment> {
    build(&[
        Fixed("v1"),
        Fixed("workloads"),
        Segment(name),
        Fixed("rollout"),
    ])
}
/// `/v1/workloads/{name}/rollout/undo`.
pub fn workload_undo(name: &str) -> Result<ApiPath, BadSegment> {
    build(&[
        Fixed("v1"),
        Fixed("workloads"),
        Segment(name),
        Fixed("rollout"),
        Fixed("undo"),
    ])
}
/// `/v1/instances` (the scheduler's list of replicas).
pub fn instances() -> ApiPath {
    ApiPath(scheduler::INSTANCES.into())
}
/// `/v1/migrations`.
pub fn migrations() -> ApiPath {
    ApiPath(scheduler::MIGRATIONS.into())
}
/// `/v1/events`.
pub fn events() -> ApiPath {
    ApiPath(scheduler::EVENTS.into())
}
/// `/v1/hosts/join`.
pub fn join() -> ApiPath {
    ApiPath(scheduler::JOIN.into())
}
/// `/v1/hosts/{name}/heartbeat`.
pub fn heartbeat(host: &str) -> Result<ApiPath, BadSegment> {
    build(&[
        Fixed("v1"),
        Fixed("hosts"),
        Segment(host),
        Fixed("heartbeat"),
    ])
}
/// `/v1/tokens/{id}`.
pub fn token(id: &str) -> Result<ApiPath, BadSegment> {
    build(&[Fixed("v1"), Fixed("tokens"), Segment(id)])
}
/// `/v1/ca`.
pub fn ca() -> ApiPath {
    ApiPath(scheduler::CA.into())
}
/// `/v1/hosts/{name}/certificate`.
pub fn host_certificate(host: &str) -> Result<ApiPath, BadSegment> {
    build(&[
        Fixed("v1"),
        Fixed("hosts"),
        Segment(host),
        Fixed("certificate"),
    ])
}
/// `/v1/hosts/{name}/drain`.
pub fn host_drain(host: &str) -> Result<ApiPath, BadSegment> {
    build(&[Fixed("v1"), Fixed("hosts"), Segment(host), Fixed("drain")])
}
/// `/v1/nodes/{name}/revoke`.
pub fn node_revoke(host: &str) -> Result<ApiPath, BadSegment> {
    build(&[Fixed("v1"), Fixed("nodes"), Segment(host), Fixed("revoke")])
}
/// `/v1/revoked` on a host.
pub fn revoked() -> ApiPath {
    ApiPath(host::REVOKED.into())
}
/// `/v1/messages/{workload}` (on the scheduler, or on a host).
pub fn message(workload: &str) -> Result<ApiPath, BadSegment> {
    build(&[Fixed("v1"), Fixed("messages"), Segment(workload)])
}
/// `/metrics` (on the scheduler, or on a host).
pub fn metrics() -> ApiPath {
    ApiPath(scheduler::METRICS.into())
}
/// `/v1/instances/{workload}` on a host.
pub fn instance(workload: &str) -> Result<ApiPath, BadSegment> {
    build(&[Fixed("v1"), Fixed("instances"), Segment(workload)])
}
/// `/v1/instances/{workload}/logs` on a host.
pub fn instance_logs(workload: &str) -> Result<ApiPath, BadSegment> {
    build(&[
        Fixed("v1"),
        Fixed("instances"),
        Segment(workload),
        Fixed("logs"),
    ])
}
/// `/v1/instances/{workload}/snapshot` on a host.
pub fn instance_snapshot(workload: &str) -> Result<ApiPath, BadSegment> {
    build(&[
        Fixed("v1"),
        Fixed("instances"),
        Segment(workload),
        Fixed("snapshot"),
    ])
}
/// `/v1/instances/{workload}/restore` on a host.
pub fn instance_restore(workload: &str) -> Result<ApiPath, BadSegment> {
    build(&[
        Fixed("v1"),
        Fixed("instances"),
        Segment(workload),
        Fixed("restore"),
    ])
}
/// `/v1/instances/{workload}/generation` on a host.
pub fn instance_generation(workload: &str) -> Result<ApiPath, BadSegment> {
    build(&[
        Fixed("v1"),
        Fixed("instances"),
        Segment(workload),
        Fixed("generation"),
    ])
}
/// `/v1/instances/{workload}/upgrade` on a host.
pub fn instance_upgrade(workload: &str) -> Result<ApiPath, BadSegment> {
    build(&[
        Fixed("v1"),
        Fixed("instances"),
        Segment(workload),
        Fixed("upgrade"),
    ])
}
/// `/v1/instances/{workload}/standby` on a host.
pub fn instance_standby(workload: &str) -> Result<ApiPath, BadSegment> {
    build(&[
        Fixed("v1"),
        Fixed("instances"),
        Segment(workload),
        Fixed("standby"),
    ])
}
/// `/v1/standbys/{workload}` on a host.
pub fn standby(workload: &str) -> Result<ApiPath, BadSegment> {
    build(&[Fixed("v1"), Fixed("standbys"), Segment(workload)])
}
/// `/v1/standbys/{workload}/checkpoint` on a host.
pub fn standby_checkpoint(workload: &str) -> Result<ApiPath, BadSegment> {
    build(&[
        Fixed("v1"),
        Fixed("standbys"),
        Segment(workload),
        Fixed("checkpoint"),
    ])
}
/// `/v1/standbys/{workload}/lease` on a host.
pub fn standby_lease(workload: &str) -> Result<ApiPath, BadSegment> {
    build(&[
        Fixed("v1"),
        Fixed("standbys"),
        Segment(workload),
        Fixed("lease"),
    ])
}
/// `/v1/standbys/{workload}/promote` on a host.
pub fn standby_promote(workload: &str) -> Result<ApiPath, BadSegment> {
    build(&[
        Fixed("v1"),
        Fixed("standbys"),
        Segment(workload),
        Fixed("promote"),
    ])
}
/// `/v1/migrations/{id}` (the scheduler's record; on a host, the source's
/// `DELETE` when it gives up).
pub fn migration(id: &str) -> Result<ApiPath, BadSegment> {
    build(&[Fixed("v1"), Fixed("migrations"), Segment(id)])
}
/// `/v1/migrations/{id}/{step}` on a host.
pub fn migration_step(id: &str, step: MigrationStep) -> Result<ApiPath, BadSegment> {
    build(&[
        Fixed("v1"),
        Fixed("migrations"),
        Segment(id),
        Fixed(step.as_str()),
    ])
}
/// `/v1/migrations/{id}/rounds/{round}` on the target.
pub fn migration_round(id: &str, round: u32) -> Result<ApiPath, BadSegment> {
    let round = round.to_string();
    build(&[
        Fixed("v1"),
        Fixed("migrations"),
        Segment(id),
        Fixed("rounds"),
        Segment(&round),
    ])
}
/// `/w/{workload}` followed by `rest`, a path (and query) the workload
/// sees: `rest` is the caller's own request path, passed as it is (a
/// leading `/` is added when missing).
pub fn ingress(workload: &str, rest: &str) -> Result<ApiPath, BadSegment> {
    let mut path = build(&[Fixed("w"), Segment(workload)])?;
    if !rest.starts_with('/') {
        path.0.push('/');
    }
    path.0.push_str(rest);
    Ok(path)
}

/// What `POST /v1/nodes/{name}/{action}` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeAction {
    /// No new placements on the host.
    Cordon,
    /// Placements allowed again.
    Uncordon,
    /// Cordon, then move every workload off it.
    Drain,
}

impl NodeAction {
    /// The path segment.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeAction::Cordon => "cordon",
            NodeAction::Uncordon => "uncordon",
            NodeAction::Drain => "drain",
        }
    }

    /// The action a path segment names.
    pub fn parse(segment: &str) -> Option<NodeAction> {
        [NodeAction::Cordon, NodeAction::Uncordon, NodeAction::Drain]
            .into_iter()
            .find(|a| a.as_str() == segment)
    }
}

/// A step of a migration on a host: `/v1/migrations/{id}/{step}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MigrationStep {
    /// Scheduler → target.
    Prepare,
    /// Scheduler → source.
    Send,
    /// Scheduler → either.
    Commit,
    /// Scheduler → either.
    Abort,
    /// Scheduler → either.
    Status,
    /// Scheduler → source, once the ingress sends to the target.
    Freeze,
    /// Source → target, upgraded.
    Pages,
    /// Source → target, after the commit.
    Messages,
    /// Source → target, at the commit point.
    Activate,
}

impl MigrationStep {
    /// The path segment.
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationStep::Prepare => "prepare",
            MigrationStep::Send => "send",
            MigrationStep::Commit => "commit",
            MigrationStep::Abort => "abort",
            MigrationStep::Status => "status",
            MigrationStep::Freeze => "freeze",
            MigrationStep::Pages => "pages",
            MigrationStep::Messages => "messages",
            MigrationStep::Activate => "activate",
        }
    }
}

/// Split an ingress path `/w/{workload}/{rest}` into the workload name and
/// the path the workload sees (always starting with `/`).
///
/// ```
/// assert_eq!(roam_proto::paths::ingress_target("/w/counter/a/b"), Some(("counter", "/a/b")));
/// assert_eq!(roam_proto::paths::ingress_target("/w/counter"), Some(("counter", "/")));
/// assert_eq!(roam_proto::paths::ingress_target("/v1/nodes"), None);
/// ```
pub fn ingress_target(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/w/")?;
    let (workload, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    (!workload.is_empty()).then_some((workload, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_never_leave_their_place() {
        for hostile in ["../hosts/join", "a?from=x#", "a/b", "%2e%2e", "a b", "é"] {
            let p = message(hostile).unwrap();
            let rest = p.as_str().strip_prefix("/v1/messages/").unwrap();
            assert!(!rest.contains(['/', '?', '#', ' '].as_slice()), "{p}");
            let back = percent_encoding::percent_decode_str(rest)
                .decode_utf8()
                .unwrap();
            assert_eq!(back, hostile);
        }
        for dots in ["", ".", ".."] {
            assert!(message(dots).is_err(), "{dots:?}");
        }
        assert_eq!(message("...").unwrap().as_str(), "/v1/messages/...");
    }

    #[test]
    fn builders_match_the_route_patterns() {
        let fill = |pattern: &str, values: &[&str]| {
            let mut out = pattern.to_string();
            for v in values {
                let start = out.find('{').unwrap();
                let end = out[start..].find('}').unwrap() + start;
                out.replace_range(start..=end, v);
            }
            out
        };
        assert_eq!(
            migration_round("m-1", 3).unwrap().as_str(),
            fill(host::MIGRATION_ROUND, &["m-1", "3"])
        );
        assert_eq!(
            migration_step("m-1", MigrationStep::Activate)
                .unwrap()
                .as_str(),
            fill(host::MIGRATION_ACTIVATE, &["m-1"])
        );
        assert_eq!(
            heartbeat("h").unwrap().as_str(),
            fill(scheduler::HEARTBEAT, &["h"])
        );
        assert_eq!(
            node_action("h", NodeAction::Drain).unwrap().as_str(),
            fill(scheduler::NODE_ACTION, &["h", "drain"])
        );
        assert_eq!(ingress("c", "a/b?x=1").unwrap().as_str(), "/w/c/a/b?x=1");
        assert_eq!(ingress("c", "/").unwrap().as_str(), "/w/c/");
    }
}
