//! Live migration, orchestrated by the scheduler.
//!
//! The commit point is the source becoming `prepared`: it gets there only
//! once the target acknowledged the final state, and from then on it never
//! resumes by itself. It activates the target itself, hands off what it
//! held and reports `committed`; the scheduler then flips routing and
//! records the workload's new generation with the migration's final
//! record. So neither a store write nor a scheduler round trip is on the
//! downtime's path. Where the source cannot activate the target, or its
//! progress lines stop after `prepared`, the scheduler finishes the commit
//! (activates the target, tells the source to hand off). Before the commit
//! point any failure aborts: the target drops what it received and the
//! source serves on. If the target is lost after it, the source — which
//! still holds the final state, frozen — resumes at a generation above the
//! lost target's, recorded in the store before the source is told.
//!
//! The store holds every migration from its start. A restarted scheduler
//! that finds one without a final record asks its hosts where it got to
//! ([`Scheduler::ask_hosts`]): a source that is `prepared`, `committing` or
//! `committed`, or a target that serves at the migration's generation,
//! means it passed the commit point and is completed; anything else is
//! aborted. It asks the source first because a source still `sending` may
//! give up by itself at any moment (its progress stream to the old
//! scheduler is gone) but never once `prepared`. Until both hosts have
//! rejoined (or had time to), the reconciler leaves those workloads alone;
//! so it does for a migration whose abort did not reach its source.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use roam_proto::{
    CommitOutcome, DrainOutcome, MigrateRequest, MigrationDecision, MigrationInfo,
    MigrationOptions, MigrationProgress, MigrationStatus, MigrationStatusQuery, Place,
    PrepareMigration, SendMigration, StartInstance, WorkloadSpec,
};

use super::{Scheduler, error, parse};
use crate::auth;
use crate::placement::{self, PlacementRequest};
use crate::selector::Selector;

/// A migration that has not reached its commit point by then is aborted
/// (and its workload handed back to the reconciler).
const MAX_PRECOPY: Duration = Duration::from_secs(15 * 60);

/// Ended migrations kept for `roam get migrations`.
const KEEP_MIGRATIONS: usize = 1000;

/// Upper bounds (seconds) of the downtime histogram's buckets.
const DOWNTIME_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];
/// Upper bounds (seconds) of the total-time histogram's buckets.
const TOTAL_BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0];

/// A Prometheus histogram.
#[derive(Clone, Debug, Default)]
pub(super) struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, bounds: &[f64], value: f64) {
        if self.counts.len() != bounds.len() {
            self.counts = vec![0; bounds.len()];
        }
        for (i, b) in bounds.iter().enumerate() {
            if value <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += value;
        self.count += 1;
    }

    fn render(&self, name: &str, help: &str, bounds: &[f64]) -> String {
        let mut out = format!("# HELP {name} {help}\n# TYPE {name} histogram\n");
        for (i, b) in bounds.iter().enumerate() {
            let n = self.counts.get(i).copied().unwrap_or(0);
            out.push_str(&format!("{name}_bucket{{le=\"{b}\"}} {n}\n"));
        }
        out.push_str(&format!(
            "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}\n",
            self.count, self.sum, self.count
        ));
        out
    }
}

/// Migration figures for `/metrics`.
#[derive(Clone, Debug, Default)]
pub(super) struct MigrationMetrics {
    downtime: Histogram,
    total: Histogram,
    done: u64,
    failed: u64,
    aborted: u64,
}

impl MigrationMetrics {
    pub(super) fn render(&self) -> String {
        let mut out = self.downtime.render(
            "roam_migration_downtime_seconds",
            "Time a migrating workload did not dispatch (source frozen until handed off).",
            &DOWNTIME_BUCKETS,
        );
        out.push_str(&self.total.render(
            "roam_migration_duration_seconds",
            "Time from a migration's start to its end.",
            &TOTAL_BUCKETS,
        ));
        out.push_str(&format!(
            "# HELP roam_migrations_total Migrations ended, by outcome.\n# TYPE roam_migrations_total counter\n\
             roam_migrations_total{{outcome=\"done\"}} {}\nroam_migrations_total{{outcome=\"failed\"}} {}\nroam_migrations_total{{outcome=\"aborted\"}} {}\n",
            self.done, self.failed, self.aborted
        ));
        out
    }
}

/// How far a migration's pre-copy got.
enum Reached {
    /// The commit point: the source is frozen, the target holds the final
    /// state; the scheduler activates the target and tells the source.
    Prepared,
    /// The source also activated the target and handed off (downtime).
    HandedOff(Option<u64>),
}

/// What an abort found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Aborted {
    /// Both hosts took it (or are gone).
    Delivered,
    /// A live host did not answer.
    Undelivered,
    /// A host refused: the migration was committed.
    Refused,
}

/// What the hosts' answers say of an interrupted migration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Commit,
    Abort,
    /// A host that may hold the answer did not give it; ask again later.
    Unknown,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A refusal: status and reason.
type Refusal = (StatusCode, String);

impl Scheduler {
    /// The workload's generation (0 until its first migration).
    pub(super) fn generation(&self, workload: &str) -> u64 {
        self.generations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(workload)
            .copied()
            .unwrap_or(0)
    }

    /// Workloads the reconciler must leave alone: migrating, or with a
    /// migration a restart left unresolved.
    pub(super) fn frozen(&self) -> BTreeSet<String> {
        self.migrations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|m| !m.finished() || self.is_pending(&m.id))
            .map(|m| m.workload.clone())
            .collect()
    }

    fn is_pending(&self, id: &str) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(id)
    }

    fn migration(&self, id: &str) -> Option<MigrationInfo> {
        self.migrations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// Change a migration in memory; with `persist`, also in the store.
    fn update(&self, id: &str, persist: bool, change: impl FnOnce(&mut MigrationInfo)) {
        let info = {
            let mut all = self.migrations.lock().unwrap_or_else(|e| e.into_inner());
            let Some(m) = all.get_mut(id) else { return };
            let before = m.phase.clone();
            change(m);
            m.total_ms = now_ms().saturating_sub(m.started_ms);
            if m.phase != before {
                m.history.push((m.phase.clone(), m.total_ms));
            }
            m.clone()
        };
        if persist && let Err(e) = self.store.put_migration(id, &info) {
            tracing::error!(migration = %id, error = %e, "cannot record migration");
        }
    }

    /// Load migrations from the store; those a restart interrupted are
    /// resolved once their hosts are back.
    pub(super) fn load_migrations(&self) {
        let records: Vec<(String, MigrationInfo)> = self.store.migrations().unwrap_or_default();
        let generations = self.store.generations().unwrap_or_default();
        self.generations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(generations);
        // Lock order everywhere: migrations, then pending.
        let mut all = self.migrations.lock().unwrap_or_else(|e| e.into_inner());
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for (id, mut info) in records {
            if !info.finished() {
                // Shown as `resolving` until the hosts were asked.
                pending.insert(id.clone());
                info.phase = "resolving".into();
                info.history.push((info.phase.clone(), info.total_ms));
            }
            all.insert(id, info);
        }
    }

    /// Check a migration request and start it.
    pub(super) async fn start_migration(
        self: &Arc<Self>,
        req: MigrateRequest,
    ) -> Result<MigrationInfo, Refusal> {
        let name = req.workload.clone();
        let streams = req.options.page_streams;
        if !(1..=roam_proto::MAX_PAGE_STREAMS).contains(&streams) {
            return Err((
                StatusCode::BAD_REQUEST,
                format!(
                    "page_streams must be 1 to {}, not {streams}",
                    roam_proto::MAX_PAGE_STREAMS
                ),
            ));
        }
        let Some(spec) = self.spec(&name) else {
            return Err((StatusCode::NOT_FOUND, format!("no workload `{name}`")));
        };
        if self.frozen().contains(&name) {
            return Err((
                StatusCode::CONFLICT,
                format!("`{name}` is already migrating"),
            ));
        }
        let running: Vec<String> = self
            .assignments
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&name)
            .map(|h| h.iter().cloned().collect())
            .unwrap_or_default();
        let source = match (&req.from, running.as_slice()) {
            (Some(h), _) if running.contains(h) => h.clone(),
            (Some(h), _) => {
                return Err((
                    StatusCode::CONFLICT,
                    format!("`{name}` does not run on `{h}`"),
                ));
            }
            (None, [one]) => one.clone(),
            (None, []) => {
                return Err((
                    StatusCode::CONFLICT,
                    format!("`{name}` is not running anywhere"),
                ));
            }
            (None, many) => {
                return Err((
                    StatusCode::BAD_REQUEST,
                    format!(
                        "`{name}` has {} replicas ({}); say which to move with `from`",
                        many.len(),
                        many.join(", ")
                    ),
                ));
            }
        };
        if !self.hosts.get(&source).is_some_and(|e| self.alive(&e)) {
            return Err((
                StatusCode::CONFLICT,
                format!("source host `{source}` is down"),
            ));
        }
        let views = self.host_views();
        let request = PlacementRequest {
            workload: name.clone(),
            selector: Selector::parse(&spec.selector).unwrap_or_default(),
            memory: spec.memory,
            spread_by: None,
            placed_on: running.clone(),
        };
        let target = match &req.to {
            Some(to) => {
                let Some(view) = views.iter().find(|v| &v.id == to) else {
                    return Err((StatusCode::NOT_FOUND, format!("no host `{to}`")));
                };
                if let Some(reason) = placement::check(&request, view) {
                    return Err((
                        StatusCode::CONFLICT,
                        format!("host `{to}` cannot take `{name}`: {reason}"),
                    ));
                }
                to.clone()
            }
            None => {
                let extra = Selector::parse(req.selector.as_deref().unwrap_or(""))
                    .map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
                let candidates: Vec<_> = views
                    .iter()
                    .filter(|v| extra.first_failure(&v.labels).is_none())
                    .cloned()
                    .collect();
                let placement = placement::place(&request, &candidates);
                match placement.best() {
                    Some(h) => h.to_string(),
                    None => {
                        let reasons: Vec<String> = placement
                            .rejected
                            .iter()
                            .map(|(h, r)| format!("{h}: {r}"))
                            .collect();
                        return Err((
                            StatusCode::CONFLICT,
                            format!(
                                "no host can take `{name}`{}",
                                if reasons.is_empty() {
                                    String::new()
                                } else {
                                    format!(" ({})", reasons.join("; "))
                                }
                            ),
                        ));
                    }
                }
            }
        };
        let id = format!("m-{}", &auth::new_token().map_err(internal)?[..12]);
        let key = auth::new_token().map_err(internal)?;
        let info = MigrationInfo {
            id: id.clone(),
            workload: name.clone(),
            source: source.clone(),
            target: target.clone(),
            generation: self.generation(&name) + 1,
            phase: "preparing".into(),
            started_ms: now_ms(),
            history: vec![("preparing".into(), 0)],
            ..MigrationInfo::default()
        };
        {
            let mut all = self.migrations.lock().unwrap_or_else(|e| e.into_inner());
            if all.values().any(|m| m.workload == name && !m.finished()) {
                return Err((
                    StatusCode::CONFLICT,
                    format!("`{name}` is already migrating"),
                ));
            }
            all.insert(id.clone(), info.clone());
        }
        if let Err(e) = self.store.put_migration(&id, &info) {
            self.migrations
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            return Err(internal(e));
        }
        self.event(
            "migration_started",
            serde_json::json!({ "migration": id, "workload": name, "source": source, "target": target, "generation": info.generation }),
        );
        tokio::spawn(self.clone().run_migration(id, key, spec, req.options));
        Ok(info)
    }

    async fn run_migration(
        self: Arc<Self>,
        id: String,
        key: String,
        spec: WorkloadSpec,
        options: MigrationOptions,
    ) {
        let started = Instant::now();
        let precopy = tokio::time::timeout(MAX_PRECOPY, self.precopy(&id, &key, &spec, options));
        let result = match precopy.await {
            Ok(result) => result,
            // Past the commit point there is no going back.
            Err(_) if self.migration(&id).is_some_and(|m| m.phase == "prepared") => {
                Ok(Reached::Prepared)
            }
            Err(_) => Err(format!(
                "no commit point within {} s; gave up",
                MAX_PRECOPY.as_secs()
            )),
        };
        match result {
            Ok(Reached::HandedOff(downtime)) => {
                self.update(&id, false, |m| m.phase = "committed".into());
                self.raise_generation(&id);
                self.handed_off(&id, downtime);
            }
            Ok(Reached::Prepared) => self.commit(&id).await,
            Err(reason) => match self.abort_hosts(&id, 0).await {
                // The source reached the commit point after all (its lines
                // were lost on the way): finish the commit.
                Aborted::Refused => self.commit(&id).await,
                Aborted::Delivered => self.finish(&id, "failed", Some(reason), None),
                // The source may be frozen, waiting: ask it again until it
                // answers or is gone.
                Aborted::Undelivered => {
                    tracing::warn!(migration = %id, error = %reason, "failed, and the source did not take the abort; resolving");
                    self.update(&id, false, |m| {
                        m.phase = "resolving".into();
                        m.error = Some(reason);
                    });
                    self.pending
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(id.clone());
                }
            },
        }
        tracing::debug!(migration = %id, elapsed_ms = started.elapsed().as_millis() as u64, "migration ended");
    }

    /// Prepare the target and stream the state from the source; `Ok` once
    /// the commit point is reached (the source is frozen and the target
    /// holds the final state), saying whether the source also activated
    /// the target and handed off.
    async fn precopy(
        &self,
        id: &str,
        key: &str,
        spec: &WorkloadSpec,
        options: MigrationOptions,
    ) -> Result<Reached, String> {
        let m = self.migration(id).ok_or("migration vanished")?;
        let (source_url, source_secret) = self
            .host_endpoint(&m.source)
            .ok_or_else(|| format!("source host `{}` vanished", m.source))?;
        let (target_url, target_secret) = self
            .host_endpoint(&m.target)
            .ok_or_else(|| format!("target host `{}` vanished", m.target))?;
        let site = self
            .hosts
            .get(&m.source)
            .and_then(|e| e.labels.get("site").cloned())
            .unwrap_or_default();
        let prepare = PrepareMigration {
            workload: m.workload.clone(),
            instance: StartInstance {
                digest: spec.digest.clone(),
                memory: spec.memory,
                env: spec.env.clone(),
                grants: spec.grants.clone(),
                generation: m.generation,
            },
            key: key.to_string(),
            source: Place {
                host: m.source.clone(),
                site,
            },
        };
        let r = self
            .http
            .post(format!("{target_url}/v1/migrations/{id}/prepare"))
            .bearer_auth(&target_secret)
            .json(&prepare)
            .send()
            .await
            .map_err(|e| format!("target `{}` unreachable: {e}", m.target))?;
        if !r.status().is_success() {
            let status = r.status();
            return Err(format!(
                "target `{}` refused to prepare ({status}): {}",
                m.target,
                r.text().await.unwrap_or_default()
            ));
        }
        // Phases before the commit are kept in memory only: a restart
        // aborts whatever the store does not show committed, and the commit
        // records the whole history.
        self.update(id, false, |m| m.phase = "precopy".into());
        let mut r = self
            .stream_http
            .post(format!("{source_url}/v1/migrations/{id}/send"))
            .bearer_auth(&source_secret)
            .json(&SendMigration {
                workload: m.workload.clone(),
                target_url,
                key: key.to_string(),
                generation: m.generation,
                options,
            })
            .send()
            .await
            .map_err(|e| format!("source `{}` unreachable: {e}", m.source))?;
        if !r.status().is_success() {
            let status = r.status();
            return Err(format!(
                "source `{}` refused to send ({status}): {}",
                m.source,
                r.text().await.unwrap_or_default()
            ));
        }
        let mut buffer = Vec::new();
        let mut prepared = false;
        loop {
            let chunk = match r.chunk().await {
                Ok(Some(c)) => c,
                // Past the commit point the scheduler finishes the commit.
                _ if prepared => return Ok(Reached::Prepared),
                Ok(None) => return Err("the source's progress stream ended early".into()),
                Err(e) => return Err(format!("the source's progress stream broke: {e}")),
            };
            buffer.extend_from_slice(&chunk);
            if buffer.len() > 1 << 20 {
                return Err("the source's progress stream is not line-delimited JSON".into());
            }
            while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                let p: MigrationProgress = serde_json::from_slice(&line)
                    .map_err(|e| format!("bad progress line from the source: {e}"))?;
                let phase = p.phase.clone();
                self.update(id, false, |m| {
                    m.phase = if phase == "failed" {
                        m.phase.clone()
                    } else {
                        phase.clone()
                    };
                    m.rounds = p.round;
                    m.bytes_sent = p.bytes_sent;
                    m.dirty_rate = p.dirty_rate;
                });
                match phase.as_str() {
                    "prepared" if p.error.is_some() => {
                        tracing::warn!(migration = %id, error = ?p.error, "the source could not activate the target");
                        return Ok(Reached::Prepared);
                    }
                    "prepared" => prepared = true,
                    "committed" => return Ok(Reached::HandedOff(p.downtime_us)),
                    "failed" => {
                        return Err(p.error.unwrap_or_else(|| "the source failed".into()));
                    }
                    _ => {}
                }
            }
        }
    }

    /// The source is prepared: the commit point was reached. Committed in
    /// memory (the store records it with the migration's end, or a restart
    /// learns it from the hosts), then activation and hand-off.
    async fn commit(&self, id: &str) {
        self.update(id, false, |m| m.phase = "committed".into());
        self.complete(id).await;
    }

    /// The workload's generation is the migration's from its commit on.
    fn raise_generation(&self, id: &str) {
        let Some(m) = self.migration(id) else { return };
        let mut generations = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        let g = generations.entry(m.workload.clone()).or_default();
        *g = (*g).max(m.generation);
    }

    /// The target serves and the source handed off: flip routing, record.
    fn handed_off(&self, id: &str, downtime: Option<u64>) {
        let Some(m) = self.migration(id) else { return };
        {
            let mut assignments = self.assignments.lock().unwrap_or_else(|e| e.into_inner());
            let hosts = assignments.entry(m.workload.clone()).or_default();
            hosts.remove(&m.source);
            hosts.insert(m.target.clone());
            let mut confirmed = self.confirmed.lock().unwrap_or_else(|e| e.into_inner());
            confirmed.remove(&(m.workload.clone(), m.source.clone()));
            confirmed.insert((m.workload.clone(), m.target.clone()));
        }
        self.finish(id, "done", None, downtime);
    }

    /// After the commit, when the source did not hand off by itself:
    /// activate the target, flip routing, tell the source.
    async fn complete(&self, id: &str) {
        let Some(m) = self.migration(id) else { return };
        self.raise_generation(id);
        let decision = MigrationDecision {
            target_url: self
                .host_endpoint(&m.target)
                .map(|(url, _)| url)
                .unwrap_or_default(),
            generation: m.generation,
        };
        let mut activated = false;
        for attempt in 0..3 {
            match self.decide(&m.target, id, "commit", &decision).await {
                Ok(_) => {
                    activated = true;
                    break;
                }
                Err((_, e)) => {
                    tracing::warn!(migration = %id, attempt, error = %e, "target did not take the commit");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        if !activated {
            // The source still holds the final state, frozen: it resumes,
            // at a generation above the one the lost target would carry.
            let generation = m.generation + 1;
            // Recorded before the source is told; a restart in between
            // asks the hosts again.
            if let Err(e) = self.store.commit_migration(id, &m, &m.workload, generation) {
                tracing::error!(migration = %id, error = %e, "cannot record the new generation");
            }
            self.generations
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(m.workload.clone(), generation);
            let resumed = self
                .decide(
                    &m.source,
                    id,
                    "abort",
                    &MigrationDecision {
                        target_url: String::new(),
                        generation,
                    },
                )
                .await;
            let reason = match resumed {
                Ok(_) => format!(
                    "target `{}` was lost after the commit; the source serves on at generation {generation}",
                    m.target
                ),
                Err((_, e)) => format!(
                    "target `{}` was lost after the commit and the source did not answer: {e}",
                    m.target
                ),
            };
            self.finish(id, "failed", Some(reason), None);
            return;
        }
        let downtime = match self.decide(&m.source, id, "commit", &decision).await {
            Ok(outcome) => outcome.downtime_us,
            Err((_, e)) => {
                tracing::warn!(migration = %id, error = %e, "source did not take the commit; it is fenced off by generation");
                None
            }
        };
        self.handed_off(id, downtime);
    }

    /// Send a commit or abort to a host; a refusal carries the host's
    /// status (`502 Bad Gateway` when it was not reached).
    async fn decide(
        &self,
        host: &str,
        id: &str,
        verb: &str,
        decision: &MigrationDecision,
    ) -> Result<CommitOutcome, Refusal> {
        let unreached = |e: String| (StatusCode::BAD_GATEWAY, e);
        let (url, secret) = self
            .host_endpoint(host)
            .ok_or_else(|| unreached(format!("host `{host}` is unknown")))?;
        let r = self
            .http
            .post(format!("{url}/v1/migrations/{id}/{verb}"))
            .bearer_auth(secret)
            .json(decision)
            .send()
            .await
            .map_err(|e| unreached(format!("host `{host}` unreachable: {e}")))?;
        if !r.status().is_success() {
            let status = r.status();
            return Err((
                status,
                format!(
                    "host `{host}` answered {status}: {}",
                    r.text().await.unwrap_or_default()
                ),
            ));
        }
        Ok(r.json().await.unwrap_or_default())
    }

    /// Abort on both hosts (each also gives up on its own): the target
    /// first, so that it can no longer be activated. A target that does not
    /// answer drops what it received by itself once the source gave up; a
    /// live source that does not answer may stay frozen, so that is
    /// `Undelivered`.
    async fn abort_hosts(&self, id: &str, generation: u64) -> Aborted {
        let Some(m) = self.migration(id) else {
            return Aborted::Delivered;
        };
        let decision = MigrationDecision {
            target_url: String::new(),
            generation,
        };
        let mut reached = true;
        for host in [&m.target, &m.source] {
            match self.decide(host, id, "abort", &decision).await {
                Ok(_) => {}
                // Hosts refuse an abort only once committed.
                Err((StatusCode::CONFLICT, e)) => {
                    tracing::info!(migration = %id, %host, error = %e, "abort refused: the migration was committed");
                    return Aborted::Refused;
                }
                Err((_, e)) => {
                    let alive = self.hosts.get(host).is_some_and(|e| self.alive(&e));
                    tracing::warn!(migration = %id, %host, error = %e, "abort not delivered");
                    reached &= !(alive && host == &m.source);
                }
            }
        }
        if reached {
            Aborted::Delivered
        } else {
            Aborted::Undelivered
        }
    }

    fn finish(&self, id: &str, phase: &str, reason: Option<String>, downtime_us: Option<u64>) {
        // A migration done records the workload's new generation with it.
        self.update(id, phase != "done", |m| {
            m.phase = phase.to_string();
            m.error = reason.clone();
            m.downtime_us = downtime_us;
        });
        if phase == "done"
            && let Some(m) = self.migration(id)
            && let Err(e) = self
                .store
                .commit_migration(id, &m, &m.workload, m.generation)
        {
            tracing::error!(migration = %id, error = %e, "cannot record the migration's end");
        }
        self.forget_old_migrations();
        self.touch();
        let Some(m) = self.migration(id) else { return };
        {
            let mut metrics = self
                .migration_metrics
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match phase {
                "done" => {
                    metrics.done += 1;
                    metrics
                        .total
                        .observe(&TOTAL_BUCKETS, m.total_ms as f64 / 1000.0);
                    if let Some(d) = downtime_us {
                        metrics.downtime.observe(&DOWNTIME_BUCKETS, d as f64 / 1e6);
                    }
                }
                "aborted" => metrics.aborted += 1,
                _ => metrics.failed += 1,
            }
        }
        self.event(
            &format!("migration_{phase}"),
            serde_json::json!({
                "migration": id, "workload": m.workload, "source": m.source, "target": m.target,
                "generation": m.generation, "rounds": m.rounds, "bytes": m.bytes_sent,
                "total_ms": m.total_ms, "downtime_us": m.downtime_us, "error": m.error,
            }),
        );
    }

    /// Keep the newest [`KEEP_MIGRATIONS`] ended migrations.
    fn forget_old_migrations(&self) {
        let old: Vec<String> = {
            let all = self.migrations.lock().unwrap_or_else(|e| e.into_inner());
            let mut ended: Vec<(&String, u64)> = all
                .iter()
                .filter(|(id, m)| m.finished() && !self.is_pending(id))
                .map(|(id, m)| (id, m.started_ms))
                .collect();
            if ended.len() <= KEEP_MIGRATIONS {
                return;
            }
            ended.sort_by_key(|(_, started)| *started);
            ended[..ended.len() - KEEP_MIGRATIONS]
                .iter()
                .map(|(id, _)| (*id).clone())
                .collect()
        };
        let mut all = self.migrations.lock().unwrap_or_else(|e| e.into_inner());
        for id in old {
            all.remove(&id);
            if let Err(e) = self.store.delete_migration(&id) {
                tracing::warn!(migration = %id, error = %e, "cannot forget an old migration");
            }
        }
    }

    /// Finish what a restart interrupted (or an abort that did not reach its
    /// source), for hosts that are back.
    pub(super) async fn resolve_pending(&self) {
        let pending: Vec<String> = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        // Hosts rejoin a restarted scheduler within a heartbeat or two;
        // until both are back (or have had time to be), wait.
        let patient = self.started.elapsed() < self.config.heartbeat_timeout * 2;
        for id in pending {
            let Some(m) = self.migration(&id) else {
                continue;
            };
            let known = |h: &str| self.hosts.get(h).is_some_and(|e| self.alive(&e));
            if patient && !(known(&m.source) && known(&m.target)) {
                continue;
            }
            let verdict = self.ask_hosts(&m).await;
            let done = match verdict {
                Verdict::Commit => {
                    self.commit(&id).await;
                    true
                }
                // The source serves on at the generation it has: nothing
                // was committed, so nothing is fenced off.
                Verdict::Abort => match self.abort_hosts(&id, 0).await {
                    Aborted::Delivered => true,
                    // Committed meanwhile: ask again on the next round.
                    Aborted::Refused | Aborted::Undelivered => false,
                },
                Verdict::Unknown => false,
            };
            if done {
                self.pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                if verdict == Verdict::Abort {
                    match m.error {
                        // It had failed; only its abort was outstanding.
                        Some(reason) => self.finish(&id, "failed", Some(reason), None),
                        None => self.finish(
                            &id,
                            "aborted",
                            Some("the scheduler restarted before the commit".into()),
                            None,
                        ),
                    }
                }
                tracing::info!(migration = %id, ?verdict, "interrupted migration resolved");
            }
        }
    }

    /// Did an interrupted migration reach its commit point? Asks the source,
    /// then (if the source does not know) the target.
    async fn ask_hosts(&self, m: &MigrationInfo) -> Verdict {
        let source = self.host_status(&m.source, m).await;
        tracing::info!(migration = %m.id, host = %m.source, answer = ?source, "asked the source where an interrupted migration got to");
        match source.as_ref().map(|s| s.phase.as_str()) {
            // Prepared never resumes by itself; committed was decided.
            Ok("prepared" | "committing" | "committed") => return Verdict::Commit,
            // Still sending (it gives up by itself, or on our abort) or
            // already given up: the target never served.
            Ok("sending" | "aborted") => return Verdict::Abort,
            // The source forgot it (restarted, or committed long ago) or is
            // out of reach: only a target that serves shows a commit.
            _ => {}
        }
        let target = self.host_status(&m.target, m).await;
        tracing::info!(migration = %m.id, host = %m.target, answer = ?target, "asked the target");
        match target {
            Ok(t) if t.role == "target" && t.phase == "serving" => Verdict::Commit,
            // A source out of reach may be prepared and frozen; abort only
            // once it is gone for good (the abort then reaches it if it
            // comes back before it is forgotten).
            Ok(_) if source.is_ok() => Verdict::Abort,
            _ => {
                let alive = |h: &str| self.hosts.get(h).is_some_and(|e| self.alive(&e));
                if alive(&m.source) || alive(&m.target) {
                    Verdict::Unknown
                } else {
                    Verdict::Abort
                }
            }
        }
    }

    /// `GET /v1/migrations/{id}/status` on a host.
    async fn host_status(&self, host: &str, m: &MigrationInfo) -> Result<MigrationStatus, String> {
        let (url, secret) = self
            .host_endpoint(host)
            .ok_or_else(|| format!("host `{host}` is unknown"))?;
        let r = self
            .http
            .get(format!("{url}/v1/migrations/{}/status", m.id))
            .query(&MigrationStatusQuery {
                workload: m.workload.clone(),
                generation: m.generation,
            })
            .bearer_auth(secret)
            .send()
            .await
            .map_err(|e| format!("host `{host}` unreachable: {e}"))?;
        if !r.status().is_success() {
            return Err(format!("host `{host}` answered {}", r.status()));
        }
        r.json()
            .await
            .map_err(|e| format!("host `{host}` gave no status: {e}"))
    }

    /// Wait until a migration ends.
    async fn wait(&self, id: &str) -> Option<MigrationInfo> {
        loop {
            let m = self.migration(id)?;
            if m.finished() {
                return Some(m);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Cordon `host` and move every workload off it: live if possible, else
    /// restarted elsewhere.
    pub(super) async fn drain(self: &Arc<Self>, host: &str) -> Vec<DrainOutcome> {
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
                    Some(done) if done.phase == "done" => {
                        out.push(DrainOutcome {
                            workload,
                            outcome: "migrated".into(),
                            migration: Some(m.id),
                            detail: format!("to {}", done.target),
                        });
                        continue;
                    }
                    Some(failed) => (Some(m.id), failed.error.unwrap_or_default()),
                    None => (Some(m.id), "migration vanished".into()),
                },
                Err((StatusCode::CONFLICT, reason)) if reason.contains("no host can take") => {
                    out.push(DrainOutcome {
                        workload,
                        outcome: "failed".into(),
                        migration: None,
                        detail: reason,
                    });
                    continue;
                }
                Err((_, reason)) => (None, reason),
            };
            // Fall back to a restart elsewhere: stop it here, the reconciler
            // places it on a host that meets its rules (this one is cordoned).
            let outcome = match self.stop_on(host, &workload).await {
                Ok(()) => {
                    self.assign(&workload, host, false);
                    self.touch();
                    DrainOutcome {
                        workload,
                        outcome: "restarted".into(),
                        migration,
                        detail: format!("live migration failed ({detail}); restarted elsewhere"),
                    }
                }
                Err(e) => DrainOutcome {
                    workload,
                    outcome: "failed".into(),
                    migration,
                    detail: format!("live migration failed ({detail}) and stopping failed: {e}"),
                },
            };
            out.push(outcome);
        }
        out
    }
}

fn internal(e: impl std::fmt::Display) -> Refusal {
    (StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// `POST /v1/migrations`.
pub(super) async fn create(State(s): State<Arc<Scheduler>>, body: Bytes) -> Response {
    let req: MigrateRequest = match parse(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match s.start_migration(req).await {
        Ok(info) => (StatusCode::ACCEPTED, Json(info)).into_response(),
        Err((status, reason)) => error(status, reason),
    }
}

/// `GET /v1/migrations`: newest first.
pub(super) async fn list(State(s): State<Arc<Scheduler>>) -> Response {
    let mut all: Vec<MigrationInfo> = s
        .migrations
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .cloned()
        .collect();
    for m in all.iter_mut().filter(|m| !m.finished()) {
        m.total_ms = now_ms().saturating_sub(m.started_ms);
    }
    all.sort_by_key(|m| std::cmp::Reverse(m.started_ms));
    Json(all).into_response()
}

/// `GET /v1/migrations/{id}`.
pub(super) async fn show(State(s): State<Arc<Scheduler>>, Path(id): Path<String>) -> Response {
    match s.migration(&id) {
        Some(mut m) => {
            if !m.finished() {
                m.total_ms = now_ms().saturating_sub(m.started_ms);
            }
            Json(m).into_response()
        }
        None => error(StatusCode::NOT_FOUND, format!("no migration `{id}`")),
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
