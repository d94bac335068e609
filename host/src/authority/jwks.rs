//! The Authority's public keys: a JWKS from a file, or from a URL (cached, refreshed in the
//! background, refetched once on an unknown `kid`, and bounded in size, time and rate).

use super::AuthError;
use arc_swap::ArcSwap;
use aws_lc_rs::signature::{self as sig, ParsedPublicKey, VerificationAlgorithm};
use data_encoding::BASE64URL_NOPAD;
use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// A JWKS document larger than this is refused.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Keys beyond this many are ignored (with a warning); Authorities publish a handful.
const MAX_KEYS: usize = 64;
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a JWKS could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// The file could not be read.
    #[error("cannot read the JWKS file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The URL could not be fetched.
    #[error("cannot fetch the JWKS from {url}: {reason}")]
    Fetch {
        /// The URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The document is not a usable JWKS.
    #[error("the JWKS from {origin} is invalid: {reason}")]
    Invalid {
        /// File or URL.
        origin: String,
        /// What is wrong.
        reason: String,
    },
}

/// One verification key and the one algorithm it verifies.
pub struct VerifyKey {
    /// `kid`, when the JWKS names it.
    pub kid: Option<String>,
    /// The key's algorithm: from its `alg`, or the only sensible one for its type.
    pub algorithm: Algorithm,
    /// The key, parsed once (aws-lc keeps its Montgomery form): verifying a signature then costs
    /// only the signature check.
    pub key: ParsedPublicKey,
    /// The JWK's key parameters as published, to tell sets apart.
    material: String,
}

/// A parsed JWKS.
#[derive(Default)]
pub struct KeySet {
    keys: Vec<Arc<VerifyKey>>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<_> = self.keys.iter().map(|k| (k.kid.as_deref(), k.algorithm)).collect();
        f.debug_struct("KeySet").field("keys", &kids).finish()
    }
}

impl KeySet {
    /// Parses a JWKS, keeping the signature keys this service can use. Symmetric (`oct`) keys are
    /// never used: a caller token checked with a shared secret proves nothing about the Authority.
    pub fn from_json(bytes: &[u8], origin: &str) -> Result<KeySet, JwksError> {
        let invalid = |reason: String| JwksError::Invalid { origin: origin.to_owned(), reason };
        let document: Value = serde_json::from_slice(bytes).map_err(|e| invalid(format!("not JSON: {e}")))?;
        let Some(entries) = document.get("keys").and_then(Value::as_array) else {
            return Err(invalid("no \"keys\" array".to_owned()));
        };
        let mut keys = Vec::new();
        for (index, entry) in entries.iter().enumerate() {
            if keys.len() == MAX_KEYS {
                tracing::warn!(%origin, "JWKS has more than {MAX_KEYS} keys; the rest are ignored");
                break;
            }
            match verify_key(entry) {
                Ok(key) => keys.push(Arc::new(key)),
                Err(reason) => tracing::warn!(%origin, index, "JWKS key ignored: {reason}"),
            }
        }
        if keys.is_empty() {
            return Err(invalid("it holds no usable signature keys".to_owned()));
        }
        Ok(KeySet { keys })
    }

    /// The key for `kid`; a token without `kid` only matches a JWKS holding exactly one key.
    fn find(&self, kid: Option<&str>) -> Option<Arc<VerifyKey>> {
        match kid {
            Some(kid) => self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)).cloned(),
            None if self.keys.len() == 1 => self.keys.first().cloned(),
            None => None,
        }
    }

    /// What identifies the set: each key's id, algorithm and material.
    fn fingerprint(&self) -> Vec<(Option<String>, Algorithm, String)> {
        self.keys.iter().map(|k| (k.kid.clone(), k.algorithm, k.material.clone())).collect()
    }

    /// How many keys are usable.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is usable (never true for a set that loaded).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

fn verify_key(entry: &Value) -> Result<VerifyKey, String> {
    let jwk: Jwk = serde_json::from_value(entry.clone()).map_err(|e| format!("not a JWK: {e}"))?;
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Err("an encryption key (use: enc)".to_owned());
    }
    let algorithm = match (&jwk.algorithm, jwk.common.key_algorithm) {
        (AlgorithmParameters::OctetKey(_), _) => return Err("a symmetric (oct) key".to_owned()),
        (AlgorithmParameters::RSA(_), None) => Algorithm::RS256,
        (AlgorithmParameters::RSA(_), Some(alg)) => match alg {
            KeyAlgorithm::RS256 => Algorithm::RS256,
            KeyAlgorithm::RS384 => Algorithm::RS384,
            KeyAlgorithm::RS512 => Algorithm::RS512,
            KeyAlgorithm::PS256 => Algorithm::PS256,
            KeyAlgorithm::PS384 => Algorithm::PS384,
            KeyAlgorithm::PS512 => Algorithm::PS512,
            other => return Err(format!("an RSA key for {other:?}")),
        },
        (AlgorithmParameters::EllipticCurve(params), alg) => match (params.curve.clone(), alg) {
            (EllipticCurve::P256, None | Some(KeyAlgorithm::ES256)) => Algorithm::ES256,
            (EllipticCurve::P384, None | Some(KeyAlgorithm::ES384)) => Algorithm::ES384,
            (curve, alg) => return Err(format!("an EC key on {curve:?} for {alg:?}")),
        },
        (AlgorithmParameters::OctetKeyPair(params), alg) => match (params.curve.clone(), alg) {
            (EllipticCurve::Ed25519, None | Some(KeyAlgorithm::EdDSA)) => Algorithm::EdDSA,
            (curve, alg) => return Err(format!("an OKP key on {curve:?} for {alg:?}")),
        },
        _ => return Err("an unsupported key type".to_owned()),
    };
    let key = parse_key(&jwk.algorithm, algorithm).map_err(|e| format!("unusable key material: {e}"))?;
    let material = serde_json::to_string(&jwk.algorithm).unwrap_or_default();
    Ok(VerifyKey { kid: jwk.common.key_id.clone(), algorithm, key, material })
}

/// The public key of a JWK, parsed for the one algorithm it verifies.
fn parse_key(params: &AlgorithmParameters, algorithm: Algorithm) -> Result<ParsedPublicKey, String> {
    let decode = |field: &str, value: &str| {
        BASE64URL_NOPAD.decode(value.as_bytes()).map_err(|_| format!("{field} is not unpadded base64url"))
    };
    let verification: &'static dyn VerificationAlgorithm = match algorithm {
        Algorithm::RS256 => &sig::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &sig::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &sig::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &sig::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &sig::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &sig::RSA_PSS_2048_8192_SHA512,
        Algorithm::ES256 => &sig::ECDSA_P256_SHA256_FIXED,
        Algorithm::ES384 => &sig::ECDSA_P384_SHA384_FIXED,
        Algorithm::EdDSA => &sig::ED25519,
        other => return Err(format!("{other:?} is not verified here")),
    };
    let bytes = match params {
        AlgorithmParameters::RSA(rsa) => {
            let components =
                aws_lc_rs::rsa::PublicKeyComponents { n: decode("n", &rsa.n)?, e: decode("e", &rsa.e)? };
            let der: aws_lc_rs::encoding::PublicKeyX509Der<'static> =
                aws_lc_rs::encoding::AsDer::as_der(&components)
                    .map_err(|_| "not an RSA public key".to_owned())?;
            der.as_ref().to_vec()
        }
        AlgorithmParameters::EllipticCurve(ec) => {
            let mut point = vec![0x04];
            point.extend(decode("x", &ec.x)?);
            point.extend(decode("y", &ec.y)?);
            point
        }
        AlgorithmParameters::OctetKeyPair(okp) => decode("x", &okp.x)?,
        _ => return Err("an unsupported key type".to_owned()),
    };
    ParsedPublicKey::new(verification, bytes).map_err(|e| e.to_string())
}

/// Where the keys come from.
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

    /// A JWKS URL, refetched every `refresh_every`, and on an unknown `kid` at most once per
    /// `min_refetch` (so a flood of tokens with made-up key ids cannot become a flood of requests to
    /// the Authority). The first fetch happens here; if it fails the error is logged and tokens are
    /// refused as `KeysUnavailable` until a later fetch succeeds.
    pub async fn from_url(
        url: &str,
        refresh_every: Duration,
        min_refetch: Duration,
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
            .map_err(|e| JwksError::Fetch { url: url.to_owned(), reason: e.to_string() })?;
        let remote = Arc::new(RemoteJwks {
            url: url.to_owned(),
            client,
            keys: ArcSwap::from_pointee(KeySet::default()),
            generation: std::sync::atomic::AtomicU64::new(0),
            last_fetch: Mutex::new(None),
            min_refetch,
            refetch: tokio::sync::Mutex::new(()),
        });
        if let Err(e) = remote.refresh().await {
            tracing::error!("{e}; caller tokens are refused until the JWKS can be fetched");
        }
        RemoteJwks::spawn_refresher(Arc::downgrade(&remote), refresh_every);
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

    /// Whether keys are loaded (for `/readyz`).
    pub fn is_ready(&self) -> bool {
        match self {
            KeySource::File(set) => !set.is_empty(),
            KeySource::Remote(remote) => !remote.keys.load().is_empty(),
        }
    }

    pub(super) async fn find(&self, kid: Option<&str>) -> Result<Arc<VerifyKey>, AuthError> {
        let unknown = || {
            AuthError::UnknownKey(match kid {
                Some(kid) => format!("{:?}", super::shorten(kid)),
                None => "absent".to_owned(),
            })
        };
        match self {
            KeySource::File(set) => set.find(kid).ok_or_else(unknown),
            KeySource::Remote(remote) => {
                if let Some(key) = remote.keys.load().find(kid) {
                    return Ok(key);
                }
                remote.refetch_for_unknown_kid().await;
                let keys = remote.keys.load();
                if keys.is_empty() {
                    return Err(AuthError::KeysUnavailable);
                }
                keys.find(kid).ok_or_else(unknown)
            }
        }
    }
}

/// A JWKS fetched over HTTP(S).
pub struct RemoteJwks {
    url: String,
    client: reqwest::Client,
    keys: ArcSwap<KeySet>,
    generation: std::sync::atomic::AtomicU64,
    last_fetch: Mutex<Option<Instant>>,
    min_refetch: Duration,
    refetch: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for RemoteJwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteJwks").field("url", &self.url).field("keys", &self.keys.load()).finish()
    }
}

impl RemoteJwks {
    async fn fetch(&self) -> Result<KeySet, JwksError> {
        let error = |reason: String| JwksError::Fetch { url: self.url.clone(), reason };
        let mut response = self.client.get(&self.url).send().await.map_err(|e| error(e.to_string()))?;
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
        KeySet::from_json(&body, &self.url)
    }

    async fn refresh(&self) -> Result<(), JwksError> {
        if let Ok(mut last) = self.last_fetch.lock() {
            *last = Some(Instant::now());
        }
        let keys = self.fetch().await?;
        if keys.fingerprint() != self.keys.load().fingerprint() {
            tracing::info!(url = %self.url, keys = keys.len(), "the Authority's JWKS changed");
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

    fn spawn_refresher(remote: Weak<RemoteJwks>, every: Duration) {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
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

#[cfg(test)]
mod tests {
    use super::acceptable_jwks_url;

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
