//! Real Rust guests (built for wasm32-wasip1 by this package's build.rs)
//! captured and restored through the runtime library.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests report failure by panicking"
)]

mod abi;
mod rollback;
mod rust_guests;
