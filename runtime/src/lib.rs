//! roam-runtime: the Roam host's WebAssembly runtime.
//!
//! It runs untrusted WASI preview 1 modules in a sandbox (memory cap, CPU
//! budget per call, nothing granted by default) and captures and restores an
//! instance's exact state at a safe point, so a workload can continue on
//! another host — of any CPU architecture — as if nothing happened.
//!
//! The flow: [`Runtime::load`] validates, rewrites ([`rewrite`]) and compiles
//! a module into a [`Module`]; [`Runtime::instantiate`] boots an
//! [`Instance`]; [`Instance::call`] runs exports; [`Instance::capture`] and
//! [`Instance::capture_delta`] produce [`Snapshot`]s, which
//! [`snapshot::codec`] turns into bytes and back; [`Runtime::restore`] and
//! [`Instance::apply`] continue from them.
#![deny(missing_docs)]

pub mod abi;
pub mod cache;
pub mod checkpoint;
pub mod config;
pub mod dirty;
pub mod driver;
pub mod epoch;
pub mod error;
pub mod instance;
pub mod limits;
pub mod logs;
pub mod module;
pub mod rewrite;
pub mod runtime;
pub mod snapshot;
pub mod wasi;
pub mod workload;

pub use config::{EngineKind, RuntimeConfig};
pub use error::{
    CallError, CaptureError, InstantiateError, LoadError, RestoreError, SnapshotError,
};
pub use instance::{Chain, DirGrant, Instance, InstanceConfig};
pub use logs::{LogBuffer, Passthrough};
pub use module::{Digest, Module};
pub use runtime::Runtime;
pub use snapshot::Snapshot;
pub use wasmtime::Val;
pub use workload::{HandleError, Workload};
