//! The `registry-token` command line: `serve`, `keygen`, `keys new|export|list`, `dev-authority`,
//! `policy test|eval|inspect|new|bench`, `bundle build|sign|verify|inspect|test|push`,
//! `ledger events|refresh-tokens|revoke|revocations|unrevoke|export|verify`.

mod bench;
mod bundle;
mod cases;
mod inspect;
mod keys;
mod ledger;
mod ledger_export;
mod scaffold;
mod serve;
mod signer;

use crate::app::{load_policy, load_policy_with, system_clock};
use crate::authority::caller_from_claims;
use crate::config::{PolicyConfig, PolicyModule};
use crate::dev_authority;
use crate::mint::{SigningAlgorithm, keygen};
use crate::policy::Decision;
use clap::{Args, Parser, Subcommand};
use serde_json::{Map, Value, json};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "registry-token", version, about = "Issues short-lived Docker registry bearer tokens")]
struct Cli {
    /// Log filter (tracing's env-filter syntax).
    #[arg(long, global = true, env = "REGISTRY_TOKEN_LOG", default_value = "info")]
    log: String,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the token service.
    Serve {
        /// The configuration file.
        #[arg(long, env = "REGISTRY_TOKEN_CONFIG", default_value = "etc/registry-token.yaml")]
        config: PathBuf,
    },
    /// Generate a signing key (mode 0600) and a self-signed certificate for the registry.
    Keygen {
        /// Directory to write signing-key.pem and signing-cert.pem into.
        #[arg(long)]
        out: PathBuf,
        /// RSA key size: 2048, 3072 or 4096.
        #[arg(long, default_value_t = 2048)]
        bits: u32,
        /// RS256 (RSA) or ES256 (P-256).
        #[arg(long, value_enum, default_value_t = Algorithm::Rs256)]
        algorithm: Algorithm,
    },
    /// The signing key set: a new key for a rotation, the published set written offline.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// A development Authority for trials and tests (`serve` creates one only when
    /// `development.create_missing_keys` is on).
    #[command(subcommand)]
    DevAuthority(DevAuthority),
    /// Try a policy without a server.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Read the issuance ledger and revoke, directly (works while the service is down).
    #[command(subcommand)]
    Ledger(ledger::LedgerCommand),
    /// Policy bundles: build, sign, verify, inspect, test and push them.
    #[command(subcommand)]
    Bundle(bundle::BundleCommand),
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Algorithm {
    #[value(name = "RS256")]
    Rs256,
    #[value(name = "ES256")]
    Es256,
}

#[derive(Debug, Subcommand)]
enum DevAuthority {
    /// Create a key pair, jwks.json and authority.json in DIR.
    Init {
        /// Where to create it.
        #[arg(long)]
        dir: PathBuf,
        /// The issuer (`iss`) of its tokens.
        #[arg(long, default_value = "https://authority.local")]
        issuer: String,
    },
    /// Print a signed access token.
    Token {
        /// The development Authority's directory.
        #[arg(long)]
        dir: PathBuf,
        /// `sub`.
        #[arg(long)]
        sub: String,
        /// `stellaops:plan`.
        #[arg(long)]
        plan: Option<String>,
        /// `stellaops:license`.
        #[arg(long)]
        license: Option<String>,
        /// `stellaops:tenant`.
        #[arg(long)]
        tenant: Option<String>,
        /// `scope` (space-separated).
        #[arg(long, default_value = "registry.token.issue")]
        scope: String,
        /// `aud`.
        #[arg(long, default_value = "registry-token")]
        aud: String,
        /// `client_id`.
        #[arg(long, default_value = "dev-cli")]
        client_id: String,
        /// Seconds until the token expires (negative: already expired).
        #[arg(long, default_value_t = 600, allow_hyphen_values = true)]
        ttl: i64,
    },
}

#[derive(Debug, Args)]
struct PolicySource {
    /// A policy component; the built-in plan catalogue if omitted.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Settings (YAML or JSON) handed to the policy; for `test`, instead of what a case file names.
    #[arg(long)]
    settings: Option<PathBuf>,
    /// Deadline of one evaluation, in milliseconds (as `policy.timeout_ms`: 1 to 10000).
    #[arg(long, default_value_t = PolicyConfig::default().timeout_ms,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    timeout_ms: u64,
    /// Memory cap of one evaluation, in MiB (as `policy.memory_mib`: 1 to 1024).
    #[arg(long, default_value_t = PolicyConfig::default().memory_mib,
          value_parser = clap::value_parser!(u64).range(1..=1024))]
    memory_mib: u64,
    /// Keep compiled code in this directory between runs (as `policy.cache_dir`).
    #[arg(long, env = "REGISTRY_TOKEN_POLICY__CACHE_DIR")]
    cache_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Run case files: prints each failure, then `N passed, N failed`; exits non-zero on failure.
    Test {
        #[command(flatten)]
        source: PolicySource,
        /// Case files (YAML).
        #[arg(required = true)]
        cases: Vec<PathBuf>,
    },
    /// Evaluate one request given as JSON: {"claims": {...}, "service": "...", "scope": "...",
    /// "at": "2026-12-31T00:00:00Z"} (`at`, the request time, defaults to now).
    Eval {
        #[command(flatten)]
        source: PolicySource,
        /// The request file; standard input if omitted or `-`.
        request: Option<PathBuf>,
    },
    /// Describe a component: its contract version, the metadata its SDK embedded, its imports
    /// (and whether the host refuses one), digest, size and compile time. Exits 1 when the host
    /// would not load it.
    Inspect {
        /// A `.wasm` component, or `builtin:plan-catalogue`.
        module: String,
        /// Print JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Create a ready-to-build policy project NAME/ (source, passing cases.yaml, a README).
    New {
        /// The project's name (and directory).
        name: String,
        /// The policy's language.
        #[arg(long, value_enum, default_value_t = scaffold::Lang::Rust)]
        lang: scaffold::Lang,
        /// Where to create it.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The registry-policy SDK (`guest/` of this repository) a Rust project depends on; by
        /// default the one this binary was built from.
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Measure one evaluation as the server runs it (same runtime, limits and pool; a fresh
    /// instance per evaluation): median and p99 per case over `--runs` evaluations.
    Bench {
        #[command(flatten)]
        source: PolicySource,
        /// Evaluations per case (after a warm-up of a twentieth as many).
        #[arg(long, default_value_t = 2000)]
        runs: usize,
        /// Case files (YAML): each case is one request to measure.
        #[arg(required = true)]
        cases: Vec<PathBuf>,
    },
}

/// Runs the command line; the binary's `main` is this.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log, cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve { config } => serve::run(&config).await,
            Command::Keygen { out, bits, algorithm } => keygen_command(&out, bits, algorithm),
            Command::DevAuthority(command) => dev_authority_command(command),
            Command::Policy(PolicyCommand::Test { source, cases }) => policy_test(&source, &cases).await,
            Command::Policy(PolicyCommand::Eval { source, request }) => {
                policy_eval(&source, request.as_deref()).await
            }
            Command::Policy(PolicyCommand::Inspect { module, json }) => inspect::run(&module, json),
            Command::Policy(PolicyCommand::New { name, lang, dir, sdk }) => {
                scaffold::run(&name, lang, &dir, sdk.as_deref())
            }
            Command::Policy(PolicyCommand::Bench { source, runs, cases }) => {
                policy_bench(&source, runs, &cases).await
            }
            Command::Ledger(command) => ledger::run(command).await,
            Command::Keys(command) => keys::run(command),
            Command::Bundle(command) => bundle::run(command).await,
        }
    });
    // A call stuck in a blocking thread (an HSM that stopped answering past its deadline) must not
    // keep the process from exiting.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}

fn init_tracing(filter: &str, format: LogFormat) {
    // A filter that does not parse logs at info and says so, rather than stopping the service.
    let (filter, refused) = match tracing_subscriber::EnvFilter::try_new(filter) {
        Ok(parsed) => (parsed, None),
        Err(error) => (tracing_subscriber::EnvFilter::new("info"), Some((filter, error))),
    };
    // Colour only for a person at a terminal; log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    if let Some((filter, error)) = refused {
        tracing::warn!(
            "the log filter {filter:?} (--log, REGISTRY_TOKEN_LOG) is not valid ({error}): logging at info"
        );
    }
}

impl From<Algorithm> for SigningAlgorithm {
    fn from(algorithm: Algorithm) -> SigningAlgorithm {
        match algorithm {
            Algorithm::Rs256 => SigningAlgorithm::RS256,
            Algorithm::Es256 => SigningAlgorithm::ES256,
        }
    }
}

fn keygen_command(out: &Path, bits: u32, algorithm: Algorithm) -> Result<ExitCode, String> {
    let generated = keygen::generate(out, algorithm.into(), bits).map_err(|e| e.to_string())?;
    println!("wrote {} (mode 0600)", generated.key_file.display());
    println!(
        "wrote {} (give it to the registry as auth.token.rootcertbundle)",
        generated.cert_file.display()
    );
    keys::print_kids(&generated.libtrust_kid, &generated.thumbprint_kid);
    Ok(ExitCode::SUCCESS)
}

fn dev_authority_command(command: DevAuthority) -> Result<ExitCode, String> {
    match command {
        DevAuthority::Init { dir, issuer } => {
            let jwks = dev_authority::init(&dir, &issuer).map_err(|e| e.to_string())?;
            println!("development Authority for issuer {issuer} created in {}", dir.display());
            println!("point authority.jwks_file at {}", jwks.display());
            println!(
                "for trials and tests only: its private key sits next to it, unprotected by any process"
            );
        }
        DevAuthority::Token { dir, sub, plan, license, tenant, scope, aud, client_id, ttl } => {
            let request = dev_authority::TokenRequest {
                subject: sub,
                plan,
                license,
                tenant,
                scope,
                audience: aud,
                client_id,
                ttl_seconds: ttl,
                extra: Map::new(),
            };
            let token = dev_authority::token(&dir, &request, system_clock()()).map_err(|e| e.to_string())?;
            println!("{token}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn policy_config(source: &PolicySource) -> PolicyConfig {
    let defaults = PolicyConfig::default();
    PolicyConfig {
        module: match &source.policy {
            Some(path) => PolicyModule::File(path.clone()),
            None => defaults.module,
        },
        settings_file: source.settings.clone(),
        timeout_ms: source.timeout_ms,
        memory_mib: source.memory_mib,
        bundle: None,
        cache_dir: source.cache_dir.clone(),
    }
}

async fn policy_test(source: &PolicySource, files: &[PathBuf]) -> Result<ExitCode, String> {
    let mut tally = cases::Tally::default();
    for path in files {
        let (file, settings) = cases::read(path, source.settings.as_deref())?;
        let policy =
            load_policy_with(&policy_config(source), &settings, 0, None).await.map_err(|e| e.to_string())?;
        tally.run(&policy, &file, &path.display().to_string()).await?;
    }
    Ok(tally.report())
}

async fn policy_bench(source: &PolicySource, runs: usize, files: &[PathBuf]) -> Result<ExitCode, String> {
    if runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    let mut read = Vec::new();
    let mut settings = None;
    for path in files {
        let (file, file_settings) = cases::read(path, source.settings.as_deref())?;
        match &settings {
            None => settings = Some(file_settings),
            Some(first) if *first != file_settings => {
                return Err(format!("{} names other settings than the first case file", path.display()));
            }
            Some(_) => {}
        }
        read.push((path.clone(), file));
    }
    let settings = settings.unwrap_or_else(|| "{}".to_owned());
    let started = std::time::Instant::now();
    let policy =
        load_policy_with(&policy_config(source), &settings, 0, None).await.map_err(|e| e.to_string())?;
    bench::run(&policy, &read, runs, started.elapsed()).await?;
    Ok(ExitCode::SUCCESS)
}

async fn policy_eval(source: &PolicySource, request: Option<&Path>) -> Result<ExitCode, String> {
    let text = match request {
        None => read_stdin()?,
        Some(path) if path == Path::new("-") => read_stdin()?,
        Some(path) => {
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?
        }
    };
    let request: Value = serde_json::from_str(&text).map_err(|e| format!("the request is not JSON: {e}"))?;
    let claims = match request.get("claims") {
        Some(Value::Object(claims)) => claims.clone(),
        _ => return Err("the request needs \"claims\": an object of Authority claims".into()),
    };
    let service = request.get("service").and_then(Value::as_str).unwrap_or("registry.local");
    let scopes: Vec<&str> = match request.get("scope") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(scope)) => vec![scope.as_str()],
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
        Some(_) => return Err("\"scope\" must be a string or a list of strings".into()),
    };
    let caller = caller_from_claims(claims).map_err(|e| format!("claims: {e}"))?;
    let requested = crate::scope::parse_scopes(scopes).map_err(|e| e.to_string())?;
    let time = match request.get("at") {
        None | Some(Value::Null) => system_clock()(),
        Some(at) => serde_json::from_value::<cases::At>(at.clone())
            .map_err(|_| "\"at\" must be Unix seconds or an RFC 3339 time".to_owned())?
            .seconds()?,
    };
    let policy = load_policy(&policy_config(source), 0, None).await.map_err(|e| e.to_string())?;
    let object = |pairs: &[(String, String)]| -> Map<String, Value> {
        pairs.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect()
    };
    let answer = match policy.evaluate(&caller, service, &requested, time).await {
        Ok(Decision::Grant { resources, note, lifetime_seconds, annotations }) => json!({
            "decision": "grant", "access": resources, "note": note,
            "lifetime_seconds": lifetime_seconds, "annotations": object(&annotations),
        }),
        Ok(Decision::Deny { reason, message, annotations }) => json!({
            "decision": "deny", "reason": reason, "message": message, "annotations": object(&annotations),
        }),
        Err(fault) => {
            json!({"decision": "fault", "kind": fault.kind(), "detail": fault.to_string()})
        }
    };
    let answer =
        serde_json::to_string_pretty(&answer).map_err(|e| format!("cannot print the answer: {e}"))?;
    println!("{answer}");
    Ok(ExitCode::SUCCESS)
}

fn read_stdin() -> Result<String, String> {
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text).map_err(|e| format!("cannot read standard input: {e}"))?;
    Ok(text)
}
