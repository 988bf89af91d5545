//! Module rewriting: make a module's whole state reachable from the host.
//!
//! wasmtime can only read and write the items a module exports. Compilers keep
//! important state in items they never export — the stack pointer global of a
//! Rust or C program is the classic case — so a snapshot taken through the
//! ordinary exports would miss it. At load time every module is therefore
//! rewritten (Wizer's technique):
//!
//! * every memory, global and table, defined or imported, gets an extra export
//!   under a reserved name (`roam-state:memory:N`, `roam-state:global:N`,
//!   `roam-state:table:N`);
//! * every function that can end up in a table or a reference-typed global
//!   (those named by element segments, `ref.func` in global initialisers and
//!   exports) is exported as `roam-state:func:N`, so table contents can be
//!   captured as function indices and put back on restore;
//! * a `start` section is removed and its function exported as
//!   `roam-state:start`: the host runs it on first boot only, never on restore.
//!
//! Everything else is copied byte for byte; no function body is touched, so the
//! rewrite is linear in the module size and does not change behaviour.
//!
//! The rewriter also records the facts restore needs ([`StateLayout`]): which
//! globals are mutable and of which type, and which memory ranges active data
//! segments initialise (those pages are non-zero in a fresh instance even
//! where the snapshot says zero, so restore must clear them).
//!
//! It refuses what it cannot capture faithfully: shared memories (threads) and
//! reference types other than `funcref` in tables and mutable globals.

use std::collections::BTreeSet;

use wasm_encoder::{ExportKind, ExportSection, RawSection};
use wasmparser::{
    AbstractHeapType, ConstExpr, DataKind, ElementItems, ExternalKind, HeapType, Operator, Parser,
    Payload, RefType, TypeRef, ValType,
};

use crate::error::LoadError;

/// Prefix of every export the rewriter adds. Modules may not use it themselves.
pub const RESERVED_PREFIX: &str = "roam-state:";

/// Export name of memory `index`.
pub fn memory_export(index: u32) -> String {
    format!("{RESERVED_PREFIX}memory:{index}")
}

/// Export name of global `index`.
pub fn global_export(index: u32) -> String {
    format!("{RESERVED_PREFIX}global:{index}")
}

/// Export name of table `index`.
pub fn table_export(index: u32) -> String {
    format!("{RESERVED_PREFIX}table:{index}")
}

/// Export name of function `index`.
pub fn func_export(index: u32) -> String {
    format!("{RESERVED_PREFIX}func:{index}")
}

/// Export name of the moved start function.
pub const START_EXPORT: &str = "roam-state:start";

/// The value type of a captured global.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GlobalKind {
    /// `i32`
    I32,
    /// `i64`
    I64,
    /// `f32`
    F32,
    /// `f64`
    F64,
    /// `v128`
    V128,
    /// `funcref`, captured as a function index or null.
    FuncRef,
}

/// A memory range that an active data segment writes at instantiation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataRange {
    /// Memory index.
    pub memory: u32,
    /// Byte offset of the first byte.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// What the host needs to know to capture and restore an instance's state.
#[derive(Clone, Debug, Default)]
pub struct StateLayout {
    /// Number of memories (imported and defined).
    pub memories: u32,
    /// Mutable globals and their kind; immutable ones never change and are not captured.
    pub mutable_globals: Vec<(u32, GlobalKind)>,
    /// Number of tables (all hold funcref).
    pub tables: u32,
    /// Whether anything can change a table after instantiation: an
    /// imported table, or a `table.set`, `table.grow`, `table.fill`,
    /// `table.copy` or `table.init` in the code. When not, a delta leaves
    /// the tables out (they are as the full capture had them).
    pub tables_mutable: bool,
    /// Functions exported as `roam-state:func:N`, in ascending order.
    pub referenced_funcs: Vec<u32>,
    /// Whether the module had a `start` function (now exported as [`START_EXPORT`]).
    pub has_start: bool,
    /// Ranges written by active data segments.
    pub data_ranges: Vec<DataRange>,
    /// True when some data segment offset could not be evaluated at load time;
    /// restore then clears every page the snapshot does not carry.
    pub data_ranges_unknown: bool,
}

/// The result of [`rewrite`].
#[derive(Debug)]
pub struct Rewritten {
    /// The rewritten module bytes.
    pub bytes: Vec<u8>,
    /// The state layout of the module.
    pub layout: StateLayout,
    /// The module's imports as (module, name).
    pub imports: Vec<(String, String)>,
}

/// Position of a known section id in the order the binary format requires.
fn section_rank(id: u8) -> Option<u8> {
    Some(match id {
        1 => 1,   // type
        2 => 2,   // import
        3 => 3,   // function
        4 => 4,   // table
        5 => 5,   // memory
        13 => 6,  // tag
        6 => 7,   // global
        7 => 8,   // export
        8 => 9,   // start
        9 => 10,  // element
        12 => 11, // data count
        10 => 12, // code
        11 => 13, // data
        _ => return None,
    })
}
const EXPORT_RANK: u8 = 8;

fn unsupported(feature: impl Into<String>) -> LoadError {
    LoadError::Unsupported {
        feature: feature.into(),
    }
}

fn malformed(e: wasmparser::BinaryReaderError) -> LoadError {
    LoadError::Invalid {
        message: e.to_string(),
    }
}

fn describe_ref(ty: RefType) -> String {
    format!("{ty}")
}

/// Whether a reference type is a plain (nullable or not) `funcref`.
fn is_funcref(ty: RefType) -> bool {
    matches!(
        ty.heap_type(),
        HeapType::Abstract {
            shared: false,
            ty: AbstractHeapType::Func
        }
    )
}

/// Evaluate a constant offset expression (`i32.const`, `i64.const` and the
/// extended-const arithmetic). `None` when it refers to something only known
/// at instantiation.
fn eval_offset(expr: &ConstExpr<'_>) -> Option<u64> {
    let mut stack: Vec<i64> = Vec::new();
    let mut reader = expr.get_operators_reader();
    while !reader.eof() {
        match reader.read().ok()? {
            Operator::I32Const { value } => stack.push(i64::from(value as u32)),
            Operator::I64Const { value } => stack.push(value),
            op @ (Operator::I32Add | Operator::I32Sub | Operator::I32Mul) => {
                let (b, a) = (stack.pop()? as u32, stack.pop()? as u32);
                let r = match op {
                    Operator::I32Add => a.wrapping_add(b),
                    Operator::I32Sub => a.wrapping_sub(b),
                    _ => a.wrapping_mul(b),
                };
                stack.push(i64::from(r));
            }
            Operator::I64Add => {
                let (b, a) = (stack.pop()?, stack.pop()?);
                stack.push(a.wrapping_add(b));
            }
            Operator::I64Sub => {
                let (b, a) = (stack.pop()?, stack.pop()?);
                stack.push(a.wrapping_sub(b));
            }
            Operator::I64Mul => {
                let (b, a) = (stack.pop()?, stack.pop()?);
                stack.push(a.wrapping_mul(b));
            }
            Operator::End => break,
            _ => return None,
        }
    }
    stack.pop().map(|v| v as u64)
}

fn export_kind(kind: ExternalKind) -> ExportKind {
    match kind {
        ExternalKind::Func | ExternalKind::FuncExact => ExportKind::Func,
        ExternalKind::Table => ExportKind::Table,
        ExternalKind::Memory => ExportKind::Memory,
        ExternalKind::Global => ExportKind::Global,
        ExternalKind::Tag => ExportKind::Tag,
    }
}

/// Collect `ref.func` targets of a constant expression.
fn collect_ref_funcs(expr: &ConstExpr<'_>, out: &mut BTreeSet<u32>) -> Result<(), LoadError> {
    let mut reader = expr.get_operators_reader();
    while !reader.eof() {
        if let Operator::RefFunc { function_index } = reader.read().map_err(malformed)? {
            out.insert(function_index);
        }
    }
    Ok(())
}

/// Rewrite a validated core module so that its whole state is reachable, and
/// describe that state. See the module documentation.
///
/// The input must already have passed validation; malformed input still gets
/// an error, never a panic.
pub fn rewrite(wasm: &[u8]) -> Result<Rewritten, LoadError> {
    let mut layout = StateLayout::default();
    let mut globals: u32 = 0;
    let mut exports: Vec<(String, ExternalKind, u32)> = Vec::new();
    let mut referenced = BTreeSet::new();
    let mut start: Option<u32> = None;
    let mut imports = Vec::new();

    // Pass 1: learn the index spaces and what must be exported.
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.map_err(malformed)? {
            Payload::Version { encoding, .. } if encoding != wasmparser::Encoding::Module => {
                return Err(LoadError::NotACoreModule);
            }
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import.map_err(malformed)?;
                    imports.push((import.module.to_string(), import.name.to_string()));
                    match import.ty {
                        TypeRef::Memory(ty) => {
                            if ty.shared {
                                return Err(unsupported(format!(
                                    "shared memory imported as `{}::{}` (threads)",
                                    import.module, import.name
                                )));
                            }
                            layout.memories += 1;
                        }
                        TypeRef::Table(ty) => {
                            if !is_funcref(ty.element_type) {
                                return Err(unsupported(format!(
                                    "table of `{}` imported as `{}::{}`",
                                    describe_ref(ty.element_type),
                                    import.module,
                                    import.name
                                )));
                            }
                            layout.tables += 1;
                            layout.tables_mutable = true;
                        }
                        TypeRef::Global(ty) => {
                            if ty.mutable {
                                let kind = global_kind(ty.content_type, globals)?;
                                layout.mutable_globals.push((globals, kind));
                            }
                            globals += 1;
                        }
                        _ => {}
                    }
                }
            }
            Payload::TableSection(reader) => {
                for table in reader {
                    let table = table.map_err(malformed)?;
                    if !is_funcref(table.ty.element_type) {
                        return Err(unsupported(format!(
                            "table {} holds `{}` values, which Roam cannot capture",
                            layout.tables,
                            describe_ref(table.ty.element_type)
                        )));
                    }
                    if let wasmparser::TableInit::Expr(expr) = &table.init {
                        collect_ref_funcs(expr, &mut referenced)?;
                    }
                    layout.tables += 1;
                }
            }
            Payload::MemorySection(reader) => {
                for memory in reader {
                    let memory = memory.map_err(malformed)?;
                    if memory.shared {
                        return Err(unsupported(format!(
                            "shared memory {} (threads)",
                            layout.memories
                        )));
                    }
                    layout.memories += 1;
                }
            }
            Payload::GlobalSection(reader) => {
                for global in reader {
                    let global = global.map_err(malformed)?;
                    collect_ref_funcs(&global.init_expr, &mut referenced)?;
                    if global.ty.mutable {
                        let kind = global_kind(global.ty.content_type, globals)?;
                        layout.mutable_globals.push((globals, kind));
                    }
                    globals += 1;
                }
            }
            Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export.map_err(malformed)?;
                    if export.name.starts_with(RESERVED_PREFIX) {
                        return Err(LoadError::ReservedExport {
                            name: export.name.to_string(),
                        });
                    }
                    if matches!(export.kind, ExternalKind::Func | ExternalKind::FuncExact) {
                        referenced.insert(export.index);
                    }
                    exports.push((export.name.to_string(), export.kind, export.index));
                }
            }
            Payload::StartSection { func, .. } => start = Some(func),
            Payload::ElementSection(reader) => {
                for element in reader {
                    let element = element.map_err(malformed)?;
                    match element.items {
                        ElementItems::Functions(funcs) => {
                            for f in funcs {
                                referenced.insert(f.map_err(malformed)?);
                            }
                        }
                        ElementItems::Expressions(_, exprs) => {
                            for expr in exprs {
                                collect_ref_funcs(&expr.map_err(malformed)?, &mut referenced)?;
                            }
                        }
                    }
                }
            }
            Payload::CodeSectionEntry(body) if !layout.tables_mutable => {
                let mut ops = body.get_operators_reader().map_err(malformed)?;
                while !ops.eof() {
                    if matches!(
                        ops.read().map_err(malformed)?,
                        Operator::TableSet { .. }
                            | Operator::TableGrow { .. }
                            | Operator::TableFill { .. }
                            | Operator::TableCopy { .. }
                            | Operator::TableInit { .. }
                    ) {
                        layout.tables_mutable = true;
                        break;
                    }
                }
            }
            Payload::DataSection(reader) => {
                for data in reader {
                    let data = data.map_err(malformed)?;
                    if let DataKind::Active {
                        memory_index,
                        offset_expr,
                    } = data.kind
                    {
                        match eval_offset(&offset_expr) {
                            Some(offset) => layout.data_ranges.push(DataRange {
                                memory: memory_index,
                                offset,
                                len: data.data.len() as u64,
                            }),
                            None => layout.data_ranges_unknown = true,
                        }
                    }
                }
            }
            _ => {}
        }
    }
    layout.has_start = start.is_some();
    layout.referenced_funcs = referenced.iter().copied().collect();

    // The new export section: the module's own exports, then the state exports.
    let mut export_section = ExportSection::new();
    for (name, kind, index) in &exports {
        export_section.export(name, export_kind(*kind), *index);
    }
    for i in 0..layout.memories {
        export_section.export(&memory_export(i), ExportKind::Memory, i);
    }
    for i in 0..globals {
        export_section.export(&global_export(i), ExportKind::Global, i);
    }
    for i in 0..layout.tables {
        export_section.export(&table_export(i), ExportKind::Table, i);
    }
    for &f in &layout.referenced_funcs {
        export_section.export(&func_export(f), ExportKind::Func, f);
    }
    if let Some(f) = start {
        export_section.export(START_EXPORT, ExportKind::Func, f);
    }

    // Pass 2: copy every section, replacing the export section and dropping start.
    let mut module = wasm_encoder::Module::new();
    let mut exports_written = false;
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(malformed)?;
        let Some((id, range)) = payload.as_section() else {
            continue;
        };
        let rank = section_rank(id);
        if !exports_written && rank.is_some_and(|r| r >= EXPORT_RANK) {
            module.section(&export_section);
            exports_written = true;
        }
        match id {
            7 | 8 => {} // export section (already written) and start section (moved)
            _ => {
                let data = wasm.get(range).ok_or_else(|| LoadError::Invalid {
                    message: "section range outside the module".to_string(),
                })?;
                module.section(&RawSection { id, data });
            }
        }
    }
    if !exports_written {
        module.section(&export_section);
    }
    Ok(Rewritten {
        bytes: module.finish(),
        layout,
        imports,
    })
}

fn global_kind(ty: ValType, index: u32) -> Result<GlobalKind, LoadError> {
    Ok(match ty {
        ValType::I32 => GlobalKind::I32,
        ValType::I64 => GlobalKind::I64,
        ValType::F32 => GlobalKind::F32,
        ValType::F64 => GlobalKind::F64,
        ValType::V128 => GlobalKind::V128,
        ValType::Ref(r) if is_funcref(r) => GlobalKind::FuncRef,
        ValType::Ref(r) => {
            return Err(unsupported(format!(
                "mutable global {index} of type `{}`, which Roam cannot capture",
                describe_ref(r)
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exports_of(wasm: &[u8]) -> Vec<String> {
        let mut names = Vec::new();
        for payload in Parser::new(0).parse_all(wasm) {
            if let Ok(Payload::ExportSection(r)) = payload {
                for e in r.into_iter().flatten() {
                    names.push(e.name.to_string());
                }
            }
        }
        names
    }

    #[test]
    fn exports_internal_state_and_moves_start() {
        let wasm = wat::parse_str(
            r#"(module
                (memory 1)
                (global $sp (mut i32) (i32.const 1024))
                (global $k i64 (i64.const 7))
                (table 2 funcref)
                (elem (i32.const 0) $f)
                (func $f)
                (func $init (global.set $sp (i32.const 5)))
                (start $init)
                (data (i32.const 16) "hello")
                (export "f" (func $f)))"#,
        )
        .unwrap();
        let out = rewrite(&wasm).unwrap();
        wasmparser::validate(&out.bytes).unwrap();
        let names = exports_of(&out.bytes);
        for n in [
            "f",
            "roam-state:memory:0",
            "roam-state:global:0",
            "roam-state:global:1",
            "roam-state:table:0",
            "roam-state:func:0",
            "roam-state:start",
        ] {
            assert!(
                names.contains(&n.to_string()),
                "missing export {n}: {names:?}"
            );
        }
        assert_eq!(out.layout.mutable_globals, vec![(0, GlobalKind::I32)]);
        assert!(out.layout.has_start);
        assert_eq!(
            out.layout.data_ranges,
            vec![DataRange {
                memory: 0,
                offset: 16,
                len: 5
            }]
        );
        // No start section remains.
        let has_start = Parser::new(0)
            .parse_all(&out.bytes)
            .any(|p| matches!(p, Ok(Payload::StartSection { .. })));
        assert!(!has_start);
    }

    #[test]
    fn only_a_table_changing_instruction_or_import_makes_tables_mutable() {
        let fixed = "(module (table 2 funcref) (func $f) (elem (i32.const 0) $f)
            (func (result i32) (call_indirect (result i32) (i32.const 0))))";
        let layout = rewrite(&wat::parse_str(fixed).unwrap()).unwrap().layout;
        assert!(!layout.tables_mutable);
        for changer in [
            "(table.set (i32.const 1) (ref.null func))",
            "(drop (table.grow (ref.null func) (i32.const 1)))",
            "(table.fill (i32.const 0) (ref.null func) (i32.const 1))",
            "(table.copy (i32.const 0) (i32.const 1) (i32.const 1))",
            "(table.init 0 (i32.const 0) (i32.const 0) (i32.const 1))",
        ] {
            let wat =
                format!("(module (table 2 funcref) (func $f) (elem func $f) (func {changer}))");
            let layout = rewrite(&wat::parse_str(&wat).unwrap()).unwrap().layout;
            assert!(layout.tables_mutable, "{changer}");
        }
        let imported = r#"(module (import "m" "t" (table 1 funcref)))"#;
        let layout = rewrite(&wat::parse_str(imported).unwrap()).unwrap().layout;
        assert!(layout.tables_mutable);
    }

    #[test]
    fn module_without_exports_gets_an_export_section() {
        let wasm = wat::parse_str("(module (memory 1) (func))").unwrap();
        let out = rewrite(&wasm).unwrap();
        wasmparser::validate(&out.bytes).unwrap();
        assert_eq!(
            exports_of(&out.bytes),
            vec!["roam-state:memory:0".to_string()]
        );
    }

    #[test]
    fn shared_memory_is_refused() {
        let wasm = wat::parse_str("(module (memory 1 1 shared))").unwrap();
        let err = rewrite(&wasm).unwrap_err();
        assert!(err.to_string().contains("shared memory"), "{err}");
    }

    #[test]
    fn externref_table_is_refused() {
        let wasm = wat::parse_str("(module (table 1 externref))").unwrap();
        let err = rewrite(&wasm).unwrap_err();
        assert!(err.to_string().contains("externref"), "{err}");
    }

    #[test]
    fn reserved_export_names_are_refused() {
        let wasm = wat::parse_str(r#"(module (func (export "roam-state:x")))"#).unwrap();
        assert!(matches!(
            rewrite(&wasm),
            Err(LoadError::ReservedExport { .. })
        ));
    }
}
