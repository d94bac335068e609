//! Caller-token validation on arbitrary tokens against a real JWKS: never a panic, never a pass.
#![no_main]

use libfuzzer_sys::fuzz_target;
use registry_token::authority::{KeySet, KeySource, Requirements, verify};
use std::sync::{Arc, LazyLock};

// A test fixture's public key (tests/fixtures/test-signing-key.pem); nobody holds a token for it here.
const JWKS: &str = include_str!("../jwks.json");

static KEYS: LazyLock<KeySource> = LazyLock::new(|| {
    KeySource::File(Arc::new(KeySet::from_json(JWKS.as_bytes(), "fuzz").expect("the fixture JWKS loads")))
});
static RUNTIME: LazyLock<tokio::runtime::Runtime> =
    LazyLock::new(|| tokio::runtime::Builder::new_current_thread().build().expect("a runtime"));

fuzz_target!(|data: &[u8]| {
    let token = String::from_utf8_lossy(data);
    let requirements = Requirements {
        issuer: "https://authority.fuzz".into(),
        audiences: vec!["registry-token".into()],
        required_scope: "registry.token.issue".into(),
        leeway_seconds: 30,
    };
    let result = RUNTIME.block_on(verify(&token, 1_800_000_000, &KEYS, &requirements));
    assert!(result.is_err(), "a token validated without the private key: {token:?}");
});
