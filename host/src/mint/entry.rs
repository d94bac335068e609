//! One entry of `signing.keys`, as the configuration writes it (the configuration re-exports
//! these types; the key set is loaded from them).

use super::SigningAlgorithm;
use serde::Deserialize;
use std::path::PathBuf;

/// What a key of `signing.keys` is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    /// Signs every new token (exactly one key).
    Active,
    /// Published so registries trust it before it signs; needs a certificate.
    Published,
    /// Published until `retire_after`, so tokens it signed keep working until they expire.
    Retired,
}

impl KeyStatus {
    /// The name in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            KeyStatus::Active => "active",
            KeyStatus::Published => "published",
            KeyStatus::Retired => "retired",
        }
    }
}

/// One entry of `signing.keys`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// The PEM private key (mode 0600). Not needed for a retired key.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// A key held in an HSM, instead of `key_file`.
    #[serde(default)]
    pub pkcs11: Option<Pkcs11KeyConfig>,
    /// The PEM certificate (chain, leaf first) of the key.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// `active`, `published` or `retired`.
    pub status: KeyStatus,
    /// When a retired key stops being published (RFC 3339): after the longest lifetime of the
    /// tokens it signed, plus the leeway.
    #[serde(default)]
    pub retire_after: Option<Rfc3339>,
    /// `RS256` or `ES256`; by default what the key is (an RSA key signs RS256, a P-256 key ES256).
    #[serde(default)]
    pub algorithm: Option<SigningAlgorithm>,
    /// The single-key form (`signing.key_file`) seen as an entry: errors name it so.
    #[serde(skip)]
    pub single: bool,
}

impl KeyEntry {
    /// How errors name this entry: `signing.keys[1] (etc/keys/2027-01.pem)`.
    pub fn describe(&self, index: usize) -> String {
        if self.single {
            let file = self.key_file.as_deref().unwrap_or(std::path::Path::new("")).display();
            return format!("signing.key_file ({file})");
        }
        let what = match (&self.key_file, &self.pkcs11, &self.cert_file) {
            (Some(key), _, _) => key.display().to_string(),
            (None, Some(hsm), _) => format!("pkcs11 {}/{}", hsm.token_label, hsm.key_label),
            (None, None, Some(cert)) => cert.display().to_string(),
            (None, None, None) => "no key".to_owned(),
        };
        format!("signing.keys[{index}] ({what})")
    }
}

/// `pkcs11:` of a key entry: a signing key that never leaves an HSM.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11KeyConfig {
    /// The PKCS#11 module (for SoftHSM2, `/usr/lib/softhsm/libsofthsm2.so`).
    pub module: PathBuf,
    /// The token's label.
    pub token_label: String,
    /// The key's `CKA_LABEL` (its private and public objects share it).
    pub key_label: String,
    /// A file holding the user PIN, readable by its owner only.
    pub pin_file: PathBuf,
    /// Sessions kept open for signing (each signs one token at a time).
    #[serde(default = "Pkcs11KeyConfig::default_sessions")]
    pub sessions: usize,
}

impl Pkcs11KeyConfig {
    fn default_sessions() -> usize {
        4
    }
}

/// An RFC 3339 instant (`2026-12-01T12:05:00Z`), as Unix seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rfc3339(pub u64);

impl<'de> Deserialize<'de> for Rfc3339 {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let seconds = crate::rfc3339::parse_seconds(&text).map_err(|refused| {
            serde::de::Error::custom(format!("{text:?} is {refused}, e.g. 2026-12-01T12:05:00Z"))
        })?;
        Ok(Rfc3339(seconds))
    }
}
