//! Modules: validated, rewritten, compiled, named by the sha256 of their bytes.

use std::fmt;
use std::sync::Arc;

use wasmtime::{InstancePre, ModuleExport};

use crate::instance::InstanceState;
use crate::rewrite::StateLayout;

pub use roam_proto::Digest;

/// Pre-resolved handles to the state exports, so capture and restore never
/// look names up.
pub(crate) struct StateExports {
    pub memories: Vec<ModuleExport>,
    pub globals: Vec<ModuleExport>,
    pub tables: Vec<ModuleExport>,
    /// (function index, export), ascending by index.
    pub funcs: Vec<(u32, ModuleExport)>,
}

pub(crate) struct ModuleInner {
    pub digest: Digest,
    pub size: usize,
    pub layout: StateLayout,
    pub exports: StateExports,
    pub module: wasmtime::Module,
    pub pre: InstancePre<InstanceState>,
    pub from_cache: bool,
    /// ABI capabilities the module imports: (capability, import name).
    pub capabilities: Vec<(&'static str, String)>,
    /// Whether the module exports a WASI reactor `_initialize`.
    pub has_initialize: bool,
}

/// A loaded module: validated, rewritten for capture, compiled and linked.
/// Cheap to clone.
#[derive(Clone)]
pub struct Module {
    pub(crate) inner: Arc<ModuleInner>,
}

impl fmt::Debug for Module {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Module")
            .field("digest", &self.inner.digest)
            .field("size", &self.inner.size)
            .finish_non_exhaustive()
    }
}

impl Module {
    /// sha256 of the original module bytes.
    pub fn digest(&self) -> Digest {
        self.inner.digest
    }

    /// Size of the original module bytes.
    pub fn size(&self) -> usize {
        self.inner.size
    }

    /// The state layout found by the rewriter.
    pub fn layout(&self) -> &StateLayout {
        &self.inner.layout
    }

    /// Whether the compiled code came from this host's on-disk cache.
    pub fn from_cache(&self) -> bool {
        self.inner.from_cache
    }

    /// Names of the module's own exported functions (not the state exports).
    pub fn exported_functions(&self) -> Vec<String> {
        self.inner
            .module
            .exports()
            .filter(|e| {
                e.ty().func().is_some() && !e.name().starts_with(crate::rewrite::RESERVED_PREFIX)
            })
            .map(|e| e.name().to_string())
            .collect()
    }

    /// The module's imports as (module, name).
    pub fn imports(&self) -> Vec<(String, String)> {
        self.inner
            .module
            .imports()
            .map(|i| (i.module().to_string(), i.name().to_string()))
            .collect()
    }

    /// Whether the module exports a memory called `name`.
    pub fn exports_memory(&self, name: &str) -> bool {
        self.inner
            .module
            .get_export(name)
            .is_some_and(|e| e.memory().is_some())
    }

    /// Whether the module exports a function called `name`.
    pub fn exports_function(&self, name: &str) -> bool {
        self.inner
            .module
            .get_export(name)
            .is_some_and(|e| e.func().is_some())
    }
}
