//! # registry-policy: authorization policies for registry-token
//!
//! registry-token (the host) validates the caller's Authority token, parses the Docker scopes and
//! mints the registry token; a *policy* — a WebAssembly component built with this crate — decides
//! which of the requested repositories and actions the caller gets.
//!
//! A policy is an ordinary Rust type implementing [`TypedPolicy`]: the SDK parses the operator's
//! settings (a JSON document) into its `Settings` type once, [`TypedPolicy::new`] builds the policy
//! value from them, and [`TypedPolicy::evaluate`] decides each request. (A policy that parses its
//! settings itself implements [`Policy`], whose `configure` receives the raw document.)
//! [`export_policy!`] makes it the component's export and embeds its metadata. Because the rules
//! are plain Rust, they are unit-tested natively with `cargo test`; only the `wasm32-wasip2` build
//! is a component.
//!
//! ```
//! use registry_policy::{Caller, Decision, Request, Resource, TypedPolicy, actions};
//! use serde::Deserialize;
//!
//! /// Everyone may pull the configured prefix; nothing else.
//! struct PublicPull {
//!     public: registry_policy::RepoPattern,
//! }
//!
//! #[derive(Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Settings {
//!     public: String,
//! }
//!
//! impl TypedPolicy for PublicPull {
//!     type Settings = Settings;
//!
//!     fn new(settings: Settings) -> Result<Self, String> {
//!         let public = registry_policy::RepoPattern::parse(&settings.public).map_err(|e| e.to_string())?;
//!         Ok(PublicPull { public })
//!     }
//!
//!     fn evaluate(&self, request: &Request) -> Decision {
//!         let pull = actions::ActionSet::parse(["pull"]).unwrap();
//!         let granted = request
//!             .resources
//!             .iter()
//!             .filter(|r| r.type_ == "repository" && self.public.matches(&r.name, &request.caller))
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
//! let policy = registry_policy::configure::<PublicPull>(r#"{"public": "public/**"}"#).unwrap();
//! assert_eq!(
//!     policy.evaluate(&request),
//!     Decision::grant(vec![Resource::new("repository", "public/base", ["pull"])])
//! );
//! // Settings errors name the key:
//! let error = registry_policy::configure::<PublicPull>(r#"{"public": 7}"#).err().unwrap();
//! assert!(error.starts_with("public: invalid type"), "{error}");
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
//!   randomness is a fixed sequence, so a decision is a pure function of settings and request. The
//!   request carries its time ([`Request::time`], Unix seconds) for rules about dates.
//! * Each request runs under a deadline and a memory cap. A trap, a panic or a grant of anything
//!   that was not requested makes the host refuse to issue a token (fail closed).
//! * A grant may ask for a token lifetime ([`Decision::with_lifetime`]); the host clamps it to
//!   its own bounds. A decision may carry annotations for the audit trail ([`Decision::annotate`]).
//!
//! ## Contract versions
//!
//! [`export_policy!`] exports the world of `stellaops:registry-policy@0.2.0`. For a host that only
//! knows 0.1.0, `export_policy!(MyPolicy, contract = "0.1.0")` builds the same rules against the
//! older world: the request's time is then always 0, and lifetimes and annotations are dropped.

// The crate refers to itself by name so the exported macros work inside and outside it.
extern crate self as registry_policy;

pub mod actions;
mod metadata;
mod pattern;
mod settings;
mod types;

pub use pattern::{PatternError, Placeholder, RepoPattern, is_path_component};
pub use settings::parse_settings;
pub use types::{Annotation, Caller, Decision, Denial, Grant, Request, Resource};

/// The WIT package [`export_policy!`] implements by default.
pub const WIT_PACKAGE: &str = "stellaops:registry-policy@0.2.0";
/// The older WIT package, for `export_policy!(P, contract = "0.1.0")`.
pub const WIT_PACKAGE_0_1: &str = "stellaops:registry-policy@0.1.0";
/// This SDK, as the metadata names it.
pub const SDK: &str = concat!("registry-policy ", env!("CARGO_PKG_VERSION"));

/// The generated WIT bindings, one module per contract version. Use the re-exported types and
/// [`export_policy!`] instead.
#[doc(hidden)]
pub mod bindings {
    #![allow(missing_docs, unsafe_code)]

    /// `stellaops:registry-policy@0.2.0`: the types the SDK's API uses.
    pub mod v0_2 {
        wit_bindgen::generate!({
            world: "policy",
            path: "../wit/registry-policy@0.2.0",
            pub_export_macro: true,
            export_macro_name: "__export_policy_world_v0_2",
            default_bindings_module: "::registry_policy::bindings::v0_2",
            runtime_path: "::registry_policy::__private::wit_bindgen::rt",
            additional_derives: [PartialEq, Eq, Hash],
        });
    }

    /// `stellaops:registry-policy@0.1.0`, for `export_policy!(P, contract = "0.1.0")`. Included in
    /// a world of another name: wit-bindgen names its exported macros after the world, and two
    /// worlds called `policy` in one crate would collide. The component is the same.
    pub mod v0_1 {
        wit_bindgen::generate!({
            inline: "package registry-policy-sdk:compat;
                     world policy-v0-1 { include stellaops:registry-policy/policy@0.1.0; }",
            world: "registry-policy-sdk:compat/policy-v0-1",
            path: ["../wit/registry-policy@0.1.0"],
            generate_all,
            pub_export_macro: true,
            export_macro_name: "__export_policy_world_v0_1",
            default_bindings_module: "::registry_policy::bindings::v0_1",
            runtime_path: "::registry_policy::__private::wit_bindgen::rt",
            additional_derives: [PartialEq, Eq, Hash],
        });
    }
}

/// An authorization policy with typed settings: the SDK parses the operator's settings document
/// into [`TypedPolicy::Settings`] (errors name the key path, as [`parse_settings`] does) and hands
/// them to [`TypedPolicy::new`]. Every `TypedPolicy` is a [`Policy`].
pub trait TypedPolicy: Sized + Send + Sync + 'static {
    /// The settings, as `serde` reads them. `#[serde(deny_unknown_fields)]` makes a misspelt key
    /// an error instead of a silent default.
    type Settings: serde::de::DeserializeOwned;

    /// Builds the policy from its parsed settings, once, at load. An `Err` keeps the policy from
    /// going live and its text is shown to the operator, so name the offending key.
    fn new(settings: Self::Settings) -> Result<Self, String>;

    /// Decides one request: grant a subset of what was requested, or deny the whole exchange.
    fn evaluate(&self, request: &Request) -> Decision;
}

/// An authorization policy that reads its settings document itself.
///
/// Implement it for a type that holds your parsed settings and export it with [`export_policy!`];
/// or implement [`TypedPolicy`] and let the SDK parse them.
pub trait Policy: Sized + Send + Sync + 'static {
    /// Parses and validates the operator's settings (a JSON document; the host converts YAML
    /// settings files to JSON). Called once at load. An `Err` keeps the policy from going live and
    /// its text is shown to the operator, so name the offending key.
    fn configure(settings: &str) -> Result<Self, String>;

    /// Decides one request: grant a subset of what was requested, or deny the whole exchange.
    fn evaluate(&self, request: &Request) -> Decision;
}

impl<T: TypedPolicy> Policy for T {
    fn configure(settings: &str) -> Result<Self, String> {
        T::new(parse_settings(settings)?)
    }

    fn evaluate(&self, request: &Request) -> Decision {
        TypedPolicy::evaluate(self, request)
    }
}

/// Configures a policy from a settings document as the host would: what a native test calls
/// before it evaluates.
pub fn configure<P: Policy>(settings: &str) -> Result<P, String> {
    P::configure(settings)
}

/// Makes a [`Policy`] (or [`TypedPolicy`]) type the component's export and embeds the
/// `registry-policy-metadata` section `registry-token policy inspect` shows: the crate's name,
/// version, description and authors from `Cargo.toml`, the WIT package and the SDK version.
/// Invoke once, in the policy crate's `lib.rs`.
///
/// ```text
/// registry_policy::export_policy!(PlanCatalogue);
/// // with a JSON schema of the settings in the metadata:
/// registry_policy::export_policy!(PlanCatalogue, settings_schema = include_str!("../settings.schema.json"));
/// // for a host that only knows stellaops:registry-policy@0.1.0:
/// registry_policy::export_policy!(PlanCatalogue, contract = "0.1.0");
/// ```
#[macro_export]
macro_rules! export_policy {
    ($policy:ty, contract = "0.1.0" $(, settings_schema = $schema:expr)? $(,)?) => {
        $crate::__export_policy!(
            $policy, v0_1, __export_policy_world_v0_1, $crate::WIT_PACKAGE_0_1,
            $crate::__or_empty!($($schema)?)
        );
    };
    ($policy:ty, contract = "0.2.0" $(, settings_schema = $schema:expr)? $(,)?) => {
        $crate::export_policy!($policy $(, settings_schema = $schema)?);
    };
    ($policy:ty $(, settings_schema = $schema:expr)? $(,)?) => {
        $crate::__export_policy!(
            $policy, v0_2, __export_policy_world_v0_2, $crate::WIT_PACKAGE,
            $crate::__or_empty!($($schema)?)
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __or_empty {
    () => {
        ""
    };
    ($schema:expr) => {
        $schema
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __export_policy {
    ($policy:ty, $version:ident, $export:ident, $wit:expr, $schema:expr) => {
        // The component ABI glue wit-bindgen emits is unsafe, and so is placing the metadata in a
        // custom section; a crate may `deny` (not `forbid`) unsafe code and still export a policy.
        #[allow(unsafe_code)]
        const _: () = {
            struct Exports;

            static POLICY: ::std::sync::OnceLock<$policy> = ::std::sync::OnceLock::new();

            impl $crate::bindings::$version::Guest for Exports {
                fn configure(
                    settings: ::std::string::String,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    $crate::__private::configure::<$policy>(&POLICY, &settings)
                }

                fn evaluate(
                    request: $crate::bindings::$version::stellaops::registry_policy::types::Request,
                ) -> $crate::bindings::$version::stellaops::registry_policy::types::Decision {
                    $crate::__private::$version::evaluate::<$policy>(&POLICY, request)
                }
            }

            $crate::bindings::$version::$export!(Exports);

            const METADATA: $crate::__private::Metadata<'static> = $crate::__private::Metadata {
                name: env!("CARGO_PKG_NAME"),
                version: env!("CARGO_PKG_VERSION"),
                description: env!("CARGO_PKG_DESCRIPTION"),
                authors: env!("CARGO_PKG_AUTHORS"),
                wit: $wit,
                sdk: $crate::SDK,
                settings_schema: $schema,
            };
            const METADATA_LEN: usize = METADATA.encoded_len();
            #[cfg_attr(target_arch = "wasm32", unsafe(link_section = "registry-policy-metadata"))]
            #[used]
            static METADATA_SECTION: [u8; METADATA_LEN] = METADATA.encode::<METADATA_LEN>();
        };
    };
}

/// Support for [`export_policy!`]; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::metadata::{Metadata, SECTION};
    pub use wit_bindgen;

    use super::{Decision, Policy, Request};
    use std::sync::OnceLock;

    pub fn configure<P: Policy>(slot: &OnceLock<P>, settings: &str) -> Result<(), String> {
        let policy = P::configure(settings)?;
        slot.set(policy).map_err(|_| "the policy was already configured".to_owned())
    }

    pub fn decide<P: Policy>(slot: &OnceLock<P>, request: &Request) -> Decision {
        match slot.get() {
            Some(policy) => policy.evaluate(request),
            // The host always configures before it evaluates; reaching this is a host bug, and a
            // trap (which the host turns into "no token") is the only safe answer.
            #[allow(clippy::panic)]
            None => panic!("evaluate was called before configure"),
        }
    }

    /// The current contract: the SDK's types are its types.
    pub mod v0_2 {
        use super::*;

        pub fn evaluate<P: Policy>(slot: &OnceLock<P>, request: Request) -> Decision {
            decide(slot, &request)
        }
    }

    /// `stellaops:registry-policy@0.1.0`: the request converted up (time 0), the decision down
    /// (without lifetime and annotations, which 0.1.0 cannot carry).
    pub mod v0_1 {
        use super::*;
        use crate::bindings::v0_1::stellaops::registry_policy::types as old;
        use crate::types::{Caller, Denial, Grant, Resource};

        pub fn evaluate<P: Policy>(slot: &OnceLock<P>, request: old::Request) -> old::Decision {
            let resource = |r: old::Resource| Resource { type_: r.type_, name: r.name, actions: r.actions };
            let caller = request.caller;
            let request = Request {
                caller: Caller {
                    subject: caller.subject,
                    client_id: caller.client_id,
                    tenant: caller.tenant,
                    plan: caller.plan,
                    license: caller.license,
                    scopes: caller.scopes,
                    claims_json: caller.claims_json,
                },
                service: request.service,
                resources: request.resources.into_iter().map(resource).collect(),
                time: 0,
            };
            let resource = |r: Resource| old::Resource { type_: r.type_, name: r.name, actions: r.actions };
            match decide(slot, &request) {
                Decision::Grant(Grant { resources, note, .. }) => old::Decision::Grant(old::Grant {
                    resources: resources.into_iter().map(resource).collect(),
                    note,
                }),
                Decision::Deny(Denial { reason, message, .. }) => {
                    old::Decision::Deny(old::Denial { reason, message })
                }
            }
        }
    }
}
