//! The scheduler's control API on a host (behind the host secret): start,
//! stop, logs, snapshot, restore, and messages for workloads here.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use roam_proto::reply::{error, not_dispatched};
use roam_proto::{StartInstance, headers, paths};
use roam_runtime::abi::MessageId;
use roam_runtime::snapshot::codec::{self, DecodeLimits};
use roam_runtime::{Digest, Workload};

use crate::access::HostAccess::Scheduler;
use crate::access::{MESSAGE, Route, SMALL, SPEC, rule};
use crate::daemon::Host;

use roam_proto::MAX_SNAPSHOT;

/// The control routes, the scheduler's (`access.rs` adds the check of its
/// certificate and the host secret).
pub(crate) fn routes() -> Vec<Route> {
    use paths::host as h;
    vec![
        rule("PUT", h::INSTANCE, Scheduler, SPEC, put(start)),
        rule("DELETE", h::INSTANCE, Scheduler, SMALL, delete(stop)),
        rule("GET", h::INSTANCE_LOGS, Scheduler, SMALL, get(logs)),
        rule(
            "POST",
            h::INSTANCE_SNAPSHOT,
            Scheduler,
            SMALL,
            post(snapshot),
        ),
        rule(
            "PUT",
            h::INSTANCE_RESTORE,
            Scheduler,
            MAX_SNAPSHOT,
            put(restore),
        ),
        rule(
            "POST",
            h::INSTANCE_GENERATION,
            Scheduler,
            SMALL,
            post(raise_generation),
        ),
        rule(
            "POST",
            h::INSTANCE_UPGRADE,
            Scheduler,
            SPEC,
            post(crate::upgrade::upgrade),
        ),
        rule("POST", h::MESSAGE, Scheduler, MESSAGE, post(message)),
        rule("PUT", h::REVOKED, Scheduler, MAX_REVOCATIONS, put(revoked)),
    ]
}

/// Largest revocation list accepted (what `roam_tls::revoked::MAX_REVOKED`
/// fingerprints take as JSON).
const MAX_REVOCATIONS: usize = roam_tls::revoked::MAX_REVOKED * 70 + 1024;

/// `PUT /v1/revoked`: the revoked certificates, from the scheduler.
async fn revoked(State(host): State<Arc<Host>>, body: Bytes) -> Response {
    let list: roam_proto::Revocations = match serde_json::from_slice(&body) {
        Ok(l) => l,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")),
    };
    match host.revocations(&list.fingerprints).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

/// The answer for a workload that does not run on this host.
pub(crate) fn not_here(workload: &str) -> Response {
    not_dispatched(
        StatusCode::NOT_FOUND,
        format!("no workload `{workload}` on this host"),
    )
}

async fn start(
    State(host): State<Arc<Host>>,
    Path(workload): Path<String>,
    Json(spec): Json<StartInstance>,
) -> Response {
    launch(host, workload, spec, None).await
}

/// `PUT /v1/instances/{workload}/restore`: the header
/// [`headers::INSTANCE`] carries the instance spec as JSON, the body the
/// encoded snapshot.
async fn restore(
    State(host): State<Arc<Host>>,
    Path(workload): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let spec: StartInstance = match headers
        .get(headers::INSTANCE)
        .and_then(|v| serde_json::from_slice(v.as_bytes()).ok())
    {
        Some(s) => s,
        None => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "header `{}` must hold the instance spec as JSON",
                    headers::INSTANCE
                ),
            );
        }
    };
    launch(host, workload, spec, Some(body)).await
}

async fn snapshot(State(host): State<Arc<Host>>, Path(workload): Path<String>) -> Response {
    let Some(handle) = host.bus.get(&workload) else {
        return not_here(&workload);
    };
    match handle.snapshot().await {
        Ok(bytes) => bytes.into_response(),
        Err(e) => error(StatusCode::CONFLICT, e.to_string()),
    }
}

/// Start `workload` fresh, or from `snapshot` bytes (checked against the
/// module and the memory cap before anything is restored).
async fn launch(
    host: Arc<Host>,
    workload: String,
    spec: StartInstance,
    snapshot: Option<Bytes>,
) -> Response {
    let Some(digest) = Digest::parse(&spec.digest) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("`{}` is not a sha256 digest", spec.digest),
        );
    };
    {
        let workloads = host.workloads.lock().await;
        if workloads
            .get(&workload)
            .is_some_and(|r| r.status.digest == spec.digest)
        {
            return StatusCode::OK.into_response();
        }
        // Hold to the capacity this host advertises (standbys count),
        // whatever the caller believes (its view may lag).
        // A copy that runs here replaces a standby kept here (the scheduler
        // places the standby elsewhere once it sees the primary here).
        let mut standbys = host.standbys.lock().await;
        if standbys.remove(&workload).is_some() {
            tracing::info!(%workload, "a primary starts here; dropping the standby kept here");
        }
        if let Err(full) = host.room_for(&workloads, &standbys, &workload, spec.memory) {
            return full.into_response();
        }
    }
    let module = match host.module(&digest).await {
        Ok(m) => m,
        Err(e) => return e.reply(),
    };
    let config = host.instance_config(&workload, &spec);
    let started = match &snapshot {
        None => Workload::start(&host.runtime, &module, config.clone()).await,
        Some(bytes) => {
            let limits = DecodeLimits {
                max_memory_bytes: spec.memory,
                ..Default::default()
            };
            let decoded = match codec::decode(bytes, Some(&digest), &limits) {
                Ok(s) if s.is_full() => s,
                Ok(_) => return error(StatusCode::BAD_REQUEST, "a delta cannot start a workload"),
                Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
            };
            Workload::restore(&host.runtime, &module, config.clone(), &decoded, None).await
        }
    };
    let mut instance = match started {
        Ok(w) => w,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
    };
    instance.instance_mut().set_generation(spec.generation);
    let fresh = snapshot.is_none();
    host.run_workload(module, config, instance, spec, fresh)
        .await;
    StatusCode::CREATED.into_response()
}

async fn stop(
    State(host): State<Arc<Host>>,
    Path(workload): Path<String>,
    Query(q): Query<roam_proto::StopQuery>,
) -> Response {
    let mut workloads = host.workloads.lock().await;
    if let (Some(below), Some(r)) = (q.below_generation, workloads.get(&workload))
        && r.status.generation >= below
    {
        return error(
            StatusCode::CONFLICT,
            format!(
                "`{workload}` runs here at generation {}, not below {below}",
                r.status.generation
            ),
        );
    }
    let removed = workloads.remove(&workload);
    drop(workloads);
    match removed {
        Some(r) => {
            host.bus.unregister(&workload);
            r.handle.stop().await;
            StatusCode::OK.into_response()
        }
        None => error(
            StatusCode::NOT_FOUND,
            format!("no workload `{workload}` on this host"),
        ),
    }
}

/// `POST /v1/instances/{workload}/generation`: the copy here runs at the
/// workload's newer generation (never lowered).
async fn raise_generation(
    State(host): State<Arc<Host>>,
    Path(workload): Path<String>,
    Json(raise): Json<roam_proto::RaiseGeneration>,
) -> Response {
    let mut workloads = host.workloads.lock().await;
    match workloads.get_mut(&workload) {
        Some(r) if r.status.generation > raise.generation => error(
            StatusCode::CONFLICT,
            format!(
                "`{workload}` runs here at generation {}, above {}",
                r.status.generation, raise.generation
            ),
        ),
        Some(r) => {
            if r.status.generation < raise.generation {
                tracing::info!(%workload, from = r.status.generation, to = raise.generation, "raised to the workload's generation");
            }
            r.status.generation = raise.generation;
            StatusCode::OK.into_response()
        }
        None => not_here(&workload),
    }
}

/// `GET /v1/instances/{workload}/logs?cursor=…&tail=N`: the copy's
/// records after the cursor's number for its timeline, else its newest.
async fn logs(
    State(host): State<Arc<Host>>,
    Path(workload): Path<String>,
    Query(q): Query<roam_proto::logs::LogsQuery>,
) -> Response {
    let cursor = match roam_proto::logs::Cursor::parse(q.cursor.as_deref().unwrap_or("")) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let Some(handle) = host.bus.get(&workload) else {
        return not_here(&workload);
    };
    match handle.logs(cursor.0, q.tail.map(|t| t as usize)).await {
        Ok(page) => {
            let mut answer = roam_proto::logs::InstanceLogs {
                timelines: page
                    .timelines
                    .into_iter()
                    .map(|(t, first, next)| roam_proto::logs::TimelineState {
                        timeline: format!("{t:016x}"),
                        first,
                        next,
                    })
                    .collect(),
                records: page.records.into_iter().map(line).collect(),
            };
            page_within(&mut answer, roam_proto::logs::MAX_PAGE_RECORDS_BYTES);
            Json(answer).into_response()
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// Cut `page` to the records that encode within `budget` bytes, oldest
/// first; each timeline that lost records says it stops before the
/// first of them, so the reader's next call starts there.
fn page_within(page: &mut roam_proto::logs::InstanceLogs, budget: usize) {
    let mut used = 0;
    let keep = page
        .records
        .iter()
        .take_while(|r| {
            used += serde_json::to_vec(r).map_or(usize::MAX / 2, |b| b.len() + 1);
            used <= budget
        })
        .count();
    for cut in page.records.drain(keep..) {
        if let Some(t) = page
            .timelines
            .iter_mut()
            .find(|t| t.timeline == cut.timeline)
        {
            t.next = t.next.min(cut.seq);
        }
    }
}

/// A record as the wire carries it.
fn line(r: roam_runtime::abi::LogRecord) -> roam_proto::logs::LogLine {
    const LEVELS: [&str; 5] = ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"];
    roam_proto::logs::LogLine {
        timeline: format!("{:016x}", r.timeline),
        seq: r.seq,
        time_ms: r.time_ms,
        level: LEVELS[usize::from(r.level.min(4))].to_string(),
        source: r.source.as_str().to_string(),
        message: r.message,
    }
}

async fn message(
    State(host): State<Arc<Host>>,
    Path(workload): Path<String>,
    Query(q): Query<roam_proto::FromQuery>,
    body: Bytes,
) -> Response {
    deliver(&host, &workload, &q, body).await
}

/// Hand a message to `workload` here: 202 once it is queued, answered as
/// not dispatched when the workload does not run here.
pub(crate) async fn deliver(
    host: &Host,
    workload: &str,
    from: &roam_proto::FromQuery,
    body: Bytes,
) -> Response {
    let Some(handle) = host.bus.get(workload) else {
        return not_here(workload);
    };
    let id = MessageId {
        stream: from.stream,
        seq: from.seq,
    };
    match handle.message(&from.from, id, body.to_vec()).await {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use roam_proto::logs::{InstanceLogs, LogLine, TimelineState};

    fn record(timeline: &str, seq: u64, message: &str) -> LogLine {
        LogLine {
            timeline: timeline.into(),
            seq,
            message: message.into(),
            ..LogLine::default()
        }
    }

    #[test]
    fn a_page_over_its_budget_stops_each_timeline_before_its_first_record_left_out() {
        let big = "x".repeat(1000);
        let mut page = InstanceLogs {
            timelines: vec![
                TimelineState {
                    timeline: "a".into(),
                    first: 0,
                    next: 3,
                },
                TimelineState {
                    timeline: "b".into(),
                    first: 0,
                    next: 2,
                },
            ],
            records: vec![
                record("a", 0, &big),
                record("b", 0, &big),
                record("a", 1, &big),
                record("b", 1, &big),
                record("a", 2, &big),
            ],
        };
        super::page_within(&mut page, 2500);
        assert_eq!(page.records.len(), 2);
        assert_eq!((page.timelines[0].next, page.timelines[1].next), (1, 1));
        // Within the budget: unchanged.
        let before = page.clone();
        super::page_within(&mut page, 1 << 20);
        assert_eq!(page, before);
    }
}
