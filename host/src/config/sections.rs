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
    /// Where the Authority's keys come from (`jwks_file`, `jwks_url`, or the policy bundle).
    pub jwks: JwksSource,
    /// How often a `jwks_url` is refetched.
    pub jwks_refresh_seconds: u64,
    /// An unknown `kid` refetches a `jwks_url` at most once per this many seconds.
    pub jwks_min_refetch_seconds: u64,
    /// Clock skew tolerated on `exp`/`nbf`.
    pub leeway_seconds: u64,
}

/// `authority.jwks_file` or `authority.jwks_url`, or neither: the policy bundle's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JwksSource {
    /// A JWKS file, read at start and on every reload.
    File(PathBuf),
    /// A JWKS URL (https, or plain http to a loopback address), fetched and refreshed.
    Url(String),
    /// Neither is set: the keys are the `authority-jwks.json` of the policy bundle (an offline
    /// site); `Config::check` requires `policy.bundle` then.
    Bundle,
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
            (None, None) => JwksSource::Bundle,
            (Some(file), None) => JwksSource::File(file),
            (None, Some(url)) if !crate::authority::acceptable_jwks_url(&url) => {
                return Err(format!(
                    "jwks_url: {:?} must be an https URL (plain http only to a loopback address): \
                     whoever can change the keys in transit can forge any caller",
                    crate::authority::shown_url(&url)
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
    /// The single key's (`key_file`): `RS256` (default) or `ES256`. An entry of `keys` says its
    /// own (by default what its key is): this one is not used with `keys` (see
    /// [`SigningConfig::unused_algorithm`]).
    pub algorithm: Option<SigningAlgorithm>,
    /// `libtrust` (distribution 2.8, default) or `thumbprint` (RFC 7638).
    pub kid_format: KidFormat,
    /// Lifetime of minted tokens.
    pub lifetime_seconds: u64,
    /// Upper bound on `lifetime_seconds`; raise both together, deliberately.
    pub max_lifetime_seconds: u64,
    /// Identical requests (same credential, service and scopes) within this many seconds of a
    /// token's issue get that token again; `None` (not written): a tenth of the lifetime; 0: never.
    pub reuse_seconds: Option<u64>,
}

impl Default for SigningConfig {
    fn default() -> Self {
        SigningConfig {
            issuer: String::new(),
            key_file: PathBuf::new(),
            cert_file: None,
            keys: Vec::new(),
            algorithm: None,
            kid_format: KidFormat::default(),
            lifetime_seconds: 300,
            max_lifetime_seconds: 300,
            reuse_seconds: None,
        }
    }
}

impl SigningConfig {
    /// How long a minted token is reused for identical requests: `reuse_seconds`, or a tenth
    /// of the lifetime.
    pub fn reuse_window(&self) -> u64 {
        self.reuse_seconds.unwrap_or(self.lifetime_seconds / 10)
    }

    /// What to warn of when `algorithm` is written beside `keys`, where it is not used. (A warning,
    /// not a refusal: a configuration that grew from the sample's single key into a key set often
    /// keeps the sample's `algorithm: RS256`, and it worked before.)
    pub fn unused_algorithm(&self) -> Option<String> {
        let algorithm = self.algorithm.filter(|_| !self.keys.is_empty())?;
        Some(format!(
            "signing.algorithm ({}) is not used with signing.keys: each key signs with what it is (an RSA \
             key RS256, a P-256 key ES256) unless its entry sets `algorithm:`; remove signing.algorithm",
            algorithm.name()
        ))
    }

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
            algorithm: Some(self.algorithm.unwrap_or_default()),
            single: true,
        }]
    }
}

/// `policy.bundle`, parsed.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum BundleSource {
    /// A file, read at start and at every reload.
    File(PathBuf),
    /// An `https://` URL, fetched and polled.
    Https(String),
    /// `oci://REGISTRY/REPOSITORY:TAG` (or `@sha256:…`), pulled and polled.
    Oci(String),
}

impl TryFrom<String> for BundleSource {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        if let Some(reference) = value.strip_prefix("oci://") {
            let parsed = oci_client::Reference::try_from(reference)
                .map_err(|e| format!("{value:?} is not an OCI reference (oci://host/repository:tag): {e}"))?;
            let host = reference.split('/').next().unwrap_or_default();
            if parsed.registry() != host || !(host.contains('.') || host.contains(':') || host == "localhost")
            {
                return Err(format!("{value:?} must name its registry: oci://host[:port]/repository:tag"));
            }
            return Ok(BundleSource::Oci(reference.to_owned()));
        }
        // A URL may carry credentials (its user and password, a signed query): errors show it
        // without them, as everything else does.
        let shown = crate::authority::shown_url(&value);
        if value.starts_with("https://") {
            let url = reqwest::Url::parse(&value).map_err(|e| format!("{shown:?} is not a URL: {e}"))?;
            if url.host_str().is_none_or(str::is_empty) {
                return Err(format!("{shown:?} names no host"));
            }
            return Ok(BundleSource::Https(value));
        }
        if value.contains("://") {
            return Err(format!(
                "{shown:?}: a bundle comes from a file, an https:// URL or an oci:// reference"
            ));
        }
        if value.is_empty() {
            return Err("an empty path".into());
        }
        Ok(BundleSource::File(PathBuf::from(value)))
    }
}

impl std::fmt::Display for BundleSource {
    /// As written in the configuration, but a URL without what may be a secret (its user and
    /// password, its query: a pre-signed URL's signature): this is what `/readyz`, logs, errors
    /// and the ledger's record of applied revisions show.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BundleSource::File(path) => path.display().fmt(f),
            BundleSource::Https(url) => f.write_str(&crate::authority::shown_url(url)),
            BundleSource::Oci(reference) => write!(f, "oci://{reference}"),
        }
    }
}

impl BundleSource {
    /// Whether it is fetched over the network (and so polled).
    pub fn is_remote(&self) -> bool {
        !matches!(self, BundleSource::File(_))
    }
}

/// `policy:`, parsed: a module and its settings, or a bundle that carries both.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(try_from = "PolicySection")]
pub struct PolicyConfig {
    /// `builtin:plan-catalogue`, or the path of a `.wasm` component (unused with a bundle).
    pub module: PolicyModule,
    /// The policy's settings (YAML or JSON), handed to it as JSON (unused with a bundle).
    pub settings_file: Option<PathBuf>,
    /// Deadline of one evaluation.
    pub timeout_ms: u64,
    /// Memory cap of one evaluation.
    pub memory_mib: u64,
    /// `policy.bundle` and its `bundle_*` keys: the policy, its settings (and perhaps revocations
    /// and the Authority's keys) come from a bundle instead.
    pub bundle: Option<BundleConfig>,
    /// Where compiled policy code is kept between starts and reloads; `None`: compiled each time.
    pub cache_dir: Option<PathBuf>,
}

/// `policy.bundle` and the `policy.bundle_*` keys.
#[derive(Clone, Debug, PartialEq)]
pub struct BundleConfig {
    /// A file, an `https://` URL or `oci://host/repository:tag`.
    pub source: BundleSource,
    /// PEM public keys or certificates, or JWKS files: when any is given, a bundle must carry a
    /// valid signature by one of them.
    pub keys: Vec<PathBuf>,
    /// How often a remote source is asked for a new bundle (0: only at start and reload).
    pub poll_seconds: u64,
    /// The largest bundle accepted, packed or unpacked.
    pub max_bytes: u64,
    /// PEM certificates trusted (besides the system's) for an HTTPS source or registry.
    pub ca_file: Option<PathBuf>,
    /// The user name presented to a registry.
    pub username: Option<String>,
    /// The file holding the registry password (mode 0600), read at every pull.
    pub password_file: Option<PathBuf>,
}

impl BundleConfig {
    /// Default of `policy.bundle_max_bytes`: 64 MiB, room for a policy in any guest language.
    pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;
    /// Default of `policy.bundle_poll_seconds`.
    pub const DEFAULT_POLL_SECONDS: u64 = 60;
}

/// `policy:` as written.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct PolicySection {
    module: Option<PolicyModule>,
    settings_file: Option<PathBuf>,
    timeout_ms: u64,
    memory_mib: u64,
    bundle: Option<BundleSource>,
    bundle_keys: Vec<PathBuf>,
    bundle_poll_seconds: Option<u64>,
    bundle_max_bytes: Option<u64>,
    bundle_ca_file: Option<PathBuf>,
    bundle_username: Option<String>,
    bundle_password_file: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
}

impl Default for PolicySection {
    fn default() -> Self {
        let defaults = PolicyConfig::default();
        PolicySection {
            module: None,
            settings_file: None,
            timeout_ms: defaults.timeout_ms,
            memory_mib: defaults.memory_mib,
            bundle: None,
            bundle_keys: Vec::new(),
            bundle_poll_seconds: None,
            bundle_max_bytes: None,
            bundle_ca_file: None,
            bundle_username: None,
            bundle_password_file: None,
            cache_dir: None,
        }
    }
}

impl TryFrom<PolicySection> for PolicyConfig {
    type Error = String;

    fn try_from(section: PolicySection) -> Result<Self, String> {
        let bundle = match section.bundle {
            Some(_) if section.module.is_some() || section.settings_file.is_some() => {
                return Err(
                    "set bundle, or module and settings_file, not both: a bundle carries the policy and \
                            its settings"
                        .into(),
                );
            }
            Some(source) => {
                let max_bytes = section.bundle_max_bytes.unwrap_or(BundleConfig::DEFAULT_MAX_BYTES);
                if !(1024..=1024 * 1024 * 1024).contains(&max_bytes) {
                    return Err("bundle_max_bytes must be between 1024 and 1073741824".into());
                }
                let poll_seconds = section.bundle_poll_seconds.unwrap_or(BundleConfig::DEFAULT_POLL_SECONDS);
                if poll_seconds > 86_400 {
                    return Err("bundle_poll_seconds must be at most 86400 (0: no polling)".into());
                }
                if section.bundle_username.is_some() != section.bundle_password_file.is_some() {
                    return Err("bundle_username and bundle_password_file go together".into());
                }
                Some(BundleConfig {
                    source,
                    keys: section.bundle_keys,
                    poll_seconds,
                    max_bytes,
                    ca_file: section.bundle_ca_file,
                    username: section.bundle_username,
                    password_file: section.bundle_password_file,
                })
            }
            None => {
                let stray = [
                    ("bundle_keys", !section.bundle_keys.is_empty()),
                    ("bundle_poll_seconds", section.bundle_poll_seconds.is_some()),
                    ("bundle_max_bytes", section.bundle_max_bytes.is_some()),
                    ("bundle_ca_file", section.bundle_ca_file.is_some()),
                    ("bundle_username", section.bundle_username.is_some()),
                    ("bundle_password_file", section.bundle_password_file.is_some()),
                ];
                if let Some((key, _)) = stray.iter().find(|(_, set)| *set) {
                    return Err(format!("{key} is set but bundle is not: it applies to a bundle only"));
                }
                None
            }
        };
        Ok(PolicyConfig {
            module: section.module.unwrap_or(PolicyModule::Builtin(Builtin::PlanCatalogue)),
            settings_file: section.settings_file,
            timeout_ms: section.timeout_ms,
            memory_mib: section.memory_mib,
            bundle,
            cache_dir: section.cache_dir,
        })
    }
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
            bundle: None,
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
    /// A client sends its request's head, and then its body, within this long or its connection
    /// is closed (the head) or its request answered 400 (the body).
    pub read_timeout_seconds: u64,
    /// Connections open at once on each listener; more wait in the kernel's backlog.
    pub max_connections: usize,
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
            read_timeout_seconds: 30,
            max_connections: 1000,
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
    /// Minted tokens kept for reuse (`signing.reuse_seconds`); 0 disables.
    pub tokens: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig { caller_tokens: 4096, decisions: 4096, tokens: 4096 }
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
    /// When an SQLite commit is on the disk; not written: `full` for `strict`, `normal` for
    /// `relaxed`. SQLite only.
    pub sqlite_sync: Option<SqliteSync>,
}

impl LedgerConfig {
    /// What `sqlite_sync` says, or its default for the durability.
    pub fn sqlite_sync(&self) -> SqliteSync {
        self.sqlite_sync.unwrap_or(match self.durability {
            Durability::Strict => SqliteSync::Full,
            Durability::Relaxed => SqliteSync::Normal,
        })
    }
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            url: LedgerUrl::Sqlite(PathBuf::from("var/ledger.db")),
            durability: Durability::Strict,
            retention_days: 90,
            queue_events: 10_000,
            sqlite_sync: None,
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
    use super::{BundleSource, redact_url};

    #[test]
    fn sources_parse_as_a_file_an_https_url_or_an_oci_reference() {
        let parse = |text: &str| BundleSource::try_from(text.to_owned());
        assert_eq!(parse("etc/bundle.tar.gz"), Ok(BundleSource::File("etc/bundle.tar.gz".into())));
        assert_eq!(
            parse("https://bundles.example/site.tar.gz"),
            Ok(BundleSource::Https("https://bundles.example/site.tar.gz".into()))
        );
        assert_eq!(
            parse("oci://127.0.0.1:5000/team/policy:3"),
            Ok(BundleSource::Oci("127.0.0.1:5000/team/policy:3".into()))
        );
        assert!(parse("oci://team/policy:3").unwrap_err().contains("must name its registry"));
        assert!(parse("http://bundles.example/site.tar.gz").unwrap_err().contains("https:// URL"));
        assert!(parse("ftp://x/y").is_err());
        // A URL that does not parse (a typo in its port) or names no host: the error shows it
        // without its password and query.
        for url in [
            "https://reader:S3cret@bundles.example:443x/site.tar.gz?X-Amz-Signature=s1gnature",
            "https://reader:S3cret@/site.tar.gz?X-Amz-Signature=s1gnature",
            "ftp://reader:S3cret@bundles.example/site.tar.gz?X-Amz-Signature=s1gnature",
        ] {
            let error = parse(url).unwrap_err();
            assert!(error.contains("bundles.example") || error.contains("site.tar.gz"), "{error}");
            assert!(!error.contains("S3cret") && !error.contains("s1gnature"), "{error}");
        }
    }

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

/// `ledger.sqlite_sync`: SQLite's `synchronous` setting for the ledger file (WAL mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSync {
    /// Every commit is synced to the disk before it returns: it survives a crash of the machine.
    Full,
    /// A commit is in the operating system's hands when it returns: it survives a crash of this
    /// process (`kill -9`), not of the machine; the write-ahead log is synced at checkpoints.
    Normal,
}

impl SqliteSync {
    /// The `PRAGMA synchronous` value.
    pub fn pragma(self) -> &'static str {
        match self {
            SqliteSync::Full => "FULL",
            SqliteSync::Normal => "NORMAL",
        }
    }
}

/// `refresh_tokens:`: the refresh tokens `docker login` stores as its identity token. They live
/// in the ledger (as hashes), so there are none without one.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RefreshTokensConfig {
    /// `None` (not written): on whenever a ledger is configured.
    pub enabled: Option<bool>,
    /// A refresh token never works past its issue time plus this (1..365).
    pub lifetime_days: u32,
    /// Unused for this long, a refresh token stops working (0: no idle limit).
    pub idle_days: u32,
}

impl Default for RefreshTokensConfig {
    fn default() -> Self {
        RefreshTokensConfig { enabled: None, lifetime_days: 30, idle_days: 7 }
    }
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
