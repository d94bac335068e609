//! # registry-policy: authorization policies for registry-token
//!
//! registry-token (the host) validates the caller's Authority token, parses the Docker scopes and
//! mints the registry token; a *policy* — a WebAssembly component built with this crate — decides
//! which of the requested repositories and actions the caller gets.
//!
//! A policy is an ordinary Rust type implementing [`Policy`]: [`Policy::configure`] turns the
//! operator's settings (a JSON document) into the policy value once, and [`Policy::evaluate`] decides
//! each request. [`export_policy!`] makes it the component's export. Because the rules are plain Rust,
//! they are unit-tested natively with `cargo test`; only the `wasm32-wasip2` build is a component.
//!
//! ```
//! use registry_policy::{Caller, Decision, Policy, Request, Resource, actions};
//!
//! /// Everyone may pull `public/**`; nothing else.
//! struct PublicPull;
//!
//! impl Policy for PublicPull {
//!     fn configure(_settings: &str) -> Result<Self, String> {
//!         Ok(PublicPull)
//!     }
//!
//!     fn evaluate(&self, request: &Request) -> Decision {
//!         let public = registry_policy::RepoPattern::parse("public/**").unwrap();
//!         let pull = actions::ActionSet::parse(["pull"]).unwrap();
//!         let granted = request
//!             .resources
//!             .iter()
//!             .filter(|r| r.type_ == "repository" && public.matches(&r.name, &request.caller))
//!             .map(|r| r.with_actions(pull.intersect(&r.actions)))
//!             .collect();
//!         Decision::grant(granted)
//!     }
//! }
//!
//! // In the crate's lib.rs (crate-type = ["cdylib", "rlib"]):
//! // registry_policy::export_policy!(PublicPull);
//!
//! let request = Request::new(
//!     Caller::new("alice"),
//!     "registry.local",
//!     vec![Resource::new("repository", "public/base", ["pull", "push"])],
//! );
//! let decision = PublicPull::configure("{}").unwrap().evaluate(&request);
//! assert_eq!(
//!     decision,
//!     Decision::grant(vec![Resource::new("repository", "public/base", ["pull"])])
//! );
//! ```
//!
//! Build the component with `cargo build --release --target wasm32-wasip2` and try it without a
//! server: `registry-token policy test --policy target/wasm32-wasip2/release/NAME.wasm CASES.yaml`.
//!
//! ## What a guest may rely on
//!
//! * [`Policy::configure`] runs once, at load; the host snapshots the configured guest, so parsing
//!   settings costs nothing per request. Every request then starts from that snapshot in a fresh
//!   instance: nothing one request does is seen by the next.
//! * There are no files, environment variables or network. The clock is frozen at the Unix epoch and
//!   randomness is a fixed sequence, so a decision is a pure function of settings and request.
//! * Each request runs under a deadline and a memory cap. A trap, a panic or a grant of anything
//!   that was not requested makes the host refuse to issue a token (fail closed).

// The crate refers to itself by name so the exported macros work inside and outside it.
extern crate self as registry_policy;

pub mod actions;
mod pattern;
mod types;

pub use pattern::{PLACEHOLDERS, PatternError, RepoPattern, is_path_component};
pub use types::{Caller, Decision, Denial, Grant, Request, Resource};

/// The generated WIT bindings. Use the re-exported types and [`export_policy!`] instead.
#[doc(hidden)]
pub mod bindings {
    #![allow(missing_docs, unsafe_code)]

    wit_bindgen::generate!({
        world: "policy",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__export_policy_world",
        default_bindings_module: "::registry_policy::bindings",
        runtime_path: "::registry_policy::__private::wit_bindgen::rt",
        additional_derives: [PartialEq, Eq, Hash],
    });
}

/// An authorization policy.
///
/// Implement it for a type that holds your parsed settings and export it with [`export_policy!`].
pub trait Policy: Sized + Send + Sync + 'static {
    /// Parses and validates the operator's settings (a JSON document; the host converts YAML
    /// settings files to JSON). Called once at load. An `Err` keeps the policy from going live and
    /// its text is shown to the operator, so name the offending key.
    fn configure(settings: &str) -> Result<Self, String>;

    /// Decides one request: grant a subset of what was requested, or deny the whole exchange.
    fn evaluate(&self, request: &Request) -> Decision;
}

/// Makes a [`Policy`] type the component's export. Invoke once, in the policy crate's `lib.rs`.
///
/// ```text
/// registry_policy::export_policy!(PlanCatalogue);
/// ```
#[macro_export]
macro_rules! export_policy {
    ($policy:ty) => {
        // The component ABI glue wit-bindgen emits is unsafe; a crate may `deny` (not `forbid`)
        // unsafe code and still export a policy.
        #[allow(unsafe_code)]
        const _: () = {
            struct Exports;

            static POLICY: ::std::sync::OnceLock<$policy> = ::std::sync::OnceLock::new();

            impl $crate::bindings::Guest for Exports {
                fn configure(
                    settings: ::std::string::String,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    $crate::__private::configure::<$policy>(&POLICY, &settings)
                }

                fn evaluate(request: $crate::Request) -> $crate::Decision {
                    $crate::__private::evaluate::<$policy>(&POLICY, &request)
                }
            }

            $crate::bindings::__export_policy_world!(Exports);
        };
    };
}

/// Support for [`export_policy!`]; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;

    use super::{Decision, Policy, Request};
    use std::sync::OnceLock;

    pub fn configure<P: Policy>(slot: &OnceLock<P>, settings: &str) -> Result<(), String> {
        let policy = P::configure(settings)?;
        slot.set(policy).map_err(|_| "the policy was already configured".to_owned())
    }

    pub fn evaluate<P: Policy>(slot: &OnceLock<P>, request: &Request) -> Decision {
        match slot.get() {
            Some(policy) => policy.evaluate(request),
            // The host always configures before it evaluates; reaching this is a host bug, and a
            // trap (which the host turns into "no token") is the only safe answer.
            #[allow(clippy::panic)]
            None => panic!("evaluate was called before configure"),
        }
    }
}
