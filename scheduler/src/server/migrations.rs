//! Live migrations, orchestrated: check a request against the workload's
//! rules, prepare the target, follow the source's progress lines to the
//! commit point, and complete the commit where the source could not.
//!
//! The commit point is the source becoming `prepared` (see
//! `docs/migration-protocol.md`): it gets there only once the target
//! acknowledged the final state, and from then on it never resumes by
//! itself. It activates the target itself, hands off what it held and
//! reports `committed`; the scheduler then flips routing and records the
//! workload's new generation with the migration's final record, so neither
//! a store write nor a scheduler round trip is on the downtime's path.
//! Where the source cannot activate the target, or its progress lines stop
//! after `prepared`, [`Scheduler::complete`] finishes the commit. If the
//! target does not take it, the scheduler asks the target and decides with
//! `crate::verdict::after_commit_point`: it resumes the still frozen source
//! (at a generation above the target's) only once the target answered that
//! it can no longer serve; while the target is silent the migration stays
//! `resolving` and `recovery.rs` asks again. Before the commit point any
//! failure aborts: the target drops what it received and the source serves
//! on.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use roam_proto::reply::error;
use roam_proto::{
    MigrateRequest, MigrationDecision, MigrationInfo, MigrationOptions, MigrationPhase,
    MigrationProgress, MigrationStatusQuery, Place, PrepareMigration, ProgressPhase, SendMigration,
    WorkloadSpec,
};

use super::host_client::{Decision, HostError};
use super::recovery::Aborted;
use super::{Scheduler, parse};
use crate::auth;
use crate::placement::{self, PlacementRequest};
use crate::selector::Selector;
use crate::verdict::{self, AfterCommit, Answer};

/// A migration that has not reached its commit point by then is aborted
/// (and its workload handed back to the reconciler).
const MAX_PRECOPY: Duration = Duration::from_secs(15 * 60);

/// Ended migrations kept for `roam get migrations`.
const KEEP_MIGRATIONS: usize = 1000;

/// Longest progress stream the scheduler buffers without a line end.
const MAX_PROGRESS_LINE: usize = 1 << 20;

/// Connections the scheduler keeps open to a migration's target while it
/// pre-copies (`HostClient::warm`), and how often it uses them again (under
/// the pool's idle timeout, `roam_tls::CLIENT_POOL_IDLE`): a progress line
/// comes at least every round.
const WARM_CONNECTIONS: usize = 16;
const WARM_EVERY: Duration = Duration::from_secs(2);

/// Why a migration request was refused before anything moved.
#[derive(Debug, thiserror::Error)]
pub(super) enum MigrateError {
    #[error("page_streams must be 1 to {max}, not {0}", max = roam_proto::MAX_PAGE_STREAMS)]
    PageStreams(u32),
    #[error("no workload `{0}`")]
    NoWorkload(String),
    #[error("`{0}` is already migrating")]
    AlreadyMigrating(String),
    #[error("`{workload}` does not run on `{host}`")]
    NotOn { workload: String, host: String },
    #[error("`{0}` is not running anywhere")]
    NotRunning(String),
    #[error("`{workload}` has {} replicas ({}); say which to move with `from`", .hosts.len(), .hosts.join(", "))]
    WhichReplica {
        workload: String,
        hosts: Vec<String>,
    },
    #[error("source host `{0}` is down")]
    SourceDown(String),
    #[error("no host `{0}`")]
    NoHost(String),
    #[error("host `{host}` cannot take `{workload}`: {reason}")]
    TargetRefuses {
        host: String,
        workload: String,
        reason: String,
    },
    #[error("{0}")]
    Selector(String),
    #[error("no host can take `{workload}`{}", if .reasons.is_empty() { String::new() } else { format!(" ({})", .reasons.join("; ")) })]
    NoHostCanTake {
        workload: String,
        reasons: Vec<String>,
    },
    #[error("{0}")]
    Internal(String),
}

impl MigrateError {
    pub(super) fn status(&self) -> StatusCode {
        match self {
            MigrateError::PageStreams(_)
            | MigrateError::WhichReplica { .. }
            | MigrateError::Selector(_) => StatusCode::BAD_REQUEST,
            MigrateError::NoWorkload(_) | MigrateError::NoHost(_) => StatusCode::NOT_FOUND,
            MigrateError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::CONFLICT,
        }
    }
}

fn internal(e: impl std::fmt::Display) -> MigrateError {
    MigrateError::Internal(e.to_string())
}

/// Why a migration failed before its commit point.
#[derive(Debug, thiserror::Error)]
enum PrecopyError {
    #[error("migration vanished")]
    Vanished,
    #[error("source host `{0}` vanished")]
    SourceVanished(String),
    #[error("target host `{0}` vanished")]
    TargetVanished(String),
    #[error("target `{host}` refused to prepare: {error}")]
    Prepare { host: String, error: HostError },
    #[error("source `{host}` refused to send: {error}")]
    Send { host: String, error: HostError },
    #[error("the source's progress stream ended early")]
    Ended,
    #[error("the source's progress stream broke: {0}")]
    Broke(reqwest::Error),
    #[error("the source's progress stream is not line-delimited JSON")]
    NotLines,
    #[error("bad progress line from the source: {0}")]
    BadLine(serde_json::Error),
    #[error("{0}")]
    Source(String),
    #[error("no commit point within {} s; gave up", MAX_PRECOPY.as_secs())]
    Timeout,
}

/// How far a migration's pre-copy got.
enum Reached {
    /// The commit point: the source is frozen, the target holds the final
    /// state; the scheduler activates the target and tells the source.
    Prepared,
    /// The source also activated the target and handed off (downtime).
    HandedOff(Option<u64>),
}

/// How completing a commit ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Completion {
    /// The migration has its final record.
    Ended,
    /// The target did not answer: nobody can tell whether it serves, so
    /// nothing was resumed; ask again later.
    Unresolved,
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// See [`Scheduler::busy`].
pub(super) struct Busy<'a> {
    scheduler: &'a Scheduler,
    workload: String,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.scheduler
            .busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.workload);
    }
}

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
    /// migration the scheduler is unsure of.
    pub(super) fn frozen(&self) -> BTreeSet<String> {
        let mut frozen: BTreeSet<String> = self
            .migrations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|m| !m.finished() || self.is_pending(&m.id))
            .map(|m| m.workload.clone())
            .collect();
        frozen.extend(
            self.busy
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned(),
        );
        frozen
    }

    /// Keep the reconciler off `workload` until the guard is dropped (an
    /// operator's restore is moving it).
    pub(super) fn busy(&self, workload: &str) -> Busy<'_> {
        self.busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(workload.to_string());
        Busy {
            scheduler: self,
            workload: workload.to_string(),
        }
    }

    pub(super) fn is_pending(&self, id: &str) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(id)
    }

    pub(super) fn migration(&self, id: &str) -> Option<MigrationInfo> {
        self.migrations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// Change a migration in memory; with `persist`, also in the store.
    pub(super) fn update(&self, id: &str, persist: bool, change: impl FnOnce(&mut MigrationInfo)) {
        let (info, moved) = {
            let mut all = self.migrations.lock().unwrap_or_else(|e| e.into_inner());
            let Some(m) = all.get_mut(id) else { return };
            let (before, rounds) = (m.phase, m.rounds);
            change(m);
            m.total_ms = now_ms().saturating_sub(m.started_ms);
            if m.phase != before {
                m.history.push((m.phase, m.total_ms));
                self.metrics.entered(m.phase);
            }
            (m.clone(), m.phase != before || m.rounds != rounds)
        };
        if persist && let Err(e) = self.store.put_migration(id, &info) {
            tracing::error!(migration = %id, error = %e, "cannot record migration");
        }
        // Each new phase and round, for the console (the end has its own
        // event, with the downtime).
        if moved && !info.finished() {
            self.event(
                "migration_progress",
                serde_json::json!({
                    "migration": id, "workload": info.workload, "source": info.source,
                    "target": info.target, "phase": info.phase, "round": info.rounds,
                    "bytes": info.bytes_sent, "dirty_rate": info.dirty_rate,
                    "total_ms": info.total_ms,
                }),
            );
        }
    }

    /// Load migrations from the store; those a restart interrupted are
    /// resolved once their hosts are back.
    pub(super) fn load_migrations(&self) -> Result<(), crate::store::StoreError> {
        let records: Vec<(String, MigrationInfo)> = self.store.migrations()?;
        // Lock order everywhere: migrations, then pending.
        let mut all = self.migrations.lock().unwrap_or_else(|e| e.into_inner());
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for (id, mut info) in records {
            if !info.finished() {
                // Shown as `resolving` until the hosts were asked.
                pending.insert(id.clone());
                info.phase = MigrationPhase::Resolving;
                info.history.push((info.phase, info.total_ms));
            }
            all.insert(id, info);
        }
        Ok(())
    }

    /// Check a migration request and start it.
    pub(super) async fn start_migration(
        self: &Arc<Self>,
        req: MigrateRequest,
    ) -> Result<MigrationInfo, MigrateError> {
        let name = req.workload.clone();
        let streams = req.options.page_streams;
        if !(1..=roam_proto::MAX_PAGE_STREAMS).contains(&streams) {
            return Err(MigrateError::PageStreams(streams));
        }
        let Some(spec) = self.spec(&name) else {
            return Err(MigrateError::NoWorkload(name));
        };
        if self.frozen().contains(&name) {
            return Err(MigrateError::AlreadyMigrating(name));
        }
        let running: Vec<String> = self.placed_on(&name);
        let source = match (&req.from, running.as_slice()) {
            (Some(h), _) if running.contains(h) => h.clone(),
            (Some(h), _) => {
                return Err(MigrateError::NotOn {
                    workload: name,
                    host: h.clone(),
                });
            }
            (None, [one]) => one.clone(),
            (None, []) => return Err(MigrateError::NotRunning(name)),
            (None, many) => {
                return Err(MigrateError::WhichReplica {
                    workload: name,
                    hosts: many.to_vec(),
                });
            }
        };
        if !self.hosts.get(&source).is_some_and(|e| self.alive(&e)) {
            return Err(MigrateError::SourceDown(source));
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
                    return Err(MigrateError::NoHost(to.clone()));
                };
                if let Some(reason) = placement::check(&request, view) {
                    return Err(MigrateError::TargetRefuses {
                        host: to.clone(),
                        workload: name,
                        reason: reason.to_string(),
                    });
                }
                to.clone()
            }
            None => {
                let extra = Selector::parse(req.selector.as_deref().unwrap_or(""))
                    .map_err(|e| MigrateError::Selector(e.to_string()))?;
                let candidates: Vec<_> = views
                    .iter()
                    .filter(|v| extra.first_failure(&v.labels).is_none())
                    .cloned()
                    .collect();
                let placement = placement::place(&request, &candidates);
                match placement.best() {
                    Some(h) => h.to_string(),
                    None => {
                        return Err(MigrateError::NoHostCanTake {
                            workload: name,
                            reasons: placement
                                .rejected
                                .iter()
                                .map(|(h, r)| format!("{h}: {r}"))
                                .collect(),
                        });
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
            phase: MigrationPhase::Preparing,
            started_ms: now_ms(),
            history: vec![(MigrationPhase::Preparing, 0)],
            ..MigrationInfo::default()
        };
        {
            let mut all = self.migrations.lock().unwrap_or_else(|e| e.into_inner());
            if all.values().any(|m| m.workload == name && !m.finished()) {
                return Err(MigrateError::AlreadyMigrating(name));
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
            Err(_)
                if self
                    .migration(&id)
                    .is_some_and(|m| m.phase == MigrationPhase::Prepared) =>
            {
                Ok(Reached::Prepared)
            }
            Err(_) => Err(PrecopyError::Timeout),
        };
        match result {
            Ok(Reached::HandedOff(downtime)) => {
                self.update(&id, false, |m| m.phase = MigrationPhase::Committed);
                self.raise_generation(&id);
                self.handed_off(&id, downtime);
            }
            Ok(Reached::Prepared) => self.commit(&id).await,
            Err(reason) => match self.abort_hosts(&id, 0).await {
                // The source reached the commit point after all (its lines
                // were lost on the way): finish the commit.
                Aborted::Refused => self.commit(&id).await,
                Aborted::Delivered => {
                    self.finish(&id, MigrationPhase::Failed, Some(reason.to_string()), None)
                }
                // The source may be frozen, waiting: ask it again until it
                // answers or is gone.
                Aborted::Undelivered => {
                    tracing::warn!(migration = %id, error = %reason, "failed, and the source did not take the abort; resolving");
                    self.unresolved(&id, Some(reason.to_string()));
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
    ) -> Result<Reached, PrecopyError> {
        let m = self.migration(id).ok_or(PrecopyError::Vanished)?;
        let source = self
            .endpoint(&m.source)
            .ok_or_else(|| PrecopyError::SourceVanished(m.source.clone()))?;
        let target = self
            .endpoint(&m.target)
            .ok_or_else(|| PrecopyError::TargetVanished(m.target.clone()))?;
        let site = self
            .hosts
            .get(&m.source)
            .and_then(|e| e.labels.get("site").cloned())
            .unwrap_or_default();
        let prepare = PrepareMigration {
            protocol: roam_proto::PROTOCOL_VERSION,
            workload: m.workload.clone(),
            instance: self.instance_for(spec, &m.source, m.generation),
            key: key.to_string(),
            source: Place {
                host: m.source.clone(),
                site,
            },
        };
        self.client
            .prepare(&target, id, &prepare)
            .await
            .map_err(|error| PrecopyError::Prepare {
                host: m.target.clone(),
                error,
            })?;
        // Phases before the commit are kept in memory only: a restart
        // aborts whatever the store does not show committed, and the commit
        // records the whole history.
        self.update(id, false, |m| m.phase = MigrationPhase::Precopy);
        let send = SendMigration {
            workload: m.workload.clone(),
            target_url: target.url.clone(),
            target: target.name.clone(),
            key: key.to_string(),
            generation: m.generation,
            options,
        };
        let mut r = self
            .client
            .send_migration(&source, id, &send)
            .await
            .map_err(|error| PrecopyError::Send {
                host: m.source.clone(),
                error,
            })?;
        let mut buffer = Vec::new();
        let mut prepared = false;
        // Connections to the target for the ingress, open by the commit.
        let status = MigrationStatusQuery {
            workload: m.workload.clone(),
            generation: m.generation,
        };
        self.client.warm(&target, id, &status, WARM_CONNECTIONS);
        let mut warmed = Instant::now();
        loop {
            if warmed.elapsed() >= WARM_EVERY {
                warmed = Instant::now();
                self.client.warm(&target, id, &status, WARM_CONNECTIONS);
            }
            let chunk = match r.chunk().await {
                Ok(Some(c)) => c,
                // Past the commit point the scheduler finishes the commit.
                _ if prepared => return Ok(Reached::Prepared),
                Ok(None) => return Err(PrecopyError::Ended),
                Err(e) => return Err(PrecopyError::Broke(e)),
            };
            buffer.extend_from_slice(&chunk);
            if buffer.len() > MAX_PROGRESS_LINE {
                return Err(PrecopyError::NotLines);
            }
            while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                let p: MigrationProgress =
                    serde_json::from_slice(&line).map_err(PrecopyError::BadLine)?;
                self.update(id, false, |m| {
                    if p.phase != ProgressPhase::Failed {
                        m.phase = p.phase.into();
                    }
                    m.rounds = p.round;
                    m.bytes_sent = p.bytes_sent;
                    m.wire_bytes = p.wire_bytes;
                    m.dirty_rate = p.dirty_rate;
                });
                match p.phase {
                    ProgressPhase::Prepared if p.error.is_some() => {
                        tracing::warn!(migration = %id, error = ?p.error, "the source could not activate the target");
                        return Ok(Reached::Prepared);
                    }
                    ProgressPhase::Prepared => prepared = true,
                    ProgressPhase::Committed => return Ok(Reached::HandedOff(p.downtime_us)),
                    ProgressPhase::Failed => {
                        return Err(PrecopyError::Source(
                            p.error.unwrap_or_else(|| "the source failed".into()),
                        ));
                    }
                    // Pre-copy converged. The ingress sends the workload's
                    // requests to the target from now on (the phase is set
                    // above); the source may freeze.
                    // (The source waits for the order a second at most.)
                    ProgressPhase::Stopping => {
                        let order = self.client.freeze(&source, id);
                        match tokio::time::timeout(Duration::from_secs(1), order).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => {
                                tracing::debug!(migration = %id, error = %e, "the order to freeze was refused; the source freezes all the same");
                            }
                            Err(_) => {
                                tracing::debug!(migration = %id, "the order to freeze took over a second; the source froze all the same");
                            }
                        }
                    }
                    ProgressPhase::Precopy => {}
                }
            }
        }
    }

    /// The source is prepared: the commit point was reached. Committed in
    /// memory (the store records it with the migration's end, or a restart
    /// learns it from the hosts), then activation and hand-off.
    pub(super) async fn commit(&self, id: &str) {
        self.update(id, false, |m| m.phase = MigrationPhase::Committed);
        if self.complete(id).await == Completion::Unresolved {
            self.unresolved(id, None);
        }
    }

    /// The scheduler cannot tell yet how `id` ends: shown as `resolving`,
    /// and `recovery.rs` asks its hosts on every reconcile round.
    pub(super) fn unresolved(&self, id: &str, reason: Option<String>) {
        self.update(id, false, |m| {
            m.phase = MigrationPhase::Resolving;
            if reason.is_some() {
                m.error = reason;
            }
        });
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string());
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
        self.finish(id, MigrationPhase::Done, None, downtime);
    }

    /// After the commit point, when the source did not hand off by itself:
    /// activate the target, flip routing, tell the source. If the target
    /// does not take the activation, ask it: only a target that answered
    /// that it can no longer serve (and then took an abort) lets the still
    /// frozen source resume; a silent one leaves the migration unresolved.
    pub(super) async fn complete(&self, id: &str) -> Completion {
        let Some(m) = self.migration(id) else {
            return Completion::Ended;
        };
        self.raise_generation(id);
        let decision = MigrationDecision {
            target_url: self.endpoint(&m.target).map(|e| e.url).unwrap_or_default(),
            generation: m.generation,
        };
        let mut activated = false;
        for attempt in 0..3 {
            match self
                .decide(&m.target, id, Decision::Commit, &decision)
                .await
            {
                Ok(_) => {
                    activated = true;
                    break;
                }
                Err(e) => {
                    tracing::warn!(migration = %id, attempt, error = %e, "target did not take the commit");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        if !activated {
            return self.target_lost(&m).await;
        }
        let downtime = match self
            .decide(&m.source, id, Decision::Commit, &decision)
            .await
        {
            Ok(outcome) => outcome.downtime_us,
            Err(e) => {
                tracing::warn!(migration = %id, error = %e, "source did not take the commit; it is fenced off by generation");
                None
            }
        };
        self.handed_off(id, downtime);
        Completion::Ended
    }

    /// The target did not take the activation after the commit point.
    async fn target_lost(&self, m: &MigrationInfo) -> Completion {
        let id = &m.id;
        let answer = self.ask(&m.target, m).await;
        let decided = verdict::after_commit_point(answer);
        tracing::info!(migration = %id, host = %m.target, ?answer, ?decided, "asked the target after a failed activation");
        match decided {
            AfterCommit::Activate | AfterCommit::AskAgain => return Completion::Unresolved,
            AfterCommit::ResumeSource => {}
        }
        // The target first: once it took the abort it can never serve. A
        // target whose address refuses connections serves nothing.
        match self
            .decide(
                &m.target,
                id,
                Decision::Abort,
                &MigrationDecision::default(),
            )
            .await
        {
            Ok(_) | Err(HostError::Unreachable { refused: true, .. }) => {}
            Err(e) => {
                tracing::warn!(migration = %id, error = %e, "the target did not take the abort; resolving");
                return Completion::Unresolved;
            }
        }
        // The source still holds the final state, frozen: it resumes, at a
        // generation above the one the target would carry.
        let generation = m.generation + 1;
        // Recorded before the source is told; a restart in between asks
        // the hosts again.
        if let Err(e) = self.store.commit_migration(
            id,
            m,
            &m.workload,
            generation,
            &self.placement(&m.workload),
        ) {
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
                Decision::Abort,
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
            Err(e) => format!(
                "target `{}` was lost after the commit and the source did not answer: {e}",
                m.target
            ),
        };
        self.finish(id, MigrationPhase::Failed, Some(reason), None);
        Completion::Ended
    }

    /// What `host` says of migration `m`.
    pub(super) async fn ask(&self, host: &str, m: &MigrationInfo) -> Answer {
        let query = MigrationStatusQuery {
            workload: m.workload.clone(),
            generation: m.generation,
        };
        self.client
            .status(self.endpoint(host).as_ref(), &m.id, &query)
            .await
    }

    /// Send a commit or abort to a host.
    pub(super) async fn decide(
        &self,
        host: &str,
        id: &str,
        decision: Decision,
        body: &MigrationDecision,
    ) -> Result<roam_proto::CommitOutcome, HostError> {
        let to = self
            .endpoint(host)
            .ok_or_else(|| HostError::Unknown(host.to_string()))?;
        self.client.decide(&to, id, decision, body).await
    }

    pub(super) fn finish(
        &self,
        id: &str,
        phase: MigrationPhase,
        reason: Option<String>,
        downtime_us: Option<u64>,
    ) {
        let done = phase == MigrationPhase::Done;
        // A migration done records the workload's new generation with it.
        self.update(id, !done, |m| {
            m.phase = phase;
            m.error = reason.clone();
            m.downtime_us = downtime_us;
        });
        if done
            && let Some(m) = self.migration(id)
            && let Err(e) = self.store.commit_migration(
                id,
                &m,
                &m.workload,
                m.generation,
                &self.placement(&m.workload),
            )
        {
            tracing::error!(migration = %id, error = %e, "cannot record the migration's end");
        }
        self.forget_old_migrations();
        self.touch();
        let Some(m) = self.migration(id) else { return };
        self.metrics
            .ended(phase, m.total_ms, downtime_us, m.bytes_sent, m.rounds);
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

    /// Wait until a migration ends.
    pub(super) async fn wait(&self, id: &str) -> Option<MigrationInfo> {
        loop {
            let m = self.migration(id)?;
            if m.finished() {
                return Some(m);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// `POST /v1/migrations`.
pub(super) async fn create(State(s): State<Arc<Scheduler>>, body: Bytes) -> Response {
    let req: MigrateRequest = match parse(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match s.start_migration(req).await {
        Ok(info) => (StatusCode::ACCEPTED, Json(info)).into_response(),
        Err(e) => error(e.status(), e.to_string()),
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
