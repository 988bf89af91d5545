//! The operator API (who may call what: `access.rs`): tokens, modules,
//! workloads and their logs, snapshot and restore of a replica, replicas,
//! events. Hosts download modules by digest with their certificate.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use roam_proto::reply::error;
use roam_proto::{
    InstanceInfo, ModuleRef, TokenInfo, TokenRequest, TokenResponse, TokenRole, WorkloadInfo,
    WorkloadSpec,
};

use super::{Refusal, Scheduler, parse};
use crate::auth::{self, Role, TokenRecord};
use crate::placement::{self, PlacementRequest};
use crate::selector::Selector;

impl Scheduler {
    pub(super) fn module_path(&self, digest: &str) -> Option<PathBuf> {
        let digest = roam_proto::Digest::parse(digest)?;
        Some(
            self.config
                .data_dir
                .join("modules")
                .join(format!("{}.wasm", digest.hex())),
        )
    }

    /// A module's bytes: from the data directory, else (several replicas
    /// sharing etcd) from the store, checked against the digest and kept
    /// in the data directory from then on. `None`: no such module.
    pub(super) async fn module_bytes(
        self: &Arc<Self>,
        digest: &str,
    ) -> Result<Option<Vec<u8>>, String> {
        let Some(path) = self.module_path(digest) else {
            return Err(format!("`{digest}` is not a sha256 digest"));
        };
        if let Ok(bytes) = tokio::fs::read(&path).await {
            return Ok(Some(bytes));
        }
        if !self.store.shared() {
            return Ok(None);
        }
        let s = self.clone();
        let key = digest.to_string();
        let stored = tokio::task::spawn_blocking(move || s.store.module(&key, MAX_MODULE))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let Some(bytes) = stored else {
            return Ok(None);
        };
        if roam_proto::Digest::of(&bytes).to_string() != digest {
            return Err(format!("the store's copy of module {digest} is corrupt"));
        }
        let tmp = path.with_extension("tmp");
        if let Err(e) = std::fs::write(&tmp, &bytes).and_then(|()| std::fs::rename(&tmp, &path)) {
            tracing::warn!(error = %e, "cannot keep a module in the data directory");
        }
        Ok(Some(bytes))
    }
}

/// Largest module kept (the upload route's body limit).
const MAX_MODULE: u64 = 64 << 20;

/// Join tokens live this long unless asked otherwise.
const JOIN_TOKEN_TTL: u64 = 24 * 3600;

/// `POST /v1/tokens` (admin): a token of any role; join tokens bind trusted
/// labels, expire (24 h unless asked) and may be limited to N joins.
pub(super) async fn create_token(State(s): State<Arc<Scheduler>>, body: Bytes) -> Response {
    let req: TokenRequest = match parse(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let role = match req.role {
        TokenRole::Join => {
            if let Err(e) = auth::check_join_labels(&req.labels) {
                return error(StatusCode::BAD_REQUEST, e.to_string());
            }
            Role::Join { labels: req.labels }
        }
        other if !req.labels.is_empty() || req.uses.is_some() => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "labels and uses are for join tokens, not {} tokens",
                    other.as_str()
                ),
            );
        }
        TokenRole::Admin => Role::Admin,
        TokenRole::Operator => Role::Operator,
        TokenRole::Viewer => Role::Viewer,
    };
    if req.ttl_secs == Some(0) || req.uses == Some(0) {
        return error(
            StatusCode::BAD_REQUEST,
            "a token that admits nothing is not a token: ttl and uses must be above 0",
        );
    }
    let ttl = match (&role, req.ttl_secs) {
        (_, Some(t)) => Some(t),
        (Role::Join { .. }, None) => Some(JOIN_TOKEN_TTL),
        (_, None) => None,
    };
    let token = match auth::new_token() {
        Ok(t) => t,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let hash = auth::hash_token(&token);
    let now = auth::now_unix();
    let record = TokenRecord {
        hash: hash.clone(),
        role,
        created: now,
        expires: ttl.map(|t| now.saturating_add(t)),
        uses_left: req.uses,
    };
    if let Err(e) = s.store.put_token(&hash, &record) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    let response = TokenResponse {
        // Over TLS a join token carries the CA's hash, so a host checks the
        // scheduler before it presents the secret.
        token: match (&s.tls, &record.role) {
            (Some(tls), Role::Join { .. }) => format!("{token}.{}", tls.ca.hash()),
            _ => token,
        },
        id: record.id().to_string(),
        expires_unix: record.expires,
    };
    s.event(
        "token_created",
        serde_json::json!({ "id": record.id(), "role": record.role.wire() }),
    );
    s.tokens
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(hash, record);
    (StatusCode::CREATED, Json(response)).into_response()
}

/// `GET /v1/tokens` (admin): every token's id, role, labels, expiry and
/// uses left; never a token.
pub(super) async fn list_tokens(State(s): State<Arc<Scheduler>>) -> Response {
    let mut out: Vec<TokenInfo> = s
        .tokens
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .map(|r| TokenInfo {
            id: r.id().to_string(),
            role: r.role.wire(),
            labels: match &r.role {
                Role::Join { labels } => labels.clone(),
                _ => Default::default(),
            },
            created_unix: r.created,
            expires_unix: r.expires,
            uses_left: r.uses_left,
        })
        .collect();
    out.sort_by(|a, b| (a.created_unix, &a.id).cmp(&(b.created_unix, &b.id)));
    Json(out).into_response()
}

/// `DELETE /v1/tokens/{id}` (admin): revoke a token; it admits nothing from
/// now on. Hosts that joined with it keep their certificates.
pub(super) async fn revoke_token(
    State(s): State<Arc<Scheduler>>,
    Path(id): Path<String>,
) -> Response {
    let found: Vec<TokenRecord> = s
        .tokens
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .filter(|r| r.id() == id)
        .cloned()
        .collect();
    let [record] = found.as_slice() else {
        return error(StatusCode::NOT_FOUND, format!("no token with id `{id}`"));
    };
    let admins = s
        .tokens
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .filter(|r| r.role == Role::Admin && r.live(auth::now_unix()))
        .count();
    if record.role == Role::Admin && admins <= 1 {
        return error(
            StatusCode::CONFLICT,
            "this is the last admin token; create another before revoking it",
        );
    }
    if let Err(e) = s.store.delete_token(&record.hash) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    s.tokens
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&record.hash);
    s.event(
        "token_revoked",
        serde_json::json!({ "id": id, "role": record.role.wire() }),
    );
    StatusCode::NO_CONTENT.into_response()
}

pub(super) async fn upload_module(State(s): State<Arc<Scheduler>>, body: Bytes) -> Response {
    match s.keep_module(body.clone()).await {
        Ok(digest) => (
            StatusCode::CREATED,
            Json(ModuleRef {
                digest,
                size: body.len() as u64,
            }),
        )
            .into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

impl Scheduler {
    /// Keep a module's bytes (on disk, and in a shared store for every
    /// replica); its digest.
    async fn keep_module(self: &Arc<Self>, body: Bytes) -> Result<String, Refusal> {
        if !body.starts_with(b"\0asm") {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "not a WebAssembly module (no `\\0asm` header)",
            ));
        }
        let digest = roam_proto::Digest::of(&body).to_string();
        let internal = |e: String| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e);
        let path = self
            .module_path(&digest)
            .ok_or_else(|| internal("bad digest".into()))?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &body)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| internal(e.to_string()))?;
        if self.store.shared() {
            // Every replica must be able to serve it once it is acknowledged.
            let (store_of, key, bytes) = (self.clone(), digest.clone(), body.clone());
            tokio::task::spawn_blocking(move || store_of.store.put_module(&key, &bytes))
                .await
                .map_err(|e| internal(e.to_string()))?
                .map_err(|e| Refusal::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
        }
        Ok(digest)
    }

    /// A deploy by reference: resolve `source`'s tag once, fetch its
    /// module, check its digest (and its signature, when the cluster
    /// requires one), keep it; the module's digest and `source` pinned to
    /// the manifest digest.
    async fn pull(self: &Arc<Self>, source: &str) -> Result<(String, String), Refusal> {
        use crate::oci::{OciError, Reference};
        let reference = Reference::parse(source)
            .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, e.to_string()))?;
        let pulled = self
            .registries
            .pull_module(&reference, MAX_MODULE as usize, &self.trusted_keys)
            .await;
        let (manifest, bytes) = pulled.map_err(|e| {
            let status = match e {
                OciError::Registry { .. } => StatusCode::BAD_GATEWAY,
                _ => StatusCode::BAD_REQUEST,
            };
            Refusal::new(status, e.to_string())
        })?;
        let digest = self.keep_module(Bytes::from(bytes)).await?;
        self.event(
            "module_pulled",
            serde_json::json!({ "source": source, "manifest": manifest, "digest": digest }),
        );
        Ok((digest, reference.pinned(&manifest)))
    }
}

pub(super) async fn download_module(
    State(s): State<Arc<Scheduler>>,
    Path(digest): Path<String>,
    peer: roam_tls::Peer,
    headers: HeaderMap,
) -> Response {
    if !s.token_covers(&headers, &Role::Operator)
        && let Err(r) = s.calling_host(&peer, &headers)
    {
        return r.into_response();
    }
    if roam_proto::Digest::parse(&digest).is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            format!("`{digest}` is not a sha256 digest"),
        );
    }
    match s.module_bytes(&digest).await {
        Ok(Some(bytes)) => bytes.into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no module {digest}")),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

pub(super) async fn deploy(State(s): State<Arc<Scheduler>>, body: Bytes) -> Response {
    let mut spec: WorkloadSpec = match parse(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match &spec.source {
        Some(source) => match s.pull(source).await {
            Ok((digest, pinned)) => {
                if !spec.digest.is_empty() && spec.digest != digest {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("{source} is module {digest}, not {}", spec.digest),
                    );
                }
                spec.digest = digest;
                spec.source = Some(pinned);
            }
            Err(refusal) => return refusal.into_response(),
        },
        None if !s.trusted_keys.is_empty() => {
            return error(
                StatusCode::BAD_REQUEST,
                "this cluster requires signed modules (--require-signed): push the module with `roam push --sign KEY` and deploy it by its oci:// reference",
            );
        }
        None => {}
    }
    if let Err(e) = roam_proto::names::workload(&spec.name) {
        return error(StatusCode::BAD_REQUEST, e.to_string());
    }
    if let Err(e) = Selector::parse(&spec.selector) {
        return error(StatusCode::BAD_REQUEST, e.to_string());
    }
    let here = s.module_path(&spec.digest).is_some_and(|p| p.exists());
    if !here && !matches!(s.module_bytes(&spec.digest).await, Ok(Some(_))) {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "no module {}; upload it with PUT {}",
                spec.digest,
                roam_proto::paths::scheduler::MODULES
            ),
        );
    }
    if spec.replicas > 1000 {
        return error(StatusCode::BAD_REQUEST, "at most 1000 replicas");
    }
    if spec
        .rollout
        .max_unavailable
        .is_some_and(|n| n == 0 || n > roam_proto::MAX_UNAVAILABLE)
    {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "max_unavailable must be 1 to {}",
                roam_proto::MAX_UNAVAILABLE
            ),
        );
    }
    if let Some(ms) = spec.checkpoint_interval_ms {
        if spec.durability != roam_proto::Durability::Async {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "a checkpoint interval is for `async` durability (this workload's is `{}`)",
                    spec.durability
                ),
            );
        }
        if !roam_proto::CHECKPOINT_INTERVAL_MS.contains(&ms) {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "checkpoint interval of {ms} ms: it must be {} ms to {} ms",
                    roam_proto::CHECKPOINT_INTERVAL_MS.start(),
                    roam_proto::CHECKPOINT_INTERVAL_MS.end()
                ),
            );
        }
    }
    put_and_answer(&s, spec, false).await
}

/// Store `spec` (a deploy, or with `undo` the previous revision again)
/// and answer with it as stored.
async fn put_and_answer(s: &Arc<Scheduler>, spec: WorkloadSpec, undo: bool) -> Response {
    // The store's commit off the async workers (an etcd transaction
    // waits for a quorum's fsync): deploys commit side by side.
    let put = {
        let (s, spec) = (s.clone(), spec.clone());
        tokio::task::spawn_blocking(move || s.put_spec(&spec, undo)).await
    };
    let put = put.unwrap_or_else(|e| Err(crate::store::StoreError::from_join(e)));
    match put {
        Ok(stored) => {
            s.rollout_changed(&stored.name);
            s.event(
                if undo {
                    "rollout_undone"
                } else {
                    "workload_deployed"
                },
                serde_json::json!({
                    "workload": stored.name,
                    "digest": stored.digest,
                    "revision": stored.revision,
                }),
            );
            (StatusCode::CREATED, Json(stored)).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `GET /v1/workloads/{name}/rollout`.
pub(super) async fn rollout_status(
    State(s): State<Arc<Scheduler>>,
    Path(name): Path<String>,
) -> Response {
    match s.spec(&name) {
        Some(spec) => Json(s.rollout_status(&spec)).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no workload `{name}`")),
    }
}

/// `POST /v1/workloads/{name}/rollout/undo`: the previous revision's
/// module and settings become a new revision (placement rules and replica
/// count stay as they are now).
pub(super) async fn rollout_undo(
    State(s): State<Arc<Scheduler>>,
    Path(name): Path<String>,
) -> Response {
    let Some(current) = s.spec(&name) else {
        return error(StatusCode::NOT_FOUND, format!("no workload `{name}`"));
    };
    let Some(previous) = s.previous_spec(&name) else {
        return error(
            StatusCode::CONFLICT,
            format!("`{name}` has no previous revision to go back to"),
        );
    };
    let back = WorkloadSpec {
        replicas: current.replicas,
        selector: current.selector.clone(),
        spread_by: current.spread_by.clone(),
        rollout: current.rollout.clone(),
        ..previous
    };
    put_and_answer(&s, back, true).await
}

/// A workload with where it runs and why every other host is not used,
/// computed when asked (`describe`), not on every reconcile round.
fn info(s: &Scheduler, spec: WorkloadSpec) -> WorkloadInfo {
    let hosts: Vec<String> = s.placed_on(&spec.name);
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
    let protection = if spec.durability == roam_proto::Durability::None {
        BTreeMap::new()
    } else {
        hosts
            .iter()
            .map(|h| (h.clone(), s.protection(&spec, h)))
            .collect()
    };
    WorkloadInfo {
        generation: s.generation(&spec.name),
        spec,
        hosts,
        rejected,
        protection,
    }
}

/// What a viewer sees of an environment value.
const HIDDEN: &str = "(hidden)";

/// A workload as its caller may see it: a viewer gets the environment's
/// names, not its values (they may be secrets).
fn shown(s: &Scheduler, headers: &HeaderMap, mut spec: WorkloadSpec) -> WorkloadInfo {
    if !s.token_covers(headers, &Role::Operator) {
        for value in spec.env.values_mut() {
            *value = HIDDEN.to_string();
        }
    }
    info(s, spec)
}

pub(super) async fn workloads(State(s): State<Arc<Scheduler>>, headers: HeaderMap) -> Response {
    let out: Vec<WorkloadInfo> = s
        .specs()
        .into_iter()
        .map(|spec| shown(&s, &headers, spec))
        .collect();
    Json(out).into_response()
}

pub(super) async fn workload(
    State(s): State<Arc<Scheduler>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    match s.spec(&name) {
        Some(spec) => Json(shown(&s, &headers, spec)).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no workload `{name}`")),
    }
}

pub(super) async fn delete_workload(
    State(s): State<Arc<Scheduler>>,
    Path(name): Path<String>,
) -> Response {
    let deleted = {
        let (s, name) = (s.clone(), name.clone());
        tokio::task::spawn_blocking(move || s.delete_spec(&name)).await
    };
    match deleted.unwrap_or_else(|e| Err(crate::store::StoreError::from_join(e))) {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => error(StatusCode::NOT_FOUND, format!("no workload `{name}`")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `GET /v1/workloads/{name}/logs?cursor=…&tail=N`: the records of every
/// replica after the cursor (each replica's newest `tail` without one),
/// by time, with the cursor for the next call and what its hosts no
/// longer kept.
pub(super) async fn workload_logs(
    State(s): State<Arc<Scheduler>>,
    Path(name): Path<String>,
    axum::extract::Query(q): axum::extract::Query<roam_proto::logs::LogsQuery>,
) -> Response {
    use roam_proto::logs::{Cursor, Missed, WorkloadLogLine, WorkloadLogs};
    let before = match Cursor::parse(q.cursor.as_deref().unwrap_or("")) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    if !s.has_workload(&name) {
        return error(StatusCode::NOT_FOUND, format!("no workload `{name}`"));
    }
    let hosts: Vec<String> = s.placed_on(&name);
    let asked = futures_util::future::join_all(hosts.iter().map(|host| {
        let (s, name, q) = (&s, &name, &q);
        async move {
            let to = s.endpoint(host)?;
            s.client.logs(&to, name, q).await.ok()
        }
    }))
    .await;
    let mut out = WorkloadLogs::default();
    let mut after = Cursor::default();
    let mut unanswered = false;
    for (host, answer) in hosts.iter().zip(asked) {
        let Some(page) = answer else {
            unanswered = true;
            continue;
        };
        for state in &page.timelines {
            let Ok(timeline) = u64::from_str_radix(&state.timeline, 16) else {
                continue;
            };
            if timeline == 0 {
                continue;
            }
            if let Some(&wanted) = before.0.get(&timeline)
                && state.first > wanted
            {
                out.missed.push(Missed {
                    host: host.clone(),
                    timeline: state.timeline.clone(),
                    records: state.first - wanted,
                });
            }
            let next = after.0.entry(timeline).or_insert(state.next);
            *next = (*next).max(state.next);
        }
        out.records
            .extend(page.records.into_iter().map(|line| WorkloadLogLine {
                host: host.clone(),
                line,
            }));
    }
    // A replica whose host did not answer keeps its place (its timeline
    // is not known here: every earlier one stays, bounded).
    if unanswered {
        for (timeline, next) in before.0 {
            if after.0.len() >= roam_proto::logs::MAX_CURSOR_ENTRIES {
                break;
            }
            after.0.entry(timeline).or_insert(next);
        }
    }
    out.records.sort_by(|a, b| {
        (a.line.time_ms, &a.line.timeline, a.line.seq).cmp(&(
            b.line.time_ms,
            &b.line.timeline,
            b.line.seq,
        ))
    });
    out.cursor = after.to_string();
    Json(out).into_response()
}

/// `POST /v1/workloads/{name}/snapshot?host=H`: the encoded snapshot of the
/// replica on host H, taken at its next safe point.
pub(super) async fn snapshot_workload(
    State(s): State<Arc<Scheduler>>,
    Path(name): Path<String>,
    axum::extract::Query(q): axum::extract::Query<roam_proto::HostQuery>,
) -> Response {
    let Some(to) = s.endpoint(&q.host) else {
        return error(StatusCode::NOT_FOUND, format!("no host `{}`", q.host));
    };
    match s.client.snapshot(&to, &name).await {
        Ok(bytes) => bytes.into_response(),
        Err(e) => error(StatusCode::BAD_GATEWAY, e.to_string()),
    }
}

/// `POST /v1/workloads/{name}/restore?host=H` with a snapshot as the body:
/// restore the workload on host H from it, then stop its other replicas (a
/// stop-and-copy move; live migration is pre-copy and comes separately).
pub(super) async fn restore_workload(
    State(s): State<Arc<Scheduler>>,
    Path(name): Path<String>,
    axum::extract::Query(q): axum::extract::Query<roam_proto::HostQuery>,
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
    let Some(to) = s.endpoint(&q.host) else {
        return error(StatusCode::NOT_FOUND, format!("no host `{}`", q.host));
    };
    let instance = spec.instance(s.generation(&name));
    // The reconciler leaves the workload alone until its placement says
    // where the restored copy runs.
    let _busy = s.busy(&name);
    if let Err(e) = s.client.restore(&to, &name, &instance, body.to_vec()).await {
        return error(StatusCode::BAD_GATEWAY, e.to_string());
    }
    let others: Vec<String> = {
        let mut assignments = s.assignments.lock().unwrap_or_else(|e| e.into_inner());
        let only = BTreeSet::from([q.host.clone()]);
        if let Err(e) = s.record_placement(&name, &only) {
            return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
        }
        let hosts = assignments.entry(name.clone()).or_default();
        let others = hosts.iter().filter(|h| **h != q.host).cloned().collect();
        *hosts = only;
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

pub(super) async fn instances(State(s): State<Arc<Scheduler>>) -> Response {
    let assignments = s
        .assignments
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let confirmed = s
        .confirmed
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let out: Vec<InstanceInfo> = assignments
        .into_iter()
        .flat_map(|(w, hosts)| {
            let (s, confirmed) = (&s, &confirmed);
            hosts.into_iter().map(move |h| {
                let entry = s.hosts.get(&h);
                let found = entry
                    .as_ref()
                    .and_then(|e| e.instances.iter().find(|i| i.workload == w).cloned());
                // Serving: its host is alive and confirmed the start, or
                // reports it running.
                let started = found.is_some() || confirmed.contains(&(w.clone(), h.clone()));
                let reported = found.unwrap_or_default();
                let standby = s.standby_of(&w, &h);
                // The age only of checkpoints the recorded standby took.
                let checkpoint_age_ms = reported
                    .checkpoint_age_ms
                    .filter(|_| standby.is_some() && reported.standby == standby);
                InstanceInfo {
                    ready: started && entry.is_some_and(|e| s.alive(&e)),
                    workload: w.clone(),
                    host: h,
                    rolled_back: reported.rolled_back,
                    restarted: reported.restarted,
                    last_failure: reported.last_failure,
                    standby,
                    checkpoint_age_ms,
                    checkpoint_bytes: reported.checkpoint_bytes,
                    generation: reported.generation,
                }
            })
        })
        .collect();
    Json(out).into_response()
}
