//! The key a command signs a document with (`bundle sign`, `ledger export`): a key file or a key
//! in an HSM, and the `kid` the signature names; and the public keys a command verifies with.

use crate::jws::{self, TrustedKeys};
use crate::mint::pkcs11::{HsmKey, HsmLocation};
use crate::mint::{PublicKey, Signer, SigningKey};
use clap::Args;
use std::path::PathBuf;

/// `--key FILE`, or `--pkcs11 MODULE --token-label T --key-label K --pin-file P`; and `--kid`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("signing_key").args(["key", "pkcs11"]).multiple(false))]
pub(super) struct SignerArgs {
    /// The private key (PEM, mode 0600): an RSA key signs RS256, a P-256 key ES256.
    #[arg(long, value_name = "FILE", conflicts_with = "pkcs11")]
    key: Option<PathBuf>,
    /// A key in an HSM instead: the PKCS#11 module (e.g. /usr/lib/softhsm/libsofthsm2.so).
    #[arg(long, value_name = "MODULE", requires_all = ["token_label", "key_label", "pin_file"])]
    pkcs11: Option<PathBuf>,
    /// The HSM token's label.
    #[arg(long)]
    token_label: Option<String>,
    /// The key's label in the token.
    #[arg(long)]
    key_label: Option<String>,
    /// A file holding the token's user PIN (mode 0600).
    #[arg(long)]
    pin_file: Option<PathBuf>,
    /// The `kid` the signature names; default: the key's RFC 7638 thumbprint (a PEM key or
    /// certificate given to the verifier is known by it, and a JWKS written by `keys export` names
    /// keys so). Only with a key to sign with.
    // A thumbprint is base64url: one in 64 begins with a hyphen.
    #[arg(long, requires = "signing_key", allow_hyphen_values = true)]
    kid: Option<String>,
}

impl SignerArgs {
    /// The signer and its `kid`; `None` when no key was given.
    pub(super) fn signer(&self) -> Result<Option<(Signer, String)>, String> {
        let signer = match (&self.key, &self.pkcs11, &self.token_label, &self.key_label, &self.pin_file) {
            (Some(path), ..) => Signer::File(SigningKey::from_file_any(path).map_err(|e| e.to_string())?),
            (None, Some(module), Some(token), Some(key), Some(pin)) => {
                let location = HsmLocation::new(module, token, key, pin).map_err(|e| e.to_string())?;
                Signer::hsm(HsmKey::open(location, 1).map_err(|e| e.to_string())?, 1)
            }
            _ => return Ok(None),
        };
        let kid = self.kid.clone().unwrap_or_else(|| jws::default_kid(signer.public()));
        Ok(Some((signer, kid)))
    }
}

/// `--key PEM` (public keys or certificates) and `--jwks FILE`, any number of each.
#[derive(Debug, Args)]
pub(super) struct VerifierArgs {
    /// A PEM public key or certificate (file) to trust; repeatable.
    #[arg(long = "key", value_name = "PEM")]
    keys: Vec<PathBuf>,
    /// A JWKS file whose keys to trust; repeatable.
    #[arg(long, value_name = "FILE")]
    jwks: Vec<PathBuf>,
}

impl VerifierArgs {
    /// Whether any key was given.
    pub(super) fn given(&self) -> bool {
        !self.keys.is_empty() || !self.jwks.is_empty()
    }

    /// The trusted keys.
    pub(super) fn trusted(&self) -> Result<TrustedKeys, String> {
        let mut trusted = TrustedKeys::from_files(&self.keys).map_err(|e| e.to_string())?;
        for path in &self.jwks {
            let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            trusted.add_jwks(&bytes, &path.display().to_string()).map_err(|e| e.to_string())?;
        }
        Ok(trusted)
    }
}

/// `public`, trusted under both its `kid`s.
pub(super) fn trust(trusted: &mut TrustedKeys, public: &PublicKey) {
    trusted.push(vec![public.thumbprint_kid(), public.libtrust_kid()], public.clone());
}
