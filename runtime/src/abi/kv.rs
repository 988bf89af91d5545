//! A key-value store private to the workload, moved with it.
//!
//! - `roam::kv_get(key_ptr, key_len, buf_ptr, buf_cap) -> i64`: the value's
//!   length, written to the buffer only when it fits (so a guest can retry
//!   with a larger one); `NOT_FOUND` when absent.
//! - `roam::kv_set(key_ptr, key_len, val_ptr, val_len) -> i32`: 0, or
//!   `TOO_LARGE` (key or value over its bound), `LIMIT` (keys or bytes quota).
//! - `roam::kv_delete(key_ptr, key_len) -> i32`: 0, or `NOT_FOUND`.
//!
//! All return `DENIED` unless `kv` is granted, `INVALID` for negative lengths,
//! and trap when a buffer is outside guest memory.

use wasmtime::{Caller, Linker};

use super::{IMPORT_MODULE, codes, memory};
use crate::instance::InstanceState;

fn key(
    caller: &mut Caller<'_, InstanceState>,
    func: &str,
    ptr: i32,
    len: i32,
) -> wasmtime::Result<Result<Vec<u8>, i32>> {
    let abi = &caller.data().abi;
    if !abi.grants.kv {
        return Ok(Err(codes::DENIED));
    }
    let Some(n) = memory::len(len) else {
        return Ok(Err(codes::INVALID));
    };
    if n > abi.quotas.kv_max_key {
        return Ok(Err(codes::TOO_LARGE));
    }
    Ok(Ok(memory::read(caller, func, ptr, len)?))
}

pub(crate) fn add_to_linker(linker: &mut Linker<InstanceState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        IMPORT_MODULE,
        "kv_get",
        |mut caller: Caller<'_, InstanceState>,
         kp: i32,
         kl: i32,
         bp: i32,
         cap: i32|
         -> wasmtime::Result<i64> {
            let k = match key(&mut caller, "kv_get", kp, kl)? {
                Ok(k) => k,
                Err(code) => return Ok(i64::from(code)),
            };
            let Some(cap) = memory::len(cap) else {
                return Ok(i64::from(codes::INVALID));
            };
            let Some(value) = caller.data().abi.kv.get(&k).cloned() else {
                return Ok(i64::from(codes::NOT_FOUND));
            };
            if value.len() <= cap {
                memory::write(&mut caller, "kv_get", bp, &value)?;
            }
            Ok(value.len() as i64)
        },
    )?;
    linker.func_wrap(
        IMPORT_MODULE,
        "kv_set",
        |mut caller: Caller<'_, InstanceState>,
         kp: i32,
         kl: i32,
         vp: i32,
         vl: i32|
         -> wasmtime::Result<i32> {
            let k = match key(&mut caller, "kv_set", kp, kl)? {
                Ok(k) => k,
                Err(code) => return Ok(code),
            };
            let Some(n) = memory::len(vl) else {
                return Ok(codes::INVALID);
            };
            let abi = &caller.data().abi;
            if n > abi.quotas.kv_max_value {
                return Ok(codes::TOO_LARGE);
            }
            let old = abi.kv.get(&k).map_or(0, |v| k.len() + v.len());
            let new_bytes = abi.kv_bytes - old + k.len() + n;
            if new_bytes > abi.quotas.kv_max_bytes
                || (old == 0 && !abi.kv.contains_key(&k) && abi.kv.len() >= abi.quotas.kv_max_keys)
            {
                return Ok(codes::LIMIT);
            }
            let v = memory::read(&mut caller, "kv_set", vp, vl)?;
            let abi = &mut caller.data_mut().abi;
            abi.kv_bytes = new_bytes;
            abi.kv.insert(k, v);
            Ok(codes::OK)
        },
    )?;
    linker.func_wrap(
        IMPORT_MODULE,
        "kv_delete",
        |mut caller: Caller<'_, InstanceState>, kp: i32, kl: i32| -> wasmtime::Result<i32> {
            let k = match key(&mut caller, "kv_delete", kp, kl)? {
                Ok(k) => k,
                Err(code) => return Ok(code),
            };
            let abi = &mut caller.data_mut().abi;
            match abi.kv.remove(&k) {
                Some(v) => {
                    abi.kv_bytes -= k.len() + v.len();
                    Ok(codes::OK)
                }
                None => Ok(codes::NOT_FOUND),
            }
        },
    )?;
    Ok(())
}
