//! The compiled-code cache (`policy.cache_dir`), kept in its own crate
//! (`registry-token-precompiled`) because loading compiled code is wasmtime's one unsafe call.

pub use registry_token_precompiled::CodeCache;
