//! The composition root: turns a [`Config`] into the live service state — the Authority's keys,
//! the signing key, the policy — and swaps in a new one on reload, completely validated first.
//! [`App`] is the running service (not to be confused with the Docker `service` parameter, the
//! registry a token is for).

use crate::authority::{KeySource, Requirements, Validator};
use crate::config::{Config, JwksSource, PolicyConfig, PolicyModule};
use crate::ledger::Ledger;
use crate::mint::{self, KeySet};
use crate::policy::{self, Policy};
use arc_swap::ArcSwap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Seconds since the Unix epoch. Injected so tests control time.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default()
    })
}

/// Everything a request needs, built from one configuration. Replaced as a whole on reload, so a
/// request sees one consistent set from start to end.
#[derive(Debug)]
pub struct Live {
    /// The configuration this was built from.
    pub config: Config,
    /// Validates caller tokens against the Authority's keys.
    pub validator: Validator,
    /// The authorization policy.
    pub policy: Policy,
    /// The signing keys: the active one mints, all are published.
    pub keys: KeySet,
    /// Validates administrators' tokens: the same Authority and keys, `admin.required_scope`.
    pub admin_validator: Validator,
}

/// Why the service could not be (re)built. Names the file or key at fault.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The Authority's JWKS could not be loaded.
    #[error(transparent)]
    Jwks(#[from] crate::authority::JwksError),
    /// A signing key or certificate is unusable.
    #[error(transparent)]
    Keys(#[from] mint::KeySetError),
    /// The policy could not be loaded.
    #[error(transparent)]
    Policy(#[from] policy::LoadError),
    /// The policy module file could not be read.
    #[error("cannot read policy.module {path}: {source}")]
    PolicyFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The policy settings file could not be read or is not YAML/JSON.
    #[error("the policy settings {path}: {reason}")]
    Settings {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A reload was asked of a service started without a configuration file.
    #[error("the service was not started from a configuration file")]
    NoConfigFile,
    /// The reload task itself failed (it panicked or was cancelled).
    #[error("the reload task failed: {0}")]
    ReloadTask(String),
}

impl Live {
    /// Loads everything `config` names. CPU-heavy (the policy is compiled): run it off the
    /// request path.
    pub async fn build(config: Config) -> Result<Live, BuildError> {
        Live::build_after(config, None).await
    }

    /// [`Live::build`] for a reload of `previous`: the policy engine is reused when it can be.
    pub async fn build_after(config: Config, previous: Option<&Live>) -> Result<Live, BuildError> {
        let authority = &config.authority;
        let same_url = |previous: &Live| {
            let was = &previous.config.authority;
            was.jwks == authority.jwks
                && was.jwks_refresh_seconds == authority.jwks_refresh_seconds
                && was.jwks_min_refetch_seconds == authority.jwks_min_refetch_seconds
        };
        let keys = match &authority.jwks {
            JwksSource::File(file) => KeySource::from_file(file)?,
            // A reload keeps the keys it has (and their refresher) when the URL is unchanged: a
            // reload during an Authority outage must not trade working keys for none.
            JwksSource::Url(_)
                if let Some(previous) = previous.filter(|p| same_url(p))
                    && matches!(previous.validator.keys(), KeySource::Remote(_)) =>
            {
                previous.validator.keys().clone()
            }
            JwksSource::Url(url) => {
                KeySource::from_url(
                    url,
                    Duration::from_secs(authority.jwks_refresh_seconds),
                    Duration::from_secs(authority.jwks_min_refetch_seconds),
                )
                .await?
            }
        };
        let requirements = Requirements {
            issuer: config.authority.issuer.clone(),
            audiences: config.authority.audiences.clone(),
            required_scope: config.authority.required_scope.clone(),
            leeway_seconds: config.authority.leeway_seconds,
        };

        let keys_set = load_keys(&config.signing)?;

        let policy = load_policy(&config.policy, config.cache.decisions, previous.map(|p| &p.policy)).await?;
        let admin_requirements =
            Requirements { required_scope: config.admin.required_scope.clone(), ..requirements.clone() };
        // Administrators are few: a small cache spares them a signature check per admin request.
        let admin_validator = Validator::new(keys.clone(), admin_requirements, 64);
        let validator = Validator::new(keys, requirements, config.cache.caller_tokens);
        Ok(Live { config, validator, policy, keys: keys_set, admin_validator })
    }

    /// Whether the service can issue tokens (for `/readyz`).
    pub fn is_ready(&self) -> bool {
        self.validator.keys().is_ready()
    }
}

/// Loads the signing key set `signing` configures.
pub fn load_keys(signing: &crate::config::SigningConfig) -> Result<KeySet, mint::KeySetError> {
    KeySet::load(&signing.key_entries(), &signing.issuer, signing.lifetime_seconds, signing.kid_format)
}

/// Loads the configured policy module with its settings file, under the configured limits,
/// remembering decisions in up to `decision_cache` KiB.
pub async fn load_policy(
    config: &PolicyConfig,
    decision_cache: usize,
    previous: Option<&Policy>,
) -> Result<Policy, BuildError> {
    let settings = match &config.settings_file {
        Some(path) => settings_json(path)?,
        None => "{}".to_owned(),
    };
    load_policy_with(config, &settings, decision_cache, previous).await
}

/// Loads the configured policy module with settings given as JSON (ignoring `settings_file`).
/// With a `previous` policy, reuses its engine where it can (see [`Policy::reload`]).
pub async fn load_policy_with(
    config: &PolicyConfig,
    settings_json: &str,
    decision_cache: usize,
    previous: Option<&Policy>,
) -> Result<Policy, BuildError> {
    let module: std::borrow::Cow<'static, [u8]> = match &config.module {
        PolicyModule::Builtin(builtin) => builtin.wasm().into(),
        PolicyModule::File(path) => std::fs::read(path)
            .map_err(|source| BuildError::PolicyFile { path: path.clone(), source })?
            .into(),
    };
    let source = config.module.to_string();
    let setup =
        policy::Setup { limits: config.limits(), decision_cache, cache_dir: config.cache_dir.clone() };
    Ok(match previous {
        Some(previous) => previous.reload(&module, &source, settings_json, &setup).await?,
        None => Policy::load_with(&module, &source, settings_json, &setup).await?,
    })
}

/// Reads a YAML or JSON settings file and renders it as the JSON document guests receive.
pub fn settings_json(path: &Path) -> Result<String, BuildError> {
    let settings_error = |reason: String| BuildError::Settings { path: path.to_owned(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| settings_error(format!("cannot read it: {e}")))?;
    yaml_to_json(&text).map_err(settings_error)
}

/// YAML (a superset of JSON) to compact JSON.
pub fn yaml_to_json(text: &str) -> Result<String, String> {
    let value: serde_json::Value = serde_norway::from_str(text).map_err(|e| e.to_string())?;
    Ok(value.to_string())
}

/// The running service: the live state, swapped atomically on reload.
pub struct App {
    live: ArcSwap<Live>,
    config_path: Option<PathBuf>,
    /// The issuance ledger; `None` with `ledger.url: none` (and in tests that do not need one).
    pub ledger: Option<Ledger>,
    /// The clock requests use.
    pub clock: Clock,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").field("config_path", &self.config_path).finish_non_exhaustive()
    }
}

impl App {
    /// A service over already-built state. `config_path` is re-read on [`App::reload`].
    pub fn new(live: Live, config_path: Option<PathBuf>, clock: Clock) -> App {
        App { live: ArcSwap::from_pointee(live), config_path, ledger: None, clock }
    }

    /// This service recording into `ledger` (opened by the caller: it outlives reloads).
    pub fn with_ledger(mut self, ledger: Option<Ledger>) -> App {
        self.ledger = ledger;
        self
    }

    /// The state requests use now.
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// Re-reads the configuration file and everything it names, and swaps it in only if all of
    /// it loads. On error the previous state keeps serving.
    pub async fn reload(&self) -> Result<(), BuildError> {
        let result = self.reload_now().await;
        crate::metrics::metrics().reload(result.is_ok());
        result
    }

    async fn reload_now(&self) -> Result<(), BuildError> {
        let Some(path) = self.config_path.clone() else {
            return Err(BuildError::NoConfigFile);
        };
        let config = Config::load(&path)?;
        let current = self.live();
        // Read once by `serve`: the listener, the router's body limit, shutdown and the watch.
        let (old, new) = (&current.config, &config);
        for (key, changed) in [
            ("listen", old.listen != new.listen),
            ("http.max_body_bytes", old.http.max_body_bytes != new.http.max_body_bytes),
            (
                "http.shutdown_grace_seconds",
                old.http.shutdown_grace_seconds != new.http.shutdown_grace_seconds,
            ),
            ("watch", old.watch != new.watch),
            ("ledger", old.ledger != new.ledger),
            ("admin.listen", old.admin.listen != new.admin.listen),
            ("admin.metrics", old.admin.metrics != new.admin.metrics),
        ] {
            if changed {
                tracing::warn!(key, "{key} changed; it takes effect at the next restart");
            }
        }
        // Compiling a policy takes a few hundred milliseconds of CPU: keep it off the workers.
        let started = std::time::Instant::now();
        let handle = tokio::runtime::Handle::current();
        let built =
            tokio::task::spawn_blocking(move || handle.block_on(Live::build_after(config, Some(&current))))
                .await
                .map_err(|e| BuildError::ReloadTask(e.to_string()))??;
        tracing::info!(
            policy = built.policy.source(),
            digest = built.policy.digest(),
            settings = built.policy.settings_version(),
            took_ms = started.elapsed().as_millis() as u64,
            "reloaded"
        );
        self.live.store(Arc::new(built));
        Ok(())
    }
}
