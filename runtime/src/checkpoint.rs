//! A workload's last good state, kept beside it and brought up to date one
//! delta at a time.
//!
//! A [`Checkpoint`] holds each memory as one flat buffer (allocated zeroed,
//! so pages never written cost no resident memory), which makes applying a
//! delta a copy of its pages — O(delta), not O(memory) as merging sorted
//! page lists would be — and the globals, tables and host sections of the
//! latest capture. The driver rolls a failed instance back to it; a standby
//! keeps one per workload it protects.
//!
//! Every delta is checked before anything changes: same module and lineage,
//! based on this checkpoint's sequence, memories that only grow, up to a
//! caller-given bound, and pages inside them. A refused delta leaves the
//! checkpoint as it was.

use crate::module::Digest;
use crate::snapshot::{HostSection, MemoryImage, PAGE_SIZE, Snapshot, TableImage, Value, is_zero};

/// Why a delta was not applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CheckpointError {
    /// The delta is of another module, lineage or base.
    #[error(
        "the delta applies on {lineage}/{base:?}, the checkpoint is at {current_lineage}/{current}"
    )]
    WrongBase {
        /// The delta's lineage.
        lineage: u64,
        /// The sequence it applies on (`None`: a full snapshot).
        base: Option<u64>,
        /// The checkpoint's lineage.
        current_lineage: u64,
        /// The checkpoint's sequence.
        current: u64,
    },
    /// The delta is of another module.
    #[error("the delta is of module {delta}, the checkpoint of {checkpoint}")]
    WrongModule {
        /// The delta's module.
        delta: Digest,
        /// The checkpoint's module.
        checkpoint: Digest,
    },
    /// The delta does not fit the checkpoint's shape or its bound.
    #[error("{0}")]
    Shape(String),
}

#[derive(Clone, Debug)]
struct FlatMemory {
    data: Vec<u8>,
    /// Pages a capture carried (others are known zero).
    present: Vec<bool>,
    /// Pages written since the last [`Checkpoint::export`].
    unsent: Vec<bool>,
}

/// The last good state of one workload.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    module: Digest,
    lineage: u64,
    sequence: u64,
    generation: u64,
    globals: Vec<(u32, Value)>,
    tables: Vec<TableImage>,
    host: Vec<HostSection>,
    memories: Vec<FlatMemory>,
    max_memory: u64,
    /// Whether the last export carried the tables as they are now (a delta
    /// then leaves them out).
    tables_sent: bool,
    /// The sequence of the last export (what a copy kept elsewhere holds);
    /// `None`: the next export is the whole checkpoint.
    exported: Option<u64>,
}

impl Checkpoint {
    /// Start from a full snapshot; memories may never exceed `max_memory`
    /// bytes each.
    pub fn new(full: &Snapshot, max_memory: u64) -> Result<Checkpoint, CheckpointError> {
        if !full.is_full() {
            return Err(CheckpointError::WrongBase {
                lineage: full.lineage,
                base: full.base,
                current_lineage: full.lineage,
                current: 0,
            });
        }
        let mut checkpoint = Checkpoint {
            module: full.module,
            lineage: full.lineage,
            sequence: 0,
            generation: full.generation,
            globals: Vec::new(),
            tables: Vec::new(),
            host: Vec::new(),
            memories: Vec::new(),
            max_memory,
            tables_sent: false,
            exported: None,
        };
        checkpoint.check(full, true)?;
        checkpoint.write(full);
        Ok(checkpoint)
    }

    /// Bring the checkpoint to the state `delta` was captured at. Refused
    /// (and nothing changed) unless it is the next capture of this lineage.
    pub fn apply(&mut self, delta: &Snapshot) -> Result<(), CheckpointError> {
        self.check(delta, false)?;
        self.write(delta);
        Ok(())
    }

    /// The sequence of the capture this checkpoint holds.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// The lineage of the captures it follows.
    pub fn lineage(&self) -> u64 {
        self.lineage
    }

    /// Bytes of memory it holds (allocated, written or not).
    pub fn memory_bytes(&self) -> u64 {
        self.memories.iter().map(|m| m.data.len() as u64).sum()
    }

    /// What a copy kept elsewhere (a standby) needs to reach this state:
    /// the whole checkpoint the first time and after
    /// [`Checkpoint::resend_full`], then a delta on the previous export of
    /// the pages written since (a page written back to zero included), with
    /// the latest globals, tables and host sections. `None` when nothing
    /// changed since the last export.
    pub fn export(&mut self) -> Option<Snapshot> {
        let snapshot = match self.exported {
            Some(base) if base == self.sequence => return None,
            None => self.to_snapshot(),
            Some(base) => Snapshot {
                base: Some(base),
                // Written since the last export, zero or not.
                memories: self.images(|m, p, _| m.unsent[p]),
                tables: if self.tables_sent {
                    Vec::new()
                } else {
                    self.tables.clone()
                },
                ..self.without_memories()
            },
        };
        self.tables_sent = true;
        for m in &mut self.memories {
            m.unsent.fill(false);
        }
        self.exported = Some(self.sequence);
        Some(snapshot)
    }

    /// The next [`Checkpoint::export`] is the whole checkpoint (the copy
    /// elsewhere was lost or refused a delta).
    pub fn resend_full(&mut self) {
        self.exported = None;
    }

    /// Whether the state changed since the last export.
    pub fn unexported(&self) -> bool {
        self.exported != Some(self.sequence)
    }

    fn without_memories(&self) -> Snapshot {
        Snapshot {
            module: self.module,
            lineage: self.lineage,
            sequence: self.sequence,
            base: None,
            generation: self.generation,
            globals: self.globals.clone(),
            memories: Vec::new(),
            tables: self.tables.clone(),
            host: self.host.clone(),
        }
    }

    /// The checkpoint as a full snapshot (every carried non-zero page), to
    /// restore an instance from or to send.
    pub fn to_snapshot(&self) -> Snapshot {
        Snapshot {
            memories: self.images(|m, p, page| m.present[p] && !is_zero(page)),
            ..self.without_memories()
        }
    }

    /// Each memory as an image of the pages `carry` picks (given the
    /// memory, the page's index and its bytes).
    fn images(&self, carry: impl Fn(&FlatMemory, usize, &[u8]) -> bool) -> Vec<MemoryImage> {
        self.memories
            .iter()
            .enumerate()
            .map(|(index, m)| {
                let mut image = MemoryImage {
                    index: index as u32,
                    byte_len: m.data.len() as u64,
                    ..MemoryImage::default()
                };
                for (p, page) in m.data.chunks(PAGE_SIZE).enumerate() {
                    if carry(m, p, page) {
                        image.pages.push(p as u64);
                        image.data.extend_from_slice(page);
                    }
                }
                image
            })
            .collect()
    }

    fn check(&self, s: &Snapshot, full: bool) -> Result<(), CheckpointError> {
        if s.module != self.module {
            return Err(CheckpointError::WrongModule {
                delta: s.module,
                checkpoint: self.module,
            });
        }
        if !full && (s.lineage != self.lineage || s.base != Some(self.sequence)) {
            return Err(CheckpointError::WrongBase {
                lineage: s.lineage,
                base: s.base,
                current_lineage: self.lineage,
                current: self.sequence,
            });
        }
        if !full && s.memories.len() != self.memories.len() {
            return Err(CheckpointError::Shape(format!(
                "the delta has {} memories, the checkpoint {}",
                s.memories.len(),
                self.memories.len()
            )));
        }
        for (i, image) in s.memories.iter().enumerate() {
            if image.index as usize != i {
                return Err(CheckpointError::Shape(format!(
                    "memory {i} is numbered {}",
                    image.index
                )));
            }
            if image.byte_len > self.max_memory || !image.byte_len.is_multiple_of(PAGE_SIZE as u64)
            {
                return Err(CheckpointError::Shape(format!(
                    "memory {i} of {} bytes (at most {} in 4 KiB pages)",
                    image.byte_len, self.max_memory
                )));
            }
            if let Some(current) = self.memories.get(i)
                && !full
                && image.byte_len < current.data.len() as u64
            {
                return Err(CheckpointError::Shape(format!(
                    "memory {i} shrank from {} to {} bytes",
                    current.data.len(),
                    image.byte_len
                )));
            }
            let pages = image.byte_len / PAGE_SIZE as u64;
            if image.data.len() != image.pages.len() * PAGE_SIZE
                || image.pages.windows(2).any(|w| w[0] >= w[1])
                || image.pages.last().is_some_and(|&p| p >= pages)
            {
                return Err(CheckpointError::Shape(format!(
                    "memory {i}: pages out of order, out of range, or not matching the data"
                )));
            }
        }
        Ok(())
    }

    fn write(&mut self, s: &Snapshot) {
        if s.is_full() {
            self.memories.clear();
        }
        for (i, image) in s.memories.iter().enumerate() {
            if self.memories.len() <= i {
                self.memories.push(FlatMemory {
                    data: Vec::new(),
                    present: Vec::new(),
                    unsent: Vec::new(),
                });
            }
            let memory = &mut self.memories[i];
            let len = image.byte_len as usize;
            if memory.data.len() < len {
                memory.data.resize(len, 0);
                memory.present.resize(len / PAGE_SIZE, false);
                memory.unsent.resize(len / PAGE_SIZE, false);
            }
            for (k, &p) in image.pages.iter().enumerate() {
                let at = p as usize * PAGE_SIZE;
                memory.data[at..at + PAGE_SIZE].copy_from_slice(image.page(k));
                memory.present[p as usize] = true;
                memory.unsent[p as usize] = true;
            }
        }
        self.sequence = s.sequence;
        self.generation = s.generation;
        self.globals.clone_from(&s.globals);
        // A delta without tables leaves them as they were.
        if s.base.is_none() || !s.tables.is_empty() {
            self.tables.clone_from(&s.tables);
            self.tables_sent = false;
        }
        self.host.clone_from(&s.host);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(base: Option<u64>, sequence: u64, len: u64, pages: &[(u64, u8)]) -> Snapshot {
        let mut image = MemoryImage {
            index: 0,
            byte_len: len,
            ..MemoryImage::default()
        };
        for &(p, fill) in pages {
            image.pages.push(p);
            image.data.extend(std::iter::repeat_n(fill, PAGE_SIZE));
        }
        Snapshot {
            module: Digest::of(b"m"),
            lineage: 7,
            sequence,
            base,
            generation: 1,
            globals: vec![(0, Value::I32(sequence as u32))],
            memories: vec![image],
            tables: Vec::new(),
            host: Vec::new(),
        }
    }

    #[test]
    fn deltas_applied_in_order_give_the_latest_state() {
        let mut c =
            Checkpoint::new(&snapshot(None, 1, 4 * 4096, &[(0, 1), (2, 2)]), 1 << 20).unwrap();
        c.apply(&snapshot(Some(1), 2, 8 * 4096, &[(2, 3), (5, 4)]))
            .unwrap();
        let s = c.to_snapshot();
        assert!(s.is_full());
        assert_eq!(s.sequence, 2);
        assert_eq!(s.globals, vec![(0, Value::I32(2))]);
        assert_eq!(s.memories[0].byte_len, 8 * 4096);
        assert_eq!(s.memories[0].pages, vec![0, 2, 5]);
        assert_eq!(s.memories[0].page(1)[0], 3);
    }

    #[test]
    fn a_page_written_back_to_zero_is_not_carried() {
        let mut c = Checkpoint::new(&snapshot(None, 1, 4 * 4096, &[(1, 9)]), 1 << 20).unwrap();
        c.apply(&snapshot(Some(1), 2, 4 * 4096, &[(1, 0)])).unwrap();
        assert!(c.to_snapshot().memories[0].pages.is_empty());
    }

    #[test]
    fn a_delta_out_of_sequence_or_shape_changes_nothing() {
        let mut c = Checkpoint::new(&snapshot(None, 1, 4 * 4096, &[(0, 1)]), 1 << 20).unwrap();
        let before = c.to_snapshot();
        for bad in [
            snapshot(Some(2), 3, 4 * 4096, &[(0, 5)]),
            snapshot(None, 2, 4 * 4096, &[(0, 5)]),
            snapshot(Some(1), 2, 2 * 4096, &[(0, 5)]),
            snapshot(Some(1), 2, 4 * 4096, &[(4, 5)]),
            snapshot(Some(1), 2, 4 * 4096, &[(1, 5), (0, 5)]),
            snapshot(Some(1), 2, (1 << 20) + 4096, &[]),
        ] {
            assert!(c.apply(&bad).is_err(), "{bad:?}");
        }
        let mut other = snapshot(Some(1), 2, 4 * 4096, &[]);
        other.lineage = 8;
        assert!(c.apply(&other).is_err());
        assert_eq!(c.to_snapshot(), before);
    }

    #[test]
    fn exports_bring_a_copy_elsewhere_to_the_same_state() {
        let mut c =
            Checkpoint::new(&snapshot(None, 1, 4 * 4096, &[(0, 1), (2, 2)]), 1 << 20).unwrap();
        let first = c.export().unwrap();
        assert!(first.is_full());
        let mut copy = Checkpoint::new(&first, 1 << 20).unwrap();
        assert!(c.export().is_none(), "nothing changed");
        c.apply(&snapshot(Some(1), 2, 8 * 4096, &[(2, 0), (5, 4)]))
            .unwrap();
        c.apply(&snapshot(Some(2), 3, 8 * 4096, &[(6, 7)])).unwrap();
        let delta = c.export().unwrap();
        assert_eq!(delta.base, Some(1));
        assert_eq!(
            delta.memories[0].pages,
            vec![2, 5, 6],
            "the zeroed page too"
        );
        copy.apply(&delta).unwrap();
        assert_eq!(copy.to_snapshot(), c.to_snapshot());
        c.resend_full();
        assert!(c.unexported());
        let again = c.export().unwrap();
        assert!(again.is_full());
        assert_eq!(
            Checkpoint::new(&again, 1 << 20).unwrap().to_snapshot(),
            c.to_snapshot()
        );
    }
}
