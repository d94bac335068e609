//! A public signing key, whatever holds its private half (a key file, an HSM, nobody any more):
//! its DER SubjectPublicKeyInfo, both `kid` forms and its JWK. Built from the DER, so a key read
//! from a file, a certificate or a PKCS#11 token is described by the same code.

use super::SigningAlgorithm;
use data_encoding::{BASE32_NOPAD, BASE64URL_NOPAD};
use sha2::{Digest, Sha256};
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_PKCS1_RSAENCRYPTION};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey as Parsed;
use x509_parser::x509::SubjectPublicKeyInfo;

/// A public key registries can verify tokens with: RSA (≥ 2048 bits) or P-256.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    algorithm: SigningAlgorithm,
    spki_der: Vec<u8>,
    /// The JWK members (`kty` and its parameters) sorted by name, as RFC 7638 wants them.
    members: Vec<(&'static str, String)>,
}

impl PublicKey {
    /// Parses a DER SubjectPublicKeyInfo.
    pub fn from_spki_der(der: &[u8]) -> Result<PublicKey, String> {
        let (rest, spki) =
            SubjectPublicKeyInfo::from_der(der).map_err(|e| format!("not a SubjectPublicKeyInfo: {e}"))?;
        if !rest.is_empty() {
            return Err("trailing bytes after the SubjectPublicKeyInfo".into());
        }
        PublicKey::from_spki(&spki)
    }

    /// Describes a parsed SubjectPublicKeyInfo.
    pub fn from_spki(spki: &SubjectPublicKeyInfo<'_>) -> Result<PublicKey, String> {
        let algorithm = &spki.algorithm.algorithm;
        let parsed = spki.parsed().map_err(|e| format!("an unreadable public key: {e}"))?;
        let (algorithm, members) = match parsed {
            Parsed::RSA(rsa) if *algorithm == OID_PKCS1_RSAENCRYPTION => {
                let modulus = strip_zeros(rsa.modulus);
                if modulus.len() < 256 {
                    return Err(format!(
                        "RSA keys must have at least 2048 bits, this one has {}",
                        modulus.len() * 8
                    ));
                }
                (
                    SigningAlgorithm::RS256,
                    vec![
                        ("e", BASE64URL_NOPAD.encode(strip_zeros(rsa.exponent))),
                        ("kty", "RSA".to_owned()),
                        ("n", BASE64URL_NOPAD.encode(modulus)),
                    ],
                )
            }
            Parsed::EC(point) if *algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY => {
                let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
                if curve != Some(OID_EC_P256) {
                    return Err("an EC key that is not on P-256 (registries accept ES256 keys)".into());
                }
                // The uncompressed point: 0x04, then x and y of 32 bytes each.
                let point = point.data();
                if point.len() != 65 || point[0] != 4 {
                    return Err("a P-256 point that is not in uncompressed form".into());
                }
                (
                    SigningAlgorithm::ES256,
                    vec![
                        ("crv", "P-256".to_owned()),
                        ("kty", "EC".to_owned()),
                        ("x", BASE64URL_NOPAD.encode(&point[1..33])),
                        ("y", BASE64URL_NOPAD.encode(&point[33..65])),
                    ],
                )
            }
            _ => return Err("neither an RSA nor a P-256 key".into()),
        };
        Ok(PublicKey { algorithm, spki_der: spki.raw.to_vec(), members })
    }

    /// The SubjectPublicKeyInfo of an RSA key given by its modulus and public exponent (big-endian),
    /// as a PKCS#11 token reports them.
    pub fn rsa_spki_der(modulus: &[u8], exponent: &[u8]) -> Vec<u8> {
        let key = yasna::construct_der(|writer| {
            writer.write_sequence(|writer| {
                writer.next().write_bigint_bytes(modulus, true);
                writer.next().write_bigint_bytes(exponent, true);
            });
        });
        let rsa = yasna::models::ObjectIdentifier::from_slice(&[1, 2, 840, 113549, 1, 1, 1]);
        yasna::construct_der(|writer| {
            writer.write_sequence(|writer| {
                writer.next().write_sequence(|writer| {
                    writer.next().write_oid(&rsa);
                    writer.next().write_null();
                });
                writer.next().write_bitvec_bytes(&key, key.len() * 8);
            });
        })
    }

    /// The SubjectPublicKeyInfo of a P-256 key given by its uncompressed point.
    pub fn p256_spki_der(point: &[u8]) -> Vec<u8> {
        let ec = yasna::models::ObjectIdentifier::from_slice(&[1, 2, 840, 10045, 2, 1]);
        let p256 = yasna::models::ObjectIdentifier::from_slice(&[1, 2, 840, 10045, 3, 1, 7]);
        yasna::construct_der(|writer| {
            writer.write_sequence(|writer| {
                writer.next().write_sequence(|writer| {
                    writer.next().write_oid(&ec);
                    writer.next().write_oid(&p256);
                });
                writer.next().write_bitvec_bytes(point, point.len() * 8);
            });
        })
    }

    /// The algorithm tokens signed by this key use.
    pub fn algorithm(&self) -> SigningAlgorithm {
        self.algorithm
    }

    /// The DER SubjectPublicKeyInfo.
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

    /// The RFC 7638 JWK thumbprint (distribution v3 matches `kid` against it).
    pub fn thumbprint_kid(&self) -> String {
        let members: Vec<String> =
            self.members.iter().map(|(name, value)| format!(r#""{name}":"{value}""#)).collect();
        let canonical = format!("{{{}}}", members.join(","));
        BASE64URL_NOPAD.encode(&Sha256::digest(canonical.as_bytes()))
    }

    /// The key as a JWK: its members plus `use: sig`, `alg` and `kid` (the thumbprint).
    pub fn jwk(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut jwk: serde_json::Map<String, serde_json::Value> =
            self.members.iter().map(|(name, value)| ((*name).to_owned(), value.clone().into())).collect();
        jwk.insert("use".into(), "sig".into());
        jwk.insert("alg".into(), self.algorithm.name().into());
        jwk.insert("kid".into(), self.thumbprint_kid().into());
        jwk
    }
}

fn strip_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}
