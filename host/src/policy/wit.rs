//! Which version of the WIT contract a component was built against, read from the component's
//! binary: no compilation, so a bundle can be described (and refused) cheaply. (`inspect` type-
//! checks a component against each world instead, which needs a compilation.)

use wasmparser::{Parser, Payload};

/// The contract's package, as component import and export names spell it
/// (`stellaops:registry-policy/types@0.1.0`).
const PACKAGE: &str = "stellaops:registry-policy/";

/// The version of the `stellaops:registry-policy` package `component` imports or exports at its
/// top level (a guest built against the world `policy` imports the package's `types` interface,
/// named with the version): `0.1.0`. An error when the bytes are not a component, name no version
/// of the package, or name two.
pub fn wit_version(component: &[u8]) -> Result<String, String> {
    if !Parser::is_component(component) {
        return Err("not a WebAssembly component".to_owned());
    }
    let mut versions: Vec<String> = Vec::new();
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(component) {
        let payload = payload.map_err(|e| format!("not a readable component: {e}"))?;
        let mut names = Vec::new();
        match payload {
            Payload::Version { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            // Only the outermost component's names are its contract; nested ones are its parts.
            Payload::ComponentImportSection(imports) if depth == 1 => {
                for import in imports {
                    names.push(import.map_err(|e| format!("an unreadable import: {e}"))?.name.name);
                }
            }
            Payload::ComponentExportSection(exports) if depth == 1 => {
                for export in exports {
                    names.push(export.map_err(|e| format!("an unreadable export: {e}"))?.name.name);
                }
            }
            _ => {}
        }
        for name in names {
            if let Some((_, version)) = name.strip_prefix(PACKAGE).and_then(|rest| rest.split_once('@'))
                && !versions.iter().any(|v| v == version)
            {
                versions.push(version.to_owned());
            }
        }
    }
    match versions.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(format!("it names no version of {}", PACKAGE.trim_end_matches('/'))),
        many => Err(format!(
            "it names several versions of {}: {}",
            PACKAGE.trim_end_matches('/'),
            many.join(", ")
        )),
    }
}

/// The WIT versions this host loads guests of, newest first.
pub fn supported_wit_versions() -> Vec<&'static str> {
    super::Contract::ALL.iter().map(|contract| contract.version()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_is_read_from_the_component_for_each_contract() {
        assert_eq!(wit_version(super::super::BUILTIN_PLAN_CATALOGUE).unwrap(), "0.2.0");
        let older = std::fs::read(test_support::PLAN_CATALOGUE_V0_1_WASM).unwrap();
        assert_eq!(wit_version(&older).unwrap(), "0.1.0");
        assert_eq!(supported_wit_versions(), vec!["0.2.0", "0.1.0"]);
    }

    #[test]
    fn bytes_that_are_not_a_component_are_refused() {
        assert_eq!(wit_version(b"not wasm").unwrap_err(), "not a WebAssembly component");
        // A core module (the empty one) is not a component either.
        assert_eq!(wit_version(b"\0asm\x01\0\0\0").unwrap_err(), "not a WebAssembly component");
    }
}
