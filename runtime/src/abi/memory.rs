//! Checked access to guest memory from host functions.

use wasmtime::{Caller, Extern, Memory};

use crate::instance::InstanceState;

/// The guest's exported `memory`, or a trap naming the function.
pub(crate) fn memory(
    caller: &mut Caller<'_, InstanceState>,
    func: &str,
) -> wasmtime::Result<Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(m)) => Ok(m),
        _ => Err(wasmtime::format_err!(
            "roam::{func}: the module exports no `memory`; the ABI needs it to pass data"
        )),
    }
}

/// The byte range `[ptr, ptr + len)` checked against a memory of `size` bytes.
pub(crate) fn range(
    func: &str,
    ptr: i32,
    len: i32,
    size: usize,
) -> wasmtime::Result<std::ops::Range<usize>> {
    let start = ptr as u32 as usize;
    let len = len as u32 as usize;
    match start.checked_add(len) {
        Some(end) if end <= size => Ok(start..end),
        _ => Err(wasmtime::format_err!(
            "roam::{func}: guest buffer {start:#x}+{len} is outside its {size}-byte memory"
        )),
    }
}

/// Copy `len` bytes out of guest memory (the caller has bounded `len`).
pub(crate) fn read(
    caller: &mut Caller<'_, InstanceState>,
    func: &str,
    ptr: i32,
    len: i32,
) -> wasmtime::Result<Vec<u8>> {
    let mem = memory(caller, func)?;
    let data = mem.data(&*caller);
    let r = range(func, ptr, len, data.len())?;
    Ok(data[r].to_vec())
}

/// Write `bytes` into guest memory at `ptr`.
pub(crate) fn write(
    caller: &mut Caller<'_, InstanceState>,
    func: &str,
    ptr: i32,
    bytes: &[u8],
) -> wasmtime::Result<()> {
    let mem = memory(caller, func)?;
    let data = mem.data_mut(&mut *caller);
    let r = range(func, ptr, bytes.len() as i32, data.len())?;
    data[r].copy_from_slice(bytes);
    Ok(())
}

/// A guest length as usize, or `None` when negative.
pub(crate) fn len(len: i32) -> Option<usize> {
    usize::try_from(len).ok()
}
