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

mod guest;

use crate::access::{Caller, Resource};
use guest::{GuestState, Runtime};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::Component;

pub use guest::Limits;

/// Generated from `wit/`: the only place the host meets the contract's types.
mod bindings {
    wasmtime::component::bindgen!({
        world: "policy",
        path: "../wit",
        exports: { default: async },
    });
}

use bindings::stellaops::registry_policy::types as wit;

/// The default policy, built from `policies/plan-catalogue` by the build script.
pub const BUILTIN_PLAN_CATALOGUE: &[u8] = include_bytes!(env!("PLAN_CATALOGUE_WASM"));
/// The name that selects [`BUILTIN_PLAN_CATALOGUE`] in the configuration.
pub const BUILTIN_NAME: &str = "builtin:plan-catalogue";

/// Longest accepted `reason` of a denial, `message`, and `note`.
const MAX_REASON: usize = 64;
const MAX_MESSAGE: usize = 1024;
const MAX_NOTE: usize = 4096;

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
    #[error("{source_name} does not implement the world stellaops:registry-policy/policy@0.1.0: {reason}")]
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

/// A loaded, configured policy, ready to evaluate requests concurrently.
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
    /// Decisions of this module with these settings. A guest is a pure function of settings and
    /// request (no clock, no randomness, fresh instance), so a decision can be reused for the exact
    /// same request; the cache belongs to one (digest, settings version) pair and is dropped with it.
    decisions: Option<quick_cache::sync::Cache<DecisionKey, CachedDecision, PerKib>>,
}

/// A remembered decision and its size in KiB (at least 1), counted against the cache's capacity
/// so that large requests (a thousand scopes, a long claim set) cannot make it large in bytes.
#[derive(Clone)]
struct CachedDecision {
    decision: Decision,
    kib: u64,
}

#[derive(Clone)]
struct PerKib;

impl quick_cache::Weighter<DecisionKey, CachedDecision> for PerKib {
    fn weight(&self, _key: &DecisionKey, cached: &CachedDecision) -> u64 {
        cached.kib
    }
}

/// Roughly how many bytes a cache entry for this request holds (the granted resources are a
/// subset of the requested ones, so counting the request twice bounds the decision too).
fn entry_kib(caller: &Caller, service: &str, resources: &[Resource]) -> u64 {
    let resources: usize =
        resources.iter().map(|r| 64 + r.resource_type.len() + r.name.len() + 16 * r.actions.len()).sum();
    let bytes = caller.claims_json.len() + service.len() + resources * 2;
    (bytes as u64).div_ceil(1024).max(1)
}

/// The exact input of an evaluation.
#[derive(Hash, PartialEq, Eq)]
struct DecisionKey {
    caller: Caller,
    service: String,
    resources: Vec<Resource>,
}

/// A [`DecisionKey`] by reference, so a cache hit allocates nothing. Hashes as the owned key does.
struct DecisionQuery<'a> {
    caller: &'a Caller,
    service: &'a str,
    resources: &'a [Resource],
}

impl std::hash::Hash for DecisionQuery<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.caller.hash(state);
        self.service.hash(state);
        self.resources.hash(state);
    }
}

impl quick_cache::Equivalent<DecisionKey> for DecisionQuery<'_> {
    fn equivalent(&self, key: &DecisionKey) -> bool {
        *self.caller == key.caller
            && self.service == key.service
            && self.resources == key.resources.as_slice()
    }
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
    /// the result. CPU-heavy (two compilations): call it off the request path. Remembers up to
    /// `decision_cache` decisions (0: none).
    pub async fn load(
        module: &[u8],
        source_name: &str,
        settings_json: &str,
        limits: Limits,
        decision_cache: usize,
    ) -> Result<Policy, LoadError> {
        let runtime = Arc::new(Runtime::new(limits).map_err(|e| LoadError::Runtime(e.to_string()))?);
        Policy::load_in(runtime, module, source_name, settings_json, decision_cache).await
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
        Policy::load_in(runtime, module, source_name, settings_json, decision_cache).await
    }

    async fn load_in(
        runtime: Arc<Runtime>,
        module: &[u8],
        source_name: &str,
        settings_json: &str,
        decision_cache: usize,
    ) -> Result<Policy, LoadError> {
        let source = source_name.to_owned();

        // wizer instruments the component so its state can be read back after `configure`.
        let wizer = {
            let mut wizer = wasmtime_wizer::Wizer::new();
            wizer.init_func("configure").keep_init_func(true);
            wizer
        };
        let (context, instrumented) = wizer
            .instrument_component(module)
            .map_err(|e| LoadError::Compile { source_name: source.clone(), reason: root(&e) })?;
        let component = runtime
            .compile_cached(&instrumented)
            .map_err(|e| LoadError::Compile { source_name: source.clone(), reason: root(&e) })?;
        let pre = runtime
            .pre(&component)
            .map_err(|reason| LoadError::World { source_name: source.clone(), reason })?;

        // Configuring takes a pool slot like any evaluation, so a reload under load cannot exhaust
        // the pool that requests are using.
        let slot = runtime.slot().await;
        let timeout = runtime.limits().configure_timeout();
        let mut store = runtime.store(timeout);
        let configured = within(timeout, async {
            let instance = pre.instance_pre().instantiate_async(&mut store).await?;
            let exports = bindings::Policy::new(&mut store, &instance)?;
            let answer = exports.call_configure(&mut store, settings_json).await?;
            Ok::<_, wasmtime::Error>((instance, answer))
        })
        .await;
        let instance = match configured {
            Ok(Ok((instance, Ok(())))) => instance,
            Ok(Ok((_, Err(reason)))) => {
                return Err(LoadError::Settings { source_name: source, reason });
            }
            Ok(Err(error)) => {
                let fault = runtime.classify(&error, &store);
                return Err(LoadError::Configure { source_name: source, fault });
            }
            Err(fault) => return Err(LoadError::Configure { source_name: source, fault }),
        };

        let snapshot = wizer
            .snapshot_component(
                &context,
                &mut wasmtime_wizer::WasmtimeWizerComponent { store: &mut store, instance },
            )
            .await
            .map_err(|e| LoadError::Snapshot { source_name: source.clone(), reason: root(&e) })?;
        drop(store);
        drop(slot);

        let component = Component::new(runtime.engine(), &snapshot)
            .map_err(|e| LoadError::Snapshot { source_name: source.clone(), reason: root(&e) })?;
        let pre = runtime
            .pre(&component)
            .map_err(|reason| LoadError::World { source_name: source.clone(), reason })?;
        let policy = Policy {
            inner: Arc::new(Loaded {
                runtime,
                pre,
                source,
                digest: sha256_hex(module),
                settings_version: sha256_hex(settings_json.as_bytes()),
                // `decisions` entries of up to 1 KiB each, a larger entry counting once per KiB.
                decisions: (decision_cache > 0).then(|| {
                    quick_cache::sync::Cache::with_weighter(decision_cache, decision_cache as u64, PerKib)
                }),
            }),
        };
        // One instantiation now, so a snapshot that cannot start under the limits (its memory is
        // already over the cap, say) is refused at load rather than on every request.
        let trial = {
            let runtime = &policy.inner.runtime;
            let _slot = runtime.slot().await;
            let mut store = runtime.store(runtime.limits().timeout);
            match policy.inner.pre.instantiate_async(&mut store).await {
                Ok(_) => Ok(()),
                Err(error) => Err(runtime.classify(&error, &store)),
            }
        };
        match trial {
            Ok(()) => Ok(policy),
            Err(fault) => Err(LoadError::Configure { source_name: policy.inner.source.clone(), fault }),
        }
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
        self.inner.decisions.as_ref().map_or((0, 0), |cache| (cache.len(), cache.weight()))
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
        let query = DecisionQuery { caller, service, resources: requested };
        if let Some(cached) = cache.get(&query) {
            return Ok(cached.decision);
        }
        let decision = self.evaluate_uncached(caller, service, requested).await?;
        let key = DecisionKey {
            caller: caller.clone(),
            service: service.to_owned(),
            resources: requested.to_vec(),
        };
        let kib = entry_kib(caller, service, requested);
        cache.insert(key, CachedDecision { decision: decision.clone(), kib });
        Ok(decision)
    }

    /// Decides one request in a fresh instance of the guest, bypassing the decision cache.
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
        let request = to_guest(caller, service, requested);
        let answer = within(timeout, async {
            let exports = self.inner.pre.instantiate_async(&mut store).await?;
            exports.call_evaluate(&mut store, &request).await
        })
        .await?
        .map_err(|error| runtime.classify(&error, &store))?;
        check_answer(answer, requested)
    }
}

/// Runs a guest call under a wall-clock deadline. The epoch deadline stops a guest that computes;
/// this one stops a guest that waits inside the host (a WASI `poll` on a timer, as
/// `std::thread::sleep` does), where no epoch check runs. Dropping the call tears its fiber down;
/// the store goes with it.
async fn within<T>(timeout: Duration, call: impl Future<Output = T>) -> Result<T, Fault> {
    tokio::time::timeout(timeout, call).await.map_err(|_| Fault::Deadline(timeout))
}

fn to_guest(caller: &Caller, service: &str, requested: &[Resource]) -> wit::Request {
    wit::Request {
        caller: wit::Caller {
            subject: caller.subject.clone(),
            client_id: caller.client_id.clone(),
            tenant: caller.tenant.clone(),
            plan: caller.plan.clone(),
            license: caller.license.clone(),
            scopes: caller.scopes.clone(),
            claims_json: caller.claims_json.clone(),
        },
        service: service.to_owned(),
        resources: requested
            .iter()
            .map(|r| wit::Resource {
                type_: r.resource_type.clone(),
                name: r.name.clone(),
                actions: r.actions.clone(),
            })
            .collect(),
    }
}

/// Enforces the contract on the guest's answer, and clips the grant to what was requested: the
/// result is built from the requested list, so nothing unrequested can reach a token.
fn check_answer(answer: wit::Decision, requested: &[Resource]) -> Result<Decision, Fault> {
    match answer {
        wit::Decision::Deny(denial) => {
            let reason_ok = !denial.reason.is_empty()
                && denial.reason.len() <= MAX_REASON
                && denial.reason.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !reason_ok {
                return Err(Fault::Malformed(format!(
                    "a denial reason must be 1 to {MAX_REASON} characters of [a-z0-9-], got {:?}",
                    truncate(&denial.reason, 80)
                )));
            }
            if denial.message.len() > MAX_MESSAGE {
                return Err(Fault::Malformed(format!(
                    "a denial message may have at most {MAX_MESSAGE} bytes, got {}",
                    denial.message.len()
                )));
            }
            Ok(Decision::Deny { reason: denial.reason, message: denial.message })
        }
        wit::Decision::Grant(grant) => {
            if grant.note.as_ref().is_some_and(|note| note.len() > MAX_NOTE) {
                return Err(Fault::Malformed(format!("a note may have at most {MAX_NOTE} bytes")));
            }
            for granted in &grant.resources {
                let asked =
                    requested.iter().find(|r| r.resource_type == granted.type_ && r.name == granted.name);
                let Some(asked) = asked else {
                    return Err(Fault::Overgrant(format!("{}:{}", granted.type_, granted.name)));
                };
                if let Some(extra) = granted.actions.iter().find(|a| !asked.actions.contains(a)) {
                    return Err(Fault::Overgrant(format!(
                        "action {extra:?} on {}:{}",
                        granted.type_, granted.name
                    )));
                }
            }
            if grant.resources.len() > requested.len() {
                return Err(Fault::Malformed(format!(
                    "{} grant entries for {} requested resources",
                    grant.resources.len(),
                    requested.len()
                )));
            }
            let resources = requested
                .iter()
                .filter_map(|asked| {
                    let actions: Vec<String> = asked
                        .actions
                        .iter()
                        .filter(|action| {
                            grant.resources.iter().any(|g| {
                                g.type_ == asked.resource_type
                                    && g.name == asked.name
                                    && g.actions.contains(action)
                            })
                        })
                        .cloned()
                        .collect();
                    (!actions.is_empty()).then(|| Resource { actions, ..asked.clone() })
                })
                .collect();
            Ok(Decision::Grant { resources, note: grant.note })
        }
    }
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((cut, _)) => &text[..cut],
        None => text,
    }
}

fn root(error: &wasmtime::Error) -> String {
    error.root_cause().to_string()
}
