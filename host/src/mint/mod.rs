//! Minting registry tokens: the JWS header (computed once), the claims, the signature.
//!
//! The token is what distribution 2.8.2 verifies: header `typ: JWT`, `alg`, `kid` (libtrust by
//! default, or the RFC 7638 thumbprint) and `x5c` when a certificate is configured; claims `iss`,
//! `sub`, `aud` (a JSON string), integer `exp`/`nbf`/`iat`, a random `jti` and `access`.

mod key;
pub mod keygen;
pub(crate) mod secret_pem;

pub use key::{KeyError, SigningAlgorithm, SigningKey};

use crate::access::Resource;
use data_encoding::{BASE64, BASE64URL_NOPAD};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Which `kid` minted tokens carry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KidFormat {
    /// distribution 2.8's libtrust key id.
    #[default]
    Libtrust,
    /// RFC 7638 JWK thumbprint (distribution v3).
    Thumbprint,
}

/// Why a certificate could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The file could not be read.
    #[error("cannot read the certificate {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Not a certificate chain for the signing key.
    #[error("the certificate {path} is unusable: {reason}")]
    Unusable {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Reads a PEM certificate chain (leaf first) and checks that the leaf certifies `key`.
pub fn load_chain(path: &Path, key: &SigningKey) -> Result<Vec<Vec<u8>>, CertError> {
    let shown = path.display().to_string();
    let text = std::fs::read(path).map_err(|source| CertError::Read { path: shown.clone(), source })?;
    let unusable = |reason: &str| CertError::Unusable { path: shown.clone(), reason: reason.to_owned() };
    let chain: Vec<Vec<u8>> = pem::parse_many(&text)
        .map_err(|_| unusable("not PEM"))?
        .into_iter()
        .filter(|block| block.tag() == "CERTIFICATE")
        .map(pem::Pem::into_contents)
        .collect();
    let Some(leaf) = chain.first() else {
        return Err(unusable("no CERTIFICATE block"));
    };
    // A certificate embeds its subject's SubjectPublicKeyInfo verbatim, in DER.
    let certifies_key = leaf.windows(key.spki_der().len()).any(|w| w == key.spki_der());
    if !certifies_key {
        return Err(unusable("its first certificate is not for the signing key"));
    }
    Ok(chain)
}

/// Signs registry tokens for one issuer with one key.
#[derive(Debug)]
pub struct Minter {
    key: SigningKey,
    issuer: String,
    lifetime_seconds: u64,
    kid: String,
    /// base64url of the JOSE header: the same for every token, so encoded once.
    header: String,
}

/// A freshly minted token and what the response says about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Minted {
    /// The compact JWS.
    pub token: String,
    /// Seconds until `exp`.
    pub expires_in: u64,
    /// `iat` as RFC 3339 UTC (`2026-11-28T15:34:47Z`).
    pub issued_at: String,
    /// The token's `jti` (for the ledger).
    pub jti: String,
    /// The token's `exp`, Unix seconds.
    pub expires_at: u64,
}

#[derive(Serialize)]
struct Header<'a> {
    typ: &'static str,
    alg: &'static str,
    kid: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    x5c: Option<Vec<String>>,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: u64,
    nbf: u64,
    iat: u64,
    jti: &'a str,
    access: &'a [Resource],
}

impl Minter {
    /// `chain` is the DER certificate chain for `x5c` (leaf first), if any.
    pub fn new(
        key: SigningKey,
        issuer: &str,
        lifetime_seconds: u64,
        kid_format: KidFormat,
        chain: Option<&[Vec<u8>]>,
    ) -> Minter {
        let kid = match kid_format {
            KidFormat::Libtrust => key.libtrust_kid(),
            KidFormat::Thumbprint => key.thumbprint_kid(),
        };
        let header = Header {
            typ: "JWT",
            alg: key.algorithm().name(),
            kid: &kid,
            x5c: chain.map(|chain| chain.iter().map(|der| BASE64.encode(der)).collect()),
        };
        // Strings only: serializing into memory has no way to fail, and an empty header would be
        // a token no registry accepts, so this is no place for a silent default.
        #[allow(clippy::expect_used)]
        let header = serde_json::to_vec(&header).expect("a JOSE header of strings serializes");
        let header = BASE64URL_NOPAD.encode(&header);
        Minter { key, issuer: issuer.to_owned(), lifetime_seconds, kid, header }
    }

    /// The `kid` minted tokens carry.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The signing key.
    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// Token lifetime in seconds.
    pub fn lifetime_seconds(&self) -> u64 {
        self.lifetime_seconds
    }

    /// Mints a token for `subject` on `audience` (the registry's service) granting `access`,
    /// issued at `now` (Unix seconds), expiring after the configured lifetime or at `not_after`,
    /// whichever comes first (the caller passes the credential's `exp` plus the validation leeway,
    /// so a token outlives the credential it was exchanged for by at most the tolerated skew), and
    /// at least a second after `now`.
    pub fn mint(
        &self,
        subject: &str,
        audience: &str,
        access: &[Resource],
        now: u64,
        not_after: u64,
    ) -> Result<Minted, aws_lc_rs::error::Unspecified> {
        let exp = now.saturating_add(self.lifetime_seconds).min(not_after).max(now + 1);
        let mut jti = [0u8; 16];
        aws_lc_rs::rand::fill(&mut jti)?;
        let jti = BASE64URL_NOPAD.encode(&jti);
        let claims = Claims {
            iss: &self.issuer,
            sub: subject,
            aud: audience,
            exp,
            nbf: now,
            iat: now,
            jti: &jti,
            access,
        };
        let claims = serde_json::to_vec(&claims).map_err(|_| aws_lc_rs::error::Unspecified)?;
        let mut token = String::with_capacity(self.header.len() + claims.len() * 4 / 3 + 8 + 512 * 4 / 3);
        token.push_str(&self.header);
        token.push('.');
        BASE64URL_NOPAD.encode_append(&claims, &mut token);
        let signature = self.key.sign(token.as_bytes())?;
        token.push('.');
        BASE64URL_NOPAD.encode_append(&signature, &mut token);
        Ok(Minted { token, expires_in: exp - now, issued_at: rfc3339(now), jti, expires_at: exp })
    }
}

/// `2026-11-28T15:34:47Z`: RFC 3339, UTC, with a `T` (a space breaks skopeo).
pub fn rfc3339(unix_seconds: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix_seconds))
        .to_string()
}
