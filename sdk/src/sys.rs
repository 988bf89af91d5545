//! The raw `roam` imports (ABI v1, `docs/abi.md`).
//!
//! On `wasm32` these are the host's functions. Elsewhere they are in-process
//! stand-ins, so a workload's logic can be unit-tested natively with
//! `cargo test`: a thread-local key-value map, the system clocks, recorded
//! timers and messages.

#[cfg(target_family = "wasm")]
#[link(wasm_import_module = "roam")]
unsafe extern "C" {
    pub fn log(level: i32, ptr: *const u8, len: usize);
    pub fn time_wall_ns() -> i64;
    pub fn time_monotonic_ns() -> i64;
    pub fn random_fill(ptr: *mut u8, len: usize) -> i32;
    pub fn host_info(ptr: *mut u8, cap: usize) -> i32;
    pub fn timer_set(delay_ms: i64, ptr: *const u8, len: usize) -> i64;
    pub fn timer_cancel(id: i64) -> i32;
    pub fn send(to_ptr: *const u8, to_len: usize, body_ptr: *const u8, body_len: usize) -> i32;
    pub fn kv_get(key_ptr: *const u8, key_len: usize, buf_ptr: *mut u8, cap: usize) -> i64;
    pub fn kv_set(key_ptr: *const u8, key_len: usize, val_ptr: *const u8, val_len: usize) -> i32;
    pub fn kv_delete(key_ptr: *const u8, key_len: usize) -> i32;
}

#[cfg(not(target_family = "wasm"))]
pub use native::*;

#[cfg(not(target_family = "wasm"))]
#[allow(
    clippy::missing_safety_doc,
    reason = "stand-ins mirror the wasm imports' signatures"
)]
mod native {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    thread_local! {
        static KV: RefCell<BTreeMap<Vec<u8>, Vec<u8>>> = const { RefCell::new(BTreeMap::new()) };
        static NEXT_TIMER: RefCell<i64> = const { RefCell::new(0) };
        /// Timers set natively: (id, delay ms, payload).
        pub static TIMERS: RefCell<Vec<(i64, i64, Vec<u8>)>> = const { RefCell::new(Vec::new()) };
        /// Messages sent natively: (to, body).
        pub static SENT: RefCell<Vec<(String, Vec<u8>)>> = const { RefCell::new(Vec::new()) };
    }

    fn slice<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
        if len == 0 {
            return &[];
        }
        // SAFETY: the SDK's safe wrappers pass pointers and lengths of live slices.
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }

    fn slice_mut<'a>(ptr: *mut u8, len: usize) -> &'a mut [u8] {
        if len == 0 {
            return &mut [];
        }
        // SAFETY: the SDK's safe wrappers pass pointers and lengths of live buffers.
        unsafe { std::slice::from_raw_parts_mut(ptr, len) }
    }

    pub unsafe fn log(level: i32, ptr: *const u8, len: usize) {
        eprintln!("[{level}] {}", String::from_utf8_lossy(slice(ptr, len)));
    }
    pub unsafe fn time_wall_ns() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0)
    }
    pub unsafe fn time_monotonic_ns() -> i64 {
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        START
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_nanos() as i64
    }
    pub unsafe fn random_fill(ptr: *mut u8, len: usize) -> i32 {
        let mut x = (unsafe { time_monotonic_ns() } as u64) | 1;
        for b in slice_mut(ptr, len) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        0
    }
    pub unsafe fn host_info(ptr: *mut u8, cap: usize) -> i32 {
        let mut out = Vec::new();
        for s in ["native", "local"] {
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        if out.len() <= cap {
            slice_mut(ptr, out.len()).copy_from_slice(&out);
        }
        out.len() as i32
    }
    pub unsafe fn timer_set(delay_ms: i64, ptr: *const u8, len: usize) -> i64 {
        let id = NEXT_TIMER.with(|n| {
            *n.borrow_mut() += 1;
            *n.borrow()
        });
        TIMERS.with(|t| {
            t.borrow_mut()
                .push((id, delay_ms, slice(ptr, len).to_vec()))
        });
        id
    }
    pub unsafe fn timer_cancel(id: i64) -> i32 {
        TIMERS.with(|t| {
            let mut t = t.borrow_mut();
            let before = t.len();
            t.retain(|(i, _, _)| *i != id);
            if t.len() < before { 0 } else { -1 }
        })
    }
    pub unsafe fn send(
        to_ptr: *const u8,
        to_len: usize,
        body_ptr: *const u8,
        body_len: usize,
    ) -> i32 {
        let to = String::from_utf8_lossy(slice(to_ptr, to_len)).into_owned();
        SENT.with(|s| {
            s.borrow_mut()
                .push((to, slice(body_ptr, body_len).to_vec()))
        });
        0
    }
    pub unsafe fn kv_get(key_ptr: *const u8, key_len: usize, buf_ptr: *mut u8, cap: usize) -> i64 {
        KV.with(|kv| match kv.borrow().get(slice(key_ptr, key_len)) {
            None => -1,
            Some(v) => {
                if v.len() <= cap {
                    slice_mut(buf_ptr, v.len()).copy_from_slice(v);
                }
                v.len() as i64
            }
        })
    }
    pub unsafe fn kv_set(
        key_ptr: *const u8,
        key_len: usize,
        val_ptr: *const u8,
        val_len: usize,
    ) -> i32 {
        KV.with(|kv| {
            kv.borrow_mut().insert(
                slice(key_ptr, key_len).to_vec(),
                slice(val_ptr, val_len).to_vec(),
            )
        });
        0
    }
    pub unsafe fn kv_delete(key_ptr: *const u8, key_len: usize) -> i32 {
        KV.with(|kv| match kv.borrow_mut().remove(slice(key_ptr, key_len)) {
            Some(_) => 0,
            None => -1,
        })
    }
}
