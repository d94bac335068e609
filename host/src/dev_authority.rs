//! A development Authority, for trials and tests only: a key pair, its JWKS, and a command that
//! prints signed access tokens. `serve` never uses it to validate anything beyond reading the JWKS
//! file it writes, exactly as it would read a real Authority's.

use crate::mint::keygen::{KeygenError, write_new};
use crate::mint::{SigningAlgorithm, SigningKey, secret_pem};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use data_encoding::BASE64URL_NOPAD;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// The private key of the development Authority.
pub const KEY_FILE: &str = "authority-key.pem";
/// Its JWKS: point `authority.jwks_file` here.
pub const JWKS_FILE: &str = "jwks.json";
/// Its issuer and key id.
pub const INFO_FILE: &str = "authority.json";

/// Why the development Authority failed.
#[derive(Debug, thiserror::Error)]
pub enum DevAuthorityError {
    /// Files could not be written.
    #[error(transparent)]
    Write(#[from] KeygenError),
    /// Files could not be read.
    #[error(
        "cannot read the development Authority in {dir}: {reason} (run `registry-token dev-authority init --dir {dir}` first)"
    )]
    Read {
        /// Its directory.
        dir: String,
        /// What failed.
        reason: String,
    },
    /// Crypto failed.
    #[error("cannot generate or use the development Authority key: {0}")]
    Crypto(String),
}

/// `authority.json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Info {
    /// `iss` of its tokens.
    pub issuer: String,
    /// `kid` of its key.
    pub kid: String,
}

/// Creates a development Authority in `dir`: an RSA key, `jwks.json` and `authority.json`.
pub fn init(dir: &Path, issuer: &str) -> Result<PathBuf, DevAuthorityError> {
    std::fs::create_dir_all(dir).map_err(|source| KeygenError::Write { path: dir.to_owned(), source })?;
    let crypto = |e: &dyn std::fmt::Display| DevAuthorityError::Crypto(e.to_string());
    let pair = KeyPair::generate(KeySize::Rsa2048).map_err(|e| crypto(&e))?;
    let pkcs8 = pair.as_der().map_err(|e| crypto(&e))?;
    // The same zeroized PEM encoding and the same key type as the service's own signing key.
    let pem = secret_pem::encode("PRIVATE KEY", pkcs8.as_ref());
    let key = SigningKey::from_pem(pem.as_bytes(), SigningAlgorithm::RS256, "the development Authority key")
        .map_err(|e| crypto(&e))?;
    let jwk = key.public_jwk();
    let kid = key.thumbprint_kid();
    let jwks = json!({ "keys": [jwk] });
    let info = Info { issuer: issuer.to_owned(), kid };

    let (jwks, info) = (pretty(&jwks)?, pretty(&info)?);
    let files = [
        (KEY_FILE, pem.as_bytes(), 0o600),
        (JWKS_FILE, jwks.as_bytes(), 0o644),
        (INFO_FILE, info.as_bytes(), 0o644),
    ];
    // All three or none: a key left beside someone else's `jwks.json` would match nothing, and
    // make every later `init` in the directory fail.
    if let Some(existing) =
        files.iter().map(|(name, ..)| dir.join(name)).find(|path| path.symlink_metadata().is_ok())
    {
        return Err(KeygenError::Exists(existing).into());
    }
    let mut written = Vec::new();
    for (name, contents, mode) in files {
        let path = dir.join(name);
        if let Err(error) = write_new(&path, contents, mode) {
            for path in written {
                let _ = std::fs::remove_file(path);
            }
            return Err(error.into());
        }
        written.push(path);
    }
    Ok(dir.join(JWKS_FILE))
}

fn pretty(value: &impl Serialize) -> Result<String, DevAuthorityError> {
    serde_json::to_string_pretty(value)
        .map_err(|e| DevAuthorityError::Crypto(format!("cannot encode JSON: {e}")))
}

/// What goes into a development token.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// `sub`.
    pub subject: String,
    /// `stellaops:plan`.
    pub plan: Option<String>,
    /// `stellaops:license`.
    pub license: Option<String>,
    /// `stellaops:tenant`.
    pub tenant: Option<String>,
    /// `scope`, space-separated.
    pub scope: String,
    /// `aud`.
    pub audience: String,
    /// `client_id`.
    pub client_id: String,
    /// Seconds until `exp` (negative makes an expired token, for tests).
    pub ttl_seconds: i64,
    /// Extra claims, merged last.
    pub extra: Map<String, Value>,
}

/// Signs an access token with the development Authority in `dir`, issued at `now`.
pub fn token(dir: &Path, request: &TokenRequest, now: u64) -> Result<String, DevAuthorityError> {
    let read = |name: &str| {
        std::fs::read(dir.join(name)).map_err(|e| DevAuthorityError::Read {
            dir: dir.display().to_string(),
            reason: format!("{name}: {e}"),
        })
    };
    let info: Info = serde_json::from_slice(&read(INFO_FILE)?).map_err(|e| DevAuthorityError::Read {
        dir: dir.display().to_string(),
        reason: format!("{INFO_FILE}: {e}"),
    })?;
    let pem = Zeroizing::new(read(KEY_FILE)?);
    let key = SigningKey::from_pem(&pem, SigningAlgorithm::RS256, "the development Authority key")
        .map_err(|e| DevAuthorityError::Crypto(e.to_string()))?;

    let now = now as i64;
    let mut claims = Map::new();
    claims.insert("iss".into(), info.issuer.into());
    claims.insert("sub".into(), request.subject.clone().into());
    claims.insert("aud".into(), request.audience.clone().into());
    claims.insert("iat".into(), now.into());
    claims.insert("nbf".into(), now.into());
    claims.insert("exp".into(), (now + request.ttl_seconds).into());
    claims.insert("scope".into(), request.scope.clone().into());
    claims.insert("client_id".into(), request.client_id.clone().into());
    let mut jti = [0u8; 12];
    aws_lc_rs::rand::fill(&mut jti).map_err(|e| DevAuthorityError::Crypto(e.to_string()))?;
    claims.insert("jti".into(), BASE64URL_NOPAD.encode(&jti).into());
    for (name, value) in [
        ("stellaops:plan", &request.plan),
        ("stellaops:license", &request.license),
        ("stellaops:tenant", &request.tenant),
    ] {
        if let Some(value) = value {
            claims.insert(name.into(), value.clone().into());
        }
    }
    claims.extend(request.extra.clone());

    let header = json!({ "typ": "JWT", "alg": "RS256", "kid": info.kid });
    let encode = |value: &Value| serde_json::to_vec(value).map(|json| BASE64URL_NOPAD.encode(&json));
    let json_error = |e: serde_json::Error| DevAuthorityError::Crypto(format!("cannot encode JSON: {e}"));
    let signed = format!(
        "{}.{}",
        encode(&header).map_err(json_error)?,
        encode(&Value::Object(claims)).map_err(json_error)?
    );
    let signature = key.sign(signed.as_bytes()).map_err(|e| DevAuthorityError::Crypto(e.to_string()))?;
    Ok(format!("{signed}.{}", BASE64URL_NOPAD.encode(&signature)))
}
