//! Giving a dynamically linked component's largest library a function table of its own.
//!
//! componentize-qjs links QuickJS as a shared library: a small generated `main` module defines
//! the program's memory and `__indirect_function_table`; the QuickJS module imports that table and
//! fills ~735 slots with an element segment placed at `__table_base`, an imported global; a fixup
//! module later writes the few slots the others reach across modules (`cabi_realloc`). wasmtime
//! precomputes a segment (and then fills the table lazily, a slot at its first `call_indirect`)
//! only when it sits at a constant offset in a table the module defines; any other segment is
//! applied at every instantiation, one `ref.func` at a time: about 40 µs of a 110 µs JavaScript
//! evaluation here, paid again by each fresh instance (docs/BENCHMARKS.md).
//!
//! [`own_table`] rewrites that shape. The filling module defines a table of the same type instead
//! of importing it, places its segment at the constant `__table_base` holds (an immutable global of
//! the defining module), also holds the slots the fixup writes (the same functions, its own
//! exports), and exports the table; the other library's `env` gets that table. The old table keeps
//! serving the defining module, whose only use of it is a call through a slot the fixup still
//! writes there. Every module therefore sees, at every slot it can reach, the function it saw
//! before. Whatever does not match this shape exactly, or does not validate afterwards, is loaded
//! as it was: the rewrite changes cost, never behaviour.

use std::borrow::Cow;
use std::collections::HashMap;
use wasm_encoder::reencode::{self, Reencode, RoundtripReencoder};
use wasmparser::{
    ComponentAlias, ComponentOuterAliasKind, ElementItems, ElementKind, ExternalKind, Instance, Operator,
    Parser, Payload, TableType, TypeRef,
};

/// The name the wasm dynamic-linking convention gives the shared function table.
const TABLE: &str = "__indirect_function_table";

/// A component as the host loads it.
pub struct Relinked<'a> {
    /// The rewritten component, or the one given.
    pub bytes: Cow<'a, [u8]>,
    /// The slots of the library's own table wasmtime fills lazily, when the rewrite applied.
    pub lazy_slots: Option<usize>,
}

/// `component` with its largest library's function table made its own, when the component has the
/// dynamically linked shape described above; otherwise `component` unchanged.
pub fn own_table(component: &[u8]) -> Relinked<'_> {
    let unchanged = Relinked { bytes: Cow::Borrowed(component), lazy_slots: None };
    let plan = match Component::read(component).and_then(|c| c.plan()) {
        Ok(plan) => plan,
        Err(shape) => {
            tracing::debug!(shape, "policy: function table left as linked");
            return unchanged;
        }
    };
    match plan.apply(component) {
        Some(rewritten) if valid(&rewritten) => {
            tracing::debug!(slots = plan.segment_len, "policy: library given its own function table");
            Relinked { bytes: Cow::Owned(rewritten), lazy_slots: Some(plan.segment_len) }
        }
        _ => {
            tracing::warn!(
                "policy: rewriting the function table gave an invalid component; loading it as linked"
            );
            unchanged
        }
    }
}

/// The sections of the outermost component (or module), in order; what nested modules and
/// components contain is skipped (their own `ModuleSection`/`ComponentSection` is kept).
fn outer_sections(bytes: &[u8]) -> impl Iterator<Item = wasmparser::Result<Payload<'_>>> {
    let mut depth = 0usize;
    Parser::new(0).parse_all(bytes).filter(move |payload| match payload {
        Ok(Payload::Version { .. }) => {
            depth += 1;
            false
        }
        Ok(Payload::End(_)) => {
            depth = depth.saturating_sub(1);
            false
        }
        Ok(_) => depth == 1,
        Err(_) => true,
    })
}

fn valid(component: &[u8]) -> bool {
    wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all()).validate_all(component).is_ok()
}

/// Why a component is left as it is (for the debug log).
type Shape<T> = Result<T, &'static str>;

fn need<T>(value: Option<T>, why: &'static str) -> Shape<T> {
    value.ok_or(why)
}

/// An active element segment.
struct Segment {
    table: u32,
    offset: Offset,
    /// The function indices, when the segment lists functions.
    funcs: Option<Vec<u32>>,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Offset {
    Global(u32),
    Const(i32),
    Other,
}

/// What the rewrite needs to know of one core module.
struct Module {
    imports: Vec<(String, String, TypeRef)>,
    defined_tables: Vec<TableType>,
    /// Defined globals that are immutable `i32.const`s: global index → value.
    const_globals: HashMap<u32, i32>,
    exports: HashMap<String, (ExternalKind, u32)>,
    segments: Vec<Segment>,
    /// The slots the code calls through with `i32.const K; call_indirect`, or `None` when it uses
    /// a table any other way.
    constant_calls: Option<Vec<i32>>,
}

impl Module {
    fn read(bytes: &[u8]) -> Shape<Module> {
        let mut module = Module {
            imports: Vec::new(),
            defined_tables: Vec::new(),
            const_globals: HashMap::new(),
            exports: HashMap::new(),
            segments: Vec::new(),
            constant_calls: Some(Vec::new()),
        };
        let unreadable = |_| "a module does not parse";
        for payload in Parser::new(0).parse_all(bytes) {
            match payload.map_err(unreadable)? {
                Payload::ImportSection(section) => {
                    for import in section.into_imports() {
                        let import = import.map_err(unreadable)?;
                        module.imports.push((import.module.into(), import.name.into(), import.ty));
                    }
                }
                Payload::TableSection(section) => {
                    for table in section {
                        module.defined_tables.push(table.map_err(unreadable)?.ty);
                    }
                }
                Payload::GlobalSection(section) => {
                    let imported =
                        module.imports.iter().filter(|i| matches!(i.2, TypeRef::Global(_))).count();
                    for (defined, global) in section.into_iter().enumerate() {
                        let global = global.map_err(unreadable)?;
                        if let (false, Offset::Const(value)) = (global.ty.mutable, offset(&global.init_expr))
                        {
                            module.const_globals.insert((imported + defined) as u32, value);
                        }
                    }
                }
                Payload::ExportSection(section) => {
                    for export in section {
                        let export = export.map_err(unreadable)?;
                        module.exports.insert(export.name.into(), (export.kind, export.index));
                    }
                }
                Payload::ElementSection(section) => {
                    for element in section {
                        let element = element.map_err(unreadable)?;
                        // Passive segments reach a table through `table.init`, seen in the code.
                        let ElementKind::Active { table_index, offset_expr } = element.kind else { continue };
                        let funcs = match element.items {
                            ElementItems::Functions(items) => {
                                Some(items.into_iter().collect::<Result<Vec<_>, _>>().map_err(unreadable)?)
                            }
                            ElementItems::Expressions(..) => None,
                        };
                        let offset = offset(&offset_expr);
                        module.segments.push(Segment { table: table_index.unwrap_or(0), offset, funcs });
                    }
                }
                Payload::CodeSectionEntry(body) if module.constant_calls.is_some() => {
                    module.constant_calls = constant_calls(&body, module.constant_calls.take());
                }
                Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => {
                    return Err("a module nests modules");
                }
                _ => {}
            }
        }
        Ok(module)
    }

    fn imported_tables(&self) -> impl Iterator<Item = (&str, &str, &TableType)> {
        self.imports.iter().filter_map(|(module, name, ty)| match ty {
            TypeRef::Table(table) => Some((module.as_str(), name.as_str(), table)),
            _ => None,
        })
    }

    /// The module and name of the `index`th imported item of the kind `is_kind` selects.
    fn imported(&self, index: u32, is_kind: fn(&TypeRef) -> bool) -> Option<(&str, &str)> {
        self.imports
            .iter()
            .filter(|(_, _, ty)| is_kind(ty))
            .nth(index as usize)
            .map(|(module, name, _)| (module.as_str(), name.as_str()))
    }
}

fn offset(expr: &wasmparser::ConstExpr<'_>) -> Offset {
    let ops: Vec<_> = expr.get_operators_reader().into_iter().collect();
    match ops.as_slice() {
        [Ok(Operator::GlobalGet { global_index }), Ok(Operator::End)] => Offset::Global(*global_index),
        [Ok(Operator::I32Const { value }), Ok(Operator::End)] => Offset::Const(*value),
        _ => Offset::Other,
    }
}

/// `calls` with the constant slots `body` calls through added; `None` if it reaches a table any
/// other way (or does not parse).
fn constant_calls(body: &wasmparser::FunctionBody<'_>, mut calls: Option<Vec<i32>>) -> Option<Vec<i32>> {
    let mut ops = body.get_operators_reader().ok()?;
    let mut previous = None;
    while !ops.eof() {
        let op = ops.read().ok()?;
        match (&op, previous) {
            (Operator::CallIndirect { table_index: 0, .. }, Some(slot)) => calls.as_mut()?.push(slot),
            (
                Operator::CallIndirect { .. }
                | Operator::ReturnCallIndirect { .. }
                | Operator::TableGet { .. }
                | Operator::TableSet { .. }
                | Operator::TableSize { .. }
                | Operator::TableGrow { .. }
                | Operator::TableFill { .. }
                | Operator::TableCopy { .. }
                | Operator::TableInit { .. },
                _,
            ) => return None,
            _ => {}
        }
        previous = match op {
            Operator::I32Const { value } => Some(value),
            _ => None,
        };
    }
    calls
}

/// A component's core index spaces, as far as the rewrite needs them.
struct Component {
    modules: Vec<Module>,
    instances: Vec<CoreInstance>,
    /// Core tables, each an alias of (core instance, export name).
    tables: Vec<(u32, String)>,
    /// Core globals, likewise.
    globals: Vec<(u32, String)>,
}

/// A module instance's arguments: (import module name, core instance).
type Args = [(String, u32)];

enum CoreInstance {
    Instantiate { module: u32, args: Vec<(String, u32)> },
    FromExports(Vec<(String, ExternalKind, u32)>),
}

impl Component {
    fn read(bytes: &[u8]) -> Shape<Component> {
        if !Parser::is_component(bytes) {
            return Err("not a component");
        }
        let mut component =
            Component { modules: Vec::new(), instances: Vec::new(), tables: Vec::new(), globals: Vec::new() };
        let unreadable = |_| "the component does not parse";
        for payload in outer_sections(bytes) {
            match payload.map_err(unreadable)? {
                Payload::ModuleSection { unchecked_range, .. } => {
                    component
                        .modules
                        .push(Module::read(need(bytes.get(unchecked_range), "a module's bytes")?)?);
                }
                Payload::ComponentSection { .. } => return Err("the component nests components"),
                Payload::InstanceSection(section) => {
                    for instance in section {
                        component.instances.push(match instance.map_err(unreadable)? {
                            Instance::Instantiate { module_index, args } => CoreInstance::Instantiate {
                                module: module_index,
                                args: args.iter().map(|a| (a.name.to_owned(), a.index)).collect(),
                            },
                            Instance::FromExports(exports) => CoreInstance::FromExports(
                                exports.iter().map(|e| (e.name.to_owned(), e.kind, e.index)).collect(),
                            ),
                        });
                    }
                }
                Payload::ComponentAliasSection(section) => {
                    for alias in section {
                        match alias.map_err(unreadable)? {
                            ComponentAlias::CoreInstanceExport {
                                kind: ExternalKind::Table,
                                instance_index,
                                name,
                            } => {
                                component.tables.push((instance_index, name.into()));
                            }
                            ComponentAlias::CoreInstanceExport {
                                kind: ExternalKind::Global,
                                instance_index,
                                name,
                            } => {
                                component.globals.push((instance_index, name.into()));
                            }
                            ComponentAlias::Outer { kind: ComponentOuterAliasKind::CoreModule, .. } => {
                                return Err("the component aliases an outer module");
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(component)
    }

    fn instantiation(&self, instance: u32) -> Option<(u32, &Module, &Args)> {
        match self.instances.get(instance as usize)? {
            CoreInstance::Instantiate { module, args } => {
                Some((*module, self.modules.get(*module as usize)?, args))
            }
            CoreInstance::FromExports(_) => None,
        }
    }

    fn arg(&self, instance: u32, name: &str) -> Option<u32> {
        let (_, _, args) = self.instantiation(instance)?;
        args.iter().find(|(n, _)| n == name).map(|(_, i)| *i)
    }

    fn export_of(&self, instance: u32, name: &str, kind: ExternalKind) -> Option<u32> {
        match self.instances.get(instance as usize)? {
            CoreInstance::FromExports(exports) => {
                exports.iter().find(|(n, k, _)| n == name && *k == kind).map(|(_, _, i)| *i)
            }
            CoreInstance::Instantiate { .. } => None,
        }
    }

    /// What an `Instantiate` instance exports under `name`, if of `kind`.
    fn instance_export(&self, instance: u32, name: &str, kind: ExternalKind) -> Option<u32> {
        let (_, module, _) = self.instantiation(instance)?;
        match module.exports.get(name)? {
            (k, index) if *k == kind => Some(*index),
            _ => None,
        }
    }

    /// The value of core global `global` when it is an alias of an immutable `i32.const` global
    /// a module instance defines.
    fn const_global(&self, global: u32) -> Option<i32> {
        let (instance, name) = self.globals.get(global as usize)?;
        let index = self.instance_export(*instance, name, ExternalKind::Global)?;
        self.instantiation(*instance)?.1.const_globals.get(&index).copied()
    }

    fn instantiations_of(&self, module: u32) -> usize {
        self.instances
            .iter()
            .filter(|i| matches!(i, CoreInstance::Instantiate { module: m, .. } if *m == module))
            .count()
    }

    /// The instances that take `instance` as an instantiation argument.
    fn users(&self, instance: u32) -> impl Iterator<Item = u32> + '_ {
        self.instances.iter().enumerate().filter_map(move |(index, i)| match i {
            CoreInstance::Instantiate { args, .. } if args.iter().any(|(_, a)| *a == instance) => {
                Some(index as u32)
            }
            _ => None,
        })
    }

    /// Decides the rewrite, checking every use of the shared table on the way.
    fn plan(&self) -> Shape<Plan> {
        // The filler: an instance of a module whose one table is `__indirect_function_table`,
        // imported, with one segment on it at an imported global; the one with the longest.
        let (filler, filler_module, env, segment_len, base_global) = need(
            (0..self.instances.len() as u32)
                .filter_map(|instance| {
                    let (module_index, module, _) = self.instantiation(instance)?;
                    let mut tables = module.imported_tables();
                    let (env, name, _) = tables.next()?;
                    if tables.next().is_some() || !module.defined_tables.is_empty() || name != TABLE {
                        return None;
                    }
                    let [segment] = module.segments.as_slice() else { return None };
                    let (Offset::Global(global), Some(funcs)) = (segment.offset, &segment.funcs) else {
                        return None;
                    };
                    Some((instance, module_index, env.to_owned(), funcs.len(), global))
                })
                .max_by_key(|candidate| candidate.3),
            "no module fills an imported function table at an imported base",
        )?;
        if self.instantiations_of(filler_module) != 1 {
            return Err("the filling module is instantiated more than once");
        }
        let module = &self.modules[filler_module as usize];

        // The table it imports: an alias of a table a module instance defines and exports.
        let env_instance = need(self.arg(filler, &env), "the filler's table comes from no instance")?;
        let old_table =
            need(self.export_of(env_instance, TABLE, ExternalKind::Table), "the filler's env has no table")?;
        let (donor, donor_export) = need(self.tables.get(old_table as usize).cloned(), "unknown table")?;
        let donor_table =
            need(self.instance_export(donor, &donor_export, ExternalKind::Table), "no defining module")?;
        let (_, donor_module, _) = need(self.instantiation(donor), "no defining module")?;
        let defined = donor_table.checked_sub(donor_module.imported_tables().count() as u32);
        let table_type =
            *need(defined.and_then(|d| donor_module.defined_tables.get(d as usize)), "table imported")?;
        if donor_module.segments.iter().any(|s| s.table == donor_table) {
            return Err("the defining module fills the table itself");
        }
        if self.tables.iter().filter(|t| t.0 == donor && t.1 == donor_export).count() != 1
            || self.tables.len() != old_table as usize + 1
        {
            return Err("the table is aliased more than once, or other tables follow it");
        }

        // The segment's offset: the constant the global it reads holds.
        let is_global: fn(&TypeRef) -> bool = |ty| matches!(ty, TypeRef::Global(_));
        let (global_from, global_name) =
            need(module.imported(base_global, is_global), "the base is no import")?;
        let global_instance = need(self.arg(filler, global_from), "the base comes from no instance")?;
        let global =
            need(self.export_of(global_instance, global_name, ExternalKind::Global), "no base export")?;
        let base = need(self.const_global(global), "the base is not a constant")?;

        // Every other use of the old table.
        let mut moved_exports = Vec::new();
        let mut copied = Vec::new();
        for (index, instance) in self.instances.iter().enumerate() {
            let index = index as u32;
            match instance {
                CoreInstance::FromExports(exports) => {
                    if !exports.iter().any(|(_, kind, i)| *kind == ExternalKind::Table && *i == old_table) {
                        continue;
                    }
                    if index > filler {
                        moved_exports.push(index);
                    } else if self.users(index).any(|user| user != filler) {
                        return Err("the filler's env is shared");
                    }
                }
                CoreInstance::Instantiate { module: m, args } => {
                    let importer = need(self.modules.get(*m as usize), "an instance of an unknown module")?;
                    for (arg, _) in args.iter().filter(|(_, i)| *i == donor) {
                        let table = importer
                            .imported_tables()
                            .position(|(from, name, _)| from == arg && name == donor_export);
                        let Some(table) = table else { continue };
                        // The fixup: it writes slots of the old table with functions the filler
                        // exports. The filler holds them too; the fixup keeps writing the old table.
                        if index <= filler {
                            return Err("a module instantiated before the filler imports the table");
                        }
                        if importer.constant_calls.as_ref().is_none_or(|calls| !calls.is_empty()) {
                            return Err("a module importing the table calls through it");
                        }
                        for segment in importer.segments.iter().filter(|s| s.table == table as u32) {
                            let Offset::Const(slot) = segment.offset else {
                                return Err("fixup at a dynamic slot");
                            };
                            let funcs = need(segment.funcs.as_ref(), "fixup of expressions")?;
                            let funcs = funcs
                                .iter()
                                .map(|f| self.filler_function(importer, args, filler, *f))
                                .collect::<Option<Vec<_>>>();
                            copied
                                .push((slot, need(funcs, "fixup of a function the filler does not export")?));
                        }
                    }
                }
            }
        }
        // The defining module may call only through slots the fixup writes in both tables.
        let calls = need(donor_module.constant_calls.as_ref(), "the defining module uses the table freely")?;
        let covered = |slot: &i32| {
            copied.iter().any(|(at, funcs)| {
                (i64::from(*at)..i64::from(*at) + funcs.len() as i64).contains(&i64::from(*slot))
            })
        };
        if !calls.iter().all(covered) {
            return Err("the defining module calls a slot only the filler writes");
        }
        Ok(Plan {
            filler,
            filler_module,
            table_type,
            base,
            segment_len,
            copied,
            old_table,
            new_table: self.tables.len() as u32,
            moved_exports,
            modules: self.modules.len(),
        })
    }

    /// The filler's own index of function `func` of `importer`, when that is an import from the
    /// filler's instance.
    fn filler_function(&self, importer: &Module, args: &Args, filler: u32, func: u32) -> Option<u32> {
        let is_func: fn(&TypeRef) -> bool = |ty| matches!(ty, TypeRef::Func(_));
        let (from, name) = importer.imported(func, is_func)?;
        let (_, instance) = args.iter().find(|(arg, _)| arg == from)?;
        (*instance == filler).then_some(())?;
        self.instance_export(filler, name, ExternalKind::Func)
    }
}

/// The rewrite, decided.
struct Plan {
    filler: u32,
    filler_module: u32,
    table_type: TableType,
    base: i32,
    segment_len: usize,
    /// Slots the fixup writes, with the filler's own indices of the functions it writes there.
    copied: Vec<(i32, Vec<u32>)>,
    old_table: u32,
    new_table: u32,
    /// `FromExports` instances after the filler whose table export moves to the new table.
    moved_exports: Vec<u32>,
    modules: usize,
}

impl Plan {
    fn apply(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        use wasm_encoder::{ComponentSectionId, RawSection};
        let mut out = wasm_encoder::Component::new();
        let mut module_index = 0u32;
        let mut instance_index = 0u32;
        for payload in outer_sections(bytes) {
            match payload.ok()? {
                Payload::ModuleSection { unchecked_range, .. } => {
                    let original = bytes.get(unchecked_range)?;
                    let filler =
                        if module_index == self.filler_module { Some(self.filler(original)?) } else { None };
                    let data = filler.as_deref().unwrap_or(original);
                    out.section(&RawSection { id: ComponentSectionId::CoreModule as u8, data });
                    module_index += 1;
                }
                Payload::InstanceSection(section) => {
                    let range = section.range();
                    let first = instance_index;
                    instance_index = instance_index.saturating_add(section.count());
                    let touched = |i: u32| i == self.filler || self.moved_exports.contains(&i);
                    if !(first..instance_index).any(touched) {
                        out.section(&RawSection {
                            id: ComponentSectionId::CoreInstance as u8,
                            data: bytes.get(range)?,
                        });
                        continue;
                    }
                    let mut part = wasm_encoder::InstanceSection::new();
                    for (index, instance) in (first..).zip(section) {
                        self.encode_instance(&mut part, index, instance.ok()?)?;
                        if index == self.filler {
                            // The new table, right after the instance that defines it.
                            out.section(&part);
                            part = wasm_encoder::InstanceSection::new();
                            let mut alias = wasm_encoder::ComponentAliasSection::new();
                            alias.alias(wasm_encoder::Alias::CoreInstanceExport {
                                instance: self.filler,
                                kind: wasm_encoder::ExportKind::Table,
                                name: TABLE,
                            });
                            out.section(&alias);
                        }
                    }
                    if !part.is_empty() {
                        out.section(&part);
                    }
                }
                other => {
                    let (id, range) = other.as_section()?;
                    out.section(&RawSection { id, data: bytes.get(range)? });
                }
            }
        }
        (module_index as usize == self.modules).then(|| out.finish())
    }

    fn encode_instance(
        &self,
        section: &mut wasm_encoder::InstanceSection,
        index: u32,
        instance: Instance<'_>,
    ) -> Option<()> {
        match instance {
            Instance::Instantiate { module_index, args } => {
                section.instantiate(
                    module_index,
                    args.iter().map(|a| (a.name, wasm_encoder::ModuleArg::Instance(a.index))),
                );
            }
            Instance::FromExports(exports) => {
                let moved = self.moved_exports.contains(&index);
                let mut items = Vec::with_capacity(exports.len());
                for export in exports.iter() {
                    let kind = RoundtripReencoder.export_kind(export.kind).ok()?;
                    let table = export.kind == ExternalKind::Table && export.index == self.old_table;
                    items.push((
                        export.name,
                        kind,
                        if moved && table { self.new_table } else { export.index },
                    ));
                }
                section.export_items(items);
            }
        }
        Some(())
    }

    /// The filling module with the table its own.
    fn filler(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        let mut module = wasm_encoder::Module::new();
        let mut filler = Filler { plan: self, table_emitted: false };
        filler.parse_core_module(&mut module, Parser::new(0), bytes).ok()?;
        filler.table_emitted.then(|| module.finish())
    }
}

/// Re-encodes the filling module: the table import dropped and a table of the same type defined
/// in its place (index 0 either way), its segment at the constant base, the fixup's slots added,
/// the table exported.
struct Filler<'a> {
    plan: &'a Plan,
    table_emitted: bool,
}

impl Reencode for Filler<'_> {
    type Error = std::convert::Infallible;

    fn parse_import_section(
        &mut self,
        imports: &mut wasm_encoder::ImportSection,
        section: wasmparser::ImportSectionReader<'_>,
    ) -> Result<(), reencode::Error<Self::Error>> {
        for import in section.into_imports() {
            let import = import?;
            if !matches!(import.ty, TypeRef::Table(_)) {
                let ty = self.entity_type(import.ty)?;
                imports.import(import.module, import.name, ty);
            }
        }
        Ok(())
    }

    fn intersperse_section_hook(
        &mut self,
        module: &mut wasm_encoder::Module,
        _after: Option<wasm_encoder::SectionId>,
        before: Option<wasm_encoder::SectionId>,
    ) -> Result<(), reencode::Error<Self::Error>> {
        // The table section: after imports and functions, before everything else.
        let past_tables = before.is_none_or(|id| id as u8 > wasm_encoder::SectionId::Table as u8);
        if past_tables && !self.table_emitted {
            let mut tables = wasm_encoder::TableSection::new();
            tables.table(self.table_type(self.plan.table_type)?);
            module.section(&tables);
            self.table_emitted = true;
        }
        Ok(())
    }

    fn parse_export_section(
        &mut self,
        exports: &mut wasm_encoder::ExportSection,
        section: wasmparser::ExportSectionReader<'_>,
    ) -> Result<(), reencode::Error<Self::Error>> {
        reencode::utils::parse_export_section(self, exports, section)?;
        exports.export(TABLE, wasm_encoder::ExportKind::Table, 0);
        Ok(())
    }

    fn parse_element_section(
        &mut self,
        elements: &mut wasm_encoder::ElementSection,
        section: wasmparser::ElementSectionReader<'_>,
    ) -> Result<(), reencode::Error<Self::Error>> {
        reencode::utils::parse_element_section(self, elements, section)?;
        for (slot, funcs) in &self.plan.copied {
            let funcs = wasm_encoder::Elements::Functions(Cow::Borrowed(funcs));
            elements.active(None, &wasm_encoder::ConstExpr::i32_const(*slot), funcs);
        }
        Ok(())
    }

    fn parse_element(
        &mut self,
        elements: &mut wasm_encoder::ElementSection,
        element: wasmparser::Element<'_>,
    ) -> Result<(), reencode::Error<Self::Error>> {
        // The filler's one segment (the plan checked it is the only one).
        let ElementKind::Active { table_index, .. } = element.kind else {
            return reencode::utils::parse_element(self, elements, element);
        };
        let items = self.element_items(element.items)?;
        elements.active(table_index, &wasm_encoder::ConstExpr::i32_const(self.plan.base), items);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::component::{Component as Compiled, Linker};
    use wasmtime::{Engine, Store};

    #[test]
    fn a_component_without_the_linked_shape_is_left_as_it_is() {
        let builtin = super::super::BUILTIN_PLAN_CATALOGUE;
        for component in [builtin, b"not wasm".as_slice()] {
            let relinked = own_table(component);
            assert!(matches!(relinked.bytes, Cow::Borrowed(_)));
            assert_eq!(relinked.lazy_slots, None);
        }
    }

    /// The shape componentize-qjs links, in small: `main` defines the table and a function that
    /// calls through slot 3 (as its `cabi_realloc` does); `lib` fills slots 1 and 2 at the imported
    /// `__table_base` and calls through any slot; a fixup writes slot 3 with a function of `lib`.
    /// `main_calls` is the slot `main`'s function calls through.
    fn linked(main_calls: u32) -> Vec<u8> {
        let text = format!(
            r#"(component
              (core module $main
                (type $answer (func (result i32)))
                (table (export "__indirect_function_table") 4 funcref)
                (global (export "lib:table_base") i32 (i32.const 1))
                (func (export "via_main") (result i32) (call_indirect (type $answer) (i32.const {main_calls}))))
              (core instance $main (instantiate $main))
              (alias core export $main "__indirect_function_table" (core table $table))
              (alias core export $main "lib:table_base" (core global $base))
              (core instance $env
                (export "__indirect_function_table" (table $table))
                (export "__table_base" (global $base)))
              (core module $lib
                (type $answer (func (result i32)))
                (import "env" "__table_base" (global $base i32))
                (import "env" "__indirect_function_table" (table 2 funcref))
                (elem (global.get $base) func $ten $twenty)
                (func $ten (result i32) (i32.const 10))
                (func $twenty (result i32) (i32.const 20))
                (func (export "thirty") (result i32) (i32.const 30))
                (func (export "call") (param i32) (result i32) (call_indirect (type $answer) (local.get 0))))
              (core instance $lib (instantiate $lib (with "env" (instance $env))))
              (core module $fixup
                (import "main" "__indirect_function_table" (table 0 funcref))
                (import "lib" "thirty" (func $thirty (result i32)))
                (elem (i32.const 3) func $thirty))
              (core instance (instantiate $fixup (with "main" (instance $main)) (with "lib" (instance $lib))))
              (alias core export $lib "call" (core func $call))
              (alias core export $main "via_main" (core func $via_main))
              (func (export "call") (param "slot" u32) (result u32) (canon lift (core func $call)))
              (func (export "via-main") (result u32) (canon lift (core func $via_main))))"#
        );
        wat::parse_str(text).unwrap()
    }

    /// What the component's exports answer: `call(slot)` for slots 1–3, then `via-main`.
    fn answers(component: &[u8]) -> Vec<u32> {
        try_answers(component).unwrap().into_iter().map(Result::unwrap).collect()
    }

    /// [`answers`], each `Err` with why (the component does not compile or start, a call traps).
    fn try_answers(component: &[u8]) -> Result<Vec<Result<u32, String>>, String> {
        let engine = Engine::default();
        let compiled = Compiled::new(&engine, component).map_err(|e| e.to_string())?;
        let mut store = Store::new(&engine, ());
        let instance = Linker::new(&engine).instantiate(&mut store, &compiled).map_err(|e| e.to_string())?;
        let call =
            instance.get_typed_func::<(u32,), (u32,)>(&mut store, "call").map_err(|e| e.to_string())?;
        let mut answers = Vec::new();
        for slot in 1..=3 {
            answers.push(call.call(&mut store, (slot,)).map(|(answer,)| answer).map_err(|e| e.to_string()));
        }
        let via_main =
            instance.get_typed_func::<(), (u32,)>(&mut store, "via-main").map_err(|e| e.to_string())?;
        answers.push(via_main.call(&mut store, ()).map(|(answer,)| answer).map_err(|e| e.to_string()));
        Ok(answers)
    }

    #[test]
    fn the_filling_module_gets_its_own_table_and_every_slot_answers_as_before() {
        let original = linked(3);
        let relinked = own_table(&original);
        assert_eq!(relinked.lazy_slots, Some(2));
        assert!(matches!(relinked.bytes, Cow::Owned(_)));
        assert_eq!(answers(&original), [10, 20, 30, 30]);
        assert_eq!(answers(&relinked.bytes), [10, 20, 30, 30]);

        // Really moved: the library now exports the table it defines, and only `main` still
        // defines one of its own.
        let component = Component::read(&relinked.bytes).unwrap();
        let lib = &component.modules[1];
        assert_eq!(lib.imported_tables().count(), 0);
        assert_eq!(lib.defined_tables.len(), 1);
        assert_eq!(lib.exports.get(TABLE), Some(&(ExternalKind::Table, 0)));
        assert!(matches!(lib.segments[0].offset, Offset::Const(1)));
    }

    #[test]
    fn a_defining_module_that_calls_a_slot_only_the_library_fills_keeps_the_shared_table() {
        // `main` calls through slot 1, which only `lib` writes: with the table moved, `main`'s
        // table would be empty there.
        let original = linked(1);
        assert_eq!(
            Component::read(&original).and_then(|c| c.plan()).err(),
            Some("the defining module calls a slot only the filler writes")
        );
        let relinked = own_table(&original);
        assert_eq!(relinked.lazy_slots, None);
        assert_eq!(answers(&relinked.bytes), [10, 20, 30, 10]);
    }

    #[test]
    fn damaged_components_are_left_as_they_are_or_rewritten_into_valid_ones() {
        let original = linked(3);
        let mut damaged: Vec<Vec<u8>> =
            (0..original.len()).step_by(7).map(|n| original[..n].to_vec()).collect();
        for at in (8..original.len()).step_by(5) {
            let mut flipped = original.clone();
            flipped[at] ^= 0x41;
            damaged.push(flipped);
        }
        let (mut rewritten_count, mut compared) = (0, 0);
        for bytes in &damaged {
            let relinked = own_table(bytes);
            match relinked.bytes {
                Cow::Borrowed(same) => assert_eq!(same, bytes.as_slice()),
                Cow::Owned(rewritten) => {
                    assert!(valid(&rewritten), "a rewrite is always valid");
                    // And changes cost, never behaviour: a damaged component that still runs
                    // answers as it did (one that no longer runs may not run either way).
                    if let Ok(before) = try_answers(bytes) {
                        assert_eq!(try_answers(&rewritten), Ok(before), "a rewrite answers as the original");
                        compared += 1;
                    }
                    rewritten_count += 1;
                }
            }
        }
        assert!(rewritten_count > 0, "some damage leaves the shape the rewrite applies to");
        assert!(compared > 0, "some rewritten damaged component still runs, and was compared");
    }
}
