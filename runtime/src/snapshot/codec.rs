//! The snapshot byte format (`docs/snapshot-format.md`).
//!
//! `header | sections | checksum`, all integers little-endian, so the bytes
//! mean the same on every architecture. Decoding treats its input as hostile:
//! it checks the magic, the version and the declared length, then the
//! checksum over everything, and only then parses, bounding every count by
//! the bytes that remain before allocating. It never panics; each kind of bad
//! input gets its own [`SnapshotError`].
//!
//! The checksum (xxh3-128) detects corruption, not forgery. Snapshots that
//! cross a trust boundary must also be authenticated by the transport (the
//! cluster's host-to-host streams).

use crate::error::SnapshotError;
use crate::module::Digest;
use crate::snapshot::{HostSection, MemoryImage, PAGE_SIZE, Snapshot, TableImage, Value};

/// First eight bytes of every snapshot.
pub const MAGIC: [u8; 8] = *b"ROAMSNAP";
/// Format version this build writes and reads.
pub const VERSION: u32 = 1;
/// Header length: magic, version, flags, total length, reserved.
pub const HEADER_LEN: usize = 32;
/// Trailer length: the xxh3-128 checksum.
pub const TRAILER_LEN: usize = 16;

const SECTION_META: u8 = 1;
const SECTION_GLOBALS: u8 = 2;
const SECTION_MEMORY: u8 = 3;
const SECTION_TABLE: u8 = 4;
const SECTION_HOST: u8 = 5;

const KIND_I32: u8 = 0;
const KIND_I64: u8 = 1;
const KIND_F32: u8 = 2;
const KIND_F64: u8 = 3;
const KIND_V128: u8 = 4;
const KIND_FUNCREF: u8 = 5;
const NULL_REF: u32 = u32::MAX;

/// Bounds applied while decoding, so hostile input cannot make the decoder
/// allocate more than the caller is prepared to hold.
#[derive(Clone, Copy, Debug)]
pub struct DecodeLimits {
    /// Largest encoded snapshot accepted.
    pub max_total: u64,
    /// Largest memory size a snapshot may declare.
    pub max_memory_bytes: u64,
    /// Largest table a snapshot may declare.
    pub max_table_entries: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_total: 5 << 30,
            max_memory_bytes: 4 << 30,
            max_table_entries: 10_000_000,
        }
    }
}

fn section_len(snapshot: &Snapshot) -> usize {
    let meta = 1 + 8 + 32 + 8 * 4;
    let globals = 1
        + 8
        + 4
        + snapshot
            .globals
            .iter()
            .map(|(_, v)| 4 + 1 + value_len(v))
            .sum::<usize>();
    let memories: usize = snapshot
        .memories
        .iter()
        .map(|m| 1 + 8 + 4 + 8 + 8 + m.pages.len() * 8 + m.data.len())
        .sum();
    let tables: usize = snapshot
        .tables
        .iter()
        .map(|t| 1 + 8 + 4 + 8 + t.entries.len() * 4)
        .sum();
    let host: usize = snapshot
        .host
        .iter()
        .map(|h| 1 + 8 + 2 + h.name.len() + h.data.len())
        .sum();
    meta + globals + memories + tables + host
}

fn value_len(v: &Value) -> usize {
    match v {
        Value::I32(_) | Value::F32(_) | Value::FuncRef(_) => 4,
        Value::I64(_) | Value::F64(_) => 8,
        Value::V128(_) => 16,
    }
}

fn funcref(f: Option<u32>) -> u32 {
    f.unwrap_or(NULL_REF)
}

/// Encode a snapshot. Host section names longer than 65535 bytes are cut
/// (names are chosen by Roam, not by guests).
pub fn encode(snapshot: &Snapshot) -> Vec<u8> {
    let total = HEADER_LEN + section_len(snapshot) + TRAILER_LEN;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(total as u64).to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes());

    let section = |out: &mut Vec<u8>, id: u8, len: usize| {
        out.push(id);
        out.extend_from_slice(&(len as u64).to_le_bytes());
    };

    section(&mut out, SECTION_META, 32 + 8 * 4);
    out.extend_from_slice(snapshot.module.as_bytes());
    out.extend_from_slice(&snapshot.lineage.to_le_bytes());
    out.extend_from_slice(&snapshot.sequence.to_le_bytes());
    out.extend_from_slice(&snapshot.base.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&snapshot.generation.to_le_bytes());

    let globals_len = 4 + snapshot
        .globals
        .iter()
        .map(|(_, v)| 4 + 1 + value_len(v))
        .sum::<usize>();
    section(&mut out, SECTION_GLOBALS, globals_len);
    out.extend_from_slice(&(snapshot.globals.len() as u32).to_le_bytes());
    for (index, value) in &snapshot.globals {
        out.extend_from_slice(&index.to_le_bytes());
        match *value {
            Value::I32(v) => {
                out.push(KIND_I32);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Value::I64(v) => {
                out.push(KIND_I64);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Value::F32(v) => {
                out.push(KIND_F32);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Value::F64(v) => {
                out.push(KIND_F64);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Value::V128(v) => {
                out.push(KIND_V128);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Value::FuncRef(f) => {
                out.push(KIND_FUNCREF);
                out.extend_from_slice(&funcref(f).to_le_bytes());
            }
        }
    }

    for m in &snapshot.memories {
        section(
            &mut out,
            SECTION_MEMORY,
            4 + 8 + 8 + m.pages.len() * 8 + m.data.len(),
        );
        out.extend_from_slice(&m.index.to_le_bytes());
        out.extend_from_slice(&m.byte_len.to_le_bytes());
        out.extend_from_slice(&(m.pages.len() as u64).to_le_bytes());
        for p in &m.pages {
            out.extend_from_slice(&p.to_le_bytes());
        }
        out.extend_from_slice(&m.data);
    }

    for t in &snapshot.tables {
        section(&mut out, SECTION_TABLE, 4 + 8 + t.entries.len() * 4);
        out.extend_from_slice(&t.index.to_le_bytes());
        out.extend_from_slice(&(t.entries.len() as u64).to_le_bytes());
        for e in &t.entries {
            out.extend_from_slice(&funcref(*e).to_le_bytes());
        }
    }

    for h in &snapshot.host {
        let name = &h.name.as_bytes()[..h.name.len().min(u16::MAX as usize)];
        section(&mut out, SECTION_HOST, 2 + name.len() + h.data.len());
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(&h.data);
    }

    let sum = xxhash_rust::xxh3::xxh3_128(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    debug_assert_eq!(out.len(), total);
    out
}

/// A bounds-checked little-endian reader over untrusted bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        if n > self.bytes.len() {
            return Err(SnapshotError::Malformed(format!(
                "{} section ends early: needs {n} more bytes, has {}",
                self.what,
                self.bytes.len()
            )));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], SnapshotError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, SnapshotError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn u128(&mut self) -> Result<u128, SnapshotError> {
        Ok(u128::from_le_bytes(self.array()?))
    }
    /// A count of items of `item_size` bytes each, refused if the remaining
    /// bytes cannot hold that many (so it is safe to allocate for).
    fn count(&mut self, item_size: usize) -> Result<usize, SnapshotError> {
        let n = self.u64()?;
        let fits = (self.bytes.len() / item_size.max(1)) as u64;
        if n > fits {
            return Err(SnapshotError::Malformed(format!(
                "{} section declares {n} items but only {fits} fit",
                self.what
            )));
        }
        Ok(n as usize)
    }
    fn finish(&self) -> Result<(), SnapshotError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(SnapshotError::Malformed(format!(
                "{} section has {} unexpected trailing bytes",
                self.what,
                self.bytes.len()
            )))
        }
    }
}

fn malformed(msg: impl Into<String>) -> SnapshotError {
    SnapshotError::Malformed(msg.into())
}

fn read_funcref(v: u32) -> Option<u32> {
    (v != NULL_REF).then_some(v)
}

/// Check the envelope (magic, version, length, checksum) and return the
/// section bytes. Nothing is parsed before the checksum matches.
fn open<'a>(bytes: &'a [u8], limits: &DecodeLimits) -> Result<&'a [u8], SnapshotError> {
    let magic_len = bytes.len().min(MAGIC.len());
    if bytes[..magic_len] != MAGIC[..magic_len] {
        return Err(SnapshotError::BadMagic);
    }
    if bytes.len() < HEADER_LEN {
        return Err(SnapshotError::Truncated {
            declared: (HEADER_LEN + TRAILER_LEN) as u64,
            actual: bytes.len() as u64,
        });
    }
    let mut header = Reader {
        bytes: &bytes[MAGIC.len()..HEADER_LEN],
        what: "header",
    };
    let version = header.u32()?;
    if version != VERSION {
        return Err(SnapshotError::UnsupportedVersion {
            found: version,
            supported: VERSION,
        });
    }
    let flags = header.u32()?;
    let declared = header.u64()?;
    let reserved = header.u64()?;
    if declared > limits.max_total {
        return Err(SnapshotError::TooLarge {
            size: declared,
            limit: limits.max_total,
        });
    }
    if (bytes.len() as u64) < declared {
        return Err(SnapshotError::Truncated {
            declared,
            actual: bytes.len() as u64,
        });
    }
    if (bytes.len() as u64) > declared {
        return Err(SnapshotError::TooLarge {
            size: bytes.len() as u64,
            limit: declared,
        });
    }
    if declared < (HEADER_LEN + TRAILER_LEN) as u64 {
        return Err(malformed(format!(
            "declared length {declared} is below the minimum"
        )));
    }
    let body_end = bytes.len() - TRAILER_LEN;
    let mut trailer = Reader {
        bytes: &bytes[body_end..],
        what: "trailer",
    };
    let expected = trailer.u128()?;
    if xxhash_rust::xxh3::xxh3_128(&bytes[..body_end]) != expected {
        return Err(SnapshotError::Checksum);
    }
    if flags != 0 || reserved != 0 {
        return Err(malformed("reserved header fields are not zero"));
    }
    Ok(&bytes[HEADER_LEN..body_end])
}

/// Decode a snapshot, checking that it belongs to module `expected` when given.
pub fn decode(
    bytes: &[u8],
    expected: Option<&Digest>,
    limits: &DecodeLimits,
) -> Result<Snapshot, SnapshotError> {
    let body = open(bytes, limits)?;
    let mut sections = Reader {
        bytes: body,
        what: "snapshot",
    };
    let mut snapshot: Option<Snapshot> = None;
    let mut seen_globals = false;
    while !sections.bytes.is_empty() {
        let id = sections.u8()?;
        let len = sections.u64()?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= sections.bytes.len())
            .ok_or_else(|| {
                malformed(format!(
                    "section {id} declares {len} bytes but only {} remain",
                    sections.bytes.len()
                ))
            })?;
        let payload = sections.take(len)?;
        if id == SECTION_META {
            if snapshot.is_some() {
                return Err(malformed("duplicate meta section"));
            }
            snapshot = Some(read_meta(payload, expected)?);
            continue;
        }
        let snap = snapshot
            .as_mut()
            .ok_or_else(|| malformed("the meta section must come first"))?;
        match id {
            SECTION_GLOBALS => {
                if seen_globals {
                    return Err(malformed("duplicate globals section"));
                }
                seen_globals = true;
                snap.globals = read_globals(payload)?;
            }
            SECTION_MEMORY => {
                let m = read_memory(payload, limits)?;
                if snap.memories.last().is_some_and(|l| l.index >= m.index) {
                    return Err(malformed("memory sections out of order"));
                }
                snap.memories.push(m);
            }
            SECTION_TABLE => {
                let t = read_table(payload, limits)?;
                if snap.tables.last().is_some_and(|l| l.index >= t.index) {
                    return Err(malformed("table sections out of order"));
                }
                snap.tables.push(t);
            }
            SECTION_HOST => {
                let mut r = Reader {
                    bytes: payload,
                    what: "host",
                };
                let n = r.u16()? as usize;
                let name = std::str::from_utf8(r.take(n)?)
                    .map_err(|_| malformed("host section name is not UTF-8"))?
                    .to_string();
                if snap.host.iter().any(|h| h.name == name) {
                    return Err(malformed(format!("duplicate host section `{name}`")));
                }
                snap.host.push(HostSection {
                    name,
                    data: r.bytes.to_vec(),
                });
            }
            other => return Err(malformed(format!("unknown section id {other}"))),
        }
    }
    snapshot.ok_or_else(|| malformed("no meta section"))
}

fn read_meta(payload: &[u8], expected: Option<&Digest>) -> Result<Snapshot, SnapshotError> {
    let mut r = Reader {
        bytes: payload,
        what: "meta",
    };
    let module = Digest::from_bytes(r.array::<32>()?);
    if let Some(expected) = expected
        && *expected != module
    {
        return Err(SnapshotError::WrongModule {
            snapshot: module.to_string(),
            expected: expected.to_string(),
        });
    }
    let lineage = r.u64()?;
    let sequence = r.u64()?;
    let base = r.u64()?;
    let generation = r.u64()?;
    r.finish()?;
    if base != 0 && base >= sequence {
        return Err(malformed(format!(
            "delta base {base} is not before its sequence {sequence}"
        )));
    }
    Ok(Snapshot {
        module,
        lineage,
        sequence,
        base: (base != 0).then_some(base),
        generation,
        globals: Vec::new(),
        memories: Vec::new(),
        tables: Vec::new(),
        host: Vec::new(),
    })
}

fn read_globals(payload: &[u8]) -> Result<Vec<(u32, Value)>, SnapshotError> {
    let mut r = Reader {
        bytes: payload,
        what: "globals",
    };
    let n = r.u32()? as usize;
    // Every entry takes at least 9 bytes.
    if n > r.bytes.len() / 9 {
        return Err(malformed(format!(
            "globals section declares {n} globals, too many for its size"
        )));
    }
    let mut globals = Vec::with_capacity(n);
    for _ in 0..n {
        let index = r.u32()?;
        let value = match r.u8()? {
            KIND_I32 => Value::I32(r.u32()?),
            KIND_I64 => Value::I64(r.u64()?),
            KIND_F32 => Value::F32(r.u32()?),
            KIND_F64 => Value::F64(r.u64()?),
            KIND_V128 => Value::V128(r.u128()?),
            KIND_FUNCREF => Value::FuncRef(read_funcref(r.u32()?)),
            k => return Err(malformed(format!("global {index} has unknown kind {k}"))),
        };
        if globals.last().is_some_and(|(i, _)| *i >= index) {
            return Err(malformed("globals out of order"));
        }
        globals.push((index, value));
    }
    r.finish()?;
    Ok(globals)
}

fn read_memory(payload: &[u8], limits: &DecodeLimits) -> Result<MemoryImage, SnapshotError> {
    let mut r = Reader {
        bytes: payload,
        what: "memory",
    };
    let index = r.u32()?;
    let byte_len = r.u64()?;
    if byte_len > limits.max_memory_bytes {
        return Err(SnapshotError::TooLarge {
            size: byte_len,
            limit: limits.max_memory_bytes,
        });
    }
    let page_limit = byte_len.div_ceil(PAGE_SIZE as u64);
    let n = r.count(8 + PAGE_SIZE)?;
    let mut pages = Vec::with_capacity(n);
    for _ in 0..n {
        let p = r.u64()?;
        if p >= page_limit {
            return Err(malformed(format!(
                "memory {index}: page {p} is beyond its size of {byte_len} bytes"
            )));
        }
        if pages.last().is_some_and(|&last| last >= p) {
            return Err(malformed(format!("memory {index}: pages out of order")));
        }
        pages.push(p);
    }
    let data = r.take(n * PAGE_SIZE)?.to_vec();
    r.finish()?;
    Ok(MemoryImage {
        index,
        byte_len,
        pages,
        data,
    })
}

fn read_table(payload: &[u8], limits: &DecodeLimits) -> Result<TableImage, SnapshotError> {
    let mut r = Reader {
        bytes: payload,
        what: "table",
    };
    let index = r.u32()?;
    let n = r.count(4)?;
    if n as u64 > limits.max_table_entries {
        return Err(SnapshotError::TooLarge {
            size: n as u64,
            limit: limits.max_table_entries,
        });
    }
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        entries.push(read_funcref(r.u32()?));
    }
    r.finish()?;
    Ok(TableImage { index, entries })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        let mut data = vec![0u8; 2 * PAGE_SIZE];
        data[5] = 7;
        data[PAGE_SIZE + 9] = 9;
        Snapshot {
            module: Digest::of(b"module"),
            lineage: 42,
            sequence: 3,
            base: Some(2),
            generation: 5,
            globals: vec![
                (0, Value::I32(1)),
                (1, Value::I64(u64::MAX)),
                (2, Value::F32(f32::NAN.to_bits() | 1)),
                (3, Value::F64((-0.0f64).to_bits())),
                (4, Value::V128(u128::MAX - 5)),
                (5, Value::FuncRef(None)),
                (6, Value::FuncRef(Some(3))),
            ],
            memories: vec![MemoryImage {
                index: 0,
                byte_len: 65536,
                pages: vec![0, 15],
                data,
            }],
            tables: vec![TableImage {
                index: 0,
                entries: vec![None, Some(1), Some(0)],
            }],
            host: vec![HostSection {
                name: "roam.test".into(),
                data: b"state".to_vec(),
            }],
        }
    }

    #[test]
    fn round_trips() {
        let s = sample();
        let bytes = encode(&s);
        assert_eq!(
            decode(&bytes, Some(&s.module), &DecodeLimits::default()),
            Ok(s)
        );
    }

    #[test]
    fn each_kind_of_bad_input_gets_its_own_error() {
        let s = sample();
        let bytes = encode(&s);
        let limits = DecodeLimits::default();
        assert!(matches!(
            decode(&bytes[..bytes.len() - 1], None, &limits),
            Err(SnapshotError::Truncated { .. })
        ));
        let mut flipped = bytes.clone();
        flipped[100] ^= 1;
        assert_eq!(
            decode(&flipped, None, &limits),
            Err(SnapshotError::Checksum)
        );
        let small = DecodeLimits {
            max_total: 64,
            ..limits
        };
        assert!(matches!(
            decode(&bytes, None, &small),
            Err(SnapshotError::TooLarge { .. })
        ));
        assert!(matches!(
            decode(&bytes, Some(&Digest::of(b"other")), &limits),
            Err(SnapshotError::WrongModule { .. })
        ));
        assert_eq!(
            decode(b"GARBAGE!", None, &limits),
            Err(SnapshotError::BadMagic)
        );
    }

    #[test]
    fn every_truncation_and_bit_flip_is_refused() {
        let bytes = encode(&sample());
        let limits = DecodeLimits::default();
        for len in 0..bytes.len() {
            assert!(
                decode(&bytes[..len], None, &limits).is_err(),
                "truncated at {len}"
            );
        }
        let mut b = bytes.clone();
        for i in 0..b.len() {
            for bit in 0..8 {
                b[i] ^= 1 << bit;
                assert!(decode(&b, None, &limits).is_err(), "bit {bit} of byte {i}");
                b[i] ^= 1 << bit;
            }
        }
    }
}
