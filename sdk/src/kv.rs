//! A key-value store private to the workload. It moves with the workload.
//!
//! Needs the `kv` grant; without it every call returns [`Error::Denied`].
//!
//! ```
//! roam_sdk::kv::set("greeting", b"hello").unwrap();
//! assert_eq!(roam_sdk::kv::get("greeting").as_deref(), Some(&b"hello"[..]));
//! assert!(roam_sdk::kv::delete("greeting"));
//! assert_eq!(roam_sdk::kv::get("greeting"), None);
//! ```

use crate::{Error, sys};

/// The value stored under `key`, if any.
///
/// ```
/// assert_eq!(roam_sdk::kv::get("missing"), None);
/// ```
pub fn get(key: impl AsRef<[u8]>) -> Option<Vec<u8>> {
    let key = key.as_ref();
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: key and buf are live slices for the duration of the call.
        let n = unsafe { sys::kv_get(key.as_ptr(), key.len(), buf.as_mut_ptr(), buf.len()) };
        if n < 0 {
            return None;
        }
        let n = n as usize;
        if n <= buf.len() {
            buf.truncate(n);
            return Some(buf);
        }
        buf.resize(n, 0);
    }
}

/// Store `value` under `key`.
///
/// ```
/// roam_sdk::kv::set("k", "v").unwrap();
/// ```
pub fn set(key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<(), Error> {
    let (key, value) = (key.as_ref(), value.as_ref());
    // SAFETY: key and value are live slices for the duration of the call.
    let code = unsafe { sys::kv_set(key.as_ptr(), key.len(), value.as_ptr(), value.len()) };
    if code < 0 {
        Err(Error::from_code(i64::from(code)))
    } else {
        Ok(())
    }
}

/// Remove `key`; `true` if it existed.
///
/// ```
/// assert!(!roam_sdk::kv::delete("never-set"));
/// ```
pub fn delete(key: impl AsRef<[u8]>) -> bool {
    let key = key.as_ref();
    // SAFETY: key is a live slice for the duration of the call.
    unsafe { sys::kv_delete(key.as_ptr(), key.len()) == 0 }
}
