//! `roam::random_fill(ptr: i32, len: i32) -> i32`: fill a buffer with random
//! bytes from the host's CSPRNG.
//!
//! Returns 0, or `TOO_LARGE` when `len` is over the quota, `INVALID` when
//! negative. Traps when the buffer is outside guest memory.

use wasmtime::{Caller, Linker};

use super::{IMPORT_MODULE, codes, memory};
use crate::instance::InstanceState;

pub(crate) fn add_to_linker(linker: &mut Linker<InstanceState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        IMPORT_MODULE,
        "random_fill",
        |mut caller: Caller<'_, InstanceState>, ptr: i32, len: i32| -> wasmtime::Result<i32> {
            let Some(n) = memory::len(len) else {
                return Ok(codes::INVALID);
            };
            if n > caller.data().abi.quotas.max_random {
                return Ok(codes::TOO_LARGE);
            }
            let mut buf = vec![0u8; n];
            getrandom::fill(&mut buf).map_err(|e| {
                wasmtime::format_err!("roam::random_fill: host entropy unavailable: {e}")
            })?;
            memory::write(&mut caller, "random_fill", ptr, &buf)?;
            Ok(codes::OK)
        },
    )?;
    Ok(())
}
