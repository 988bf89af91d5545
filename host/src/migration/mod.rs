//! Live migration on a host, both roles: the source (`source.rs`) and the
//! target (`target.rs`), round 0's page streams (`pages.rs`), the pre-copy
//! stop rule (`convergence.rs`) and the errors of each side (`error.rs`).
//!
//! The protocol, as one state machine per role with every transition, who
//! causes it and what a crash in each state leads to, is
//! `docs/migration-protocol.md`. In short:
//! 1. the scheduler prepares the target (`target::prepare`: module, slot,
//!    per-migration key);
//! 2. it asks the source to send (`source::send`, answered with progress
//!    lines): round 0 (state in checked parts, pages over page streams),
//!    rounds of deltas until `convergence.rs` says stop, then the freeze
//!    and the final delta; once the target acknowledged it, the source is
//!    **prepared** — the commit point;
//! 3. the source activates the target itself (`target::activate`, with the
//!    key) and hands off; where it cannot, the scheduler's commit or abort
//!    (this file) decides, and an abort after the commit point reaches the
//!    source only once the target can no longer serve.
//!
//! This file holds what both roles share: the registry of migrations a host
//! takes part in, the routes, and the scheduler's commit, abort and status
//! calls, which find the role themselves.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use roam_proto::reply::error;
use roam_proto::{
    CommitOutcome, MigrationDecision, MigrationStatus, MigrationStatusQuery, SourcePhase,
    TargetPhase, paths,
};

mod convergence;
mod error;
pub(crate) mod pages;
mod source;
mod target;

use error::KeyError;
use source::{Outgoing, SourceAbort};
use target::Incoming;

use crate::access::HostAccess::{Scheduler, Source};
use crate::access::{MESSAGE, Route, SMALL, SPEC, rule};
use crate::daemon::Host;

/// Largest part of a round sent in one request.
const PART: usize = 16 << 20;

/// A received migration nobody commits or aborts for this long is dropped
/// (its slot freed); an activated migration's key, and a handed-off one's
/// downtime, are kept this long after the commit.
const STALE: Duration = Duration::from_secs(600);

/// A migration activated here (as target): the key the source forwards
/// messages with.
struct Activated {
    workload: String,
    key: String,
    /// The host it came from (over TLS, the only one let in).
    source: String,
    at: Instant,
}

/// Longest a request routed for a migration's new generation waits here
/// for the migration to be activated (the source forwards requests it held
/// while frozen as soon as its commit message is on its way).
const ARRIVAL_WAIT: Duration = Duration::from_secs(15);

/// What a host knows of the migrations it takes part in.
#[derive(Default)]
pub(crate) struct Migrations {
    /// As target: migrations being received, by id.
    incoming: tokio::sync::Mutex<HashMap<String, Incoming>>,
    /// As source: migrations being sent, by id.
    outgoing: Mutex<HashMap<String, Arc<Outgoing>>>,
    /// As source: workloads that moved away → target URL.
    moved: Mutex<HashMap<String, String>>,
    /// As target: migrations activated here, by id.
    activated: Mutex<HashMap<String, Activated>>,
    /// As source: handed-off migrations → downtime, for a repeated commit.
    committed: Mutex<HashMap<String, (Option<u64>, Instant)>>,
    /// As target: held while a received workload is activated.
    activating: tokio::sync::Mutex<()>,
    /// As target: the workload (and generation) being activated now, from
    /// the moment its migration leaves `incoming` until it runs or failed.
    starting: Mutex<Option<(String, u64)>>,
    /// As target: woken when an incoming migration was activated (or
    /// failed to be), or was dropped.
    arrival: tokio::sync::Notify,
}

impl Migrations {
    /// Where `workload` went, if it moved away from this host.
    pub(crate) fn moved_to(&self, workload: &str) -> Option<String> {
        self.moved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(workload)
            .cloned()
    }

    /// `workload` runs here (again): it is no longer "moved away".
    pub(crate) fn arrived(&self, workload: &str) {
        self.moved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(workload);
    }

    fn moved_away(&self, workload: &str, target: &str) {
        self.moved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(workload.to_string(), target.to_string());
    }

    /// As target: whether a migration of `workload` that will serve at
    /// `generation` is received here, or being activated.
    async fn arriving(&self, workload: &str, generation: u64) -> bool {
        // Under the lock an activation takes the migration out of
        // `incoming` and marks it `starting` with: one or the other shows.
        let incoming = self.incoming.lock().await;
        let starting = self
            .starting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|(w, g)| w == workload && *g == generation);
        starting
            || incoming
                .values()
                .any(|e| e.workload == workload && e.generation() == generation)
    }

    /// Wake requests waiting for an arrival ([`wait_for_arrival`]).
    fn arrival_changed(&self) {
        self.arrival.notify_waiters();
    }

    /// The downtime a handed-off migration recorded, if it was handed off
    /// here.
    fn committed_before(&self, id: &str) -> Option<Option<u64>> {
        self.committed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .map(|(d, _)| *d)
    }

    fn record_committed(&self, id: &str, downtime: Option<u64>) {
        let mut committed = self.committed.lock().unwrap_or_else(|e| e.into_inner());
        committed.retain(|_, (_, at)| at.elapsed() < STALE);
        committed.insert(id.to_string(), (downtime, Instant::now()));
    }

    /// As target: `id` was activated here (the workload serves here).
    fn activated(&self, id: &str) -> bool {
        self.activated
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(id)
    }

    fn record_activated(&self, id: &str, activated: Activated) {
        let mut all = self.activated.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|_, a| a.at.elapsed() < STALE);
        all.insert(id.to_string(), activated);
    }

    fn forget_activated(&self, id: &str) {
        self.activated
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// The workload of the migration `id` activated here, if `headers`
    /// carry its key.
    fn activated_with_key(&self, id: &str, headers: &HeaderMap) -> Result<String, KeyError> {
        match self
            .activated
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
        {
            Some(a) if roam_proto::reply::presents(headers, &a.key) => Ok(a.workload.clone()),
            Some(_) => Err(KeyError::Wrong),
            None => Err(KeyError::Unknown(id.to_string())),
        }
    }

    /// The source host of migration `id` received here.
    async fn source_of(&self, id: &str) -> Option<String> {
        if let Some(a) = self
            .activated
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
        {
            return Some(a.source.clone());
        }
        self.incoming
            .lock()
            .await
            .get(id)
            .map(|i| i.source_host().to_string())
    }

    fn outgoing(&self, id: &str) -> Option<Arc<Outgoing>> {
        self.outgoing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }
}

/// Routes the scheduler calls (behind the host secret).
pub(crate) fn control_routes() -> Vec<Route> {
    use paths::host as h;
    vec![
        rule(
            "POST",
            h::MIGRATION_PREPARE,
            Scheduler,
            SPEC,
            post(target::prepare),
        ),
        rule(
            "POST",
            h::MIGRATION_SEND,
            Scheduler,
            SMALL,
            post(source::send),
        ),
        rule("POST", h::MIGRATION_COMMIT, Scheduler, SMALL, post(commit)),
        rule("POST", h::MIGRATION_ABORT, Scheduler, SMALL, post(abort)),
        rule("POST", h::MIGRATION_FREEZE, Scheduler, SMALL, post(freeze)),
        rule("GET", h::MIGRATION_STATUS, Scheduler, SMALL, get(status)),
    ]
}

/// Over TLS, let into a migration's stream routes only the host the
/// scheduler named as its source (its certificate must name it); the
/// migration's key is checked by the route itself. A migration this host
/// does not know has no source: nobody is let in (401), so the routes say
/// nothing about which migrations exist to anyone else.
pub(crate) async fn require_source(
    State(host): State<Arc<Host>>,
    Path(params): Path<HashMap<String, String>>,
    peer: roam_tls::Peer,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if host.tls.is_none() {
        return next.run(request).await;
    }
    let Some(id) = params.get("id") else {
        return next.run(request).await;
    };
    let who = || {
        peer.identity
            .as_ref()
            .map_or("an unauthenticated client".into(), |i| i.to_string())
    };
    match host.migrations.source_of(id).await {
        Some(source) if peer.host() == Some(source.as_str()) => next.run(request).await,
        Some(source) => error(
            if peer.host().is_some() {
                StatusCode::FORBIDDEN
            } else {
                StatusCode::UNAUTHORIZED
            },
            format!("migration `{id}` comes from host `{source}`, not {}", who()),
        ),
        None => error(
            StatusCode::UNAUTHORIZED,
            format!("no migration `{id}` is coming to this host; only its source may call this"),
        ),
    }
}

/// Routes the source calls on the target (behind the migration's key).
pub(crate) fn stream_routes() -> Vec<Route> {
    use paths::host as h;
    vec![
        rule(
            "PUT",
            h::MIGRATION_ROUND,
            Source,
            PART + 4096,
            put(target::receive_round),
        ),
        rule(
            "POST",
            h::MIGRATION_PAGES,
            Source,
            SMALL,
            post(target::receive_pages),
        ),
        rule(
            "POST",
            h::MIGRATION_MESSAGES,
            Source,
            MESSAGE,
            post(target::forwarded_message),
        ),
        rule(
            "POST",
            h::MIGRATION_ACTIVATE,
            Source,
            SMALL,
            post(target::activate),
        ),
        rule(
            "DELETE",
            h::MIGRATION,
            Source,
            SMALL,
            delete(target::source_abort),
        ),
        rule("GET", h::MIGRATION, Source, SMALL, get(target::probe)),
    ]
}

/// `POST /v1/migrations/{id}/commit` (scheduler): on the source, hand off
/// (it may have already); on the target, activate.
async fn commit(
    State(host): State<Arc<Host>>,
    Path(id): Path<String>,
    Json(decision): Json<MigrationDecision>,
) -> Response {
    if let Some(out) = host.migrations.outgoing(&id) {
        return source::commit_outgoing(&host, &id, out, &decision).await;
    }
    if let Some(downtime_us) = host.migrations.committed_before(&id) {
        return Json(CommitOutcome { downtime_us }).into_response();
    }
    match target::activate_incoming(&host, &id, decision.generation).await {
        Ok(outcome) => Json(outcome).into_response(),
        Err(e) => error(e.status(), e.to_string()),
    }
}

/// `POST /v1/migrations/{id}/freeze` (scheduler): the source freezes for
/// its final delta (see [`source::freeze_ordered`]); 404 where this host
/// sends no migration `id`.
async fn freeze(State(host): State<Arc<Host>>, Path(id): Path<String>) -> Response {
    match host.migrations.outgoing(&id) {
        Some(out) => {
            source::freeze_ordered(&out);
            StatusCode::NO_CONTENT.into_response()
        }
        None => error(
            StatusCode::NOT_FOUND,
            format!("this host sends no migration `{id}`"),
        ),
    }
}

/// `GET /v1/migrations/{id}/status` (scheduler): what this host knows of a
/// migration, for a scheduler deciding whether it reached its commit point.
async fn status(
    State(host): State<Arc<Host>>,
    Path(id): Path<String>,
    Query(q): Query<MigrationStatusQuery>,
) -> Response {
    let answer = |status: MigrationStatus| Json(status).into_response();
    if let Some(out) = host.migrations.outgoing(&id) {
        return answer(MigrationStatus::Source(out.phase()));
    }
    if host.migrations.committed_before(&id).is_some() {
        return answer(MigrationStatus::Source(SourcePhase::Committed));
    }
    if let Some(entry) = host.migrations.incoming.lock().await.get(&id) {
        return answer(MigrationStatus::Target(entry.phase()));
    }
    // Long after the commit only the workload itself is left to show it.
    let serving = host.migrations.activated(&id)
        || host
            .workloads
            .lock()
            .await
            .get(&q.workload)
            .is_some_and(|r| q.generation > 0 && r.status.generation >= q.generation);
    if serving {
        return answer(MigrationStatus::Target(TargetPhase::Serving));
    }
    answer(MigrationStatus::Unknown)
}

/// `POST /v1/migrations/{id}/abort` (scheduler): on the target, drop what
/// was received (refused once activated); on the source, stop sending or,
/// if prepared, serve again (at the decision's generation, if set). Refused
/// with 409 once committed: the scheduler then completes the commit.
async fn abort(
    State(host): State<Arc<Host>>,
    Path(id): Path<String>,
    Json(decision): Json<MigrationDecision>,
) -> Response {
    let committed = || {
        error(
            StatusCode::CONFLICT,
            format!("migration `{id}` was committed; it cannot be aborted"),
        )
    };
    if host.migrations.committed_before(&id).is_some() {
        return committed();
    }
    {
        // Under the lock the target's activation takes.
        let mut incoming = host.migrations.incoming.lock().await;
        if host.migrations.activated(&id) {
            return error(
                StatusCode::CONFLICT,
                format!("migration `{id}` was committed here; it cannot be aborted"),
            );
        }
        if incoming.remove(&id).is_some() {
            tracing::info!(migration = %id, "migration aborted: dropped what was received");
            host.migrations.arrival_changed();
        }
    }
    if let Some(out) = host.migrations.outgoing(&id)
        && let SourceAbort::Refused =
            source::abort_outgoing(&host, &id, out, decision.generation).await
    {
        return committed();
    }
    StatusCode::OK.into_response()
}

/// A request for `workload` routed for `generation`, which does not run
/// here: if a migration of it to that generation is arriving, wait (at most
/// [`ARRIVAL_WAIT`]) until it is activated or dropped. Returns whether the
/// workload runs here now.
pub(crate) async fn wait_for_arrival(host: &Host, workload: &str, generation: u64) -> bool {
    let deadline = tokio::time::Instant::now() + ARRIVAL_WAIT;
    loop {
        // Registered before the checks: a wake-up in between is kept.
        let changed = host.migrations.arrival.notified();
        if host.workloads.lock().await.contains_key(workload) {
            return true;
        }
        if !host.migrations.arriving(workload, generation).await
            || tokio::time::Instant::now() >= deadline
        {
            return false;
        }
        // Also looked at again now and then: not every way a received
        // migration is dropped wakes this.
        let recheck = (tokio::time::Instant::now() + Duration::from_millis(50)).min(deadline);
        tokio::select! {
            () = changed => {}
            () = tokio::time::sleep_until(recheck) => {}
        }
    }
}
