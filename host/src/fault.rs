//! Fault injection for tests: delays read from the environment so fault
//! tests can act while a migration is in a given phase. Unset (the
//! default), each hook is a no-op; nothing else in the protocol code reads
//! the environment.
//!
//! | variable | where it delays |
//! | --- | --- |
//! | `ROAM_FAULT_ROUND_DELAY_MS` | the source, before the first part of each round |
//! | `ROAM_FAULT_WINDOW_DELAY_MS` | the source, before each window of round 0's live pages |
//! | `ROAM_FAULT_COMMIT_DELAY_MS` | the source, between `prepared` and activating the target |
//! | `ROAM_FAULT_ACTIVATE_DELAY_MS` | the target, while it activates a received workload |
//!
//! And one failure: with `ROAM_FAULT_FAIL_PRECOPY=1`, the source fails every
//! live (pre-copy) migration before its first capture, so the fallbacks
//! (`roam drain`'s stop-and-copy) can be tested.

use std::time::Duration;

/// A delay hook.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Fault {
    /// Before the first part of each round (source).
    Round,
    /// Before each window of round 0's live pages (source).
    Window,
    /// Between the final state's arrival and its activation (target).
    Commit,
    /// While the target activates a received workload.
    Activate,
}

impl Fault {
    fn variable(self) -> &'static str {
        match self {
            Fault::Round => "ROAM_FAULT_ROUND_DELAY_MS",
            Fault::Window => "ROAM_FAULT_WINDOW_DELAY_MS",
            Fault::Commit => "ROAM_FAULT_COMMIT_DELAY_MS",
            Fault::Activate => "ROAM_FAULT_ACTIVATE_DELAY_MS",
        }
    }

    /// The delay set for this hook, if any.
    pub(crate) fn delay(self) -> Option<Duration> {
        let ms: u64 = std::env::var(self.variable()).ok()?.parse().ok()?;
        Some(Duration::from_millis(ms))
    }

    /// Wait for the delay set for this hook, if any.
    pub(crate) async fn pause(self) {
        if let Some(delay) = self.delay() {
            tokio::time::sleep(delay).await;
        }
    }
}

/// Whether live (pre-copy) migrations from this host are to fail.
pub(crate) fn fail_precopy() -> bool {
    std::env::var("ROAM_FAULT_FAIL_PRECOPY").is_ok_and(|v| v == "1")
}
