//! Capture: an instance's state at a safe point as a [`Snapshot`] — whole
//! (every non-zero page, globals, table slots as function indices, host
//! sections), without its pages (a migration streams them from the live
//! memory), or as a delta of the pages written since the previous capture
//! (the kernel's write tracking where it works, else per-page xxh3 hashes).

use super::*;

impl Instance {
    /// Capture the whole state at this safe point (starting the checkpoint
    /// [`Chain`] anew).
    pub fn capture(&mut self) -> Result<Snapshot, CaptureError> {
        self.capture_inner(Chain::Checkpoint, false, None, false)
    }

    /// Like [`Instance::capture`], but reuses the buffers of `into` (a
    /// snapshot from an earlier capture). Fresh buffers cost a page fault per
    /// 4 KiB on first write, several times the cost of the copy itself, so a
    /// host that captures repeatedly keeps one snapshot around.
    pub fn capture_into(&mut self, into: &mut Snapshot) -> Result<(), CaptureError> {
        let reuse = std::mem::take(&mut into.memories);
        *into = self.capture_inner(Chain::Checkpoint, false, Some(reuse), false)?;
        Ok(())
    }

    /// Capture the whole state into `buffers` (memory images whose capacity
    /// is already faulted in, so the copy costs a memcpy and the guest is
    /// paused no longer), starting `chain` anew.
    pub fn capture_with(
        &mut self,
        buffers: Vec<MemoryImage>,
        chain: Chain,
    ) -> Result<Snapshot, CaptureError> {
        self.capture_inner(chain, false, Some(buffers), false)
    }

    /// A full capture without memory 0's pages (its size only), which
    /// starts the migration [`Chain`]: every page written from now on is
    /// in its next delta, so pages read from the live memory afterwards
    /// plus that delta make a consistent state. Turns kernel write
    /// tracking on; fails where the kernel cannot track writes (hashing
    /// needs every page now).
    pub fn capture_without_pages(&mut self) -> Result<Snapshot, CaptureError> {
        self.config.track_dirty = true;
        self.capture_inner(Chain::Migration, false, None, true)
    }

    /// Capture the pages changed since the checkpoint chain's previous
    /// capture (or restore), plus globals, tables and host state. Apply it
    /// with [`Instance::apply`] on an instance restored from that capture.
    pub fn capture_delta(&mut self) -> Result<Snapshot, CaptureError> {
        self.capture_delta_of(Chain::Checkpoint)
    }

    /// Like [`Instance::capture_delta`], on `chain`.
    pub fn capture_delta_of(&mut self, chain: Chain) -> Result<Snapshot, CaptureError> {
        if (self.page_hashes.is_none() && self.tracker.is_none())
            || self.chain_base[chain as usize].is_none()
        {
            return Err(CaptureError::NoBase);
        }
        self.capture_inner(chain, true, None, false)
    }

    fn capture_inner(
        &mut self,
        chain: Chain,
        delta: bool,
        mut reuse: Option<Vec<MemoryImage>>,
        without_pages: bool,
    ) -> Result<Snapshot, CaptureError> {
        if self.poisoned {
            return Err(CaptureError::Poisoned);
        }
        let (mine, other) = (chain as usize, chain.other() as usize);
        let track = self.config.track_dirty;
        // With tracking on, kernel write tracking starts at the first full
        // capture where it works; later captures ask it which pages were
        // written, keep them for the other chain too, and a delta adds
        // those the other chain's scans took since this chain's last
        // capture. Pages are hashed only where it does not work.
        let mut written: Option<Vec<u64>> = None;
        if track && let Some(mut tracker) = self.tracker.take() {
            let result = self.written_pages(&mut tracker);
            self.tracker = Some(tracker);
            match result {
                Ok(mut pages) => {
                    if self.chain_base[other].is_some() {
                        self.chain_pages[other].insert_all(&pages);
                    }
                    if delta {
                        self.chain_pages[mine].drain_into(&mut pages);
                        pages.sort_unstable();
                        pages.dedup();
                        written = Some(pages);
                    } else {
                        self.chain_pages[mine].clear();
                    }
                }
                Err(e) => {
                    // The other chain lost these pages: it starts anew.
                    self.chain_base[other] = None;
                    if delta {
                        return Err(CaptureError::DirtyTracking(e.to_string()));
                    }
                    self.chain_pages[mine].clear();
                }
            }
        } else if track && !delta {
            if let Some(memory) = self.memory(0) {
                let (ptr, len) = (memory.data_ptr(&self.store), memory.data_size(&self.store));
                match crate::dirty::WriteTracker::new(ptr, len) {
                    Ok(t) => self.tracker = Some(t),
                    Err(e) => {
                        tracing::debug!(error = %e, "no kernel write tracking; hashing pages")
                    }
                }
            }
            // Tracking starts here: the other chain has no base in it.
            self.chain_base[other] = None;
            self.chain_pages = Default::default();
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
        // A delta leaves out tables that nothing can change since the full
        // capture it builds on.
        let tables_fixed = delta && !self.module.inner.layout.tables_mutable;
        for index in 0..self.module.inner.exports.tables.len() {
            if tables_fixed {
                break;
            }
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

        let mut host = self.host_sections();
        if chain == Chain::Migration {
            // The log records move with the workload: all of them with the
            // chain's first capture, then those written since.
            let since = if delta { self.logs_carried } else { None };
            host.push(HostSection {
                name: crate::abi::LOGS_SECTION.to_string(),
                data: self.store.data().abi.encode_logs(since),
            });
            self.logs_carried = Some(self.store.data().abi.log_cursor);
        }
        let base = if delta { self.chain_base[mine] } else { None };
        self.sequence += 1;
        self.chain_base[mine] = Some(self.sequence);
        if hashing {
            self.page_hashes = Some(new_hashes);
            // The hashes now describe this capture only.
            self.chain_base[other] = None;
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
    fn func_map(&mut self) -> std::sync::Arc<std::collections::HashMap<usize, u32>> {
        if let Some(map) = &self.func_map {
            return map.clone();
        }
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
        let map = std::sync::Arc::new(map);
        self.func_map = Some(map.clone());
        map
    }

    /// The host-side state alone (the `roam.wasi` and `roam.abi`
    /// sections): what carries over to an instance of another module when
    /// a workload is upgraded ([`Instance::adopt_host_sections`]).
    pub fn host_sections(&self) -> Vec<HostSection> {
        vec![
            self.capture_host_state(),
            HostSection {
                name: crate::abi::state::SECTION.to_string(),
                data: self.store.data().abi.encode(),
            },
        ]
    }

    /// Every retained log record, as the section a move carries (an
    /// upgrade hands it to the new version).
    pub fn logs_section(&self) -> HostSection {
        HostSection {
            name: crate::abi::LOGS_SECTION.to_string(),
            data: self.store.data().abi.encode_logs(None),
        }
    }

    fn capture_host_state(&self) -> HostSection {
        HostSection {
            name: WASI_SECTION.to_string(),
            data: WasiSection {
                clock_ns: self.clock.now_ns(),
                stdout_cursor: self.stdout.cursor(),
                stderr_cursor: self.stderr.cursor(),
            }
            .encode(),
        }
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
