//! The operator's configuration: `etc/registry-token.yaml`, every key overridable by
//! `REGISTRY_TOKEN_<SECTION>__<KEY>` (for example `REGISTRY_TOKEN_SIGNING__LIFETIME_SECONDS=120`).
//!
//! Strict: unknown keys are errors, cross-field rules are checked at start, and every error names
//! the key and where its value came from (the file or the environment variable). Relative paths are
//! resolved from the working directory.

use crate::mint::{KidFormat, SigningAlgorithm};
use figment::Figment;
use figment::providers::{Format, Yaml};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "REGISTRY_TOKEN_";
/// Longest token lifetime any configuration may allow (a day).
const LIFETIME_CEILING: u64 = 24 * 3600;

/// The whole configuration.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Accepted `service` values; each is the `aud` of the tokens minted for it.
    pub services: Vec<String>,
    /// The realm named in `WWW-Authenticate: Basic realm="..."` when credentials are missing.
    #[serde(default = "default_realm")]
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
    /// Reload when a file the configuration names (or the configuration itself) changes, as on
    /// SIGHUP.
    #[serde(default)]
    pub watch: bool,
    /// Trial conveniences; never for production.
    #[serde(default)]
    pub development: DevelopmentConfig,
}

/// `authority:`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthorityConfig {
    /// Expected `iss` of caller tokens.
    pub issuer: String,
    /// Accepted `aud` values of caller tokens.
    pub audiences: Vec<String>,
    /// Scope a caller token must carry.
    #[serde(default = "default_required_scope")]
    pub required_scope: String,
    /// The Authority's JWKS as a file (exactly one of `jwks_file` and `jwks_url`).
    pub jwks_file: Option<PathBuf>,
    /// The Authority's JWKS URL, fetched and refreshed.
    pub jwks_url: Option<String>,
    /// How often a `jwks_url` is refetched.
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh_seconds: u64,
    /// An unknown `kid` refetches a `jwks_url` at most once per this many seconds.
    #[serde(default = "default_jwks_min_refetch")]
    pub jwks_min_refetch_seconds: u64,
    /// Clock skew tolerated on `exp`/`nbf`.
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
}

/// `signing:`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SigningConfig {
    /// `iss` of minted tokens: the registry's `auth.token.issuer`.
    pub issuer: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1), readable by its owner only.
    pub key_file: PathBuf,
    /// PEM certificate (chain) for the key: adds `x5c` to tokens.
    pub cert_file: Option<PathBuf>,
    /// `RS256` (default) or `ES256`.
    #[serde(default)]
    pub algorithm: SigningAlgorithm,
    /// `libtrust` (distribution 2.8, default) or `thumbprint` (RFC 7638).
    #[serde(default)]
    pub kid_format: KidFormat,
    /// Lifetime of minted tokens.
    #[serde(default = "default_lifetime")]
    pub lifetime_seconds: u64,
    /// Upper bound on `lifetime_seconds`; raise both together, deliberately.
    #[serde(default = "default_lifetime")]
    pub max_lifetime_seconds: u64,
}

/// `policy:`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// `builtin:plan-catalogue`, or the path of a `.wasm` component.
    #[serde(default = "default_module")]
    pub module: String,
    /// The policy's settings (YAML or JSON), handed to it as JSON.
    pub settings_file: Option<PathBuf>,
    /// Deadline of one evaluation.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Memory cap of one evaluation.
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u64,
}

/// `http:`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Largest accepted request body (the OAuth2 POST form).
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// How long in-flight requests may take to finish at shutdown.
    #[serde(default = "default_grace")]
    pub shutdown_grace_seconds: u64,
    /// Status of a policy denial (a revoked licence): 403, or 401 for clients built on
    /// containers/image (skopeo, podman, buildah), which print the explanation only on a 401.
    #[serde(default = "default_denial_status")]
    pub denial_status: u16,
}

/// `cache:`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Validated caller tokens remembered, each only until its `exp`; 0 disables.
    #[serde(default = "default_cache_entries")]
    pub caller_tokens: usize,
    /// Policy decisions remembered per loaded policy and settings; 0 disables.
    #[serde(default = "default_cache_entries")]
    pub decisions: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig { caller_tokens: default_cache_entries(), decisions: default_cache_entries() }
    }
}

fn default_cache_entries() -> usize {
    4096
}

/// `development:`
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DevelopmentConfig {
    /// Create a missing signing key and a missing development Authority (for `jwks_file`) at start.
    #[serde(default)]
    pub create_missing_keys: bool,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            module: default_module(),
            settings_file: None,
            timeout_ms: default_timeout_ms(),
            memory_mib: default_memory_mib(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_body_bytes: default_max_body(),
            shutdown_grace_seconds: default_grace(),
            denial_status: default_denial_status(),
        }
    }
}

/// The most clock skew `authority.leeway_seconds` may tolerate.
const MAX_LEEWAY: u64 = 300;

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5050))
}
fn default_realm() -> String {
    "registry-token".to_owned()
}
fn default_required_scope() -> String {
    "registry.token.issue".to_owned()
}
fn default_jwks_refresh() -> u64 {
    300
}
fn default_jwks_min_refetch() -> u64 {
    30
}
fn default_leeway() -> u64 {
    30
}
fn default_lifetime() -> u64 {
    300
}
fn default_module() -> String {
    crate::policy::BUILTIN_NAME.to_owned()
}
fn default_timeout_ms() -> u64 {
    50
}
fn default_memory_mib() -> u64 {
    16
}
fn default_max_body() -> usize {
    64 * 1024
}
fn default_grace() -> u64 {
    10
}
fn default_denial_status() -> u16 {
    403
}

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
        let overrides: Vec<(String, String)> =
            env.into_iter().filter(|(name, _)| name.starts_with(ENV_PREFIX)).collect();
        let figment = Figment::new().merge(Yaml::file_exact(path)).merge(EnvOverrides(overrides));
        let config: Config = figment.extract().map_err(|error| describe(error, path))?;
        config.check().map_err(|problem| ConfigError(format!("{}: {problem}", path.display())))?;
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
        match (&self.authority.jwks_file, &self.authority.jwks_url) {
            (Some(_), Some(_)) => {
                return Err("authority: set jwks_file or jwks_url, not both".into());
            }
            (None, None) => return Err("authority: set jwks_file or jwks_url".into()),
            (None, Some(url)) if !crate::authority::acceptable_jwks_url(url) => {
                return Err(format!(
                    "authority.jwks_url: {url:?} must be an https URL (plain http only to a loopback address): \
                     whoever can change the keys in transit can forge any caller"
                ));
            }
            _ => {}
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
        if signing.max_lifetime_seconds > LIFETIME_CEILING {
            return Err(format!("signing.max_lifetime_seconds may be at most {LIFETIME_CEILING}"));
        }
        if signing.lifetime_seconds < 5 || signing.lifetime_seconds > signing.max_lifetime_seconds {
            return Err(format!(
                "signing.lifetime_seconds must be between 5 and signing.max_lifetime_seconds ({}), got {}",
                signing.max_lifetime_seconds, signing.lifetime_seconds
            ));
        }
        if !(1..=10_000).contains(&self.policy.timeout_ms) {
            return Err("policy.timeout_ms must be between 1 and 10000".into());
        }
        if !(1..=1024).contains(&self.policy.memory_mib) {
            return Err("policy.memory_mib must be between 1 and 1024".into());
        }
        if self.policy.module != crate::policy::BUILTIN_NAME && !self.policy.module.ends_with(".wasm") {
            return Err(format!(
                "policy.module: {:?} is neither {} nor a path to a .wasm component",
                self.policy.module,
                crate::policy::BUILTIN_NAME
            ));
        }
        if self.cache.caller_tokens > 1_000_000 || self.cache.decisions > 1_000_000 {
            return Err("cache: at most 1000000 entries per cache".into());
        }
        if !matches!(self.http.denial_status, 401 | 403) {
            return Err(format!("http.denial_status must be 401 or 403, got {}", self.http.denial_status));
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.http.max_body_bytes) {
            return Err("http.max_body_bytes must be between 1024 and 16777216".into());
        }
        Ok(())
    }
}

/// `REGISTRY_TOKEN_<SECTION>__<KEY>` variables from a given environment. (figment's own `Env`
/// reads the process environment, which tests cannot safely change.)
struct EnvOverrides(Vec<(String, String)>);

impl figment::Provider for EnvOverrides {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("environment")
    }

    fn data(&self) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        let mut dict = figment::value::Dict::new();
        for (name, value) in &self.0 {
            let Some(key) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let key = key.to_ascii_lowercase();
            // The CLI's own variables are not configuration keys.
            if key == "config" || key == "log" {
                continue;
            }
            let path: Vec<&str> = key.split("__").collect();
            let parsed: figment::value::Value = value.parse().unwrap_or_else(|_| value.clone().into());
            insert(&mut dict, &path, parsed);
        }
        Ok(figment::Profile::Default.collect(dict))
    }
}

fn insert(dict: &mut figment::value::Dict, path: &[&str], value: figment::value::Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert((*last).to_owned(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry((*first).to_owned())
                .or_insert_with(|| figment::value::Value::from(figment::value::Dict::new()));
            if let figment::value::Value::Dict(_, inner) = entry {
                insert(inner, rest, value);
            } else {
                let mut inner = figment::value::Dict::new();
                insert(&mut inner, rest, value);
                *entry = inner.into();
            }
        }
    }
}

fn describe(error: figment::Error, path: &Path) -> ConfigError {
    let lines: Vec<String> = error
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let origin = match e.metadata.as_ref().and_then(|m| m.source.as_ref()) {
                Some(figment::Source::File(file)) => file.display().to_string(),
                _ if e.metadata.as_ref().is_some_and(|m| m.name.contains("environment")) => {
                    format!(
                        "environment variable {ENV_PREFIX}{}",
                        key.to_ascii_uppercase().replace('.', "__")
                    )
                }
                _ => path.display().to_string(),
            };
            match key.is_empty() {
                true => format!("{origin}: {}", e.kind),
                false => format!("{origin}: {key}: {}", e.kind),
            }
        })
        .collect();
    ConfigError(lines.join("\n"))
}
