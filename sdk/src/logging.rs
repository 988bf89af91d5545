//! Structured logging, bridged to the `log` facade.
//!
//! [`export!`](crate::export) installs the bridge on first boot, so ordinary
//! `log::info!` calls reach the host, which prints them with the workload's
//! name and level (`roam logs` serves them in a cluster).
//!
//! ```
//! roam_sdk::logging::init();
//! log::info!("ready");
//! roam_sdk::logging::write(roam_sdk::logging::Level::Warn, "low on space");
//! ```

use crate::sys;

/// Log levels, as the ABI numbers them.
///
/// ```
/// assert_eq!(roam_sdk::logging::Level::Warn as i32, 3);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// 0
    Trace,
    /// 1
    Debug,
    /// 2
    Info,
    /// 3
    Warn,
    /// 4
    Error,
}

/// Write one log record.
///
/// ```
/// roam_sdk::logging::write(roam_sdk::logging::Level::Info, "hello");
/// ```
pub fn write(level: Level, message: &str) {
    // SAFETY: message is a live slice for the duration of the call.
    unsafe { sys::log(level as i32, message.as_ptr(), message.len()) }
}

struct Bridge;

impl log::Log for Bridge {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        let level = match record.level() {
            log::Level::Trace => Level::Trace,
            log::Level::Debug => Level::Debug,
            log::Level::Info => Level::Info,
            log::Level::Warn => Level::Warn,
            log::Level::Error => Level::Error,
        };
        write(level, &record.args().to_string());
    }
    fn flush(&self) {}
}

static BRIDGE: Bridge = Bridge;

/// Route the `log` facade to the host. Idempotent.
///
/// ```
/// roam_sdk::logging::init();
/// roam_sdk::logging::init();
/// ```
pub fn init() {
    if log::set_logger(&BRIDGE).is_ok() {
        log::set_max_level(log::LevelFilter::Debug);
    }
}
