//! The composition root: turns a [`Config`] into the live service state — the Authority's keys,
//! the signing key, the policy — and swaps in a new one on reload, completely validated first.
//! [`App`] is the running service (not to be confused with the Docker `service` parameter, the
//! registry a token is for).

use crate::access::Caller;
use crate::authority::{KeySource, Requirements, Validator};
use crate::bundle::{self, Bundle, BundleError, Fetch, FetchOptions, Fetched};
use crate::config::{BundleConfig, BundleSource, Config, JwksSource, PolicyConfig, PolicyModule};
use crate::jws::TrustedKeys;
use crate::ledger::{AppliedBundle, Ledger, Millis, Presented, Revocation, RevocationSet};
use crate::mint::{self, KeySet, ReuseCache};
use crate::policy::{self, Policy};
use arc_swap::ArcSwap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
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
    pub validator: Arc<Validator>,
    /// The authorization policy.
    pub policy: Policy,
    /// The signing keys: the active one mints, all are published.
    pub keys: Arc<KeySet>,
    /// Validates administrators' tokens: the same Authority and keys, `admin.required_scope`.
    pub admin_validator: Arc<Validator>,
    /// Tokens minted recently, for identical requests (`signing.reuse_seconds`); dropped with
    /// this state, so a reload (policy, settings, keys) never reuses an older token.
    pub reuse: Option<ReuseCache>,
    /// The policy bundle the policy and settings came from, with `policy.bundle`.
    pub bundle: Option<LiveBundle>,
}

/// The policy bundle a [`Live`] serves: what it is, where it came from, what it revokes.
#[derive(Clone)]
pub struct LiveBundle {
    /// Where it came from.
    pub source: BundleSource,
    /// The bundle, checked (its signature too, with `policy.bundle_keys`).
    pub bundle: Arc<Bundle>,
    /// Its bytes: re-checked on a reload that finds the source unchanged (the trusted keys may
    /// have changed since).
    bytes: Arc<Vec<u8>>,
    /// The source's version of it (an `ETag`, an OCI manifest digest), for the next poll.
    pub version: Option<String>,
    /// Its `revocations.json`, indexed: the host checks them as it checks the ledger's.
    pub revocations: Arc<RevocationSet>,
    /// `policy.bundle_keys` as read at the last start or reload: a poll checks a new bundle
    /// against these, not against whatever the files say now.
    trusted: Arc<TrustedKeys>,
    /// The start or reload that built this could not fetch the source: why, for `/readyz` (a
    /// reload kept the live bundle and applied the rest; a start opened the copy in
    /// `policy.cache_dir`).
    unfetched: Option<BundleRefusal>,
}

impl std::fmt::Debug for LiveBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveBundle")
            .field("source", &self.source)
            .field("bundle", &self.bundle)
            .field("version", &self.version)
            .field("revocations", &self.revocations.len())
            .finish_non_exhaustive()
    }
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
    /// The policy bundle was refused; the previous one (if any) keeps serving.
    #[error("the policy bundle {source_name}: {error}")]
    Bundle {
        /// Where it came from.
        source_name: String,
        /// Why it was refused.
        error: BundleError,
    },
    /// `policy.bundle_keys` could not be read.
    #[error("policy.bundle_keys: {0}")]
    BundleKeys(String),
    /// The reload task itself failed (it panicked or was cancelled).
    #[error("the reload task failed: {0}")]
    ReloadTask(String),
}

/// What the ledger remembers of the bundles applied from the configured source (`Ok(None)`: no
/// record, or no ledger); an error is what reading it said.
pub type BundleRecord = Result<Option<AppliedBundle>, String>;

/// What `serve` reads once (the listeners, the router's body limit, shutdown, the watch) and the
/// ledger it opened: a reload that changes them warns that they take effect at the next restart
/// and keeps the running values, so that nothing reads a setting the service does not run with
/// (a new `ledger.url: none` turned refresh tokens off while the old ledger still served).
fn keep_restart_only(old: &Config, new: &mut Config) {
    fn keep<T: PartialEq + Clone>(key: &str, old: &T, new: &mut T) {
        if old != new {
            tracing::warn!(key, "{key} changed; it takes effect at the next restart");
            new.clone_from(old);
        }
    }
    keep("listen", &old.listen, &mut new.listen);
    keep("http.max_body_bytes", &old.http.max_body_bytes, &mut new.http.max_body_bytes);
    keep("http.read_timeout_seconds", &old.http.read_timeout_seconds, &mut new.http.read_timeout_seconds);
    keep("http.max_connections", &old.http.max_connections, &mut new.http.max_connections);
    keep(
        "http.shutdown_grace_seconds",
        &old.http.shutdown_grace_seconds,
        &mut new.http.shutdown_grace_seconds,
    );
    keep("watch", &old.watch, &mut new.watch);
    keep("ledger", &old.ledger, &mut new.ledger);
    keep("admin.listen", &old.admin.listen, &mut new.admin.listen);
    keep("admin.metrics", &old.admin.metrics, &mut new.admin.metrics);
}

/// The ledger's record of the bundles applied from `config`'s `policy.bundle`.
pub async fn bundle_record(ledger: Option<&Ledger>, config: &Config) -> BundleRecord {
    match (ledger, &config.policy.bundle) {
        (Some(ledger), Some(bundle)) => {
            ledger.applied_bundle(&bundle.source.to_string()).await.map_err(|e| e.to_string())
        }
        _ => Ok(None),
    }
}

impl Live {
    /// Loads everything `config` names. CPU-heavy (the policy is compiled): run it off the
    /// request path.
    pub async fn build(config: Config) -> Result<Live, BuildError> {
        Live::build_after(config, None).await
    }

    /// [`Live::build`] for a reload of `previous`: the policy engine is reused when it can be.
    pub async fn build_after(config: Config, previous: Option<&Live>) -> Result<Live, BuildError> {
        Live::build_with(config, previous, Ok(None)).await
    }

    /// [`Live::build_after`], with a bundle that is not the live one checked against the ledger's
    /// `record` too.
    pub async fn build_with(
        config: Config,
        previous: Option<&Live>,
        record: BundleRecord,
    ) -> Result<Live, BuildError> {
        let bundle = match &config.policy.bundle {
            Some(bundle_config) => {
                let live = previous.and_then(|p| p.bundle.as_ref());
                let trusted = TrustedKeys::from_files(&bundle_config.keys)
                    .map_err(|e| BuildError::BundleKeys(e.to_string()))?;
                let copy = config
                    .policy
                    .cache_dir
                    .as_deref()
                    .filter(|_| bundle_config.source.is_remote())
                    .map(|dir| bundle::last_applied_copy(dir, &bundle_config.source));
                let opened = open_bundle(bundle_config, live, None, &record, Arc::new(trusted), copy);
                Some(opened.await?)
            }
            None => None,
        };
        let authority = &config.authority;
        if let Some(live_bundle) = &bundle
            && live_bundle.bundle.authority_jwks().is_some()
            && authority.jwks != JwksSource::Bundle
        {
            tracing::info!(
                bundle = %live_bundle.source,
                "the bundle's authority-jwks.json is not used: authority.jwks_file or jwks_url is configured"
            );
        }
        let (refresh_every, min_refetch) = (
            Duration::from_secs(authority.jwks_refresh_seconds),
            Duration::from_secs(authority.jwks_min_refetch_seconds),
        );
        let keys = match &authority.jwks {
            JwksSource::File(file) => KeySource::from_file(file)?,
            // A reload keeps the keys it has (and their refresher) when the URL is unchanged: a
            // reload during an Authority outage must not trade working keys for none. Compared
            // with what the source in use does, not with the last configuration: a reload that
            // changed the intervals during an outage kept the old ones, and the next must not
            // take them for the new.
            JwksSource::Url(url)
                if let Some(previous) =
                    previous.filter(|p| p.validator.keys().fetches(url, refresh_every, min_refetch)) =>
            {
                previous.validator.keys().clone()
            }
            // At start, the service comes up and refuses callers until a fetch succeeds; on a
            // reload, a new URL that does not answer fails the reload and the keys in use stay.
            // The same URL with new refresh intervals is fetched anew, and during an outage keeps
            // the keys (and intervals) it has rather than failing the reload.
            JwksSource::Url(url) => {
                let fetched = KeySource::from_url(url, refresh_every, min_refetch, previous.is_some()).await;
                match (fetched, previous.filter(|p| p.config.authority.jwks == authority.jwks)) {
                    (Ok(keys), _) => keys,
                    (Err(error), Some(previous))
                        if matches!(previous.validator.keys(), KeySource::Remote(_)) =>
                    {
                        tracing::warn!(
                            %error,
                            "the Authority did not answer: the keys in use stay, refreshed as before, until a \
                             reload it answers"
                        );
                        previous.validator.keys().clone()
                    }
                    (Err(error), _) => return Err(error.into()),
                }
            }
            // An offline site: the configuration names no Authority, the bundle carries its keys.
            JwksSource::Bundle => {
                let Some(live_bundle) = &bundle else {
                    return Err(
                        crate::config::ConfigError("authority: set jwks_file or jwks_url".into()).into()
                    );
                };
                bundle_authority_keys(live_bundle)?
            }
        };

        let mut keys_set = load_keys(&config.signing)?;
        keys_set.check_rotation(previous.map(|p| &*p.keys), system_clock()());
        if let Some(unused) = config.signing.unused_algorithm() {
            tracing::warn!("{unused}");
        }

        let previous_policy = previous.map(|p| &p.policy);
        let policy = match &bundle {
            Some(live_bundle) => bundle_policy(&config, live_bundle, previous_policy).await?,
            None => load_policy(&config.policy, config.cache.decisions, previous_policy).await?,
        };
        let (validator, admin_validator) = validators(&config, keys);
        let reuse = ReuseCache::new(config.cache.tokens, config.signing.reuse_window());
        // Everything loaded: what the key set's rotation step will make registries refuse is
        // said now, not for a set a later failure would have kept from serving.
        keys_set.log_warnings();
        Ok(Live { config, validator, policy, keys: Arc::new(keys_set), admin_validator, reuse, bundle })
    }

    /// `current` with the bundle a poll `fetched` from the live bundle's source. Only
    /// what the bundle carries is new: its policy, settings and revocations (and the Authority's
    /// keys at an offline site). The signing keys, the Authority's keys from the configuration and
    /// `policy.bundle_keys` stay as the last start or reload read them: files changed on disk
    /// since wait for a reload, as they would without a bundle.
    async fn with_polled_bundle(
        current: &Live,
        fetched: Fetched,
        trusted: Arc<TrustedKeys>,
        record: BundleRecord,
    ) -> Result<Live, BuildError> {
        let (Some(bundle_config), Some(live_bundle)) = (&current.config.policy.bundle, &current.bundle)
        else {
            return Err(BuildError::ReloadTask("a bundle was polled without one live".into()));
        };
        let config = current.config.clone();
        let bundle =
            open_bundle(bundle_config, Some(live_bundle), Some(fetched), &record, trusted, None).await?;
        let (validator, admin_validator) = match config.authority.jwks {
            JwksSource::Bundle => validators(&config, bundle_authority_keys(&bundle)?),
            JwksSource::File(_) | JwksSource::Url(_) => {
                (Arc::clone(&current.validator), Arc::clone(&current.admin_validator))
            }
        };
        let policy = bundle_policy(&config, &bundle, Some(&current.policy)).await?;
        let reuse = ReuseCache::new(config.cache.tokens, config.signing.reuse_window());
        let keys = Arc::clone(&current.keys);
        Ok(Live { config, validator, policy, keys, admin_validator, reuse, bundle: Some(bundle) })
    }

    /// Whether the service can issue tokens (for `/readyz`).
    pub fn is_ready(&self) -> bool {
        self.validator.keys().is_ready()
    }

    /// The revocation of the policy bundle's `revocations.json` that refuses `caller` (who
    /// presented `tokens`) at `now`, if any: the same check as the ledger's.
    pub fn bundle_revocation(
        &self,
        caller: &Caller,
        tokens: Presented<'_>,
        now: Millis,
    ) -> Option<&Revocation> {
        self.bundle.as_ref()?.revocations.check(caller, tokens, now)
    }
}

/// Fetches (unless a poll already has) and opens the configured bundle: its limits, its signature
/// with `policy.bundle_keys`, its content, and no rollback from the `live` one nor, unless it is
/// the live one, from the highest revision the ledger `record`s. Without a live bundle, a source
/// that cannot be fetched is replaced by the `copy` of the last bundle applied from it, if any.
async fn open_bundle(
    config: &BundleConfig,
    live: Option<&LiveBundle>,
    fetched: Option<Fetched>,
    record: &BundleRecord,
    keys: Arc<TrustedKeys>,
    copy: Option<PathBuf>,
) -> Result<LiveBundle, BuildError> {
    let refused = |error: BundleError| BuildError::Bundle { source_name: config.source.to_string(), error };
    let same_source = live.filter(|l| l.source == config.source);
    let mut unfetched = None;
    let mut from_copy = None;
    let (bytes, version) = match fetched {
        Some(Fetched { bytes, version }) => (Arc::new(bytes), version),
        None => {
            let known = same_source.and_then(|l| l.version.as_deref());
            match (bundle::fetch(&config.source, &fetch_options(config), known).await, same_source) {
                (Ok(Fetch::New(Fetched { bytes, version })), _) => (Arc::new(bytes), version),
                (Ok(Fetch::Unchanged), Some(live)) => (Arc::clone(&live.bytes), live.version.clone()),
                (Ok(Fetch::Unchanged), None) => {
                    return Err(refused(BundleError::Unavailable(
                        "the source answered \"unchanged\" to a first fetch".into(),
                    )));
                }
                // A reload while the source is down (a signing key to rotate, a limit to change)
                // goes on with the live bundle, checked again below like an unchanged one; the
                // polls pick up the source's new revision once it answers.
                (Err(BundleError::Unavailable(why)), Some(live)) => {
                    let (doing, did) =
                        ("the reload keeps the live bundle", "the reload kept the live bundle");
                    unfetched = Some(stood_in(config, &why, doing, did.into()));
                    (Arc::clone(&live.bytes), live.version.clone())
                }
                // A start while the source is down: the last bundle applied from it, kept in
                // `policy.cache_dir`, checked below like a fetched one (its signature, the
                // ledger's record of the highest revision applied).
                (Err(BundleError::Unavailable(why)), None) if let Some(path) = copy => {
                    let bytes = bundle::read_file(&path, config.max_bytes).map_err(|error| {
                        refused(BundleError::Unavailable(format!(
                            "{why} (and no copy of a bundle applied from it could be read: {error})"
                        )))
                    })?;
                    let doing = format!("starting on the last bundle applied from it ({})", path.display());
                    let did = format!(
                        "started on the last bundle applied from this source, kept in {}",
                        path.display()
                    );
                    unfetched = Some(stood_in(config, &why, &doing, did));
                    from_copy = Some(path);
                    (Arc::new(bytes), None)
                }
                (Err(error), _) => return Err(refused(error)),
            }
        }
    };
    // What refuses the bytes says where they came from.
    let source_name = match &from_copy {
        Some(path) => format!("{} (the copy of it kept in {})", config.source, path.display()),
        None => config.source.to_string(),
    };
    let refused = |error: BundleError| BuildError::Bundle { source_name: source_name.clone(), error };
    let opened = match live.filter(|l| l.bytes == bytes) {
        // The same bytes as live, checked against today's keys (which a reload may have changed).
        Some(live) if keys.is_empty() => Arc::clone(&live.bundle),
        _ => Arc::new(Bundle::open(&bytes, config.max_bytes, &keys).map_err(refused)?),
    };
    if let Some(live) = live {
        no_rollback(&live.bundle, &opened).map_err(refused)?;
    }
    // The live bundle from this source was checked when it was applied; another replica may
    // have recorded a higher revision since, which this one keeps serving until its source has
    // it too. Anything else (a new source too) is checked against the record.
    let unchanged = same_source.is_some_and(|live| live.bundle.content_sha256() == opened.content_sha256());
    if !unchanged {
        match record {
            Ok(Some(applied)) => not_below_record(applied, &opened).map_err(refused)?,
            Ok(None) => {}
            Err(error) => {
                return Err(refused(BundleError::Unavailable(format!(
                    "the ledger's record of the highest revision applied from this source cannot be read \
                     ({error}): the bundle is applied only once it can be checked against it"
                ))));
            }
        }
    }
    if keys.is_empty() {
        tracing::warn!(
            bundle = %config.source,
            "policy.bundle_keys is empty: the bundle's signature is not checked; anyone who can change the bundle \
             chooses the policy"
        );
    }
    let revocations = Arc::new(RevocationSet::new(opened.revocations().to_vec()));
    Ok(LiveBundle {
        source: config.source.clone(),
        bundle: opened,
        bytes,
        version,
        revocations,
        trusted: keys,
        unfetched,
    })
}

/// A fetch of the bundle source that failed as unavailable (`why`), and what the service is
/// `doing` (the log's words) and `did` (`/readyz`'s) instead: logged, counted as a refusal, and
/// kept for `/readyz`.
fn stood_in(config: &BundleConfig, why: &str, doing: &str, did: String) -> BundleRefusal {
    tracing::warn!(bundle = %config.source, error = why, "the bundle source cannot be fetched; {doing}");
    crate::metrics::metrics().bundle_refused("unavailable");
    BundleRefusal {
        time: Millis::now(),
        source: config.source.to_string(),
        reason: "unavailable",
        message: format!("{why} ({did})"),
    }
}

/// The Authority's keys an offline site's bundle carries (`authority.jwks: bundle`).
fn bundle_authority_keys(live_bundle: &LiveBundle) -> Result<KeySource, BuildError> {
    let jwks = live_bundle.bundle.authority_jwks().ok_or_else(|| BuildError::Bundle {
        source_name: live_bundle.source.to_string(),
        error: BundleError::Missing(format!(
            "missing file {}: the configuration names no authority.jwks_file or jwks_url, so the \
             Authority's keys must come in the bundle",
            bundle::AUTHORITY_JWKS
        )),
    })?;
    Ok(KeySource::from_json(jwks, &format!("the policy bundle's {}", bundle::AUTHORITY_JWKS))?)
}

/// The policy `live_bundle` carries, loaded with its settings under `config`'s limits.
async fn bundle_policy(
    config: &Config,
    live_bundle: &LiveBundle,
    previous: Option<&Policy>,
) -> Result<Policy, BuildError> {
    let carried = &live_bundle.bundle;
    let source = format!("{} (bundle revision {})", carried.manifest().policy, carried.manifest().revision);
    let module = carried.policy();
    // A bundle whose policy does not load with its settings is a refused bundle.
    load_module(
        module.wasm(),
        &source,
        carried.settings_json(),
        &config.policy,
        config.cache.decisions,
        previous,
    )
    .await
    .map_err(|error| BuildError::Bundle {
        source_name: live_bundle.source.to_string(),
        error: BundleError::Policy(error.to_string()),
    })
}

/// The validators of callers' and administrators' tokens against the Authority's `keys`.
fn validators(config: &Config, keys: KeySource) -> (Arc<Validator>, Arc<Validator>) {
    let authority = &config.authority;
    let requirements = Requirements {
        issuer: authority.issuer.clone(),
        audiences: authority.audiences.clone(),
        required_scope: authority.required_scope.clone(),
        leeway_seconds: authority.leeway_seconds,
    };
    let admin_requirements =
        Requirements { required_scope: config.admin.required_scope.clone(), ..requirements.clone() };
    // Administrators are few: a small cache spares them a signature check per admin request.
    let admin_validator = Validator::new(keys.clone(), admin_requirements, 64).uncounted();
    let validator = Validator::new(keys, requirements, config.cache.caller_tokens);
    (Arc::new(validator), Arc::new(admin_validator))
}

/// How the configured bundle is fetched.
pub fn fetch_options(config: &BundleConfig) -> FetchOptions {
    FetchOptions {
        max_bytes: config.max_bytes,
        ca_file: config.ca_file.clone(),
        username: config.username.clone(),
        password_file: config.password_file.clone(),
        timeout: Duration::from_secs(30),
    }
}

/// A bundle replacing `live` must have a higher revision (or be the very same bundle).
fn no_rollback(live: &Bundle, new: &Bundle) -> Result<(), BundleError> {
    let (was, now) = (live.manifest().revision, new.manifest().revision);
    // The same content (signed again, perhaps by another key) is not a new bundle.
    if new.content_sha256() == live.content_sha256() {
        return Ok(());
    }
    if now < was {
        return Err(BundleError::Rollback(format!(
            "rollback refused: revision {now} is lower than the live revision {was}"
        )));
    }
    if now == was {
        return Err(BundleError::Rollback(format!(
            "revision {now} is live with other content ({}); a new bundle needs a higher revision",
            live.content_sha256()
        )));
    }
    Ok(())
}

/// A bundle that is not the live one must not be below the highest revision applied from its
/// source (the ledger's record, which outlives restarts), nor that revision with other content.
fn not_below_record(applied: &AppliedBundle, new: &Bundle) -> Result<(), BundleError> {
    let (was, now) = (applied.revision, new.manifest().revision);
    if now < was {
        return Err(BundleError::Rollback(format!(
            "rollback refused: revision {now} is lower than revision {was}, applied from this source at {} \
             (the ledger's record): publish revision {was} or higher there; for a deliberate rollback, \
             `registry-token bundle forget-revision` and restart",
            applied.applied_at
        )));
    }
    if now == was && new.content_sha256() != applied.content_sha256 {
        return Err(BundleError::Rollback(format!(
            "revision {now} was applied from this source at {} with other content ({}); a new bundle \
             needs a higher revision",
            applied.applied_at, applied.content_sha256
        )));
    }
    Ok(())
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
    load_module(&module, &config.module.to_string(), settings_json, config, decision_cache, previous).await
}

/// Loads `module` (named `source` in errors and on the status page) with `settings_json`, under
/// the limits of `config` and with its compiled-code cache.
pub async fn load_module(
    module: &[u8],
    source: &str,
    settings_json: &str,
    config: &PolicyConfig,
    decision_cache: usize,
    previous: Option<&Policy>,
) -> Result<Policy, BuildError> {
    let setup =
        policy::Setup { limits: config.limits(), decision_cache, cache_dir: config.cache_dir.clone() };
    Ok(match previous {
        Some(previous) => previous.reload(module, source, settings_json, &setup).await?,
        None => Policy::load_with(module, source, settings_json, &setup).await?,
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

/// What a new [`Live`] is built from.
enum Rebuild {
    /// A configuration (a reload): everything it names is read again.
    Config(Box<Config>),
    /// A new bundle from the live one's source (a poll): only what the bundle carries is new,
    /// checked against these keys.
    Bundle(Fetched, Arc<TrustedKeys>),
}

/// A bundle that was refused, as `/readyz` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BundleRefusal {
    /// When.
    pub time: Millis,
    /// Where it came from.
    pub source: String,
    /// The short reason (`rollback`, `signature`, `unsigned`, ...), as metrics count it.
    pub reason: &'static str,
    /// Why, in full.
    pub message: String,
}

/// The running service: the live state, swapped atomically on reload.
pub struct App {
    live: ArcSwap<Live>,
    config_path: Option<PathBuf>,
    /// The last bundle refused since the live one was applied, for `/readyz`.
    bundle_refusal: Mutex<Option<BundleRefusal>>,
    /// The issuance ledger; `None` with `ledger.url: none` (and in tests that do not need one).
    pub ledger: Option<Ledger>,
    /// The source and content of the last bundle the ledger recorded as applied (see
    /// [`App::record_bundle`]).
    bundle_recorded: Mutex<Option<(String, String)>>,
    /// `policy.bundle_keys` as a reload that failed read them: polls check new bundles against
    /// these rather than the live bundle's, so that a key the operator removed is not trusted
    /// again because the reload failed (as it does when the live bundle was signed by that key).
    /// `None` once a reload applies (the live bundle's keys are then the configuration's).
    bundle_keys_read: Mutex<Option<Arc<TrustedKeys>>>,
    /// The copy of the live bundle last written to `policy.cache_dir` (its path and SHA-256).
    bundle_copied: Mutex<Option<(PathBuf, String)>>,
    /// The clock requests use.
    pub clock: Clock,
    /// The exchanges running in tasks of their own (see [`crate::http`]'s token endpoint): a
    /// stop waits for them, so that none is cut off before its event is queued.
    pub exchanges: tokio_util::task::TaskTracker,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").field("config_path", &self.config_path).finish_non_exhaustive()
    }
}

impl App {
    /// A service over already-built state. `config_path` is re-read on [`App::reload`].
    pub fn new(live: Live, config_path: Option<PathBuf>, clock: Clock) -> App {
        if live.bundle.is_some() {
            crate::metrics::metrics().bundle_applied();
        }
        let unfetched = live.bundle.as_ref().and_then(|b| b.unfetched.clone());
        App {
            live: ArcSwap::from_pointee(live),
            config_path,
            bundle_refusal: Mutex::new(unfetched),
            bundle_copied: Mutex::new(None),
            ledger: None,
            bundle_recorded: Mutex::new(None),
            bundle_keys_read: Mutex::new(None),
            clock,
            exchanges: tokio_util::task::TaskTracker::new(),
        }
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

    /// Records the live bundle in the ledger as applied from its source (raising the source's
    /// record, never lowering it), so that a restart refuses a rollback too: `Err` with what the
    /// ledger said when it could not.
    pub async fn record_bundle(&self) -> Result<(), String> {
        let Some(applied) = self.bundle_to_record() else { return Ok(()) };
        let ledger = self.ledger.as_ref().ok_or("no ledger")?;
        ledger.record_applied_bundle(&applied).await.map_err(|e| e.to_string())?;
        if let Ok(mut recorded) = self.bundle_recorded.lock() {
            *recorded = Some((applied.source, applied.content_sha256));
        }
        Ok(())
    }

    /// [`App::record_bundle`], warning when the ledger could not: `serve` asks again every few
    /// seconds while [`App::bundle_unrecorded`].
    pub async fn record_bundle_or_warn(&self) {
        if let Err(error) = self.record_bundle().await {
            tracing::warn!(
                %error,
                "the ledger did not record the live policy bundle as applied; until it does, a restart would \
                 accept a lower revision; asking again in a few seconds"
            );
        }
    }

    /// Keeps a copy of the live bundle from a remote source in `policy.cache_dir`, for a start
    /// while that source cannot be fetched. A copy that cannot be written is a warning: the
    /// service serves on.
    pub async fn copy_bundle(&self) {
        let live = self.live();
        let (Some(live_bundle), Some(dir)) = (&live.bundle, &live.config.policy.cache_dir) else { return };
        if !live_bundle.source.is_remote() {
            return;
        }
        let path = bundle::last_applied_copy(dir, &live_bundle.source);
        let copied = (path.clone(), live_bundle.bundle.sha256().to_owned());
        if self.bundle_copied.lock().is_ok_and(|last| last.as_ref() == Some(&copied)) {
            return;
        }
        let bytes = Arc::clone(&live_bundle.bytes);
        let written = tokio::task::spawn_blocking(move || {
            let parent = path.parent().unwrap_or(&path);
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
            crate::files::write_replacing(&path, &bytes, 0o600)
        })
        .await
        .unwrap_or_else(|error| Err(error.to_string()));
        match written {
            Ok(()) => {
                tracing::debug!(copy = %copied.0.display(), "kept a copy of the live policy bundle");
                if let Ok(mut last) = self.bundle_copied.lock() {
                    *last = Some(copied);
                }
            }
            Err(error) => tracing::warn!(
                %error,
                "cannot keep a copy of the live policy bundle in policy.cache_dir: a start while its source \
                 cannot be fetched would fail"
            ),
        }
    }

    /// Whether the live bundle is still to be recorded in the ledger.
    pub fn bundle_unrecorded(&self) -> bool {
        self.bundle_to_record().is_some()
    }

    /// The live bundle as the ledger is to record it, unless it has (or there is no ledger).
    fn bundle_to_record(&self) -> Option<AppliedBundle> {
        self.ledger.as_ref()?;
        let live = self.live();
        let live_bundle = live.bundle.as_ref()?;
        let (source, content) = (live_bundle.source.to_string(), live_bundle.bundle.content_sha256());
        let recorded = self.bundle_recorded.lock().ok()?;
        if recorded.as_ref().is_some_and(|(s, c)| *s == source && c == content) {
            return None;
        }
        Some(AppliedBundle {
            source,
            revision: live_bundle.bundle.manifest().revision,
            content_sha256: content.to_owned(),
            applied_at: Millis::now(),
        })
    }

    /// Re-reads the configuration file and everything it names, and swaps it in only if all of
    /// it loads. On error the previous state keeps serving.
    pub async fn reload(&self) -> Result<(), BuildError> {
        let before = self.live();
        let result = self.reload_now().await;
        crate::metrics::metrics().reload(result.is_ok());
        self.note_bundle(&before, &result);
        result
    }

    /// Asks a remote bundle source (`policy.bundle` over HTTPS or OCI) whether it has a new
    /// bundle and, when it has, applies it with the live configuration: `Ok(true)`. A bundle
    /// that is refused (or cannot be fetched) leaves the live one serving.
    pub async fn poll_bundle(&self) -> Result<bool, BuildError> {
        let current = self.live();
        let (Some(config), Some(live_bundle)) = (&current.config.policy.bundle, &current.bundle) else {
            return Ok(false);
        };
        let refused =
            |error: BundleError| BuildError::Bundle { source_name: config.source.to_string(), error };
        let known = live_bundle.version.as_deref();
        let result = match bundle::fetch(&config.source, &fetch_options(config), known).await {
            Ok(Fetch::Unchanged) => return Ok(false),
            // A source without versions sends the live bundle again: nothing to do. (One that
            // names a version the live bundle lacks — it came from the copy in `policy.cache_dir`
            // — is applied again, with it: the next polls ask with it, and are not downloads.)
            Ok(Fetch::New(fetched))
                if fetched.bytes.as_slice() == live_bundle.bytes.as_slice()
                    && (fetched.version.is_none() || live_bundle.version.is_some()) =>
            {
                return Ok(false);
            }
            Ok(Fetch::New(fetched)) => {
                let read = self.bundle_keys_read.lock().ok().and_then(|read| read.clone());
                let trusted = read.unwrap_or_else(|| Arc::clone(&live_bundle.trusted));
                let rebuild = Rebuild::Bundle(fetched, trusted);
                self.build_and_swap(rebuild, Arc::clone(&current)).await.map(|()| true)
            }
            Err(error) => Err(refused(error)),
        };
        self.note_bundle(&current, &result);
        result
    }

    /// Records what happened to the bundle: a refusal (logged, counted, shown by `/readyz`) or a
    /// new bundle applied (which clears the last refusal).
    fn note_bundle<T>(&self, before: &Live, result: &Result<T, BuildError>) {
        match result {
            Err(BuildError::Bundle { source_name, error }) => {
                crate::metrics::metrics().bundle_refused(error.reason());
                tracing::error!(
                    bundle = %source_name,
                    reason = error.reason(),
                    %error,
                    "policy bundle refused; the live one keeps serving"
                );
                if let Ok(mut last) = self.bundle_refusal.lock() {
                    *last = Some(BundleRefusal {
                        time: Millis::now(),
                        source: source_name.clone(),
                        reason: error.reason(),
                        message: error.to_string(),
                    });
                }
            }
            Ok(_) => {
                let live = self.live();
                let Some(now) = &live.bundle else { return };
                // Only as this reload built it: a later poll's refusal is newer.
                if let Some(unfetched) = &now.unfetched
                    && !std::ptr::eq(before, &*live)
                    && let Ok(mut last) = self.bundle_refusal.lock()
                {
                    *last = Some(unfetched.clone());
                }
                if before.bundle.as_ref().is_none_or(|was| was.bundle.sha256() != now.bundle.sha256()) {
                    let manifest = now.bundle.manifest();
                    crate::metrics::metrics().bundle_applied();
                    tracing::info!(
                        bundle = %now.source,
                        revision = manifest.revision,
                        sha256 = now.bundle.sha256(),
                        signed_by = now.bundle.signed_by().unwrap_or("(not checked)"),
                        "policy bundle applied"
                    );
                    if let Ok(mut last) = self.bundle_refusal.lock() {
                        *last = None;
                    }
                }
            }
            Err(_) => {}
        }
    }

    /// The live bundle and the last refusal since it was applied, for `/readyz`; `None` without
    /// `policy.bundle`.
    pub fn bundle_status(&self) -> Option<serde_json::Value> {
        let live = self.live();
        let live_bundle = live.bundle.as_ref()?;
        let manifest = live_bundle.bundle.manifest();
        let refusal = self.bundle_refusal.lock().ok().and_then(|last| last.clone());
        Some(serde_json::json!({
            "source": live_bundle.source.to_string(),
            "revision": manifest.revision,
            "sha256": live_bundle.bundle.sha256(),
            "content_sha256": live_bundle.bundle.content_sha256(),
            "created_at": manifest.created_at,
            "wit_version": manifest.wit_version,
            "policy": manifest.policy,
            "policy_digest": manifest.policy_digest,
            "settings_digest": manifest.settings_digest,
            "signed_by": live_bundle.bundle.signed_by(),
            "revocations": live_bundle.bundle.revocations().len(),
            "authority_jwks": live_bundle.bundle.authority_jwks().is_some(),
            "last_refusal": refusal,
        }))
    }

    async fn reload_now(&self) -> Result<(), BuildError> {
        let Some(path) = self.config_path.clone() else {
            return Err(BuildError::NoConfigFile);
        };
        let mut config = Config::load(&path)?;
        let current = self.live();
        keep_restart_only(&current.config, &mut config);
        // Read before the rest can fail: what polls trust from now on (see `bundle_keys_read`).
        if let Some(bundle) = &config.policy.bundle
            && let Ok(keys) = TrustedKeys::from_files(&bundle.keys)
            && let Ok(mut read) = self.bundle_keys_read.lock()
        {
            *read = Some(Arc::new(keys));
        }
        let built = self.build_and_swap(Rebuild::Config(Box::new(config)), current).await;
        if built.is_ok()
            && let Ok(mut read) = self.bundle_keys_read.lock()
        {
            *read = None;
        }
        built
    }

    /// Builds a new `Live` after `current` and swaps it in.
    async fn build_and_swap(&self, rebuild: Rebuild, current: Arc<Live>) -> Result<(), BuildError> {
        let config = match &rebuild {
            Rebuild::Config(config) => config,
            Rebuild::Bundle(..) => &current.config,
        };
        let record = bundle_record(self.ledger.as_ref(), config).await;
        // Compiling a policy takes a few hundred milliseconds of CPU: keep it off the workers.
        let started = std::time::Instant::now();
        let handle = tokio::runtime::Handle::current();
        let built = tokio::task::spawn_blocking(move || {
            handle.block_on(async {
                match rebuild {
                    Rebuild::Config(config) => Live::build_with(*config, Some(&current), record).await,
                    Rebuild::Bundle(fetched, trusted) => {
                        Live::with_polled_bundle(&current, fetched, trusted, record).await
                    }
                }
            })
        })
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
        self.record_bundle_or_warn().await;
        self.copy_bundle().await;
        Ok(())
    }
}
