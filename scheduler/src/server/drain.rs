//! `roam drain HOST`: cordon the host, then move every workload off it
//! live (through placement, within its rules); a workload whose live
//! migration fails is stopped there and restarted elsewhere by the
//! reconciler. The reconciler moves a replica whose host no longer meets
//! its workload's rules the same way ([`Scheduler::move_off`]).

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
            out.push(self.move_off(workload, host, false).await);
        }
        out
    }

    /// Move `workload`'s replica off `host` live, through placement (within
    /// its rules); if that fails, stop it there and let the reconciler start
    /// it on a host that meets its rules. When no host can take it, it stays
    /// unless it `must_leave` (it breaks its rules where it is).
    pub(super) async fn move_off(
        self: &Arc<Self>,
        workload: String,
        host: &str,
        must_leave: bool,
    ) -> DrainOutcome {
        let request = MigrateRequest {
            workload: workload.clone(),
            from: Some(host.to_string()),
            ..MigrateRequest::default()
        };
        let (migration, detail) = match self.start_migration(request).await {
            Ok(m) => match self.wait(&m.id).await {
                Some(done) if done.phase == MigrationPhase::Done => {
                    return DrainOutcome {
                        workload,
                        outcome: DrainResult::Migrated,
                        migration: Some(m.id),
                        detail: format!("to {}", done.target),
                    };
                }
                Some(failed) => (Some(m.id), failed.error.unwrap_or_default()),
                None => (Some(m.id), "migration vanished".into()),
            },
            Err(e @ MigrateError::AlreadyMigrating(_)) => {
                return DrainOutcome {
                    workload,
                    outcome: DrainResult::Failed,
                    migration: None,
                    detail: e.to_string(),
                };
            }
            Err(e @ MigrateError::NoHostCanTake { .. }) if !must_leave => {
                return DrainOutcome {
                    workload,
                    outcome: DrainResult::Failed,
                    migration: None,
                    detail: e.to_string(),
                };
            }
            Err(e) => (None, e.to_string()),
        };
        // Fall back to a restart elsewhere: stop it here, the reconciler
        // places it on a host that meets its rules (this one is cordoned,
        // or does not meet them).
        match self.stop_on(host, &workload).await {
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
        }
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
