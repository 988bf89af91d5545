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
//! [`Snapshot`]; [`Instance::capture_delta`] copies only the pages changed
//! since the previous capture (found by comparing per-page xxh3 hashes);
//! [`Runtime::restore`](crate::Runtime::restore) and [`Instance::apply`] put
//! it back.

use std::path::PathBuf;
use std::time::Duration;

use wasmtime::{Extern, Func, Ref, Store, Val, ValType};
use wasmtime_wasi::I32Exit;
use wasmtime_wasi::p1::WasiP1Ctx;

use crate::abi::{AbiState, Grants, HostInfo, LogRecord, Quotas};
use crate::error::{CallError, CaptureError, RestoreError};
use crate::limits::{CpuBudgetExceeded, CpuMeter, Limiter};
use crate::logs::{DEFAULT_LOG_CAPACITY, LogBuffer, Passthrough};
use crate::module::Module;
use crate::rewrite::GlobalKind;
use crate::snapshot::{
    HostSection, MemoryImage, PAGE_SIZE, Snapshot, TableImage, Value, is_zero, page_hash,
};
use crate::wasi::MonotonicClock;

/// Name of the host section that carries the WASI state Roam owns.
pub const WASI_SECTION: &str = "roam.wasi";

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
    pub info: HostInfo,
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
            info: HostInfo::default(),
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

    /// Capture the whole state at this safe point.
    pub fn capture(&mut self) -> Result<Snapshot, CaptureError> {
        self.capture_inner(false, None, false)
    }

    /// Like [`Instance::capture`], but reuses the buffers of `into` (a
    /// snapshot from an earlier capture). Fresh buffers cost a page fault per
    /// 4 KiB on first write, several times the cost of the copy itself, so a
    /// host that captures repeatedly keeps one snapshot around.
    pub fn capture_into(&mut self, into: &mut Snapshot) -> Result<(), CaptureError> {
        let reuse = std::mem::take(&mut into.memories);
        *into = self.capture_inner(false, Some(reuse), false)?;
        Ok(())
    }

    /// Capture the whole state into `buffers` (memory images whose capacity
    /// is already faulted in, so the copy costs a memcpy and the guest is
    /// paused no longer).
    pub fn capture_with(&mut self, buffers: Vec<MemoryImage>) -> Result<Snapshot, CaptureError> {
        self.capture_inner(false, Some(buffers), false)
    }

    /// A full capture without memory 0's pages (its size only), which
    /// (re)starts kernel write tracking: every page written from now on is
    /// in the next [`Instance::capture_delta`], so pages read from the live
    /// memory afterwards plus that delta make a consistent state. Fails
    /// where the kernel cannot track writes (hashing needs every page now).
    pub fn capture_without_pages(&mut self) -> Result<Snapshot, CaptureError> {
        self.config.track_dirty = true;
        self.capture_inner(false, None, true)
    }

    /// Capture the pages changed since the previous capture (or restore),
    /// plus globals, tables and host state. Apply it with [`Instance::apply`]
    /// on an instance restored from that previous capture.
    pub fn capture_delta(&mut self) -> Result<Snapshot, CaptureError> {
        if (self.page_hashes.is_none() && self.tracker.is_none()) || self.sequence == 0 {
            return Err(CaptureError::NoBase);
        }
        self.capture_inner(true, None, false)
    }

    fn capture_inner(
        &mut self,
        delta: bool,
        mut reuse: Option<Vec<MemoryImage>>,
        without_pages: bool,
    ) -> Result<Snapshot, CaptureError> {
        if self.poisoned {
            return Err(CaptureError::Poisoned);
        }
        let track = self.config.track_dirty;
        // With tracking on, a full capture (re)starts kernel write tracking
        // where it works; a delta asks it which pages were written. Pages
        // are hashed only where it does not work.
        let mut written: Option<Vec<u64>> = None;
        if track && !delta {
            self.tracker = None;
            if let Some(memory) = self.memory(0) {
                let (ptr, len) = (memory.data_ptr(&self.store), memory.data_size(&self.store));
                match crate::dirty::WriteTracker::new(ptr, len) {
                    Ok(t) => self.tracker = Some(t),
                    Err(e) => {
                        tracing::debug!(error = %e, "no kernel write tracking; hashing pages")
                    }
                }
            }
        } else if track && let Some(mut tracker) = self.tracker.take() {
            let result = self.written_pages(&mut tracker);
            self.tracker = Some(tracker);
            written = Some(result.map_err(|e| CaptureError::DirtyTracking(e.to_string()))?);
        }
        let hashing = track && self.tracker.is_none();
        if without_pages && self.tracker.is_none() && self.memory(0).is_some() {
            return Err(CaptureError::DirtyTracking(
                "no kernel write tracking here".into(),
            ));
        }
        let mut old_hashes = self.page_hashes.take().unwrap_or_default();
        let mut new_hashes = Vec::new();
        let mut memories = Vec::new();
        for index in 0..self.module.inner.exports.memories.len() {
            let memory = self.memory(index).ok_or_else(|| {
                CaptureError::MissingItem(crate::rewrite::memory_export(index as u32))
            })?;
            let data = memory.data(&self.store);
            let old = old_hashes
                .get_mut(index)
                .map(std::mem::take)
                .unwrap_or_default();
            let buffer = reuse
                .as_mut()
                .and_then(|r| (index < r.len()).then(|| std::mem::take(&mut r[index])))
                .unwrap_or_default();
            let (image, hashes) = match (index, &written) {
                (0, _) if without_pages => (
                    MemoryImage {
                        index: 0,
                        byte_len: data.len() as u64,
                        ..MemoryImage::default()
                    },
                    Vec::new(),
                ),
                (0, Some(pages)) => (capture_pages(data, pages, buffer), Vec::new()),
                _ => capture_memory(
                    index as u32,
                    data,
                    delta.then_some(&old[..]),
                    hashing,
                    buffer,
                ),
            };
            memories.push(image);
            new_hashes.push(hashes);
        }

        // One map from funcref to function index serves globals and tables.
        let func_map = self.func_map();
        let mut globals = Vec::new();
        let layout_globals = self.module.inner.layout.mutable_globals.clone();
        for (i, (index, kind)) in layout_globals.iter().enumerate() {
            let export = &self.module.inner.exports.globals[i];
            let global = self
                .instance
                .get_module_export(&mut self.store, export)
                .and_then(|e| e.into_global())
                .ok_or_else(|| CaptureError::MissingItem(crate::rewrite::global_export(*index)))?;
            let value = match (kind, global.get(&mut self.store)) {
                (GlobalKind::I32, Val::I32(v)) => Value::I32(v as u32),
                (GlobalKind::I64, Val::I64(v)) => Value::I64(v as u64),
                (GlobalKind::F32, Val::F32(v)) => Value::F32(v),
                (GlobalKind::F64, Val::F64(v)) => Value::F64(v),
                (GlobalKind::V128, Val::V128(v)) => Value::V128(v.as_u128()),
                (GlobalKind::FuncRef, Val::FuncRef(f)) => Value::FuncRef(match f {
                    None => None,
                    Some(f) => {
                        let raw = f.to_raw(&mut self.store) as usize;
                        Some(*func_map.get(&raw).ok_or(CaptureError::ForeignFunction {
                            table: u32::MAX,
                            slot: u64::from(*index),
                        })?)
                    }
                }),
                _ => {
                    return Err(CaptureError::MissingItem(crate::rewrite::global_export(
                        *index,
                    )));
                }
            };
            globals.push((*index, value));
        }

        let mut tables = Vec::new();
        for index in 0..self.module.inner.exports.tables.len() {
            let export = &self.module.inner.exports.tables[index];
            let table = self
                .instance
                .get_module_export(&mut self.store, export)
                .and_then(|e| e.into_table())
                .ok_or_else(|| {
                    CaptureError::MissingItem(crate::rewrite::table_export(index as u32))
                })?;
            let size = table.size(&self.store);
            let mut entries = Vec::with_capacity(size as usize);
            for slot in 0..size {
                let entry = match table.get(&mut self.store, slot) {
                    Some(Ref::Func(Some(f))) => {
                        let raw = f.to_raw(&mut self.store) as usize;
                        Some(*func_map.get(&raw).ok_or(CaptureError::ForeignFunction {
                            table: index as u32,
                            slot,
                        })?)
                    }
                    _ => None,
                };
                entries.push(entry);
            }
            tables.push(TableImage {
                index: index as u32,
                entries,
            });
        }

        let host = vec![
            self.capture_host_state(),
            HostSection {
                name: crate::abi::state::SECTION.to_string(),
                data: self.store.data().abi.encode(),
            },
        ];
        let base = delta.then_some(self.sequence);
        self.sequence += 1;
        if hashing {
            self.page_hashes = Some(new_hashes);
        }
        Ok(Snapshot {
            module: self.module.digest(),
            lineage: self.lineage,
            sequence: self.sequence,
            base,
            generation: self.generation,
            globals,
            memories,
            tables,
            host,
        })
    }

    /// Pages of memory 0 written since the last capture, by the kernel's
    /// account, plus the non-zero pages of memory grown since then.
    fn written_pages(
        &mut self,
        tracker: &mut crate::dirty::WriteTracker,
    ) -> std::io::Result<Vec<u64>> {
        let Some(memory) = self.memory(0) else {
            return Ok(Vec::new());
        };
        let grown = tracker.extend(memory.data_size(&self.store))?;
        let mut pages = Vec::new();
        tracker.take_written(&mut pages)?;
        let data = memory.data(&self.store);
        for p in grown.start / PAGE_SIZE..grown.end.div_ceil(PAGE_SIZE) {
            let at = p * PAGE_SIZE;
            if !is_zero(&data[at..(at + PAGE_SIZE).min(data.len())]) {
                pages.push(p as u64);
            }
        }
        pages.sort_unstable();
        pages.dedup();
        Ok(pages)
    }

    /// Map from a funcref's raw pointer to its function index.
    fn func_map(&mut self) -> std::collections::HashMap<usize, u32> {
        let funcs: Vec<_> = self
            .module
            .inner
            .exports
            .funcs
            .iter()
            .map(|(i, e)| (*i, *e))
            .collect();
        let mut map = std::collections::HashMap::with_capacity(funcs.len());
        for (index, export) in funcs {
            if let Some(f) = self.item(&export).and_then(|e| e.into_func()) {
                map.entry(f.to_raw(&mut self.store) as usize)
                    .or_insert(index);
            }
        }
        map
    }

    fn func_by_index(&mut self, index: u32) -> Option<Func> {
        let funcs = &self.module.inner.exports.funcs;
        let pos = funcs.binary_search_by_key(&index, |(i, _)| *i).ok()?;
        let export = funcs[pos].1;
        self.item(&export).and_then(|e| e.into_func())
    }

    fn capture_host_state(&self) -> HostSection {
        let mut data = Vec::with_capacity(32);
        data.extend_from_slice(&1u32.to_le_bytes()); // section version
        data.extend_from_slice(&self.clock.now_ns().to_le_bytes());
        data.extend_from_slice(&self.stdout.cursor().to_le_bytes());
        data.extend_from_slice(&self.stderr.cursor().to_le_bytes());
        HostSection {
            name: WASI_SECTION.to_string(),
            data,
        }
    }

    fn restore_host_state(&mut self, snapshot: &Snapshot) -> Result<(), RestoreError> {
        for section in &snapshot.host {
            if section.name == crate::abi::state::SECTION {
                self.store
                    .data_mut()
                    .abi
                    .decode_into(&section.data)
                    .map_err(|reason| RestoreError::HostState {
                        name: section.name.clone(),
                        reason,
                    })?;
                continue;
            }
            if section.name != WASI_SECTION {
                return Err(RestoreError::HostState {
                    name: section.name.clone(),
                    reason: "unknown host state section; is the snapshot from a newer Roam?".into(),
                });
            }
            let bad = |reason: &str| RestoreError::HostState {
                name: WASI_SECTION.to_string(),
                reason: reason.to_string(),
            };
            let d = &section.data;
            if d.len() != 28 {
                return Err(bad("wrong length"));
            }
            let word = |at: usize| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&d[at..at + 8]);
                u64::from_le_bytes(b)
            };
            if d[..4] != 1u32.to_le_bytes() {
                return Err(bad("unsupported version"));
            }
            self.clock.resume_from(word(4));
            self.stdout.set_cursor(word(12));
            self.stderr.set_cursor(word(20));
        }
        Ok(())
    }

    /// Apply a snapshot onto this instance: a full one onto a freshly
    /// instantiated (not booted) instance, a delta onto an instance at the
    /// delta's base. On error the instance is poisoned and must be discarded.
    pub fn apply(&mut self, snapshot: &Snapshot) -> Result<(), RestoreError> {
        let result = self.apply_inner(snapshot);
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    fn apply_inner(&mut self, snapshot: &Snapshot) -> Result<(), RestoreError> {
        if snapshot.module != self.module.digest() {
            return Err(RestoreError::WrongModule {
                snapshot: snapshot.module.to_string(),
                module: self.module.digest().to_string(),
            });
        }
        if let Some(base) = snapshot.base
            && (snapshot.lineage != self.lineage || base != self.sequence)
        {
            return Err(RestoreError::WrongBase {
                lineage: snapshot.lineage,
                base,
                current_lineage: self.lineage,
                current: self.sequence,
            });
        }
        let layout = self.module.inner.layout.clone();
        let mismatch = |m: String| RestoreError::Mismatch(m);
        if snapshot.memories.len() != self.module.inner.exports.memories.len() {
            return Err(mismatch(format!(
                "snapshot has {} memories, module has {}",
                snapshot.memories.len(),
                self.module.inner.exports.memories.len()
            )));
        }
        for (i, image) in snapshot.memories.iter().enumerate() {
            if image.index as usize != i {
                return Err(mismatch(format!("unexpected memory index {}", image.index)));
            }
            let memory = self
                .memory(i)
                .ok_or_else(|| mismatch(format!("memory {i} missing")))?;
            let current = memory.data_size(&self.store) as u64;
            let page = memory.page_size(&self.store);
            if image.byte_len < current || image.byte_len % page != 0 {
                return Err(mismatch(format!(
                    "memory {i} is {} bytes in the snapshot, {current} in the instance",
                    image.byte_len
                )));
            }
            if image.byte_len > current {
                memory
                    .grow(&mut self.store, (image.byte_len - current) / page)
                    .map_err(|e| RestoreError::Grow {
                        what: format!("memory {i} to {} bytes", image.byte_len),
                        reason: match self.store.data().limiter.denied {
                            Some(_) => format!(
                                "over the instance memory limit of {} bytes",
                                self.store.data().limiter.memory_limit
                            ),
                            None => format!("{e:#}"),
                        },
                    })?;
            }
            let data = memory.data_mut(&mut self.store);
            if snapshot.is_full() {
                // A fresh instance has data segments written; clear what the
                // snapshot says is zero there.
                if layout.data_ranges_unknown {
                    for chunk in data.chunks_mut(PAGE_SIZE) {
                        chunk.fill(0);
                    }
                } else {
                    for range in layout.data_ranges.iter().filter(|r| r.memory as usize == i) {
                        let first = range.offset / PAGE_SIZE as u64;
                        let end = (range.offset + range.len).div_ceil(PAGE_SIZE as u64);
                        for p in first..end {
                            if image.pages.binary_search(&p).is_err() {
                                let at = p as usize * PAGE_SIZE;
                                let end = (at + PAGE_SIZE).min(data.len());
                                if at < end {
                                    data[at..end].fill(0);
                                }
                            }
                        }
                    }
                }
            }
            for (k, &p) in image.pages.iter().enumerate() {
                let at = p as usize * PAGE_SIZE;
                let end = (at + PAGE_SIZE).min(data.len());
                let src = image.page(k);
                data.get_mut(at..end)
                    .ok_or_else(|| mismatch(format!("memory {i}: page {p} out of range")))?
                    .copy_from_slice(&src[..end - at]);
            }
        }

        if snapshot.globals.len() != layout.mutable_globals.len() {
            return Err(mismatch(format!(
                "snapshot has {} mutable globals, module has {}",
                snapshot.globals.len(),
                layout.mutable_globals.len()
            )));
        }
        for (i, ((index, value), (expected, kind))) in snapshot
            .globals
            .iter()
            .zip(&layout.mutable_globals)
            .enumerate()
        {
            if index != expected {
                return Err(mismatch(format!(
                    "global {index} is not mutable global {expected}"
                )));
            }
            let val = match (kind, value) {
                (GlobalKind::I32, Value::I32(v)) => Val::I32(*v as i32),
                (GlobalKind::I64, Value::I64(v)) => Val::I64(*v as i64),
                (GlobalKind::F32, Value::F32(v)) => Val::F32(*v),
                (GlobalKind::F64, Value::F64(v)) => Val::F64(*v),
                (GlobalKind::V128, Value::V128(v)) => Val::V128((*v).into()),
                (GlobalKind::FuncRef, Value::FuncRef(None)) => Val::FuncRef(None),
                (GlobalKind::FuncRef, Value::FuncRef(Some(f))) => {
                    Val::FuncRef(Some(self.func_by_index(*f).ok_or_else(|| {
                        mismatch(format!("global {index}: unknown function {f}"))
                    })?))
                }
                _ => return Err(mismatch(format!("global {index} has the wrong type"))),
            };
            let export = self.module.inner.exports.globals[i];
            let global = self
                .item(&export)
                .and_then(|e| e.into_global())
                .ok_or_else(|| mismatch(format!("global {index} missing")))?;
            global
                .set(&mut self.store, val)
                .map_err(|e| mismatch(format!("global {index}: {e}")))?;
        }

        if snapshot.tables.len() != self.module.inner.exports.tables.len() {
            return Err(mismatch(format!(
                "snapshot has {} tables, module has {}",
                snapshot.tables.len(),
                self.module.inner.exports.tables.len()
            )));
        }
        for image in &snapshot.tables {
            let export = *self
                .module
                .inner
                .exports
                .tables
                .get(image.index as usize)
                .ok_or_else(|| mismatch(format!("unexpected table index {}", image.index)))?;
            let table = self
                .item(&export)
                .and_then(|e| e.into_table())
                .ok_or_else(|| mismatch(format!("table {} missing", image.index)))?;
            let size = table.size(&self.store);
            let want = image.entries.len() as u64;
            if want < size {
                return Err(mismatch(format!(
                    "table {} has {want} slots in the snapshot, {size} in the instance",
                    image.index
                )));
            }
            if want > size {
                table
                    .grow(&mut self.store, want - size, Ref::Func(None))
                    .map_err(|e| RestoreError::Grow {
                        what: format!("table {}", image.index),
                        reason: format!("{e:#}"),
                    })?;
            }
            for (slot, entry) in image.entries.iter().enumerate() {
                let value = match entry {
                    None => Ref::Func(None),
                    Some(f) => Ref::Func(Some(self.func_by_index(*f).ok_or_else(|| {
                        mismatch(format!(
                            "table {} slot {slot}: unknown function {f}",
                            image.index
                        ))
                    })?)),
                };
                table
                    .set(&mut self.store, slot as u64, value)
                    .map_err(|e| mismatch(format!("table {} slot {slot}: {e}", image.index)))?;
            }
        }

        self.restore_host_state(snapshot)?;

        // Bring the dirty tracker in line with the restored state (hashes;
        // kernel tracking restarts at the next full capture).
        self.tracker = None;
        if self.config.track_dirty {
            let mut hashes = Vec::new();
            for i in 0..self.module.inner.exports.memories.len() {
                let memory = self
                    .memory(i)
                    .ok_or_else(|| mismatch(format!("memory {i} missing")))?;
                let data = memory.data(&self.store);
                hashes.push(data.chunks(PAGE_SIZE).map(page_hash).collect());
            }
            self.page_hashes = Some(hashes);
        }
        self.lineage = snapshot.lineage;
        self.sequence = snapshot.sequence;
        self.generation = snapshot.generation;
        self.poisoned = false;
        Ok(())
    }
}

/// Copy the listed pages of memory 0 into an image.
fn capture_pages(data: &[u8], pages: &[u64], mut image: MemoryImage) -> MemoryImage {
    image.index = 0;
    image.byte_len = data.len() as u64;
    image.pages.clear();
    image.data.clear();
    image.data.reserve(pages.len() * PAGE_SIZE);
    for &p in pages {
        let at = p as usize * PAGE_SIZE;
        let Some(page) = data.get(at..(at + PAGE_SIZE).min(data.len())) else {
            continue;
        };
        image.pages.push(p);
        image.data.extend_from_slice(page);
        image.data.resize(image.pages.len() * PAGE_SIZE, 0);
    }
    image
}

/// Copy one memory into an image: every non-zero page for a full capture,
/// every page whose hash differs from `old` for a delta. Returns the new
/// per-page hashes when tracking.
fn capture_memory(
    index: u32,
    data: &[u8],
    old: Option<&[u64]>,
    track: bool,
    mut image: MemoryImage,
) -> (MemoryImage, Vec<u64>) {
    image.index = index;
    image.byte_len = data.len() as u64;
    image.pages.clear();
    image.data.clear();
    // Reserve the worst case up front: growing page by page would copy the
    // image again on every doubling. Untouched capacity is only address space.
    image.pages.reserve(data.len() / PAGE_SIZE + 1);
    image.data.reserve(data.len().next_multiple_of(PAGE_SIZE));
    let mut hashes = Vec::with_capacity(if track { data.len() / PAGE_SIZE } else { 0 });
    for (p, page) in data.chunks(PAGE_SIZE).enumerate() {
        let include = if track || old.is_some() {
            let h = page_hash(page);
            if track {
                hashes.push(h);
            }
            match old {
                Some(old) => match old.get(p) {
                    Some(&prev) => prev != h,
                    // Grown since the base: the base saw zeroes here.
                    None => !is_zero(page),
                },
                None => !is_zero(page),
            }
        } else {
            !is_zero(page)
        };
        if include {
            image.pages.push(p as u64);
            image.data.extend_from_slice(page);
            if page.len() < PAGE_SIZE {
                image.data.resize(image.pages.len() * PAGE_SIZE, 0);
            }
        }
    }
    (image, hashes)
}
