//! The policy runtime: WebAssembly components that decide what a caller may access.
//!
//! A policy is loaded once: compiled, type-checked against the `stellaops:registry-policy` world,
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
mod contract;
mod load;
mod runtime;
mod wit;

use crate::access::{Caller, Resource};
use cache::DecisionCache;
use runtime::{GuestState, Runtime, within};
use sha2::{Digest, Sha256};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

pub use runtime::Limits;
pub use wit::{supported_wit_versions, wit_version};

/// Generated from `wit/`: the only place the host meets the contract's types.
mod bindings {
    wasmtime::component::bindgen!({
        world: "policy",
        path: "../wit",
        exports: { default: async },
    });

    /// The WIT source the bindings above are generated from.
    pub(super) const WIT: &str = include_str!("../../../wit/registry-policy.wit");
    /// The world named in `bindgen!`.
    pub(super) const WORLD: &str = "policy";
}

/// The world guests must implement, as `package/world@version`
/// (`stellaops:registry-policy/policy@0.1.0`), read from the WIT the bindings come from.
pub fn world_name() -> &'static str {
    static NAME: LazyLock<String> = LazyLock::new(|| {
        let package = bindings::WIT
            .lines()
            .find_map(|line| line.trim().strip_prefix("package "))
            .map(|rest| rest.trim_end_matches(';').trim())
            .unwrap_or("stellaops:registry-policy");
        match package.split_once('@') {
            Some((name, version)) => format!("{name}/{}@{version}", bindings::WORLD),
            None => format!("{package}/{}", bindings::WORLD),
        }
    });
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
    },
    /// Refuse the exchange.
    Deny {
        /// Machine-readable kebab-case reason (`licence-revoked`).
        reason: String,
        /// Text for the caller.
        message: String,
    },
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
    #[error("{source_name} does not implement the world {}: {reason}", world_name())]
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
    pre: bindings::PolicyPre<GuestState>,
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
            .field("settings_version", &self.inner.settings_version)
            .finish()
    }
}

/// `sha256:<hex>` of some bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("sha256:{}", data_encoding::HEXLOWER.encode(&Sha256::digest(bytes)))
}

impl Policy {
    /// Compiles `module`, checks it against the world, runs `configure(settings_json)` and snapshots
    /// the result (see [`load`]). CPU-heavy: call it off the request path. Remembers decisions in
    /// up to `decision_cache` KiB (0: none).
    pub async fn load(
        module: &[u8],
        source_name: &str,
        settings_json: &str,
        limits: Limits,
        decision_cache: usize,
    ) -> Result<Policy, LoadError> {
        let runtime = Arc::new(Runtime::new(limits).map_err(|e| LoadError::Runtime(e.to_string()))?);
        load::load(runtime, module, source_name, settings_json, decision_cache).await
    }

    /// [`Policy::load`] for a reload: when the limits are unchanged the new policy shares this one's
    /// engine and pool, and a module already compiled there is not compiled again (only the
    /// snapshot of the new settings is), which keeps reloads under load short.
    pub async fn reload(
        &self,
        module: &[u8],
        source_name: &str,
        settings_json: &str,
        limits: Limits,
        decision_cache: usize,
    ) -> Result<Policy, LoadError> {
        if limits != self.limits() {
            return Policy::load(module, source_name, settings_json, limits, decision_cache).await;
        }
        let runtime = Arc::clone(&self.inner.runtime);
        load::load(runtime, module, source_name, settings_json, decision_cache).await
    }

    /// Where the module came from: `builtin:plan-catalogue` or a path.
    pub fn source(&self) -> &str {
        &self.inner.source
    }

    /// `sha256:<hex>` of the module as given (before the settings snapshot).
    pub fn digest(&self) -> &str {
        &self.inner.digest
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

    /// Decides one request: from the decision cache, or in a fresh instance. A [`Fault`] means:
    /// issue no token (faults are never cached). Runs on a tokio runtime with its time driver
    /// enabled (the wall-clock deadline is a tokio timer).
    pub async fn evaluate(
        &self,
        caller: &Caller,
        service: &str,
        requested: &[Resource],
    ) -> Result<Decision, Fault> {
        let Some(cache) = &self.inner.decisions else {
            return self.evaluate_uncached(caller, service, requested).await;
        };
        if let Some(decision) = cache.get(caller, service, requested) {
            crate::metrics::metrics().cache(crate::metrics::CacheName::Decisions, true);
            return Ok(decision);
        }
        crate::metrics::metrics().cache(crate::metrics::CacheName::Decisions, false);
        let decision = self.evaluate_uncached(caller, service, requested).await?;
        cache.insert(caller, service, requested, &decision);
        Ok(decision)
    }

    /// Decides one request in a fresh instance of the guest, bypassing the decision cache. For
    /// benchmarks; the service always goes through [`Policy::evaluate`].
    #[doc(hidden)]
    pub async fn evaluate_uncached(
        &self,
        caller: &Caller,
        service: &str,
        requested: &[Resource],
    ) -> Result<Decision, Fault> {
        let runtime = &self.inner.runtime;
        let _slot = runtime.slot().await;
        let timeout = runtime.limits().timeout;
        let mut store = runtime.store(timeout);
        let request = contract::to_guest(caller, service, requested);
        let answer = within(timeout, async {
            let exports = self.inner.pre.instantiate_async(&mut store).await?;
            exports.call_evaluate(&mut store, &request).await
        })
        .await?
        .map_err(|error| runtime.classify(&error, &store))?;
        contract::check_answer(answer, requested)
    }
}
