//! What a policy component is, without its settings: the contract version it implements, the
//! metadata an SDK embedded (`registry-policy-metadata`), its imports (and whether the host would
//! refuse one), its digest, size and how long it takes to compile. `policy inspect` prints it.
//! (The bundle code reads the contract version with `policy::wit_version`, from names alone.)

use super::runtime::Runtime;
use super::{Contract, Limits, sha256_hex};
use serde::Serialize;
use std::time::Instant;

/// The custom section the guest SDKs embed (`registry_policy::__private::SECTION`).
pub const METADATA_SECTION: &str = "registry-policy-metadata";

/// Everything `policy inspect` says about a component.
#[derive(Clone, Debug, Serialize)]
pub struct ModuleInfo {
    /// `sha256:<hex>` of the bytes, as the ledger and `/readyz` name the policy.
    pub digest: String,
    /// Bytes.
    pub size: usize,
    /// The contract version it implements, if any.
    pub contract: Option<Contract>,
    /// The world, `stellaops:registry-policy/policy@0.2.0`, if it implements one.
    pub world: Option<String>,
    /// Why it implements none of the worlds the host loads.
    pub world_error: Option<String>,
    /// The SDK's metadata (name, version, description, authors, wit, sdk, settings_schema); `None`
    /// for a component without the section ("no metadata").
    pub metadata: Option<serde_json::Value>,
    /// What the component imports.
    pub imports: Vec<Import>,
    /// Why the host would refuse to link it (an import it does not offer), if it would.
    pub refused: Option<String>,
    /// Milliseconds to compile it with the server's engine.
    pub compile_ms: f64,
    /// A componentize-qjs composition: the policy component inside it is what the host loads (and
    /// what the imports above are of).
    pub composition: bool,
    /// A dynamically linked component whose library the host gives a function table of its own:
    /// the slots wasmtime then fills lazily instead of at every instantiation (`policy/relink.rs`).
    pub lazy_table_slots: Option<usize>,
}

/// One import of the component.
#[derive(Clone, Debug, Serialize)]
pub struct Import {
    /// `wasi:cli/environment@0.2.3`.
    pub name: String,
    /// `instance`, `func`, `type`, ...
    pub kind: &'static str,
    /// Whether the host's refusal names this import.
    pub refused: bool,
}

/// Why a component could not be inspected.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The engine could not be set up.
    #[error("cannot set up the policy runtime: {0}")]
    Runtime(String),
    /// Not a component wasmtime compiles.
    #[error("not a usable WebAssembly component: {0}")]
    Compile(String),
    /// The metadata section is not JSON.
    #[error("its {METADATA_SECTION} section is not JSON: {0}")]
    Metadata(String),
}

impl ModuleInfo {
    /// `0.2.0`, or `unknown`.
    pub fn version(&self) -> &'static str {
        self.contract.map_or("unknown", Contract::version)
    }
}

/// Inspects `module` with an engine configured as the server's is (default limits).
pub fn inspect(module: &[u8]) -> Result<ModuleInfo, InspectError> {
    let runtime = Runtime::new(Limits::default(), None).map_err(|e| InspectError::Runtime(e.to_string()))?;
    let metadata = metadata(module)?;
    let loaded = super::compose::policy_component(module);
    let relinked = super::relink::own_table(loaded);
    let started = Instant::now();
    let component =
        runtime.compile(&relinked.bytes).map_err(|e| InspectError::Compile(e.root_cause().to_string()))?;
    let compile_ms = started.elapsed().as_secs_f64() * 1000.0;

    let refused = runtime.refused_imports(&component);
    let imports = component
        .component_type()
        .imports(runtime.engine())
        .map(|(name, item)| Import {
            name: name.to_owned(),
            kind: kind(&item.ty),
            refused: refused.as_deref().is_some_and(|why| why.contains(&format!("`{name}`"))),
        })
        .collect();
    let (contract, world_error) = match runtime.pre_ignoring_imports(&component) {
        Ok(pre) => (Some(pre.contract()), None),
        Err(reason) => (None, Some(reason)),
    };
    Ok(ModuleInfo {
        digest: sha256_hex(module),
        size: module.len(),
        contract,
        world: contract.map(Contract::world),
        world_error,
        metadata,
        imports,
        refused,
        compile_ms,
        composition: loaded.len() != module.len(),
        lazy_table_slots: relinked.lazy_slots,
    })
}

fn kind(item: &wasmtime::component::types::ComponentItem) -> &'static str {
    use wasmtime::component::types::ComponentItem;
    match item {
        ComponentItem::ComponentFunc(_) => "func",
        ComponentItem::CoreFunc(_) => "core func",
        ComponentItem::Module(_) => "module",
        ComponentItem::Component(_) => "component",
        ComponentItem::ComponentInstance(_) => "instance",
        ComponentItem::Type(_) => "type",
        ComponentItem::Resource(_) => "resource",
    }
}

/// The first `registry-policy-metadata` custom section anywhere in the component (the SDK's lands
/// in the core module inside it).
fn metadata(module: &[u8]) -> Result<Option<serde_json::Value>, InspectError> {
    for payload in wasmparser::Parser::new(0).parse_all(module) {
        let Ok(payload) = payload else {
            // Compilation reports malformed bytes with a better message.
            return Ok(None);
        };
        if let wasmparser::Payload::CustomSection(section) = payload
            && section.name() == METADATA_SECTION
        {
            return serde_json::from_slice(section.data())
                .map(Some)
                .map_err(|e| InspectError::Metadata(e.to_string()));
        }
    }
    Ok(None)
}
