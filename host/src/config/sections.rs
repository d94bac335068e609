//! The sections of the configuration below the top level, each with its defaults in its
//! `Default` impl (the one place they live), and the values that are parsed rather than checked
//! later (`policy.module`, `http.denial_status`, the Authority's key source).

use crate::mint::{KeyEntry, KeyStatus, KidFormat, SigningAlgorithm};
use crate::policy::{Builtin, Limits};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// `authority:`, parsed: exactly one source of keys.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(try_from = "AuthoritySection")]
pub struct AuthorityConfig {
    /// Expected `iss` of caller tokens.
    pub issuer: String,
    /// Accepted `aud` values of caller tokens.
    pub audiences: Vec<String>,
    /// Scope a caller token must carry.
    pub required_scope: String,
    /// Where the Authority's keys come from (`jwks_file` or `jwks_url`).
    pub jwks: JwksSource,
    /// How often a `jwks_url` is refetched.
    pub jwks_refresh_seconds: u64,
    /// An unknown `kid` refetches a `jwks_url` at most once per this many seconds.
    pub jwks_min_refetch_seconds: u64,
    /// Clock skew tolerated on `exp`/`nbf`.
    pub leeway_seconds: u64,
}

/// `authority.jwks_file` or `authority.jwks_url`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JwksSource {
    /// A JWKS file, read at start and on every reload.
    File(PathBuf),
    /// A JWKS URL (https, or plain http to a loopback address), fetched and refreshed.
    Url(String),
}

/// `authority:` as written. `issuer` and `audiences` have no default; the rest do.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct AuthoritySection {
    issuer: String,
    audiences: Vec<String>,
    required_scope: String,
    jwks_file: Option<PathBuf>,
    jwks_url: Option<String>,
    jwks_refresh_seconds: u64,
    jwks_min_refetch_seconds: u64,
    leeway_seconds: u64,
}

impl Default for AuthoritySection {
    fn default() -> Self {
        AuthoritySection {
            issuer: String::new(),
            audiences: Vec::new(),
            required_scope: "registry.token.issue".to_owned(),
            jwks_file: None,
            jwks_url: None,
            jwks_refresh_seconds: 300,
            jwks_min_refetch_seconds: 30,
            leeway_seconds: 30,
        }
    }
}

impl TryFrom<AuthoritySection> for AuthorityConfig {
    type Error = String;

    fn try_from(section: AuthoritySection) -> Result<Self, String> {
        let jwks = match (section.jwks_file, section.jwks_url) {
            (Some(_), Some(_)) => return Err("set jwks_file or jwks_url, not both".into()),
            (None, None) => return Err("set jwks_file or jwks_url".into()),
            (Some(file), None) => JwksSource::File(file),
            (None, Some(url)) if !crate::authority::acceptable_jwks_url(&url) => {
                return Err(format!(
                    "jwks_url: {url:?} must be an https URL (plain http only to a loopback address): \
                     whoever can change the keys in transit can forge any caller"
                ));
            }
            (None, Some(url)) => JwksSource::Url(url),
        };
        Ok(AuthorityConfig {
            issuer: section.issuer,
            audiences: section.audiences,
            required_scope: section.required_scope,
            jwks,
            jwks_refresh_seconds: section.jwks_refresh_seconds,
            jwks_min_refetch_seconds: section.jwks_min_refetch_seconds,
            leeway_seconds: section.leeway_seconds,
        })
    }
}

/// `signing:`. `issuer` and a key (`key_file`, or the key set `keys`) have no default; the rest do.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SigningConfig {
    /// `iss` of minted tokens: the registry's `auth.token.issuer`.
    pub issuer: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1), readable by its owner only. The single-key form:
    /// one active key; empty when `keys` is used.
    pub key_file: PathBuf,
    /// PEM certificate (chain) for the key: adds `x5c` to tokens.
    pub cert_file: Option<PathBuf>,
    /// The key set: exactly one `active` key signs, `published` and `retired` ones are published
    /// in `/.well-known/jwks.json` and `/certs.pem` so registries trust them across a rotation.
    pub keys: Vec<KeyEntry>,
    /// `RS256` (default) or `ES256`.
    pub algorithm: SigningAlgorithm,
    /// `libtrust` (distribution 2.8, default) or `thumbprint` (RFC 7638).
    pub kid_format: KidFormat,
    /// Lifetime of minted tokens.
    pub lifetime_seconds: u64,
    /// Upper bound on `lifetime_seconds`; raise both together, deliberately.
    pub max_lifetime_seconds: u64,
}

impl Default for SigningConfig {
    fn default() -> Self {
        SigningConfig {
            issuer: String::new(),
            key_file: PathBuf::new(),
            cert_file: None,
            keys: Vec::new(),
            algorithm: SigningAlgorithm::default(),
            kid_format: KidFormat::default(),
            lifetime_seconds: 300,
            max_lifetime_seconds: 300,
        }
    }
}

impl SigningConfig {
    /// The key set as entries: `keys`, or the single `key_file`/`cert_file` as one active key.
    pub fn key_entries(&self) -> Vec<KeyEntry> {
        if !self.keys.is_empty() {
            return self.keys.clone();
        }
        vec![KeyEntry {
            key_file: Some(self.key_file.clone()),
            pkcs11: None,
            cert_file: self.cert_file.clone(),
            status: KeyStatus::Active,
            retire_after: None,
            algorithm: Some(self.algorithm),
            single: true,
        }]
    }
}

/// `policy:`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// `builtin:plan-catalogue`, or the path of a `.wasm` component.
    pub module: PolicyModule,
    /// The policy's settings (YAML or JSON), handed to it as JSON.
    pub settings_file: Option<PathBuf>,
    /// Deadline of one evaluation.
    pub timeout_ms: u64,
    /// Memory cap of one evaluation.
    pub memory_mib: u64,
    /// Where compiled policy code is kept between starts and reloads; `None`: compiled each time.
    pub cache_dir: Option<PathBuf>,
}

impl Default for PolicyConfig {
    /// The runtime's own default limits ([`Limits::default`]), in the configuration's units.
    fn default() -> Self {
        let limits = Limits::default();
        PolicyConfig {
            module: PolicyModule::Builtin(Builtin::PlanCatalogue),
            settings_file: None,
            timeout_ms: u64::try_from(limits.timeout.as_millis()).unwrap_or(u64::MAX),
            memory_mib: (limits.memory_bytes / MIB) as u64,
            cache_dir: None,
        }
    }
}

impl PolicyConfig {
    /// The limits every evaluation runs under.
    pub fn limits(&self) -> Limits {
        Limits {
            timeout: Duration::from_millis(self.timeout_ms),
            memory_bytes: usize::try_from(self.memory_mib).unwrap_or(usize::MAX).saturating_mul(MIB),
        }
    }
}

const MIB: usize = 1024 * 1024;

/// `policy.module`: which component decides. Parsed, not validated later: a value that is
/// neither a known built-in nor a `.wasm` path is refused when the configuration is read.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum PolicyModule {
    /// A policy built into the binary.
    Builtin(Builtin),
    /// A WebAssembly component on disk.
    File(PathBuf),
}

impl TryFrom<String> for PolicyModule {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        if let Some(name) = value.strip_prefix(Builtin::PREFIX) {
            return Builtin::from_name(name).map(PolicyModule::Builtin).ok_or_else(|| {
                format!("{value:?} is not a built-in policy; the built-in one is {}", Builtin::PlanCatalogue)
            });
        }
        if value.ends_with(".wasm") {
            return Ok(PolicyModule::File(PathBuf::from(value)));
        }
        Err(format!("{value:?} is neither {} nor a path to a .wasm component", Builtin::PlanCatalogue))
    }
}

impl std::fmt::Display for PolicyModule {
    /// As it is written in the configuration: `builtin:plan-catalogue` or the path.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PolicyModule::Builtin(builtin) => builtin.fmt(f),
            PolicyModule::File(path) => path.display().fmt(f),
        }
    }
}

/// `http:`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Largest accepted request body (the OAuth2 POST form).
    pub max_body_bytes: usize,
    /// How long in-flight requests may take to finish at shutdown.
    pub shutdown_grace_seconds: u64,
    /// Status of a policy denial (a revoked licence): 403, or 401 for clients built on
    /// containers/image (skopeo, podman, buildah), which print the explanation only on a 401.
    pub denial_status: DenialStatus,
    /// Proxies whose `X-Forwarded-For` is believed (addresses or CIDR blocks): the ledger records
    /// the first untrusted hop as the client address when the peer is one of them.
    pub trusted_proxies: TrustedProxies,
}

/// `http.trusted_proxies`: addresses (`10.0.0.7`) and networks (`10.0.0.0/8`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Vec<String>")]
pub struct TrustedProxies(pub Vec<ipnet::IpNet>);

impl TryFrom<Vec<String>> for TrustedProxies {
    type Error = String;

    fn try_from(entries: Vec<String>) -> Result<Self, String> {
        entries
            .iter()
            .map(|entry| {
                entry
                    .parse::<ipnet::IpNet>()
                    .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| format!("{entry:?} is neither an IP address nor a CIDR network"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedProxies)
    }
}

impl TrustedProxies {
    /// Whether `address` is a trusted proxy.
    pub fn contains(&self, address: &std::net::IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(address))
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_body_bytes: 64 * 1024,
            shutdown_grace_seconds: 10,
            denial_status: DenialStatus::Forbidden,
            trusted_proxies: TrustedProxies::default(),
        }
    }
}

/// `http.denial_status`: `403` or `401`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "u16")]
pub enum DenialStatus {
    /// 403 Forbidden, the default.
    Forbidden,
    /// 401 Unauthorized, for containers/image clients.
    Unauthorized,
}

impl TryFrom<u16> for DenialStatus {
    type Error = String;

    fn try_from(status: u16) -> Result<Self, String> {
        match status {
            403 => Ok(DenialStatus::Forbidden),
            401 => Ok(DenialStatus::Unauthorized),
            other => Err(format!("must be 401 or 403, got {other}")),
        }
    }
}

/// `cache:`
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Validated caller tokens remembered, each only until its `exp`; 0 disables.
    pub caller_tokens: usize,
    /// Policy decisions remembered per loaded policy and settings; 0 disables.
    pub decisions: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig { caller_tokens: 4096, decisions: 4096 }
    }
}

/// `development:`
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DevelopmentConfig {
    /// Create a missing signing key and a missing development Authority (for `jwks_file`) at start.
    pub create_missing_keys: bool,
}

/// `ledger:`: where every exchange is recorded and revocations live.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LedgerConfig {
    /// `sqlite://PATH`, `postgres://...`, or `none`.
    pub url: LedgerUrl,
    /// `strict` (no token before its record is committed) or `relaxed`.
    pub durability: Durability,
    /// Events older than this are pruned in the background.
    pub retention_days: u32,
    /// Events waiting to be written, at most; beyond it `relaxed` drops (and counts) them and
    /// `strict` refuses to issue.
    pub queue_events: usize,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            url: LedgerUrl::Sqlite(PathBuf::from("var/ledger.db")),
            durability: Durability::Strict,
            retention_days: 90,
            queue_events: 10_000,
        }
    }
}

/// `ledger.url`, parsed.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum LedgerUrl {
    /// No ledger: no audit trail, no admin revocations.
    None,
    /// An SQLite file (created with its schema on first start).
    Sqlite(PathBuf),
    /// A PostgreSQL connection URL (`postgres://user@host:port/db`).
    Postgres(String),
}

impl TryFrom<String> for LedgerUrl {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        if value == "none" {
            return Ok(LedgerUrl::None);
        }
        if let Some(path) = value.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err("sqlite:// needs a file path, for example sqlite://var/ledger.db".into());
            }
            return Ok(LedgerUrl::Sqlite(PathBuf::from(path)));
        }
        if value.starts_with("postgres://") || value.starts_with("postgresql://") {
            value.parse::<tokio_postgres::Config>().map_err(|e| format!("not a PostgreSQL URL: {e}"))?;
            return Ok(LedgerUrl::Postgres(value));
        }
        Err(format!("{:?} is none of sqlite://PATH, postgres://... or none", redact_url(&value)))
    }
}

impl std::fmt::Display for LedgerUrl {
    /// As configured, with any password replaced by `***`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LedgerUrl::None => f.write_str("none"),
            LedgerUrl::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            LedgerUrl::Postgres(url) => f.write_str(&redact_url(url)),
        }
    }
}

impl std::fmt::Debug for LedgerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// A URL with the password of its `user:password@` part replaced by `***`: for logs and errors.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    // A password may hold '@': the host follows the last one.
    let (authority, query) = rest.split_once('?').map_or((rest, None), |(a, q)| (a, Some(q)));
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_owned(),
    };
    let query = query.map(|query| {
        query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if name.eq_ignore_ascii_case("password") => format!("{name}=***"),
                _ => pair.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("&")
    });
    match query {
        Some(query) => format!("{scheme}://{authority}?{query}"),
        None => format!("{scheme}://{authority}"),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn ledger_urls_are_shown_without_their_passwords() {
        assert_eq!(redact_url("postgres://u:p@ss@db:5432/x"), "postgres://u:***@db:5432/x");
        assert_eq!(
            redact_url("postgres://u@db/x?password=s3cret&sslmode=disable"),
            "postgres://u@db/x?password=***&sslmode=disable"
        );
        assert_eq!(redact_url("postgres://db/x"), "postgres://db/x");
    }
}

/// `ledger.durability`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// A token is returned only after its `issued` event is committed; 503 when it cannot be.
    #[default]
    Strict,
    /// Events are queued (bounded) and written soon after; the service keeps issuing when the
    /// ledger is down, and counts what it drops.
    Relaxed,
}

/// `admin:`: the operator listener (admin API and probes).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Where the operator listener listens.
    pub listen: std::net::SocketAddr,
    /// The Authority scope an admin token must carry.
    pub required_scope: String,
    /// Record metrics and serve `GET /metrics` here.
    pub metrics: bool,
    /// `GET /metrics` requires an administrator's token too.
    pub metrics_require_auth: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 5051)),
            required_scope: "registry.admin".to_owned(),
            metrics: true,
            metrics_require_auth: false,
        }
    }
}
