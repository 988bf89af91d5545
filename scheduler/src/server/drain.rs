//! `roam drain HOST`: cordon the host, then move every workload off it
//! live (through placement, within its rules); a workload whose live
//! migration fails is stopped there and restarted elsewhere by the
//! reconciler.

use std::sync::Arc;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use roam_proto::reply::error;
use roam_proto::{DrainOutcome, DrainResult, MigrateRequest, MigrationPhase};

use super::Scheduler;
use super::migrations::MigrateError;

impl Scheduler {
    /// Move every workload off `host`: live if possible, else restarted
    /// elsewhere.
    async fn drain(self: &Arc<Self>, host: &str) -> Vec<DrainOutcome> {
        let workloads: Vec<String> = self
            .assignments
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, hosts)| hosts.contains(host))
            .map(|(w, _)| w.clone())
            .collect();
        let mut out = Vec::new();
        for workload in workloads {
            let request = MigrateRequest {
                workload: workload.clone(),
                from: Some(host.to_string()),
                ..MigrateRequest::default()
            };
            let (migration, detail) = match self.start_migration(request).await {
                Ok(m) => match self.wait(&m.id).await {
                    Some(done) if done.phase == MigrationPhase::Done => {
                        out.push(DrainOutcome {
                            workload,
                            outcome: DrainResult::Migrated,
                            migration: Some(m.id),
                            detail: format!("to {}", done.target),
                        });
                        continue;
                    }
                    Some(failed) => (Some(m.id), failed.error.unwrap_or_default()),
                    None => (Some(m.id), "migration vanished".into()),
                },
                Err(e @ MigrateError::NoHostCanTake { .. }) => {
                    out.push(DrainOutcome {
                        workload,
                        outcome: DrainResult::Failed,
                        migration: None,
                        detail: e.to_string(),
                    });
                    continue;
                }
                Err(e) => (None, e.to_string()),
            };
            // Fall back to a restart elsewhere: stop it here, the reconciler
            // places it on a host that meets its rules (this one is cordoned).
            let outcome = match self.stop_on(host, &workload).await {
                Ok(()) => {
                    if let Err(e) = self.assign(&workload, host, false) {
                        tracing::error!(%workload, %host, error = %e, "cannot record the placement");
                    }
                    self.touch();
                    DrainOutcome {
                        workload,
                        outcome: DrainResult::Restarted,
                        migration,
                        detail: format!("live migration failed ({detail}); restarted elsewhere"),
                    }
                }
                Err(e) => DrainOutcome {
                    workload,
                    outcome: DrainResult::Failed,
                    migration,
                    detail: format!("live migration failed ({detail}) and stopping failed: {e}"),
                },
            };
            out.push(outcome);
        }
        out
    }
}

/// `POST /v1/nodes/{name}/drain`.
pub(super) async fn drain(s: Arc<Scheduler>, name: String) -> Response {
    if !s.hosts.contains_key(&name) {
        return error(StatusCode::NOT_FOUND, format!("no host `{name}`"));
    }
    if let Err(e) = s.set_cordoned(&name, true) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    s.event("host_draining", serde_json::json!({ "host": name }));
    Json(s.drain(&name).await).into_response()
}
