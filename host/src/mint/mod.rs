//! Minting registry tokens: the JWS header (computed once), the claims, the signature.
//!
//! The token is what distribution 2.8.2 verifies: header `typ: JWT`, `alg`, `kid` (libtrust by
//! default, or the RFC 7638 thumbprint) and `x5c` when a certificate is configured; claims `iss`,
//! `sub`, `aud` (a JSON string), integer `exp`/`nbf`/`iat`, a random `jti` and `access`.

mod entry;
mod key;
pub mod keygen;
mod keyset;
pub mod pkcs11;
mod public;
mod reuse;
pub(crate) mod secret_pem;

pub use entry::{KeyEntry, KeyStatus, Pkcs11KeyConfig, Rfc3339};
pub use key::{KeyError, SigningAlgorithm, SigningKey};
pub use keyset::{
    KeySet, KeySetError, KeySummary, PublishedKey, certificates_pem, etag, jwks, load_published,
};
pub use public::PublicKey;
pub use reuse::{Decided, Lookup, Reusable, ReuseCache, ReuseKey, Slot};

use crate::access::Resource;
use data_encoding::{BASE64, BASE64URL_NOPAD};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

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

/// Reads a PEM certificate chain (leaf first): the DER certificates and the leaf's public key.
pub fn load_chain(path: &Path) -> Result<(Vec<Vec<u8>>, PublicKey), CertError> {
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
    let (_, certificate) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| unusable(&format!("not an X.509 certificate: {e}")))?;
    let public = PublicKey::from_spki(certificate.public_key()).map_err(|reason| unusable(&reason))?;
    Ok((chain, public))
}

/// A DER certificate's validity period, `notBefore` and `notAfter` in Unix seconds.
pub(crate) fn validity(der: &[u8]) -> Option<(i64, i64)> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
    let validity = certificate.validity();
    Some((validity.not_before.timestamp(), validity.not_after.timestamp()))
}

/// Verifies `signature` over `message` with a DER SubjectPublicKeyInfo.
pub(crate) fn verify_with_spki(
    algorithm: &'static dyn aws_lc_rs::signature::VerificationAlgorithm,
    spki_der: &[u8],
    message: &[u8],
    signature: &[u8],
) -> Result<(), ()> {
    aws_lc_rs::signature::UnparsedPublicKey::new(algorithm, spki_der)
        .verify(message, signature)
        .map_err(|_| ())
}

/// Why a token could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The local crypto library refused (it does not, in practice).
    #[error("the signature failed")]
    Crypto,
    /// The HSM did not sign: it failed, was busy past the deadline, or is reconnecting.
    #[error(transparent)]
    Hsm(#[from] pkcs11::HsmError),
}

/// How long a token waits for an HSM session and its signature before the request gets 503.
pub const HSM_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

/// What holds the active private key.
#[derive(Debug)]
pub enum Signer {
    /// A key file, parsed in memory: signs on the calling thread.
    File(SigningKey),
    /// A key in an HSM: signs on the blocking pool, at most one signature per session at once.
    Hsm {
        /// The key.
        key: Arc<pkcs11::HsmKey>,
        /// One permit per pooled session.
        permits: Arc<tokio::sync::Semaphore>,
        /// Whether its last signature failed (until one succeeds): `/readyz` then probes it.
        failing: Arc<std::sync::atomic::AtomicBool>,
    },
}

impl From<SigningKey> for Signer {
    fn from(key: SigningKey) -> Signer {
        Signer::File(key)
    }
}

impl Signer {
    /// An HSM key with `sessions` concurrent signatures at most.
    pub fn hsm(key: pkcs11::HsmKey, sessions: usize) -> Signer {
        Signer::Hsm {
            key: Arc::new(key),
            permits: Arc::new(tokio::sync::Semaphore::new(sessions)),
            failing: Arc::default(),
        }
    }

    /// The public key.
    pub fn public(&self) -> &PublicKey {
        match self {
            Signer::File(key) => key.public(),
            Signer::Hsm { key, .. } => key.public(),
        }
    }

    /// The JWS algorithm.
    pub fn algorithm(&self) -> SigningAlgorithm {
        match self {
            Signer::File(key) => key.algorithm(),
            Signer::Hsm { key, .. } => key.algorithm(),
        }
    }

    /// Whether a signature cannot fail for want of a device: a key file signs in memory, an HSM
    /// may be unreachable.
    pub fn signs_in_memory(&self) -> bool {
        matches!(self, Signer::File(_))
    }

    /// Where the key lives, for the status page and metrics: `file` or `pkcs11`.
    pub fn custody(&self) -> &'static str {
        match self {
            Signer::File(_) => "file",
            Signer::Hsm { .. } => "pkcs11",
        }
    }

    /// Signs on this thread, blocking on an HSM (benchmarks, commands).
    pub fn sign_now(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        match self {
            Signer::File(key) => key.sign(message).map_err(|_| SignError::Crypto),
            Signer::Hsm { key, .. } => Ok(key.sign(message)?),
        }
    }

    /// Whether it can sign: a key file always; an HSM key whose last signature failed (its
    /// token gone, its PIN refused) is asked for a signature of its own, so that a replica that
    /// cannot sign leaves the load balancer, and comes back once it can (without traffic).
    pub async fn ready(&self) -> Result<(), SignError> {
        match self {
            Signer::Hsm { failing, .. } if failing.load(std::sync::atomic::Ordering::Relaxed) => {
                self.sign("registry-token readiness probe").await.map(drop)
            }
            _ => Ok(()),
        }
    }

    /// Signs; an HSM signature runs on the blocking pool under [`HSM_DEADLINE`].
    pub async fn sign(&self, message: &str) -> Result<Vec<u8>, SignError> {
        let (key, permits, failing) = match self {
            Signer::File(key) => return key.sign(message.as_bytes()).map_err(|_| SignError::Crypto),
            Signer::Hsm { key, permits, failing } => (key.clone(), permits.clone(), failing),
        };
        let signed = Signer::sign_in_hsm(key, permits, message).await;
        failing.store(signed.is_err(), std::sync::atomic::Ordering::Relaxed);
        signed
    }

    async fn sign_in_hsm(
        key: Arc<pkcs11::HsmKey>,
        permits: Arc<tokio::sync::Semaphore>,
        message: &str,
    ) -> Result<Vec<u8>, SignError> {
        let busy = || pkcs11::HsmError::Unavailable(format!("no HSM session within {HSM_DEADLINE:?}"));
        let deadline = tokio::time::Instant::now() + HSM_DEADLINE;
        let permit = tokio::time::timeout_at(deadline, permits.acquire_owned())
            .await
            .map_err(|_| busy())?
            .map_err(|_| busy())?;
        let message = message.to_owned();
        // The permit stays with the blocking call: a hung module holds at most `sessions` threads.
        let signing = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            key.sign(message.as_bytes())
        });
        match tokio::time::timeout_at(deadline, signing).await {
            Ok(Ok(signed)) => Ok(signed?),
            Ok(Err(join)) => {
                Err(pkcs11::HsmError::Unavailable(format!("the signing task failed: {join}")).into())
            }
            Err(_) => {
                Err(pkcs11::HsmError::Unavailable(format!("the HSM did not sign within {HSM_DEADLINE:?}"))
                    .into())
            }
        }
    }
}

/// Signs registry tokens for one issuer with one key.
#[derive(Debug)]
pub struct Minter {
    signer: Signer,
    issuer: String,
    lifetime_seconds: u64,
    kid: String,
    /// base64url of the JOSE header: the same for every token, so encoded once.
    header: String,
}

/// The shortest token lifetime a policy may ask for, in seconds (as `signing.lifetime_seconds`).
pub const MIN_LIFETIME_SECONDS: u64 = 5;

/// What bounded the lifetime a policy asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LifetimeLimit {
    /// Raised to [`MIN_LIFETIME_SECONDS`].
    Minimum,
    /// Lowered to `signing.max_lifetime_seconds`.
    Maximum,
    /// Lowered so the token ends by the caller token's `exp` plus the leeway.
    CallerToken,
}

impl LifetimeLimit {
    /// The name the ledger and the log use.
    pub fn as_str(self) -> &'static str {
        match self {
            LifetimeLimit::Minimum => "minimum",
            LifetimeLimit::Maximum => "signing.max_lifetime_seconds",
            LifetimeLimit::CallerToken => "caller_token",
        }
    }
}

/// A lifetime a policy asked for, and what the token got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LifetimeDecision {
    /// Seconds asked for.
    pub requested: u32,
    /// Seconds issued (`exp - iat`).
    pub granted: u64,
    /// What bounded it, if it was not issued as asked.
    pub limited_by: Option<LifetimeLimit>,
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
    /// `iat`, Unix seconds.
    pub iat: u64,
    /// The token's `jti` (for the ledger).
    pub jti: String,
    /// The token's `exp`, Unix seconds.
    pub expires_at: u64,
    /// The lifetime the policy asked for and what was issued, when it asked for one.
    pub lifetime: Option<LifetimeDecision>,
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
        signer: impl Into<Signer>,
        issuer: &str,
        lifetime_seconds: u64,
        kid_format: KidFormat,
        chain: Option<&[Vec<u8>]>,
    ) -> Minter {
        let signer = signer.into();
        let kid = match kid_format {
            KidFormat::Libtrust => signer.public().libtrust_kid(),
            KidFormat::Thumbprint => signer.public().thumbprint_kid(),
        };
        let header = Header {
            typ: "JWT",
            alg: signer.algorithm().name(),
            kid: &kid,
            x5c: chain.map(|chain| chain.iter().map(|der| BASE64.encode(der)).collect()),
        };
        // Strings only: serializing into memory has no way to fail, and an empty header would be
        // a token no registry accepts, so this is no place for a silent default.
        #[allow(clippy::expect_used)]
        let header = serde_json::to_vec(&header).expect("a JOSE header of strings serializes");
        let header = BASE64URL_NOPAD.encode(&header);
        Minter { signer, issuer: issuer.to_owned(), lifetime_seconds, kid, header }
    }

    /// The `kid` minted tokens carry.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// What signs.
    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// Token lifetime in seconds.
    pub fn lifetime_seconds(&self) -> u64 {
        self.lifetime_seconds
    }

    /// Mints the token `grant` describes.
    pub async fn mint(&self, grant: &Grant<'_>) -> Result<Minted, SignError> {
        self.sign(self.prepare(grant)?).await
    }

    /// The token `grant` describes, claims fixed (its `jti`, `exp` and lifetime are known), not
    /// signed yet: what is to be recorded can be on its way to the ledger while it is signed.
    pub fn prepare(&self, grant: &Grant<'_>) -> Result<Prepared, SignError> {
        self.unsigned(grant).map(Prepared)
    }

    /// Signs a [`Minter::prepare`]d token.
    pub async fn sign(&self, prepared: Prepared) -> Result<Minted, SignError> {
        let signature = self.signer.sign(&prepared.0.input).await?;
        Ok(prepared.0.finish(&signature))
    }

    /// [`Minter::mint`] on this thread, blocking on an HSM (benchmarks).
    pub fn mint_now(&self, grant: &Grant<'_>) -> Result<Minted, SignError> {
        let unsigned = self.unsigned(grant)?;
        let signature = self.signer.sign_now(unsigned.input.as_bytes())?;
        Ok(unsigned.finish(&signature))
    }

    fn unsigned(&self, grant: &Grant<'_>) -> Result<Unsigned, SignError> {
        let Grant { subject, audience, access, now, not_after, requested_lifetime, max_lifetime } = *grant;
        let (lifetime, limit) = match requested_lifetime {
            None => (self.lifetime_seconds, None),
            Some(asked) => {
                let asked = u64::from(asked);
                let max = max_lifetime.max(MIN_LIFETIME_SECONDS);
                match asked {
                    _ if asked < MIN_LIFETIME_SECONDS => (MIN_LIFETIME_SECONDS, Some(LifetimeLimit::Minimum)),
                    _ if asked > max => (max, Some(LifetimeLimit::Maximum)),
                    _ => (asked, None),
                }
            }
        };
        let wanted = now.saturating_add(lifetime);
        let exp = wanted.min(not_after).max(now + 1);
        let limit = if exp < wanted { Some(LifetimeLimit::CallerToken) } else { limit };
        let lifetime = requested_lifetime.map(|requested| LifetimeDecision {
            requested,
            granted: exp - now,
            limited_by: limit,
        });
        let jti = new_jti()?;
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
        let claims = serde_json::to_vec(&claims).map_err(|_| SignError::Crypto)?;
        let mut input = String::with_capacity(self.header.len() + claims.len() * 4 / 3 + 8 + 512 * 4 / 3);
        input.push_str(&self.header);
        input.push('.');
        BASE64URL_NOPAD.encode_append(&claims, &mut input);
        Ok(Unsigned { input, jti, now, exp, lifetime })
    }
}

/// What a token grants: to `subject` on `audience` (the registry's service), `access`, issued at
/// `now` (Unix seconds), expiring after the configured lifetime — or the lifetime the policy asked
/// for, clamped to [[`MIN_LIFETIME_SECONDS`], `max_lifetime`] — or at `not_after`, whichever comes
/// first (the caller passes the credential's `exp` plus the validation leeway, so a token outlives
/// the credential it was exchanged for by at most the tolerated skew), and at least a second after
/// `now`.
#[derive(Clone, Copy, Debug)]
pub struct Grant<'a> {
    /// `sub`.
    pub subject: &'a str,
    /// `aud`.
    pub audience: &'a str,
    /// `access`.
    pub access: &'a [Resource],
    /// `iat` and `nbf`.
    pub now: u64,
    /// The latest `exp`.
    pub not_after: u64,
    /// The lifetime the policy asked for, in seconds; `None`: the configured lifetime.
    pub requested_lifetime: Option<u32>,
    /// The longest lifetime a policy may get (`signing.max_lifetime_seconds`).
    pub max_lifetime: u64,
}

/// A token whose claims are fixed, waiting for its signature ([`Minter::prepare`]).
#[derive(Debug)]
pub struct Prepared(Unsigned);

impl Prepared {
    /// Its `jti`.
    pub fn jti(&self) -> &str {
        &self.0.jti
    }

    /// Its `exp`, Unix seconds.
    pub fn expires_at(&self) -> u64 {
        self.0.exp
    }

    /// The lifetime a policy asked for and what the token got, when it asked.
    pub fn lifetime(&self) -> Option<LifetimeDecision> {
        self.0.lifetime
    }
}

/// A token's signing input, waiting for its signature.
#[derive(Debug)]
struct Unsigned {
    input: String,
    jti: String,
    now: u64,
    exp: u64,
    lifetime: Option<LifetimeDecision>,
}

impl Unsigned {
    fn finish(self, signature: &[u8]) -> Minted {
        let Unsigned { mut input, jti, now, exp, lifetime } = self;
        input.push('.');
        BASE64URL_NOPAD.encode_append(signature, &mut input);
        Minted {
            token: input,
            expires_in: exp - now,
            issued_at: rfc3339(now),
            iat: now,
            jti,
            expires_at: exp,
            lifetime,
        }
    }
}

/// A registry token's `jti`: the time in milliseconds (6 bytes, big-endian) and 80 random bits,
/// base64url (22 characters). The time first keeps the `jti`s of one moment next to each other,
/// so the ledger's index of them takes a commit's new entries on one page rather than on a page
/// each (with 128 random bits, a third of the pages a commit wrote; docs/BENCHMARKS.md). 80 random
/// bits within one millisecond keep them unique.
pub fn new_jti() -> Result<String, SignError> {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis());
    let mut jti = [0u8; 16];
    jti[..6].copy_from_slice(&millis.to_be_bytes()[10..]);
    aws_lc_rs::rand::fill(&mut jti[6..]).map_err(|_| SignError::Crypto)?;
    Ok(BASE64URL_NOPAD.encode(&jti))
}

/// `2026-11-28T15:34:47Z`: RFC 3339, UTC, with a `T` (a space breaks skopeo).
pub fn rfc3339(unix_seconds: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix_seconds))
        .to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn minter(lifetime_seconds: u64) -> Minter {
        let dir = tempfile::tempdir().unwrap();
        let generated = keygen::generate(dir.path(), SigningAlgorithm::ES256, 0).unwrap();
        let key = SigningKey::from_file(&generated.key_file, SigningAlgorithm::ES256).unwrap();
        Minter::new(key, "registry-token", lifetime_seconds, KidFormat::Libtrust, None)
    }

    fn grant(requested_lifetime: Option<u32>, not_after: u64) -> Grant<'static> {
        Grant {
            subject: "alice",
            audience: "registry.local",
            access: &[],
            now: 1_000,
            not_after,
            requested_lifetime,
            max_lifetime: 3_600,
        }
    }

    fn now_millis() -> u64 {
        u64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis())
            .unwrap()
    }

    /// A `jti` starts with the millisecond it was made in (so the ledger's index of them grows in
    /// one place) and ends in random bits (so the thousand made within the same few milliseconds
    /// all differ).
    #[test]
    fn a_jti_is_its_millisecond_then_random_bits() {
        let before = now_millis();
        let jtis: Vec<String> = (0..1000).map(|_| new_jti().unwrap()).collect();
        let after = now_millis();
        assert_eq!(jtis.iter().collect::<std::collections::HashSet<_>>().len(), 1000);
        for jti in &jtis {
            assert_eq!(jti.len(), 22, "{jti}");
            let bytes = BASE64URL_NOPAD.decode(jti.as_bytes()).unwrap();
            let millis = bytes[..6].iter().fold(0u64, |acc, byte| acc << 8 | u64::from(*byte));
            assert!((before..=after).contains(&millis), "{jti}: {millis} not in {before}..={after}");
        }
        let tails: std::collections::HashSet<&str> = jtis.iter().map(|jti| &jti[8..]).collect();
        assert_eq!(tails.len(), 1000, "the random part alone differs");
    }

    /// `exp - iat` of the token itself, and the recorded decision.
    fn lifetime_of(minted: &Minted) -> (u64, Option<LifetimeDecision>) {
        let claims = minted.token.split('.').nth(1).unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&BASE64URL_NOPAD.decode(claims.as_bytes()).unwrap()).unwrap();
        let (exp, iat) = (claims["exp"].as_u64().unwrap(), claims["iat"].as_u64().unwrap());
        assert_eq!(minted.expires_in, exp - iat);
        (exp - iat, minted.lifetime)
    }

    #[test]
    fn a_policy_lifetime_is_clamped_and_says_what_clamped_it() {
        let minter = minter(300);
        let far = u64::MAX;
        let decision =
            |requested, granted, limited_by| Some(LifetimeDecision { requested, granted, limited_by });
        for (requested, not_after, expected) in [
            // No request: the configured lifetime, and nothing recorded.
            (None, far, (300, None)),
            (Some(1_800), far, (1_800, decision(1_800, 1_800, None))),
            (Some(2), far, (5, decision(2, 5, Some(LifetimeLimit::Minimum)))),
            (Some(0), far, (5, decision(0, 5, Some(LifetimeLimit::Minimum)))),
            (Some(86_400), far, (3_600, decision(86_400, 3_600, Some(LifetimeLimit::Maximum)))),
            (Some(u32::MAX), far, (3_600, decision(u32::MAX, 3_600, Some(LifetimeLimit::Maximum)))),
            // The caller token (plus leeway) ends first: the token ends with it.
            (Some(1_800), 1_000 + 600, (600, decision(1_800, 600, Some(LifetimeLimit::CallerToken)))),
            (None, 1_000 + 60, (60, None)),
        ] {
            let minted = minter.mint_now(&grant(requested, not_after)).unwrap();
            assert_eq!(lifetime_of(&minted), expected, "{requested:?} until {not_after}");
        }
    }
}
