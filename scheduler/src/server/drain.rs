//! `roam drain HOST`: cordon the host, then move every workload off it
//! live (through placement, within its rules). A workload whose live
//! migration fails is moved by stop-and-copy (paused for the whole copy,
//! its state kept); only when its host is unreachable is it stopped there
//! (if it can be) and restarted elsewhere by the reconciler, without its
//! state — the outcome says which. The reconciler moves a replica whose
//! host no longer meets its workload's rules the same way
//! ([`Scheduler::move_off`]).

use std::sync::Arc;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use roam_proto::reply::error;
use roam_proto::{DrainOutcome, DrainResult, MigrateRequest, MigrationOptions, MigrationPhase};

use super::Scheduler;
use super::migrations::MigrateError;

/// How long a drain waits for a migration off its host that a previous
/// leader left to be resolved.
const RESOLVE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// A drain under way: its outcomes once it ends.
pub(super) type Draining = tokio::sync::watch::Receiver<Option<Arc<Vec<DrainOutcome>>>>;

/// The outcomes of `draining` once it ends (none if its task failed).
async fn ended(mut draining: Draining) -> Arc<Vec<DrainOutcome>> {
    match draining.wait_for(Option::is_some).await {
        Ok(outcomes) => outcomes.clone().unwrap_or_default(),
        Err(_) => Arc::default(),
    }
}

impl Scheduler {
    /// The drain of `host` under way, or a new one: the host is marked as
    /// being drained in the store first, so a replica that takes over
    /// goes on with it ([`Scheduler::resume_drains`]). It runs in its own
    /// task, to the end, whether or not anyone waits for it.
    fn drain_task(self: &Arc<Self>, host: &str) -> Result<Draining, crate::store::StoreError> {
        let mut drains = self.drains.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = drains.get(host) {
            return Ok(d.clone());
        }
        self.set_draining(host, true)?;
        self.event("host_draining", serde_json::json!({ "host": host }));
        let s = self.clone();
        let name = host.to_string();
        let (done, draining) = tokio::sync::watch::channel(None);
        // The task takes the lock to remove itself: it cannot before it
        // is inserted, as the lock is held until then.
        tokio::spawn(async move {
            s.ready_to_drain(&name).await;
            let outcomes = s.drain(&name).await;
            // Ended: cordoned, no longer being drained; unless this replica
            // lost the lead meanwhile, and the next leader goes on with it.
            if s.leadership.leads() {
                match s.set_draining(&name, false) {
                    Ok(()) => s.event(
                        "host_drained",
                        serde_json::json!({ "host": name, "outcomes": outcomes }),
                    ),
                    Err(e) => {
                        tracing::warn!(host = %name, error = %e, "cannot record the end of a drain")
                    }
                }
            }
            s.drains
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&name);
            done.send_replace(Some(Arc::new(outcomes)));
        });
        drains.insert(host.to_string(), draining.clone());
        Ok(draining)
    }

    /// Go on with the drains the store marks that no task here runs: a
    /// leader that was killed or deposed in the middle of one left them.
    /// Once settled, so that hosts have reported where things run.
    pub(super) fn resume_drains(self: &Arc<Self>) {
        let marked: Vec<String> = self
            .desired
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .draining
            .iter()
            .cloned()
            .collect();
        for host in marked {
            let running = self
                .drains
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(&host);
            if running || self.unresolved_off(&host) {
                continue;
            }
            tracing::info!(%host, "going on with a drain a previous leader began");
            self.event("host_drain_resumed", serde_json::json!({ "host": host }));
            if let Err(e) = self.drain_task(&host) {
                tracing::warn!(%host, error = %e, "cannot go on with a drain");
            }
        }
    }

    /// Whether a migration off `host` that a previous leader left is not
    /// resolved yet (by asking the hosts): a drain would find its
    /// workload busy.
    fn unresolved_off(&self, host: &str) -> bool {
        self.migrations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .any(|m| m.source == host && (!m.finished() || self.is_pending(&m.id)))
    }

    /// Wait until a drain of `host` can see where things run: hosts have
    /// reported since this replica took the lead, and the migrations off
    /// it a previous leader left are resolved (for a while; after that
    /// the drain reports those workloads as busy).
    async fn ready_to_drain(&self, host: &str) {
        let patience = tokio::time::Instant::now() + RESOLVE_PATIENCE;
        while !self.settled()
            || (self.unresolved_off(host) && tokio::time::Instant::now() < patience)
        {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

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
    /// its rules); if that fails, by stop-and-copy; if `host` is down, stop
    /// it there and let the reconciler start it on a host that meets its
    /// rules. When no host can take it, it stays unless it `must_leave` (it
    /// breaks its rules where it is).
    pub(super) async fn move_off(
        self: &Arc<Self>,
        workload: String,
        host: &str,
        must_leave: bool,
    ) -> DrainOutcome {
        let outcome = |outcome, migration, detail| DrainOutcome {
            workload: workload.clone(),
            outcome,
            migration,
            detail,
        };
        let (migration, detail) = match self.move_by(&workload, host, false).await {
            Ok((id, target)) => {
                return outcome(DrainResult::Migrated, Some(id), format!("to {target}"));
            }
            Err((_, e @ Moved::Refused(MigrateError::AlreadyMigrating(_)))) => {
                return outcome(DrainResult::Failed, None, e.to_string());
            }
            Err((_, e @ Moved::Refused(MigrateError::NoHostCanTake { .. }))) if !must_leave => {
                return outcome(DrainResult::Failed, None, e.to_string());
            }
            Err((id, e)) => (id, e.to_string()),
        };
        let reachable = self.hosts.get(host).is_some_and(|e| self.alive(&e));
        let (migration, why) = if reachable {
            // The source answers: move it with its state, paused for the
            // copy, rather than lose it.
            match self.move_by(&workload, host, true).await {
                Ok((id, target)) => {
                    return outcome(
                        DrainResult::Copied,
                        Some(id),
                        format!(
                            "live migration failed ({detail}); moved to {target} by stop-and-copy"
                        ),
                    );
                }
                Err((id, e)) if !must_leave => {
                    return outcome(
                        DrainResult::Failed,
                        id.or(migration),
                        format!(
                            "live migration failed ({detail}) and stop-and-copy failed ({e}); it still runs on {host}"
                        ),
                    );
                }
                // It breaks its rules there: it must stop, state or not.
                Err((id, e)) => (
                    id.or(migration),
                    format!(
                        "live migration failed ({detail}), stop-and-copy failed ({e}) and it may not stay on {host}"
                    ),
                ),
            }
        } else {
            (
                migration,
                format!("live migration failed ({detail}) and {host} is down"),
            )
        };
        // Its state is out of reach (or it may not stay). Stop it there (in
        // case it comes back), the reconciler places it on a host that meets
        // its rules (this one is cordoned, or does not meet them).
        let stopped = self.stop_on(host, &workload).await;
        if let Err(e) = self.assign(&workload, host, false) {
            tracing::error!(%workload, %host, error = %e, "cannot record the placement");
        }
        self.touch();
        outcome(
            DrainResult::Restarted,
            migration,
            match stopped {
                Ok(()) => format!("{why}; restarted elsewhere without its state (no standby)"),
                Err(e) => format!(
                    "{why} (stopping it there: {e}); restarted elsewhere without its state (no standby)"
                ),
            },
        )
    }

    /// One migration of `workload` off `host` (live, or stop-and-copy),
    /// waited for: its id and target, or why it failed.
    async fn move_by(
        self: &Arc<Self>,
        workload: &str,
        host: &str,
        stop_and_copy: bool,
    ) -> Result<(String, String), (Option<String>, Moved)> {
        let request = MigrateRequest {
            workload: workload.to_string(),
            from: Some(host.to_string()),
            options: MigrationOptions {
                stop_and_copy,
                ..MigrationOptions::default()
            },
            ..MigrateRequest::default()
        };
        let m = self
            .start_migration(request)
            .await
            .map_err(|e| (None, Moved::Refused(e)))?;
        match self.wait(&m.id).await {
            Some(done) if done.phase == MigrationPhase::Done => Ok((m.id, done.target)),
            Some(failed) => Err((Some(m.id), Moved::Failed(failed.error.unwrap_or_default()))),
            None => Err((Some(m.id), Moved::Failed("migration vanished".into()))),
        }
    }
}

/// Why [`Scheduler::move_by`] did not move a workload.
#[derive(Debug, thiserror::Error)]
enum Moved {
    #[error(transparent)]
    Refused(MigrateError),
    #[error("{0}")]
    Failed(String),
}

/// `POST /v1/nodes/{name}/drain`: the outcomes of the host's drain, this
/// one or the one already under way (asking again joins it).
pub(super) async fn drain(s: Arc<Scheduler>, name: String) -> Response {
    let marked = s
        .desired
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .draining
        .contains(&name);
    if !s.hosts.contains_key(&name) && !marked {
        return error(StatusCode::NOT_FOUND, format!("no host `{name}`"));
    }
    match s.drain_task(&name) {
        Ok(draining) => Json(ended(draining).await.as_ref()).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
