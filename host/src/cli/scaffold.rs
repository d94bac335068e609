//! `registry-token policy new NAME [--lang rust|js]`: a ready-to-build policy project — its source,
//! a `cases.yaml` whose cases pass, and a README of the four commands from build to bench.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The language of a new policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum Lang {
    /// A Rust crate built for wasm32-wasip2 with the `registry-policy` SDK.
    Rust,
    /// A JavaScript module built with componentize-qjs and the JavaScript SDK.
    Js,
}

const CASES: &str = include_str!("../../templates/cases.yaml");
const RUST_CARGO: &str = include_str!("../../templates/rust/Cargo.toml");
const RUST_LIB: &str = include_str!("../../templates/rust/lib.rs");
const RUST_README: &str = include_str!("../../templates/rust/README.md");
const JS_POLICY: &str = include_str!("../../templates/js/policy.js");
const JS_README: &str = include_str!("../../templates/js/README.md");
/// The JavaScript SDK and the contract, copied into a JavaScript project so it builds anywhere.
const JS_SDK: &str = include_str!("../../../guest-js/registry-policy.js");
const WIT_0_2: &str = include_str!("../../../wit/registry-policy@0.2.0/registry-policy.wit");
/// The versions of every crate this SDK was built and tested with, so a new project builds with
/// them too (cargo drops what the project does not use at its first build).
const CARGO_LOCK: &str = include_str!("../../../Cargo.lock");
/// Where this binary's source tree keeps the Rust SDK (the default of `--sdk`).
const BUILT_SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../guest");

/// Creates the project `dir/name`; never writes over anything.
pub(super) fn run(name: &str, lang: Lang, dir: &Path, sdk: Option<&Path>) -> Result<ExitCode, String> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !valid {
        return Err(format!(
            "{name:?} is not a usable policy name: lowercase letters, digits, `-` and `_`, starting with a letter"
        ));
    }
    let project = dir.join(name);
    if project.exists() {
        return Err(format!("{} already exists; nothing was written", project.display()));
    }
    let file_name = name.replace('-', "_");
    let (wasm, files) = match lang {
        Lang::Rust => {
            let sdk = match sdk {
                Some(sdk) => sdk.to_owned(),
                None => PathBuf::from(BUILT_SDK),
            };
            let sdk = std::fs::canonicalize(&sdk)
                .ok()
                .filter(|path| path.join("Cargo.toml").is_file())
                .ok_or_else(|| {
                    format!(
                        "the registry-policy SDK is not at {}; pass --sdk /path/to/registry-token/guest",
                        sdk.display()
                    )
                })?;
            let wasm = format!("target/wasm32-wasip2/release/{file_name}.wasm");
            let sdk = sdk.display().to_string();
            let fill = |text: &str| fill(text, name, &wasm, &sdk);
            let files = vec![
                ("Cargo.toml", fill(RUST_CARGO)),
                ("Cargo.lock", CARGO_LOCK.to_owned()),
                ("src/lib.rs", fill(RUST_LIB)),
                ("cases.yaml", fill(CASES)),
                ("README.md", fill(RUST_README)),
                (".gitignore", "/target\n".to_owned()),
            ];
            (wasm, files)
        }
        Lang::Js => {
            let wasm = format!("{file_name}.wasm");
            let fill = |text: &str| fill(text, name, &wasm, "");
            let files = vec![
                ("policy.js", fill(JS_POLICY)),
                ("registry-policy.js", JS_SDK.to_owned()),
                ("wit/registry-policy@0.2.0/registry-policy.wit", WIT_0_2.to_owned()),
                ("cases.yaml", fill(CASES)),
                ("README.md", fill(JS_README)),
                (".gitignore", "/*.wasm\n".to_owned()),
            ];
            (wasm, files)
        }
    };
    for (path, text) in &files {
        let path = project.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    println!(
        "created {} ({} policy); next:",
        project.display(),
        if lang == Lang::Rust { "Rust" } else { "JavaScript" }
    );
    println!("  cd {}", project.display());
    match lang {
        Lang::Rust => println!("  cargo build --release --target wasm32-wasip2"),
        Lang::Js => {
            println!("  componentize-qjs --sync --wit wit/registry-policy@0.2.0 --js policy.js -o {wasm}")
        }
    }
    println!("  registry-token policy test --policy {wasm} cases.yaml");
    Ok(ExitCode::SUCCESS)
}

/// The templates' `{{name}}`, `{{type_name}}`, `{{wasm}}` and `{{sdk}}`.
fn fill(template: &str, name: &str, wasm: &str, sdk: &str) -> String {
    let type_name: String = name
        .split(['-', '_'])
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map(|c| c.to_ascii_uppercase()).into_iter().chain(chars).collect::<String>()
        })
        .collect();
    template
        .replace("{{name}}", name)
        .replace("{{type_name}}", &type_name)
        .replace("{{wasm}}", wasm)
        .replace("{{sdk}}", sdk)
}
