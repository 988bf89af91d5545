//! `roam::send(to_ptr: i32, to_len: i32, body_ptr: i32, body_len: i32) -> i32`:
//! send a message to another workload by name.
//!
//! The message is queued in the sender's outbox, with an id, and routed by
//! the host after the current call returns. It stays in the outbox (and so
//! in every snapshot) until the receiver's host acknowledged it, and is
//! sent again until then; the receiver drops ids it already took, so it is
//! handled once. Returns 0, or `DENIED` (sending to `to` is not granted),
//! `TOO_LARGE` (body over the quota, or name over 256 bytes), `LIMIT`
//! (outbox full: as many messages as the quota wait for their
//! acknowledgement), `INVALID` (negative length, name not UTF-8). Traps
//! when a buffer is outside guest memory.

use wasmtime::{Caller, Linker};

/// The sender a message that could not be delivered comes back from: not
/// a workload name (names are DNS labels), so no workload can send as it.
pub const UNDELIVERABLE: &str = "roam:undeliverable";

/// The body of a message that comes back from [`UNDELIVERABLE`]: `code`
/// (i32 LE, an ABI error code: `NOT_FOUND` for a destination that does not
/// exist), the destination (u32 LE length, UTF-8), then the message's own
/// body.
pub fn undeliverable(code: i32, to: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + to.len() + body.len());
    out.extend_from_slice(&code.to_le_bytes());
    out.extend_from_slice(&(to.len() as u32).to_le_bytes());
    out.extend_from_slice(to.as_bytes());
    out.extend_from_slice(body);
    out
}

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
            let id = abi.next_message_id();
            abi.outbox.push_back(OutboundMessage { to, body, id });
            Ok(codes::OK)
        },
    )?;
    Ok(())
}
