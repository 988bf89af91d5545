//! Messages between workloads, by name, delivered at least once.
//!
//! Needs the `send` grant for the destination.
//!
//! ```
//! roam_sdk::messages::send("aggregator", b"temp=21.5").unwrap();
//! ```

use crate::{Error, sys};

/// Send `body` to the workload called `to`. The host queues it and delivers
/// it after the current entry point returns.
///
/// ```
/// roam_sdk::messages::send("audit-log", "user logged in").unwrap();
/// ```
pub fn send(to: &str, body: impl AsRef<[u8]>) -> Result<(), Error> {
    let body = body.as_ref();
    // SAFETY: both slices are live for the duration of the call.
    let code = unsafe { sys::send(to.as_ptr(), to.len(), body.as_ptr(), body.len()) };
    if code < 0 {
        Err(Error::from_code(i64::from(code)))
    } else {
        Ok(())
    }
}
