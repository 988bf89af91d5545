//! The reconcile loop: turns the difference between desired state and what
//! runs into start and stop calls on hosts (the plan itself is the pure
//! `crate::reconcile`), re-places the replicas of hosts that went down, and
//! stops copies a migration fenced off with a newer generation.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use roam_proto::WorkloadSpec;

use super::Scheduler;
use super::host_client::{HostError, Stop};
use crate::reconcile::{self, Command, Replica};
use crate::selector::Selector;

/// Start and stop calls to hosts the reconciler keeps in flight at once.
const COMMANDS_IN_FLIGHT: usize = 64;

impl Scheduler {
    /// Whether every host has had time to report to this replica since it
    /// started or took the lead: until then a host it has not heard from
    /// is not dead (it may be on its way), and the workloads placed on it
    /// are left as they are.
    pub(super) fn settled(&self) -> bool {
        self.leading_for() >= self.config.heartbeat_timeout.max(self.config.heartbeat * 2)
    }

    /// While not [`settled`](Self::settled): the hosts that placements and
    /// standbys name and that have not reported yet.
    fn unreported(&self) -> BTreeSet<String> {
        if self.settled() {
            return BTreeSet::new();
        }
        let mut named: BTreeSet<String> = self
            .assignments
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .flatten()
            .cloned()
            .collect();
        named.extend(
            self.standbys
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .flat_map(|pairs| pairs.values().map(|p| p.host.clone())),
        );
        named.retain(|h| !self.hosts.contains_key(h));
        named
    }

    /// Workloads the reconciler leaves alone this round: those in a
    /// migration, and those with a replica or standby on a host that has
    /// not reported yet (`unreported`).
    fn held(&self, unreported: &BTreeSet<String>) -> BTreeSet<String> {
        let mut held = self.frozen();
        if unreported.is_empty() {
            return held;
        }
        held.extend(
            self.assignments
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .filter(|(_, hosts)| hosts.iter().any(|h| unreported.contains(h)))
                .map(|(w, _)| w.clone()),
        );
        held.extend(
            self.standbys
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .filter(|(_, pairs)| pairs.values().any(|p| unreported.contains(&p.host)))
                .map(|(w, _)| w.clone()),
        );
        held
    }

    pub(super) async fn reconcile_loop(self: Arc<Self>) {
        // A restarted scheduler, or one that just took the lead, reconciles
        // at once, but leaves the workloads of hosts it has not heard from
        // yet alone until they could have reported (`settled`): none is
        // declared dead before it could have missed its heartbeats.
        // Rounds run when something changed, and at least this often anyway.
        let every = Duration::from_secs(2);
        let mut last = Instant::now();
        loop {
            // A change wakes the loop at once; liveness and retries are
            // looked at every 200 ms.
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            if !self.leadership.leads() {
                continue;
            }
            let pending = !self
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty();
            let due = self.changed.swap(false, Ordering::Relaxed)
                || pending
                // Hosts report one after another meanwhile.
                || !self.settled()
                || self.liveness_changed()
                || last.elapsed() >= every;
            if due {
                last = Instant::now();
                self.reconcile_once().await;
            }
        }
    }

    async fn reconcile_once(self: &Arc<Self>) {
        self.resolve_pending().await;
        self.stop_stale().await;
        self.stop_unplaced().await;
        let unreported = self.unreported();
        let frozen = self.held(&unreported);
        let views = self.host_views();
        let alive: BTreeSet<&str> = views
            .iter()
            .filter(|v| v.alive)
            .map(|v| v.id.as_str())
            .chain(unreported.iter().map(String::as_str))
            .collect();
        {
            let mut down = self.down.lock().unwrap_or_else(|e| e.into_inner());
            for v in &views {
                if !v.alive && down.insert(v.id.clone()) {
                    self.event("host_down", serde_json::json!({ "host": v.id }));
                } else if v.alive {
                    down.remove(&v.id);
                }
            }
        }
        // Standbys of primaries on hosts that just went down take over
        // before those replicas count as lost.
        self.failover(&alive).await;
        let specs = self.specs();
        let mut desired = Vec::new();
        for s in specs.iter().filter(|s| !frozen.contains(&s.name)) {
            match Selector::parse(&s.selector) {
                Ok(selector) => desired.push(reconcile::Desired {
                    name: s.name.clone(),
                    replicas: s.replicas,
                    selector,
                    memory: s.memory,
                    spread_by: s.spread_by.clone(),
                }),
                Err(e) => {
                    tracing::error!(workload = %s.name, error = %e, "stored selector does not parse")
                }
            }
        }
        let running: Vec<Replica> = {
            // Replicas on hosts that are down are lost: planned as gone
            // now, and recorded so together with their new placements
            // (`record_round`).
            let assignments = self.assignments.lock().unwrap_or_else(|e| e.into_inner());
            assignments
                .iter()
                .filter(|(w, _)| !frozen.contains(*w))
                .flat_map(|(w, hosts)| {
                    hosts
                        .iter()
                        .filter(|h| alive.contains(h.as_str()))
                        .map(|h| Replica {
                            workload: w.clone(),
                            host: h.clone(),
                        })
                })
                .collect()
        };
        let alive: BTreeSet<String> = alive.iter().map(|h| h.to_string()).collect();
        // A host's report lags the starts in flight and those it confirmed
        // since its last heartbeat: count what is assigned to it, if more.
        let mut views = views;
        let memory: HashMap<&str, u64> =
            specs.iter().map(|s| (s.name.as_str(), s.memory)).collect();
        let mut assigned: HashMap<&str, (u64, u32)> = HashMap::new();
        for r in &running {
            let e = assigned.entry(r.host.as_str()).or_default();
            e.0 += memory.get(r.workload.as_str()).copied().unwrap_or(0);
            e.1 += 1;
        }
        for v in &mut views {
            if let Some((mem, n)) = assigned.get(v.id.as_str()) {
                v.memory_used = v.memory_used.max(*mem);
                v.slots_used = v.slots_used.max(*n);
            }
        }
        let planning = Instant::now();
        let plan = reconcile::reconcile(&desired, &running, &views);
        tracing::debug!(
            workloads = desired.len(),
            hosts = views.len(),
            commands = plan.commands.len(),
            took_ms = planning.elapsed().as_secs_f64() * 1e3,
            "reconcile round planned"
        );
        for u in &plan.unplaceable {
            tracing::warn!(workload = %u.workload, missing = u.missing, "no eligible host");
        }
        // Stops first, then starts; each group runs up to COMMANDS_IN_FLIGHT
        // calls at a time, so re-placing the workloads of many lost hosts
        // does not wait on one host after another.
        let (stops, starts): (Vec<Command>, Vec<Command>) = plan
            .commands
            .into_iter()
            .partition(|c| matches!(c, Command::Stop { .. }));
        // Every start's placement is recorded before it is sent (and
        // counted as placed while it is in flight, so the next round does
        // not place it twice), with the losses, in as few commits as the
        // store allows; the starts of each commit go out as it lands.
        let placing: Vec<(String, String)> = starts
            .iter()
            .filter_map(|c| match c {
                Command::Start { workload, host } => Some((workload.clone(), host.clone())),
                _ => None,
            })
            .collect();
        let moves: Vec<Command> = starts
            .into_iter()
            .filter(|c| !matches!(c, Command::Start { .. }))
            .collect();
        // By name: a start looks its spec up among tens of thousands.
        let by_name: HashMap<&str, &WorkloadSpec> =
            specs.iter().map(|s| (s.name.as_str(), s)).collect();
        // Stops first (a stop takes its replica off under the lock the
        // recording holds), then the recording, and the moves meanwhile.
        futures_util::stream::iter(stops)
            .for_each_concurrent(COMMANDS_IN_FLIGHT, |command| {
                self.perform(command, &by_name)
            })
            .await;
        let (recorded, mut landed) = tokio::sync::mpsc::unbounded_channel();
        let writer = {
            let s = self.clone();
            tokio::task::spawn_blocking(move || {
                s.record_round(&alive, &placing, |batch| {
                    let _ = recorded.send(batch);
                })
            })
        };
        futures_util::stream::iter(moves)
            .for_each_concurrent(COMMANDS_IN_FLIGHT, |command| {
                self.perform(command, &by_name)
            })
            .await;
        futures_util::stream::poll_fn(|cx| landed.poll_recv(cx))
            .flat_map(futures_util::stream::iter)
            .for_each_concurrent(COMMANDS_IN_FLIGHT, |(workload, host)| {
                self.perform(Command::Start { workload, host }, &by_name)
            })
            .await;
        if let Err(e) = writer.await {
            tracing::error!(error = %e, "recording the round's placements failed");
        }
        self.maintain_standbys(&specs, &frozen).await;
        self.roll_out(&specs, &frozen);
        if self.settled() {
            self.resume_drains();
        }
    }

    async fn perform(self: &Arc<Self>, command: Command, specs: &HashMap<&str, &WorkloadSpec>) {
        match command {
            Command::Start { workload, host } => {
                // Its placement is recorded already (`record_round`).
                let Some(spec) = specs.get(workload.as_str()).copied() else {
                    return;
                };
                if let Err(e) = self.start_on(&host, spec).await {
                    tracing::warn!(%workload, %host, error = %e, "start failed");
                    if let Err(e) = self.assign(&workload, &host, false) {
                        tracing::error!(%workload, %host, error = %e, "cannot record the placement");
                    }
                    // Tried again on the next periodic round, not at once:
                    // a host that refuses for good (a missing grant, a
                    // module it cannot run) must not be called in a loop.
                } else {
                    self.placements.fetch_add(1, Ordering::Relaxed);
                    self.confirmed
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert((workload.clone(), host.clone()));
                    self.event(
                        "workload_started",
                        serde_json::json!({ "workload": workload, "host": host }),
                    );
                }
            }
            Command::Move { workload, host } => {
                // In its own task: a live migration takes longer than a
                // round, and the workload is the migration's meanwhile.
                let key = (workload.clone(), host.clone());
                if !self
                    .moving
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key.clone())
                {
                    return;
                }
                let s = self.clone();
                tokio::spawn(async move {
                    s.event(
                        "replica_breaks_rules",
                        serde_json::json!({ "workload": workload, "host": host }),
                    );
                    let outcome = s.move_off(workload.clone(), &host, true).await;
                    s.event(
                        "replica_moved",
                        serde_json::json!({
                            "workload": workload,
                            "host": host,
                            "outcome": outcome.outcome,
                            "detail": outcome.detail,
                        }),
                    );
                    s.moving
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&key);
                    s.touch();
                });
            }
            Command::Stop { workload, host } => {
                if let Err(e) = self.stop_on(&host, &workload).await {
                    tracing::warn!(%workload, %host, error = %e, "stop failed");
                }
                self.event(
                    "workload_stopped",
                    serde_json::json!({ "workload": workload, "host": host }),
                );
                if let Err(e) = self.assign(&workload, &host, false) {
                    tracing::error!(%workload, %host, error = %e, "cannot record the placement");
                }
            }
        }
    }

    /// Stop what hosts report running that the records do not place there:
    /// a workload not assigned to that host, or claimed at a generation
    /// above the workload's (a host cannot make itself the owner of a
    /// workload by reporting it). Workloads in a migration are left to it.
    /// Each refusal is an event with its reason.
    async fn stop_unplaced(&self) {
        let frozen = self.frozen();
        let mut refused: Vec<(String, String, String)> = Vec::new();
        for e in self.hosts.iter() {
            for i in &e.instances {
                if frozen.contains(&i.workload) {
                    continue;
                }
                let generation = self.generation(&i.workload);
                let reason = if !self.placed_on(&i.workload).contains(e.key()) {
                    format!(
                        "workload `{}` is not placed on host `{}`",
                        i.workload,
                        e.key()
                    )
                } else if i.generation > generation {
                    format!(
                        "host `{}` reports workload `{}` at generation {} but the workload is at {generation}",
                        e.key(),
                        i.workload,
                        i.generation
                    )
                } else {
                    continue;
                };
                refused.push((e.key().clone(), i.workload.clone(), reason));
            }
        }
        for (host, workload, reason) in refused {
            let Some(to) = self.endpoint(&host) else {
                continue;
            };
            tracing::warn!(%workload, %host, %reason, "stopping a copy the records do not place there");
            self.event(
                "instance_refused",
                serde_json::json!({ "workload": workload, "host": host, "reason": reason }),
            );
            if self.client.stop(&to, &workload, Stop::Any).await.is_ok()
                && let Some(mut e) = self.hosts.get_mut(&host)
            {
                e.instances.retain(|i| i.workload != workload);
            }
        }
    }

    /// Stop copies that hosts report at a generation below the workload's:
    /// left behind by a migration whose source missed the hand-off, or by a
    /// failover (the dead host's copy). A copy on a host the workload is
    /// still placed on is a current replica whose sibling moved or failed
    /// over: it is raised to the generation instead.
    async fn stop_stale(&self) {
        let frozen = self.frozen();
        let stale: Vec<(String, String)> = self
            .hosts
            .iter()
            .flat_map(|e| {
                e.instances
                    .iter()
                    .filter(|i| {
                        !frozen.contains(&i.workload) && i.generation < self.generation(&i.workload)
                    })
                    .map(|i| (e.key().clone(), i.workload.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (host, workload) in stale {
            // Only a copy still below the generation: the report may be
            // older than a migration that brought the workload back here.
            let generation = self.generation(&workload);
            let Some(to) = self.endpoint(&host) else {
                continue;
            };
            if self.placed_on(&workload).contains(&host) {
                match self
                    .client
                    .raise_generation(&to, &workload, generation)
                    .await
                {
                    Ok(()) => {
                        tracing::info!(%workload, %host, generation, "raised a current replica to the workload's generation");
                        if let Some(mut e) = self.hosts.get_mut(&host) {
                            for i in e.instances.iter_mut().filter(|i| i.workload == workload) {
                                i.generation = i.generation.max(generation);
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(%workload, %host, generation, error = %e, "cannot raise a replica to the workload's generation")
                    }
                }
                continue;
            }
            let stopped = self
                .client
                .stop(&to, &workload, Stop::Below(generation))
                .await;
            tracing::info!(%workload, %host, generation, "stopping a copy fenced off by a newer generation, if still there");
            if stopped.is_ok()
                && let Some(mut e) = self.hosts.get_mut(&host)
            {
                e.instances.retain(|i| i.workload != workload);
            }
        }
    }

    /// Place `workload` on `host` (or take it off), recorded in the store
    /// first: a start is sent only once its placement is durable.
    pub(super) fn assign(
        &self,
        workload: &str,
        host: &str,
        on: bool,
    ) -> Result<(), crate::store::StoreError> {
        {
            let mut assignments = self.assignments.lock().unwrap_or_else(|e| e.into_inner());
            let mut hosts = assignments.get(workload).cloned().unwrap_or_default();
            if on {
                hosts.insert(host.to_string());
            } else {
                hosts.remove(host);
            }
            self.record_placement(workload, &hosts)?;
            if hosts.is_empty() {
                assignments.remove(workload);
            } else {
                assignments.insert(workload.to_string(), hosts);
            }
        }
        if !on {
            self.confirmed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&(workload.to_string(), host.to_string()));
        }
        Ok(())
    }

    async fn start_on(&self, host: &str, spec: &WorkloadSpec) -> Result<(), HostError> {
        let to = self
            .endpoint(host)
            .ok_or_else(|| HostError::Unknown(host.to_string()))?;
        let start = spec.instance(self.generation(&spec.name));
        self.client.start(&to, &spec.name, &start).await
    }

    /// Stop whatever copy of `workload` runs on `host`.
    pub(super) async fn stop_on(&self, host: &str, workload: &str) -> Result<(), HostError> {
        let to = self
            .endpoint(host)
            .ok_or_else(|| HostError::Unknown(host.to_string()))?;
        self.client.stop(&to, workload, Stop::Any).await
    }
}
