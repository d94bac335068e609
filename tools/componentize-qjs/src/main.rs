//! `componentize-qjs --wit WIT --js FILE.js -o OUT.wasm [--world NAME]`: the subset of the
//! upstream command's flags that registry-token's JavaScript policies use, with the same meaning.
//! The output always uses the non-async runtime (upstream's `--sync`, accepted here and implied).

use std::path::PathBuf;
use std::process::ExitCode;

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

async fn run(args: &Args) -> anyhow::Result<()> {
    use anyhow::Context;
    let source = std::fs::read_to_string(&args.js)
        .with_context(|| format!("cannot read {}", args.js.display()))?;
    // Imports resolve from the entry file's directory unless a wider root is given (a policy that
    // imports a shared SDK file from outside its own directory).
    let js = std::fs::canonicalize(&args.js).with_context(|| format!("cannot find {}", args.js.display()))?;
    let module_root = match &args.module_root {
        Some(root) => std::fs::canonicalize(root).with_context(|| format!("cannot find {}", root.display()))?,
        None => js.parent().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/")),
    };
    let options = componentize_qjs::ComponentizeOpts {
        wit_path: &args.wit,
        js_source: &source,
        js_path: Some(&js),
        module_root: Some(&module_root),
        world_name: args.world.as_deref(),
        stub_wasi: false,
        disable_gc: false,
        runtime: componentize_qjs::Runtime::DefaultSync,
    };
    let component = componentize_qjs::componentize(&options).await?;
    std::fs::write(&args.output, component)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    Ok(())
}
