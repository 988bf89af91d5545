//! In-place upgrades: the copy of a workload here replaced by another
//! revision of it (a new module, or new instance settings), with its
//! state, for the scheduler's rollouts.
//!
//! The new module is fetched and compiled first, while the old version
//! serves. Then the old version hands its state over at a safe point and
//! holds what arrives (a migration's freeze): the whole snapshot when the
//! module is the same, else the bytes of its upgrade hook
//! (`roam_upgrade_export`) plus its host-side state, or the host-side state
//! alone with `discard_state`. The new version starts from that; the held
//! and later events go to it in order, and the old instance is dropped.
//! If the new version does not start, the old one serves on, held events
//! first: a refused upgrade changes nothing.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use roam_proto::reply::error;
use roam_proto::{StateCarried, UpgradeDone, UpgradeInstance};
use roam_runtime::abi::{EXPORT_UPGRADE_EXPORT, EXPORT_UPGRADE_IMPORT};
use roam_runtime::driver::{Handover, HandoverKind};
use roam_runtime::{Digest, Workload};

use crate::daemon::Host;

/// `POST /v1/instances/{workload}/upgrade`.
pub(crate) async fn upgrade(
    State(host): State<Arc<Host>>,
    Path(workload): Path<String>,
    Json(up): Json<UpgradeInstance>,
) -> Response {
    let mut spec = up.instance;
    let Some(digest) = Digest::parse(&spec.digest) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("`{}` is not a sha256 digest", spec.digest),
        );
    };
    let (handle, status) = {
        let workloads = host.workloads.lock().await;
        let Some(running) = workloads.get(&workload) else {
            return crate::control::not_here(&workload);
        };
        if running.status.revision == spec.revision && running.status.digest == spec.digest {
            return done(spec.revision, StateCarried::Unchanged, 0, 0.0);
        }
        let standbys = host.standbys.lock().await;
        if let Err(full) = host.room_for(&workloads, &standbys, &workload, spec.memory) {
            return full.into_response();
        }
        (running.handle.clone(), running.status.clone())
    };
    // The copy keeps its generation: no other copy serves meanwhile.
    spec.generation = status.generation;
    let module = match host.module(&digest).await {
        Ok(m) => m,
        Err(e) => return e.reply(),
    };
    let kind = if status.digest == spec.digest {
        HandoverKind::Snapshot
    } else {
        let old_exports = Digest::parse(&status.digest)
            .and_then(|d| host.runtime.loaded(&d))
            .is_some_and(|m| m.exports_function(EXPORT_UPGRADE_EXPORT));
        let new_imports = module.exports_function(EXPORT_UPGRADE_IMPORT);
        match (old_exports && new_imports, up.discard_state) {
            (true, _) => HandoverKind::Hooks,
            (false, true) => HandoverKind::HostOnly,
            (false, false) => {
                let missing = match (old_exports, new_imports) {
                    (false, false) => format!(
                        "neither the running version exports `{EXPORT_UPGRADE_EXPORT}` nor the new one `{EXPORT_UPGRADE_IMPORT}`"
                    ),
                    (false, true) => {
                        format!("the running version exports no `{EXPORT_UPGRADE_EXPORT}`")
                    }
                    _ => format!("the new version exports no `{EXPORT_UPGRADE_IMPORT}`"),
                };
                return error(
                    StatusCode::CONFLICT,
                    format!(
                        "`{workload}` cannot carry its state to {}: {missing}; add the upgrade hooks (docs/abi.md) or deploy with --discard-state",
                        spec.digest
                    ),
                );
            }
        }
    };
    let config = host.instance_config(&workload, &spec);
    let paused = Instant::now();
    let handover = match handle.hand_over(kind).await {
        Ok(h) => h,
        Err(e) => return error(StatusCode::CONFLICT, e),
    };
    let (started, carried, bytes) = match &handover {
        Handover::Snapshot(s) => (
            Workload::restore(&host.runtime, &module, config.clone(), s, None).await,
            StateCarried::Snapshot,
            s.memory_bytes() as u64,
        ),
        Handover::Hooks(state, sections) => (
            Workload::upgrade(
                &host.runtime,
                &module,
                config.clone(),
                sections,
                Some(state),
            )
            .await,
            StateCarried::Hooks,
            state.len() as u64,
        ),
        Handover::HostOnly(sections) => (
            Workload::upgrade(&host.runtime, &module, config.clone(), sections, None).await,
            StateCarried::Discarded,
            0,
        ),
    };
    let mut next = match started {
        Ok(w) => w,
        Err(e) => {
            handle.resume().await;
            tracing::warn!(%workload, revision = spec.revision, error = %e, "upgrade refused; the running version serves on");
            return error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string());
        }
    };
    drop(handover);
    next.instance_mut().set_generation(spec.generation);
    // The standby holds the old version's state: its stream ends, and the
    // scheduler seeds a new one from this version. Until that one has the
    // new version's state, a `sync` copy holds its answers (`hold` below):
    // a failover meanwhile would promote the old state.
    if let Some(link) = host
        .links
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&workload)
    {
        link.stop();
    }
    // The old copy stays listed (frozen: what reaches it is held, then
    // handed to the new one) until the new one replaces it, so no request
    // meanwhile finds the workload missing; its place in the metrics moves
    // to the new copy.
    let tracking = host.workloads.lock().await.get_mut(&workload).map(|r| {
        let stand_in = r.tracking.stand_in();
        std::mem::replace(&mut r.tracking, stand_in)
    });
    let revision = spec.revision;
    let _ = host.drive(module, config, next, spec, true, tracking).await;
    let forwarder = host.bus.get(&workload).map(|new| new.forwarder());
    match forwarder {
        Some(f) => handle.handoff(f).await,
        None => handle.stop().await,
    }
    let paused_ms = paused.elapsed().as_secs_f64() * 1e3;
    tracing::info!(%workload, revision, state = ?carried, bytes, paused_ms, "upgraded in place");
    done(revision, carried, bytes, paused_ms)
}

fn done(revision: u64, state: StateCarried, state_bytes: u64, paused_ms: f64) -> Response {
    Json(UpgradeDone {
        revision,
        state,
        state_bytes,
        paused_ms,
    })
    .into_response()
}
