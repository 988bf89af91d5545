//! Apply: put a [`Snapshot`] back onto an instance — a full one onto a
//! freshly instantiated (not booted) instance, a delta onto the exact
//! capture it was taken against — and the host sections with it. Any
//! failure poisons the instance.

use super::*;

impl Instance {
    fn func_by_index(&mut self, index: u32) -> Option<Func> {
        let funcs = &self.module.inner.exports.funcs;
        let pos = funcs.binary_search_by_key(&index, |(i, _)| *i).ok()?;
        let export = funcs[pos].1;
        self.item(&export).and_then(|e| e.into_func())
    }

    fn restore_host_state(&mut self, sections: &[HostSection]) -> Result<(), RestoreError> {
        for section in sections {
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
            if section.name == crate::abi::LOGS_SECTION {
                self.store
                    .data_mut()
                    .abi
                    .decode_logs(&section.data)
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
            let wasi =
                WasiSection::decode(&section.data).map_err(|reason| RestoreError::HostState {
                    name: WASI_SECTION.to_string(),
                    reason: reason.to_string(),
                })?;
            self.clock.resume_from(wasi.clock_ns);
            self.stdout.set_cursor(wasi.stdout_cursor);
            self.stderr.set_cursor(wasi.stderr_cursor);
        }
        Ok(())
    }

    /// Take over another instance's host-side state
    /// ([`Instance::host_sections`]: key-value data, timers, inbox and
    /// outbox, the clock and the log cursors), as an upgrade to another
    /// module does; linear memory is the new module's own. On error the
    /// instance is poisoned and must be discarded.
    pub fn adopt_host_sections(&mut self, sections: &[HostSection]) -> Result<(), RestoreError> {
        let result = self.restore_host_state(sections);
        if result.is_err() {
            self.poisoned = true;
        }
        result
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

        // A delta without tables leaves them as they are (its module
        // cannot change them).
        let unchanged = snapshot.base.is_some() && snapshot.tables.is_empty();
        if !unchanged && snapshot.tables.len() != self.module.inner.exports.tables.len() {
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

        self.restore_host_state(&snapshot.host)?;

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
        // The hashes serve the checkpoint chain; a migration starts its own.
        self.chain_base = [self.config.track_dirty.then_some(snapshot.sequence), None];
        self.chain_pages = Default::default();
        self.poisoned = false;
        Ok(())
    }
}
