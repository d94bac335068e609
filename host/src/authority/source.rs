//! Where the Authority's keys come from: a JWKS file, or a URL (cached, refreshed in the
//! background, refetched once on an unknown `kid`, and bounded in size, time and rate).

use super::AuthError;
use super::keyset::{JwksError, KeySet, VerifyKey};
use arc_swap::ArcSwap;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// A JWKS document larger than this is refused.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether keys may be fetched from `url`: https, or plain http to a loopback address only (a test
/// or a sidecar on the same host), since whoever can change the keys in transit can forge callers.
pub fn acceptable_jwks_url(url: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(url) else {
        return false;
    };
    let host = url.host_str().unwrap_or_default();
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match url.scheme() {
        "https" => !host.is_empty(),
        "http" => loopback,
        _ => false,
    }
}

/// Where the keys come from.
#[derive(Clone, Debug)]
pub enum KeySource {
    /// A JWKS file, read at start and at every reload.
    File(Arc<KeySet>),
    /// A JWKS URL, kept fresh by a background task.
    Remote(Arc<RemoteJwks>),
}

impl KeySource {
    /// Reads a JWKS file.
    pub fn from_file(path: &Path) -> Result<KeySource, JwksError> {
        let bytes =
            std::fs::read(path).map_err(|source| JwksError::Read { path: path.to_owned(), source })?;
        Ok(KeySource::File(Arc::new(KeySet::from_json(&bytes, &path.display().to_string())?)))
    }

    /// A JWKS document already in memory (a policy bundle's `authority-jwks.json`), named
    /// `origin` in errors.
    pub fn from_json(bytes: &[u8], origin: &str) -> Result<KeySource, JwksError> {
        Ok(KeySource::File(Arc::new(KeySet::from_json(bytes, origin)?)))
    }

    /// A JWKS URL, refetched every `refresh_every`, and on an unknown `kid` at most once per
    /// `min_refetch` (so a flood of tokens with made-up key ids cannot become a flood of requests to
    /// the Authority). After a fetch that failed the next comes `min_refetch` later (at least 1 s,
    /// at most `refresh_every`), traffic or not: a replica that started during an outage is ready
    /// soon after the Authority is back. The first fetch happens here. If it fails: with `must_fetch` (a reload, which
    /// keeps the keys it has rather than trading them for none) that is the error; without (the
    /// start), the error is logged and tokens are refused as `KeysUnavailable` until a later fetch
    /// succeeds.
    pub async fn from_url(
        url: &str,
        refresh_every: Duration,
        min_refetch: Duration,
        must_fetch: bool,
    ) -> Result<KeySource, JwksError> {
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                if attempt.previous().len() >= 3 {
                    attempt.error("more than 3 redirects")
                } else if !acceptable_jwks_url(attempt.url().as_str()) {
                    attempt.error("a redirect to a plain-http URL that is not a loopback address")
                } else {
                    attempt.follow()
                }
            }))
            .build()
            .map_err(|e| JwksError::Fetch { url: shown_url(url), reason: e.to_string() })?;
        let remote = Arc::new(RemoteJwks {
            url: url.to_owned(),
            shown: shown_url(url),
            client,
            keys: ArcSwap::from_pointee(KeySet::default()),
            generation: std::sync::atomic::AtomicU64::new(0),
            last_fetch: Mutex::new(None),
            refresh_every,
            min_refetch,
            refetch: tokio::sync::Mutex::new(()),
            started: std::sync::atomic::AtomicU64::new(0),
            stored: Mutex::new(0),
            answered: Mutex::new(0),
            failing: std::sync::atomic::AtomicBool::new(false),
        });
        match remote.refresh().await {
            Err(e) if must_fetch => return Err(e),
            Err(e) => tracing::error!("{e}; caller tokens are refused until the JWKS can be fetched"),
            Ok(()) => {}
        }
        let retry = min_refetch.max(Duration::from_secs(1)).min(refresh_every);
        RemoteJwks::spawn_refresher(Arc::downgrade(&remote), refresh_every, retry);
        Ok(KeySource::Remote(remote))
    }

    /// Changes whenever the set of keys changes, so anything derived from the old set (cached
    /// validations) can tell it is stale.
    pub fn generation(&self) -> u64 {
        match self {
            KeySource::File(_) => 0,
            KeySource::Remote(remote) => remote.generation.load(std::sync::atomic::Ordering::Acquire),
        }
    }

    /// Whether these are the keys of `url`, refreshed every `refresh_every` and refetched at most
    /// once per `min_refetch` (what a reload may keep rather than fetch anew).
    pub fn fetches(&self, url: &str, refresh_every: Duration, min_refetch: Duration) -> bool {
        matches!(self, KeySource::Remote(remote)
            if remote.url == url && remote.refresh_every == refresh_every && remote.min_refetch == min_refetch)
    }

    /// Whether keys are loaded (for `/readyz`).
    pub fn is_ready(&self) -> bool {
        match self {
            KeySource::File(set) => !set.is_empty(),
            KeySource::Remote(remote) => !remote.keys.load().is_empty(),
        }
    }

    /// The key for `kid` after one refetch (at most once per `min_refetch`, as for an unknown
    /// `kid`): for a token whose signature failed against the key that stood in for its `kid`
    /// (the Authority's one key, which names none), as it does when the Authority has rotated
    /// that key. `None` for keys from a file, or when no key stands for `kid` then.
    pub(super) async fn refetched(
        &self,
        kid: Option<&str>,
        algorithm: jsonwebtoken::Algorithm,
    ) -> Option<Arc<VerifyKey>> {
        match self {
            KeySource::File(_) => None,
            KeySource::Remote(remote) => {
                remote.refetch_for_unknown_kid().await;
                remote.keys.load().find(kid, algorithm)
            }
        }
    }

    pub(super) async fn find(
        &self,
        kid: Option<&str>,
        algorithm: jsonwebtoken::Algorithm,
    ) -> Result<Arc<VerifyKey>, AuthError> {
        let unknown = || {
            AuthError::UnknownKey(match kid {
                Some(kid) => format!("{:?}", super::shorten(kid)),
                None => "absent".to_owned(),
            })
        };
        match self {
            KeySource::File(set) => set.find(kid, algorithm).ok_or_else(unknown),
            KeySource::Remote(remote) => {
                if let Some(key) = remote.keys.load().find(kid, algorithm) {
                    return Ok(key);
                }
                remote.refetch_for_unknown_kid().await;
                let keys = remote.keys.load();
                // While the Authority does not answer, a key it may have added since cannot be
                // told from a made-up one: a 503 to retry, not a 401 that calls the token bad.
                if keys.is_empty() || remote.failing.load(std::sync::atomic::Ordering::Acquire) {
                    return keys.find(kid, algorithm).ok_or(AuthError::KeysUnavailable);
                }
                keys.find(kid, algorithm).ok_or_else(unknown)
            }
        }
    }
}

/// A JWKS fetched over HTTP(S).
pub struct RemoteJwks {
    url: String,
    /// `url` as logs and errors show it: without credentials or query.
    shown: String,
    client: reqwest::Client,
    keys: ArcSwap<KeySet>,
    generation: std::sync::atomic::AtomicU64,
    last_fetch: Mutex<Option<Instant>>,
    refresh_every: Duration,
    min_refetch: Duration,
    refetch: tokio::sync::Mutex<()>,
    /// Fetches started, numbered from 1; and the number of the one whose keys are stored. The
    /// periodic refresh and a refetch for an unknown `kid` may overlap: the keys of the earlier
    /// one, answered later, never replace the later one's (a key just added would vanish).
    started: std::sync::atomic::AtomicU64,
    stored: Mutex<u64>,
    /// The number of the latest fetch answered (or failed), and whether it failed.
    answered: Mutex<u64>,
    failing: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for RemoteJwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteJwks").field("url", &self.shown).field("keys", &self.keys.load()).finish()
    }
}

impl RemoteJwks {
    async fn fetch(&self) -> Result<KeySet, JwksError> {
        let error = |reason: String| JwksError::Fetch { url: self.shown.clone(), reason };
        // reqwest's errors name the URL: it is shown once, as `shown`.
        let failed = |e: reqwest::Error| error(e.without_url().to_string());
        let mut response = self.client.get(&self.url).send().await.map_err(failed)?;
        if !response.status().is_success() {
            return Err(error(format!("HTTP {}", response.status())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| error(e.to_string()))? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(error(format!("the document is larger than {MAX_JWKS_BYTES} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        KeySet::from_json(&body, &self.shown)
    }

    async fn refresh(&self) -> Result<(), JwksError> {
        if let Ok(mut last) = self.last_fetch.lock() {
            *last = Some(Instant::now());
        }
        let number = self.started.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1;
        let fetched = self.fetch().await;
        crate::metrics::metrics().keys_fetch(fetched.is_ok());
        if let Ok(mut answered) = self.answered.lock()
            && *answered < number
        {
            *answered = number;
            self.failing.store(fetched.is_err(), std::sync::atomic::Ordering::Release);
        }
        let keys = fetched?;
        let Ok(mut stored) = self.stored.lock() else { return Ok(()) };
        if *stored > number {
            return Ok(());
        }
        *stored = number;
        if keys.fingerprint() != self.keys.load().fingerprint() {
            tracing::info!(url = %self.shown, keys = keys.len(), "the Authority's JWKS changed");
            self.keys.store(Arc::new(keys));
            self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
        Ok(())
    }

    /// One refetch at a time, and none if the last fetch is recent: a new key is picked up within
    /// seconds of its first use, and made-up `kid`s cost the Authority nothing.
    async fn refetch_for_unknown_kid(&self) {
        let _single_flight = self.refetch.lock().await;
        let recent = self
            .last_fetch
            .lock()
            .map(|last| last.is_some_and(|at| at.elapsed() < self.min_refetch))
            .unwrap_or(true);
        if !recent && let Err(e) = self.refresh().await {
            tracing::warn!("{e}");
        }
    }

    /// Refreshes every `every`, or `retry` after a fetch that failed.
    fn spawn_refresher(remote: Weak<RemoteJwks>, every: Duration, retry: Duration) {
        tokio::spawn(async move {
            loop {
                let failing = remote
                    .upgrade()
                    .is_some_and(|remote| remote.failing.load(std::sync::atomic::Ordering::Acquire));
                tokio::time::sleep(if failing { retry } else { every }).await;
                let Some(remote) = remote.upgrade() else {
                    break;
                };
                if let Err(e) = remote.refresh().await {
                    tracing::warn!("{e}; keeping the keys fetched before");
                }
            }
        });
    }
}

/// `url` without what may be a secret: its user and password, and its query. (Of text that is
/// not a URL, what stands before an `@` and after a `?`.)
pub(crate) fn shown_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            if parsed.query().is_some() {
                parsed.set_query(Some("..."));
            }
            parsed.to_string()
        }
        Err(_) => {
            let before_query = url.split('?').next().unwrap_or(url);
            before_query.rsplit('@').next().unwrap_or(before_query).to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{KeySource, acceptable_jwks_url};
    use std::time::Duration;

    /// Credentials in the JWKS URL (its user and password, or a token in its query) appear in no
    /// error: a reload refused because the Authority is unreachable says where, not with what.
    #[tokio::test]
    async fn a_jwks_url_is_shown_without_its_credentials() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("http://jwks-user:pa55word@127.0.0.1:{port}/jwks.json?access_token=t0ken");
        let error = KeySource::from_url(&url, Duration::from_secs(60), Duration::from_secs(1), true)
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains(&format!("http://127.0.0.1:{port}/jwks.json?...")), "{error}");
        for secret in ["jwks-user", "pa55word", "t0ken"] {
            assert!(!error.contains(secret), "{secret} in {error}");
        }
    }

    /// The periodic refresh fetched the old set, answered slowly; meanwhile a token with the
    /// Authority's new key made a refetch that got the new set. The slow answer, arriving last,
    /// must not put the old set back: tokens signed with the new key would be refused until the
    /// next refresh (a refetch being rate-limited).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_fetch_never_replaces_the_keys_of_a_later_one() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};
        let dir = tempfile::tempdir().unwrap();
        let jwks = |name: &str| {
            let (key, cert) =
                (dir.path().join(format!("{name}-key.pem")), dir.path().join(format!("{name}.pem")));
            let algorithm = crate::mint::SigningAlgorithm::RS256;
            let generated = crate::mint::keygen::generate_as(&key, &cert, algorithm, 2048).unwrap();
            let key = crate::mint::SigningKey::from_file(&generated.key_file, algorithm).unwrap();
            (key.thumbprint_kid(), serde_json::json!({ "keys": [key.public_jwk()] }).to_string())
        };
        let ((old_kid, old), (new_kid, new)) = (jwks("old"), jwks("new"));
        // Serves the set of the moment a request arrives; the second request's answer is held
        // until the test lets it go.
        let serving = Arc::new(Mutex::new(old));
        let requests = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(tokio::sync::Notify::new());
        let (set, count, held) = (Arc::clone(&serving), Arc::clone(&requests), Arc::clone(&release));
        let route = move || {
            let (set, count, held) = (Arc::clone(&set), Arc::clone(&count), Arc::clone(&held));
            async move {
                let body = set.lock().unwrap().clone();
                if count.fetch_add(1, Ordering::SeqCst) + 1 == 2 {
                    held.notified().await;
                }
                body
            }
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let app = axum::Router::new().route("/jwks.json", axum::routing::get(route));
        tokio::spawn(async move { axum::serve(listener, app).await });

        let source =
            KeySource::from_url(&url, Duration::from_secs(3600), Duration::ZERO, true).await.unwrap();
        let KeySource::Remote(remote) = &source else { panic!("a remote source") };
        let slow = tokio::spawn({
            let remote = Arc::clone(remote);
            async move { remote.refresh().await }
        });
        while requests.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        *serving.lock().unwrap() = new;
        let rs256 = jsonwebtoken::Algorithm::RS256;
        assert!(source.find(Some(&new_kid), rs256).await.is_ok(), "the refetch found the new key");
        release.notify_one();
        slow.await.unwrap().unwrap();
        assert_eq!(requests.load(Ordering::SeqCst), 3);
        let keys = remote.keys.load();
        assert!(keys.find(Some(&new_kid), rs256).is_some(), "the slow answer put the old set back");
        assert!(keys.find(Some(&old_kid), rs256).is_none());
    }

    #[test]
    fn keys_come_over_https_or_from_this_host_only() {
        for ok in [
            "https://authority.example/.well-known/jwks.json",
            "http://127.0.0.1:8080/jwks.json",
            "http://127.8.0.1/jwks.json",
            "http://[::1]:9/jwks.json",
            "http://localhost/jwks.json",
        ] {
            assert!(acceptable_jwks_url(ok), "{ok}");
        }
        for refused in [
            "http://authority.example/jwks.json",
            "http://127.0.0.1.evil.example/jwks.json",
            "http://10.0.0.1/jwks.json",
            "ftp://authority.example/jwks.json",
            "file:///etc/jwks.json",
            "https://",
            "not a url",
        ] {
            assert!(!acceptable_jwks_url(refused), "{refused}");
        }
    }
}
