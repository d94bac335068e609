//! An installation's configuration file, typed: what a test sets is checked by the compiler, and the
//! keys are written exactly as the service names them (`host/src/config.rs`, `etc/registry-token.yaml`).
//!
//! These are the test's own types, not the service's `Config`: a fixture writes the file an operator
//! would, and the service reads it the way it reads theirs. A field left `None` is not written, so the
//! service's default applies. `set` reaches keys the types do not have (a misspelt key, a section
//! the service adds later).

use serde::Serialize;
use serde_norway::{Mapping, Value};
use std::path::{Path, PathBuf};

/// `registry-token.yaml`.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub listen: String,
    pub services: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
    pub authority: Authority,
    pub signing: Signing,
    #[serde(skip_serializing_if = "Policy::is_unset")]
    pub policy: Policy,
    #[serde(skip_serializing_if = "Http::is_unset")]
    pub http: Http,
    #[serde(skip_serializing_if = "Cache::is_unset")]
    pub cache: Cache,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watch: Option<bool>,
    pub ledger: Ledger,
    #[serde(skip_serializing_if = "RefreshTokens::is_unset")]
    pub refresh_tokens: RefreshTokens,
    pub admin: Admin,
    /// Merged over the typed keys when written; filled by [`Config::set`].
    #[serde(skip)]
    pub extra: Mapping,
}

/// `authority:` — the identity server whose tokens callers exchange.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Authority {
    pub issuer: String,
    pub audiences: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub required_scope: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_refresh_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_min_refetch_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leeway_seconds: Option<u64>,
}

/// `signing:` — how registry tokens are signed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Signing {
    pub issuer: String,
    /// The single-key form; empty (not written) with `keys`.
    #[serde(skip_serializing_if = "is_empty_path")]
    pub key_file: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// The key set (`signing.keys`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<SigningKey>,
    /// `RS256` or `ES256`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    /// `libtrust` or `thumbprint`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kid_format: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifetime_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_lifetime_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reuse_seconds: Option<u64>,
}

fn is_empty_path(path: &Path) -> bool {
    path.as_os_str().is_empty()
}

/// One entry of `signing.keys`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SigningKey {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pkcs11: Option<Pkcs11Key>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// `active`, `published` or `retired`.
    pub status: String,
    /// RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retire_after: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
}

impl SigningKey {
    /// A key file and its certificate, with `status`.
    pub fn files(key_file: &Path, cert_file: &Path, status: &str) -> SigningKey {
        SigningKey {
            key_file: Some(key_file.to_owned()),
            cert_file: Some(cert_file.to_owned()),
            status: status.to_owned(),
            ..SigningKey::default()
        }
    }
}

/// `pkcs11:` of a key entry.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Pkcs11Key {
    pub module: PathBuf,
    pub token_label: String,
    pub key_label: String,
    pub pin_file: PathBuf,
}

/// `policy:` — the WebAssembly component that decides, and its limits.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Policy {
    /// `builtin:plan-catalogue` or a path to a `.wasm` component.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settings_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
}

/// `http:` — the HTTP edge.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Http {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    /// A policy's deny: 403, or 401.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub denial_status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_grace_seconds: Option<u64>,
}

/// `cache:` — entries of the two hot-path caches (0 disables one).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Cache {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decisions: Option<u64>,
}

/// `ledger:` — where exchanges are recorded and revocations live.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Ledger {
    /// `sqlite://PATH`, `postgres://...` or `none`.
    pub url: String,
    /// `strict` or `relaxed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub durability: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention_days: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_events: Option<u64>,
    /// `full` or `normal` (SQLite's `synchronous`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sqlite_sync: Option<String>,
}

/// `refresh_tokens:` — the refresh tokens `docker login` stores.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RefreshTokens {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifetime_days: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_days: Option<u32>,
}

impl RefreshTokens {
    fn is_unset(&self) -> bool {
        *self == RefreshTokens::default()
    }
}

/// `admin:` — the operator listener.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Admin {
    pub listen: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub required_scope: Option<String>,
}

impl Policy {
    fn is_unset(&self) -> bool {
        *self == Policy::default()
    }
}

impl Http {
    fn is_unset(&self) -> bool {
        *self == Http::default()
    }
}

impl Cache {
    fn is_unset(&self) -> bool {
        *self == Cache::default()
    }
}

impl Config {
    /// An installation laid out below `root` the way the tools write one: `keygen --out ROOT/keys`
    /// (`signing-key.pem`, `signing-cert.pem`), `dev-authority init --dir ROOT/authority`
    /// (`jwks.json`), and the policy's settings in `ROOT/plans.yaml`. It listens on a free port
    /// (`127.0.0.1:0`; the server prints the address it got), accepts callers of `issuer` with the
    /// audience `registry-token`, and signs as `registry-token` for `services`.
    pub fn installation(root: &Path, issuer: &str, services: &[&str]) -> Config {
        Config {
            listen: "127.0.0.1:0".to_owned(),
            services: services.iter().map(|s| (*s).to_owned()).collect(),
            realm: None,
            authority: Authority {
                issuer: issuer.to_owned(),
                audiences: vec!["registry-token".to_owned()],
                jwks_file: Some(root.join("authority/jwks.json")),
                ..Authority::default()
            },
            signing: Signing {
                issuer: "registry-token".to_owned(),
                key_file: root.join("keys/signing-key.pem"),
                cert_file: Some(root.join("keys/signing-cert.pem")),
                ..Signing::default()
            },
            policy: Policy { settings_file: Some(root.join("plans.yaml")), ..Policy::default() },
            http: Http::default(),
            cache: Cache::default(),
            watch: None,
            // Each installation its own ledger file and a free admin port: tests run side by side.
            ledger: Ledger {
                url: format!("sqlite://{}", root.join("ledger.db").display()),
                ..Ledger::default()
            },
            refresh_tokens: RefreshTokens::default(),
            admin: Admin { listen: "127.0.0.1:0".to_owned(), required_scope: None },
            extra: Mapping::new(),
        }
    }

    /// Sets the key at the dotted `path` (`signing.lifetime_secs`), whether or not the types know
    /// it; written over what they say.
    pub fn set(&mut self, path: &str, value: impl Into<Value>) -> &mut Config {
        let mut keys: Vec<&str> = path.split('.').collect();
        let last = keys.pop().unwrap();
        let mut section = &mut self.extra;
        for key in keys {
            let entry = section.entry(key.into()).or_insert_with(|| Value::Mapping(Mapping::new()));
            if !entry.is_mapping() {
                *entry = Value::Mapping(Mapping::new());
            }
            section = entry.as_mapping_mut().unwrap();
        }
        section.insert(last.into(), value.into());
        self
    }

    /// The file's text.
    pub fn to_yaml(&self) -> String {
        let mut value = serde_norway::to_value(self).unwrap();
        merge(&mut value, Value::Mapping(self.extra.clone()));
        serde_norway::to_string(&value).unwrap()
    }

    /// Writes the file at `path`.
    pub fn write(&self, path: &Path) {
        std::fs::write(path, self.to_yaml())
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
}

/// `over` into `base`: mappings key by key, anything else replaced.
fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Mapping(base), Value::Mapping(over)) => {
            for (key, value) in over {
                match base.get_mut(&key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, over) => *base = over,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_only_what_is_set_and_set_reaches_any_key() {
        let mut config = Config::installation(Path::new("/i"), "https://a.test", &["r.test"]);
        config.http.denial_status = Some(401);
        config.set("signing.lifetime_secs", 60).set("development.create_missing_keys", true);
        let written: Value = serde_norway::from_str(&config.to_yaml()).unwrap();
        let expected: Value = serde_norway::from_str(
            "listen: 127.0.0.1:0\nservices: [r.test]\n\
             authority: {issuer: 'https://a.test', audiences: [registry-token], jwks_file: /i/authority/jwks.json}\n\
             signing: {issuer: registry-token, key_file: /i/keys/signing-key.pem, \
             cert_file: /i/keys/signing-cert.pem, lifetime_secs: 60}\n\
             policy: {settings_file: /i/plans.yaml}\nhttp: {denial_status: 401}\n\
             ledger: {url: 'sqlite:///i/ledger.db'}\nadmin: {listen: '127.0.0.1:0'}\n\
             development: {create_missing_keys: true}\n",
        )
        .unwrap();
        assert_eq!(written, expected);
    }
}
