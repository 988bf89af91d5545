//! Rollouts: a workload's replicas brought to its current revision (a new
//! module, or new instance settings) one group at a time, each replaced in
//! place on its host with its state (`host/src/upgrade.rs`), at most
//! `max_unavailable` at once. A replica counts as updated once its host
//! answered that the new version started (its import or init hook
//! returned: a readiness that changes no state); a refusal stops the
//! rollout with the host's reason, the replicas not yet replaced left
//! running the old revision, until a new deploy or `roam rollout undo`.

use std::collections::BTreeSet;
use std::sync::Arc;

use roam_proto::{RolloutStatus, StateCarried, UpgradeInstance, WorkloadSpec, rollout_state};

use super::Scheduler;
use super::host_client::HostError;

/// What a rollout in memory records (lost on restart: a new leader tries
/// the replicas not yet replaced again, once).
#[derive(Default)]
pub(super) struct Rollouts {
    /// (workload, host) replicas being replaced now.
    upgrading: BTreeSet<(String, String)>,
    /// Workload → (revision, why a replica refused it).
    failed: std::collections::HashMap<String, (u64, String)>,
    /// Workload → the last revision announced complete (replicas finishing
    /// together announce it once).
    completed: std::collections::HashMap<String, u64>,
}

impl Scheduler {
    /// Start replacing the replicas of `specs` that run another revision
    /// than their workload's current one, up to its `max_unavailable` at
    /// a time. Workloads in `frozen` (in a migration, or with a host that
    /// has not reported yet) wait.
    pub(super) fn roll_out(self: &Arc<Self>, specs: &[WorkloadSpec], frozen: &BTreeSet<String>) {
        let alive: BTreeSet<String> = self
            .host_views()
            .into_iter()
            .filter(|v| v.alive)
            .map(|v| v.id)
            .collect();
        for spec in specs {
            if frozen.contains(&spec.name) {
                continue;
            }
            let mut rollouts = self.rollouts.lock().unwrap_or_else(|e| e.into_inner());
            if rollouts
                .failed
                .get(&spec.name)
                .is_some_and(|(revision, _)| *revision == spec.revision)
            {
                continue;
            }
            let busy = rollouts
                .upgrading
                .iter()
                .filter(|(w, _)| *w == spec.name)
                .count() as u32;
            let room = spec.rollout.max_unavailable().saturating_sub(busy);
            let outdated: Vec<String> = self
                .placed_on(&spec.name)
                .into_iter()
                .filter(|h| alive.contains(h))
                .filter(|h| {
                    self.running_revision(&spec.name, h)
                        .is_some_and(|(revision, _)| revision != spec.revision)
                })
                .filter(|h| !rollouts.upgrading.contains(&(spec.name.clone(), h.clone())))
                .take(room as usize)
                .collect();
            for host in outdated {
                rollouts.upgrading.insert((spec.name.clone(), host.clone()));
                let (s, spec) = (self.clone(), spec.clone());
                tokio::spawn(async move {
                    s.upgrade_replica(&spec, &host).await;
                    s.rollouts
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .upgrading
                        .remove(&(spec.name.clone(), host));
                    s.touch();
                });
            }
        }
    }

    /// Replace the replica of `spec` on `host` with `spec`'s revision.
    async fn upgrade_replica(&self, spec: &WorkloadSpec, host: &str) {
        let Some(to) = self.endpoint(host) else {
            return;
        };
        let from = self.running_revision(&spec.name, host);
        let upgrade = UpgradeInstance {
            instance: spec.instance(self.generation(&spec.name)),
            discard_state: spec.rollout.discard_state,
        };
        match self.client.upgrade(&to, &spec.name, &upgrade).await {
            Ok(done) => {
                if let Some(mut e) = self.hosts.get_mut(host)
                    && let Some(i) = e.instances.iter_mut().find(|i| i.workload == spec.name)
                {
                    i.revision = spec.revision;
                    i.digest = spec.digest.clone();
                    i.memory = spec.memory;
                }
                if done.state != StateCarried::Unchanged {
                    self.event(
                        "replica_upgraded",
                        serde_json::json!({
                            "workload": spec.name,
                            "host": host,
                            "from_revision": from.map(|f| f.0),
                            "revision": spec.revision,
                            "state": done.state,
                            "state_bytes": done.state_bytes,
                            "paused_ms": done.paused_ms,
                        }),
                    );
                    // Its standby holds the old version's state: it goes,
                    // and the next round seeds one from this version.
                    self.reseed_standby(&spec.name, host).await;
                }
                let status = self.rollout_status(spec);
                if status.state == rollout_state::COMPLETE
                    && self
                        .rollouts
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .completed
                        .insert(spec.name.clone(), spec.revision)
                        != Some(spec.revision)
                {
                    self.event(
                        "rollout_complete",
                        serde_json::json!({ "workload": spec.name, "revision": spec.revision }),
                    );
                }
            }
            Err(e) => {
                let reason = match &e {
                    HostError::Answered { host, body, .. } => {
                        let message = serde_json::from_str::<serde_json::Value>(body)
                            .ok()
                            .and_then(|v| v["error"].as_str().map(str::to_string))
                            .unwrap_or_else(|| body.clone());
                        format!("host `{host}`: {message}")
                    }
                    other => other.to_string(),
                };
                // A host that could not be reached is tried again next
                // round; a refusal stops the rollout.
                if matches!(e, HostError::Answered { .. }) {
                    tracing::warn!(workload = %spec.name, %host, revision = spec.revision, %reason, "rollout stopped");
                    self.rollouts
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .failed
                        .insert(spec.name.clone(), (spec.revision, reason.clone()));
                    self.event(
                        "rollout_failed",
                        serde_json::json!({
                            "workload": spec.name,
                            "host": host,
                            "revision": spec.revision,
                            "reason": reason,
                        }),
                    );
                } else {
                    tracing::info!(workload = %spec.name, %host, %reason, "upgrade not sent; tried again");
                }
            }
        }
    }

    /// Where `spec`'s rollout stands.
    pub(super) fn rollout_status(&self, spec: &WorkloadSpec) -> RolloutStatus {
        let hosts: std::collections::BTreeMap<String, u64> = self
            .placed_on(&spec.name)
            .into_iter()
            .map(|h| {
                let revision = self
                    .running_revision(&spec.name, &h)
                    .map_or(0, |(revision, _)| revision);
                (h, revision)
            })
            .collect();
        let updated = hosts.values().filter(|r| **r == spec.revision).count() as u32;
        let failed = self
            .rollouts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .failed
            .get(&spec.name)
            .filter(|(revision, _)| *revision == spec.revision)
            .map(|(_, reason)| reason.clone());
        let state = if failed.is_some() {
            rollout_state::FAILED
        } else if updated >= spec.replicas && updated as usize == hosts.len() {
            rollout_state::COMPLETE
        } else {
            rollout_state::PROGRESSING
        };
        RolloutStatus {
            workload: spec.name.clone(),
            revision: spec.revision,
            digest: spec.digest.clone(),
            previous: self.previous_spec(&spec.name).map(|p| p.revision),
            replicas: spec.replicas,
            updated,
            state: state.to_string(),
            message: failed,
            hosts,
        }
    }

    /// A new deploy or an undo of `workload`: a rollout that stopped may go
    /// on with the new revision.
    pub(super) fn rollout_changed(&self, workload: &str) {
        self.rollouts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .failed
            .remove(workload);
    }
}
