//! `registry-token policy inspect FILE.wasm|builtin:NAME [--json]`: what a policy component is —
//! the contract it implements, the metadata its SDK embedded, its imports, digest, size and
//! compile time — without settings and without running it.

use crate::config::PolicyModule;
use crate::policy::{self, ModuleInfo};
use std::process::ExitCode;

/// Prints `module`'s description; exits 1 when the host would not load it (no world it knows,
/// or an import it refuses).
pub(super) fn run(module: &str, json: bool) -> Result<ExitCode, String> {
    let parsed = PolicyModule::try_from(module.to_owned())?;
    let bytes: std::borrow::Cow<'static, [u8]> = match &parsed {
        PolicyModule::Builtin(builtin) => builtin.wasm().into(),
        PolicyModule::File(path) => {
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?.into()
        }
    };
    let info = policy::inspect(&bytes).map_err(|e| format!("{module}: {e}"))?;
    if json {
        let mut value = serde_json::to_value(&info).map_err(|e| e.to_string())?;
        if let Some(object) = value.as_object_mut() {
            object.insert("source".to_owned(), parsed.to_string().into());
        }
        let text = serde_json::to_string_pretty(&value).map_err(|e| e.to_string())?;
        println!("{text}");
    } else {
        print!("{}", describe(&parsed.to_string(), &info));
    }
    let loadable = info.contract.is_some() && info.refused.is_none();
    Ok(if loadable { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The text form.
fn describe(source: &str, info: &ModuleInfo) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "{source}");
    let _ = writeln!(out, "  digest     {}", info.digest);
    let _ = writeln!(out, "  size       {:.1} KiB ({} bytes)", info.size as f64 / 1024.0, info.size);
    if info.composition {
        let _ = writeln!(out, "  shape      a componentize-qjs composition: its policy component is loaded");
    }
    if let Some(slots) = info.lazy_table_slots {
        let _ = writeln!(
            out,
            "  table      {slots} function-table slots filled lazily (the library's table made its own)"
        );
    }
    match (&info.world, &info.world_error) {
        (Some(world), _) => {
            let _ = writeln!(out, "  world      {world} (contract {})", info.version());
        }
        (None, Some(error)) => {
            let _ = writeln!(out, "  world      none the host loads ({}): {error}", policy::world_name());
        }
        (None, None) => {
            let _ = writeln!(out, "  world      unknown");
        }
    }
    let _ = writeln!(out, "  compile    {:.1} ms", info.compile_ms);
    match &info.metadata {
        None => {
            let _ = writeln!(out, "  metadata   no metadata (not built with a registry-policy SDK)");
        }
        Some(meta) => {
            let text = |key: &str| meta.get(key).and_then(|v| v.as_str()).unwrap_or("");
            let _ = writeln!(out, "  metadata   {} {}", text("name"), text("version"));
            if !text("description").is_empty() {
                let _ = writeln!(out, "    description  {}", text("description"));
            }
            let authors: Vec<&str> = meta
                .get("authors")
                .and_then(|v| v.as_array())
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str())
                .collect();
            if !authors.is_empty() {
                let _ = writeln!(out, "    authors      {}", authors.join(", "));
            }
            let _ = writeln!(out, "    built with   {} against {}", text("sdk"), text("wit"));
            match meta.get("settings_schema").and_then(|v| v.as_str()) {
                None => {
                    let _ = writeln!(out, "    settings     no schema");
                }
                Some(schema) => match serde_json::from_str::<serde_json::Value>(schema) {
                    Ok(schema) => {
                        let keys: Vec<&String> = schema
                            .get("properties")
                            .and_then(|p| p.as_object())
                            .into_iter()
                            .flatten()
                            .map(|(k, _)| k)
                            .collect();
                        let title = schema.get("title").and_then(|t| t.as_str()).unwrap_or("a JSON schema");
                        let _ = writeln!(
                            out,
                            "    settings     {title} ({} bytes); keys: {}",
                            schema.to_string().len(),
                            keys.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")
                        );
                    }
                    Err(e) => {
                        let _ = writeln!(out, "    settings     a schema that is not JSON ({e})");
                    }
                },
            }
        }
    }
    match &info.refused {
        None => {
            let _ = writeln!(out, "  imports    {}, all offered by the host", info.imports.len());
        }
        Some(reason) => {
            let _ =
                writeln!(out, "  imports    {}; the host refuses to link it: {reason}", info.imports.len());
        }
    }
    for import in &info.imports {
        let mark = if import.refused { "  (refused)" } else { "" };
        let _ = writeln!(out, "    {:<46} {}{mark}", import.name, import.kind);
    }
    out
}
