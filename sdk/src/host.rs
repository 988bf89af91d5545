//! Where the workload runs now.
//!
//! ```
//! let here = roam_sdk::host::info();
//! println!("running on {} in {}", here.host, here.site);
//! ```

use crate::sys;

/// Host and site names.
///
/// ```
/// let roam_sdk::host::HostInfo { host, site } = roam_sdk::host::info();
/// assert!(!host.is_empty() && !site.is_empty());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostInfo {
    /// Host name.
    pub host: String,
    /// Site name.
    pub site: String,
}

/// The current host and site.
///
/// ```
/// assert!(!roam_sdk::host::info().host.is_empty());
/// ```
pub fn info() -> HostInfo {
    let mut buf = vec![0u8; 128];
    loop {
        // SAFETY: buf is a live, writable slice for the duration of the call.
        let n = unsafe { sys::host_info(buf.as_mut_ptr(), buf.len()) };
        if n < 0 {
            return HostInfo::default();
        }
        let n = n as usize;
        if n <= buf.len() {
            let mut r = crate::http::Reader(&buf[..n]);
            return HostInfo {
                host: r.string().unwrap_or_default(),
                site: r.string().unwrap_or_default(),
            };
        }
        buf.resize(n, 0);
    }
}
