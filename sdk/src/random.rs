//! Randomness from the host's CSPRNG.
//!
//! ```
//! let mut key = [0u8; 16];
//! roam_sdk::random::fill(&mut key).unwrap();
//! ```

use crate::{Error, sys};

/// Fill `buf` with random bytes (at most 64 KiB per call).
///
/// ```
/// let mut b = [0u8; 8];
/// roam_sdk::random::fill(&mut b).unwrap();
/// ```
pub fn fill(buf: &mut [u8]) -> Result<(), Error> {
    // SAFETY: buf is a live, writable slice for the duration of the call.
    let code = unsafe { sys::random_fill(buf.as_mut_ptr(), buf.len()) };
    if code < 0 {
        Err(Error::from_code(i64::from(code)))
    } else {
        Ok(())
    }
}

/// A random `u64`.
///
/// ```
/// let _ = roam_sdk::random::u64();
/// ```
pub fn u64() -> u64 {
    let mut b = [0u8; 8];
    fill(&mut b).ok();
    u64::from_le_bytes(b)
}
