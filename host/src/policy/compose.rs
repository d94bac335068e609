//! componentize-qjs (the JavaScript toolchain, as published on npm and crates.io) hands out a
//! *composition*: the policy component — QuickJS with the author's module already evaluated —
//! wired to a small stub component that answers its `local:init/module-loader` import. wizer
//! cannot snapshot a component made of components, and the host answers that import itself
//! (every call "not available": a policy loads no modules at run time), so the loader takes the
//! policy component out of the composition and loads it alone.
//!
//! Only that shape is unwrapped, and strictly, so that loading the policy alone runs exactly the
//! code the composition would:
//! * exactly two nested components, each instantiated once: the policy (it imports the module
//!   loader) and the stub (it imports nothing and exports the module loader, nothing else);
//! * the outer component makes nothing of its own: no core module, core instance or canonical
//!   function, no instance from exports, no component or module taken from an instance;
//! * from the stub's instance it takes the module loader only; everything it exports is the
//!   policy's (a function or instance of the policy's instance) under the policy's own name for
//!   it, it exports every function and instance the policy does, and it does not import the
//!   module loader itself.
//!
//! Anything else (a "guard" around the policy, say, however it is wired) is loaded as it is, and
//! refused if it is not a policy.

use super::runtime::MODULE_LOADER;
use wasmparser::{
    ComponentAlias, ComponentExternalKind, ComponentInstance, ComponentOuterAliasKind, ComponentTypeRef,
    Parser, Payload,
};

/// The component to load for `module`: the policy component inside a componentize-qjs
/// composition, or `module` itself.
pub fn policy_component(module: &[u8]) -> &[u8] {
    composed_policy(module).unwrap_or(module)
}

/// A component nested in the outermost one: where it is, what it imports and exports.
struct Nested {
    range: std::ops::Range<usize>,
    imports: Vec<String>,
    exports: Vec<String>,
    /// The names of the functions and instances it exports.
    callable: Vec<String>,
}

impl Nested {
    fn is_policy(&self) -> bool {
        self.imports.iter().any(|name| is_loader(name))
    }

    fn is_stub(&self) -> bool {
        self.imports.is_empty() && matches!(self.exports.as_slice(), [name] if is_loader(name))
    }
}

/// The module loader's interface name, with or without a version.
fn is_loader(name: &str) -> bool {
    name.strip_prefix(MODULE_LOADER).is_some_and(|rest| rest.is_empty() || rest.starts_with('@'))
}

/// Where an instance or function of the outer component comes from.
#[derive(Clone, PartialEq, Eq)]
enum Origin {
    /// The host (an import).
    Import,
    /// The policy's instance (`None`), or what it exports under that name (an export of an
    /// exported instance is `instance#name`, a name no top-level export has).
    Policy(Option<String>),
    /// The stub's instance.
    Stub,
    /// The module loader the stub exports.
    Loader,
}

fn composed_policy(module: &[u8]) -> Option<&[u8]> {
    if !Parser::is_component(module) {
        return None;
    }
    let mut nested: Vec<Nested> = Vec::new();
    // The outer component's index spaces that matter: components, instances, functions.
    let (mut components, mut instances, mut funcs) = (Vec::new(), Vec::new(), Vec::new());
    let mut instantiated: Vec<usize> = Vec::new();
    let mut exported: Vec<String> = Vec::new();
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(module) {
        let payload = payload.ok()?;
        match (depth, payload) {
            (_, Payload::Version { .. }) => depth += 1,
            (_, Payload::End(_)) => depth = depth.saturating_sub(1),
            (2, Payload::ComponentImportSection(imports)) => {
                for import in imports {
                    nested.last_mut()?.imports.push(import.ok()?.name.name.to_owned());
                }
            }
            (2, Payload::ComponentExportSection(exports)) => {
                for export in exports {
                    let export = export.ok()?;
                    let nested = nested.last_mut()?;
                    nested.exports.push(export.name.name.to_owned());
                    if matches!(export.kind, ComponentExternalKind::Func | ComponentExternalKind::Instance) {
                        nested.callable.push(export.name.name.to_owned());
                    }
                }
            }
            (1, Payload::ComponentSection { unchecked_range, .. }) => {
                components.push(nested.len());
                nested.push(Nested {
                    range: unchecked_range,
                    imports: Vec::new(),
                    exports: Vec::new(),
                    callable: Vec::new(),
                });
            }
            (1, Payload::ComponentImportSection(imports)) => {
                for import in imports {
                    let import = import.ok()?;
                    if is_loader(import.name.name) {
                        return None;
                    }
                    match import.ty {
                        ComponentTypeRef::Instance(_) => instances.push(Origin::Import),
                        ComponentTypeRef::Func(_) => funcs.push(Origin::Import),
                        ComponentTypeRef::Type(_) => {}
                        _ => return None,
                    }
                }
            }
            (1, Payload::ComponentTypeSection(_) | Payload::CustomSection(_)) => {}
            (1, Payload::ComponentInstanceSection(section)) => {
                for instance in section {
                    let ComponentInstance::Instantiate { component_index, .. } = instance.ok()? else {
                        return None;
                    };
                    let index = *components.get(component_index as usize)?;
                    instantiated.push(index);
                    instances.push(if nested[index].is_policy() {
                        Origin::Policy(None)
                    } else {
                        Origin::Stub
                    });
                }
            }
            (1, Payload::ComponentAliasSection(section)) => {
                for alias in section {
                    match alias.ok()? {
                        ComponentAlias::InstanceExport { kind, instance_index, name } => {
                            let from = instances.get(instance_index as usize)?.clone();
                            let named = match &from {
                                Origin::Policy(None) => Origin::Policy(Some(name.to_owned())),
                                Origin::Policy(Some(parent)) => {
                                    Origin::Policy(Some(format!("{parent}#{name}")))
                                }
                                other => other.clone(),
                            };
                            match (kind, from) {
                                (ComponentExternalKind::Type, _) => {}
                                (ComponentExternalKind::Instance, Origin::Stub) if is_loader(name) => {
                                    instances.push(Origin::Loader)
                                }
                                (ComponentExternalKind::Instance, Origin::Import | Origin::Policy(_)) => {
                                    instances.push(named)
                                }
                                (ComponentExternalKind::Func, Origin::Import | Origin::Policy(_)) => {
                                    funcs.push(named)
                                }
                                _ => return None,
                            }
                        }
                        ComponentAlias::Outer { kind: ComponentOuterAliasKind::Type, .. } => {}
                        _ => return None,
                    }
                }
            }
            (1, Payload::ComponentExportSection(exports)) => {
                for export in exports {
                    let export = export.ok()?;
                    let space = match export.kind {
                        ComponentExternalKind::Type => continue,
                        ComponentExternalKind::Func => &mut funcs,
                        ComponentExternalKind::Instance => &mut instances,
                        _ => return None,
                    };
                    // The policy's own export, under its own name.
                    let name = export.name.name.to_owned();
                    let policys = Origin::Policy(Some(name.clone()));
                    if space.get(export.index as usize) != Some(&policys) {
                        return None;
                    }
                    space.push(policys);
                    exported.push(name);
                }
            }
            // Code of the outer component's own, or anything not expected there.
            (1, _) => return None,
            _ => {}
        }
    }
    let [first, second] = nested.as_slice() else { return None };
    let (policy, stub) = if first.is_policy() { (first, second) } else { (second, first) };
    instantiated.sort_unstable();
    let each_once = instantiated == [0, 1];
    let all_exported = policy.callable.iter().all(|name| exported.contains(name));
    if each_once && all_exported && policy.is_policy() && stub.is_stub() {
        module.get(policy.range.clone())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::policy_component;

    /// The parts of a composition a test changes: what the policy exports besides `evaluate`,
    /// what the stub's loader instance exports besides `load`, what the stub exports besides the
    /// loader, what the outer component holds besides the two instances, and what it exports.
    #[derive(Default)]
    struct Shape {
        policy: &'static str,
        loader: &'static str,
        stub: &'static str,
        outer: &'static str,
        export: Option<&'static str>,
    }

    /// A composition as componentize-qjs makes one (policy, stub, the policy's exports
    /// re-exported), changed by `shape`.
    fn composition(shape: Shape) -> Vec<u8> {
        let Shape { policy, loader, stub, outer, export } = shape;
        let export = export.unwrap_or(r#"(export "evaluate" (func $policy "evaluate"))"#);
        let text = format!(
            r#"(component
                (component $policy
                  (import "local:init/module-loader" (instance (export "load" (func (param "id" u32)))))
                  (core module $m (func (export "evaluate")))
                  (core instance $i (instantiate $m))
                  (func (export "evaluate") (canon lift (core func $i "evaluate")))
                  {policy})
                (component $stub
                  (core module $m (func (export "load") (param i32)) (func (export "evaluate")))
                  (core instance $i (instantiate $m))
                  (func $load (param "id" u32) (canon lift (core func $i "load")))
                  (func $guard (canon lift (core func $i "evaluate")))
                  (instance $loader (export "load" (func $load)) {loader})
                  (export "local:init/module-loader" (instance $loader))
                  {stub})
                (instance $stub (instantiate $stub))
                (instance $policy (instantiate $policy
                  (with "local:init/module-loader" (instance $stub "local:init/module-loader"))))
                {outer}
                {export})"#
        );
        wat::parse_str(text).unwrap()
    }

    #[test]
    fn the_policy_is_taken_out_of_a_composition_of_policy_and_loader_stub_only() {
        let plain = composition(Shape::default());
        let loaded = policy_component(&plain);
        assert!(loaded.len() < plain.len(), "the policy alone is loaded");
        assert!(wasmparser::Parser::is_component(loaded));
        assert_eq!(policy_component(b"not wasm"), b"not wasm");
        assert_eq!(policy_component(loaded), loaded, "a policy alone is loaded as it is");
        let other = r#"(func (export "other") (canon lift (core func $i "evaluate")))"#;
        let both = composition(Shape {
            policy: other,
            export: Some(
                r#"(export "evaluate" (func $policy "evaluate")) (export "other" (func $policy "other"))"#,
            ),
            ..Shape::default()
        });
        assert!(policy_component(&both).len() < both.len(), "each of the policy's exports re-exported");

        // Anything that could run besides the policy keeps the composition whole (and so
        // refused as a policy).
        let guard = r#"(component $guard (core module $m (func (export "evaluate")))
                         (core instance $i (instantiate $m))
                         (func (export "evaluate") (canon lift (core func $i "evaluate"))))"#;
        let own_code = r#"(core module $own (func (export "evaluate")))
                          (core instance $own (instantiate $own))
                          (func $own (canon lift (core func $own "evaluate")))"#;
        let from_the_loader = r#"(alias export $stub "local:init/module-loader" (instance $loader))
                                 (alias export $loader "evaluate" (func $guarded))"#;
        for (what, shape) in [
            ("a third component", Shape { outer: guard, ..Shape::default() }),
            ("code of its own", Shape { outer: own_code, ..Shape::default() }),
            (
                "a stub that exports more",
                Shape { stub: r#"(export "evaluate" (func $guard))"#, ..Shape::default() },
            ),
            (
                "a stub exporting a second loader-like name",
                Shape {
                    stub: r#"(export "local:init/module-loader-guard" (func $guard))"#,
                    ..Shape::default()
                },
            ),
            (
                "an export taken from the stub's loader instance",
                Shape {
                    loader: r#"(export "evaluate" (func $guard))"#,
                    outer: from_the_loader,
                    export: Some(r#"(export "evaluate" (func $guarded))"#),
                    ..Shape::default()
                },
            ),
            (
                "the policy's functions exported under each other's names",
                Shape {
                    policy: other,
                    export: Some(
                        r#"(export "evaluate" (func $policy "other")) (export "other" (func $policy "evaluate"))"#,
                    ),
                    ..Shape::default()
                },
            ),
            ("a function of the policy not exported", Shape { policy: other, ..Shape::default() }),
            ("nothing exported", Shape { export: Some(""), ..Shape::default() }),
        ] {
            let bytes = composition(shape);
            assert_eq!(policy_component(&bytes).len(), bytes.len(), "{what}: loaded whole");
        }
    }
}
