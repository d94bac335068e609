//! `registry-token ledger export|verify`: the ledger's events as deterministic JSON lines with a
//! detached signature, for auditors; and the check that finds an edited line by its number.
//!
//! `F` holds one event per line, in id order (which is time order), each a JSON object with its
//! keys sorted and no spaces: the same events always give the same bytes. `F.sig` is a compact JWS
//! (`typ: registry-token-ledger-export`) over the line count, the window, the file's SHA-256 and
//! each line's SHA-256 — so `verify` names the first line that differs from what was signed.

use super::signer::{SignerArgs, VerifierArgs, trust};
use crate::config::Config;
use crate::jws::{self, TrustedKeys};
use crate::ledger::Millis;
use crate::mint::Signer;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The JWS `typ` of an export's signature.
pub(super) const SIGNATURE_TYPE: &str = "registry-token-ledger-export";
/// The export's format, named in what is signed.
const FORMAT: &str = "registry-token-ledger-export/1";
/// Events read from the ledger at a time.
const PAGE: usize = 1000;

/// What the signature signs.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Signed {
    format: String,
    /// At or after (RFC 3339), as asked.
    since: Option<String>,
    /// Before (RFC 3339), as asked.
    until: Option<String>,
    /// How many lines (events).
    lines: usize,
    /// SHA-256 (hex) of the whole file.
    sha256: String,
    /// SHA-256 (hex) of each line, without its newline, in order.
    line_sha256: Vec<String>,
}

/// `F.sig`, unless named otherwise.
pub(super) fn signature_path(file: &Path, signature: Option<PathBuf>) -> PathBuf {
    signature.unwrap_or_else(|| {
        let mut name = file.as_os_str().to_owned();
        name.push(".sig");
        PathBuf::from(name)
    })
}

fn hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(&Sha256::digest(bytes))
}

/// Writes the events of the configured ledger at or after `since` and before `until` to `out`,
/// and the signature beside it, signed by `signer` (default: the configuration's active signing
/// key).
pub(super) async fn export(
    config_path: &Path,
    since: Option<String>,
    until: Option<String>,
    out: &Path,
    signature: Option<PathBuf>,
    signer: &SignerArgs,
) -> Result<ExitCode, String> {
    let config = Config::load(config_path).map_err(|e| e.to_string())?;
    let time = |value: &Option<String>, name: &str| {
        value.as_deref().map(|v| Millis::parse(v).map_err(|e| format!("--{name}: {e}"))).transpose()
    };
    let (since_at, until_at) = (time(&since, "since")?, time(&until, "until")?);
    crate::ledger::check_window(since_at, until_at).map_err(|e| format!("--{e}"))?;
    // The key first: a missing key must not leave a half-made export behind.
    let given = signer.signer()?;
    let configured = match given {
        Some(_) => None,
        None => Some(crate::app::load_keys(&config.signing).map_err(|e| e.to_string())?),
    };
    let (signer, kid): (&Signer, String) = match (&given, &configured) {
        (Some((signer, kid)), _) => (signer, kid.clone()),
        (None, Some(keys)) => (keys.minter().signer(), jws::default_kid(keys.minter().signer().public())),
        (None, None) => return Err("no signing key".into()),
    };
    let ledger = super::ledger::open_configured(&config.ledger, super::ledger::IfMissing::Refuse)
        .await?
        .ok_or("ledger.url is none: this configuration keeps no ledger")?;

    let directory = out.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut file = tempfile::NamedTempFile::new_in(directory)
        .map_err(|e| format!("cannot write in {}: {e}", directory.display()))?;
    let mut whole = Sha256::new();
    let mut line_sha256 = Vec::new();
    let window = ledger.export_window(since_at, until_at).await.map_err(|e| e.to_string())?;
    let mut after: Option<String> = None;
    while let Some(window) = &window {
        let page = ledger.export_page(window, after.as_deref(), PAGE).await.map_err(|e| e.to_string())?;
        for event in &page {
            let mut value = serde_json::to_value(event).map_err(|e| e.to_string())?;
            value.sort_all_objects();
            let mut line = serde_json::to_vec(&value).map_err(|e| e.to_string())?;
            line_sha256.push(hex(&line));
            line.push(b'\n');
            whole.update(&line);
            file.write_all(&line).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
        }
        match page.last() {
            Some(last) if page.len() == PAGE => after = Some(last.id.clone()),
            _ => break,
        }
    }
    let signed = Signed {
        format: FORMAT.to_owned(),
        since: since_at.map(|t| t.to_string()),
        until: until_at.map(|t| t.to_string()),
        lines: line_sha256.len(),
        sha256: data_encoding::HEXLOWER.encode(&whole.finalize()),
        line_sha256,
    };
    let payload = serde_json::to_vec(&signed).map_err(|e| e.to_string())?;
    let jws = jws::sign(signer, &kid, SIGNATURE_TYPE, &payload).map_err(|e| format!("cannot sign: {e}"))?;
    file.as_file().sync_all().map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    file.persist(out).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    let signature = signature_path(out, signature);
    super::keys::write_replacing(&signature, format!("{jws}\n").as_bytes())?;
    println!("{}  {}", signed.sha256, out.display());
    println!(
        "{} events, signed by kid {kid} ({}) in {}",
        signed.lines,
        signer.algorithm().name(),
        signature.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Checks `file` against its signature: signed by a trusted key (given, or the configuration's
/// signing keys), and every line as signed. The first line that differs is named.
pub(super) fn verify(
    file: &Path,
    signature: Option<PathBuf>,
    keys: &VerifierArgs,
    config_path: &Path,
) -> Result<ExitCode, String> {
    let trusted = match keys.given() {
        true => keys.trusted()?,
        false => {
            let config = Config::load(config_path).map_err(|e| e.to_string())?;
            let keys = crate::app::load_keys(&config.signing).map_err(|e| e.to_string())?;
            let mut trusted = TrustedKeys::default();
            for key in keys.keys() {
                trust(&mut trusted, &key.public);
            }
            trusted
        }
    };
    let signature_file = signature_path(file, signature);
    let compact = std::fs::read_to_string(&signature_file)
        .map_err(|e| format!("cannot read the signature {}: {e}", signature_file.display()))?;
    let verified =
        trusted.verify(&compact, SIGNATURE_TYPE).map_err(|e| format!("{}: {e}", signature_file.display()))?;
    let signed: Signed = serde_json::from_slice(&verified.payload)
        .map_err(|e| format!("{}: not an export's signature: {e}", signature_file.display()))?;
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let shown = file.display();
    let mut lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    if lines.last().is_some_and(|last| last.is_empty()) {
        lines.pop();
    }
    for (index, line) in lines.iter().enumerate() {
        let number = index + 1;
        match signed.line_sha256.get(index) {
            Some(expected) if *expected == hex(line) => {}
            Some(_) => {
                return Err(format!(
                    "{shown}: line {number} is not the line that was signed (it was changed)"
                ));
            }
            None => {
                return Err(format!(
                    "{shown}: line {number} was not signed: the export had {} lines",
                    signed.line_sha256.len()
                ));
            }
        }
    }
    if lines.len() < signed.lines {
        return Err(format!(
            "{shown}: line {} is missing: the export had {} lines, the file has {}",
            lines.len() + 1,
            signed.lines,
            lines.len()
        ));
    }
    if hex(&bytes) != signed.sha256 {
        return Err(format!(
            "{shown}: its lines are as signed but the file is not (its line endings changed)"
        ));
    }
    println!(
        "{shown}: {} events{}{}, signed by kid {} ({}): verified",
        signed.lines,
        signed.since.map(|t| format!(" since {t}")).unwrap_or_default(),
        signed.until.map(|t| format!(" until {t}")).unwrap_or_default(),
        verified.kid,
        verified.algorithm.name()
    );
    Ok(ExitCode::SUCCESS)
}
