//! `roam::log(level: i32, ptr: i32, len: i32)`: structured logging.
//!
//! Levels: 0 trace, 1 debug, 2 info, 3 warn, 4 error (others are clamped).
//! Lines longer than the quota are cut, never refused. Returns nothing; traps
//! only when the buffer is outside guest memory.

use wasmtime::{Caller, Linker};

use super::{IMPORT_MODULE, LogRecord, memory};
use crate::instance::InstanceState;

pub(crate) fn add_to_linker(linker: &mut Linker<InstanceState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        IMPORT_MODULE,
        "log",
        |mut caller: Caller<'_, InstanceState>,
         level: i32,
         ptr: i32,
         len: i32|
         -> wasmtime::Result<()> {
            let max = caller.data().abi.quotas.max_log_line;
            let len = memory::len(len).unwrap_or(0).min(max) as i32;
            let bytes = memory::read(&mut caller, "log", ptr, len)?;
            let record = LogRecord {
                timeline: 0,
                seq: 0,
                time_ms: super::now_ms(),
                level: level.clamp(0, 4) as u8,
                source: super::LogSource::Log,
                message: String::from_utf8_lossy(&bytes).into_owned(),
            };
            let name = caller.data().name.clone();
            match record.level {
                0 => tracing::trace!(workload = %name, "{}", record.message),
                1 => tracing::debug!(workload = %name, "{}", record.message),
                2 => tracing::info!(workload = %name, "{}", record.message),
                3 => tracing::warn!(workload = %name, "{}", record.message),
                _ => tracing::error!(workload = %name, "{}", record.message),
            }
            if let Some(sink) = &caller.data().log_sink {
                sink(&name, &record);
            }
            caller.data_mut().abi.push_log(record);
            Ok(())
        },
    )?;
    Ok(())
}
