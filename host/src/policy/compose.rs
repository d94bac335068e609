//! componentize-qjs (the JavaScript toolchain, as published on npm and crates.io) hands out a
//! *composition*: the policy component — QuickJS with the author's module already evaluated —
//! wired to a small stub component that answers its `local:init/module-loader` import. wizer
//! cannot snapshot a component made of components, and the host answers that import itself
//! (every call "not available": a policy loads no modules at run time), so the loader takes the
//! policy component out of the composition and loads it alone.
//!
//! Only that shape is unwrapped, and strictly: a component with no code of its own (no core
//! module, core instance or canonical function: nothing it exports can be made by it), exactly
//! two nested components, one importing the module loader (the policy) and one exporting the
//! module loader and nothing else (the stub), and no module loader among its own imports. Then
//! everything the composition can export comes from the policy: loading the policy alone runs
//! the same code. Anything else (a "guard" around the policy, say) is loaded as it is, and
//! refused if it is not a policy.

use super::runtime::MODULE_LOADER;
use wasmparser::{Parser, Payload};

/// The component to load for `module`: the policy component inside a componentize-qjs
/// composition, or `module` itself.
pub fn policy_component(module: &[u8]) -> &[u8] {
    composed_policy(module).unwrap_or(module)
}

/// A component nested in the outermost one: where it is, and how it names the module loader.
struct Nested {
    range: std::ops::Range<usize>,
    imports_loader: bool,
    exports: Vec<String>,
}

fn composed_policy(module: &[u8]) -> Option<&[u8]> {
    if !Parser::is_component(module) {
        return None;
    }
    let mut nested: Vec<Nested> = Vec::new();
    let mut outer_imports_loader = false;
    let mut outer_has_code = false;
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(module) {
        let payload = payload.ok()?;
        match payload {
            Payload::Version { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentSection { unchecked_range, .. } if depth == 1 => {
                nested.push(Nested { range: unchecked_range, imports_loader: false, exports: Vec::new() });
            }
            Payload::ModuleSection { .. }
            | Payload::InstanceSection(_)
            | Payload::ComponentCanonicalSection(_)
                if depth == 1 =>
            {
                outer_has_code = true;
            }
            Payload::ComponentImportSection(imports) if depth <= 2 => {
                for import in imports {
                    if !import.ok()?.name.name.starts_with(MODULE_LOADER) {
                        continue;
                    }
                    match (depth, nested.last_mut()) {
                        (1, _) => outer_imports_loader = true,
                        (_, Some(component)) => component.imports_loader = true,
                        (_, None) => {}
                    }
                }
            }
            Payload::ComponentExportSection(exports) if depth == 2 => {
                for export in exports {
                    let name = export.ok()?.name.name.to_owned();
                    if let Some(component) = nested.last_mut() {
                        component.exports.push(name);
                    }
                }
            }
            _ => {}
        }
    }
    if outer_imports_loader || outer_has_code {
        return None;
    }
    let [first, second] = nested.as_slice() else { return None };
    let (policy, stub) = if first.imports_loader { (first, second) } else { (second, first) };
    let stub_only_loads =
        !stub.imports_loader && stub.exports.iter().all(|name| name.starts_with(MODULE_LOADER));
    if policy.imports_loader && stub_only_loads { module.get(policy.range.clone()) } else { None }
}

#[cfg(test)]
mod tests {
    use super::policy_component;

    /// A composition as componentize-qjs makes one, with `extra` inside the outer component and
    /// `stub_extra` inside the stub.
    fn composition(extra: &str, stub_extra: &str) -> Vec<u8> {
        let text = format!(
            r#"(component
                (component $policy
                  (import "local:init/module-loader" (instance (export "load" (func (param "id" u32)))))
                  (core module $m (func (export "evaluate")))
                  (core instance $i (instantiate $m))
                  (func (export "evaluate") (canon lift (core func $i "evaluate"))))
                (component $stub
                  (core module $m (func (export "load") (param i32)))
                  (core instance $i (instantiate $m))
                  (func $load (param "id" u32) (canon lift (core func $i "load")))
                  (instance $loader (export "load" (func $load)))
                  (export "local:init/module-loader" (instance $loader))
                  {stub_extra})
                (instance $stub (instantiate $stub))
                (instance $policy (instantiate $policy
                  (with "local:init/module-loader" (instance $stub "local:init/module-loader"))))
                {extra}
                (export "evaluate" (func $policy "evaluate")))"#
        );
        wat::parse_str(text).unwrap()
    }

    #[test]
    fn the_policy_is_taken_out_of_a_composition_of_policy_and_loader_stub_only() {
        let plain = composition("", "");
        let loaded = policy_component(&plain);
        assert!(loaded.len() < plain.len(), "the policy alone is loaded");
        assert!(wasmparser::Parser::is_component(loaded));

        // Anything that could run besides the policy keeps the composition whole (and so
        // refused as a policy): a third component, code of the outer one's own, a stub that
        // exports more than the loader.
        let guard = r#"(component $guard (core module $m (func (export "evaluate")))
                         (core instance $i (instantiate $m))
                         (func (export "evaluate") (canon lift (core func $i "evaluate"))))"#;
        let own_code = r#"(core module $own (func (export "evaluate")))
                          (core instance $own (instantiate $own))
                          (func $own (canon lift (core func $own "evaluate")))"#;
        let stub_more = r#"(export "evaluate" (func $load))"#;
        for (what, bytes) in [
            ("a third component", composition(guard, "")),
            ("code of its own", composition(own_code, "")),
            ("a stub that exports more", composition("", stub_more)),
        ] {
            assert_eq!(policy_component(&bytes).len(), bytes.len(), "{what}: loaded whole");
        }
    }
}
