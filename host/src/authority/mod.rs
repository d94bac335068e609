//! Validating the caller's Authority token, in a fixed order:
//!
//! 1. size cap;
//! 2. three base64url segments;
//! 3. a strict JSON header;
//! 4. the key, looked up by `kid` in the Authority's JWKS;
//! 5. the header's `alg` must equal **the key's** algorithm (the header never chooses it, so
//!    `none` and HS256-with-the-public-key go nowhere);
//! 6. the signature (aws-lc, with the key parsed once when the JWKS was read);
//! 7. a strict JSON payload (duplicate claims refused);
//! 8. `exp`/`nbf` with leeway, `iss`, `aud`;
//! 9. `sub`, the claims the policy reads (type-checked), and the required scope.
//!
//! The clock is a parameter, so tests control time. Failures say which check failed, never a key.

mod claims;
mod keyset;
mod source;

pub use claims::caller_from_claims;
pub use keyset::{JwksError, KeySet};
pub(crate) use source::shown_url;
pub use source::{KeySource, RemoteJwks, acceptable_jwks_url};

use crate::access::Caller;
use crate::bounded::{self, Weighed};
use crate::metrics::CacheName;
use claims::StrictObject;
use data_encoding::BASE64URL_NOPAD;
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;

/// Validates caller tokens against one key source and one set of requirements, remembering each
/// valid token until its `exp` (never longer), so a client repeating its token (a CI job pulling
/// many images) is not re-verified on every request. The cache is bounded, keyed by the whole
/// token, forgets an entry when the Authority's key set changes, and is dropped with the validator
/// on reload.
pub struct Validator {
    keys: KeySource,
    requirements: Requirements,
    cache: Option<bounded::Cache<Arc<str>, CachedValidation>>,
    /// Whether its cache counts in `registry_token_cache_requests_total{cache="caller_tokens"}`:
    /// the token endpoint's does, the admin listener's does not.
    counted: bool,
}

#[derive(Clone)]
struct CachedValidation {
    validated: Arc<Validated>,
    keys_generation: u64,
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validator")
            .field("keys", &self.keys)
            .field("requirements", &self.requirements)
            .field("cache_entries", &self.cache.as_ref().map(quick_cache::sync::Cache::len))
            .finish()
    }
}

impl Validator {
    /// A validator remembering valid tokens in up to `cache_capacity` KiB (0: none).
    pub fn new(keys: KeySource, requirements: Requirements, cache_capacity: usize) -> Validator {
        Validator { keys, requirements, cache: bounded::cache(cache_capacity), counted: true }
    }

    /// This validator's cache lookups are not callers': they stay out of the cache metric (the
    /// admin listener's, whose scrapes would otherwise read as caller traffic).
    #[must_use]
    pub fn uncounted(self) -> Validator {
        Validator { counted: false, ..self }
    }

    /// Where the keys come from.
    pub fn keys(&self) -> &KeySource {
        &self.keys
    }

    /// [`verify`], answered from the cache while the token is unexpired and the keys unchanged.
    pub async fn validate(&self, token: &str, now: u64) -> Result<Arc<Validated>, AuthError> {
        let generation = self.keys.generation();
        if let Some(cache) = &self.cache
            && let Some(hit) = cache.get(token)
        {
            let hit = hit.value;
            if now < hit.validated.expires_at && hit.keys_generation == generation {
                self.count(true);
                return Ok(hit.validated);
            }
            cache.remove(token);
        }
        if self.cache.is_some() {
            self.count(false);
        }
        let validated = Arc::new(verify(token, now, &self.keys, &self.requirements).await?);
        if let Some(cache) = &self.cache {
            let bytes = token.len() + validated.caller.claims_json.len();
            let entry = CachedValidation { validated: Arc::clone(&validated), keys_generation: generation };
            cache.insert(Arc::from(token), Weighed::new(entry, bytes));
        }
        Ok(validated)
    }

    fn count(&self, hit: bool) {
        if self.counted {
            crate::metrics::metrics().cache(CacheName::CallerTokens, hit);
        }
    }
}

/// Tokens longer than this are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// What a caller's token must satisfy.
#[derive(Clone, Debug)]
pub struct Requirements {
    /// Expected `iss`.
    pub issuer: String,
    /// `aud` must contain one of these.
    pub audiences: Vec<String>,
    /// Must appear in `scope` (space-separated) or `scp` (array).
    pub required_scope: String,
    /// Seconds of clock skew tolerated on `exp` and `nbf`.
    pub leeway_seconds: u64,
}

/// A caller whose token passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validated {
    /// Who is asking, for the policy.
    pub caller: Caller,
    /// The token's `exp`: nothing derived from it may outlive this.
    pub expires_at: u64,
    /// The token's `jti`, if it has one (the ledger records it; revocations may name it).
    pub jti: Option<String>,
}

/// Why a token was refused. The text is safe to show the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Over [`MAX_TOKEN_BYTES`].
    #[error("the token is larger than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    /// Not a JWS compact token with a JSON header and payload.
    #[error("the token is malformed: {0}")]
    Malformed(String),
    /// `alg` is one this service never accepts (`none`, HMAC, ...).
    #[error("the token's algorithm {0:?} is not accepted")]
    UnsupportedAlgorithm(String),
    /// No published key matches `kid`.
    #[error("the token is signed with a key the Authority does not publish (kid {0})")]
    UnknownKey(String),
    /// The header names another algorithm than the key's.
    #[error("the token's algorithm {header} does not match its key's {key}")]
    AlgorithmMismatch {
        /// From the token header.
        header: String,
        /// From the JWKS.
        key: String,
    },
    /// The signature does not verify.
    #[error("the token's signature does not verify")]
    BadSignature,
    /// `exp` (plus leeway) is in the past.
    #[error("the token has expired")]
    Expired,
    /// `nbf` (minus leeway) is in the future.
    #[error("the token is not valid yet (nbf is in the future)")]
    NotYetValid,
    /// `iss` is not the configured Authority.
    #[error("the token's issuer {0:?} is not the configured Authority")]
    WrongIssuer(String),
    /// No accepted audience in `aud`.
    #[error("the token's audience {0} is not accepted by this service")]
    WrongAudience(String),
    /// The required scope is missing.
    #[error("the token lacks the scope {0}")]
    MissingScope(String),
    /// A claim is absent or has the wrong JSON type.
    #[error("the token's claims are invalid: {0}")]
    Claim(String),
    /// The Authority's keys could not be fetched.
    #[error("the Authority's keys are unavailable")]
    KeysUnavailable,
}

impl AuthError {
    /// A short name of the check that failed, for the ledger and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            AuthError::TooLarge | AuthError::Malformed(_) | AuthError::Claim(_) => "malformed",
            AuthError::UnsupportedAlgorithm(_)
            | AuthError::AlgorithmMismatch { .. }
            | AuthError::BadSignature => "signature",
            AuthError::UnknownKey(_) => "unknown_key",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::WrongIssuer(_) => "issuer",
            AuthError::WrongAudience(_) => "audience",
            AuthError::MissingScope(_) => "scope",
            AuthError::KeysUnavailable => "keys_unavailable",
        }
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
}

/// Checks `token` at time `now` (Unix seconds) against `keys` and `requirements`, uncached.
pub async fn verify(
    token: &str,
    now: u64,
    keys: &KeySource,
    requirements: &Requirements,
) -> Result<Validated, AuthError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::TooLarge);
    }
    let mut segments = token.split('.');
    let (Some(header64), Some(payload64), Some(signature64), None) =
        (segments.next(), segments.next(), segments.next(), segments.next())
    else {
        return Err(malformed("expected three dot-separated segments"));
    };
    if header64.is_empty() || payload64.is_empty() || signature64.is_empty() {
        return Err(malformed("a segment is empty (unsigned tokens are not accepted)"));
    }

    let header_json = decode_segment(header64, "header")?;
    let header: Header = serde_json::from_slice::<StrictObject>(&header_json)
        .and_then(|object| serde_json::from_value(Value::Object(object.0)))
        .map_err(|e| malformed(&format!("the header is not a valid JOSE header: {e}")))?;
    if header.crit.is_some() {
        return Err(malformed("the header has critical extensions (crit), none are supported"));
    }
    let algorithm = accepted_algorithm(&header.alg)?;

    let key = keys.find(header.kid.as_deref(), algorithm).await?;
    if key.algorithm != algorithm {
        return Err(AuthError::AlgorithmMismatch {
            header: header.alg.clone(),
            key: format!("{:?}", key.algorithm),
        });
    }
    let signed = &token[..header64.len() + 1 + payload64.len()];
    let signature = BASE64URL_NOPAD.decode(signature64.as_bytes()).map_err(|_| AuthError::BadSignature)?;
    if key.key.verify_sig(signed.as_bytes(), &signature).is_err() {
        // A key that only stood in for the token's `kid` (the Authority's one key names none)
        // may be one the Authority has since replaced: fetch once, as for an unknown `kid`, and
        // check against the key that stands for it then.
        let stood_in = header.kid.is_some() && key.kid.is_none();
        let newer = match stood_in {
            true => keys.refetched(header.kid.as_deref(), algorithm).await,
            false => None,
        };
        let verified = newer
            .filter(|newer| !Arc::ptr_eq(newer, &key) && newer.algorithm == algorithm)
            .is_some_and(|newer| newer.key.verify_sig(signed.as_bytes(), &signature).is_ok());
        if !verified {
            return Err(AuthError::BadSignature);
        }
    }

    validate_payload(&decode_segment(payload64, "payload")?, now, requirements)
}

/// Steps 7 to 9 on a payload whose signature already verified: a strict JSON object, the
/// registered claims, the caller's claims, the required scope. Public for the fuzz target and
/// property tests; the service goes through [`Validator::validate`].
#[doc(hidden)]
pub fn validate_payload(
    payload: &[u8],
    now: u64,
    requirements: &Requirements,
) -> Result<Validated, AuthError> {
    let claims = serde_json::from_slice::<StrictObject>(payload)
        .map_err(|e| malformed(&format!("the payload is not a JSON object: {e}")))?
        .0;
    let expires_at = claims::check_registered_claims(&claims, now, requirements)?;
    let jti = match claims.get("jti") {
        None => None,
        Some(Value::String(jti)) if !jti.is_empty() && jti.len() <= 256 => Some(jti.clone()),
        Some(_) => {
            return Err(AuthError::Claim("jti must be a non-empty string of at most 256 bytes".into()));
        }
    };
    let caller = caller_from_claims(claims).map_err(AuthError::Claim)?;
    if !caller.scopes.contains(&requirements.required_scope) {
        return Err(AuthError::MissingScope(requirements.required_scope.clone()));
    }
    Ok(Validated { caller, expires_at, jti })
}

fn malformed(what: &str) -> AuthError {
    AuthError::Malformed(what.to_owned())
}

fn decode_segment(segment: &str, name: &str) -> Result<Vec<u8>, AuthError> {
    BASE64URL_NOPAD
        .decode(segment.as_bytes())
        .map_err(|_| malformed(&format!("the {name} is not unpadded base64url")))
}

/// Only asymmetric algorithms: a caller token verified with a shared secret would let anyone who
/// holds the secret (or mistakes a public key for one) mint callers.
fn accepted_algorithm(alg: &str) -> Result<Algorithm, AuthError> {
    let algorithm = match alg {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        other => return Err(AuthError::UnsupportedAlgorithm(shorten(other))),
    };
    Ok(algorithm)
}

/// A value from a token, safe to echo in a message: at most 64 characters, escaped by `{:?}`.
pub(crate) fn shorten(text: &str) -> String {
    match text.char_indices().nth(64) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requirements() -> Requirements {
        Requirements {
            issuer: "i".into(),
            audiences: vec!["a".into()],
            required_scope: "s".into(),
            leeway_seconds: 30,
        }
    }

    fn payload(exp: &str) -> String {
        format!(r#"{{"iss":"i","aud":"a","sub":"x","scope":"s","exp":{exp}}}"#)
    }

    /// Found by `cargo fuzz run claims`: an exp far beyond u64 saturates instead of wrapping.
    #[test]
    fn extreme_expiry_values_neither_wrap_nor_pass_when_past() {
        let far = validate_payload(payload("4e65").as_bytes(), 1_000, &requirements()).unwrap();
        assert_eq!(far.expires_at, u64::MAX);
        for past in ["-5", "0", "969.9", "-1e300"] {
            let error = validate_payload(payload(past).as_bytes(), 1_000, &requirements()).unwrap_err();
            assert_eq!(error, AuthError::Expired, "exp {past}");
        }
        let fractional = validate_payload(payload("1030.5").as_bytes(), 1_000, &requirements()).unwrap();
        assert_eq!(fractional.expires_at, 1030);
    }
}
