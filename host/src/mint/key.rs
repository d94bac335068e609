//! The signing key: loaded once, held parsed in memory, never printed.

use super::PublicKey;
use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeyPair as RsaKeyPair;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair as _};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;
use zeroize::Zeroizing;

/// The JWS algorithm of minted tokens. Registry 2.8 accepts RS256/384/512 for RSA keys and
/// ES256/384/512 for EC keys (not PS256, not EdDSA).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SigningAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256, RSA ≥ 2048 bits.
    #[default]
    RS256,
    /// ECDSA on P-256 with SHA-256: a tenth of RS256's signing cost.
    ES256,
}

impl SigningAlgorithm {
    /// The JOSE name.
    pub fn name(self) -> &'static str {
        match self {
            SigningAlgorithm::RS256 => "RS256",
            SigningAlgorithm::ES256 => "ES256",
        }
    }
}

/// Why a key could not be loaded. Never contains key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("cannot read the signing key {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Group or others may read the key.
    #[error(
        "the signing key {path} is readable by group or others (mode {mode:o}); \
         a private key must be readable by its owner only: run `chmod 600 {path}`"
    )]
    Exposed {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// Not a private key this service can use.
    #[error("the signing key {origin} is unusable: {reason}")]
    Unusable {
        /// File name or description.
        origin: String,
        /// Why.
        reason: String,
    },
}

enum Pair {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

/// A private signing key, parsed once. Key material lives inside aws-lc (which clears it when
/// freed); the PEM it came from is zeroized as soon as it is parsed.
pub struct SigningKey {
    algorithm: SigningAlgorithm,
    pair: Pair,
    public: PublicKey,
    rng: SystemRandom,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("algorithm", &self.algorithm)
            .field("kid", &self.libtrust_kid())
            .field("private", &"<redacted>")
            .finish()
    }
}

impl SigningKey {
    /// Reads a PEM key file: PKCS#8 (`PRIVATE KEY`), PKCS#1 (`RSA PRIVATE KEY`) or SEC1
    /// (`EC PRIVATE KEY`). Refuses a file that group or others can read.
    pub fn from_file(path: &Path, algorithm: SigningAlgorithm) -> Result<SigningKey, KeyError> {
        let shown = path.display().to_string();
        let metadata =
            std::fs::metadata(path).map_err(|source| KeyError::Read { path: shown.clone(), source })?;
        let mode = std::os::unix::fs::PermissionsExt::mode(&metadata.permissions()) & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Exposed { path: shown, mode });
        }
        let pem = Zeroizing::new(
            std::fs::read(path).map_err(|source| KeyError::Read { path: shown.clone(), source })?,
        );
        SigningKey::from_pem(&pem, algorithm, &shown)
    }

    /// [`SigningKey::from_file`] for whichever algorithm the key is for: an RSA key signs RS256,
    /// a P-256 key ES256.
    pub fn from_file_any(path: &Path) -> Result<SigningKey, KeyError> {
        match SigningKey::from_file(path, SigningAlgorithm::RS256) {
            Err(KeyError::Unusable { reason: rsa, .. }) => {
                SigningKey::from_file(path, SigningAlgorithm::ES256).map_err(|error| match error {
                    KeyError::Unusable { origin, reason } => KeyError::Unusable {
                        origin,
                        reason: format!("neither an RSA key ({rsa}) nor a P-256 key ({reason})"),
                    },
                    other => other,
                })
            }
            other => other,
        }
    }

    /// Parses a PEM private key for `algorithm`.
    pub fn from_pem(pem: &[u8], algorithm: SigningAlgorithm, origin: &str) -> Result<SigningKey, KeyError> {
        let unusable =
            |reason: &str| KeyError::Unusable { origin: origin.to_owned(), reason: reason.to_owned() };
        let blocks = super::secret_pem::decode(pem).map_err(unusable)?;
        let found = blocks.into_iter().find(|block| {
            matches!(block.label.as_str(), "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY")
        });
        let Some(super::secret_pem::Block { label: tag, der }) = found else {
            return Err(unusable("no PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block"));
        };
        let pair = match (algorithm, tag.as_str()) {
            (SigningAlgorithm::RS256, "PRIVATE KEY") => Pair::Rsa(
                RsaKeyPair::from_pkcs8(&der).map_err(|e| unusable(&format!("not an RSA key: {e}")))?,
            ),
            (SigningAlgorithm::RS256, "RSA PRIVATE KEY") => {
                Pair::Rsa(RsaKeyPair::from_der(&der).map_err(|e| unusable(&format!("not an RSA key: {e}")))?)
            }
            (SigningAlgorithm::ES256, "PRIVATE KEY") => Pair::Ec(
                EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &der)
                    .map_err(|e| unusable(&format!("not a P-256 key: {e}")))?,
            ),
            (SigningAlgorithm::ES256, "EC PRIVATE KEY") => Pair::Ec(
                EcdsaKeyPair::from_private_key_der(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &der)
                    .map_err(|e| unusable(&format!("not a P-256 key: {e}")))?,
            ),
            (algorithm, tag) => {
                return Err(unusable(&format!("a {tag} block cannot sign {}", algorithm.name())));
            }
        };
        let spki_der = match &pair {
            Pair::Rsa(rsa) => spki(rsa.public_key().as_der()),
            Pair::Ec(ec) => spki(ec.public_key().as_der()),
        }
        .map_err(|r| unusable(&r))?;
        let public = PublicKey::from_spki_der(&spki_der).map_err(|r| unusable(&r))?;
        Ok(SigningKey { algorithm, pair, public, rng: SystemRandom::new() })
    }

    /// The algorithm this key signs with.
    pub fn algorithm(&self) -> SigningAlgorithm {
        self.algorithm
    }

    /// The public half.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// The DER SubjectPublicKeyInfo of the public key.
    pub fn spki_der(&self) -> &[u8] {
        self.public.spki_der()
    }

    /// distribution 2.8's `kid` (libtrust).
    pub fn libtrust_kid(&self) -> String {
        self.public.libtrust_kid()
    }

    /// The public key as a JWK, `kid` its RFC 7638 thumbprint.
    pub fn public_jwk(&self) -> serde_json::Map<String, serde_json::Value> {
        self.public.jwk()
    }

    /// The RFC 7638 JWK thumbprint.
    pub fn thumbprint_kid(&self) -> String {
        self.public.thumbprint_kid()
    }

    /// Signs `message` (the JWS signing input).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, aws_lc_rs::error::Unspecified> {
        match &self.pair {
            Pair::Rsa(rsa) => {
                let mut signature = vec![0; rsa.public_modulus_len()];
                rsa.sign(&signature::RSA_PKCS1_SHA256, &self.rng, message, &mut signature)?;
                Ok(signature)
            }
            Pair::Ec(ec) => Ok(ec.sign(&self.rng, message)?.as_ref().to_vec()),
        }
    }
}

fn spki(der: Result<PublicKeyX509Der<'static>, aws_lc_rs::error::Unspecified>) -> Result<Vec<u8>, String> {
    der.map(|d| d.as_ref().to_vec()).map_err(|_| "cannot encode its public key".to_owned())
}
