//! `bundle build`: a bundle from its inputs, the same bytes for the same inputs.

use super::{
    AUTHORITY_JWKS, Bundle, BundleError, CASES, FORMAT, MANIFEST, Manifest, POLICY, REVOCATIONS, Revocations,
    SETTINGS, archive, to_json,
};
use crate::ledger::Revocation;
use crate::policy::{Builtin, sha256_hex, wit_version};
use std::collections::BTreeMap;

/// The policy a bundle is built with.
#[derive(Clone, Debug)]
pub enum PolicyInput {
    /// A built-in policy: named in the manifest, not copied.
    Builtin(Builtin),
    /// A component, copied as `policy.wasm`.
    Component(Vec<u8>),
}

/// What `bundle build` puts in a bundle. Nothing here is read from the clock or the machine.
#[derive(Clone, Debug)]
pub struct BuildInputs {
    /// The policy.
    pub policy: PolicyInput,
    /// The settings, as JSON (written canonically: sorted keys, compact).
    pub settings: serde_json::Value,
    /// A case file, copied as is.
    pub cases: Option<Vec<u8>>,
    /// Revocations to carry (written in id order).
    pub revocations: Option<Vec<Revocation>>,
    /// The Authority's JWKS, copied as is (it must parse).
    pub authority_jwks: Option<Vec<u8>>,
    /// The revision (at least 1).
    pub revision: u64,
    /// When it is built: RFC 3339 (written to the second, in UTC).
    pub created_at: String,
}

/// Builds the (unsigned) bundle `inputs` describe, and its bytes.
pub fn build(inputs: BuildInputs) -> Result<(Bundle, Vec<u8>), BundleError> {
    if inputs.revision == 0 || i64::try_from(inputs.revision).is_err() {
        return Err(BundleError::Malformed(format!("the revision must be between 1 and {}", i64::MAX)));
    }
    let created_at = crate::rfc3339::parse_seconds(&inputs.created_at).map_err(|refused| {
        BundleError::Malformed(format!(
            "created_at {:?} is {refused} (2026-12-01T00:00:00Z)",
            inputs.created_at
        ))
    })?;
    let created_at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(created_at);
    let created_at = humantime::format_rfc3339_seconds(created_at).to_string();

    let mut settings = inputs.settings;
    settings.sort_all_objects();
    let settings = serde_json::to_vec(&settings).map_err(|e| BundleError::Write(e.to_string()))?;

    let mut files: BTreeMap<&'static str, Vec<u8>> = BTreeMap::new();
    let (policy, wasm): (String, &[u8]) = match &inputs.policy {
        PolicyInput::Builtin(builtin) => (builtin.to_string(), builtin.wasm()),
        PolicyInput::Component(bytes) => (POLICY.to_owned(), bytes),
    };
    let wit_version =
        wit_version(wasm).map_err(|e| BundleError::Policy(format!("the policy cannot be bundled: {e}")))?;
    let manifest = Manifest {
        format: FORMAT,
        revision: inputs.revision,
        created_at,
        wit_version,
        policy,
        policy_digest: sha256_hex(wasm),
        settings_digest: sha256_hex(&settings),
    };
    files.insert(MANIFEST, to_json(&manifest)?);
    if let PolicyInput::Component(bytes) = inputs.policy {
        files.insert(POLICY, bytes);
    }
    files.insert(SETTINGS, settings);
    if let Some(cases) = inputs.cases {
        files.insert(CASES, cases);
    }
    if let Some(mut revocations) = inputs.revocations {
        revocations.sort_by(|a, b| a.id.cmp(&b.id));
        files.insert(REVOCATIONS, to_json(&Revocations { revocations })?);
    }
    if let Some(jwks) = inputs.authority_jwks {
        crate::authority::KeySet::from_json(&jwks, AUTHORITY_JWKS)
            .map_err(|e| BundleError::Malformed(e.to_string()))?;
        files.insert(AUTHORITY_JWKS, jwks);
    }
    let bytes = archive::write(&files)?;
    // Read back through the same checks a server applies: what is built can be served.
    let bundle = Bundle::from_files(files, sha256_hex(&bytes), None)?;
    Ok((bundle, bytes))
}
