//! The operator's configuration: `etc/registry-token.yaml`, every key overridable by
//! `REGISTRY_TOKEN_<SECTION>__<KEY>` (for example `REGISTRY_TOKEN_SIGNING__LIFETIME_SECONDS=120`).
//!
//! Strict: unknown keys are errors, cross-field rules are checked at start, and every error names
//! the key and where its value came from (the file or the environment variable). Relative paths are
//! resolved from the working directory.

mod env;
mod sections;

pub use crate::mint::{KeyEntry, KeyStatus, Pkcs11KeyConfig, Rfc3339};
pub use sections::{
    AdminConfig, AuthorityConfig, BundleConfig, BundleSource, CacheConfig, DenialStatus, DevelopmentConfig,
    Durability, HttpConfig, JwksSource, LedgerConfig, LedgerUrl, PolicyConfig, PolicyModule,
    RefreshTokensConfig, SigningConfig, SqliteSync, TrustedProxies,
};

use env::{EnvOverrides, describe};
use figment::Figment;
use figment::providers::{Format, Yaml};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::Path;

/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "REGISTRY_TOKEN_";
/// Longest token lifetime any configuration may allow (a day).
const LIFETIME_CEILING: u64 = 24 * 3600;

/// The whole configuration. Every section has its defaults in its `Default` impl, the one place
/// they live; `#[serde(default)]` applies them to whatever the file leaves out.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    #[serde(default = "Config::default_listen")]
    pub listen: SocketAddr,
    /// Accepted `service` values; each is the `aud` of the tokens minted for it.
    pub services: Vec<String>,
    /// The realm named in `WWW-Authenticate: Basic realm="..."` when credentials are missing.
    #[serde(default = "Config::default_realm")]
    pub realm: String,
    /// The identity server whose tokens callers present.
    pub authority: AuthorityConfig,
    /// How registry tokens are signed.
    pub signing: SigningConfig,
    /// Which policy decides, with what settings and limits.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// Request limits of the HTTP edge.
    #[serde(default)]
    pub http: HttpConfig,
    /// Bounded caches of the hot path.
    #[serde(default)]
    pub cache: CacheConfig,
    /// The issuance ledger: every exchange recorded, and revocations.
    #[serde(default)]
    pub ledger: LedgerConfig,
    /// Refresh tokens for `docker login` (kept in the ledger).
    #[serde(default)]
    pub refresh_tokens: RefreshTokensConfig,
    /// The operator listener: the admin API and the probes.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Reload when a file the configuration names (or the configuration itself) changes, as on
    /// SIGHUP.
    #[serde(default)]
    pub watch: bool,
    /// Trial conveniences; never for production.
    #[serde(default)]
    pub development: DevelopmentConfig,
}

impl Config {
    fn default_listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 5050))
    }

    fn default_realm() -> String {
        "registry-token".to_owned()
    }
}

/// The most clock skew `authority.leeway_seconds` may tolerate.
const MAX_LEEWAY: u64 = 300;

/// A configuration that cannot be used; the text names the key and its source.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Reads `path`, applies `REGISTRY_TOKEN_*` overrides from the environment, and checks it.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with_env(path, std::env::vars())
    }

    /// [`Config::load`] with the environment given explicitly (tests).
    pub fn load_with_env(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        if !path.is_file() {
            return Err(ConfigError(format!("the configuration file {} does not exist", path.display())));
        }
        // figment reads YAML into a map that keeps the last of two equal keys: a key added at the
        // top of a file that sets it further down would be silently overruled. (Other errors of
        // the file are figment's to report, with the key and the place.)
        if let Ok(text) = std::fs::read_to_string(path)
            && let Err(error) = serde_norway::from_str::<serde_norway::Value>(&text)
            && error.to_string().contains("duplicate entry")
        {
            return Err(ConfigError(format!("{}: {error}", path.display())));
        }
        let overrides: Vec<(String, String)> =
            env.into_iter().filter(|(name, _)| name.starts_with(ENV_PREFIX)).collect();
        let figment = Figment::new().merge(Yaml::file_exact(path)).merge(EnvOverrides(overrides.clone()));
        let config: Config = figment.extract_lossy().map_err(|error| describe(error, path, &overrides))?;
        config.check().map_err(|problem| {
            ConfigError(format!("{}: {problem}", env::origin(&env::leading_key(&problem), path, &overrides)))
        })?;
        Ok(config)
    }

    /// Cross-field rules.
    pub fn check(&self) -> Result<(), String> {
        if self.services.is_empty() {
            return Err("services: list at least one registry service name".into());
        }
        if let Some(bad) = self.services.iter().find(|s| s.is_empty() || s.chars().any(char::is_whitespace)) {
            return Err(format!("services: {bad:?} is not a service name"));
        }
        if self.authority.issuer.is_empty() {
            return Err("authority.issuer is empty".into());
        }
        if self.authority.audiences.is_empty() {
            return Err("authority.audiences: list at least one accepted audience".into());
        }
        if self.authority.required_scope.is_empty() {
            return Err("authority.required_scope is empty".into());
        }
        // An offline site's Authority keys may come in its policy bundle; otherwise they are named.
        if self.authority.jwks == JwksSource::Bundle && self.policy.bundle.is_none() {
            return Err("authority: set jwks_file or jwks_url (or serve a policy.bundle that carries \
                        authority-jwks.json)"
                .into());
        }
        // Whoever signs callers' tokens with a key in an unsigned bundle is any caller they like.
        if self.authority.jwks == JwksSource::Bundle
            && self.policy.bundle.as_ref().is_some_and(|bundle| bundle.keys.is_empty())
        {
            return Err("authority: the Authority's keys would come from policy.bundle, which is not \
                        checked (policy.bundle_keys is empty): set policy.bundle_keys, or \
                        authority.jwks_file or jwks_url"
                .into());
        }
        if self.authority.jwks_refresh_seconds < 10 {
            return Err("authority.jwks_refresh_seconds must be at least 10".into());
        }
        // 0 would turn every made-up `kid` into a request to the Authority.
        if self.authority.jwks_min_refetch_seconds < 1 {
            return Err("authority.jwks_min_refetch_seconds must be at least 1".into());
        }
        // Leeway is for clock skew; more than minutes of it means accepting expired tokens.
        if self.authority.leeway_seconds > MAX_LEEWAY {
            return Err(format!("authority.leeway_seconds may be at most {MAX_LEEWAY}"));
        }
        if self.signing.issuer.is_empty() {
            return Err("signing.issuer is empty".into());
        }
        let signing = &self.signing;
        check_keys(signing)?;
        if signing.max_lifetime_seconds > LIFETIME_CEILING {
            return Err(format!("signing.max_lifetime_seconds may be at most {LIFETIME_CEILING}"));
        }
        if signing.lifetime_seconds < 5 || signing.lifetime_seconds > signing.max_lifetime_seconds {
            return Err(format!(
                "signing.lifetime_seconds must be between 5 and signing.max_lifetime_seconds ({}), got {}",
                signing.max_lifetime_seconds, signing.lifetime_seconds
            ));
        }
        // A reused token must keep at least 80 % of its lifetime: more than a fifth of it would be
        // cut short anyway.
        if let Some(reuse) = signing.reuse_seconds
            && reuse.saturating_mul(5) > signing.lifetime_seconds
        {
            return Err(format!(
                "signing.reuse_seconds ({reuse}) may be at most a fifth of signing.lifetime_seconds ({}): a \
                 reused token keeps at least 80 % of its lifetime",
                signing.lifetime_seconds
            ));
        }
        if !(1..=10_000).contains(&self.policy.timeout_ms) {
            return Err("policy.timeout_ms must be between 1 and 10000".into());
        }
        if !(1..=1024).contains(&self.policy.memory_mib) {
            return Err("policy.memory_mib must be between 1 and 1024".into());
        }
        if [self.cache.caller_tokens, self.cache.decisions, self.cache.tokens].iter().any(|&c| c > 1_000_000)
        {
            return Err("cache: at most 1000000 entries per cache".into());
        }
        if !(1..=3650).contains(&self.ledger.retention_days) {
            return Err("ledger.retention_days must be between 1 and 3650".into());
        }
        if !(1..=1_000_000).contains(&self.ledger.queue_events) {
            return Err("ledger.queue_events must be between 1 and 1000000".into());
        }
        if self.ledger.sqlite_sync.is_some() && !matches!(self.ledger.url, LedgerUrl::Sqlite(_)) {
            return Err(
                "ledger.sqlite_sync applies to an SQLite ledger (ledger.url: sqlite://PATH) only".into()
            );
        }
        let refresh = &self.refresh_tokens;
        if !(1..=365).contains(&refresh.lifetime_days) {
            return Err("refresh_tokens.lifetime_days must be between 1 and 365".into());
        }
        if refresh.idle_days > refresh.lifetime_days {
            return Err(format!(
                "refresh_tokens.idle_days ({}) may be at most refresh_tokens.lifetime_days ({}); 0 turns the \
                 idle limit off",
                refresh.idle_days, refresh.lifetime_days
            ));
        }
        if refresh.enabled == Some(true) && self.ledger.url == LedgerUrl::None {
            return Err(
                "refresh_tokens.enabled: refresh tokens are kept in the ledger, and ledger.url is none"
                    .into(),
            );
        }
        if self.admin.required_scope.is_empty() {
            return Err("admin.required_scope is empty".into());
        }
        if self.admin.required_scope == self.authority.required_scope {
            return Err(format!(
                "admin.required_scope must differ from authority.required_scope ({}): every caller \
                 would be an administrator",
                self.authority.required_scope
            ));
        }
        if self.admin.listen == self.listen && self.listen.port() != 0 {
            return Err(format!("admin.listen and listen are the same address ({})", self.listen));
        }
        if !(1..=3600).contains(&self.http.read_timeout_seconds) {
            return Err("http.read_timeout_seconds must be between 1 and 3600".into());
        }
        // Past an hour it is no grace period; far past it, the deadline would not fit in a clock.
        if self.http.shutdown_grace_seconds > 3600 {
            return Err("http.shutdown_grace_seconds must be between 0 and 3600".into());
        }
        if !(1..=1_000_000).contains(&self.http.max_connections) {
            return Err("http.max_connections must be between 1 and 1000000".into());
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.http.max_body_bytes) {
            return Err("http.max_body_bytes must be between 1024 and 16777216".into());
        }
        Ok(())
    }
}

impl Config {
    /// Whether `offline_token=true` (and `access_type=offline`) get a refresh token: on by default
    /// whenever a ledger is configured.
    pub fn refresh_tokens_enabled(&self) -> bool {
        self.refresh_tokens.enabled.unwrap_or(self.ledger.url != LedgerUrl::None)
    }
}

/// The shape of the signing keys: one form or the other, exactly one active key, and what each
/// status needs. Whether the files load and match is checked when they are loaded.
fn check_keys(signing: &SigningConfig) -> Result<(), String> {
    let single = !signing.key_file.as_os_str().is_empty();
    if signing.keys.is_empty() {
        if !single {
            return Err(
                "signing.key_file (or signing.keys) is required: the key that signs registry tokens".into()
            );
        }
        return Ok(());
    }
    if single || signing.cert_file.is_some() {
        return Err("signing: use either key_file/cert_file (one key) or keys (a key set), not both".into());
    }
    let active: Vec<String> = signing
        .keys
        .iter()
        .enumerate()
        .filter(|(_, k)| k.status == KeyStatus::Active)
        .map(|(i, k)| k.describe(i))
        .collect();
    match active.len() {
        0 => return Err("signing.keys: no key is active; exactly one must be `status: active`".into()),
        1 => {}
        _ => {
            return Err(format!("signing.keys: {} are all active; exactly one may be", active.join(" and ")));
        }
    }
    for (index, key) in signing.keys.iter().enumerate() {
        let entry = key.describe(index);
        if key.key_file.is_some() && key.pkcs11.is_some() {
            return Err(format!("{entry}: give key_file or pkcs11, not both"));
        }
        match key.status {
            KeyStatus::Active if key.key_file.is_none() && key.pkcs11.is_none() => {
                return Err(format!("{entry}: the active key needs key_file or pkcs11 (it signs)"));
            }
            KeyStatus::Published | KeyStatus::Retired if key.cert_file.is_none() => {
                return Err(format!(
                    "{entry}: a {} key needs cert_file: registries trust it by its certificate",
                    key.status.name()
                ));
            }
            KeyStatus::Retired if key.retire_after.is_none() => {
                return Err(format!(
                    "{entry}: a retired key needs retire_after (when it stops being published: now + \
                     signing.max_lifetime_seconds + the registry's 60 s leeway)"
                ));
            }
            KeyStatus::Active | KeyStatus::Published if key.retire_after.is_some() => {
                return Err(format!("{entry}: retire_after is for retired keys only"));
            }
            _ => {}
        }
        if let Some(hsm) = &key.pkcs11
            && !(1..=64).contains(&hsm.sessions)
        {
            return Err(format!("{entry}: pkcs11.sessions must be between 1 and 64"));
        }
    }
    Ok(())
}
