//! Migrations the scheduler is unsure of: interrupted by a restart, failed
//! with an abort that did not reach a live source, or past the commit point
//! with a target that did not answer. On every reconcile round (once their
//! hosts rejoined, or had time to) it asks both hosts where the migration
//! got to and decides with `crate::verdict::verdict`: complete it, abort
//! it, or ask again. Meanwhile the reconciler leaves the workload alone.
//!
//! It asks the source first: a source still `sending` may give up by itself
//! at any moment (its progress stream to the old scheduler is gone) but
//! never once `prepared`.

use axum::http::StatusCode;
use roam_proto::{MigrationDecision, MigrationPhase};

use super::Scheduler;
use super::host_client::Decision;
use super::migrations::Completion;
use crate::verdict::{self, Answer, Verdict};

/// What an abort found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Aborted {
    /// Both hosts took it (or are gone).
    Delivered,
    /// A live source did not answer.
    Undelivered,
    /// A host refused: the migration was committed.
    Refused,
}

impl Scheduler {
    /// Abort on both hosts (each also gives up on its own): the target
    /// first, so that it can no longer be activated. A target that does not
    /// answer drops what it received by itself once the source gave up; a
    /// live source that does not answer may stay frozen, so that is
    /// `Undelivered`.
    pub(super) async fn abort_hosts(&self, id: &str, generation: u64) -> Aborted {
        let Some(m) = self.migration(id) else {
            return Aborted::Delivered;
        };
        let decision = MigrationDecision {
            target_url: String::new(),
            generation,
        };
        let mut reached = true;
        for host in [&m.target, &m.source] {
            match self.decide(host, id, Decision::Abort, &decision).await {
                Ok(_) => {}
                // Hosts refuse an abort only once committed.
                Err(e) if e.status() == Some(StatusCode::CONFLICT) => {
                    tracing::info!(migration = %id, %host, error = %e, "abort refused: the migration was committed");
                    return Aborted::Refused;
                }
                Err(e) => {
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

    /// Decide what the scheduler is unsure of, for hosts that are back.
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
        let patient = self.leading_for() < self.config.heartbeat_timeout * 2;
        for id in pending {
            let Some(m) = self.migration(&id) else {
                continue;
            };
            let known = |h: &str| self.hosts.get(h).is_some_and(|e| self.alive(&e));
            if patient && !(known(&m.source) && known(&m.target)) {
                continue;
            }
            let source = self.ask(&m.source, &m).await;
            let target = self.ask(&m.target, &m).await;
            let decided = verdict::verdict(source, target);
            tracing::info!(migration = %id, ?source, ?target, ?decided, "asked the hosts where a migration got to");
            let done = match decided {
                // Activating a target that did not even answer would fail
                // too (and wait for timeouts): ask again next round.
                Verdict::Commit if target == Answer::Silent => false,
                Verdict::Commit => {
                    let committed_before = m
                        .history
                        .iter()
                        .any(|(p, _)| *p == MigrationPhase::Committed);
                    if !committed_before {
                        self.update(&id, false, |m| m.phase = MigrationPhase::Committed);
                    }
                    match self.complete(&id).await {
                        Completion::Ended => true,
                        Completion::Unresolved => {
                            self.unresolved(&id, None);
                            false
                        }
                    }
                }
                // The source serves on at the generation it has: nothing
                // was committed, so nothing is fenced off.
                Verdict::Abort => match self.abort_hosts(&id, 0).await {
                    Aborted::Delivered => true,
                    // Committed meanwhile: ask again on the next round.
                    Aborted::Refused | Aborted::Undelivered => false,
                },
                Verdict::AskAgain => false,
            };
            if done {
                self.pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                if decided == Verdict::Abort {
                    match m.error {
                        // It had failed; only its abort was outstanding.
                        Some(reason) => {
                            self.finish(&id, MigrationPhase::Failed, Some(reason), None)
                        }
                        None => self.finish(
                            &id,
                            MigrationPhase::Aborted,
                            Some("the scheduler restarted before the commit".into()),
                            None,
                        ),
                    }
                }
                tracing::info!(migration = %id, ?decided, "unresolved migration resolved");
            }
        }
    }
}
