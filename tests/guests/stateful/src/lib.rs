//! A Rust reactor whose state lives on the heap, behind the allocator and the
//! compiler's stack pointer — everything a snapshot must catch.

use std::cell::RefCell;
use std::collections::BTreeMap;

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

#[derive(Default)]
struct State {
    counts: BTreeMap<u32, u64>,
    log: Vec<u64>,
    blobs: Vec<Vec<u8>>,
}

fn mix(mut h: u64, v: u64) -> u64 {
    h ^= v;
    h = h.wrapping_mul(0x100000001b3);
    h
}

/// Count `key`, remember `value`; returns a digest of the whole state.
#[unsafe(no_mangle)]
pub extern "C" fn push(key: u32, value: u64) -> u64 {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        *s.counts.entry(key % 64).or_default() += 1;
        s.log.push(value);
        digest_of(&s)
    })
}

/// Allocate a blob of `kib` KiB filled from `seed` (grows memory).
#[unsafe(no_mangle)]
pub extern "C" fn blob(kib: u32, seed: u64) -> u64 {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        let mut x = seed | 1;
        let bytes: Vec<u8> = (0..kib as usize * 1024)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        s.blobs.push(bytes);
        digest_of(&s)
    })
}

/// Drop the oldest blob (frees memory, dirties the allocator's lists).
#[unsafe(no_mangle)]
pub extern "C" fn drop_blob() -> u64 {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        if !s.blobs.is_empty() {
            s.blobs.remove(0);
        }
        digest_of(&s)
    })
}

/// A digest of the whole state.
#[unsafe(no_mangle)]
pub extern "C" fn digest() -> u64 {
    STATE.with(|s| digest_of(&s.borrow()))
}

fn digest_of(s: &State) -> u64 {
    let mut h = 0xcbf29ce484222325;
    for (k, v) in &s.counts {
        h = mix(mix(h, u64::from(*k)), *v);
    }
    for v in &s.log {
        h = mix(h, *v);
    }
    for b in &s.blobs {
        h = mix(h, b.len() as u64);
        for chunk in b.chunks(4096) {
            h = mix(h, u64::from(chunk[0]) | (u64::from(chunk[chunk.len() - 1]) << 8));
        }
    }
    h
}

/// Recursion through the shadow stack (uses the stack-pointer global).
#[unsafe(no_mangle)]
pub extern "C" fn deep(n: u32) -> u64 {
    fn go(n: u32, acc: [u64; 8]) -> u64 {
        if n == 0 {
            return acc.iter().sum();
        }
        let mut next = acc;
        next[(n % 8) as usize] = next[(n % 8) as usize].wrapping_mul(31).wrapping_add(u64::from(n));
        go(n - 1, next)
    }
    go(n, [1; 8])
}

/// Print to stdout (captured by the host).
#[unsafe(no_mangle)]
pub extern "C" fn hello() {
    println!("hello from stateful");
}
