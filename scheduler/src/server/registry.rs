//! The host registry: hosts join with a token, heartbeat, and are alive
//! while their heartbeats arrive within `heartbeat_timeout`. Also `GET
//! /v1/nodes` and the cordon, uncordon and drain actions on a host.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use roam_proto::paths::NodeAction;
use roam_proto::reply::error;
use roam_proto::{Heartbeat, InstanceStatus, JoinRequest, JoinResponse, NodeInfo, NodeStatus};

use roam_tls::Peer;

use super::{HostEntry, Scheduler, parse};
use crate::auth::{self, Role};
use crate::placement::HostView;

impl Scheduler {
    pub(super) fn alive(&self, entry: &HostEntry) -> bool {
        entry.last_seen.elapsed() < self.config.heartbeat_timeout
    }

    pub(super) fn host_views(&self) -> Vec<HostView> {
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
                slots_used: (e.instances.len() + e.standbys.len()) as u32,
            })
            .collect();
        views.sort_by(|a, b| a.id.cmp(&b.id));
        views
    }

    /// Whether a host went down or came back since the last round (a scan
    /// of the registry that copies nothing).
    pub(super) fn liveness_changed(&self) -> bool {
        let down = self.down.lock().unwrap_or_else(|e| e.into_inner());
        self.hosts
            .iter()
            .any(|e| self.alive(&e) == down.contains(e.key()))
    }
}

/// Longest URL a host may register.
const MAX_URL: usize = 2048;
/// Longest architecture or engine key a host may report.
const MAX_REPORTED: usize = 64;

/// What a host reports about itself, bounded before it is kept, logged or
/// shown: its URL (an `http` or `https` URL), architecture and engine key.
/// The most instances a host may report (well above what one host runs).
const MAX_INSTANCES: usize = 100_000;

/// What a host reports of its instances, checked before it is kept: how
/// many, valid names and digests (a failure text is cut to
/// [`roam_proto::MAX_FAILURE_TEXT`]).
fn reported_instances(instances: &mut [InstanceStatus]) -> Result<(), String> {
    if instances.len() > MAX_INSTANCES {
        return Err(format!(
            "{} instances reported, at most {MAX_INSTANCES}",
            instances.len()
        ));
    }
    for i in instances {
        roam_proto::names::workload(&i.workload).map_err(|e| e.to_string())?;
        if roam_proto::Digest::parse(&i.digest).is_none() {
            return Err(format!(
                "instance `{}`: the digest must be `sha256:` and 64 hex digits",
                i.workload
            ));
        }
        if let Some(text) = &mut i.last_failure {
            text.truncate(text.floor_char_boundary(roam_proto::MAX_FAILURE_TEXT));
        }
        if i.standby
            .as_deref()
            .is_some_and(|h| roam_proto::names::host(h).is_err())
        {
            return Err(format!(
                "instance `{}`: its standby is not a host name",
                i.workload
            ));
        }
    }
    Ok(())
}

/// What a host reports of the standbys it keeps, checked likewise.
fn reported_standbys(standbys: &[roam_proto::StandbyStatus]) -> Result<(), String> {
    if standbys.len() > MAX_INSTANCES {
        return Err(format!(
            "{} standbys reported, at most {MAX_INSTANCES}",
            standbys.len()
        ));
    }
    for s in standbys {
        roam_proto::names::workload(&s.workload).map_err(|e| e.to_string())?;
        roam_proto::names::host(&s.primary).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn reported_fields(url: &str, arch: &str, engine: &str) -> Result<(), String> {
    if url.len() > MAX_URL || !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!(
            "the host's URL must be an http(s) URL of at most {MAX_URL} bytes"
        ));
    }
    let printable = |s: &str| s.len() <= MAX_REPORTED && s.bytes().all(|b| b.is_ascii_graphic());
    if !printable(arch) || !printable(engine) {
        return Err(format!(
            "architecture and engine are at most {MAX_REPORTED} printable ASCII characters"
        ));
    }
    Ok(())
}

/// `POST /v1/hosts/join`: with a join token, or (over TLS) with the
/// certificate of the host being rejoined. The first join binds the name
/// to the token's trusted labels for good; a later join by token must
/// carry the same ones, and cannot take the name of a host that is alive.
pub(super) async fn join(
    State(s): State<Arc<Scheduler>>,
    peer: Peer,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let token = match s.role(&headers) {
        Some((hash, Role::Join { labels })) => Some((hash, labels)),
        _ => None,
    };
    if token.is_none() && peer.host().is_none() {
        return error(
            StatusCode::UNAUTHORIZED,
            if s.spent_token(&headers) {
                "the join token is used up or expired"
            } else {
                "a join token (or, to rejoin, the host's certificate) is required"
            },
        );
    }
    let mut req: JoinRequest = match parse(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    // The name first: it goes into every message after this.
    if let Err(e) = roam_proto::names::host(&req.name) {
        return error(StatusCode::BAD_REQUEST, e.to_string());
    }
    if let Err(e) = roam_proto::check_protocol(&format!("host `{}`", req.name), req.protocol) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    if let Err(e) = reported_fields(&req.url, &req.arch, &req.engine) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    if let Err(e) = reported_instances(&mut req.instances) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    let record = match s.host_record(&req.name) {
        Ok(r) => r,
        Err(r) => return r.into_response(),
    };
    if record.as_ref().is_some_and(|r| r.revoked_unix.is_some()) {
        return error(
            StatusCode::FORBIDDEN,
            format!(
                "host `{}` was revoked; a new host joins under another name",
                req.name
            ),
        );
    }
    let by_certificate = s.acts_as(&peer, &req.name) && record.is_some();
    let (hash, bound) = match (token, &record) {
        (_, Some(r)) if by_certificate => (String::new(), r.labels.clone()),
        (Some((_, labels)), Some(r)) if labels != r.labels => {
            return error(
                StatusCode::CONFLICT,
                format!(
                    "host `{}` first joined with the trusted labels {:?}; this token binds {:?}",
                    req.name, r.labels, labels
                ),
            );
        }
        (Some(t), _) => t,
        (None, _) => {
            return error(
                StatusCode::FORBIDDEN,
                format!(
                    "a certificate of {} cannot join as host `{}`",
                    peer.identity
                        .as_ref()
                        .map_or("nobody".into(), |i| i.to_string()),
                    req.name
                ),
            );
        }
    };
    if let Err(e) = auth::check_labels(&req.labels) {
        return error(StatusCode::BAD_REQUEST, e.to_string());
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
        && s.alive(&existing)
        && !by_certificate
        && (s.tls.is_some() || existing.token_hash != hash)
    {
        return error(
            StatusCode::CONFLICT,
            format!(
                "host `{}` is alive; another cannot join under its name",
                req.name
            ),
        );
    }
    if s.tls.is_some() && req.csr.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "this cluster runs over TLS: a join carries a certificate signing request",
        );
    }
    let base = match roam_tls::Identity::host(&req.name)
        .and_then(|identity| s.transport.base(&identity, &req.url))
    {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    if !by_certificate {
        match s.take_join_use(&hash) {
            Ok(true) => {}
            Ok(false) => {
                return error(
                    StatusCode::UNAUTHORIZED,
                    "the join token is used up or expired",
                );
            }
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
    let certificate = match s.issue_host_certificate(&req.name, &req.csr, Some(&bound)) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let secret = match auth::new_token() {
        Ok(t) => t,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    // Where it is reached, for every replica's ingress (only for a host with
    // an identity record: over TLS, every host).
    let url = req.url.clone();
    let recorded = s
        .store
        .update_host(&req.name, |r: Option<super::identity::HostRecord>| {
            r.map(|mut r| {
                r.url = Some(url.clone());
                r
            })
        });
    if let Err(e) = recorded {
        return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
    }
    let (liveness, liveness_grant) = s
        .liveness
        .grant(
            &req.name,
            s.hosts
                .get(&req.name)
                .and_then(|e| e.liveness.clone())
                .as_ref(),
        )
        .unzip();
    // What the host reports is not taken as it says: the reconciler keeps
    // what the records place here at the workload's generation and stops
    // the rest (`stop_unplaced`, `stop_stale`).
    s.hosts.insert(
        req.name.clone(),
        HostEntry {
            url: req.url,
            base,
            labels: Arc::new(labels.clone()),
            capacity: req.capacity,
            arch: req.arch,
            engine: req.engine,
            secret: secret.clone(),
            token_hash: hash,
            last_seen: Instant::now(),
            memory_used: req.instances.iter().map(|i| i.memory).sum(),
            instances: req.instances,
            standbys: Vec::new(),
            revocations_seen: s.revocations.load(std::sync::atomic::Ordering::Acquire),
            liveness,
        },
    );
    s.event("host_joined", serde_json::json!({ "host": req.name }));
    s.touch();
    Json(JoinResponse {
        labels,
        host_secret: secret,
        heartbeat_ms: s.config.heartbeat.as_millis() as u64,
        certificate,
        revoked: s.revocation_list(),
        term: s.leadership.term().unwrap_or(0),
        scrape: s.scrape.clone(),
        liveness: liveness_grant,
    })
    .into_response()
}

pub(super) async fn heartbeat(
    State(s): State<Arc<Scheduler>>,
    Path(name): Path<String>,
    peer: Peer,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let token = if s.tls.is_some() {
        if let Err(r) = s.require_host(&peer, &name) {
            return r.into_response();
        }
        None
    } else {
        match s.join_token(&headers) {
            Some(hash) => Some(hash),
            None => return error(StatusCode::UNAUTHORIZED, "a join token is required"),
        }
    };
    let mut beat: Heartbeat = match parse(&body) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if let Err(e) =
        reported_instances(&mut beat.instances).and_then(|()| reported_standbys(&beat.standbys))
    {
        return error(StatusCode::BAD_REQUEST, e);
    }
    let Some(mut entry) = s.hosts.get_mut(&name) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("unknown host `{name}`; join first"),
        );
    };
    if let Some(hash) = token
        && entry.token_hash != hash
    {
        return error(StatusCode::FORBIDDEN, "heartbeat with another host's token");
    }
    entry.last_seen = Instant::now();
    s.metrics.reports.inc();
    if beat.capacity.slots > 0 && entry.capacity != beat.capacity {
        entry.capacity = beat.capacity;
        s.touch();
    }
    if reported_fields(&entry.url, &beat.arch, &beat.engine).is_ok() {
        if !beat.arch.is_empty() {
            entry.arch = beat.arch;
        }
        if !beat.engine.is_empty() {
            entry.engine = beat.engine;
        }
    }
    // A checkpoint's age changes with every report; alone it is no change
    // for the reconciler.
    let ageless = |list: &[InstanceStatus]| -> Vec<InstanceStatus> {
        list.iter()
            .map(|i| InstanceStatus {
                checkpoint_age_ms: None,
                checkpoint_bytes: 0,
                ..i.clone()
            })
            .collect()
    };
    let changed = entry.memory_used != beat.memory_used
        || entry.standbys != beat.standbys
        || ageless(&entry.instances) != ageless(&beat.instances);
    if !changed {
        entry.instances = beat.instances;
    } else {
        let failed = new_failures(&entry.instances, &beat.instances);
        entry.memory_used = beat.memory_used;
        entry.instances = beat.instances;
        entry.standbys = beat.standbys;
        drop(entry);
        for f in failed {
            s.event(
                "workload_failed",
                serde_json::json!({
                    "workload": f.workload,
                    "host": name,
                    "rollbacks": f.rolled_back,
                    "restarts": f.restarted,
                    "outcome": if f.restarted > 0 {
                        "restarted from its initial state"
                    } else {
                        "rolled back to its last good state"
                    },
                    "reason": f.last_failure,
                }),
            );
        }
        s.touch();
    }
    StatusCode::NO_CONTENT.into_response()
}

/// The instances whose guest failed since the last report: each with how
/// many more failures were rolled back or restarted.
fn new_failures(before: &[InstanceStatus], now: &[InstanceStatus]) -> Vec<InstanceStatus> {
    now.iter()
        .filter_map(|i| {
            let (rolled_back, restarted) = before
                .iter()
                .find(|b| b.workload == i.workload && b.generation == i.generation)
                .map_or((0, 0), |b| (b.rolled_back, b.restarted));
            let more = InstanceStatus {
                rolled_back: i.rolled_back.saturating_sub(rolled_back),
                restarted: i.restarted.saturating_sub(restarted),
                ..i.clone()
            };
            (more.rolled_back > 0 || more.restarted > 0).then_some(more)
        })
        .collect()
}

pub(super) async fn nodes(State(s): State<Arc<Scheduler>>) -> Response {
    let cordoned = s.cordoned();
    let mut out: Vec<NodeInfo> = s
        .hosts
        .iter()
        .map(|e| NodeInfo {
            name: e.key().clone(),
            url: e.url.clone(),
            labels: (*e.labels).clone(),
            status: if !s.alive(&e) {
                NodeStatus::Down
            } else if cordoned.contains(e.key()) {
                NodeStatus::Cordoned
            } else {
                NodeStatus::Ready
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

/// `POST /v1/hosts/{name}/drain`: a host being stopped (SIGTERM) asks to be
/// drained, as `roam drain` would: cordoned, and its workloads moved off
/// live. Only the host itself (its certificate; in plaintext its join
/// token).
pub(super) async fn leave(
    State(s): State<Arc<Scheduler>>,
    Path(name): Path<String>,
    peer: Peer,
    headers: HeaderMap,
) -> Response {
    if s.tls.is_some() {
        if let Err(r) = s.require_host(&peer, &name) {
            return r.into_response();
        }
    } else {
        let ours = s
            .join_token(&headers)
            .is_some_and(|hash| s.hosts.get(&name).is_some_and(|e| e.token_hash == hash));
        if !ours {
            return error(StatusCode::FORBIDDEN, "only a host may ask to leave");
        }
    }
    s.event("host_leaving", serde_json::json!({ "host": name }));
    super::drain::drain(s, name).await
}

/// `POST /v1/nodes/{name}/{action}`: cordon, uncordon or drain a host.
pub(super) async fn node_action(
    State(s): State<Arc<Scheduler>>,
    Path((name, action)): Path<(String, String)>,
) -> Response {
    let on = match NodeAction::parse(&action) {
        Some(NodeAction::Drain) => return super::drain::drain(s, name).await,
        Some(NodeAction::Cordon) => true,
        Some(NodeAction::Uncordon) => false,
        None => return error(StatusCode::NOT_FOUND, format!("unknown action `{action}`")),
    };
    if !s.hosts.contains_key(&name) {
        return error(StatusCode::NOT_FOUND, format!("no host `{name}`"));
    }
    match s.set_cordoned(&name, on) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(workload: &str) -> InstanceStatus {
        InstanceStatus {
            workload: workload.into(),
            digest: format!("sha256:{}", "ab".repeat(32)),
            ..InstanceStatus::default()
        }
    }

    #[test]
    fn reported_instances_are_bounded_before_they_are_kept() {
        let mut ok = vec![instance("app")];
        ok[0].last_failure = Some("é".repeat(roam_proto::MAX_FAILURE_TEXT));
        assert!(reported_instances(&mut ok).is_ok());
        let text = ok[0].last_failure.as_ref().unwrap();
        assert!(text.len() <= roam_proto::MAX_FAILURE_TEXT && text.starts_with('é'));

        assert!(reported_instances(&mut [instance("../x")]).is_err());
        let mut bad_digest = instance("app");
        bad_digest.digest = format!("sha256:{}", "x".repeat(64));
        assert!(reported_instances(&mut [bad_digest]).is_err());
        let mut many = vec![instance("app"); MAX_INSTANCES + 1];
        assert!(reported_instances(&mut many).is_err());
    }

    #[test]
    fn only_failures_since_the_last_report_are_raised() {
        let mut before = instance("app");
        before.rolled_back = 2;
        let mut now = before.clone();
        assert!(new_failures(&[before.clone()], &[now.clone()]).is_empty());
        now.rolled_back = 3;
        let raised = new_failures(&[before.clone()], &[now.clone()]);
        assert_eq!((raised[0].rolled_back, raised[0].restarted), (1, 0));
        // A copy at a new generation (it moved back here) counts from zero.
        now.generation = 1;
        assert_eq!(new_failures(&[before], &[now])[0].rolled_back, 3);
    }
}
