//! The signing key set: one active key that signs, and the keys registries must trust meanwhile
//! (`published` before a rotation, `retired` until the tokens they signed have expired). Loaded
//! completely or not at all; published as a JWKS (`auth.token.jwks`, distribution 3.x) and as a
//! certificate bundle (`auth.token.rootcertbundle`, 2.x and 3.x).

use super::pkcs11::{HsmKey, HsmLocation};
use super::{KeyEntry, KeyStatus, KidFormat, Minter, PublicKey, Signer, SigningKey, load_chain};
use data_encoding::{BASE64, HEXLOWER};
use sha2::{Digest, Sha256};

/// Why the key set did not load; names the entry (`signing.keys[1] (etc/keys/2027-01.pem)`).
#[derive(Debug, thiserror::Error)]
#[error("{entry}: {reason}")]
pub struct KeySetError {
    /// The entry, as [`KeyEntry::describe`] names it.
    pub entry: String,
    /// What is wrong.
    pub reason: String,
}

/// A key registries are told to trust.
#[derive(Debug)]
pub struct PublishedKey {
    /// Its status in the configuration.
    pub status: KeyStatus,
    /// The public key.
    pub public: PublicKey,
    /// Its certificate chain (DER, leaf first), when configured.
    pub chain: Option<Vec<Vec<u8>>>,
    /// Unix seconds after which a retired key is no longer published.
    pub retire_after: Option<u64>,
    /// Where its private key is: `file PATH`, `pkcs11 TOKEN/KEY (sensitive, …)`, or `none`.
    pub custody: String,
    /// Its certificate's validity (Unix seconds, not before and not after), when it has one.
    pub certificate_valid: Option<(i64, i64)>,
}

impl PublishedKey {
    /// Whether it is published at `now`.
    pub fn is_published(&self, now: u64) -> bool {
        self.retire_after.is_none_or(|after| now <= after)
    }
}

/// One key as `/readyz` and the metrics show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySummary {
    /// Its `kid`, as tokens carry it.
    pub kid: String,
    /// `active`, `published` or `retired`.
    pub status: &'static str,
    /// `RS256`, `ES256`, ...
    pub algorithm: &'static str,
    /// Whether it is published now.
    pub published: bool,
    /// When its certificate expires (Unix seconds), when it has one.
    pub certificate_expires: Option<i64>,
}

/// The loaded key set.
#[derive(Debug)]
pub struct KeySet {
    minter: Minter,
    keys: Vec<PublishedKey>,
    kid_format: KidFormat,
    warnings: Vec<String>,
}

impl KeySet {
    /// Loads every key of `entries` (exactly one active, as `Config::check` ensures), minting as
    /// `issuer` for `lifetime_seconds` with `kid_format` kids.
    pub fn load(
        entries: &[KeyEntry],
        issuer: &str,
        lifetime_seconds: u64,
        kid_format: KidFormat,
    ) -> Result<KeySet, KeySetError> {
        let mut active = None;
        let mut keys = Vec::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            let failed = |reason: String| KeySetError { entry: entry.describe(index), reason };
            let (signer, published) = load_entry(entry).map_err(failed)?;
            if let Some(signer) = signer
                && entry.status == KeyStatus::Active
            {
                active = Some(signer);
            }
            if keys.iter().any(|k: &PublishedKey| k.public == published.public) {
                return Err(failed("the same key is listed twice".into()));
            }
            keys.push(published);
        }
        let signer = active.ok_or_else(|| KeySetError {
            entry: "signing.keys".into(),
            reason: "no active key with a private key".into(),
        })?;
        let chain = keys.iter().find(|k| k.status == KeyStatus::Active).and_then(|k| k.chain.as_deref());
        let minter = Minter::new(signer, issuer, lifetime_seconds, kid_format, chain);
        Ok(KeySet { minter, keys, kid_format, warnings: Vec::new() })
    }

    /// `key`'s `kid` in the format tokens carry (`signing.kid_format`).
    pub fn kid(&self, key: &PublishedKey) -> String {
        match self.kid_format {
            KidFormat::Libtrust => key.public.libtrust_kid(),
            KidFormat::Thumbprint => key.public.thumbprint_kid(),
        }
    }

    /// Checks this set, replacing `before` at a reload (`None` at start), for the steps of a
    /// rotation that make registries refuse tokens: a new active key that was not published
    /// before, the key active until now removed rather than retired, a key this reload retires
    /// with a `retire_after` already past. Each is kept for `/readyz` (`signing.warnings`) and
    /// for [`KeySet::log_warnings`] once the set is live. Warned, not refused: an operator
    /// replacing a compromised key at once does exactly this.
    pub fn check_rotation(&mut self, before: Option<&KeySet>, now: u64) {
        let mut warnings = Vec::new();
        // A retired key left listed past its retire_after is the rotation's last step pending,
        // harmless; one that this reload took out of the published set at once is not.
        let unpublished_now = |key: &&PublishedKey| {
            key.status == KeyStatus::Retired
                && !key.is_published(now)
                && before.is_some_and(|before| before.published(now).any(|was| was.public == key.public))
        };
        for key in self.keys.iter().filter(unpublished_now) {
            warnings.push(format!(
                "retired key {} is past its retire_after ({}): this reload stopped publishing it, and \
                 tokens it signed no longer verify against the published keys",
                self.kid(key),
                super::rfc3339(key.retire_after.unwrap_or_default())
            ));
        }
        if let (Some(before), Some(active)) = (before, self.active())
            && let Some(was_active) = before.active()
            && was_active.public != active.public
        {
            if !before.published(now).any(|key| key.public == active.public) {
                warnings.push(format!(
                    "the new active key {} was not published before this reload: registries given only \
                     the keys published until now refuse its tokens (publish a key and give registries \
                     its certificate before making it active)",
                    self.kid(active)
                ));
            }
            if !self.keys.iter().any(|key| key.public == was_active.public) {
                warnings.push(format!(
                    "the key active until this reload, {}, was removed: tokens it signed no longer \
                     verify against the published keys until they expire (list it as retired, with a \
                     retire_after, instead)",
                    before.kid(was_active)
                ));
            }
        }
        self.warnings = warnings;
    }

    /// Logs what [`KeySet::check_rotation`] found (once the set is the live one).
    pub fn log_warnings(&self) {
        for warning in &self.warnings {
            tracing::warn!("{warning}");
        }
    }

    /// What [`KeySet::check_rotation`] found.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    fn active(&self) -> Option<&PublishedKey> {
        self.keys.iter().find(|key| key.status == KeyStatus::Active)
    }

    /// The keys as the status page and metrics show them, at `now`.
    pub fn summary(&self, now: u64) -> Vec<KeySummary> {
        self.keys
            .iter()
            .map(|key| KeySummary {
                kid: self.kid(key),
                status: key.status.name(),
                algorithm: key.public.algorithm().name(),
                published: key.is_published(now),
                certificate_expires: key.certificate_valid.map(|(_, not_after)| not_after),
            })
            .collect()
    }

    /// What is wrong, at `now`, with the certificate every new token carries: outside its
    /// validity period, registries refuse each of those tokens. It was valid when the keys were
    /// loaded, so it is a certificate that expired while the service ran.
    pub fn active_certificate_problem(&self, now: u64) -> Option<String> {
        let problem = outside_validity(self.active()?.certificate_valid?, now)?;
        Some(format!(
            "the active key's certificate {problem}: registries refuse every token whose x5c carries it; \
             renew the certificate or make another key active, and reload"
        ))
    }

    /// Signs new tokens with the active key.
    pub fn minter(&self) -> &Minter {
        &self.minter
    }

    /// Every configured key, in the configuration's order.
    pub fn keys(&self) -> &[PublishedKey] {
        &self.keys
    }

    /// The keys published at `now`: the active and published keys, and retired ones until their
    /// `retire_after`.
    pub fn published(&self, now: u64) -> impl Iterator<Item = &PublishedKey> {
        self.keys.iter().filter(move |k| k.is_published(now))
    }

    /// `/.well-known/jwks.json`: see [`jwks`].
    pub fn jwks(&self, now: u64) -> String {
        jwks(&self.keys, now)
    }

    /// `/certs.pem`: see [`certificates_pem`].
    pub fn certificates_pem(&self, now: u64) -> String {
        certificates_pem(&self.keys, now)
    }
}

/// The keys registries are told to trust, as `keys export` writes them: from an entry's
/// certificate where it has one, so that no private key file or HSM is opened (a publishing job
/// needs neither; the service itself checks that each certificate fits its key); from the private
/// key otherwise.
pub fn load_published(entries: &[KeyEntry]) -> Result<Vec<PublishedKey>, KeySetError> {
    let mut keys: Vec<PublishedKey> = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        let failed = |reason: String| KeySetError { entry: entry.describe(index), reason };
        let public_only = KeyEntry { key_file: None, pkcs11: None, ..entry.clone() };
        let entry = if entry.cert_file.is_some() { &public_only } else { entry };
        let (_, published) = load_entry(entry).map_err(failed)?;
        if keys.iter().any(|k| k.public == published.public) {
            return Err(failed("the same key is listed twice".into()));
        }
        keys.push(published);
    }
    Ok(keys)
}

/// `/.well-known/jwks.json` of `keys` at `now`: `{"keys": [...]}`, each published key with `kty`,
/// `use`, `alg`, `kid` (RFC 7638) and `x5c` when there is a certificate.
pub fn jwks(keys: &[PublishedKey], now: u64) -> String {
    let keys: Vec<serde_json::Value> = keys
        .iter()
        .filter(|k| k.is_published(now))
        .map(|key| {
            let mut jwk = key.public.jwk();
            if let Some(chain) = &key.chain {
                let x5c: Vec<serde_json::Value> = chain.iter().map(|der| BASE64.encode(der).into()).collect();
                jwk.insert("x5c".into(), x5c.into());
            }
            serde_json::Value::Object(jwk)
        })
        .collect();
    serde_json::json!({ "keys": keys }).to_string()
}

/// `/certs.pem` of `keys` at `now`: the published keys' own certificates (without repeats), for a
/// registry's `rootcertbundle`. Never the rest of a chain: every certificate there is a trust
/// anchor, and a CA among them would make any key it certified a signer of tokens. (A token's
/// `x5c` carries the whole chain.)
pub fn certificates_pem(keys: &[PublishedKey], now: u64) -> String {
    let mut seen: Vec<&[u8]> = Vec::new();
    let mut pem = String::new();
    for der in keys.iter().filter(|k| k.is_published(now)).filter_map(|k| k.chain.as_ref()?.first()) {
        if !seen.contains(&der.as_slice()) {
            seen.push(der);
            pem.push_str(&pem::encode(&pem::Pem::new("CERTIFICATE", der.clone())));
        }
    }
    pem
}

/// A strong ETag for a published document.
pub fn etag(body: &str) -> String {
    format!("\"{}\"", &HEXLOWER.encode(&Sha256::digest(body.as_bytes()))[..32])
}

fn load_entry(entry: &KeyEntry) -> Result<(Option<Signer>, PublishedKey), String> {
    let mut custody = "none (certificate only)".to_owned();
    let signer = match (&entry.key_file, &entry.pkcs11) {
        (Some(path), _) => {
            custody = format!("file {}", path.display());
            let key = match entry.algorithm {
                Some(algorithm) => SigningKey::from_file(path, algorithm),
                None => SigningKey::from_file_any(path),
            }
            .map_err(|e| e.to_string())?;
            Some(Signer::File(key))
        }
        (None, Some(hsm)) => {
            let location = HsmLocation::new(&hsm.module, &hsm.token_label, &hsm.key_label, &hsm.pin_file)
                .map_err(|e| e.to_string())?;
            let key = HsmKey::open(location, hsm.sessions).map_err(|e| e.to_string())?;
            custody =
                format!("pkcs11 token {:?} key {:?} ({})", hsm.token_label, hsm.key_label, key.protection());
            Some(Signer::hsm(key, hsm.sessions))
        }
        (None, None) => None,
    };
    let (certified, certificate_valid) = match &entry.cert_file {
        Some(path) => {
            let (chain, public) = load_chain(path).map_err(|e| e.to_string())?;
            let valid = chain.first().and_then(|leaf| super::validity(leaf));
            check_validity(path, valid, entry.status)?;
            (Some((chain, public)), valid)
        }
        None => (None, None),
    };
    let public = match (&signer, &certified) {
        (Some(signer), Some((_, certified))) if signer.public() != certified => {
            return Err(
                "its certificate is for another key (cert_file and the private key do not match)".into()
            );
        }
        (Some(signer), _) => signer.public().clone(),
        (None, Some((_, certified))) => certified.clone(),
        (None, None) => return Err("neither a private key nor a certificate".into()),
    };
    if let Some(algorithm) = entry.algorithm
        && algorithm != public.algorithm()
    {
        return Err(format!(
            "algorithm {} does not fit its {} key",
            algorithm.name(),
            public.algorithm().name()
        ));
    }
    let published = PublishedKey {
        status: entry.status,
        public,
        chain: certified.map(|(chain, _)| chain),
        retire_after: entry.retire_after.map(|t| t.0),
        custody,
        certificate_valid,
    };
    Ok((signer, published))
}

/// A certificate outside its validity period: registries check a token's `x5c` chain with the
/// time of day and refuse every token whose certificate has expired (or is not yet valid), so the
/// active key's must be valid now. Another key's is only warned about (no new token carries it),
/// and so is an active key's that expires within [`EXPIRY_WARNING`].
fn check_validity(
    path: &std::path::Path,
    valid: Option<(i64, i64)>,
    status: KeyStatus,
) -> Result<(), String> {
    let Some(valid @ (_, not_after)) = valid else {
        return Ok(());
    };
    let now = crate::app::system_clock()();
    let problem =
        outside_validity(valid, now).map(|problem| format!("its certificate {} {problem}", path.display()));
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    match (problem, status) {
        (Some(problem), KeyStatus::Active) => Err(format!(
            "{problem}: registries refuse every token whose x5c carries it; renew the certificate or \
             make another key active"
        )),
        (Some(problem), _) => {
            tracing::warn!(path = %path.display(), "{problem}");
            Ok(())
        }
        (None, KeyStatus::Active) if not_after - now < EXPIRY_WARNING => {
            tracing::warn!(
                path = %path.display(),
                not_after = %super::rfc3339(u64::try_from(not_after).unwrap_or_default()),
                "the active key's certificate expires soon; renew it before then"
            );
            Ok(())
        }
        (None, _) => Ok(()),
    }
}

/// What is wrong with a certificate valid from `not_before` to `not_after` (Unix seconds) at
/// `now`: `expired at T`, `is not valid until T`, or nothing.
fn outside_validity((not_before, not_after): (i64, i64), now: u64) -> Option<String> {
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    let shown = |t: i64| super::rfc3339(u64::try_from(t).unwrap_or_default());
    if now >= not_after {
        Some(format!("expired at {}", shown(not_after)))
    } else if now < not_before {
        Some(format!("is not valid until {}", shown(not_before)))
    } else {
        None
    }
}

/// How long before its certificate expires the active key is warned about at each load.
const EXPIRY_WARNING: i64 = 14 * 86_400;
