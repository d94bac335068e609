//! componentize-qjs (the JavaScript toolchain, as published on npm and crates.io) hands out a
//! *composition*: the policy component — QuickJS with the author's module already evaluated —
//! wired to a small stub component that answers its `local:init/module-loader` import. wizer
//! cannot snapshot a component made of components, and the host answers that import itself
//! (every call "not available": a policy loads no modules at run time), so the loader takes the
//! policy component out of the composition and loads it alone.
//!
//! Only that shape is unwrapped: a component whose own imports do not name the module loader,
//! with exactly one nested component that imports it. Anything else is loaded as it is (and
//! refused, as before, if it is not a policy).

use super::runtime::MODULE_LOADER;
use wasmparser::{Parser, Payload};

/// The component to load for `module`: the policy component inside a componentize-qjs
/// composition, or `module` itself.
pub fn policy_component(module: &[u8]) -> &[u8] {
    composed_policy(module).unwrap_or(module)
}

fn composed_policy(module: &[u8]) -> Option<&[u8]> {
    if !Parser::is_component(module) {
        return None;
    }
    // The ranges of the outermost component's nested components, and which of them import the
    // module loader.
    let mut nested: Vec<(std::ops::Range<usize>, bool)> = Vec::new();
    let mut outer_imports_loader = false;
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(module) {
        let payload = payload.ok()?;
        match payload {
            Payload::Version { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentSection { unchecked_range, .. } if depth == 1 => {
                nested.push((unchecked_range, false));
            }
            Payload::ComponentImportSection(imports) if depth <= 2 => {
                for import in imports {
                    let name = import.ok()?.name.name;
                    if !name.starts_with(MODULE_LOADER) {
                        continue;
                    }
                    match (depth, nested.last_mut()) {
                        (1, _) => outer_imports_loader = true,
                        (_, Some((_, imports_loader))) => *imports_loader = true,
                        (_, None) => {}
                    }
                }
            }
            _ => {}
        }
    }
    let mut with_loader = nested.into_iter().filter(|(_, imports_loader)| *imports_loader);
    match (outer_imports_loader, with_loader.next(), with_loader.next()) {
        (false, Some((range, _)), None) => module.get(range),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_component_that_is_no_composition_is_loaded_as_it_is() {
        let builtin = super::super::BUILTIN_PLAN_CATALOGUE;
        assert!(composed_policy(builtin).is_none());
        assert_eq!(policy_component(builtin).len(), builtin.len());
        assert_eq!(policy_component(b"not wasm"), b"not wasm");
    }
}
