//! Standbys and failover.
//!
//! Each replica of a durable workload (`durability` `async` or `sync`) has
//! one standby: on another host that meets every rule of the workload,
//! never the primary's host nor one holding another copy of it, preferring
//! another site; it counts against its host's memory and slots. The pair
//! is recorded in the store with the placement (role `standby`, with the
//! primary it stands by for and the key that primary presents) before
//! either host is told, then the standby's host is told to keep it and the
//! primary's host where to stream checkpoints.
//!
//! When the primary's host is declared dead (its heartbeats stopped), the
//! standby is promoted where it is: the placement now names the standby's
//! host as the primary, recorded first, then the host restores the last
//! checkpoint it acknowledged and serves. A new standby is placed on the
//! next round. If the standby cannot be promoted (no checkpoint yet, its
//! host does not answer), the replica is started elsewhere without its
//! state, as for a workload without a standby, and the event says so.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use roam_proto::{
    DEFAULT_CHECKPOINT_INTERVAL_MS, Durability, FailoverOutcome, Promote, Protection,
    StandbyTarget, StartStandby, WorkloadSpec,
};

use super::{Scheduler, StandbyPair};
use crate::auth;
use crate::placement::{self, HostView, PlacementRequest};
use crate::selector::Selector;

/// A pair whose hosts do not report it yet is sent again after this long
/// (a host that restarted lost its standby or its stream).
const RESEND_AFTER: Duration = Duration::from_secs(5);

impl Scheduler {
    /// How long a standby's lease to its primary lasts: half the time
    /// after which a silent host is declared dead, so by then the last
    /// lease a dead primary could hold has (nearly always) run out and
    /// promotion waits for nothing more; the standby checks it anyway.
    fn lease_ms(&self) -> u64 {
        u64::try_from(self.config.heartbeat_timeout.as_millis() / 2)
            .unwrap_or(u64::MAX)
            .clamp(1, roam_proto::MAX_LEASE_MS)
    }

    /// The standbys of `workload`, by primary host.
    fn standbys_of(&self, workload: &str) -> BTreeMap<String, StandbyPair> {
        self.standbys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(workload)
            .cloned()
            .unwrap_or_default()
    }

    /// Where the standby of `workload`'s replica on `primary` is.
    pub(super) fn standby_of(&self, workload: &str, primary: &str) -> Option<String> {
        self.standbys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(workload)
            .and_then(|p| p.get(primary))
            .map(|p| p.host.clone())
    }

    /// How the replica of `spec` on `primary` is protected: its recorded
    /// standby, and the checkpoint age its host reports for that standby.
    pub(super) fn protection(&self, spec: &WorkloadSpec, primary: &str) -> Protection {
        let standby = self.standby_of(&spec.name, primary);
        let checkpoint_age_ms = self.hosts.get(primary).and_then(|e| {
            e.instances
                .iter()
                .find(|i| i.workload == spec.name && i.standby.is_some() && i.standby == standby)
                .and_then(|i| i.checkpoint_age_ms)
        });
        let interval = spec
            .checkpoint_interval_ms
            .unwrap_or(DEFAULT_CHECKPOINT_INTERVAL_MS);
        Protection {
            protected: checkpoint_age_ms.is_some_and(|age| Protection::is_recent(age, interval)),
            standby,
            checkpoint_age_ms,
        }
    }

    /// Record `workload`'s standbys (with its primaries) in the store, then
    /// in memory.
    fn set_standbys(
        &self,
        workload: &str,
        pairs: BTreeMap<String, StandbyPair>,
    ) -> Result<(), crate::store::StoreError> {
        let assignments = self.assignments.lock().unwrap_or_else(|e| e.into_inner());
        let primaries = assignments.get(workload).cloned().unwrap_or_default();
        let placement = super::placement_record(primaries, Some(&pairs));
        self.store
            .put_assignment(workload, (!placement.is_empty()).then_some(&placement))?;
        let mut standbys = self.standbys.lock().unwrap_or_else(|e| e.into_inner());
        if pairs.is_empty() {
            standbys.remove(workload);
        } else {
            standbys.insert(workload.to_string(), pairs);
        }
        Ok(())
    }

    /// Promote the standbys of primaries whose host is down. Runs before
    /// the round counts the replicas of dead hosts as lost.
    pub(super) async fn failover(self: &Arc<Self>, alive: &BTreeSet<&str>) {
        let frozen = self.frozen();
        let due: Vec<(String, String, StandbyPair)> = {
            let standbys = self.standbys.lock().unwrap_or_else(|e| e.into_inner());
            standbys
                .iter()
                .filter(|(w, _)| !frozen.contains(*w))
                .flat_map(|(w, pairs)| {
                    pairs
                        .iter()
                        .filter(|(primary, pair)| {
                            !alive.contains(primary.as_str()) && alive.contains(pair.host.as_str())
                        })
                        .map(|(primary, pair)| (w.clone(), primary.clone(), pair.clone()))
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        // A scheduler that just started knows only the hosts that rejoined
        // so far: one it has not heard from yet is not dead until it has
        // had a whole heartbeat timeout to come back.
        let settled = self.settled();
        for (workload, primary, pair) in due {
            if !self.placed_on(&workload).contains(&primary)
                || (!settled && !self.hosts.contains_key(&primary))
            {
                continue;
            }
            let began = Instant::now();
            // Recorded first: the standby's host is the primary from now
            // on, at a higher generation; the dead host no longer (it is
            // told to drop its copy if it comes back, and its copy is
            // fenced off by generation), and the pair is gone.
            let generation = self.generation(&workload) + 1;
            let recorded = {
                let mut assignments = self.assignments.lock().unwrap_or_else(|e| e.into_inner());
                let mut hosts = assignments.get(&workload).cloned().unwrap_or_default();
                hosts.remove(&primary);
                hosts.insert(pair.host.clone());
                let mut pairs = self.standbys_of(&workload);
                pairs.remove(&primary);
                let placement = super::placement_record(hosts.iter().cloned(), Some(&pairs));
                let stored = self
                    .store
                    .put_placement_at(&workload, &placement, generation);
                if stored.is_ok() {
                    self.generations
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(workload.clone(), generation);
                    assignments.insert(workload.clone(), hosts);
                    let mut standbys = self.standbys.lock().unwrap_or_else(|e| e.into_inner());
                    if pairs.is_empty() {
                        standbys.remove(&workload);
                    } else {
                        standbys.insert(workload.clone(), pairs);
                    }
                }
                stored
            };
            if let Err(e) = recorded {
                tracing::error!(%workload, error = %e, "cannot record the failover; not promoting");
                continue;
            }
            self.confirmed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&(workload.clone(), primary.clone()));
            let promote = Promote { generation };
            let result = match self.endpoint(&pair.host) {
                Some(to) => self
                    .client
                    .promote(&to, &workload, &promote)
                    .await
                    .map_err(|e| e.to_string()),
                None => Err(format!("host `{}` is unknown", pair.host)),
            };
            let took_ms = began.elapsed().as_secs_f64() * 1e3;
            match result {
                Ok(()) => {
                    tracing::warn!(%workload, from = %primary, to = %pair.host, took_ms, "failed over to the standby");
                    self.confirmed
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert((workload.clone(), pair.host.clone()));
                    self.metrics.failover(FailoverOutcome::Promoted);
                    self.event(
                        "failover",
                        serde_json::json!({
                            "workload": workload, "from": primary, "to": pair.host,
                            "outcome": FailoverOutcome::Promoted, "took_ms": took_ms,
                            "generation": generation,
                        }),
                    );
                }
                Err(e) => {
                    tracing::error!(%workload, from = %primary, standby = %pair.host, error = %e, "the standby could not be promoted; starting the replica without its state");
                    if let Err(e) = self.assign(&workload, &pair.host, false) {
                        tracing::error!(%workload, error = %e, "cannot record the placement");
                    }
                    self.metrics.failover(FailoverOutcome::Restarted);
                    self.event(
                        "failover",
                        serde_json::json!({
                            "workload": workload, "from": primary, "to": pair.host,
                            "outcome": FailoverOutcome::Restarted, "detail": e,
                            "generation": generation,
                        }),
                    );
                }
            }
            // The workload's other replicas run on at the new generation
            // (the reconciler raises any it misses here).
            for sibling in self.placed_on(&workload) {
                if sibling == pair.host {
                    continue;
                }
                if let Some(to) = self.endpoint(&sibling)
                    && let Err(e) = self
                        .client
                        .raise_generation(&to, &workload, generation)
                        .await
                {
                    tracing::warn!(%workload, host = %sibling, generation, error = %e, "cannot raise a replica to the new generation yet");
                }
            }
        }
    }

    /// Give every primary of a durable workload a standby, drop the pairs
    /// that no longer hold (the primary moved or stopped, the standby's
    /// host is down or cordoned), and send a pair again to hosts whose
    /// reports do not show it. Workloads in `frozen` (in a migration, or
    /// with a host that has not reported since this replica took the lead)
    /// are left as they are.
    pub(super) async fn maintain_standbys(
        self: &Arc<Self>,
        specs: &[WorkloadSpec],
        frozen: &BTreeSet<String>,
    ) {
        let mut views = self.host_views();
        let usable = |views: &[HostView], host: &str| {
            views.iter().any(|v| v.id == host && v.alive && !v.cordoned)
        };
        let alive = |views: &[HostView], host: &str| views.iter().any(|v| v.id == host && v.alive);
        for spec in specs {
            let durable = spec.durability != Durability::None;
            if frozen.contains(&spec.name) {
                continue;
            }
            let primaries: BTreeSet<String> = self.placed_on(&spec.name).into_iter().collect();
            let mut pairs = self.standbys_of(&spec.name);
            let before = pairs.clone();
            let mut dropped = Vec::new();
            pairs.retain(|primary, pair| {
                let keep = durable
                    && primaries.contains(primary)
                    && !primaries.contains(&pair.host)
                    && usable(&views, &pair.host);
                if !keep {
                    dropped.push((primary.clone(), pair.host.clone()));
                }
                keep
            });
            // New pairs for the primaries (alive, and confirmed running)
            // without one.
            let mut placed = Vec::new();
            if durable {
                let Ok(selector) = Selector::parse(&spec.selector) else {
                    continue;
                };
                let confirmed = self
                    .confirmed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                for primary in &primaries {
                    if pairs.contains_key(primary)
                        || !alive(&views, primary)
                        || !confirmed.contains(&(spec.name.clone(), primary.clone()))
                    {
                        continue;
                    }
                    let taken: BTreeSet<&str> = primaries
                        .iter()
                        .map(String::as_str)
                        .chain(pairs.values().map(|p| p.host.as_str()))
                        .collect();
                    let candidates: Vec<HostView> = views
                        .iter()
                        .filter(|v| !taken.contains(v.id.as_str()))
                        .cloned()
                        .collect();
                    let request = PlacementRequest {
                        workload: spec.name.clone(),
                        selector: selector.clone(),
                        memory: spec.memory,
                        spread_by: Some("site".to_string()),
                        placed_on: vec![primary.clone()],
                    };
                    let Some(best) = placement::best(&request, &candidates) else {
                        continue;
                    };
                    let host = candidates[best].id.clone();
                    if let Some(v) = views.iter_mut().find(|v| v.id == host) {
                        v.memory_used += spec.memory;
                        v.slots_used += 1;
                    }
                    let Ok(key) = auth::new_token() else {
                        continue;
                    };
                    pairs.insert(
                        primary.clone(),
                        StandbyPair {
                            host: host.clone(),
                            key,
                        },
                    );
                    placed.push(primary.clone());
                }
            }
            if pairs != before
                && let Err(e) = self.set_standbys(&spec.name, pairs.clone())
            {
                tracing::error!(workload = %spec.name, error = %e, "cannot record the standbys");
                continue;
            }
            for (primary, host) in dropped {
                self.release_standby(&spec.name, &primary, &host).await;
            }
            for primary in placed {
                if let Some(pair) = pairs.get(&primary) {
                    self.event(
                        "standby_placed",
                        serde_json::json!({ "workload": spec.name, "primary": primary, "standby": pair.host }),
                    );
                }
            }
            // A primary with no standby to be had, whose answers wait for
            // one: it serves unprotected, by the scheduler's grant.
            for primary in &primaries {
                if !pairs.contains_key(primary)
                    && self.waits_for_standby(&spec.name, primary)
                    && self.due(&spec.name, primary)
                {
                    self.grant_unprotected(&spec.name, primary).await;
                }
            }
            let mut refused = Vec::new();
            for (primary, pair) in &pairs {
                if self.pair_reported(&spec.name, primary, pair) {
                    continue;
                }
                if self.due(&spec.name, primary) && !self.send_pair(spec, primary, pair).await {
                    refused.push(primary.clone());
                }
            }
            // A standby its host would not keep is dropped, so its primary
            // does not wait on it: the next round places another (or
            // grants "unprotected").
            if !refused.is_empty() {
                let mut kept = pairs.clone();
                kept.retain(|primary, _| !refused.contains(primary));
                if self.set_standbys(&spec.name, kept).is_ok() {
                    for primary in refused {
                        if let Some(pair) = pairs.get(&primary) {
                            self.release_standby(&spec.name, &primary, &pair.host).await;
                        }
                    }
                }
            }
        }
        // Workloads deleted: their standbys go too.
        let gone: Vec<String> = {
            let standbys = self.standbys.lock().unwrap_or_else(|e| e.into_inner());
            standbys
                .keys()
                .filter(|w| !specs.iter().any(|s| &s.name == *w) && !frozen.contains(*w))
                .cloned()
                .collect()
        };
        for workload in gone {
            let pairs = self.standbys_of(&workload);
            if self.set_standbys(&workload, BTreeMap::new()).is_ok() {
                for (primary, pair) in pairs {
                    self.release_standby(&workload, &primary, &pair.host).await;
                }
            }
        }
        // Standbys hosts keep that the records do not (a host that was
        // down when its pair was dropped): dropped.
        let unrecorded: Vec<(String, String)> = self
            .hosts
            .iter()
            .flat_map(|e| {
                e.standbys
                    .iter()
                    .filter(|s| {
                        !frozen.contains(&s.workload)
                            && self.standby_of(&s.workload, &s.primary).as_deref()
                                != Some(e.key().as_str())
                    })
                    .map(|s| (e.key().clone(), s.workload.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (host, workload) in unrecorded {
            if let Some(to) = self.endpoint(&host) {
                tracing::info!(%workload, %host, "dropping a standby the records do not place there");
                if self.client.drop_standby(&to, &workload).await.is_ok()
                    && let Some(mut e) = self.hosts.get_mut(&host)
                {
                    e.standbys.retain(|s| s.workload != workload);
                }
            }
        }
    }

    /// Whether a call about the standby of `workload`'s replica on
    /// `primary` is due (none made in the last [`RESEND_AFTER`]); if so,
    /// it counts as made now.
    fn due(&self, workload: &str, primary: &str) -> bool {
        let mut sent = self.standby_sent.lock().unwrap_or_else(|e| e.into_inner());
        let key = (workload.to_string(), primary.to_string());
        let due = sent.get(&key).is_none_or(|at| at.elapsed() >= RESEND_AFTER);
        if due {
            sent.insert(key, Instant::now());
        }
        due
    }

    /// Whether `primary` reports `workload`'s answers held with no standby
    /// to commit them to.
    fn waits_for_standby(&self, workload: &str, primary: &str) -> bool {
        self.hosts.get(primary).is_some_and(|e| {
            e.instances
                .iter()
                .any(|i| i.workload == workload && i.waiting_for_standby)
        })
    }

    /// Tell `primary` to serve `workload` unprotected: no standby of it
    /// runs anywhere, so it need not wait for one.
    async fn grant_unprotected(&self, workload: &str, primary: &str) {
        let Some(to) = self.endpoint(primary) else {
            return;
        };
        match self.client.stream_to(&to, workload, None).await {
            Ok(()) => {
                tracing::info!(%workload, %primary, "no host can keep a standby: serving unprotected");
                self.event(
                    "unprotected",
                    serde_json::json!({ "workload": workload, "primary": primary, "reason": "no host meets the workload's rules with room for its standby" }),
                );
            }
            Err(e) => {
                tracing::warn!(%workload, %primary, error = %e, "cannot grant unprotected service yet")
            }
        }
    }

    /// Whether both hosts report the pair: the standby's host keeps it for
    /// this primary, and the primary streams to it.
    fn pair_reported(&self, workload: &str, primary: &str, pair: &StandbyPair) -> bool {
        let kept = self.hosts.get(&pair.host).is_some_and(|e| {
            e.standbys
                .iter()
                .any(|s| s.workload == workload && s.primary == primary)
        });
        let streams = self.hosts.get(primary).is_some_and(|e| {
            e.instances
                .iter()
                .any(|i| i.workload == workload && i.standby.as_deref() == Some(pair.host.as_str()))
        });
        kept && streams
    }

    /// Tell the standby's host to keep it, then the primary's host where to
    /// stream. Both calls are idempotent; a failure is tried again later.
    /// `false`: the standby's host did not take it.
    async fn send_pair(&self, spec: &WorkloadSpec, primary: &str, pair: &StandbyPair) -> bool {
        let (Some(standby), Some(primary_end)) =
            (self.endpoint(&pair.host), self.endpoint(primary))
        else {
            return true;
        };
        let site = self
            .hosts
            .get(primary)
            .and_then(|e| e.labels.get("site").cloned())
            .unwrap_or_default();
        let keep = StartStandby {
            instance: self.instance_for(spec, primary, self.generation(&spec.name)),
            primary: primary.to_string(),
            primary_site: site,
            key: pair.key.clone(),
            lease_ms: self.lease_ms(),
        };
        if let Err(e) = self.client.keep_standby(&standby, &spec.name, &keep).await {
            tracing::warn!(workload = %spec.name, standby = %pair.host, error = %e, "the standby's host did not take it; placing another");
            return false;
        }
        let target = StandbyTarget {
            host: pair.host.clone(),
            url: standby.url.clone(),
            key: pair.key.clone(),
            interval_ms: spec
                .checkpoint_interval_ms
                .unwrap_or(DEFAULT_CHECKPOINT_INTERVAL_MS),
            lease_ms: self.lease_ms(),
        };
        if let Err(e) = self
            .client
            .stream_to(&primary_end, &spec.name, Some(&target))
            .await
        {
            tracing::warn!(workload = %spec.name, %primary, error = %e, "the primary's host did not take its standby");
        }
        true
    }

    /// A pair no longer recorded: its standby dropped, its stream stopped
    /// (best effort: a host that is down is told when it rejoins, by its
    /// report no longer matching). Stopping the stream is the grant to
    /// serve unprotected until another standby is seeded.
    async fn release_standby(&self, workload: &str, primary: &str, host: &str) {
        self.drop_standby_copy(workload, primary, host).await;
        if let Some(to) = self.endpoint(primary)
            && let Err(e) = self.client.stream_to(&to, workload, None).await
        {
            tracing::debug!(%workload, %primary, error = %e, "stream not stopped");
        }
    }

    /// The standby copy of `workload`'s replica on `primary`, kept by
    /// `host`, dropped; the primary is not told (it keeps whatever output
    /// commit holds).
    async fn drop_standby_copy(&self, workload: &str, primary: &str, host: &str) {
        tracing::info!(%workload, %primary, standby = %host, "dropping a standby");
        self.standby_sent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(workload.to_string(), primary.to_string()));
        if let Some(to) = self.endpoint(host)
            && let Err(e) = self.client.drop_standby(&to, workload).await
        {
            tracing::debug!(%workload, %host, error = %e, "standby not dropped");
        }
    }

    /// The standby of `workload`'s replica on `primary` holds an older
    /// revision's state (the replica was upgraded, and its host ended the
    /// stream): the pair goes, and the next round seeds a new one from the
    /// revision it runs now. The primary is not granted "unprotected": a
    /// `sync` one holds its answers until the new standby has its state
    /// (or until no host can keep one).
    pub(super) async fn reseed_standby(&self, workload: &str, primary: &str) {
        let mut pairs = self.standbys_of(workload);
        let Some(pair) = pairs.remove(primary) else {
            return;
        };
        if let Err(e) = self.set_standbys(workload, pairs) {
            tracing::error!(%workload, error = %e, "cannot record the standbys");
            return;
        }
        self.drop_standby_copy(workload, primary, &pair.host).await;
        // Until the hosts report again, their last reports still show the
        // old pair; forget it here so the next round sends the new one at
        // once (the reports that follow are the truth again).
        if let Some(mut e) = self.hosts.get_mut(&pair.host) {
            e.standbys
                .retain(|s| !(s.workload == workload && s.primary == primary));
        }
        if let Some(mut e) = self.hosts.get_mut(primary)
            && let Some(i) = e.instances.iter_mut().find(|i| i.workload == workload)
        {
            i.standby = None;
        }
    }
}
