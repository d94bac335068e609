//! `componentize-qjs --wit WIT --js FILE.js -o OUT.wasm [--world NAME] [--module-root DIR]`: a
//! JavaScript policy as a WebAssembly component, with the QuickJS runtime, bindings generator and
//! shim of the componentize-qjs library (crates.io), the flags of its command, and always its
//! non-async runtime (its `--sync`, accepted here and implied).
//!
//! One step differs from the library's `componentize`: the library composes a stub component over
//! the `local:init/module-loader` import (which QuickJS uses only while the module is evaluated at
//! build time), and a composed component nests components, which wizer cannot snapshot again.
//! registry-token snapshots every policy after `configure`, so this tool leaves the import in
//! place; registry-token answers it at run time with "not available" (and nothing else).

use anyhow::{Context, Result, anyhow, bail};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

const USAGE: &str = "usage: componentize-qjs --wit WIT --js FILE.js [-o OUT.wasm] [--world NAME] \
                     [--module-root DIR] [--sync]";

struct Args {
    wit: PathBuf,
    js: PathBuf,
    output: PathBuf,
    world: Option<String>,
    module_root: Option<PathBuf>,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let (mut wit, mut js, mut output, mut world) = (None, None, PathBuf::from("output.wasm"), None);
    let mut module_root = None;
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--wit" | "-w" => wit = Some(PathBuf::from(value("--wit")?)),
            "--js" | "-j" => js = Some(PathBuf::from(value("--js")?)),
            "--output" | "-o" => output = PathBuf::from(value("--output")?),
            "--world" | "-n" => world = Some(value("--world")?),
            "--module-root" => module_root = Some(PathBuf::from(value("--module-root")?)),
            "--sync" => {}
            "--help" | "-h" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    match (wit, js) {
        (Some(wit), Some(js)) => Ok(Args { wit, js, output, world, module_root }),
        _ => Err(format!("--wit and --js are required\n{USAGE}")),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    match run(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> Result<()> {
    let js = std::fs::canonicalize(&args.js).with_context(|| format!("cannot find {}", args.js.display()))?;
    let source = std::fs::read_to_string(&js).with_context(|| format!("cannot read {}", js.display()))?;
    // Imports resolve inside the entry file's directory unless a wider root is given (a policy that
    // imports a shared SDK file from outside its own directory).
    let root = match &args.module_root {
        Some(root) => {
            std::fs::canonicalize(root).with_context(|| format!("cannot find {}", root.display()))?
        }
        None => js.parent().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/")),
    };
    let linked = link(&args.wit, args.world.as_deref())?;
    let component = evaluate_and_snapshot(&linked.component, &linked.shim, &source, &js, root).await?;
    std::fs::write(&args.output, component)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    Ok(())
}

struct Linked {
    component: Vec<u8>,
    shim: String,
}

/// The QuickJS runtime and the world's generated bindings library, linked into one component.
fn link(wit: &Path, world: Option<&str>) -> Result<Linked> {
    let mut resolve = wit_parser::Resolve::default();
    let (package, _) =
        resolve.push_path(wit).with_context(|| format!("cannot read the WIT {}", wit.display()))?;
    let world_id = resolve.select_world(&[package], world)?;
    let (mut bindings, metadata) = wit_dylib::create_with_metadata(&resolve, world_id, None);
    let shim = componentize_qjs::codegen::generate_shim(&resolve, &metadata);
    wit_component::embed_component_metadata(
        &mut bindings,
        &resolve,
        world_id,
        wit_component::StringEncoding::UTF8,
    )?;
    let mut linker = wit_component::Linker::default();
    linker.encoder().validate(true);
    linker.library("componentize_qjs_runtime.wasm", componentize_qjs::default_sync_runtime_wasm(), false)?;
    linker.library("wit-dylib.wasm", &bindings, false)?;
    linker.encoder().adapter(
        "wasi_snapshot_preview1",
        wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
    )?;
    let component = linker.encode().context("failed to link the component")?;
    Ok(Linked { component, shim })
}

struct Ctx {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for Ctx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Evaluates the shim and the module once (`init`), then snapshots the instance with wizer, so
/// every instance starts with the module already evaluated.
async fn evaluate_and_snapshot(
    component: &[u8],
    shim: &str,
    source: &str,
    entry: &Path,
    root: PathBuf,
) -> Result<Vec<u8>> {
    let output = MemoryOutputPipe::new(64 * 1024);
    let wasi = WasiCtx::builder().stdout(output.clone()).stderr(output.clone()).build();
    let mut config = Config::new();
    config.wasm_component_model(true).wasm_component_model_async(true).wasm_component_model_map(true);
    let engine = Engine::new(&config)?;
    let mut store = Store::new(&engine, Ctx { wasi, table: ResourceTable::new() });

    let wizer = wasmtime_wizer::Wizer::new();
    let (context, instrumented) = wizer.instrument_component(component)?;
    let instrumented = Component::new(&engine, &instrumented)?;
    let mut linker = Linker::new(&engine);
    linker.allow_shadowing(true);
    linker.define_unknown_imports_as_traps(&instrumented)?;
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    module_loader(&mut linker, root)?;

    let instance = linker.instantiate_async(&mut store, &instrumented).await?;
    let init = instance
        .get_typed_func::<(&str, &str, Option<&str>, bool), (Result<(), String>,)>(&mut store, "init")
        .map_err(|e| anyhow!("the linked component has no init export: {e}"))?;
    let entry = entry.to_string_lossy();
    let (result,) = init.call_async(&mut store, (shim, source, Some(entry.as_ref()), false)).await?;
    if let Err(error) = result {
        bail!(
            "the JavaScript module failed to evaluate: {error}\n{}",
            String::from_utf8_lossy(&output.contents())
        );
    }
    let snapshot = wizer
        .snapshot_component(
            context,
            &mut wasmtime_wizer::WasmtimeWizerComponent { store: &mut store, instance },
        )
        .await?;
    Ok(snapshot)
}

/// `local:init/module-loader` while the module is evaluated: relative imports (`./sdk.js`,
/// `../lib/x.js`) resolve to files under `root`; nothing outside it, no bare package names.
fn module_loader(linker: &mut Linker<Ctx>, root: PathBuf) -> Result<()> {
    let mut loader = linker.instance("local:init/module-loader")?;
    let resolve_root = root.clone();
    loader.func_wrap("resolve", move |_, (referrer, specifier): (String, String)| {
        Ok((resolve(&resolve_root, &referrer, &specifier).map_err(|e| e.to_string()),))
    })?;
    loader.func_wrap("load", move |_, (path,): (String,)| {
        let loaded = inside(&root, Path::new(&path)).and_then(|path| {
            std::fs::read_to_string(&path).map_err(|e| anyhow!("cannot read {}: {e}", path.display()))
        });
        Ok((loaded.map_err(|e| e.to_string()),))
    })?;
    Ok(())
}

fn resolve(root: &Path, referrer: &str, specifier: &str) -> Result<String> {
    if !(specifier.starts_with("./") || specifier.starts_with("../") || specifier.starts_with('/')) {
        bail!(
            "cannot import {specifier:?}: only relative paths to files under {} are bundled",
            root.display()
        );
    }
    let base = Path::new(referrer).parent().unwrap_or(root);
    let path = inside(root, &base.join(specifier))?;
    Ok(path.to_string_lossy().into_owned())
}

fn inside(root: &Path, path: &Path) -> Result<PathBuf> {
    let path = std::fs::canonicalize(path).with_context(|| format!("cannot find {}", path.display()))?;
    if !path.starts_with(root) {
        bail!("{} is outside the module root {}", path.display(), root.display());
    }
    Ok(path)
}
