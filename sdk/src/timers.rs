//! Timers that survive migration.
//!
//! A timer fires [`Workload::on_timer`](crate::Workload::on_timer) once, after
//! its delay on the workload's monotonic clock. Pending timers travel with
//! the workload. Needs the `timers` grant.
//!
//! ```
//! use std::time::Duration;
//! let id = roam_sdk::timers::set(Duration::from_millis(500), b"expire:k1").unwrap();
//! assert!(roam_sdk::timers::cancel(id));
//! ```

use std::time::Duration;

use crate::{Error, sys};

/// Identifies a timer.
///
/// ```
/// let id = roam_sdk::timers::set(std::time::Duration::from_secs(5), b"").unwrap();
/// assert!(id.0 > 0);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimerId(pub i64);

/// Fire `on_timer(id, payload)` after `delay`.
///
/// ```
/// let _ = roam_sdk::timers::set(std::time::Duration::from_secs(1), b"tick");
/// ```
pub fn set(delay: Duration, payload: impl AsRef<[u8]>) -> Result<TimerId, Error> {
    let payload = payload.as_ref();
    let ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
    // SAFETY: payload is a live slice for the duration of the call.
    let id = unsafe { sys::timer_set(ms, payload.as_ptr(), payload.len()) };
    if id < 0 {
        Err(Error::from_code(id))
    } else {
        Ok(TimerId(id))
    }
}

/// Cancel a pending timer; `true` if it was pending.
///
/// ```
/// assert!(!roam_sdk::timers::cancel(roam_sdk::timers::TimerId(999)));
/// ```
pub fn cancel(id: TimerId) -> bool {
    // SAFETY: no pointers.
    unsafe { sys::timer_cancel(id.0) == 0 }
}
