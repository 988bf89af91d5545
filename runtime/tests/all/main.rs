//! Integration tests of roam-runtime against WAT fixtures: one binary, one
//! module per concern (wasmtime's `tests/all` layout).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests report failure by panicking"
)]

mod limits;
mod load;
mod properties;
mod state;

use roam_runtime::{Instance, InstanceConfig, Module, Runtime, RuntimeConfig, Val};

pub const STATE_WAT: &str = include_str!("../fixtures/state.wat");
pub const LIMITS_WAT: &str = include_str!("../fixtures/limits.wat");

/// A small runtime for tests.
pub fn runtime() -> Runtime {
    Runtime::new(RuntimeConfig {
        slots: 32,
        max_instance_memory: 64 << 20,
        ..RuntimeConfig::default()
    })
    .unwrap()
}

pub fn load_wat(rt: &Runtime, wat: &str) -> Module {
    rt.load_blocking(&wat::parse_str(wat).unwrap()).unwrap()
}

pub async fn call_i64(instance: &mut Instance, name: &str, args: &[Val]) -> i64 {
    match instance.call(name, args).await.unwrap().as_slice() {
        [Val::I64(v)] => *v,
        other => panic!("`{name}` returned {other:?}"),
    }
}

pub async fn call_i32(instance: &mut Instance, name: &str, args: &[Val]) -> i32 {
    match instance.call(name, args).await.unwrap().as_slice() {
        [Val::I32(v)] => *v,
        other => panic!("`{name}` returned {other:?}"),
    }
}

pub fn config() -> InstanceConfig {
    let mut c = InstanceConfig::new("test");
    c.track_dirty = true;
    c
}
