//! Host configuration: one place that sizes the engine.

use std::path::PathBuf;
use std::time::Duration;

/// Default cap on module size: refuses absurd inputs before any parsing.
pub const DEFAULT_MAX_MODULE_SIZE: usize = 64 << 20;
/// Default cap on one instance's linear memory.
pub const DEFAULT_MAX_INSTANCE_MEMORY: u64 = 256 << 20;
/// Default number of instance slots.
pub const DEFAULT_SLOTS: u32 = 256;
/// Default epoch tick: the granularity of CPU budgets and of fair yielding.
pub const DEFAULT_EPOCH_TICK: Duration = Duration::from_millis(10);
/// Guest stack limit; deep recursion traps with a stack overflow instead of
/// taking the host thread down.
pub const DEFAULT_MAX_WASM_STACK: usize = 512 << 10;

/// How a host executes WebAssembly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EngineKind {
    /// Cranelift compiles to this machine's code (x86_64, aarch64, riscv64,
    /// s390x).
    #[default]
    Cranelift,
    /// Pulley, wasmtime's portable interpreter: runs on any architecture
    /// Rust builds for, slower than native code. Snapshots are the same
    /// bytes either way, so workloads move between the two.
    Pulley,
}

impl EngineKind {
    /// The name hosts report and selectors use (`engine=pulley`).
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Cranelift => "cranelift",
            EngineKind::Pulley => "pulley",
        }
    }
}

impl std::str::FromStr for EngineKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cranelift" => Ok(EngineKind::Cranelift),
            "pulley" => Ok(EngineKind::Pulley),
            other => Err(format!(
                "unknown engine `{other}` (use `cranelift` or `pulley`)"
            )),
        }
    }
}

/// Configuration of a [`Runtime`](crate::Runtime): the capacity of the host and
/// the limits every instance runs under.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Number of instance slots. The pooling allocator reserves this many
    /// memories, tables and async stacks up front; instantiation beyond it is
    /// refused cleanly.
    pub slots: u32,
    /// The largest linear memory any instance may have (bytes). Per-instance
    /// caps are at most this.
    pub max_instance_memory: u64,
    /// Bytes of each freed memory slot kept resident (zeroed in place instead
    /// of returned to the kernel). Makes the next instantiation or restore in
    /// that slot avoid page faults, at the cost of resident memory. When set,
    /// freed slots are reused before fresh ones (for any module), so the
    /// slots that keep memory are at most the peak of concurrent instances.
    pub keep_resident: usize,
    /// Epoch tick period.
    pub epoch_tick: Duration,
    /// Largest module accepted, in bytes.
    pub max_module_size: usize,
    /// Largest guest stack, in bytes.
    pub max_wasm_stack: usize,
    /// Directory for compiled code. `None` disables the on-disk cache.
    pub cache_dir: Option<PathBuf>,
    /// Native code (Cranelift) or the portable interpreter (Pulley).
    pub engine: EngineKind,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            slots: DEFAULT_SLOTS,
            max_instance_memory: DEFAULT_MAX_INSTANCE_MEMORY,
            keep_resident: 0,
            epoch_tick: DEFAULT_EPOCH_TICK,
            max_module_size: DEFAULT_MAX_MODULE_SIZE,
            max_wasm_stack: DEFAULT_MAX_WASM_STACK,
            cache_dir: None,
            engine: EngineKind::Cranelift,
        }
    }
}
