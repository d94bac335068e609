//! Parsing the Authority's JWKS into verification keys, each parsed once for the one algorithm it
//! verifies. Where the document comes from is `source`'s business.

use aws_lc_rs::signature::{self as sig, ParsedPublicKey, VerificationAlgorithm};
use data_encoding::BASE64URL_NOPAD;
use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;

/// Keys beyond this many are ignored (with a warning); Authorities publish a handful.
const MAX_KEYS: usize = 64;
/// Keys ignored that are named in the log, each on its line.
const MAX_REPORTED: usize = 8;

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
        let (mut keys, mut ignored) = (Vec::new(), 0);
        for (index, entry) in entries.iter().enumerate() {
            if keys.len() == MAX_KEYS {
                tracing::warn!(%origin, "JWKS has more than {MAX_KEYS} keys; the rest are ignored");
                break;
            }
            match verify_key(entry) {
                Ok(key) => keys.push(Arc::new(key)),
                // Each named up to a few; past that one line says how many (a megabyte of `{}`
                // would otherwise log a third of a million lines at every fetch).
                Err(reason) if ignored < MAX_REPORTED => {
                    ignored += 1;
                    tracing::warn!(%origin, index, "JWKS key ignored: {reason}");
                }
                Err(_) => ignored += 1,
            }
        }
        if ignored > MAX_REPORTED {
            tracing::warn!(%origin, "{} more JWKS keys ignored", ignored - MAX_REPORTED);
        }
        if keys.is_empty() {
            return Err(invalid("it holds no usable signature keys".to_owned()));
        }
        Ok(KeySet { keys })
    }

    /// The key for `kid` and the token's `algorithm` (an Authority may publish one key under one
    /// `kid` for two algorithms, RS256 and PS256 say); else the first for `kid`, whose algorithm
    /// the caller then refuses. Where there is no telling keys apart — a token without `kid`, or a
    /// `kid` against a JWKS of one key that names none (RFC 7517 makes `kid` optional) — the one
    /// key is the only match.
    pub(super) fn find(&self, kid: Option<&str>, algorithm: Algorithm) -> Option<Arc<VerifyKey>> {
        let only = || match self.keys.as_slice() {
            [only] => Some(Arc::clone(only)),
            _ => None,
        };
        match kid {
            Some(kid) => {
                let named = || self.keys.iter().filter(move |k| k.kid.as_deref() == Some(kid));
                named()
                    .find(|k| k.algorithm == algorithm)
                    .or_else(|| named().next())
                    .cloned()
                    .or_else(|| only().filter(|key| key.kid.is_none()))
            }
            None => only(),
        }
    }

    /// What identifies the set: each key's id, algorithm and material.
    pub(super) fn fingerprint(&self) -> Vec<(Option<String>, Algorithm, String)> {
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
    let material = serde_json::to_string(&jwk.algorithm).map_err(|e| format!("key parameters: {e}"))?;
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
