//! Shared pieces of registry-token's tests.

/// The hostile test guest (see `tests/guests/hostile`), built for wasm32-wasip2.
pub const HOSTILE_GUEST_WASM: &str = env!("HOSTILE_GUEST_WASM");
/// A component built for another world (see `tests/guests/wrong-world`).
pub const WRONG_WORLD_GUEST_WASM: &str = env!("WRONG_WORLD_GUEST_WASM");
