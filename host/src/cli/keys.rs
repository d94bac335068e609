//! `registry-token keys new|export|list`: the key set's life outside the server — a new key for
//! a rotation (a file, or inside an HSM), the published set written offline, what is configured.

use super::Algorithm;
use crate::app::system_clock;
use crate::config::Config;
use crate::mint::keygen::{self, KeygenError};
use crate::mint::pkcs11::HsmLocation;
use crate::mint::{KeySet, SigningAlgorithm};
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub(super) enum KeysCommand {
    /// Make a new signing key and its certificate (to add to signing.keys as `published`).
    New(NewKey),
    /// Write the published key set as the registry reads it: a JWKS (`auth.token.jwks`,
    /// distribution 3.x) and/or a certificate bundle (`auth.token.rootcertbundle`). A key with a
    /// certificate is read from it: no private key file or HSM is opened.
    Export {
        /// The configuration file.
        #[arg(long, env = "REGISTRY_TOKEN_CONFIG", default_value = "etc/registry-token.yaml")]
        config: PathBuf,
        /// Where to write the JWKS.
        #[arg(long, required_unless_present = "certs")]
        jwks: Option<PathBuf>,
        /// Where to write the PEM certificate bundle.
        #[arg(long)]
        certs: Option<PathBuf>,
    },
    /// Show the configured keys: status, kids, algorithm, whether published now.
    List {
        /// The configuration file.
        #[arg(long, env = "REGISTRY_TOKEN_CONFIG", default_value = "etc/registry-token.yaml")]
        config: PathBuf,
    },
}

#[derive(Debug, Args)]
pub(super) struct NewKey {
    /// Directory for the files (created if missing); nothing in it is ever overwritten.
    #[arg(long)]
    dir: PathBuf,
    /// Base name of the files: NAME.pem (the key, mode 0600) and NAME.crt. Default: the date and
    /// time, `signing-YYYYMMDD-HHMMSS` (for --pkcs11: the key label).
    #[arg(long)]
    name: Option<String>,
    /// RS256 (RSA) or ES256 (P-256).
    #[arg(long, value_enum, default_value_t = Algorithm::Rs256)]
    algorithm: Algorithm,
    /// RSA key size: 2048, 3072 or 4096.
    #[arg(long, default_value_t = 2048)]
    bits: u32,
    /// Generate the key inside an HSM: the PKCS#11 module (e.g. /usr/lib/softhsm/libsofthsm2.so).
    /// Only the certificate is written.
    #[arg(long, value_name = "MODULE", requires_all = ["token_label", "key_label", "pin_file"])]
    pkcs11: Option<PathBuf>,
    /// The HSM token's label.
    #[arg(long)]
    token_label: Option<String>,
    /// The label of the new key in the token (never an existing one).
    #[arg(long)]
    key_label: Option<String>,
    /// A file holding the token's user PIN (mode 0600).
    #[arg(long)]
    pin_file: Option<PathBuf>,
}

pub(super) fn run(command: KeysCommand) -> Result<ExitCode, String> {
    match command {
        KeysCommand::New(new) => new_key(new),
        KeysCommand::Export { config, jwks, certs } => {
            // Public material only: no private key file or HSM is opened for a key with a
            // certificate.
            let config = Config::load(&config).map_err(|e| e.to_string())?;
            let keys =
                crate::mint::load_published(&config.signing.key_entries()).map_err(|e| e.to_string())?;
            let now = system_clock()();
            let published = keys.iter().filter(|k| k.is_published(now));
            if let Some(path) = jwks {
                write_replacing(&path, crate::mint::jwks(&keys, now).as_bytes())?;
                println!("wrote {} ({} keys)", path.display(), published.clone().count());
            }
            if let Some(path) = certs {
                write_replacing(&path, crate::mint::certificates_pem(&keys, now).as_bytes())?;
                let count = published.filter(|k| k.chain.is_some()).count();
                println!("wrote {} ({count} certificates)", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::List { config } => {
            let keys = load(&config)?;
            let now = system_clock()();
            for key in keys.keys() {
                let until = match key.retire_after {
                    Some(after) => format!(" until {}", crate::mint::rfc3339(after)),
                    None => String::new(),
                };
                let published = if key.is_published(now) { "published" } else { "no longer published" };
                println!(
                    "{:<9} {} {published}{until}\n          kid (libtrust)   {}\n          kid (thumbprint) {}\n          \
                     private key      {}",
                    key.status.name(),
                    key.public.algorithm().name(),
                    key.public.libtrust_kid(),
                    key.public.thumbprint_kid(),
                    key.custody,
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn load(config: &Path) -> Result<KeySet, String> {
    let config = Config::load(config).map_err(|e| e.to_string())?;
    crate::app::load_keys(&config.signing).map_err(|e| e.to_string())
}

fn new_key(new: NewKey) -> Result<ExitCode, String> {
    let algorithm = SigningAlgorithm::from(new.algorithm);
    let error = |e: KeygenError| e.to_string();
    let (entry, libtrust, thumbprint) = match (&new.pkcs11, &new.token_label, &new.key_label, &new.pin_file) {
        (Some(module), Some(token_label), Some(key_label), Some(pin_file)) => {
            let location =
                HsmLocation::new(module, token_label, key_label, pin_file).map_err(|e| e.to_string())?;
            let name = new.name.clone().unwrap_or_else(|| key_label.clone());
            let cert_file = new.dir.join(format!("{name}.crt"));
            let made = keygen::generate_in_hsm(&location, algorithm, new.bits, &cert_file).map_err(error)?;
            println!("generated {} key {key_label:?} inside token {token_label:?}", algorithm.name());
            println!("wrote {}", made.cert_file.display());
            let entry = format!(
                "  - pkcs11:\n      module: {}\n      token_label: {token_label}\n      key_label: {key_label}\n      \
                 pin_file: {}\n    cert_file: {}\n    status: published\n",
                module.display(),
                pin_file.display(),
                made.cert_file.display()
            );
            (entry, made.libtrust_kid, made.thumbprint_kid)
        }
        _ => {
            let name = new.name.clone().unwrap_or_else(default_name);
            let key_file = new.dir.join(format!("{name}.pem"));
            let cert_file = new.dir.join(format!("{name}.crt"));
            let made = keygen::generate_as(&key_file, &cert_file, algorithm, new.bits).map_err(error)?;
            println!("wrote {} (mode 0600)", made.key_file.display());
            println!("wrote {}", made.cert_file.display());
            let entry = format!(
                "  - key_file: {}\n    cert_file: {}\n    status: published\n",
                made.key_file.display(),
                made.cert_file.display()
            );
            (entry, made.libtrust_kid, made.thumbprint_kid)
        }
    };
    print_kids(&libtrust, &thumbprint);
    println!(
        "\nadd it to signing.keys as published (promote it to active once every registry trusts it):\n{entry}"
    );
    Ok(ExitCode::SUCCESS)
}

/// Both forms of a new key's `kid`.
pub(super) fn print_kids(libtrust: &str, thumbprint: &str) {
    println!("kid (libtrust, distribution 2.8): {libtrust}");
    println!("kid (thumbprint, RFC 7638):       {thumbprint}");
}

/// `signing-20261202-031500`, in UTC.
fn default_name() -> String {
    let now = crate::mint::rfc3339(system_clock()());
    let digits: String = now.chars().filter(char::is_ascii_digit).collect();
    format!("signing-{}-{}", &digits[..8], &digits[8..14])
}

/// Replaces `path` whole, readable by all (public keys, bundles, exports): a registry never reads
/// half a file.
pub(super) fn write_replacing(path: &Path, contents: &[u8]) -> Result<(), String> {
    crate::files::write_replacing(path, contents, 0o644)
}
