//! `registry-token ledger events|refresh-tokens|revoke|revocations|unrevoke` (and `export|verify`,
//! in `ledger_export`): the ledger read and changed
//! directly, so it works while the service is down (forensics) and from any host that reaches a
//! shared PostgreSQL. A revocation made here reaches running replicas at their next poll
//! (within a second).

use crate::config::{Config, LedgerConfig, LedgerUrl};
use crate::http::RevocationRequest;
use crate::ledger::{
    Event, EventFilter, Ledger, Migrate, Millis, Outcome, RefreshTokenFilter, Revocation, RevocationKind,
    check_window,
};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub(super) enum LedgerCommand {
    /// List events, newest first.
    Events {
        #[command(flatten)]
        config: ConfigArg,
        /// Only this caller's (or administrator's) `sub`.
        #[arg(long, allow_hyphen_values = true)]
        sub: Option<String>,
        /// Only this `stellaops:license`.
        #[arg(long, alias = "license")]
        licence: Option<String>,
        /// Only this `stellaops:tenant`.
        #[arg(long)]
        tenant: Option<String>,
        /// Only this outcome: issued, denied, refused, fault, revocation_created, revocation_lifted.
        #[arg(long)]
        outcome: Option<String>,
        /// Only events of this caller token's or registry token's `jti`.
        #[arg(long, allow_hyphen_values = true)]
        jti: Option<String>,
        /// At or after (RFC 3339 or Unix seconds).
        #[arg(long)]
        since: Option<String>,
        /// Before (RFC 3339 or Unix seconds).
        #[arg(long)]
        until: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// One JSON document `{"events": [...]}` instead of one line per event.
        #[arg(long)]
        json: bool,
    },
    /// List refresh tokens, newest first (never their text): subject, client, service, issued,
    /// last used, expiries, and whether each works now.
    RefreshTokens {
        #[command(flatten)]
        config: ConfigArg,
        /// Only those issued to this `sub`.
        #[arg(long, allow_hyphen_values = true)]
        sub: Option<String>,
        /// Only those of this `stellaops:tenant`.
        #[arg(long)]
        tenant: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// One JSON document `{"refresh_tokens": [...]}` instead of one line per token.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a subject, licence, tenant, client, caller token (by `jti`) or refresh token (by id).
    Revoke {
        #[command(flatten)]
        config: ConfigArg,
        /// subject, licence, tenant, client, caller_token or refresh_token.
        kind: String,
        /// What it names (a `jti` is random base64url and may begin with `-`).
        #[arg(allow_hyphen_values = true)]
        value: String,
        /// Why (shown to the refused caller).
        #[arg(long)]
        reason: String,
        /// When it stops applying (RFC 3339 or Unix seconds); until lifted if omitted.
        #[arg(long)]
        expires_at: Option<String>,
        /// Apply it to this tenant's callers only.
        #[arg(long)]
        tenant: Option<String>,
        /// Set the ledger up if no service has run on it yet (create the SQLite file, or the schema
        /// in an empty PostgreSQL database), so revocations apply from the first start; without
        /// it, a ledger that is not there is refused.
        #[arg(long)]
        create: bool,
    },
    /// List revocations (expired ones until pruned).
    Revocations {
        #[command(flatten)]
        config: ConfigArg,
        /// As JSON `{"revocations": [...]}`.
        #[arg(long)]
        json: bool,
    },
    /// Lift a revocation.
    Unrevoke {
        #[command(flatten)]
        config: ConfigArg,
        /// The revocation's id.
        id: String,
    },
    /// Write events as deterministic JSON lines (id order, sorted keys) with a detached signature
    /// (OUT.sig), signed with --key/--pkcs11 or the configuration's active signing key.
    Export {
        #[command(flatten)]
        config: ConfigArg,
        /// At or after (RFC 3339 or Unix seconds).
        #[arg(long)]
        since: Option<String>,
        /// Before (RFC 3339 or Unix seconds).
        #[arg(long)]
        until: Option<String>,
        /// Where to write the events.
        #[arg(long)]
        out: PathBuf,
        /// Where to write the signature (default: OUT.sig).
        #[arg(long)]
        signature: Option<PathBuf>,
        #[command(flatten)]
        signer: super::signer::SignerArgs,
    },
    /// Check an export against its signature; names the first line that differs.
    Verify {
        #[command(flatten)]
        config: ConfigArg,
        /// The signature (default: FILE.sig).
        #[arg(long)]
        signature: Option<PathBuf>,
        /// Keys to trust (default: the configuration's signing keys).
        #[command(flatten)]
        keys: super::signer::VerifierArgs,
        /// The export.
        file: PathBuf,
    },
}

#[derive(Debug, Args)]
pub(super) struct ConfigArg {
    /// The service's configuration file (its `ledger.url` is used).
    #[arg(long, env = "REGISTRY_TOKEN_CONFIG", default_value = "etc/registry-token.yaml")]
    config: PathBuf,
}

impl ConfigArg {
    /// The configuration file.
    pub(super) fn path(&self) -> &std::path::Path {
        &self.config
    }
}

/// What a command does when the configured SQLite ledger does not exist yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum IfMissing {
    /// Refuse: a command that reads (or changes what is there) would report an empty ledger.
    Refuse,
    /// Refuse, and say that `ledger revoke --create` would create it.
    RefuseUnlessCreate,
    /// Create it, and say so: `ledger revoke --create` sets up a ledger before any service
    /// uses it.
    Create,
}

/// The ledger `config` names (an error when it keeps none).
pub(super) async fn open(config: &ConfigArg, missing: IfMissing) -> Result<Ledger, String> {
    let config = Config::load(&config.config).map_err(|e| e.to_string())?;
    open_configured(&config.ledger, missing)
        .await?
        .ok_or_else(|| "ledger.url is none: this configuration keeps no ledger".to_owned())
}

/// `Ledger::open` for a command rather than the service. A relative SQLite path is from the
/// working directory, so a command run elsewhere than the service would otherwise create a new,
/// empty ledger and report no events, no revocations, or build a bundle without them.
pub(super) async fn open_configured(
    ledger: &LedgerConfig,
    missing: IfMissing,
) -> Result<Option<Ledger>, String> {
    if let LedgerUrl::Sqlite(path) = &ledger.url
        && !path.exists()
    {
        let whole = std::path::absolute(path).unwrap_or_else(|_| path.clone());
        let url = &ledger.url;
        match missing {
            IfMissing::Refuse | IfMissing::RefuseUnlessCreate => {
                return Err(format!(
                    "there is no ledger at {} (ledger.url {url}; a relative path is from the working \
                     directory): run this where the service runs, or start the service once{}",
                    whole.display(),
                    match missing {
                        IfMissing::RefuseUnlessCreate =>
                            " (`ledger revoke --create` sets up a ledger no service uses yet)",
                        _ => "",
                    }
                ));
            }
            IfMissing::Create => eprintln!(
                "note: there was no ledger at {} (ledger.url {url}; a relative path is from the working \
                 directory): created it",
                whole.display()
            ),
        }
    }
    // Only a ledger with no schema yet is given one (a SQLite file this command creates, an empty
    // PostgreSQL database); one a service runs on is never migrated by a command (older replicas
    // would then refuse it).
    let migrate = match missing {
        IfMissing::Create => Migrate::IfEmpty,
        IfMissing::Refuse | IfMissing::RefuseUnlessCreate => Migrate::Never,
    };
    Ledger::open_for_command(ledger, migrate).await.map_err(|e| format!("the ledger: {e}"))
}

/// The policy bundle the configuration at `path` serves, named with its revision, when it carries
/// the revocation `id` and this command can read it: a file source, or the copy of a remote one
/// kept in `policy.cache_dir` (what the service last applied from it).
fn bundle_carrying(path: &std::path::Path, id: &str) -> Option<String> {
    let config = Config::load(path).ok()?;
    let bundle = config.policy.bundle.as_ref()?;
    let file = match (&bundle.source, &config.policy.cache_dir) {
        (crate::config::BundleSource::File(file), _) => file.clone(),
        (remote, Some(cache_dir)) => crate::bundle::last_applied_copy(cache_dir, remote),
        (_, None) => return None,
    };
    let bytes = std::fs::read(&file).ok()?;
    let opened = crate::bundle::Bundle::open_unverified(&bytes, bundle.max_bytes).ok()?;
    opened
        .revocations()
        .iter()
        .any(|r| r.id == id)
        .then(|| format!("the policy bundle {} (revision {})", bundle.source, opened.manifest().revision))
}

/// Who acts from the command line: `cli:` and the local user.
fn actor() -> String {
    format!(
        "cli:{}",
        ["SUDO_USER", "USER", "LOGNAME"]
            .iter()
            .find_map(|name| std::env::var(name).ok())
            .unwrap_or_else(|| "unknown".into())
    )
}

fn cli_audit(outcome: Outcome, revocation: &Revocation) -> Event {
    Event::revocation_audit(outcome, revocation, &actor())
}

/// A filter naming something, checked as the admin API checks it (an empty one, or one with a
/// quote or a space, could only ever list nothing).
fn name_filter(flag: &str, value: Option<String>) -> Result<Option<String>, String> {
    value
        .map(|value| crate::http::identifier(&format!("--{flag}"), &value).map_err(|e| e.to_string()))
        .transpose()
}

fn at_least_one(limit: usize) -> Result<(), String> {
    if limit == 0 { Err("--limit 0 would list nothing; give at least 1".into()) } else { Ok(()) }
}

pub(super) async fn run(command: LedgerCommand) -> Result<ExitCode, String> {
    match command {
        LedgerCommand::Events { config, sub, licence, tenant, outcome, jti, since, until, limit, json } => {
            // Checked before the ledger is opened: a mistyped filter is the caller's to fix.
            let outcome =
                outcome.map(|name| Outcome::parse(&name).map_err(|e| format!("--{e}"))).transpose()?;
            let (sub, licence) = (name_filter("sub", sub)?, name_filter("licence", licence)?);
            let (tenant, jti) = (name_filter("tenant", tenant)?, name_filter("jti", jti)?);
            at_least_one(limit)?;
            let time = |value: Option<String>, name: &str| {
                value.map(|v| Millis::parse(&v).map_err(|e| format!("--{name}: {e}"))).transpose()
            };
            let (since, until) = (time(since, "since")?, time(until, "until")?);
            check_window(since, until).map_err(|e| format!("--{e}"))?;
            let ledger = open(&config, IfMissing::Refuse).await?;
            let filter =
                EventFilter { sub, licence, tenant, outcome, jti, since, until, before_id: None, limit };
            let events = ledger.events(&filter).await.map_err(|e| e.to_string())?;
            if json {
                let document = serde_json::json!({ "events": events });
                println!("{document}");
            } else {
                for event in &events {
                    println!("{}", event_line(event));
                }
            }
        }
        LedgerCommand::RefreshTokens { config, sub, tenant, limit, json } => {
            let (sub, tenant) = (name_filter("sub", sub)?, name_filter("tenant", tenant)?);
            at_least_one(limit)?;
            let ledger = open(&config, IfMissing::Refuse).await?;
            let filter = RefreshTokenFilter { sub, tenant, before_id: None, limit };
            let tokens = ledger.refresh_tokens(&filter).await.map_err(|e| e.to_string())?;
            let now = Millis::now();
            let views: Vec<serde_json::Value> =
                tokens.iter().map(|t| ledger.refresh_token_view(t, now)).collect();
            if json {
                println!("{}", serde_json::json!({ "refresh_tokens": views }));
            } else {
                for view in &views {
                    println!("{}", refresh_token_line(view));
                }
            }
        }
        LedgerCommand::Revoke { config, kind, value, reason, expires_at, tenant, create } => {
            let now = Millis::now();
            // Checked before the ledger is opened, which `--create` creates when it is not there
            // yet: a mistyped revocation must not leave an empty ledger behind.
            let request = RevocationRequest::new(
                &kind,
                &value,
                &reason,
                expires_at.as_deref(),
                tenant.as_deref(),
                now,
            )?;
            // A new ledger holds no refresh token to revoke.
            let refresh_token = RevocationKind::from_name(&kind) == Some(RevocationKind::RefreshToken);
            let missing = match (create, refresh_token) {
                (_, true) => IfMissing::Refuse,
                (true, false) => IfMissing::Create,
                (false, false) => IfMissing::RefuseUnlessCreate,
            };
            let ledger = open(&config, missing).await?;
            // A mistyped id, or another tenant's token, would revoke nothing, silently: say so.
            if refresh_token {
                let Some(token) = ledger.refresh_token(&value).await.map_err(|e| e.to_string())? else {
                    return Err(format!(
                        "no refresh token {value} (ids are listed by `ledger refresh-tokens`)"
                    ));
                };
                if let Some(beyond) = token.beyond(tenant.as_deref()) {
                    return Err(beyond);
                }
            }
            let revocation = request.into_revocation(&actor(), None, now);
            let audit = cli_audit(Outcome::RevocationCreated, &revocation);
            ledger.revoke(&revocation, audit).await.map_err(|e| e.to_string())?;
            println!("{}", revocation.id);
            eprintln!(
                "revoked {} {}; running replicas apply it within a second",
                revocation.kind, revocation.value
            );
        }
        LedgerCommand::Revocations { config, json } => {
            let ledger = open(&config, IfMissing::Refuse).await?;
            let revocations = ledger.revocations().await.map_err(|e| e.to_string())?;
            if json {
                println!("{}", serde_json::json!({ "revocations": revocations }));
            } else {
                for r in &revocations {
                    println!(
                        "{}  {} {}  tenant={}  expires={}  by={}  {}",
                        r.id,
                        r.kind,
                        r.value,
                        r.tenant.as_deref().unwrap_or("*"),
                        r.expires_at.map_or_else(|| "never".to_owned(), |t| t.to_string()),
                        r.created_by,
                        r.reason
                    );
                }
            }
        }
        LedgerCommand::Export { config, since, until, out, signature, signer } => {
            return super::ledger_export::export(&config.config, since, until, &out, signature, &signer)
                .await;
        }
        LedgerCommand::Verify { config, signature, keys, file } => {
            return super::ledger_export::verify(&file, signature, &keys, &config.config);
        }
        LedgerCommand::Unrevoke { config, id } => {
            let ledger = open(&config, IfMissing::Refuse).await?;
            let revocations = ledger.revocations().await.map_err(|e| e.to_string())?;
            let Some(revocation) = revocations.into_iter().find(|r| r.id == id) else {
                return Err(format!("no revocation {id}"));
            };
            let audit = cli_audit(Outcome::RevocationLifted, &revocation);
            if !ledger.unrevoke(&id, audit).await.map_err(|e| e.to_string())? {
                return Err(format!("no revocation {id}: it was lifted meanwhile"));
            }
            println!("lifted {id} ({} {})", revocation.kind, revocation.value);
            if let Some(carried) = bundle_carrying(config.path(), &id) {
                eprintln!(
                    "note: {carried} carries this revocation too (built with --revocations-from): its \
                     callers stay refused until a revision built without it is applied"
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One line of a refresh token's view: id, state, who, bound to what, when.
fn refresh_token_line(view: &serde_json::Value) -> String {
    let text = |name: &str| view[name].as_str().unwrap_or("-").to_owned();
    let mut line = format!(
        "{} {:<7} sub={} tenant={} client_id={} service={} issued={} last_used={} expires={} idle_expires={}",
        text("id"),
        text("state"),
        text("sub"),
        text("tenant"),
        text("client_id"),
        text("service"),
        text("issued_at"),
        text("last_used_at"),
        text("expires_at"),
        text("idle_expires_at"),
    );
    if let Some(revoked) = view["revoked"].as_str() {
        line.push_str(&format!(" revoked={revoked:?}"));
    }
    line
}

/// One line: time, outcome, who, what, why.
fn event_line(event: &Event) -> String {
    let dash = |value: &Option<String>| value.clone().unwrap_or_else(|| "-".to_owned());
    let mut line = format!(
        "{} {} {:<18} sub={} tenant={} service={}",
        event.time,
        event.id,
        event.outcome.as_str(),
        dash(&event.sub),
        dash(&event.tenant),
        dash(&event.service)
    );
    if !event.granted.is_empty() {
        line.push_str(&format!(" granted={}", event.granted.join(" ")));
    }
    if let Some(reason) = &event.reason {
        line.push_str(&format!(" reason={reason}"));
    }
    if let Some(id) = &event.refresh_token_id {
        line.push_str(&format!(" via={} refresh_token={id}", event.via.as_deref().unwrap_or("-")));
    }
    if let Some(message) = &event.message {
        line.push_str(&format!(" message={message:?}"));
    }
    line
}
