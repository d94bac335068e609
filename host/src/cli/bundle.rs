//! `registry-token bundle build|sign|verify|inspect|test|push`: policy bundles made, signed,
//! checked and published without a server; `bundle revisions|forget-revision`: the highest
//! revision the ledger records as applied from each source (what a restart refuses to go below).

use super::cases;
use super::keys::write_replacing;
use super::ledger::{ConfigArg, IfMissing, open as open_ledger, open_configured};
use super::signer::{SignerArgs, VerifierArgs};
use crate::app::{load_module, settings_json};
use crate::bundle::{self, BuildInputs, Bundle, BundlePolicy, FetchOptions, PolicyInput};
use crate::config::{BundleConfig, BundleSource, Config, PolicyConfig};
use crate::policy::Builtin;
use clap::{Args, Subcommand};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub(super) enum BundleCommand {
    /// Build a bundle. The same inputs give the same bytes; prints its SHA-256 (as sha256sum does).
    Build(BuildArgs),
    /// Sign a bundle in place (replacing any signature it has).
    Sign {
        #[command(flatten)]
        signer: SignerArgs,
        #[command(flatten)]
        limit: Limit,
        /// The bundle.
        bundle: PathBuf,
    },
    /// Check a bundle's limits, content and signature against trusted keys.
    Verify {
        #[command(flatten)]
        keys: VerifierArgs,
        #[command(flatten)]
        limit: Limit,
        /// The bundle.
        bundle: PathBuf,
    },
    /// Show a bundle's manifest, files and signature header, as JSON (the signature is not checked).
    Inspect {
        #[command(flatten)]
        limit: Limit,
        /// The bundle.
        bundle: PathBuf,
    },
    /// Run the bundle's cases.yaml through its policy with its settings.
    Test {
        #[command(flatten)]
        limit: Limit,
        /// Deadline of one evaluation, in milliseconds (as `policy.timeout_ms`).
        #[arg(long, default_value_t = PolicyConfig::default().timeout_ms)]
        timeout_ms: u64,
        /// Memory cap of one evaluation, in MiB (as `policy.memory_mib`).
        #[arg(long, default_value_t = PolicyConfig::default().memory_mib)]
        memory_mib: u64,
        /// The bundle.
        bundle: PathBuf,
    },
    /// Upload a bundle to an OCI registry as an artifact of its own media type.
    Push {
        #[command(flatten)]
        limit: Limit,
        /// The user name to present to the registry (for a registry behind registry-token: any name).
        #[arg(long, requires = "password_file")]
        username: Option<String>,
        /// A file (mode 0600) holding the password (behind registry-token: an Authority access token
        /// whose plan may push to the repository).
        #[arg(long, requires = "username")]
        password_file: Option<PathBuf>,
        /// PEM certificates to trust (besides the system's) for an HTTPS registry.
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// The bundle.
        bundle: PathBuf,
        /// Where: oci://host[:port]/repository:tag.
        reference: String,
    },
    /// List the highest revision applied from each bundle source, as the ledger records it (a
    /// server refuses a lower one, after a restart too).
    Revisions {
        #[command(flatten)]
        config: ConfigArg,
        /// As JSON `{"bundles": [...]}`.
        #[arg(long)]
        json: bool,
    },
    /// Forget the highest revision applied from a source, so that its next bundle may have any
    /// revision (a deliberate rollback: then restart the servers, which also refuse a revision
    /// lower than their live one).
    ForgetRevision {
        #[command(flatten)]
        config: ConfigArg,
        /// The source, as `policy.bundle` names it (default: the configuration's).
        source: Option<String>,
    },
}

/// `--max-bytes`, as `policy.bundle_max_bytes`.
#[derive(Debug, Args)]
pub(super) struct Limit {
    /// The largest bundle accepted, packed or unpacked (as `policy.bundle_max_bytes`).
    #[arg(long, default_value_t = BundleConfig::DEFAULT_MAX_BYTES)]
    max_bytes: u64,
}

#[derive(Debug, Args)]
pub(super) struct BuildArgs {
    /// The policy: a component (.wasm) or a built-in (`builtin:plan-catalogue`, named, not copied).
    #[arg(long)]
    policy: String,
    /// Its settings (YAML or JSON).
    #[arg(long)]
    settings: PathBuf,
    /// A case file to carry (run by `bundle test`, with the bundle's settings).
    #[arg(long)]
    cases: Option<PathBuf>,
    /// Carry the revocations of the ledger this configuration names (for an offline site).
    #[arg(long, value_name = "CONFIG")]
    revocations_from: Option<PathBuf>,
    /// Carry the Authority's JWKS (for an offline site).
    #[arg(long, value_name = "JWKS")]
    authority_jwks: Option<PathBuf>,
    /// The revision: higher than the last bundle's (servers refuse a lower one).
    #[arg(long)]
    revision: u64,
    /// When it was built (RFC 3339); never read from the clock, so a rebuild is identical.
    #[arg(long)]
    created_at: String,
    /// Where to write it.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    limit: Limit,
}

pub(super) async fn run(command: BundleCommand) -> Result<ExitCode, String> {
    match command {
        BundleCommand::Build(args) => build(args).await,
        BundleCommand::Sign { signer, limit, bundle } => sign(&signer, limit.max_bytes, &bundle),
        BundleCommand::Verify { keys, limit, bundle } => verify(&keys, limit.max_bytes, &bundle),
        BundleCommand::Inspect { limit, bundle } => inspect(limit.max_bytes, &bundle),
        BundleCommand::Test { limit, timeout_ms, memory_mib, bundle } => {
            test(limit.max_bytes, timeout_ms, memory_mib, &bundle).await
        }
        BundleCommand::Push { limit, username, password_file, ca_file, bundle, reference } => {
            let options = FetchOptions {
                max_bytes: limit.max_bytes,
                ca_file,
                username,
                password_file,
                timeout: Duration::from_secs(60),
            };
            push(&bundle, &reference, &options).await
        }
        BundleCommand::Revisions { config, json } => revisions(&config, json).await,
        BundleCommand::ForgetRevision { config, source } => forget_revision(&config, source).await,
    }
}

async fn revisions(config: &ConfigArg, json: bool) -> Result<ExitCode, String> {
    let ledger = open_ledger(config, IfMissing::Refuse).await?;
    let bundles = ledger.applied_bundles().await.map_err(|e| format!("the ledger: {e}"))?;
    if json {
        println!("{}", serde_json::json!({ "bundles": bundles }));
    } else {
        for applied in &bundles {
            println!(
                "{}  revision {}  content {}  applied {}",
                applied.source, applied.revision, applied.content_sha256, applied.applied_at
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn forget_revision(config: &ConfigArg, source: Option<String>) -> Result<ExitCode, String> {
    let source = match source {
        // Recorded as the service shows it: a URL without its credentials and query.
        Some(source) => BundleSource::try_from(source)?.to_string(),
        None => Config::load(config.path())
            .map_err(|e| e.to_string())?
            .policy
            .bundle
            .map(|bundle| bundle.source.to_string())
            .ok_or("name the source: the configuration has no policy.bundle")?,
    };
    let ledger = open_ledger(config, IfMissing::Refuse).await?;
    let Some(applied) = ledger.applied_bundle(&source).await.map_err(|e| format!("the ledger: {e}"))? else {
        return Err(format!("no revision is recorded for {source} (`bundle revisions` lists them)"));
    };
    if !ledger.forget_applied_bundle(&source).await.map_err(|e| format!("the ledger: {e}"))? {
        return Err(format!("{source}'s record was forgotten meanwhile, by another process"));
    }
    eprintln!(
        "forgot revision {} of {source} (applied {}): the next bundle from it may have any revision once \
         the servers restart (a running one refuses a revision lower than its live one)",
        applied.revision, applied.applied_at
    );
    Ok(ExitCode::SUCCESS)
}

/// The bundle at `path`, read as the server reads one: at most `max_bytes`, whatever the file
/// says its length is (a pipe or `/dev/stdin` says 0).
fn read(path: &Path, max_bytes: u64) -> Result<Vec<u8>, String> {
    crate::bundle::read_file(path, max_bytes).map_err(|e| format!("{e} (--max-bytes)"))
}

fn open_unverified(path: &Path, max_bytes: u64) -> Result<Bundle, String> {
    let bytes = read(path, max_bytes)?;
    Bundle::open_unverified(&bytes, max_bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// `HEX  PATH`, as `sha256sum` prints it.
fn sha256sum_line(bundle: &Bundle, path: &Path) -> String {
    format!("{}  {}", bundle.sha256().trim_start_matches("sha256:"), path.display())
}

fn describe(bundle: &Bundle) -> String {
    let manifest = bundle.manifest();
    let files: Vec<&str> = bundle.files().map(|(name, _)| name).collect();
    format!(
        "revision {}, {} (WIT {}), created_at {}, files: {}",
        manifest.revision,
        manifest.policy,
        manifest.wit_version,
        manifest.created_at,
        files.join(" ")
    )
}

async fn build(args: BuildArgs) -> Result<ExitCode, String> {
    let policy = match args.policy.strip_prefix(Builtin::PREFIX) {
        Some(name) => PolicyInput::Builtin(
            Builtin::from_name(name)
                .ok_or_else(|| format!("--policy {}: no such built-in policy", args.policy))?,
        ),
        None => PolicyInput::Component(
            std::fs::read(&args.policy).map_err(|e| format!("cannot read --policy {}: {e}", args.policy))?,
        ),
    };
    let settings_text = settings_json(&args.settings).map_err(|e| e.to_string())?;
    let settings: serde_json::Value = serde_json::from_str(&settings_text)
        .map_err(|e| format!("--settings {}: {e}", args.settings.display()))?;
    let cases = match &args.cases {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read --cases {}: {e}", path.display()))?;
            let file = cases::parse(&text, &path.display().to_string())?;
            if file.settings.is_some() || file.settings_file.is_some() {
                eprintln!(
                    "note: {} names its own settings; in the bundle its cases run with the bundle's settings",
                    path.display()
                );
            }
            Some(text.into_bytes())
        }
        None => None,
    };
    let revocations = match &args.revocations_from {
        Some(config) => {
            let config = Config::load(config).map_err(|e| e.to_string())?;
            let ledger = open_configured(&config.ledger, IfMissing::Refuse)
                .await
                .map_err(|e| format!("--revocations-from: {e}"))?
                .ok_or("--revocations-from: its ledger.url is none: it keeps no revocations")?;
            Some(ledger.revocations().await.map_err(|e| format!("the ledger's revocations: {e}"))?)
        }
        None => None,
    };
    let authority_jwks = match &args.authority_jwks {
        Some(path) => Some(
            std::fs::read(path)
                .map_err(|e| format!("cannot read --authority-jwks {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let inputs = BuildInputs {
        policy,
        settings,
        cases,
        revocations,
        authority_jwks,
        revision: args.revision,
        created_at: args.created_at.clone(),
    };
    let (bundle, bytes) = bundle::build(inputs).map_err(|e| e.to_string())?;
    // What is built must open as every server and command opens it: within the limits.
    Bundle::open_unverified(&bytes, args.limit.max_bytes).map_err(|e| {
        format!("the bundle built would be refused by servers and bundle commands (nothing written): {e}")
    })?;
    // What is built must load: the policy configured with the settings, as a server would.
    let carried = bundle.policy();
    load_module(
        carried.wasm(),
        &bundle.manifest().policy,
        bundle.settings_json(),
        &PolicyConfig::default(),
        0,
        None,
    )
    .await
    .map_err(|e| format!("the bundle's policy does not load: {e}"))?;
    write_replacing(&args.out, &bytes)?;
    println!("{}", sha256sum_line(&bundle, &args.out));
    println!("{}; unsigned (bundle sign --key KEY {})", describe(&bundle), args.out.display());
    Ok(ExitCode::SUCCESS)
}

fn sign(signer: &SignerArgs, max_bytes: u64, path: &Path) -> Result<ExitCode, String> {
    let bundle = open_unverified(path, max_bytes)?;
    let (signer, kid) = signer.signer()?.ok_or("give the signing key: --key FILE, or --pkcs11 MODULE ...")?;
    let (signed, bytes) = bundle.signed(&signer, &kid).map_err(|e| e.to_string())?;
    write_replacing(path, &bytes)?;
    println!("{}", sha256sum_line(&signed, path));
    println!("signed by kid {kid} ({})", signer.algorithm().name());
    Ok(ExitCode::SUCCESS)
}

fn verify(keys: &VerifierArgs, max_bytes: u64, path: &Path) -> Result<ExitCode, String> {
    if !keys.given() {
        return Err("give the keys to trust: --key PEM (a public key or a certificate) or --jwks FILE".into());
    }
    let trusted = keys.trusted()?;
    let bytes = read(path, max_bytes)?;
    let bundle = Bundle::open(&bytes, max_bytes, &trusted).map_err(|e| format!("{}: {e}", path.display()))?;
    println!("{}", sha256sum_line(&bundle, path));
    println!("verified: signed by kid {}; {}", bundle.signed_by().unwrap_or_default(), describe(&bundle));
    Ok(ExitCode::SUCCESS)
}

fn inspect(max_bytes: u64, path: &Path) -> Result<ExitCode, String> {
    let bundle = open_unverified(path, max_bytes)?;
    let files: Vec<serde_json::Value> = bundle
        .files()
        .map(|(name, bytes)| {
            serde_json::json!({"name": name, "size": bytes.len(), "sha256": crate::policy::sha256_hex(bytes)})
        })
        .collect();
    let document = serde_json::json!({
        "sha256": bundle.sha256(),
        "content_sha256": bundle.content_sha256(),
        "manifest": bundle.manifest(),
        "files": files,
        "revocations": bundle.revocations().len(),
        "signatures": bundle.signature_headers(),
        "signature_verified": false,
    });
    let text = serde_json::to_string_pretty(&document).map_err(|e| e.to_string())?;
    println!("{text}");
    Ok(ExitCode::SUCCESS)
}

async fn test(max_bytes: u64, timeout_ms: u64, memory_mib: u64, path: &Path) -> Result<ExitCode, String> {
    let bundle = open_unverified(path, max_bytes)?;
    let Some(text) = bundle.cases() else {
        return Err(format!("{}: the bundle carries no {}", path.display(), bundle::CASES));
    };
    let origin = format!("{} {}", path.display(), bundle::CASES);
    let file = cases::parse(text, &origin)?;
    let limits = PolicyConfig { timeout_ms, memory_mib, ..PolicyConfig::default() };
    let module: BundlePolicy<'_> = bundle.policy();
    let source = format!("{} ({})", bundle.manifest().policy, path.display());
    let policy = load_module(module.wasm(), &source, bundle.settings_json(), &limits, 0, None)
        .await
        .map_err(|e| e.to_string())?;
    let mut tally = cases::Tally::default();
    tally.run(&policy, &file, &origin).await?;
    Ok(tally.report())
}

async fn push(path: &Path, reference: &str, options: &FetchOptions) -> Result<ExitCode, String> {
    let Some(target) = reference.strip_prefix("oci://") else {
        return Err(format!("{reference:?}: push to oci://host[:port]/repository:tag"));
    };
    let bytes = read(path, options.max_bytes)?;
    let bundle =
        Bundle::open_unverified(&bytes, options.max_bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    if bundle.signature_headers().is_empty() {
        eprintln!(
            "warning: {} is not signed; servers with policy.bundle_keys will refuse it",
            path.display()
        );
    }
    let manifest = bundle
        .files()
        .find(|(name, _)| *name == bundle::MANIFEST)
        .map(|(_, b)| b.to_vec())
        .unwrap_or_default();
    let annotations = BTreeMap::from([
        ("org.opencontainers.image.created".to_owned(), bundle.manifest().created_at.clone()),
        ("org.opencontainers.image.version".to_owned(), bundle.manifest().revision.to_string()),
    ]);
    let digest =
        bundle::push(&bytes, &manifest, annotations, target, options).await.map_err(|e| e.to_string())?;
    println!("pushed {reference}@{digest}");
    println!("{}", describe(&bundle));
    Ok(ExitCode::SUCCESS)
}
