//! Snapshots: an instance's complete state at a safe point, and deltas.
//!
//! A [`Snapshot`] is plain data, independent of wasmtime: the memories as
//! 4 KiB pages, the mutable globals, the tables as function indices and the
//! host-side state as named sections. A *full* snapshot carries every non-zero
//! page; a *delta* carries only the pages that changed since an earlier
//! capture of the same lineage, and is applied on an instance restored from
//! that earlier capture. Globals, tables and host state are small and always
//! carried whole.
//!
//! Capture and restore live on [`Instance`](crate::Instance); the byte
//! encoding is in [`codec`] and documented in `docs/snapshot-format.md`.

pub mod codec;

use crate::module::Digest;

/// Granularity of memory capture and of deltas.
pub const PAGE_SIZE: usize = 4096;

/// A captured global value. Floats are kept as bits so NaN payloads survive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value {
    /// `i32`
    I32(u32),
    /// `i64`
    I64(u64),
    /// `f32` bits
    F32(u32),
    /// `f64` bits
    F64(u64),
    /// `v128`
    V128(u128),
    /// `funcref`: a function index, or null.
    FuncRef(Option<u32>),
}

/// The captured pages of one linear memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryImage {
    /// Memory index.
    pub index: u32,
    /// Size of the memory in bytes at capture.
    pub byte_len: u64,
    /// Indices of the carried 4 KiB pages, strictly ascending.
    pub pages: Vec<u64>,
    /// Page contents, `pages.len() * PAGE_SIZE` bytes.
    pub data: Vec<u8>,
}

impl MemoryImage {
    /// Contents of the `i`th carried page.
    pub fn page(&self, i: usize) -> &[u8] {
        &self.data[i * PAGE_SIZE..(i + 1) * PAGE_SIZE]
    }

    /// Empty images with room for `size` bytes of memory 0, every page of
    /// it already touched: a capture into them
    /// ([`crate::instance::Instance::capture_with`]) costs a copy and no
    /// page faults. Faulting the room in takes a while (milliseconds per
    /// 64 MiB): do it off the thread that runs the guest.
    pub fn prefaulted(size: u64) -> Vec<MemoryImage> {
        // A size this machine cannot address gets no room: the capture
        // then grows the buffer (and fails) as it would have anyway.
        let size = usize::try_from(size).unwrap_or(0);
        let data: Vec<u8> = Vec::with_capacity(size);
        crate::dirty::populate_huge(data.as_ptr() as usize, data.capacity());
        vec![MemoryImage {
            index: 0,
            byte_len: 0,
            pages: Vec::with_capacity(size / PAGE_SIZE + 1),
            data,
        }]
    }
}

/// The captured entries of one table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableImage {
    /// Table index.
    pub index: u32,
    /// Each slot: the function index it holds, or null.
    pub entries: Vec<Option<u32>>,
}

/// Host-side state of one component, opaque to the snapshot layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostSection {
    /// Who owns it, for example `roam.wasi`.
    pub name: String,
    /// Its bytes, in a format the owner versions.
    pub data: Vec<u8>,
}

/// An instance's state at a safe point, or the change since an earlier one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// sha256 of the module's original bytes.
    pub module: Digest,
    /// Identifies the chain of captures of one running workload.
    pub lineage: u64,
    /// Position of this capture in its lineage (1 for the first).
    pub sequence: u64,
    /// For a delta, the sequence it applies on; `None` for a full snapshot.
    pub base: Option<u64>,
    /// The workload generation (fencing token) at capture.
    pub generation: u64,
    /// Mutable globals by index.
    pub globals: Vec<(u32, Value)>,
    /// Memories.
    pub memories: Vec<MemoryImage>,
    /// Tables.
    pub tables: Vec<TableImage>,
    /// Host-side state sections.
    pub host: Vec<HostSection>,
}

impl Snapshot {
    /// Whether this is a full snapshot (not a delta).
    pub fn is_full(&self) -> bool {
        self.base.is_none()
    }

    /// Number of memory pages carried.
    pub fn page_count(&self) -> usize {
        self.memories.iter().map(|m| m.pages.len()).sum()
    }

    /// Bytes of memory carried.
    pub fn memory_bytes(&self) -> usize {
        self.memories.iter().map(|m| m.data.len()).sum()
    }

    /// The host section called `name`, if any.
    pub fn host_section(&self, name: &str) -> Option<&[u8]> {
        self.host
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.data.as_slice())
    }
}

/// Whether a page is all zeroes. Works a cache line at a time so it exits
/// early on the first non-zero line and vectorises within a line.
pub fn is_zero(page: &[u8]) -> bool {
    page.chunks(64)
        .all(|line| line.iter().fold(0u8, |acc, b| acc | b) == 0)
}

/// Hash of a page, for dirty detection.
pub(crate) fn page_hash(page: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(page)
}
