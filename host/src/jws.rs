//! Compact JWS over the documents this service signs besides registry tokens: policy bundles
//! (`signatures.json`) and ledger exports (`F.sig`).
//!
//! Signed with a [`Signer`] (a key file or an HSM key; RS256 or ES256), `kid` in the header, and a
//! `typ` naming the kind of document, so that a signature made for one kind is never accepted for
//! another, nor as a registry token. Verified against [`TrustedKeys`]: PEM public keys or
//! certificates, or a JWKS. The algorithm is the trusted key's, never the header's choice.
//!
//! RS256 signatures are deterministic (the same key over the same bytes gives the same
//! signature); ES256 signatures are not (each carries a fresh random nonce), though each verifies.

use crate::mint::{PublicKey, SignError, Signer, SigningAlgorithm};
use data_encoding::BASE64URL_NOPAD;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A key file larger than this is refused (a JWKS or a PEM bundle is a few KiB).
const MAX_KEY_FILE: u64 = 1024 * 1024;

/// The protected header. Unknown members (`crit` among them) are refused when verifying.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    alg: String,
    kid: String,
    typ: String,
}

/// Signs `payload` as a compact JWS: `typ` names the kind of document, `kid` the key.
pub fn sign(signer: &Signer, kid: &str, typ: &str, payload: &[u8]) -> Result<String, SignError> {
    let header =
        Header { alg: signer.algorithm().name().to_owned(), kid: kid.to_owned(), typ: typ.to_owned() };
    let header = serde_json::to_vec(&header).map_err(|_| SignError::Crypto)?;
    let mut compact = BASE64URL_NOPAD.encode(&header);
    compact.push('.');
    BASE64URL_NOPAD.encode_append(payload, &mut compact);
    let signature = signer.sign_now(compact.as_bytes())?;
    compact.push('.');
    BASE64URL_NOPAD.encode_append(&signature, &mut compact);
    Ok(compact)
}

/// The `kid` a key signs with by default: its RFC 7638 thumbprint (what a JWKS written by
/// `keys export` or published at `/.well-known/jwks.json` names it).
pub fn default_kid(public: &PublicKey) -> String {
    public.thumbprint_kid()
}

/// Why a signature was not accepted, or trusted keys could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwsError {
    /// A trusted-key file is unusable.
    #[error("{0}")]
    Keys(String),
    /// Not a compact JWS of the expected shape.
    #[error("the signature is malformed: {0}")]
    Malformed(String),
    /// A signature for another kind of document.
    #[error("the signature is for {found:?} documents, not {expected:?}")]
    WrongType {
        /// The header's `typ`.
        found: String,
        /// What was expected.
        expected: String,
    },
    /// No trusted key has the header's `kid`.
    #[error("signed by kid {kid:?}, which is not one of the trusted keys ({trusted})")]
    UnknownKey {
        /// The header's `kid`.
        kid: String,
        /// The trusted kids, for the operator.
        trusted: String,
    },
    /// The header names an algorithm the key is not for.
    #[error("the header says {alg}, but key {kid:?} is a {key_alg} key")]
    Algorithm {
        /// The header's `alg`.
        alg: String,
        /// The key.
        kid: String,
        /// The key's algorithm.
        key_alg: &'static str,
    },
    /// The signature does not verify.
    #[error(
        "the signature does not verify with key {kid:?}: the signed content was changed or another key signed it"
    )]
    BadSignature {
        /// The key.
        kid: String,
    },
}

/// A verified JWS: what was signed, and by which key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The payload.
    pub payload: Vec<u8>,
    /// The `kid` of the key that signed it.
    pub kid: String,
    /// Its algorithm.
    pub algorithm: SigningAlgorithm,
}

/// Public keys signatures are checked against, each known by one or more `kid`s.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: Vec<(Vec<String>, PublicKey)>,
}

impl TrustedKeys {
    /// Reads every file: a PEM file of public keys (`PUBLIC KEY`) and/or certificates
    /// (`CERTIFICATE`), or a JWKS (a JSON document `{"keys": [...]}`). A PEM key is known by its
    /// RFC 7638 thumbprint and its libtrust kid; a JWKS key by its `kid` (its thumbprint if it has
    /// none).
    pub fn from_files(paths: &[PathBuf]) -> Result<TrustedKeys, JwsError> {
        let mut trusted = TrustedKeys::default();
        for path in paths {
            let bytes = read_key_file(path)?;
            let origin = path.display().to_string();
            let looks_like_json = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
            if looks_like_json {
                trusted.add_jwks(&bytes, &origin)?;
            } else {
                trusted.add_pem(&bytes, &origin)?;
            }
        }
        Ok(trusted)
    }

    /// Adds the keys and certificates of a PEM document.
    pub fn add_pem(&mut self, bytes: &[u8], origin: &str) -> Result<(), JwsError> {
        let unusable = |reason: String| JwsError::Keys(format!("{origin}: {reason}"));
        let blocks = pem::parse_many(bytes).map_err(|e| unusable(format!("not PEM: {e}")))?;
        // Trust is given by key, never by chain: were a certificate file a chain (as a signing
        // key's `cert_file` may be), its CA's key would sign bundles too.
        let certificates = blocks.iter().filter(|block| block.tag() == "CERTIFICATE").count();
        if certificates > 1 {
            return Err(unusable(format!(
                "holds {certificates} certificates; give each signer's own certificate (not its chain) \
                 in a file of its own"
            )));
        }
        let before = self.keys.len();
        for block in blocks {
            let public = match block.tag() {
                "PUBLIC KEY" => PublicKey::from_spki_der(block.contents()).map_err(unusable)?,
                "CERTIFICATE" => {
                    let (_, certificate) = x509_parser::parse_x509_certificate(block.contents())
                        .map_err(|e| unusable(format!("not an X.509 certificate: {e}")))?;
                    PublicKey::from_spki(certificate.public_key()).map_err(unusable)?
                }
                tag if tag.contains("PRIVATE KEY") => {
                    return Err(unusable(
                        "holds a private key; trust is given by the public key or the certificate".into(),
                    ));
                }
                other => {
                    return Err(unusable(format!(
                        "a {other} block is neither a public key nor a certificate"
                    )));
                }
            };
            self.push(vec![public.thumbprint_kid(), public.libtrust_kid()], public);
        }
        if self.keys.len() == before {
            return Err(unusable("no PUBLIC KEY or CERTIFICATE block".into()));
        }
        Ok(())
    }

    /// Adds the RSA and P-256 keys of a JWKS; other keys are ignored (with a warning).
    pub fn add_jwks(&mut self, bytes: &[u8], origin: &str) -> Result<(), JwsError> {
        let unusable = |reason: String| JwsError::Keys(format!("{origin}: {reason}"));
        #[derive(Deserialize)]
        struct Set {
            keys: Vec<serde_json::Value>,
        }
        let set: Set = serde_json::from_slice(bytes).map_err(|e| unusable(format!("not a JWKS: {e}")))?;
        let before = self.keys.len();
        for (index, entry) in set.keys.into_iter().enumerate() {
            match jwk_public(entry) {
                Ok((kid, public)) => {
                    let kid = kid.unwrap_or_else(|| public.thumbprint_kid());
                    self.push(vec![kid], public);
                }
                Err(reason) => tracing::warn!(%origin, index, "JWKS key ignored: {reason}"),
            }
        }
        if self.keys.len() == before {
            return Err(unusable("it holds no RSA or P-256 key".into()));
        }
        Ok(())
    }

    /// Trusts `public` under `kids`.
    pub fn push(&mut self, kids: Vec<String>, public: PublicKey) {
        self.keys.push((kids, public));
    }

    /// How many keys are trusted.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn find(&self, kid: &str) -> Option<&PublicKey> {
        self.keys.iter().find(|(kids, _)| kids.iter().any(|k| k == kid)).map(|(_, public)| public)
    }

    fn describe(&self) -> String {
        let kids: Vec<&str> =
            self.keys.iter().filter_map(|(kids, _)| kids.first().map(String::as_str)).collect();
        match kids.len() {
            0 => "none".to_owned(),
            _ => kids.join(", "),
        }
    }

    /// Checks a compact JWS made for `typ` documents: the header, the key by `kid`, the algorithm
    /// (the key's), the signature. Returns what was signed.
    pub fn verify(&self, compact: &str, typ: &str) -> Result<Verified, JwsError> {
        let malformed = |reason: &str| JwsError::Malformed(reason.to_owned());
        let mut parts = compact.trim().split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("not three dot-separated parts"));
        };
        let decode = |part: &str, what: &str| {
            BASE64URL_NOPAD
                .decode(part.as_bytes())
                .map_err(|_| JwsError::Malformed(format!("its {what} is not base64url")))
        };
        let header: Header = serde_json::from_slice(&decode(header_b64, "header")?)
            .map_err(|e| JwsError::Malformed(format!("its header: {e}")))?;
        if header.typ != typ {
            return Err(JwsError::WrongType { found: header.typ, expected: typ.to_owned() });
        }
        let Some(public) = self.find(&header.kid) else {
            return Err(JwsError::UnknownKey { kid: header.kid, trusted: self.describe() });
        };
        let algorithm = public.algorithm();
        if header.alg != algorithm.name() {
            return Err(JwsError::Algorithm { alg: header.alg, kid: header.kid, key_alg: algorithm.name() });
        }
        let verification: &'static dyn aws_lc_rs::signature::VerificationAlgorithm = match algorithm {
            SigningAlgorithm::RS256 => &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
            SigningAlgorithm::ES256 => &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
        };
        let signature = decode(signature_b64, "signature")?;
        let signed = &compact.trim()[..header_b64.len() + 1 + payload_b64.len()];
        crate::mint::verify_with_spki(verification, public.spki_der(), signed.as_bytes(), &signature)
            .map_err(|()| JwsError::BadSignature { kid: header.kid.clone() })?;
        Ok(Verified { payload: decode(payload_b64, "payload")?, kid: header.kid, algorithm })
    }
}

fn read_key_file(path: &Path) -> Result<Vec<u8>, JwsError> {
    let unreadable = |e: std::io::Error| JwsError::Keys(format!("cannot read {}: {e}", path.display()));
    let length = std::fs::metadata(path).map_err(unreadable)?.len();
    if length > MAX_KEY_FILE {
        return Err(JwsError::Keys(format!("{} is larger than {MAX_KEY_FILE} bytes", path.display())));
    }
    std::fs::read(path).map_err(unreadable)
}

/// A JWK's `kid` and public key: RSA (`n`, `e`) or EC on P-256 (`x`, `y`).
fn jwk_public(entry: serde_json::Value) -> Result<(Option<String>, PublicKey), String> {
    let jwk: Jwk = serde_json::from_value(entry).map_err(|e| format!("not a JWK: {e}"))?;
    let decode = |field: &str, value: &str| {
        BASE64URL_NOPAD.decode(value.as_bytes()).map_err(|_| format!("{field} is not unpadded base64url"))
    };
    let spki = match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => {
            PublicKey::rsa_spki_der(&decode("n", &rsa.n)?, &decode("e", &rsa.e)?)
        }
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            let mut point = vec![0x04];
            point.extend(decode("x", &ec.x)?);
            point.extend(decode("y", &ec.y)?);
            PublicKey::p256_spki_der(&point)
        }
        _ => return Err("neither an RSA nor a P-256 key".to_owned()),
    };
    let public = PublicKey::from_spki_der(&spki)?;
    Ok((jwk.common.key_id.clone(), public))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mint::SigningKey;

    fn key(algorithm: SigningAlgorithm) -> SigningKey {
        let dir = tempfile::tempdir().unwrap();
        let generated = crate::mint::keygen::generate(dir.path(), algorithm, 2048).unwrap();
        SigningKey::from_file(&generated.key_file, algorithm).unwrap()
    }

    fn trusted(key: &SigningKey) -> TrustedKeys {
        let mut trusted = TrustedKeys::default();
        trusted.push(vec![key.thumbprint_kid()], key.public().clone());
        trusted
    }

    /// A chain (leaf, then its CA) given as a signer's certificate: its CA is not trusted to sign.
    #[test]
    fn a_file_of_several_certificates_is_refused_not_each_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let generate = |name: &str| {
            let (key, cert) =
                (dir.path().join(format!("{name}-key.pem")), dir.path().join(format!("{name}.pem")));
            crate::mint::keygen::generate_as(&key, &cert, SigningAlgorithm::ES256, 2048).unwrap()
        };
        let (leaf, ca) = (generate("leaf"), generate("ca"));
        let chain = [std::fs::read(&leaf.cert_file).unwrap(), std::fs::read(&ca.cert_file).unwrap()].concat();
        let error = TrustedKeys::default().add_pem(&chain, "chain.pem").unwrap_err().to_string();
        assert!(error.contains("chain.pem: holds 2 certificates"), "{error}");
        let mut one = TrustedKeys::default();
        one.add_pem(&std::fs::read(&leaf.cert_file).unwrap(), "leaf.pem").unwrap();
        assert_eq!(one.keys.len(), 1);
    }

    #[test]
    fn rs256_is_deterministic_es256_is_not_and_both_verify() {
        for algorithm in [SigningAlgorithm::RS256, SigningAlgorithm::ES256] {
            let key = key(algorithm);
            let kid = key.thumbprint_kid();
            let signer = Signer::File(key);
            let first = sign(&signer, &kid, "test", b"payload").unwrap();
            let second = sign(&signer, &kid, "test", b"payload").unwrap();
            assert_eq!(first == second, algorithm == SigningAlgorithm::RS256, "{algorithm:?}");
            let Signer::File(key) = &signer else { unreachable!() };
            let verified = trusted(key).verify(&first, "test").unwrap();
            assert_eq!(verified.payload, b"payload");
            assert_eq!(verified.kid, kid);
        }
    }

    #[test]
    fn a_changed_payload_another_type_or_an_unknown_kid_is_refused() {
        let key = key(SigningAlgorithm::ES256);
        let kid = key.thumbprint_kid();
        let trusted = trusted(&key);
        let signer = Signer::File(key);
        let compact = sign(&signer, &kid, "test", b"payload").unwrap();
        let parts: Vec<&str> = compact.split('.').collect();
        let forged = format!("{}.{}.{}", parts[0], BASE64URL_NOPAD.encode(b"payloaD"), parts[2]);
        assert!(matches!(trusted.verify(&forged, "test"), Err(JwsError::BadSignature { .. })));
        assert!(matches!(trusted.verify(&compact, "other"), Err(JwsError::WrongType { .. })));
        let other = sign(&signer, "someone-else", "test", b"payload").unwrap();
        let error = trusted.verify(&other, "test").unwrap_err();
        assert!(error.to_string().contains("signed by kid \"someone-else\""), "{error}");
        // The algorithm is the key's: a header claiming RS256 for a P-256 key is refused.
        let header =
            BASE64URL_NOPAD.encode(format!(r#"{{"alg":"RS256","kid":"{kid}","typ":"test"}}"#).as_bytes());
        let relabelled = format!("{header}.{}.{}", parts[1], parts[2]);
        assert!(matches!(trusted.verify(&relabelled, "test"), Err(JwsError::Algorithm { .. })));
    }
}
