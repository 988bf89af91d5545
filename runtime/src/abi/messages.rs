//! `roam::send(to_ptr: i32, to_len: i32, body_ptr: i32, body_len: i32) -> i32`:
//! send a message to another workload by name.
//!
//! The message is queued in the sender's outbox and routed by the host after
//! the current call returns; it is delivered at least once (the receiver's
//! inbox is part of its snapshot). Returns 0, or `DENIED` (sending to `to` is
//! not granted), `TOO_LARGE` (body over the quota, or name over 256 bytes),
//! `LIMIT` (outbox full), `INVALID` (negative length, name not UTF-8). Traps
//! when a buffer is outside guest memory.

use wasmtime::{Caller, Linker};

use super::{IMPORT_MODULE, OutboundMessage, codes, memory};
use crate::instance::InstanceState;

pub(crate) fn add_to_linker(linker: &mut Linker<InstanceState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        IMPORT_MODULE,
        "send",
        |mut caller: Caller<'_, InstanceState>,
         to_ptr: i32,
         to_len: i32,
         body_ptr: i32,
         body_len: i32|
         -> wasmtime::Result<i32> {
            let abi = &caller.data().abi;
            if abi.grants.send.is_empty() {
                return Ok(codes::DENIED);
            }
            let (Some(tl), Some(bl)) = (memory::len(to_len), memory::len(body_len)) else {
                return Ok(codes::INVALID);
            };
            if tl > 256 || bl > abi.quotas.max_message {
                return Ok(codes::TOO_LARGE);
            }
            if abi.outbox.len() >= abi.quotas.max_queued_messages {
                return Ok(codes::LIMIT);
            }
            let to = memory::read(&mut caller, "send", to_ptr, to_len)?;
            let body = memory::read(&mut caller, "send", body_ptr, body_len)?;
            let Ok(to) = String::from_utf8(to) else {
                return Ok(codes::INVALID);
            };
            let abi = &mut caller.data_mut().abi;
            if !abi.grants.may_send_to(&to) {
                return Ok(codes::DENIED);
            }
            abi.outbox.push_back(OutboundMessage { to, body });
            Ok(codes::OK)
        },
    )?;
    Ok(())
}
