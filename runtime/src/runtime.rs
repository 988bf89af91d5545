//! The runtime: one engine per host, the linker, module loading and the
//! creation of instances.
//!
//! A [`Runtime`] owns the wasmtime engine (Cranelift, pooling allocator sized
//! from [`RuntimeConfig`], epoch interruption driven by an [`EpochTicker`]),
//! the linker with every host function a guest may import, and the
//! compiled-code cache. Loading validates, rewrites and compiles a module off
//! the async worker threads; instantiating creates a store with the
//! instance's limits and grants.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use wasmtime::{
    Engine, InstanceAllocationStrategy, Linker, PoolingAllocationConfig, Store, UpdateDeadline,
};
use wasmtime_wasi::WasiCtxBuilder;

use crate::abi::AbiState;
use crate::cache::CompiledCache;
use crate::config::RuntimeConfig;
use crate::epoch::EpochTicker;
use crate::error::{InstantiateError, LoadError, RestoreError};
use crate::instance::{Instance, InstanceConfig, InstanceState};
use crate::limits::{CpuBudgetExceeded, CpuMeter, Limiter, MAX_TABLE_ELEMENTS};
use crate::logs::LogBuffer;
use crate::module::{Digest, Module, ModuleInner, StateExports};
use crate::rewrite;
use crate::snapshot::Snapshot;
use crate::wasi::MonotonicClock;

struct Inner {
    engine: Engine,
    linker: Linker<InstanceState>,
    config: RuntimeConfig,
    cache: Option<CompiledCache>,
    host_imports: HashSet<(String, String)>,
    /// Modules in use, by digest: every instance of a module shares one
    /// compiled copy (and one copy-on-write memory image).
    loaded: std::sync::Mutex<HashMap<Digest, Weak<ModuleInner>>>,
    /// The modules used last, kept compiled for a while after their last
    /// instance went (a workload that moves away and back, or restarts,
    /// needs no fetch and no load from the disk cache), newest first.
    recent: std::sync::Mutex<std::collections::VecDeque<(Arc<ModuleInner>, std::time::Instant)>>,
    lineages: AtomicU64,
    _ticker: EpochTicker,
}

/// How many modules stay compiled after their last instance went.
const KEEP_MODULES: usize = 16;
/// How long such a module stays compiled after its last use.
const KEEP_MODULES_FOR: std::time::Duration = std::time::Duration::from_secs(600);

/// The host's WebAssembly runtime. Cheap to clone; clones share the engine.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// Address space the pooled linear memories may reserve with wasmtime's
/// default layout (4 GiB per memory plus a 32 MiB guard, which lets Cranelift
/// drop bounds checks). A host with more slots than fit gets reservations
/// sized from its largest instance memory instead, with explicit bounds
/// checks: x86_64 gives a process 128 TiB, so 4 GiB slots would cap a host
/// near 30,000 instances whatever their size.
const DEFAULT_LAYOUT_BUDGET: u64 = 16 << 40;
/// Guard after each cap-sized memory: lets Cranelift fold the bounds checks of
/// nearby accesses into one.
const SMALL_GUARD: u64 = 64 << 10;
/// Wasmtime's default reservation plus guard on 64-bit hosts.
const DEFAULT_SLOT_SPAN: u64 = (4 << 30) + (32 << 20);

/// The reservation of one pooled memory, or `None` for wasmtime's default
/// layout.
pub(crate) fn memory_reservation(config: &RuntimeConfig) -> Option<u64> {
    let slots = u64::from(config.slots.max(1));
    if slots.saturating_mul(DEFAULT_SLOT_SPAN) <= DEFAULT_LAYOUT_BUDGET
        && config.max_instance_memory <= 4 << 30
    {
        return None;
    }
    // Whole Wasm pages, at least one.
    Some(config.max_instance_memory.max(1).div_ceil(65536) * 65536)
}

fn engine_config(config: &RuntimeConfig) -> anyhow::Result<wasmtime::Config> {
    let slots = config.slots.max(1);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_core_instances(slots)
        .total_memories(slots)
        .total_tables(slots.saturating_mul(2))
        .total_stacks(slots)
        .total_component_instances(0)
        .max_memories_per_module(1)
        .max_tables_per_module(4)
        .table_elements(MAX_TABLE_ELEMENTS)
        .max_memory_size(usize::try_from(config.max_instance_memory).unwrap_or(usize::MAX))
        .linear_memory_keep_resident(config.keep_resident);
    if config.keep_resident > 0 {
        // Reuse a freed slot (its memory faulted in) before a fresh one,
        // whatever module it last held: a new workload or an incoming
        // migration lands in resident memory, and the slots a host ever
        // uses — so what they keep — stay bounded by its peak of
        // concurrent instances. (wasmtime's default, 100 unused warm slots,
        // takes fresh slots first to keep each module's own.)
        pool.max_unused_warm_slots(0);
    }
    let mut cfg = wasmtime::Config::new();
    cfg.epoch_interruption(true)
        .max_wasm_stack(config.max_wasm_stack)
        .async_stack_size(config.max_wasm_stack + (1 << 20))
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    if let Some(reservation) = memory_reservation(config) {
        cfg.memory_reservation(reservation)
            .memory_guard_size(SMALL_GUARD)
            .memory_reservation_for_growth(0)
            .memory_may_move(false);
    }
    if config.engine == crate::config::EngineKind::Pulley {
        let target = if cfg!(target_pointer_width = "64") {
            "pulley64"
        } else {
            "pulley32"
        };
        cfg.target(target)
            .map_err(|e| anyhow::anyhow!("cannot target Pulley: {e:#}"))?;
    }
    Ok(cfg)
}

impl Runtime {
    /// Create the engine, linker, cache and epoch ticker.
    pub fn new(config: RuntimeConfig) -> anyhow::Result<Runtime> {
        let engine = Engine::new(&engine_config(&config)?)
            .map_err(|e| anyhow::anyhow!("cannot create the wasm engine: {e:#}"))?;
        let mut linker: Linker<InstanceState> = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, |s| &mut s.wasi)
            .map_err(|e| anyhow::anyhow!("cannot link WASI: {e:#}"))?;
        crate::abi::add_to_linker(&mut linker)
            .map_err(|e| anyhow::anyhow!("cannot link the roam ABI: {e:#}"))?;

        // Learn the names the linker provides, to name a missing import
        // before compiling.
        let mut probe = Store::new(
            &engine,
            InstanceState {
                wasi: WasiCtxBuilder::new().build_p1(),
                limiter: Limiter {
                    memory_limit: 0,
                    denied: None,
                },
                cpu: CpuMeter::default(),
                abi: AbiState::default(),
                name: String::new(),
                clock: MonotonicClock::default(),
                log_sink: None,
            },
        );
        let host_imports = linker
            .iter(&mut probe)
            .map(|(module, name, _)| (module.to_string(), name.to_string()))
            .collect();
        drop(probe);

        let cache = match &config.cache_dir {
            Some(dir) => Some(CompiledCache::new(dir, &engine)?),
            None => None,
        };
        let ticker = EpochTicker::start(&engine, config.epoch_tick)?;
        let seed = std::hash::RandomState::new().build_hasher().finish();
        Ok(Runtime {
            inner: Arc::new(Inner {
                engine,
                linker,
                config,
                cache,
                host_imports,
                loaded: std::sync::Mutex::new(HashMap::new()),
                recent: std::sync::Mutex::new(std::collections::VecDeque::new()),
                lineages: AtomicU64::new(seed),
                _ticker: ticker,
            }),
        })
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The configuration this runtime was built with.
    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.config
    }

    /// The engine's compiled-code compatibility key.
    pub fn engine_key(&self) -> String {
        crate::cache::engine_key(&self.inner.engine)
    }

    /// Validate, rewrite, compile (or take from the cache) and link a module.
    /// Blocking: compiling can take seconds; async callers use [`Runtime::load`].
    pub fn load_blocking(&self, bytes: &[u8]) -> Result<Module, LoadError> {
        let limit = self.inner.config.max_module_size;
        if bytes.len() > limit {
            return Err(LoadError::TooLarge {
                size: bytes.len(),
                limit,
            });
        }
        let digest = Digest::of(bytes);
        if let Some(module) = self.loaded(&digest) {
            return Ok(module);
        }
        wasmparser::Validator::new()
            .validate_all(bytes)
            .map_err(|e| LoadError::Invalid {
                message: e.to_string(),
            })?;
        let rewritten = rewrite::rewrite(bytes)?;
        if rewritten.layout.memories > 1 {
            return Err(LoadError::Unsupported {
                feature: format!(
                    "{} linear memories (this host allows 1)",
                    rewritten.layout.memories
                ),
            });
        }
        if let Some((module, name)) = rewritten
            .imports
            .iter()
            .find(|i| !self.inner.host_imports.contains(*i))
        {
            return Err(LoadError::UnknownImport {
                module: module.clone(),
                name: name.clone(),
            });
        }

        let cached = self
            .inner
            .cache
            .as_ref()
            .and_then(|c| c.get(&self.inner.engine, &digest));
        let from_cache = cached.is_some();
        let module = match cached {
            Some(m) => m,
            None => {
                let m = wasmtime::Module::new(&self.inner.engine, &rewritten.bytes)
                    .map_err(|e| LoadError::Compile(format!("{e:#}")))?;
                if let Some(cache) = &self.inner.cache
                    && let Err(e) = cache.put(&digest, &m)
                {
                    tracing::warn!(%digest, error = %e, "cannot write compiled module to cache");
                }
                m
            }
        };
        let pre = self
            .inner
            .linker
            .instantiate_pre(&module)
            .map_err(|e| LoadError::Invalid {
                message: format!("{e:#}"),
            })?;
        let export = |name: String| {
            module.get_export_index(&name).ok_or(LoadError::Invalid {
                message: format!("rewritten module lacks `{name}`"),
            })
        };
        let capabilities = rewritten
            .imports
            .iter()
            .filter(|(m, _)| m == crate::abi::IMPORT_MODULE)
            .filter_map(|(_, name)| {
                crate::abi::CAPABILITY_IMPORTS
                    .iter()
                    .find(|(_, names)| names.contains(&name.as_str()))
                    .map(|(cap, _)| (*cap, name.clone()))
            })
            .collect();
        let has_initialize = module
            .get_export("_initialize")
            .is_some_and(|e| e.func().is_some());
        let layout = rewritten.layout;
        let exports = StateExports {
            memories: (0..layout.memories)
                .map(|i| export(rewrite::memory_export(i)))
                .collect::<Result<_, _>>()?,
            globals: layout
                .mutable_globals
                .iter()
                .map(|(i, _)| export(rewrite::global_export(*i)))
                .collect::<Result<_, _>>()?,
            tables: (0..layout.tables)
                .map(|i| export(rewrite::table_export(i)))
                .collect::<Result<_, _>>()?,
            funcs: layout
                .referenced_funcs
                .iter()
                .map(|i| Ok((*i, export(rewrite::func_export(*i))?)))
                .collect::<Result<_, LoadError>>()?,
        };
        let inner = Arc::new(ModuleInner {
            digest,
            size: bytes.len(),
            layout,
            exports,
            module,
            pre,
            from_cache,
            capabilities,
            has_initialize,
        });
        let mut loaded = self.inner.loaded.lock().unwrap_or_else(|e| e.into_inner());
        loaded.retain(|_, m| m.strong_count() > 0);
        // Two loads of one module may race; the first one stored wins.
        let inner = match loaded.get(&digest).and_then(Weak::upgrade) {
            Some(existing) => existing,
            None => {
                loaded.insert(digest, Arc::downgrade(&inner));
                inner
            }
        };
        drop(loaded);
        self.used(&inner);
        Ok(Module { inner })
    }

    /// Keep `module` among the recently used ones (see `Inner::recent`):
    /// at most [`KEEP_MODULES`], each for [`KEEP_MODULES_FOR`] after its
    /// last use.
    fn used(&self, module: &Arc<ModuleInner>) {
        let mut recent = self.inner.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.retain(|(m, at)| !Arc::ptr_eq(m, module) && at.elapsed() < KEEP_MODULES_FOR);
        recent.push_front((module.clone(), std::time::Instant::now()));
        recent.truncate(KEEP_MODULES);
    }

    /// The module with `digest` if an instance or caller still holds it, or
    /// it was used lately: no bytes to fetch, nothing to compile.
    pub fn loaded(&self, digest: &Digest) -> Option<Module> {
        let inner = self
            .inner
            .loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(digest)
            .and_then(Weak::upgrade)?;
        self.used(&inner);
        Some(Module { inner })
    }

    /// [`Runtime::load_blocking`] on a blocking thread, so compilation never
    /// stalls the async workers.
    pub async fn load(&self, bytes: impl Into<Arc<[u8]>>) -> Result<Module, LoadError> {
        let bytes: Arc<[u8]> = bytes.into();
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.load_blocking(&bytes))
            .await
            .map_err(|e| LoadError::Compile(format!("compile task failed: {e}")))?
    }

    /// Create a store and an instance, without running any guest code.
    async fn create(
        &self,
        module: &Module,
        config: InstanceConfig,
    ) -> Result<Instance, InstantiateError> {
        let max = self.inner.config.max_instance_memory;
        if config.memory_limit > max {
            return Err(InstantiateError::Failed(format!(
                "memory limit of {} bytes is over this host's per-instance maximum of {max} bytes",
                config.memory_limit
            )));
        }
        // Grants are checked here, when the workload is configured, and again
        // by every host function.
        for (capability, import) in &module.inner.capabilities {
            if !config.grants.allows(capability) {
                return Err(InstantiateError::NotGranted {
                    workload: config.name.clone(),
                    import: format!("roam::{import}"),
                    capability: (*capability).to_string(),
                });
            }
        }
        let stdout = LogBuffer::new(config.log_capacity, config.stdout);
        let stderr = LogBuffer::new(config.log_capacity, config.stderr);
        let clock = MonotonicClock::default();
        let wasi = crate::wasi::build(&config, &stdout, &stderr, &clock)?;
        let mut store = Store::new(
            &self.inner.engine,
            InstanceState {
                wasi,
                limiter: Limiter {
                    memory_limit: config.memory_limit,
                    denied: None,
                },
                cpu: CpuMeter::default(),
                abi: AbiState {
                    grants: config.grants.clone(),
                    quotas: config.quotas.clone(),
                    info: config.info.clone(),
                    ..AbiState::default()
                },
                name: config.name.clone(),
                clock: clock.clone(),
                log_sink: config.log_sink.clone(),
            },
        );
        store.limiter(|s| &mut s.limiter);
        let budget = config.cpu_budget.unwrap_or_default();
        store.epoch_deadline_callback(move |mut ctx| {
            if ctx.data_mut().cpu.tick() {
                Err(CpuBudgetExceeded(budget).into())
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store.set_epoch_deadline(1);
        let instance = match module.inner.pre.instantiate_async(&mut store).await {
            Ok(i) => i,
            Err(e) => {
                if let Some(requested) = store.data().limiter.denied {
                    return Err(InstantiateError::Failed(format!(
                        "the module's initial memory of {requested} bytes is over the instance memory limit of {} bytes",
                        config.memory_limit
                    )));
                }
                let msg = format!("{e:#}");
                return Err(if msg.contains("concurrent") {
                    InstantiateError::NoCapacity(msg)
                } else {
                    InstantiateError::Failed(msg)
                });
            }
        };
        Ok(Instance {
            store,
            instance,
            module: module.clone(),
            config,
            stdout,
            stderr,
            clock,
            tick: self.inner.config.epoch_tick,
            poisoned: false,
            lineage: self
                .inner
                .lineages
                .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed),
            sequence: 0,
            generation: 0,
            func_map: None,
            logs_carried: None,
            page_hashes: None,
            chain_base: [None; 2],
            chain_pages: Default::default(),
            tracker: None,
            huge_pages: None,
        })
    }

    /// Instantiate a module without running any guest code, as the target of
    /// a migration does before state arrives: the slot is reserved now, and
    /// a full snapshot applied later with [`Instance::apply`].
    pub async fn reserve(
        &self,
        module: &Module,
        config: InstanceConfig,
    ) -> Result<Instance, InstantiateError> {
        self.create(module, config).await
    }

    /// Instantiate a module and boot it: run its start function and
    /// `_initialize` if it has them. A command's `_start` is not run; call
    /// [`Instance::run_command`].
    pub async fn instantiate(
        &self,
        module: &Module,
        config: InstanceConfig,
    ) -> Result<Instance, InstantiateError> {
        let mut instance = self.create(module, config).await?;
        if module.layout().has_start {
            boot(&mut instance, rewrite::START_EXPORT).await?;
        }
        if module.inner.has_initialize {
            boot(&mut instance, "_initialize").await?;
        }
        Ok(instance)
    }

    /// Restore a full snapshot into a fresh instance of `module`, without
    /// running any initialisation.
    pub async fn restore(
        &self,
        module: &Module,
        config: InstanceConfig,
        snapshot: &Snapshot,
    ) -> Result<Instance, InstantiateError> {
        if !snapshot.is_full() {
            return Err(RestoreError::NotFull.into());
        }
        let mut instance = self.create(module, config).await?;
        instance.apply(snapshot)?;
        Ok(instance)
    }
}

async fn boot(instance: &mut Instance, export: &str) -> Result<(), InstantiateError> {
    instance
        .call_unit(export)
        .await
        .map_err(InstantiateError::Init)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_sized_from_the_cap_only_when_4_gib_slots_do_not_fit() {
        let config = |slots, max| RuntimeConfig {
            slots,
            max_instance_memory: max,
            ..RuntimeConfig::default()
        };
        assert_eq!(memory_reservation(&config(256, 256 << 20)), None);
        assert_eq!(memory_reservation(&config(4000, 256 << 20)), None);
        // 10,000 slots of 4 GiB would take 40 TiB of address space.
        assert_eq!(
            memory_reservation(&config(10_000, 64 << 20)),
            Some(64 << 20)
        );
        // Rounded up to whole Wasm pages.
        assert_eq!(memory_reservation(&config(10_000, 100_000)), Some(131_072));
    }
}
