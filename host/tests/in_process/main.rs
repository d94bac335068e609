//! The tests that drive the library in-process (the router, the policy runtime, key sets, Authority
//! keys, refresh tokens, token reuse), one module per subject, in one test binary: each links the
//! whole service and instantiates the same router and runtime code, so one binary builds in a
//! fraction of the time seven did. Run one subject with, for example,
//! `cargo test --release -p registry-token --test in_process token_reuse::`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../common/mod.rs"]
mod common;

mod authority_keys;
mod hostile;
mod keyset;
mod policy_runtime;
mod refresh_tokens;
mod token_endpoint;
mod token_reuse;
