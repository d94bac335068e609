//! The claims of a token whose signature verified: arbitrary payload bytes are either a caller with
//! the required scope and a future exp, or refused; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use registry_token::authority::{Requirements, validate_payload};

fuzz_target!(|data: &[u8]| {
    let requirements = Requirements {
        issuer: "i".into(),
        audiences: vec!["a".into()],
        required_scope: "s".into(),
        leeway_seconds: 30,
    };
    if let Ok(validated) = validate_payload(data, 1_000, &requirements) {
        assert!(u128::from(validated.expires_at) + 30 > 1_000);
        assert!(validated.caller.scopes.iter().any(|s| s == "s"));
        assert!(!validated.caller.subject.is_empty());
    }
});
