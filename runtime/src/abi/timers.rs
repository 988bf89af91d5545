//! Timers that survive migration.
//!
//! - `roam::timer_set(delay_ms: i64, ptr: i32, len: i32) -> i64`: fire
//!   `roam_timer(id, payload)` after `delay_ms` on the workload's monotonic
//!   clock. Returns the timer id (> 0), or `DENIED` (timers not granted),
//!   `LIMIT` (too many pending), `TOO_LARGE` (payload over the quota),
//!   `INVALID` (negative delay or length).
//! - `roam::timer_cancel(id: i64) -> i32`: 0, or `NOT_FOUND`.
//!
//! Pending timers are part of the snapshot; their due times are on the
//! workload's own clock, so a timer set before a move fires on time after it.

use wasmtime::{Caller, Linker};

use super::state::Timer;
use super::{IMPORT_MODULE, codes, memory};
use crate::instance::InstanceState;

pub(crate) fn add_to_linker(linker: &mut Linker<InstanceState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        IMPORT_MODULE,
        "timer_set",
        |mut caller: Caller<'_, InstanceState>,
         delay_ms: i64,
         ptr: i32,
         len: i32|
         -> wasmtime::Result<i64> {
            let abi = &caller.data().abi;
            if !abi.grants.timers {
                return Ok(i64::from(codes::DENIED));
            }
            let (Some(n), Ok(delay)) = (memory::len(len), u64::try_from(delay_ms)) else {
                return Ok(i64::from(codes::INVALID));
            };
            if n > abi.quotas.max_timer_payload {
                return Ok(i64::from(codes::TOO_LARGE));
            }
            if abi.timers.len() >= abi.quotas.max_timers {
                return Ok(i64::from(codes::LIMIT));
            }
            let payload = memory::read(&mut caller, "timer_set", ptr, len)?;
            let now = caller.data().clock.now_ns();
            let state = &mut caller.data_mut().abi;
            state.next_timer += 1;
            let id = state.next_timer;
            state.timers.insert(
                id,
                Timer {
                    due_ns: now.saturating_add(delay.saturating_mul(1_000_000)),
                    payload,
                },
            );
            Ok(id as i64)
        },
    )?;
    linker.func_wrap(
        IMPORT_MODULE,
        "timer_cancel",
        |mut caller: Caller<'_, InstanceState>, id: i64| -> i32 {
            let abi = &mut caller.data_mut().abi;
            if !abi.grants.timers {
                return codes::DENIED;
            }
            match abi.timers.remove(&(id as u64)) {
                Some(_) => codes::OK,
                None => codes::NOT_FOUND,
            }
        },
    )?;
    Ok(())
}
