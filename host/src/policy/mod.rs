//! The policy runtime: WebAssembly components that decide what a caller may access.
//!
//! A policy is loaded once: compiled, type-checked against a `stellaops:registry-policy` world
//! (0.2.0, or 0.1.0 for older guests: [`Contract`]),
//! given its settings through `configure`, and snapshotted in that configured state (wasmtime's
//! wizer). Each request then runs in a **fresh instance of the snapshot** in its own `Store`: nothing
//! leaks from one caller to the next, and settings are never parsed on the request path.
//!
//! Every evaluation is bounded: an epoch deadline (a ticker thread advances the engine's epoch),
//! a memory cap enforced by a [`wasmtime::ResourceLimiter`], and a pooling allocator whose slots a
//! semaphore hands out. Guests get no ambient capabilities: WASI is linked so that ordinary Rust
//! guests instantiate, but with no files, environment, arguments or sockets; the clocks are frozen at
//! the Unix epoch and "randomness" is a fixed sequence, so a decision is a pure function of settings
//! and request (which is what makes decisions cacheable and case files reproducible). Output is
//! captured in a small buffer and attached to faults (a guest's panic message arrives that way).
//!
//! Every way a guest can misbehave — trap, panic, deadline, memory, a malformed answer, a grant of
//! something not requested — is a [`Fault`], and the caller of [`Policy::evaluate`] issues no token.

mod cache;
mod compiled;
mod compose;
mod contract;
mod inspect;
mod load;
mod relink;
mod runtime;
mod snapshot;
mod wit;

use crate::access::{Caller, Resource};
use cache::DecisionCache;
use runtime::{Runtime, within};
use sha2::{Digest, Sha256};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

pub use inspect::{Import, InspectError, ModuleInfo, inspect};
pub use runtime::Limits;
pub use wit::{supported_wit_versions, wit_version};

/// Generated from `wit/`, one module per contract version the host loads: the only place the
/// host meets the contract's types.
mod bindings {
    /// `stellaops:registry-policy@0.1.0`, as released.
    pub(super) mod v0_1 {
        wasmtime::component::bindgen!({
            world: "policy",
            path: "../wit/registry-policy@0.1.0",
            exports: { default: async },
        });

        /// The WIT source the bindings above are generated from.
        pub(in crate::policy) const WIT: &str =
            include_str!("../../../wit/registry-policy@0.1.0/registry-policy.wit");
    }

    /// `stellaops:registry-policy@0.2.0`: the request time, a grant's lifetime, annotations.
    pub(super) mod v0_2 {
        wasmtime::component::bindgen!({
            world: "policy",
            path: "../wit/registry-policy@0.2.0",
            exports: { default: async },
        });

        /// The WIT source the bindings above are generated from.
        pub(in crate::policy) const WIT: &str =
            include_str!("../../../wit/registry-policy@0.2.0/registry-policy.wit");
    }

    /// The world named in every `bindgen!` above.
    pub(super) const WORLD: &str = "policy";
}

/// A version of the WIT contract this host loads guests of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Contract {
    /// `stellaops:registry-policy@0.1.0`: no request time, lifetimes or annotations.
    V0_1,
    /// `stellaops:registry-policy@0.2.0`.
    V0_2,
}

impl Contract {
    /// Every version the host loads, newest first (the order guests are matched in).
    pub const ALL: [Contract; 2] = [Contract::V0_2, Contract::V0_1];

    fn wit(self) -> &'static str {
        match self {
            Contract::V0_1 => bindings::v0_1::WIT,
            Contract::V0_2 => bindings::v0_2::WIT,
        }
    }

    /// The WIT package, `stellaops:registry-policy@0.2.0`, read from the WIT the bindings come from.
    pub fn package(self) -> &'static str {
        static PACKAGES: LazyLock<Vec<(Contract, String)>> = LazyLock::new(|| {
            Contract::ALL
                .iter()
                .map(|contract| {
                    let package = contract
                        .wit()
                        .lines()
                        .find_map(|line| line.trim().strip_prefix("package "))
                        .map(|rest| rest.trim_end_matches(';').trim().to_owned())
                        .unwrap_or_else(|| "stellaops:registry-policy".to_owned());
                    (*contract, package)
                })
                .collect()
        });
        PACKAGES.iter().find(|(c, _)| *c == self).map_or("stellaops:registry-policy", |(_, p)| p)
    }

    /// The version alone: `0.2.0`.
    pub fn version(self) -> &'static str {
        self.package().split_once('@').map_or("", |(_, version)| version)
    }

    /// The world guests implement, as `package/world@version`
    /// (`stellaops:registry-policy/policy@0.2.0`).
    pub fn world(self) -> String {
        match self.package().split_once('@') {
            Some((name, version)) => format!("{name}/{}@{version}", bindings::WORLD),
            None => format!("{}/{}", self.package(), bindings::WORLD),
        }
    }
}

impl std::fmt::Display for Contract {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.package())
    }
}

impl serde::Serialize for Contract {
    /// As its package: `stellaops:registry-policy@0.2.0`.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.package())
    }
}

/// The worlds a guest may implement, for messages: `stellaops:registry-policy/policy@0.2.0 or
/// stellaops:registry-policy/policy@0.1.0`.
pub fn world_name() -> &'static str {
    static NAME: LazyLock<String> = LazyLock::new(|| Contract::ALL.map(Contract::world).join(" or "));
    &NAME
}

/// A policy compiled into the binary, selected as `builtin:<name>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Builtin {
    /// `builtin:plan-catalogue`: grants by plan, refuses revoked licences
    /// (`policies/plan-catalogue`, built from source by the build script).
    PlanCatalogue,
}

impl Builtin {
    /// What a built-in's name starts with in the configuration.
    pub const PREFIX: &str = "builtin:";

    /// The built-in called `name` (without the prefix), if there is one.
    pub fn from_name(name: &str) -> Option<Builtin> {
        match name {
            "plan-catalogue" => Some(Builtin::PlanCatalogue),
            _ => None,
        }
    }

    /// The component.
    pub fn wasm(self) -> &'static [u8] {
        match self {
            Builtin::PlanCatalogue => BUILTIN_PLAN_CATALOGUE,
        }
    }
}

impl std::fmt::Display for Builtin {
    /// `builtin:plan-catalogue`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Builtin::PlanCatalogue => "plan-catalogue",
        };
        write!(f, "{}{name}", Builtin::PREFIX)
    }
}

/// The default policy, built from `policies/plan-catalogue` by the build script.
pub const BUILTIN_PLAN_CATALOGUE: &[u8] = include_bytes!(env!("PLAN_CATALOGUE_WASM"));

/// The verdict on one request, after the host's checks of the guest's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Issue a token for exactly these resources: each one requested, with a non-empty subset of
    /// its requested actions, in the order requested.
    Grant {
        /// What the token grants.
        resources: Vec<Resource>,
        /// The guest's explanation of anything not granted, for the operator.
        note: Option<String>,
        /// The token lifetime the guest asked for, in seconds, before the host's clamp (0.2.0).
        lifetime_seconds: Option<u32>,
        /// Notes for the audit trail (0.2.0): at most [`MAX_ANNOTATIONS`], keys unique.
        annotations: Annotations,
    },
    /// Refuse the exchange.
    Deny {
        /// Machine-readable kebab-case reason (`licence-revoked`).
        reason: String,
        /// Text for the caller.
        message: String,
        /// Notes for the audit trail (0.2.0).
        annotations: Annotations,
    },
}

/// A decision's annotations, `(key, value)` in the order the guest gave them.
pub type Annotations = Vec<(String, String)>;

pub use contract::{MAX_ANNOTATION_KEY, MAX_ANNOTATION_VALUE, MAX_ANNOTATIONS};

impl Decision {
    /// The annotations of either kind of decision.
    pub fn annotations(&self) -> &Annotations {
        match self {
            Decision::Grant { annotations, .. } | Decision::Deny { annotations, .. } => annotations,
        }
    }
}

/// A guest misbehaved while deciding; no token may be issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    /// The guest ran past its deadline.
    #[error("the policy ran past its {0:?} deadline")]
    Deadline(Duration),
    /// The guest wanted more memory than allowed.
    #[error("the policy wanted more than its {} MiB of memory", .0 / (1024 * 1024))]
    Memory(usize),
    /// The guest panicked.
    #[error("the policy panicked: {0}")]
    Panic(String),
    /// Any other trap.
    #[error("the policy trapped: {0}")]
    Trap(String),
    /// The answer breaks the contract's rules.
    #[error("the policy's answer is malformed: {0}")]
    Malformed(String),
    /// The guest granted something that was not asked for.
    #[error("the policy granted {0}, which was not requested")]
    Overgrant(String),
}

impl Fault {
    /// A short stable name, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Deadline(_) => "deadline",
            Fault::Memory(_) => "memory",
            Fault::Panic(_) => "panic",
            Fault::Trap(_) => "trap",
            Fault::Malformed(_) => "malformed",
            Fault::Overgrant(_) => "overgrant",
        }
    }
}

/// Why a policy could not be loaded. The previous policy, if any, stays live.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The engine could not be set up with the requested limits.
    #[error("cannot set up the policy runtime: {0}")]
    Runtime(String),
    /// The bytes are not a WebAssembly component wasmtime can compile.
    #[error("{source_name} is not a usable WebAssembly component: {reason}")]
    Compile {
        /// Where the module came from.
        source_name: String,
        /// wasmtime's explanation.
        reason: String,
    },
    /// The component does not implement the contract, or imports what the host does not offer.
    #[error("{source_name} does not implement a world this host loads ({}): {reason}", world_name())]
    World {
        /// Where the module came from.
        source_name: String,
        /// What is missing or mistyped.
        reason: String,
    },
    /// `configure` refused the settings.
    #[error("{source_name} refused its settings: {reason}")]
    Settings {
        /// Where the module came from.
        source_name: String,
        /// The guest's explanation.
        reason: String,
    },
    /// `configure` trapped, ran too long or used too much memory.
    #[error("{source_name} failed while configuring: {fault}")]
    Configure {
        /// Where the module came from.
        source_name: String,
        /// What went wrong.
        fault: Fault,
    },
    /// The configured state could not be snapshotted.
    #[error("{source_name} could not be snapshotted after configuring: {reason}")]
    Snapshot {
        /// Where the module came from.
        source_name: String,
        /// wizer's explanation.
        reason: String,
    },
}

/// A loaded, configured policy, ready to evaluate requests concurrently. Cheap to clone.
#[derive(Clone)]
pub struct Policy {
    inner: Arc<Loaded>,
}

struct Loaded {
    runtime: Arc<Runtime>,
    pre: runtime::Pre,
    source: String,
    digest: String,
    settings_version: String,
    decisions: Option<DecisionCache>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("source", &self.inner.source)
            .field("digest", &self.inner.digest)
            .field("contract", &self.inner.pre.contract())
            .field("settings_version", &self.inner.settings_version)
            .finish()
    }
}

/// `sha256:<hex>` of some bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("sha256:{}", data_encoding::HEXLOWER.encode(&Sha256::digest(bytes)))
}

/// How a policy is run: the same for the server, `policy test`, `policy eval` and `policy bench`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Setup {
    /// What one evaluation may use.
    pub limits: Limits,
    /// Decisions remembered, in KiB (0: none).
    pub decision_cache: usize,
    /// Where compiled code is kept between runs (`policy.cache_dir`); `None`: compile every time.
    pub cache_dir: Option<std::path::PathBuf>,
}

impl Policy {
    /// Compiles `module`, checks it against the world, runs `configure(settings_json)` and snapshots
    /// the result (see [`load`]). CPU-heavy: call it off the request path. Remembers decisions in
    /// up to `decision_cache` KiB (0: none); no code cache.
    pub async fn load(
        module: &[u8],
        source_name: &str,
        settings_json: &str,
        limits: Limits,
        decision_cache: usize,
    ) -> Result<Policy, LoadError> {
        let setup = Setup { limits, decision_cache, cache_dir: None };
        Policy::load_with(module, source_name, settings_json, &setup).await
    }

    /// [`Policy::load`] with everything [`Setup`] says.
    pub async fn load_with(
        module: &[u8],
        source_name: &str,
        settings_json: &str,
        setup: &Setup,
    ) -> Result<Policy, LoadError> {
        let runtime = Runtime::new(setup.limits, setup.cache_dir.as_deref())
            .map_err(|e| LoadError::Runtime(e.to_string()))?;
        load::load(Arc::new(runtime), module, source_name, settings_json, setup.decision_cache).await
    }

    /// [`Policy::load_with`] for a reload: when the limits and the code cache are unchanged the new
    /// policy shares this one's engine and pool, and a module already compiled there is not
    /// compiled again (only the snapshot of the new settings is), which keeps reloads under load
    /// short.
    pub async fn reload(
        &self,
        module: &[u8],
        source_name: &str,
        settings_json: &str,
        setup: &Setup,
    ) -> Result<Policy, LoadError> {
        let runtime = &self.inner.runtime;
        if setup.limits != runtime.limits() || setup.cache_dir.as_deref() != runtime.cache_dir() {
            return Policy::load_with(module, source_name, settings_json, setup).await;
        }
        load::load(Arc::clone(runtime), module, source_name, settings_json, setup.decision_cache).await
    }

    /// Where the module came from: `builtin:plan-catalogue` or a path.
    pub fn source(&self) -> &str {
        &self.inner.source
    }

    /// `sha256:<hex>` of the module as given (before the settings snapshot).
    pub fn digest(&self) -> &str {
        &self.inner.digest
    }

    /// The contract version the guest implements.
    pub fn contract(&self) -> Contract {
        self.inner.pre.contract()
    }

    /// `sha256:<hex>` of the settings document the policy was configured with.
    pub fn settings_version(&self) -> &str {
        &self.inner.settings_version
    }

    /// How many decisions are remembered, and their weight in KiB (the capacity bounds the weight).
    pub fn cached_decisions(&self) -> (usize, u64) {
        self.inner.decisions.as_ref().map_or((0, 0), DecisionCache::usage)
    }

    /// The limits every evaluation runs under.
    pub fn limits(&self) -> Limits {
        self.inner.runtime.limits()
    }

    /// Decides one request received at `time` (Unix seconds): from the decision cache, or in a
    /// fresh instance. A [`Fault`] means: issue no token (faults are never cached). Runs on a
    /// tokio runtime with its time driver enabled (the wall-clock deadline is a tokio timer).
    pub async fn evaluate(
        &self,
        caller: &Caller,
        service: &str,
        requested: &[Resource],
        time: u64,
    ) -> Result<Decision, Fault> {
        let Some(cache) = &self.inner.decisions else {
            return self.evaluate_uncached(caller, service, requested, time).await;
        };
        // A 0.2.0 guest sees the time, so its decision holds for that second only; a 0.1.0 guest
        // cannot see it, and its decisions hold until the policy is reloaded.
        let key_time = match self.contract() {
            Contract::V0_1 => 0,
            Contract::V0_2 => time,
        };
        if let Some(decision) = cache.get(caller, service, requested, key_time) {
            crate::metrics::metrics().cache(crate::metrics::CacheName::Decisions, true);
            return Ok(decision);
        }
        crate::metrics::metrics().cache(crate::metrics::CacheName::Decisions, false);
        let decision = self.evaluate_uncached(caller, service, requested, time).await?;
        cache.insert(caller, service, requested, key_time, &decision);
        Ok(decision)
    }

    /// Decides one request in a fresh instance of the guest, bypassing the decision cache. For
    /// benchmarks (`policy bench`); the service always goes through [`Policy::evaluate`].
    #[doc(hidden)]
    pub async fn evaluate_uncached(
        &self,
        caller: &Caller,
        service: &str,
        requested: &[Resource],
        time: u64,
    ) -> Result<Decision, Fault> {
        let runtime = &self.inner.runtime;
        let _slot = runtime.slot().await;
        let timeout = runtime.limits().timeout;
        let mut store = runtime.store(timeout);
        store.set_hostcall_fuel(contract::MAX_ANSWER_BYTES);
        let request = contract::Request { caller, service, requested, time };
        let answer = within(timeout, self.inner.pre.evaluate(&mut store, &request))
            .await?
            .map_err(|error| runtime.classify(&error, &store))?;
        contract::check_answer(answer, requested)
    }
}
