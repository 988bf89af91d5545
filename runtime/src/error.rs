//! Error types, one enum per operation family.
//!
//! Guest-caused failures (a trap, a CPU budget or memory cap hit) are
//! [`CallError`]s for that call only; they never bring the host down.
//! Snapshot decoding errors ([`SnapshotError`]) say which check failed so an
//! operator can tell a truncated transfer from a corrupted or foreign one.

use std::time::Duration;

/// Loading (validating, rewriting, compiling) a module failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The module is larger than the configured cap.
    #[error("module is {size} bytes, over the {limit}-byte module size limit")]
    TooLarge {
        /// Size of the module.
        size: usize,
        /// The configured cap.
        limit: usize,
    },
    /// The bytes are not a valid WebAssembly module.
    #[error("invalid WebAssembly module: {message}")]
    Invalid {
        /// What the validator said, with the byte offset.
        message: String,
    },
    /// The bytes are a component or something else, not a core module.
    #[error("not a core WebAssembly module: Roam runs WASI preview 1 core modules (wasm32-wasip1)")]
    NotACoreModule,
    /// The module uses a feature Roam does not support.
    #[error("unsupported module feature: {feature}")]
    Unsupported {
        /// The feature and where it is used.
        feature: String,
    },
    /// The module exports a name in the prefix reserved for Roam.
    #[error("module exports `{name}`, a name reserved for Roam (prefix `roam-state:`)")]
    ReservedExport {
        /// The offending export.
        name: String,
    },
    /// The module imports something this host does not provide.
    #[error("module imports `{module}::{name}`, which this host does not provide")]
    UnknownImport {
        /// Import module name.
        module: String,
        /// Import field name.
        name: String,
    },
    /// Cranelift failed to compile the module.
    #[error("failed to compile module: {0}")]
    Compile(String),
    /// Reading or writing the compiled-code cache failed.
    #[error("compiled-code cache: {0}")]
    Cache(#[from] std::io::Error),
}

/// Creating or restoring an instance failed.
#[derive(Debug, thiserror::Error)]
pub enum InstantiateError {
    /// All instance slots of this host are in use.
    #[error("no free instance slot on this host: {0}")]
    NoCapacity(String),
    /// The module's initial memory is larger than the instance's memory cap.
    #[error("instantiation failed: {0}")]
    Failed(String),
    /// A granted directory could not be opened.
    #[error("cannot grant directory `{path}`: {reason}")]
    Dir {
        /// The host path.
        path: String,
        /// Why it failed.
        reason: String,
    },
    /// The module imports a capability the workload is not granted.
    #[error("workload `{workload}` imports `{import}` but is not granted `{capability}`")]
    NotGranted {
        /// Workload name.
        workload: String,
        /// The import.
        import: String,
        /// The capability it needs.
        capability: String,
    },
    /// The module does not follow the Roam ABI.
    #[error("{0}")]
    Abi(String),
    /// The start function or `_initialize` failed on first boot.
    #[error("initialisation failed: {0}")]
    Init(#[source] CallError),
    /// The snapshot does not fit this instance.
    #[error("cannot restore snapshot: {0}")]
    Restore(#[from] RestoreError),
}

/// A call into the guest failed. The host is unaffected.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The call used up its CPU budget and was stopped.
    #[error("call to `{export}` exceeded its CPU budget of {budget:?} and was stopped")]
    CpuBudgetExceeded {
        /// Export that was called.
        export: String,
        /// The per-call budget.
        budget: Duration,
    },
    /// The guest trapped after its request to grow memory beyond the cap was denied.
    #[error(
        "call to `{export}` failed after the guest tried to grow its memory to {requested} bytes, over its limit of {limit} bytes: {trap}"
    )]
    MemoryLimitExceeded {
        /// Export that was called.
        export: String,
        /// Bytes the guest asked for.
        requested: u64,
        /// The memory cap.
        limit: u64,
        /// The trap that followed.
        trap: String,
    },
    /// The guest trapped.
    #[error("call to `{export}` trapped: {message}")]
    Trap {
        /// Export that was called.
        export: String,
        /// One-line cause.
        message: String,
        /// The Wasm backtrace, one frame per line (may be empty).
        backtrace: String,
    },
    /// The guest called `proc_exit`.
    #[error("guest exited with status {0}")]
    Exit(i32),
    /// The instance trapped earlier and its state is unknown.
    #[error(
        "instance is poisoned by an earlier trap; restore it from a snapshot or start a new one"
    )]
    Poisoned,
    /// The export does not exist or is not a function.
    #[error("module has no exported function `{0}`")]
    NoSuchExport(String),
    /// Wrong argument count or types.
    #[error("bad arguments for `{export}`: {message}")]
    BadArguments {
        /// Export that was called.
        export: String,
        /// What was wrong.
        message: String,
    },
}

/// Capturing a snapshot failed.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The instance trapped earlier; its state is not worth capturing.
    #[error("instance is poisoned by an earlier trap and cannot be captured")]
    Poisoned,
    /// A delta was asked for but there is no earlier capture to diff against.
    #[error("no earlier capture to compute a delta against; take a full snapshot first")]
    NoBase,
    /// A table held a function that cannot be named by index.
    #[error("table {table} slot {slot} holds a function that is not part of the module")]
    ForeignFunction {
        /// Table index.
        table: u32,
        /// Slot index.
        slot: u64,
    },
    /// An item the layout promised is missing (rewriter bug).
    #[error("state item `{0}` is missing from the instance")]
    MissingItem(String),
    /// The kernel could not say which pages were written.
    #[error("dirty-page tracking failed: {0}")]
    DirtyTracking(String),
}

/// Applying a snapshot to an instance failed. Nothing usable is left behind:
/// the caller must discard the instance.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The snapshot belongs to another module.
    #[error("snapshot is for module `{snapshot}`, not `{module}`")]
    WrongModule {
        /// Digest in the snapshot.
        snapshot: String,
        /// Digest of the module being restored.
        module: String,
    },
    /// A delta whose base is not the instance's current state.
    #[error(
        "delta applies on capture {base} of lineage {lineage:016x}, but the instance is at capture {current} of lineage {current_lineage:016x}"
    )]
    WrongBase {
        /// Lineage of the delta.
        lineage: u64,
        /// Capture the delta is based on.
        base: u64,
        /// Lineage of the instance.
        current_lineage: u64,
        /// Capture the instance is at.
        current: u64,
    },
    /// A full snapshot was expected.
    #[error("a delta cannot start a restore; restore a full snapshot first")]
    NotFull,
    /// The snapshot does not match the module's layout.
    #[error("snapshot does not match the module: {0}")]
    Mismatch(String),
    /// Growing memory or a table to the captured size failed.
    #[error("cannot grow {what} to the captured size: {reason}")]
    Grow {
        /// Which item.
        what: String,
        /// Why.
        reason: String,
    },
    /// Host-side state could not be restored.
    #[error("host state section `{name}`: {reason}")]
    HostState {
        /// Section name.
        name: String,
        /// Why.
        reason: String,
    },
}

/// Decoding snapshot bytes failed. Nothing was restored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    /// The bytes do not start with the snapshot magic.
    #[error("not a Roam snapshot (bad magic)")]
    BadMagic,
    /// The format version is not one this build reads.
    #[error(
        "snapshot format version {found} is not supported (this build reads version {supported})"
    )]
    UnsupportedVersion {
        /// Version in the header.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// Fewer bytes than the header declares.
    #[error("snapshot is truncated: header declares {declared} bytes, got {actual}")]
    Truncated {
        /// Declared length.
        declared: u64,
        /// Bytes received.
        actual: u64,
    },
    /// More bytes than allowed, or more than declared.
    #[error("snapshot is too large: {size} bytes, limit {limit}")]
    TooLarge {
        /// Declared or actual size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The checksum does not match: the bytes were corrupted.
    #[error("snapshot checksum mismatch: the bytes are corrupted")]
    Checksum,
    /// A section is inconsistent (only possible with a valid checksum, so a
    /// writer bug or a forged snapshot).
    #[error("malformed snapshot: {0}")]
    Malformed(String),
    /// The snapshot belongs to another module.
    #[error("snapshot is for module `{snapshot}`, expected `{expected}`")]
    WrongModule {
        /// Digest in the snapshot.
        snapshot: String,
        /// Expected digest.
        expected: String,
    },
}
