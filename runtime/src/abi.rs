//! The Roam guest ABI, version 1: the host side.
//!
//! A workload module talks to the host through functions it imports from the
//! `roam` module (this file and its submodules, one per capability) and entry
//! points it exports (called by [`crate::workload`]). The contract is written
//! down in `docs/abi.md` and `docs/roam.wit`.
//!
//! Rules every host function follows:
//! - every guest pointer and length is checked against the guest's memory; an
//!   out-of-bounds range is a guest bug and traps the call with a message
//!   naming the function;
//! - every length is bounded by a quota *before* anything is copied or
//!   allocated; a request over a quota is refused with an error code the guest
//!   can handle ([`codes`]), never a trap;
//! - capabilities are denied unless granted ([`Grants`]); the grant is checked
//!   when the workload is configured and again on every call.

pub mod codec;
mod info;
mod kv;
mod log;
mod memory;
mod messages;
mod random;
pub mod state;
mod time;
mod timers;

use wasmtime::Linker;

use crate::instance::InstanceState;

pub use messages::{UNDELIVERABLE, undeliverable};
pub use state::{
    AbiState, Grants, InboundMessage, LOGS_SECTION, LogRecord, LogSource, MessageId,
    OutboundMessage, Place, Quotas,
};

/// The ABI version this host implements.
pub const ABI_VERSION: i32 = 1;

/// Wall-clock time, ms since the Unix epoch (0 before it).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The import module name of every host function.
pub const IMPORT_MODULE: &str = "roam";

/// Export a workload must have: returns the ABI version it was built for.
pub const EXPORT_ABI_VERSION: &str = "roam_abi_version";
/// Export: allocate `len` bytes in guest memory for the host to write into.
pub const EXPORT_ALLOC: &str = "roam_alloc";
/// Export: first boot only.
pub const EXPORT_INIT: &str = "roam_init";
/// Export: handle an HTTP-shaped request.
pub const EXPORT_HTTP: &str = "roam_http";
/// Export: handle a message from another workload.
pub const EXPORT_MESSAGE: &str = "roam_message";
/// Export: a timer fired.
pub const EXPORT_TIMER: &str = "roam_timer";
/// Export: the workload was restored after a move.
pub const EXPORT_RESTORED: &str = "roam_restored";
/// Export (upgrade hooks): the running version hands its state over as
/// bytes, `() -> i64` packed `(ptr << 32) | len`.
pub const EXPORT_UPGRADE_EXPORT: &str = "roam_upgrade_export";
/// Export (upgrade hooks): the new version takes the old one's bytes,
/// `(ptr, len) -> i64`: 0, or a packed `(ptr, len)` reason it refuses.
pub const EXPORT_UPGRADE_IMPORT: &str = "roam_upgrade_import";

/// Error codes host functions return to the guest (negative; 0 is success).
pub mod codes {
    /// Success.
    pub const OK: i32 = 0;
    /// No such key, timer or destination.
    pub const NOT_FOUND: i32 = -1;
    /// A length is over its bound.
    pub const TOO_LARGE: i32 = -2;
    /// A quota (keys, bytes, timers, queued messages) is used up.
    pub const LIMIT: i32 = -3;
    /// The capability is not granted to this workload.
    pub const DENIED: i32 = -4;
    /// An argument is invalid (for example a negative length).
    pub const INVALID: i32 = -5;
}

/// Capabilities and the import names that need them.
pub(crate) const CAPABILITY_IMPORTS: &[(&str, &[&str])] = &[
    ("kv", &["kv_get", "kv_set", "kv_delete"]),
    ("timers", &["timer_set", "timer_cancel"]),
    ("send", &["send"]),
];

/// Add every `roam` host function to the linker.
pub fn add_to_linker(linker: &mut Linker<InstanceState>) -> wasmtime::Result<()> {
    log::add_to_linker(linker)?;
    time::add_to_linker(linker)?;
    random::add_to_linker(linker)?;
    info::add_to_linker(linker)?;
    timers::add_to_linker(linker)?;
    messages::add_to_linker(linker)?;
    kv::add_to_linker(linker)?;
    Ok(())
}
