//! `registry-token keygen`: a signing key (mode 0600, never overwritten) and a self-signed
//! certificate for the registry's `auth.token.rootcertbundle`.

use super::pkcs11::{self, HsmKey, HsmLocation};
use super::{SigningAlgorithm, SigningKey};
use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// File names `keygen` writes in its output directory.
pub const KEY_FILE: &str = "signing-key.pem";
/// The certificate for the registry's `rootcertbundle`.
pub const CERT_FILE: &str = "signing-cert.pem";

/// Why keys could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum KeygenError {
    /// A key or certificate is already there.
    #[error("{0} already exists; keygen never overwrites a key (move it away first)")]
    Exists(PathBuf),
    /// Writing failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The crypto library refused.
    #[error("cannot generate the key: {0}")]
    Generate(String),
}

/// What `keygen` wrote.
#[derive(Debug)]
pub struct Generated {
    /// The private key file (mode 0600).
    pub key_file: PathBuf,
    /// The self-signed certificate.
    pub cert_file: PathBuf,
    /// distribution 2.8's `kid`.
    pub libtrust_kid: String,
    /// RFC 7638 thumbprint `kid`.
    pub thumbprint_kid: String,
}

/// Generates a key for `algorithm` (`bits` is the RSA size: 2048, 3072 or 4096) and a
/// self-signed certificate valid for ten years, into `dir` as `signing-key.pem` and
/// `signing-cert.pem`.
pub fn generate(dir: &Path, algorithm: SigningAlgorithm, bits: u32) -> Result<Generated, KeygenError> {
    generate_as(&dir.join(KEY_FILE), &dir.join(CERT_FILE), algorithm, bits)
}

/// [`generate`] into the files given.
pub fn generate_as(
    key_file: &Path,
    cert_file: &Path,
    algorithm: SigningAlgorithm,
    bits: u32,
) -> Result<Generated, KeygenError> {
    let (key_file, cert_file) = (key_file.to_owned(), cert_file.to_owned());
    let dir = key_file.parent().unwrap_or(Path::new("."));
    for path in [&key_file, &cert_file] {
        if path.exists() {
            return Err(KeygenError::Exists(path.clone()));
        }
    }
    std::fs::create_dir_all(dir).map_err(|source| KeygenError::Write { path: dir.to_owned(), source })?;

    let generate_error = |e: &dyn std::fmt::Display| KeygenError::Generate(e.to_string());
    let (pkcs8, sign_algorithm) = match algorithm {
        SigningAlgorithm::RS256 => {
            let size = match bits {
                2048 => KeySize::Rsa2048,
                3072 => KeySize::Rsa3072,
                4096 => KeySize::Rsa4096,
                other => {
                    return Err(KeygenError::Generate(format!("{other} bits: use 2048, 3072 or 4096")));
                }
            };
            let pair = RsaKeyPair::generate(size).map_err(|e| generate_error(&e))?;
            let der: Pkcs8V1Der<'static> = pair.as_der().map_err(|e| generate_error(&e))?;
            (Zeroizing::new(der.as_ref().to_vec()), &rcgen::PKCS_RSA_SHA256)
        }
        SigningAlgorithm::ES256 => {
            let pair =
                EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).map_err(|e| generate_error(&e))?;
            let der = pair.to_pkcs8v1().map_err(|e| generate_error(&e))?;
            (Zeroizing::new(der.as_ref().to_vec()), &rcgen::PKCS_ECDSA_P256_SHA256)
        }
    };
    let key_pem = super::secret_pem::encode("PRIVATE KEY", &pkcs8);

    // rcgen keeps a copy of the key: wiped when it is dropped, like every other buffer of it.
    let rcgen_key = Zeroizing::new(
        rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&(&pkcs8[..]).into(), sign_algorithm)
            .map_err(|e| generate_error(&e))?,
    );
    let cert = self_signed(&*rcgen_key)?;

    write_new(&key_file, key_pem.as_bytes(), 0o600)?;
    write_new(&cert_file, cert.as_bytes(), 0o644)?;

    let key = SigningKey::from_pem(key_pem.as_bytes(), algorithm, "the generated key")
        .map_err(|e| generate_error(&e))?;
    Ok(Generated {
        key_file,
        cert_file,
        libtrust_kid: key.libtrust_kid(),
        thumbprint_kid: key.thumbprint_kid(),
    })
}

/// A self-signed certificate (PEM) for `key`, valid from an hour ago for ten years: what the
/// registry's `rootcertbundle` holds.
pub fn self_signed(key: &impl rcgen::SigningKey) -> Result<String, KeygenError> {
    let generate_error = |e: rcgen::Error| KeygenError::Generate(e.to_string());
    let mut params =
        rcgen::CertificateParams::new(vec!["registry-token".to_owned()]).map_err(generate_error)?;
    params.distinguished_name.push(rcgen::DnType::CommonName, "registry-token signing key");
    let now = std::time::SystemTime::now();
    params.not_before = (now - std::time::Duration::from_secs(3600)).into();
    params.not_after = (now + std::time::Duration::from_secs(10 * 365 * 24 * 3600)).into();
    Ok(params.self_signed(key).map_err(generate_error)?.pem())
}

/// Creates `path` with `mode`, failing if it exists (no race between the check and the write).
pub fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), KeygenError> {
    let mut file =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(|source| {
            match source.kind() {
                std::io::ErrorKind::AlreadyExists => KeygenError::Exists(path.to_owned()),
                _ => KeygenError::Write { path: path.to_owned(), source },
            }
        })?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|source| KeygenError::Write { path: path.to_owned(), source })
}

/// What `keys new --pkcs11` made.
#[derive(Debug)]
pub struct GeneratedInHsm {
    /// The certificate for the key (its private key stays in the token).
    pub cert_file: PathBuf,
    /// distribution 2.8's `kid`.
    pub libtrust_kid: String,
    /// RFC 7638 thumbprint `kid`.
    pub thumbprint_kid: String,
}

/// Generates a key pair inside the HSM token `location` names, and a self-signed certificate for
/// it (signed by the token) into `cert_file`.
pub fn generate_in_hsm(
    location: &HsmLocation,
    algorithm: SigningAlgorithm,
    bits: u32,
    cert_file: &Path,
) -> Result<GeneratedInHsm, KeygenError> {
    if cert_file.exists() {
        return Err(KeygenError::Exists(cert_file.to_owned()));
    }
    if algorithm == SigningAlgorithm::RS256 && ![2048, 3072, 4096].contains(&bits) {
        return Err(KeygenError::Generate(format!("{bits} bits: use 2048, 3072 or 4096")));
    }
    let key =
        pkcs11::generate(location, algorithm, bits).map_err(|e| KeygenError::Generate(e.to_string()))?;
    let signer = HsmCertSigner::new(&key)?;
    let cert = self_signed(&signer)?;
    if let Some(dir) = cert_file.parent() {
        std::fs::create_dir_all(dir).map_err(|source| KeygenError::Write { path: dir.to_owned(), source })?;
    }
    write_new(cert_file, cert.as_bytes(), 0o644)?;
    Ok(GeneratedInHsm {
        cert_file: cert_file.to_owned(),
        libtrust_kid: key.public().libtrust_kid(),
        thumbprint_kid: key.public().thumbprint_kid(),
    })
}

/// rcgen's view of an HSM key: the certificate is signed inside the token.
struct HsmCertSigner<'a> {
    key: &'a HsmKey,
    /// The SubjectPublicKeyInfo's BIT STRING: what rcgen calls the key's DER.
    subject_public_key: Vec<u8>,
}

impl<'a> HsmCertSigner<'a> {
    fn new(key: &'a HsmKey) -> Result<HsmCertSigner<'a>, KeygenError> {
        use x509_parser::prelude::FromDer;
        let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(key.public().spki_der())
            .map_err(|e| KeygenError::Generate(e.to_string()))?;
        Ok(HsmCertSigner { key, subject_public_key: spki.subject_public_key.data.to_vec() })
    }
}

impl rcgen::PublicKeyData for HsmCertSigner<'_> {
    fn der_bytes(&self) -> &[u8] {
        &self.subject_public_key
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        match self.key.algorithm() {
            SigningAlgorithm::RS256 => &rcgen::PKCS_RSA_SHA256,
            SigningAlgorithm::ES256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        }
    }
}

impl rcgen::SigningKey for HsmCertSigner<'_> {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let signature = self.key.sign(message).map_err(|_| rcgen::Error::RemoteKeyError)?;
        Ok(match self.key.algorithm() {
            SigningAlgorithm::RS256 => signature,
            // JWS's r‖s; X.509 wants the DER Ecdsa-Sig-Value.
            SigningAlgorithm::ES256 => {
                let (r, s) = signature.split_at(signature.len() / 2);
                yasna::construct_der(|writer| {
                    writer.write_sequence(|writer| {
                        writer.next().write_bigint_bytes(r, true);
                        writer.next().write_bigint_bytes(s, true);
                    });
                })
            }
        })
    }
}
