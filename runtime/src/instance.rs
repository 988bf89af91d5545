//! Instances: one sandboxed, running copy of a module, with capture and restore.
//!
//! An [`Instance`] owns its wasmtime store. Calls go through
//! [`Instance::call`], which arms the CPU budget, runs the guest on the async
//! executor and turns every failure into a [`CallError`] for that call. After
//! a trap the instance is *poisoned*: its stack pointer, locks and invariants
//! are unknown, so it refuses further calls and captures; the caller restores
//! a snapshot or starts afresh.
//!
//! Between calls no guest code is on the stack — the safe point — so the
//! whole guest state is the memories, globals and tables the rewriter exposed
//! plus the host-side state kept here. [`Instance::capture`] copies it into a
//! [`Snapshot`]; [`Instance::capture_delta`] copies only the pages written
//! since the previous capture — as the kernel's write tracking reports them
//! (`dirty.rs`: userfaultfd write-protect and `PAGEMAP_SCAN`, Linux ≥ 6.7),
//! else found by comparing per-page xxh3 hashes;
//! [`Runtime::restore`](crate::Runtime::restore) and [`Instance::apply`] put
//! it back.
//!
//! Deltas form two independent [`Chain`]s over one write tracker: local
//! checkpoints (and the standby's commits built from them) and a live
//! migration's rounds. Each kernel scan gives its pages to the chain that
//! asked and records them for the other, so a migration does not stop
//! output commit and a checkpoint does not move a migration's baseline.

mod apply;
mod capture;

use std::path::PathBuf;
use std::time::Duration;

use wasmtime::{Extern, Func, Ref, Store, Val, ValType};
use wasmtime_wasi::I32Exit;
use wasmtime_wasi::p1::WasiP1Ctx;

use crate::abi::{AbiState, Grants, LogRecord, Place, Quotas};
use crate::error::{CallError, CaptureError, RestoreError};
use crate::limits::{CpuBudgetExceeded, CpuMeter, Limiter};
use crate::logs::{DEFAULT_LOG_CAPACITY, LogBuffer, Passthrough};
use crate::module::Module;
use crate::rewrite::GlobalKind;
use crate::snapshot::{
    HostSection, MemoryImage, PAGE_SIZE, Snapshot, TableImage, Value, is_zero, page_hash,
};
use crate::wasi::{MonotonicClock, WasiSection};

/// Name of the host section that carries the WASI state Roam owns.
pub const WASI_SECTION: &str = WasiSection::NAME;

/// A directory granted to the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirGrant {
    /// Path on the host.
    pub host: PathBuf,
    /// Path the guest sees.
    pub guest: String,
    /// Whether the guest may only read.
    pub read_only: bool,
}

/// What one instance may do and use. Everything not granted is denied.
#[derive(Clone)]
pub struct InstanceConfig {
    /// The workload's name (also the guest's `argv[0]`).
    pub name: String,
    /// Linear memory cap in bytes.
    pub memory_limit: u64,
    /// CPU budget of each call; `None` for no limit.
    pub cpu_budget: Option<Duration>,
    /// Arguments after `argv[0]`.
    pub args: Vec<String>,
    /// Environment variables.
    pub env: Vec<(String, String)>,
    /// Preopened directories.
    pub dirs: Vec<DirGrant>,
    /// Where guest stdout is copied besides its buffer.
    pub stdout: Passthrough,
    /// Where guest stderr is copied besides its buffer.
    pub stderr: Passthrough,
    /// Bytes kept of each output stream.
    pub log_capacity: usize,
    /// Keep per-page hashes at each capture (and restore) so deltas can be
    /// taken later. Costs a hash pass per capture and restore; off by default.
    pub track_dirty: bool,
    /// ABI capabilities granted (all denied by default).
    pub grants: Grants,
    /// ABI quotas.
    pub quotas: Quotas,
    /// Where the workload runs, as `roam::host_info` reports it.
    pub info: Place,
    /// Called for every guest log record, besides `tracing`.
    pub log_sink: Option<LogSink>,
}

/// A consumer of guest log records: `(workload name, record)`.
pub type LogSink = std::sync::Arc<dyn Fn(&str, &LogRecord) + Send + Sync>;

impl std::fmt::Debug for InstanceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceConfig")
            .field("name", &self.name)
            .field("memory_limit", &self.memory_limit)
            .field("cpu_budget", &self.cpu_budget)
            .field("grants", &self.grants)
            .finish_non_exhaustive()
    }
}

impl InstanceConfig {
    /// Defaults for a workload called `name`: 64 MiB of memory, 1 s of CPU per
    /// call, nothing granted, output captured only.
    pub fn new(name: impl Into<String>) -> Self {
        InstanceConfig {
            name: name.into(),
            memory_limit: 64 << 20,
            cpu_budget: Some(Duration::from_secs(1)),
            args: Vec::new(),
            env: Vec::new(),
            dirs: Vec::new(),
            stdout: Passthrough::None,
            stderr: Passthrough::None,
            log_capacity: DEFAULT_LOG_CAPACITY,
            track_dirty: false,
            grants: Grants::default(),
            quotas: Quotas::default(),
            info: Place::default(),
            log_sink: None,
        }
    }
}

/// Store data of one instance.
pub struct InstanceState {
    pub(crate) wasi: WasiP1Ctx,
    pub(crate) limiter: Limiter,
    pub(crate) cpu: CpuMeter,
    pub(crate) abi: AbiState,
    pub(crate) name: String,
    pub(crate) clock: MonotonicClock,
    pub(crate) log_sink: Option<LogSink>,
}

/// One of an instance's two delta chains: each delta holds every page
/// written since the previous capture *of its chain*, and names that
/// capture as its base.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chain {
    /// Local checkpoints and the standby's commits.
    Checkpoint = 0,
    /// A live migration's rounds.
    Migration = 1,
}

impl Chain {
    fn other(self) -> Chain {
        match self {
            Chain::Checkpoint => Chain::Migration,
            Chain::Migration => Chain::Checkpoint,
        }
    }
}

/// A set of page numbers, one bit each.
#[derive(Default)]
pub(crate) struct PageBits(Vec<u64>);

impl PageBits {
    pub(crate) fn insert_all(&mut self, pages: &[u64]) {
        for &p in pages {
            let (word, bit) = ((p / 64) as usize, p % 64);
            if word >= self.0.len() {
                self.0.resize(word + 1, 0);
            }
            self.0[word] |= 1 << bit;
        }
    }

    /// Append every page to `out` and empty the set.
    pub(crate) fn drain_into(&mut self, out: &mut Vec<u64>) {
        for (i, word) in self.0.iter().enumerate() {
            let mut w = *word;
            while w != 0 {
                out.push(i as u64 * 64 + u64::from(w.trailing_zeros()));
                w &= w - 1;
            }
        }
        self.0.clear();
    }

    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }
}

/// A running instance of a module.
pub struct Instance {
    /// Kernel write tracking of memory 0, when dirty tracking is on and the
    /// kernel can. Declared first so it is dropped (unregistered) before the
    /// store gives the memory's pooling slot to another instance.
    pub(crate) tracker: Option<crate::dirty::WriteTracker>,
    /// Memory 0 faulting in huge pages (while a migration's pages land);
    /// declared before the store, so the advice is taken back before the
    /// slot is reused.
    pub(crate) huge_pages: Option<crate::dirty::HugePages>,
    pub(crate) store: Store<InstanceState>,
    pub(crate) instance: wasmtime::Instance,
    pub(crate) module: Module,
    pub(crate) config: InstanceConfig,
    pub(crate) stdout: LogBuffer,
    pub(crate) stderr: LogBuffer,
    pub(crate) clock: MonotonicClock,
    pub(crate) tick: Duration,
    pub(crate) poisoned: bool,
    pub(crate) lineage: u64,
    pub(crate) sequence: u64,
    pub(crate) generation: u64,
    /// Per memory, the hash of every page at the last capture.
    pub(crate) page_hashes: Option<Vec<Vec<u64>>>,
    /// Per [`Chain`], the sequence of its last capture (the base of its
    /// next delta); `None` until a capture starts the chain, or since the
    /// other chain's capture moved what it builds on (hashing serves one
    /// chain only).
    pub(crate) chain_base: [Option<u64>; 2],
    /// Per [`Chain`], pages of memory 0 the other chain's kernel scans took
    /// since this chain's last capture.
    pub(crate) chain_pages: [PageBits; 2],
    /// Raw function reference → function index, for every function that
    /// can sit in a table or a global: fixed for the instance's life, so
    /// built once, at its first capture.
    pub(crate) func_map: Option<std::sync::Arc<std::collections::HashMap<usize, u32>>>,
    /// The log cursor when the migration chain's last capture carried the
    /// log records: its next delta carries only those written since.
    pub(crate) logs_carried: Option<u64>,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("name", &self.config.name)
            .field("module", &self.module.digest())
            .field("lineage", &self.lineage)
            .field("sequence", &self.sequence)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

/// One line for a wasmtime error, plus its Wasm backtrace if it has one.
pub(crate) fn describe_error(err: &wasmtime::Error) -> (String, String) {
    // A trap names itself; a host function's error is the root cause under
    // wasmtime's "error while executing at wasm backtrace" context.
    let message = match err.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => trap.to_string(),
        None => err.root_cause().to_string(),
    };
    let backtrace = err
        .downcast_ref::<wasmtime::WasmBacktrace>()
        .map(|bt| bt.to_string())
        .unwrap_or_default();
    (
        message.lines().next().unwrap_or_default().to_string(),
        backtrace,
    )
}

impl Instance {
    /// The module this instance runs.
    pub fn module(&self) -> &Module {
        &self.module
    }

    /// The instance's configuration.
    pub fn config(&self) -> &InstanceConfig {
        &self.config
    }

    /// Captured stdout.
    pub fn stdout(&self) -> &LogBuffer {
        &self.stdout
    }

    /// Captured stderr.
    pub fn stderr(&self) -> &LogBuffer {
        &self.stderr
    }

    /// The ABI state (key-value data, timers, queues, recent logs).
    pub fn abi(&self) -> &AbiState {
        &self.store.data().abi
    }

    /// The ABI state, mutable (for the host's dispatcher).
    pub fn abi_mut(&mut self) -> &mut AbiState {
        &mut self.store.data_mut().abi
    }

    /// Whether an earlier trap left the instance unusable.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Lineage of this instance's captures.
    pub fn lineage(&self) -> u64 {
        self.lineage
    }

    /// Sequence number of the last capture taken or restored (0 if none).
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// Set the workload generation recorded in future captures.
    pub fn set_generation(&mut self, generation: u64) {
        self.generation = generation;
    }

    /// Current linear memory size of memory 0 in bytes (0 without memory).
    pub fn memory_size(&mut self) -> u64 {
        self.memory(0)
            .map_or(0, |m| m.data_size(&self.store) as u64)
    }

    /// The guest's monotonic clock reading (nanoseconds).
    pub fn monotonic_now(&self) -> u64 {
        self.clock.now_ns()
    }

    /// Call exported function `name` with `params`.
    pub async fn call(&mut self, name: &str, params: &[Val]) -> Result<Vec<Val>, CallError> {
        if self.poisoned {
            return Err(CallError::Poisoned);
        }
        let func = self
            .instance
            .get_func(&mut self.store, name)
            .ok_or_else(|| CallError::NoSuchExport(name.to_string()))?;
        self.call_func(name, func, params).await
    }

    /// Run a command module's `_start`; returns its exit status.
    pub async fn run_command(&mut self) -> Result<i32, CallError> {
        match self.call("_start", &[]).await {
            Ok(_) => Ok(0),
            Err(CallError::Exit(code)) => Ok(code),
            Err(e) => Err(e),
        }
    }

    fn check_params(&self, name: &str, func: &Func, params: &[Val]) -> Result<usize, CallError> {
        let ty = func.ty(&self.store);
        let bad = |message: String| CallError::BadArguments {
            export: name.to_string(),
            message,
        };
        if ty.params().len() != params.len() {
            return Err(bad(format!(
                "expected {} arguments, got {}",
                ty.params().len(),
                params.len()
            )));
        }
        for (i, (expected, given)) in ty.params().zip(params).enumerate() {
            let ok = matches!(
                (&expected, given),
                (ValType::I32, Val::I32(_))
                    | (ValType::I64, Val::I64(_))
                    | (ValType::F32, Val::F32(_))
                    | (ValType::F64, Val::F64(_))
                    | (ValType::V128, Val::V128(_))
            );
            if !ok {
                return Err(bad(format!("argument {i} should be `{expected}`")));
            }
        }
        Ok(ty.results().len())
    }

    /// Reset the per-call CPU meter and memory-denial record, and arm the
    /// epoch deadline for the next tick.
    fn arm(&mut self) {
        let state = self.store.data_mut();
        state.cpu.used = 0;
        state.cpu.budget = self
            .config
            .cpu_budget
            .map(|b| crate::limits::budget_ticks(b, self.tick));
        state.limiter.denied = None;
        self.store.set_epoch_deadline(1);
    }

    pub(crate) async fn call_func(
        &mut self,
        name: &str,
        func: Func,
        params: &[Val],
    ) -> Result<Vec<Val>, CallError> {
        let n_results = self.check_params(name, &func, params)?;
        let mut results = vec![Val::I32(0); n_results];
        self.arm();
        match func.call_async(&mut self.store, params, &mut results).await {
            Ok(()) => Ok(results),
            Err(err) => {
                self.poisoned = true;
                Err(self.classify(name, err))
            }
        }
    }

    /// Call a `() -> ()` export through a typed handle (no argument vectors).
    pub(crate) async fn call_unit(&mut self, name: &str) -> Result<(), CallError> {
        if self.poisoned {
            return Err(CallError::Poisoned);
        }
        let func = self
            .instance
            .get_typed_func::<(), ()>(&mut self.store, name)
            .map_err(|_| CallError::NoSuchExport(name.to_string()))?;
        self.arm();
        match func.call_async(&mut self.store, ()).await {
            Ok(()) => Ok(()),
            Err(err) => {
                self.poisoned = true;
                Err(self.classify(name, err))
            }
        }
    }

    fn classify(&mut self, name: &str, err: wasmtime::Error) -> CallError {
        if let Some(exit) = err.downcast_ref::<I32Exit>() {
            return CallError::Exit(exit.0);
        }
        if let Some(e) = err.downcast_ref::<CpuBudgetExceeded>() {
            return CallError::CpuBudgetExceeded {
                export: name.to_string(),
                budget: e.0,
            };
        }
        let (message, backtrace) = describe_error(&err);
        if let Some(requested) = self.store.data().limiter.denied {
            return CallError::MemoryLimitExceeded {
                export: name.to_string(),
                requested,
                limit: self.store.data().limiter.memory_limit,
                trap: message,
            };
        }
        CallError::Trap {
            export: name.to_string(),
            message,
            backtrace,
        }
    }

    fn item(&mut self, export: &wasmtime::ModuleExport) -> Option<Extern> {
        self.instance.get_module_export(&mut self.store, export)
    }

    fn memory(&mut self, index: usize) -> Option<wasmtime::Memory> {
        let export = self.module.inner.exports.memories.get(index)?;
        self.instance
            .get_module_export(&mut self.store, export)
            .and_then(|e| e.into_memory())
    }

    /// Linear memory 0 for the host to read or write (empty without a memory).
    /// The guest is never running while the host holds this borrow.
    pub fn memory_data_mut(&mut self) -> &mut [u8] {
        match self.memory(0) {
            Some(m) => m.data_mut(&mut self.store),
            None => &mut [],
        }
    }

    /// Start or stop keeping per-page hashes. Turned on before a migration's
    /// first (full) capture, so later captures can be deltas; turned off
    /// again when the migration ends, since it costs a hash pass per capture.
    pub fn set_track_dirty(&mut self, on: bool) {
        self.config.track_dirty = on;
        if !on {
            self.page_hashes = None;
            self.tracker = None;
        }
    }

    /// Whether faults in memory 0 take transparent huge pages: on while a
    /// migration's pages land in a reserved instance (one fault and clear
    /// per 2 MiB), off again after, and when the instance is dropped.
    pub fn set_huge_pages(&mut self, on: bool) {
        self.huge_pages = None;
        if on && let Some((ptr, len)) = self.memory_range() {
            self.huge_pages = Some(crate::dirty::HugePages::advise(ptr, len));
        }
    }

    /// Address and size of memory 0 in this process, for
    /// [`crate::dirty::populate`].
    pub fn memory_range(&mut self) -> Option<(usize, usize)> {
        let memory = self.memory(0)?;
        Some((
            memory.data_ptr(&self.store) as usize,
            memory.data_size(&self.store),
        ))
    }

    /// Whether the kernel tracks this instance's writes (else deltas hash
    /// every page).
    pub fn write_tracking(&self) -> bool {
        self.tracker.is_some()
    }
}
