//! registry-token: issues short-lived Docker registry bearer tokens; WebAssembly policies decide.
//!
//! Modules and their arrows (see `docs/ARCHITECTURE.md`): `cli` and `http` are the edges;
//! `app` builds the live state from `config`; `http` → `authority`, `scope`, `policy`, `mint`,
//! none of which knows about the others or about HTTP; all of them share `access`.

pub mod access;
pub mod app;
pub mod authority;
mod bounded;
pub mod bundle;
pub mod cli;
pub mod config;
pub mod dev_authority;
pub mod files;
pub mod http;
pub mod jws;
pub mod ledger;
pub mod metrics;
pub mod mint;
pub mod policy;
pub mod rfc3339;
pub mod scope;
