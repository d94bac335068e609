//! Policy bundles: everything an instance needs to decide, as one signed, deterministic file —
//! a gzip'd tar of
//!
//! | file | what |
//! |---|---|
//! | `manifest.json` | `format`, `revision`, `created_at`, `wit_version`, `policy`, `policy_digest`, `settings_digest` |
//! | `policy.wasm` | the component (absent for a built-in policy, which `policy` names instead) |
//! | `settings.json` | the settings handed to `configure` (canonical JSON: sorted keys, compact) |
//! | `cases.yaml` | optional: `policy test` cases, run by `bundle test` with the bundle's settings |
//! | `revocations.json` | optional: a snapshot of the ledger's revocations, enforced by the host |
//! | `authority-jwks.json` | optional: the Authority's keys, for a site that cannot reach it |
//! | `signatures.json` | `{"signatures": [JWS]}`: RS256 or ES256 over the other files' SHA-256 |
//!
//! The same inputs give the same bytes: entries sorted by name, owner 0, mode 0644, mtime 0, gzip
//! without a timestamp or a name. An RS256 signature is deterministic too, an ES256 one is not.
//!
//! Reading is bounded before anything is unpacked (`archive`): the file's size, the size it
//! expands to, the number of entries, each entry's declared size, and only regular files with the
//! names above (no `..`, no absolute path, no link). With trusted keys a signature is required and
//! checked before any content is parsed: a missing or extra file, a hash that differs, an unknown
//! `kid` or a bad signature refuses the bundle. Then the content is checked against the manifest.
//!
//! `source` fetches a bundle from a file, an HTTPS URL (conditionally, `If-None-Match`) or an OCI
//! registry (`oci-client`), and pushes one to a registry as an OCI artifact. This module knows
//! nothing of serving HTTP: `app` decides what a bundle replaces and `http` shows its state.

mod archive;
mod build;
mod source;

pub use build::{BuildInputs, PolicyInput, build};
pub use source::{Fetch, FetchOptions, Fetched, fetch, push, read_file};

use crate::jws::{JwsError, TrustedKeys};
use crate::ledger::Revocation;
use crate::mint::{SignError, Signer};
use crate::policy::{Builtin, sha256_hex, supported_wit_versions, wit_version};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `manifest.json`.
pub const MANIFEST: &str = "manifest.json";
/// `policy.wasm`.
pub const POLICY: &str = "policy.wasm";
/// `settings.json`.
pub const SETTINGS: &str = "settings.json";
/// `cases.yaml`.
pub const CASES: &str = "cases.yaml";
/// `revocations.json`.
pub const REVOCATIONS: &str = "revocations.json";
/// `authority-jwks.json`.
pub const AUTHORITY_JWKS: &str = "authority-jwks.json";
/// `signatures.json`.
pub const SIGNATURES: &str = "signatures.json";
/// Every file a bundle may hold, in the (sorted) order they are written.
pub const FILES: [&str; 7] = [AUTHORITY_JWKS, CASES, MANIFEST, POLICY, REVOCATIONS, SETTINGS, SIGNATURES];

/// The `format` of the manifests this version writes and reads.
pub const FORMAT: u32 = 1;
/// The JWS `typ` of a bundle signature.
pub const SIGNATURE_TYPE: &str = "registry-token-bundle";
/// The media type of a bundle pushed to an OCI registry (its one layer).
pub const MEDIA_TYPE: &str = "application/vnd.stellaops.registry-token.bundle.v1.tar+gzip";
/// The media type of the pushed artifact's config blob: the bundle's `manifest.json`.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.stellaops.registry-token.bundle.manifest.v1+json";
/// The pushed artifact's `artifactType`.
pub const ARTIFACT_TYPE: &str = "application/vnd.stellaops.registry-token.bundle.v1";

/// `manifest.json`: what the bundle is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The bundle format ([`FORMAT`]).
    pub format: u32,
    /// Increases with every bundle published for a site: a lower one than the live one is a
    /// rollback and is refused.
    pub revision: u64,
    /// When it was built, as given to `bundle build` (RFC 3339, seconds): never the clock, so the
    /// same inputs give the same bundle.
    pub created_at: String,
    /// The version of the WIT contract the policy implements (`0.1.0`).
    pub wit_version: String,
    /// `policy.wasm`, or the built-in policy it names (`builtin:plan-catalogue`).
    pub policy: String,
    /// `sha256:<hex>` of the component (the built-in's, for a built-in policy).
    pub policy_digest: String,
    /// `sha256:<hex>` of `settings.json`; the live policy's settings version.
    pub settings_digest: String,
}

/// Why a bundle was refused. The message names the file or entry at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// Larger than the limit, packed or unpacked.
    #[error("{0}")]
    TooLarge(String),
    /// An entry that must never be unpacked: `..`, an absolute path, a link, a huge declared size,
    /// too many entries.
    #[error("{0}")]
    Unsafe(String),
    /// Not a gzip'd tar, or a file that does not parse.
    #[error("{0}")]
    Malformed(String),
    /// A file that is not part of a bundle, or not covered by its signature.
    #[error("{0}")]
    Extra(String),
    /// A file the bundle needs, or its signature lists, is absent.
    #[error("{0}")]
    Missing(String),
    /// A file's SHA-256 differs from the one signed or from the manifest's.
    #[error("{0}")]
    Digest(String),
    /// No signature, where one is required.
    #[error("the bundle is not signed (it has no signatures.json), and a signature is required")]
    Unsigned,
    /// The signature is not acceptable.
    #[error("its signature is refused: {0}")]
    Signature(JwsError),
    /// Older than (or as old as, but different from) the live bundle.
    #[error("{0}")]
    Rollback(String),
    /// The policy cannot run here: a WIT version this host does not load, another build's
    /// built-in policy.
    #[error("{0}")]
    Policy(String),
    /// It could not be fetched.
    #[error("{0}")]
    Unavailable(String),
    /// It could not be written.
    #[error("{0}")]
    Write(String),
}

impl BundleError {
    /// A short stable name, for metrics (`registry_token_bundle_refusals_total{reason}`).
    pub fn reason(&self) -> &'static str {
        match self {
            BundleError::TooLarge(_) => "too_large",
            BundleError::Unsafe(_) => "unsafe_entry",
            BundleError::Malformed(_) => "malformed",
            BundleError::Extra(_) | BundleError::Missing(_) => "files",
            BundleError::Digest(_) => "digest",
            BundleError::Unsigned => "unsigned",
            BundleError::Signature(JwsError::UnknownKey { .. }) => "unknown_key",
            BundleError::Signature(_) => "signature",
            BundleError::Rollback(_) => "rollback",
            BundleError::Policy(_) => "policy",
            BundleError::Unavailable(_) => "unavailable",
            BundleError::Write(_) => "write",
        }
    }
}

/// The policy a bundle carries.
#[derive(Clone, Copy, Debug)]
pub enum BundlePolicy<'a> {
    /// A policy built into this binary.
    Builtin(Builtin),
    /// `policy.wasm`.
    Component(&'a [u8]),
}

impl BundlePolicy<'_> {
    /// The component's bytes.
    pub fn wasm(&self) -> &[u8] {
        match self {
            BundlePolicy::Builtin(builtin) => builtin.wasm(),
            BundlePolicy::Component(bytes) => bytes,
        }
    }
}

/// `signatures.json`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Signatures {
    signatures: Vec<String>,
}

/// What a bundle signature signs: every other file and its SHA-256.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignedFiles {
    files: Vec<SignedFile>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignedFile {
    name: String,
    sha256: String,
}

/// `revocations.json`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Revocations {
    revocations: Vec<Revocation>,
}

/// A bundle whose limits, signature (when keys were given) and content have been checked.
#[derive(Clone)]
pub struct Bundle {
    manifest: Manifest,
    files: BTreeMap<&'static str, Vec<u8>>,
    sha256: String,
    content_sha256: String,
    signed_by: Option<String>,
    revocations: Vec<Revocation>,
}

/// The manifest, the digest, the signer and each file's size: never the files themselves.
impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let files: Vec<(&str, usize)> = self.files.iter().map(|(name, bytes)| (*name, bytes.len())).collect();
        f.debug_struct("Bundle")
            .field("manifest", &self.manifest)
            .field("sha256", &self.sha256)
            .field("signed_by", &self.signed_by)
            .field("files", &files)
            .finish_non_exhaustive()
    }
}

impl Bundle {
    /// Reads `bytes` (at most `max_bytes`, packed and unpacked) and checks it. With `keys`, a
    /// valid signature by one of them is required, and checked before any content is parsed;
    /// with none, a signature is not checked.
    pub fn open(bytes: &[u8], max_bytes: u64, keys: &TrustedKeys) -> Result<Bundle, BundleError> {
        let files = archive::read(bytes, max_bytes)?;
        let signed_by = match keys.is_empty() {
            true => None,
            false => Some(check_signature(&files, keys)?),
        };
        Bundle::from_files(files, sha256_hex(bytes), signed_by)
    }

    /// [`Bundle::open`] without checking a signature: for inspecting, testing and signing.
    pub fn open_unverified(bytes: &[u8], max_bytes: u64) -> Result<Bundle, BundleError> {
        Bundle::open(bytes, max_bytes, &TrustedKeys::default())
    }

    fn from_files(
        files: BTreeMap<&'static str, Vec<u8>>,
        sha256: String,
        signed_by: Option<String>,
    ) -> Result<Bundle, BundleError> {
        let manifest = parse_manifest(&files)?;
        let revocations = check_content(&files, &manifest)?;
        let content_sha256 = sha256_hex(&signed_files(&files)?);
        Ok(Bundle { manifest, files, sha256, content_sha256, signed_by, revocations })
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// `sha256:<hex>` of the bundle file as read (or written).
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// `sha256:<hex>` of what a signature covers: every file but `signatures.json`, by name and
    /// SHA-256. The same for a bundle signed again (an ES256 signature differs each time).
    pub fn content_sha256(&self) -> &str {
        &self.content_sha256
    }

    /// The `kid` of the trusted key whose signature was checked, if one was.
    pub fn signed_by(&self) -> Option<&str> {
        self.signed_by.as_deref()
    }

    /// The policy.
    pub fn policy(&self) -> BundlePolicy<'_> {
        match self.files.get(POLICY) {
            Some(bytes) => BundlePolicy::Component(bytes),
            // Checked at open: the manifest names a built-in this binary has.
            None => BundlePolicy::Builtin(
                self.manifest
                    .policy
                    .strip_prefix(Builtin::PREFIX)
                    .and_then(Builtin::from_name)
                    .unwrap_or(Builtin::PlanCatalogue),
            ),
        }
    }

    /// `settings.json`, as the policy receives it.
    pub fn settings_json(&self) -> &str {
        // Checked at open: UTF-8 JSON.
        self.files.get(SETTINGS).and_then(|b| std::str::from_utf8(b).ok()).unwrap_or("{}")
    }

    /// `cases.yaml`, if the bundle has one.
    pub fn cases(&self) -> Option<&str> {
        self.files.get(CASES).and_then(|b| std::str::from_utf8(b).ok())
    }

    /// The revocations of `revocations.json` (none without one).
    pub fn revocations(&self) -> &[Revocation] {
        &self.revocations
    }

    /// `authority-jwks.json`, if the bundle has one.
    pub fn authority_jwks(&self) -> Option<&[u8]> {
        self.files.get(AUTHORITY_JWKS).map(Vec::as_slice)
    }

    /// Every file and its size and SHA-256, in order.
    pub fn files(&self) -> impl Iterator<Item = (&'static str, &[u8])> {
        self.files.iter().map(|(name, bytes)| (*name, bytes.as_slice()))
    }

    /// The header of each signature in `signatures.json` (`alg`, `kid`, `typ`), unverified: for
    /// `bundle inspect`.
    pub fn signature_headers(&self) -> Vec<serde_json::Value> {
        let Some(bytes) = self.files.get(SIGNATURES) else { return Vec::new() };
        let Ok(signatures) = serde_json::from_slice::<Signatures>(bytes) else { return Vec::new() };
        signatures
            .signatures
            .iter()
            .filter_map(|jws| jws.split('.').next())
            .filter_map(|header| data_encoding::BASE64URL_NOPAD.decode(header.as_bytes()).ok())
            .filter_map(|header| serde_json::from_slice(&header).ok())
            .collect()
    }

    /// The bundle signed by `signer` as `kid` (any earlier signature replaced), as bytes.
    pub fn signed(&self, signer: &Signer, kid: &str) -> Result<(Bundle, Vec<u8>), BundleError> {
        let mut files = self.files.clone();
        files.remove(SIGNATURES);
        let payload = signed_files(&files)?;
        let jws = crate::jws::sign(signer, kid, SIGNATURE_TYPE, &payload).map_err(|e| match e {
            SignError::Crypto => BundleError::Write("the signature failed".into()),
            SignError::Hsm(error) => BundleError::Write(format!("the HSM did not sign: {error}")),
        })?;
        let signatures = to_json(&Signatures { signatures: vec![jws] })?;
        files.insert(SIGNATURES, signatures);
        let bytes = archive::write(&files)?;
        let bundle = Bundle { files, sha256: sha256_hex(&bytes), signed_by: None, ..self.clone() };
        Ok((bundle, bytes))
    }
}

/// Pretty JSON with a final newline: the files a bundle holds are read by people too.
fn to_json(value: &impl Serialize) -> Result<Vec<u8>, BundleError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| BundleError::Write(e.to_string()))?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// The signed list: every file but `signatures.json`, by name, with its SHA-256.
fn signed_files(files: &BTreeMap<&'static str, Vec<u8>>) -> Result<Vec<u8>, BundleError> {
    let files = files
        .iter()
        .filter(|(name, _)| **name != SIGNATURES)
        .map(|(name, bytes)| SignedFile { name: (*name).to_owned(), sha256: hex_sha256(bytes) })
        .collect();
    serde_json::to_vec(&SignedFiles { files }).map_err(|e| BundleError::Write(e.to_string()))
}

/// Where `policy.cache_dir` keeps a copy of the last bundle applied from a remote `source` (named
/// as `/readyz` and the ledger's record name it): a start that cannot fetch the source starts on
/// it, checked like any bundle.
pub fn last_applied_copy(
    cache_dir: &std::path::Path,
    source: &crate::config::BundleSource,
) -> std::path::PathBuf {
    cache_dir.join("bundles").join(format!("{}.tar.gz", hex_sha256(source.to_string().as_bytes())))
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    data_encoding::HEXLOWER.encode(&sha2::Sha256::digest(bytes))
}

/// The signature: present, one, by a trusted key, over exactly the files the bundle holds, each
/// with the SHA-256 it has. Returns the signer's `kid`.
fn check_signature(
    files: &BTreeMap<&'static str, Vec<u8>>,
    keys: &TrustedKeys,
) -> Result<String, BundleError> {
    let Some(bytes) = files.get(SIGNATURES) else {
        return Err(BundleError::Unsigned);
    };
    let signatures: Signatures =
        serde_json::from_slice(bytes).map_err(|e| BundleError::Malformed(format!("{SIGNATURES}: {e}")))?;
    let [jws] = signatures.signatures.as_slice() else {
        return Err(BundleError::Malformed(format!(
            "{SIGNATURES} holds {} signatures; a bundle carries exactly one",
            signatures.signatures.len()
        )));
    };
    let verified = keys.verify(jws, SIGNATURE_TYPE).map_err(BundleError::Signature)?;
    let signed: SignedFiles = serde_json::from_slice(&verified.payload)
        .map_err(|e| BundleError::Malformed(format!("the signed file list: {e}")))?;
    for file in &signed.files {
        let Some(bytes) = files.iter().find(|(name, _)| **name == file.name).map(|(_, b)| b) else {
            return Err(BundleError::Missing(format!(
                "missing file {}: the signature lists it, the bundle does not hold it",
                file.name
            )));
        };
        let found = hex_sha256(bytes);
        if found != file.sha256 {
            return Err(BundleError::Digest(format!(
                "{} does not match its signed SHA-256 (signed {}, found {found})",
                file.name, file.sha256
            )));
        }
    }
    if let Some(extra) =
        files.keys().find(|name| **name != SIGNATURES && !signed.files.iter().any(|f| f.name == **name))
    {
        return Err(BundleError::Extra(format!("extra file {extra}: the signature does not cover it")));
    }
    Ok(verified.kid)
}

fn parse_manifest(files: &BTreeMap<&'static str, Vec<u8>>) -> Result<Manifest, BundleError> {
    let bytes =
        files.get(MANIFEST).ok_or_else(|| BundleError::Missing(format!("missing file {MANIFEST}")))?;
    let manifest: Manifest =
        serde_json::from_slice(bytes).map_err(|e| BundleError::Malformed(format!("{MANIFEST}: {e}")))?;
    if manifest.format != FORMAT {
        return Err(BundleError::Malformed(format!(
            "{MANIFEST}: format {} is not one this registry-token reads ({FORMAT})",
            manifest.format
        )));
    }
    if i64::try_from(manifest.revision).is_err() {
        return Err(BundleError::Malformed(format!(
            "{MANIFEST}: revision {} is larger than {}",
            manifest.revision,
            i64::MAX
        )));
    }
    if let Err(refused) = crate::rfc3339::parse_millis(&manifest.created_at) {
        return Err(BundleError::Malformed(format!(
            "{MANIFEST}: created_at {:?} is {refused}",
            manifest.created_at
        )));
    }
    Ok(manifest)
}

/// The content against the manifest: the policy and settings digests, the policy's WIT version,
/// and that every optional file parses. Returns the revocations.
fn check_content(
    files: &BTreeMap<&'static str, Vec<u8>>,
    manifest: &Manifest,
) -> Result<Vec<Revocation>, BundleError> {
    let settings =
        files.get(SETTINGS).ok_or_else(|| BundleError::Missing(format!("missing file {SETTINGS}")))?;
    serde_json::from_slice::<serde_json::Value>(settings)
        .map_err(|e| BundleError::Malformed(format!("{SETTINGS}: not JSON: {e}")))?;
    let found = sha256_hex(settings);
    if found != manifest.settings_digest {
        return Err(BundleError::Digest(format!(
            "{SETTINGS} does not match the manifest's settings_digest ({}; found {found})",
            manifest.settings_digest
        )));
    }

    let wasm: &[u8] = match (manifest.policy.as_str(), files.get(POLICY)) {
        (POLICY, Some(wasm)) => wasm,
        (POLICY, None) => {
            return Err(BundleError::Missing(format!("missing file {POLICY}: the manifest names it")));
        }
        (named, None) => match named.strip_prefix(Builtin::PREFIX).and_then(Builtin::from_name) {
            Some(builtin) => builtin.wasm(),
            None => {
                return Err(BundleError::Policy(format!(
                    "{MANIFEST}: policy {named:?} is neither {POLICY} nor a built-in policy of this registry-token"
                )));
            }
        },
        (named, Some(_)) => {
            return Err(BundleError::Extra(format!(
                "extra file {POLICY}: the manifest names the built-in policy {named}"
            )));
        }
    };
    let found = sha256_hex(wasm);
    if found != manifest.policy_digest {
        return Err(match files.contains_key(POLICY) {
            true => BundleError::Digest(format!(
                "{POLICY} does not match the manifest's policy_digest ({}; found {found})",
                manifest.policy_digest
            )),
            false => BundleError::Policy(format!(
                "the bundle was built for {} {} and this registry-token's is {found}: build the bundle with \
                 this registry-token, or ship the component as {POLICY}",
                manifest.policy, manifest.policy_digest
            )),
        });
    }
    let version = wit_version(wasm).map_err(|e| BundleError::Policy(format!("{}: {e}", manifest.policy)))?;
    if version != manifest.wit_version {
        return Err(BundleError::Policy(format!(
            "{MANIFEST} says WIT {} but {} implements {version}",
            manifest.wit_version, manifest.policy
        )));
    }
    let supported = supported_wit_versions();
    if !supported.contains(&version.as_str()) {
        return Err(BundleError::Policy(format!(
            "{} implements WIT {version}; this registry-token loads {}",
            manifest.policy,
            supported.join(", ")
        )));
    }

    if let Some(cases) = files.get(CASES) {
        std::str::from_utf8(cases).map_err(|_| BundleError::Malformed(format!("{CASES} is not UTF-8")))?;
    }
    if let Some(jwks) = files.get(AUTHORITY_JWKS) {
        crate::authority::KeySet::from_json(jwks, AUTHORITY_JWKS)
            .map_err(|e| BundleError::Malformed(e.to_string()))?;
    }
    match files.get(REVOCATIONS) {
        Some(bytes) => serde_json::from_slice::<Revocations>(bytes)
            .map(|r| r.revocations)
            .map_err(|e| BundleError::Malformed(format!("{REVOCATIONS}: {e}"))),
        None => Ok(Vec::new()),
    }
}
