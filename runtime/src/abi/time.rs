//! Clocks.
//!
//! - `roam::time_wall_ns() -> i64`: nanoseconds since the Unix epoch (host clock).
//! - `roam::time_monotonic_ns() -> i64`: the workload's monotonic clock, which
//!   continues from its last reading when the workload moves, so it never goes
//!   back. Never traps.

use wasmtime::{Caller, Linker};

use super::IMPORT_MODULE;
use crate::instance::InstanceState;

pub(crate) fn add_to_linker(linker: &mut Linker<InstanceState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        IMPORT_MODULE,
        "time_wall_ns",
        |_: Caller<'_, InstanceState>| -> i64 {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
                .unwrap_or(0)
        },
    )?;
    linker.func_wrap(
        IMPORT_MODULE,
        "time_monotonic_ns",
        |caller: Caller<'_, InstanceState>| -> i64 {
            i64::try_from(caller.data().clock.now_ns()).unwrap_or(i64::MAX)
        },
    )?;
    Ok(())
}
