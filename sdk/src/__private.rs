//! Glue used by [`export!`](crate::export); not a public API.

use std::cell::RefCell;

use crate::Moved;
use crate::http::{Request, Response};
use crate::timers::TimerId;

thread_local! {
    /// The last response, kept alive until the next call (the ABI's rule).
    static RESPONSE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// `roam_alloc`: a buffer the host fills; ownership passes back to the
/// entry point that receives it.
pub fn alloc(len: i32) -> i32 {
    let Ok(len) = usize::try_from(len) else {
        return 0;
    };
    let mut buf = Vec::<u8>::with_capacity(len.max(1));
    let ptr = buf.as_mut_ptr();
    std::mem::forget(buf);
    ptr as usize as i32
}

/// Take back a buffer handed out by [`alloc`] and filled by the host.
fn take(ptr: i32, len: i32) -> Vec<u8> {
    let len = usize::try_from(len).unwrap_or(0);
    // SAFETY: the host passes back exactly a pointer returned by `alloc` with
    // the length it allocated and then initialised; the ABI gives the entry
    // point ownership of it.
    unsafe { Vec::from_raw_parts(ptr as usize as *mut u8, len, len.max(1)) }
}

/// `roam_http`.
pub fn http(ptr: i32, len: i32, handle: impl FnOnce(Request) -> Response) -> i64 {
    let bytes = take(ptr, len);
    let response = match Request::decode(&bytes) {
        Some(req) => handle(req),
        None => Response::text(400, "malformed request"),
    };
    RESPONSE.with(|r| {
        let mut r = r.borrow_mut();
        *r = response.encode();
        ((r.as_ptr() as usize as u64) << 32 | r.len() as u64) as i64
    })
}

/// `roam_message`: a message, or one of ours that came back.
pub fn message(
    ptr: i32,
    len: i32,
    handle: impl FnOnce(&str, &[u8]),
    undeliverable: impl FnOnce(crate::messages::Undeliverable),
) {
    let bytes = take(ptr, len);
    let mut r = crate::http::Reader(&bytes);
    if let (Some(from), Some(body)) = (r.string(), r.bytes()) {
        if from == crate::messages::UNDELIVERABLE {
            if let Some(message) = crate::messages::Undeliverable::parse(body) {
                undeliverable(message);
            }
            return;
        }
        handle(&from, body);
    }
}

/// `roam_timer`.
pub fn timer(id: i64, ptr: i32, len: i32, handle: impl FnOnce(TimerId, &[u8])) {
    let bytes = take(ptr, len);
    handle(TimerId(id), &bytes);
}

/// `roam_restored`.
pub fn restored(ptr: i32, len: i32, handle: impl FnOnce(Moved)) {
    let bytes = take(ptr, len);
    let mut r = crate::http::Reader(&bytes);
    let mut s = || r.string().unwrap_or_default();
    let moved = Moved {
        from_host: s(),
        from_site: s(),
        host: s(),
        site: s(),
        how: crate::How::parse(&s()),
    };
    handle(moved);
}

/// `roam_upgrade_export`: the state, kept alive like a response.
pub fn upgrade_export(export: impl FnOnce() -> Vec<u8>) -> i64 {
    let state = export();
    RESPONSE.with(|r| {
        let mut r = r.borrow_mut();
        *r = state;
        ((r.as_ptr() as usize as u64) << 32 | r.len() as u64) as i64
    })
}

/// `roam_upgrade_import`: 0, or the reason it refused, packed.
pub fn upgrade_import(ptr: i32, len: i32, import: impl FnOnce(&[u8]) -> Result<(), String>) -> i64 {
    let bytes = take(ptr, len);
    match import(&bytes) {
        Ok(()) => 0,
        Err(reason) => RESPONSE.with(|r| {
            let mut r = r.borrow_mut();
            *r = reason.into_bytes();
            // A reason is never empty: 0 means accepted.
            if r.is_empty() {
                r.push(b'?');
            }
            ((r.as_ptr() as usize as u64) << 32 | r.len() as u64) as i64
        }),
    }
}
