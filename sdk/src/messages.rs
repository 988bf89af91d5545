//! Messages between workloads, by name: kept by the sender's host until
//! the receiver's host took them, handled once (resends are dropped).
//!
//! Needs the `send` grant for the destination.
//!
//! ```
//! roam_sdk::messages::send("aggregator", b"temp=21.5").unwrap();
//! ```

use crate::{Error, sys};

/// The sender of a message that comes back undelivered (never a workload
/// name: those are DNS labels).
pub const UNDELIVERABLE: &str = "roam:undeliverable";

/// A message this workload sent that could not be delivered, given to
/// [`crate::Workload::on_undeliverable`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Undeliverable {
    /// Where it was sent.
    pub to: String,
    /// Its body (cut to the inbox's quota if it was near it).
    pub body: Vec<u8>,
    /// Why: [`Error::NotFound`] for a destination that does not exist.
    pub error: Error,
}

impl Undeliverable {
    /// Read the body of a message from [`UNDELIVERABLE`]: code (i32 LE),
    /// destination (u32 LE length, UTF-8), then the message's body.
    ///
    /// ```
    /// let mut b = (-1i32).to_le_bytes().to_vec();
    /// b.extend_from_slice(&3u32.to_le_bytes());
    /// b.extend_from_slice(b"abcbody");
    /// let u = roam_sdk::messages::Undeliverable::parse(&b).unwrap();
    /// assert_eq!((u.to.as_str(), &u.body[..], u.error), ("abc", &b"body"[..], roam_sdk::Error::NotFound));
    /// ```
    pub fn parse(bytes: &[u8]) -> Option<Undeliverable> {
        let code = i32::from_le_bytes(bytes.get(..4)?.try_into().ok()?);
        let n = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?) as usize;
        let to = std::str::from_utf8(bytes.get(8..8usize.checked_add(n)?)?).ok()?;
        Some(Undeliverable {
            to: to.to_string(),
            body: bytes[8 + n..].to_vec(),
            error: Error::from_code(i64::from(code)),
        })
    }
}

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
