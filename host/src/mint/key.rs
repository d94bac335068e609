//! The signing key: loaded once, held parsed in memory, never printed.

use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeyPair as RsaKeyPair;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair as _};
use data_encoding::{BASE32_NOPAD, BASE64URL_NOPAD};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
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
    spki_der: Vec<u8>,
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
            Pair::Rsa(rsa) => {
                if rsa.public_modulus_len() < 256 {
                    return Err(unusable(&format!(
                        "RSA keys must have at least 2048 bits, this one has {}",
                        rsa.public_modulus_len() * 8
                    )));
                }
                spki(rsa.public_key().as_der()).map_err(|r| unusable(&r))?
            }
            Pair::Ec(ec) => spki(ec.public_key().as_der()).map_err(|r| unusable(&r))?,
        };
        Ok(SigningKey { algorithm, pair, spki_der, rng: SystemRandom::new() })
    }

    /// The algorithm this key signs with.
    pub fn algorithm(&self) -> SigningAlgorithm {
        self.algorithm
    }

    /// The DER SubjectPublicKeyInfo of the public key.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// distribution 2.8's `kid` (libtrust): the first 30 bytes of SHA-256 over the DER
    /// SubjectPublicKeyInfo, base32 without padding, in groups of four joined by `:`.
    pub fn libtrust_kid(&self) -> String {
        let digest = Sha256::digest(&self.spki_der);
        let encoded = BASE32_NOPAD.encode(&digest[..30]);
        let groups: Vec<&str> = (0..encoded.len()).step_by(4).map(|i| &encoded[i..i + 4]).collect();
        groups.join(":")
    }

    /// The public key's JWK members (`kty` and its parameters), sorted by name as RFC 7638's
    /// canonical form wants them.
    fn public_members(&self) -> Vec<(&'static str, String)> {
        match &self.pair {
            Pair::Rsa(rsa) => {
                let public = rsa.public_key();
                vec![
                    ("e", BASE64URL_NOPAD.encode(public.exponent().big_endian_without_leading_zero())),
                    ("kty", "RSA".to_owned()),
                    ("n", BASE64URL_NOPAD.encode(public.modulus().big_endian_without_leading_zero())),
                ]
            }
            Pair::Ec(ec) => {
                // The uncompressed point: 0x04, then x and y of 32 bytes each.
                let point = ec.public_key().as_ref();
                vec![
                    ("crv", "P-256".to_owned()),
                    ("kty", "EC".to_owned()),
                    ("x", BASE64URL_NOPAD.encode(&point[1..33])),
                    ("y", BASE64URL_NOPAD.encode(&point[33..65])),
                ]
            }
        }
    }

    /// The public key as a JWK: its members plus `use: sig`, `alg` and `kid` (the thumbprint).
    pub fn public_jwk(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut jwk: serde_json::Map<String, serde_json::Value> =
            self.public_members().into_iter().map(|(name, value)| (name.to_owned(), value.into())).collect();
        jwk.insert("use".into(), "sig".into());
        jwk.insert("alg".into(), self.algorithm.name().into());
        jwk.insert("kid".into(), self.thumbprint_kid().into());
        jwk
    }

    /// The RFC 7638 JWK thumbprint (distribution v3 matches `kid` against it).
    pub fn thumbprint_kid(&self) -> String {
        let members: Vec<String> =
            self.public_members().iter().map(|(name, value)| format!(r#""{name}":"{value}""#)).collect();
        let canonical = format!("{{{}}}", members.join(","));
        BASE64URL_NOPAD.encode(&Sha256::digest(canonical.as_bytes()))
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
