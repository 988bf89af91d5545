//! Clocks.
//!
//! [`monotonic`] is the workload's own clock: it continues from its last
//! reading when the workload moves, so it never goes backwards, even across
//! hosts whose clocks started at different times.
//!
//! ```
//! let a = roam_sdk::time::monotonic();
//! let b = roam_sdk::time::monotonic();
//! assert!(b >= a);
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::sys;

/// Wall-clock time of the host.
///
/// ```
/// assert!(roam_sdk::time::now() > std::time::UNIX_EPOCH);
/// ```
pub fn now() -> SystemTime {
    // SAFETY: no arguments.
    let ns = unsafe { sys::time_wall_ns() };
    UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64)
}

/// The workload's monotonic clock.
///
/// ```
/// let _elapsed: std::time::Duration = roam_sdk::time::monotonic();
/// ```
pub fn monotonic() -> Duration {
    // SAFETY: no arguments.
    let ns = unsafe { sys::time_monotonic_ns() };
    Duration::from_nanos(ns.max(0) as u64)
}
