//! What the scheduler concludes about a migration from what its hosts
//! answer: pure functions, in the manner of `reconcile.rs`, tested alone.
//!
//! Two decisions, both taken when the scheduler is unsure where a migration
//! got to — after a restart, after an abort that did not arrive, or when
//! activating the target failed past the commit point:
//! - [`verdict`]: given the source's and the target's answers, did the
//!   migration pass its commit point (complete it), not (abort it), or can
//!   nobody tell yet (ask again)?
//! - [`after_commit_point`]: the commit point was passed but the target did
//!   not take the activation: retry it, resume the source, or ask again?
//!
//! The safety rule both keep: **never resume the source while any answer
//! (or missing answer) is consistent with the target serving.** An abort
//! always reaches the target first, and a target refuses an abort once
//! activated, so a target that answered and then took the abort can never
//! serve; a target that did not answer might serve already (its activation
//! may have arrived while its answer was lost), so nothing resumes the
//! source until it answers. A refused connection ([`Answer::Gone`]) is an
//! answer: no process listens at the host's address, and a host's
//! workloads live in its process.

use roam_proto::{MigrationStatus, SourcePhase, TargetPhase};

/// What a host said when asked about a migration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// It answered.
    Said(MigrationStatus),
    /// Its address refused the connection: no process serves there.
    Gone,
    /// No answer: unreachable, timed out, cut off, an error status, or a
    /// host the scheduler does not know (yet).
    Silent,
}

/// What to do with an interrupted migration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It passed its commit point: activate the target, tell the source.
    Commit,
    /// It did not: abort it, the target first (which refuses once
    /// activated: then commit instead), then the source.
    Abort,
    /// A host that may hold the answer did not give it: ask again later,
    /// and leave the workload alone meanwhile.
    AskAgain,
}

/// What to do when the target did not take the activation after the
/// commit point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterCommit {
    /// The target serves or holds the final state: activate it (again).
    Activate,
    /// The target can no longer serve: abort it first, then resume the
    /// still frozen source at a generation above the target's.
    ResumeSource,
    /// The target did not answer: it may serve. Ask again later.
    AskAgain,
}

/// Whether the source's answer shows the commit point passed: prepared
/// never resumes by itself; committing and committed were decided.
fn source_committed(source: Answer) -> bool {
    matches!(
        source,
        Answer::Said(MigrationStatus::Source(
            SourcePhase::Prepared | SourcePhase::Committing | SourcePhase::Committed
        ))
    )
}

fn target_serves(target: Answer) -> bool {
    matches!(
        target,
        Answer::Said(MigrationStatus::Target(TargetPhase::Serving))
    )
}

/// Did an interrupted migration pass its commit point?
pub fn verdict(source: Answer, target: Answer) -> Verdict {
    if source_committed(source) || target_serves(target) {
        return Verdict::Commit;
    }
    match (source, target) {
        // Still sending (it gives up by itself, or on our abort) or already
        // given up: it never activated the target, which only the source
        // (once prepared) or a committing scheduler does.
        (Answer::Said(MigrationStatus::Source(SourcePhase::Sending | SourcePhase::Aborted)), _) => {
            Verdict::Abort
        }
        // The target may serve (an activation whose answer was lost): it
        // must answer before anything is aborted.
        (_, Answer::Silent) => Verdict::AskAgain,
        // The target answered that it does not serve (or is gone); the
        // abort reaches it first, so it never serves afterwards. A source
        // that does not answer may be prepared and frozen: the abort
        // resumes it once it arrives.
        (_, Answer::Said(_) | Answer::Gone) => Verdict::Abort,
    }
}

/// The commit point was passed, and activating the target failed.
pub fn after_commit_point(target: Answer) -> AfterCommit {
    match target {
        Answer::Said(MigrationStatus::Target(TargetPhase::Serving | TargetPhase::Ready)) => {
            AfterCommit::Activate
        }
        // It dropped what it received (a refused part, a restart, a failed
        // resume), or nothing listens there any more.
        Answer::Said(
            MigrationStatus::Target(TargetPhase::Receiving) | MigrationStatus::Unknown,
        )
        | Answer::Gone => AfterCommit::ResumeSource,
        // A host answering as the source is not the target we know; and a
        // silent target may serve.
        Answer::Said(MigrationStatus::Source(_)) | Answer::Silent => AfterCommit::AskAgain,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn status() -> impl Strategy<Value = MigrationStatus> {
        prop_oneof![
            Just(MigrationStatus::Unknown),
            prop_oneof![
                Just(SourcePhase::Sending),
                Just(SourcePhase::Prepared),
                Just(SourcePhase::Committing),
                Just(SourcePhase::Committed),
                Just(SourcePhase::Aborted),
            ]
            .prop_map(MigrationStatus::Source),
            prop_oneof![
                Just(TargetPhase::Receiving),
                Just(TargetPhase::Ready),
                Just(TargetPhase::Serving),
            ]
            .prop_map(MigrationStatus::Target),
        ]
    }

    fn answer() -> impl Strategy<Value = Answer> {
        prop_oneof![
            status().prop_map(Answer::Said),
            Just(Answer::Gone),
            Just(Answer::Silent),
        ]
    }

    /// Answers under which the target may be serving now or may start to
    /// without the scheduler: it said so, it did not answer, or it holds
    /// the final state (a source may be activating it).
    fn may_serve(target: Answer) -> bool {
        matches!(
            target,
            Answer::Silent
                | Answer::Said(MigrationStatus::Target(
                    TargetPhase::Serving | TargetPhase::Ready
                ))
                | Answer::Said(MigrationStatus::Source(_))
        )
    }

    proptest! {
        /// The safety rule: the source is never resumed while any answer
        /// (or missing answer) is consistent with the target serving.
        #[test]
        fn the_source_never_resumes_while_the_target_may_serve(target in answer()) {
            if after_commit_point(target) == AfterCommit::ResumeSource {
                prop_assert!(!may_serve(target), "{target:?}");
            }
        }

        /// An abort is decided only when the target answered that it does
        /// not serve (the abort reaches it first and locks it out), or when
        /// the source shows it never reached the commit point.
        #[test]
        fn an_abort_needs_an_answer_that_rules_out_a_serving_target(
            source in answer(),
            target in answer(),
        ) {
            if verdict(source, target) == Verdict::Abort {
                prop_assert!(!target_serves(target));
                prop_assert!(!source_committed(source));
                let source_never_prepared = matches!(
                    source,
                    Answer::Said(MigrationStatus::Source(SourcePhase::Sending | SourcePhase::Aborted))
                );
                prop_assert!(source_never_prepared || target != Answer::Silent);
            }
        }

        /// Any answer that shows the commit point passed completes it.
        #[test]
        fn a_passed_commit_point_is_always_completed(source in answer(), target in answer()) {
            if source_committed(source) || target_serves(target) {
                prop_assert_eq!(verdict(source, target), Verdict::Commit);
            }
        }
    }

    #[test]
    fn a_partitioned_target_keeps_the_source_frozen() {
        assert_eq!(after_commit_point(Answer::Silent), AfterCommit::AskAgain);
        assert_eq!(
            verdict(
                Answer::Said(MigrationStatus::Source(SourcePhase::Prepared)),
                Answer::Silent
            ),
            Verdict::Commit
        );
        assert_eq!(verdict(Answer::Silent, Answer::Silent), Verdict::AskAgain);
        assert_eq!(after_commit_point(Answer::Gone), AfterCommit::ResumeSource);
    }
}
