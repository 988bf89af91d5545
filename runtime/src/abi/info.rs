//! `roam::host_info(ptr: i32, cap: i32) -> i32`: where the workload runs.
//!
//! Writes `u32 host_len | host | u32 site_len | site` (little-endian) when it
//! fits in `cap` bytes, and returns the encoded length either way, so a guest
//! can retry with a larger buffer. Traps when the buffer is outside guest memory.

use wasmtime::{Caller, Linker};

use super::{IMPORT_MODULE, codes, memory};
use crate::instance::InstanceState;

pub(crate) fn add_to_linker(linker: &mut Linker<InstanceState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        IMPORT_MODULE,
        "host_info",
        |mut caller: Caller<'_, InstanceState>, ptr: i32, cap: i32| -> wasmtime::Result<i32> {
            let Some(cap) = memory::len(cap) else {
                return Ok(codes::INVALID);
            };
            let info = &caller.data().abi.info;
            let mut out = Vec::new();
            super::codec::put_str(&mut out, &info.host);
            super::codec::put_str(&mut out, &info.site);
            if out.len() <= cap {
                memory::write(&mut caller, "host_info", ptr, &out)?;
            }
            Ok(out.len() as i32)
        },
    )?;
    Ok(())
}
