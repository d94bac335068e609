//! registry-token: issues short-lived Docker registry bearer tokens.
//!
//! See `docs/ARCHITECTURE.md` for the modules and the direction of their dependencies.

pub mod access;
pub mod policy;
pub mod scope;
