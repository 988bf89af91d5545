//! Real Rust guests (built for wasm32-wasip1 by this package's build.rs)
//! captured and restored through the runtime library.

mod rust_guests;
