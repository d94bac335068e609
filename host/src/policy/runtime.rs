//! The wasmtime side of the policy runtime: engine, pool, limits, the guest's (empty) world of
//! WASI, the deadlines, and turning wasmtime errors into [`Fault`]s.

use super::bindings::{v0_1, v0_2};
use super::compiled::CodeCache;
use super::{Contract, Fault};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, SemaphorePermit};
use wasmtime::component::{Component, Instance, InstancePre, Linker, ResourceTable, ResourceTableError};
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap, UpdateDeadline};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxView, WasiView};

/// Component instances the pool holds, and so the evaluations that can run at once. Evaluations
/// run on the server's worker threads (one per core) and only interleave when a slow guest yields
/// at an epoch tick, so a few dozen slots are plenty; each slot reserves address space, not memory.
const POOL_SLOTS: u32 = 64;
/// A Rust guest built for wasm32-wasip2 is a handful of core instances (the program, the WASI
/// adapter pieces); a JavaScript guest (componentize-qjs: the QuickJS runtime, the bindings
/// library, the adapter) about 14. These bound what one component may use.
const CORE_INSTANCES_PER_COMPONENT: u32 = 16;
/// QuickJS guests have two linear memories (the runtime's and the adapter's).
const MEMORIES_PER_COMPONENT: u32 = 2;
const TABLES_PER_COMPONENT: u32 = 8;
/// Guests that print more than this to stdout/stderr in one request trap (fail closed).
const OUTPUT_CAPACITY: usize = 16 * 1024;
const MAX_TABLE_ELEMENTS: usize = 100_000;
/// Handles one evaluation may hold in the host's table (WASI streams, clocks' pollables): they
/// live in the host's memory, outside `policy.memory_mib`. A guest needs a handful; wasmtime's
/// store-wide default of 100,000 live handles (an estimated 15 MB with their table entries) let
/// each of the pool's slots hold that much.
const MAX_HOST_HANDLES: usize = 1024;
/// Live component-model handles in one store: the host's above as the guest sees them, and the
/// guest's own resources (`resource.new`).
const MAX_COMPONENT_HANDLES: usize = 10_000;

/// The module-loader interface of componentize-qjs guests.
pub(super) const MODULE_LOADER: &str = "local:init/module-loader";

fn no_modules() -> Result<String, String> {
    Err("a policy cannot load modules at run time".to_owned())
}

/// What one evaluation may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock time for one evaluation (instantiation and the call).
    pub timeout: Duration,
    /// Linear memory of one instance, in bytes.
    pub memory_bytes: usize,
}

impl Default for Limits {
    /// The defaults of `policy.timeout_ms` and `policy.memory_mib` (the configuration takes them
    /// from here): 50 ms covers a cold instance of a large catalogue many times over; 16 MiB is
    /// several times what the plan catalogue's snapshot uses.
    fn default() -> Self {
        Limits { timeout: Duration::from_millis(50), memory_bytes: 16 * 1024 * 1024 }
    }
}

impl Limits {
    /// `configure` parses settings and runs once per load: give it more time than a request.
    pub fn configure_timeout(&self) -> Duration {
        (self.timeout * 20).max(Duration::from_secs(2))
    }

    /// How often the epoch advances: a tenth of the deadline, between 1 and 10 ms, so a runaway
    /// guest is stopped within about 10 % of its deadline and the ticker costs nothing measurable.
    fn tick(&self) -> Duration {
        (self.timeout / 10).clamp(Duration::from_millis(1), Duration::from_millis(10))
    }
}

/// The memory cap was hit: raised from the limiter so it is told apart from other traps.
#[derive(Debug)]
struct MemoryCapReached;

impl std::fmt::Display for MemoryCapReached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("memory cap reached")
    }
}

impl std::error::Error for MemoryCapReached {}

/// Per-store data: the guest's WASI context (no capabilities) and its limits.
pub struct GuestState {
    wasi: WasiCtx,
    table: ResourceTable,
    output: MemoryOutputPipe,
    /// The cap on all of the store's linear memories together (a QuickJS guest has two).
    memory_cap: usize,
    /// What the store's linear memories take together, as they were created and grown.
    memory_used: usize,
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl wasmtime::ResourceLimiter for GuestState {
    /// Called as each memory is created (from 0) and grown: the cap holds for their sum, so a
    /// guest cannot take it once per memory.
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Past the memory's own maximum the growth fails anyway (`memory.grow` gives -1): not
        // counted, or a guest probing its limit would be charged for memory it never got.
        if max.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        let used = self.memory_used.saturating_sub(current).saturating_add(desired);
        if used > self.memory_cap {
            return Err(MemoryCapReached.into());
        }
        self.memory_used = used;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// The clock a guest sees: always the Unix epoch.
struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// One engine with its pool, linker, epoch ticker and evaluation slots.
pub struct Runtime {
    engine: Engine,
    linker: Linker<GuestState>,
    limits: Limits,
    slots: Semaphore,
    /// The last module compiled for configuring, by digest: a reload that changes only settings
    /// does not compile it again.
    compiled: std::sync::Mutex<Option<(String, Component)>>,
    /// Compiled code kept on disk between runs (`policy.cache_dir`), if configured.
    code_cache: Option<CodeCache>,
}

impl Runtime {
    pub fn new(limits: Limits, cache_dir: Option<&std::path::Path>) -> wasmtime::Result<Runtime> {
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(POOL_SLOTS)
            .total_core_instances(POOL_SLOTS * CORE_INSTANCES_PER_COMPONENT)
            .total_memories(POOL_SLOTS * MEMORIES_PER_COMPONENT)
            .total_tables(POOL_SLOTS * TABLES_PER_COMPONENT)
            .total_stacks(POOL_SLOTS)
            .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
            .max_memories_per_component(MEMORIES_PER_COMPONENT)
            .max_tables_per_component(TABLES_PER_COMPONENT)
            .max_memory_size(limits.memory_bytes)
            // Reset a returned slot by rewriting its dirty pages instead of unmapping them: the
            // next instance starts without page faults (measured: docs/BENCHMARKS.md).
            .linear_memory_keep_resident(limits.memory_bytes.min(16 * 1024 * 1024))
            .table_keep_resident(256 * 1024)
            .pagemap_scan(wasmtime::Enabled::Auto);

        let mut config = wasmtime::Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config)?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        // JavaScript guests (componentize-qjs) import the module loader QuickJS used while their
        // module was evaluated at build time; at run time there is nothing to load, and every
        // call is answered "not available". It is the one import besides WASI.
        let mut loader = linker.instance(MODULE_LOADER)?;
        loader.func_wrap("resolve", |_, (_, _): (String, String)| Ok((no_modules(),)))?;
        loader.func_wrap("load", |_, (_,): (String,)| Ok((no_modules(),)))?;

        // Without a ticker no deadline would ever fire: refuse to run instead.
        spawn_ticker(&engine, limits.tick())?;
        let code_cache = cache_dir.map(|dir| CodeCache::new(dir, &engine));
        Ok(Runtime {
            engine,
            linker,
            limits,
            slots: Semaphore::new(POOL_SLOTS as usize),
            compiled: std::sync::Mutex::new(None),
            code_cache,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The directory of compiled code, if one is configured.
    pub fn cache_dir(&self) -> Option<&std::path::Path> {
        self.code_cache.as_ref().map(CodeCache::dir)
    }

    /// Compiles `wasm`, or returns the component compiled from the same bytes last time (in this
    /// process, or in the code cache on disk).
    pub fn compile_cached(&self, wasm: &[u8]) -> wasmtime::Result<Component> {
        let digest = super::sha256_hex(wasm);
        if let Ok(compiled) = self.compiled.lock()
            && let Some((cached, component)) = compiled.as_ref()
            && *cached == digest
        {
            return Ok(component.clone());
        }
        let component = self.compile(wasm)?;
        if let Ok(mut compiled) = self.compiled.lock() {
            *compiled = Some((digest, component.clone()));
        }
        Ok(component)
    }

    /// Compiles `wasm`, through the code cache on disk when there is one.
    pub fn compile(&self, wasm: &[u8]) -> wasmtime::Result<Component> {
        match &self.code_cache {
            Some(cache) => cache.component(&self.engine, wasm),
            None => Component::new(&self.engine, wasm),
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Type-checks a component against each contract version's world (newest first) and
    /// resolves its imports, once.
    pub fn pre(&self, component: &Component) -> Result<Pre, String> {
        let instance_pre = self.linker.instantiate_pre(component).map_err(|e| chain(&e))?;
        Pre::new(instance_pre)
    }

    /// [`Runtime::pre`] with any import the host does not offer stubbed, so a component's contract
    /// version can be told even when its imports would be refused (for `policy inspect`).
    pub fn pre_ignoring_imports(&self, component: &Component) -> Result<Pre, String> {
        if self.linker.instantiate_pre(component).is_ok() {
            return self.pre(component);
        }
        let mut linker = self.linker.clone();
        linker.define_unknown_imports_as_traps(component).map_err(|e| chain(&e))?;
        Pre::new(linker.instantiate_pre(component).map_err(|e| chain(&e))?)
    }

    /// Why the host would refuse to link `component`'s imports (an import it does not offer),
    /// without type-checking its exports; `None` when every import resolves.
    pub fn refused_imports(&self, component: &Component) -> Option<String> {
        self.linker.instantiate_pre(component).err().map(|e| chain(&e))
    }

    /// Waits for a pool slot: backpressure instead of a pool-exhausted error.
    pub async fn slot(&self) -> Option<SemaphorePermit<'_>> {
        self.slots.acquire().await.ok()
    }

    /// A fresh store with no capabilities, the memory cap, and a deadline `timeout` from now.
    /// While the deadline is ahead, an epoch tick makes the guest yield to other requests.
    pub fn store(&self, timeout: Duration) -> Store<GuestState> {
        let output = MemoryOutputPipe::new(OUTPUT_CAPACITY);
        let wasi = WasiCtx::builder()
            .stdout(output.clone())
            .stderr(output.clone())
            .wall_clock(FrozenClock)
            .monotonic_clock(FrozenClock)
            .secure_random(wasmtime_wasi::Deterministic::new(vec![0x5a, 0xa5, 0x3c, 0xc3]))
            .insecure_random(wasmtime_wasi::Deterministic::new(vec![0x96, 0x69]))
            .insecure_random_seed(0)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_HOST_HANDLES);
        let state = GuestState { wasi, table, output, memory_cap: self.limits.memory_bytes, memory_used: 0 };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| state);
        store.set_max_component_handles(MAX_COMPONENT_HANDLES);
        Self::set_deadline(&mut store, timeout);
        store
    }

    /// Gives `store` a deadline `timeout` from now (replacing any earlier one): past it, the
    /// guest's code is interrupted at its next epoch check.
    pub fn set_deadline(store: &mut Store<GuestState>, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
    }

    /// Names what went wrong in a store, with the guest's own output when it explains (a panic).
    pub fn classify(&self, error: &wasmtime::Error, store: &Store<GuestState>) -> Fault {
        if error.chain().any(|cause| cause.is::<MemoryCapReached>()) {
            return Fault::Memory(self.limits.memory_bytes);
        }
        let output = String::from_utf8_lossy(&store.data().output.contents()).into_owned();
        match error.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => Fault::Deadline(self.limits.timeout),
            Some(Trap::UnreachableCodeReached) if output.contains("panicked at") => {
                let message = output.lines().skip_while(|l| !l.contains("panicked at")).take(3);
                Fault::Panic(message.collect::<Vec<_>>().join(" ").trim().to_owned())
            }
            Some(trap) => Fault::Trap(trap.to_string()),
            // The store's hostcall fuel ran out while wasmtime copied the answer (its error type
            // is private; its text is tested in policy_runtime's malformed answers).
            None if error.root_cause().to_string().starts_with("too much data is being copied") => {
                Fault::Malformed(format!(
                    "the answer is larger than the {} MiB the host copies out of a policy",
                    super::contract::MAX_ANSWER_BYTES >> 20
                ))
            }
            None if error.chain().any(|cause| {
                matches!(cause.downcast_ref::<ResourceTableError>(), Some(ResourceTableError::Full))
            }) =>
            {
                Fault::Trap(format!(
                    "the policy held more than {MAX_HOST_HANDLES} host handles (WASI streams and the like) at once"
                ))
            }
            None => Fault::Trap(error.root_cause().to_string()),
        }
    }
}

/// A guest type-checked against one contract version: `bindgen!`'s pre-instance for it.
#[derive(Clone)]
pub enum Pre {
    /// `stellaops:registry-policy@0.1.0`.
    V0_1(v0_1::PolicyPre<GuestState>),
    /// `stellaops:registry-policy@0.2.0`.
    V0_2(v0_2::PolicyPre<GuestState>),
}

impl Pre {
    /// The newest contract version whose world the guest implements.
    fn new(instance_pre: InstancePre<GuestState>) -> Result<Pre, String> {
        let newest = match v0_2::PolicyPre::new(instance_pre.clone()) {
            Ok(pre) => return Ok(Pre::V0_2(pre)),
            Err(error) => chain(&error),
        };
        match v0_1::PolicyPre::new(instance_pre) {
            Ok(pre) => Ok(Pre::V0_1(pre)),
            // The newest version's reason: what an author building today should fix.
            Err(_) => Err(newest),
        }
    }

    /// The contract version the guest implements.
    pub fn contract(&self) -> Contract {
        match self {
            Pre::V0_1(_) => Contract::V0_1,
            Pre::V0_2(_) => Contract::V0_2,
        }
    }

    /// The untyped pre-instance (for the configure step, which must keep the instance).
    pub fn instance_pre(&self) -> &InstancePre<GuestState> {
        match self {
            Pre::V0_1(pre) => pre.instance_pre(),
            Pre::V0_2(pre) => pre.instance_pre(),
        }
    }

    /// Calls `configure(settings)` on an instance of this guest.
    pub async fn configure(
        &self,
        store: &mut Store<GuestState>,
        instance: &Instance,
        settings: &str,
    ) -> wasmtime::Result<Result<(), String>> {
        match self {
            Pre::V0_1(_) => v0_1::Policy::new(&mut *store, instance)?.call_configure(store, settings).await,
            Pre::V0_2(_) => v0_2::Policy::new(&mut *store, instance)?.call_configure(store, settings).await,
        }
    }

    /// A fresh instance decides `request`; the answer in the version-neutral form the host checks.
    pub async fn evaluate(
        &self,
        store: &mut Store<GuestState>,
        request: &super::contract::Request<'_>,
    ) -> wasmtime::Result<super::contract::Answer> {
        match self {
            Pre::V0_1(pre) => {
                let exports = pre.instantiate_async(&mut *store).await?;
                let answer = exports.call_evaluate(store, &request.v0_1()).await?;
                Ok(super::contract::Answer::from(answer))
            }
            Pre::V0_2(pre) => {
                let exports = pre.instantiate_async(&mut *store).await?;
                let answer = exports.call_evaluate(store, &request.v0_2()).await?;
                Ok(super::contract::Answer::from(answer))
            }
        }
    }

    /// Instantiates once and drops the instance (the trial at load).
    pub async fn trial(&self, store: &mut Store<GuestState>) -> wasmtime::Result<()> {
        self.instance_pre().instantiate_async(store).await.map(drop)
    }
}

/// Runs a guest call under a wall-clock deadline. The epoch deadline stops a guest that computes;
/// this one stops a guest that waits inside the host (a WASI `poll` on a timer, as
/// `std::thread::sleep` does), where no epoch check runs. Dropping the call tears its fiber down;
/// the store goes with it.
pub(super) async fn within<T>(timeout: Duration, call: impl Future<Output = T>) -> Result<T, Fault> {
    tokio::time::timeout(timeout, call).await.map_err(|_| Fault::Deadline(timeout))
}

/// Advances the engine's epoch every `tick` until the engine is dropped.
fn spawn_ticker(engine: &Engine, tick: Duration) -> std::io::Result<()> {
    let weak = engine.weak();
    std::thread::Builder::new().name("policy-epoch".into()).spawn(move || {
        while let Some(engine) = weak.upgrade() {
            engine.increment_epoch();
            drop(engine);
            std::thread::sleep(tick);
        }
    })?;
    Ok(())
}

/// An error with its causes, for load-time messages (never sent to clients).
fn chain(error: &wasmtime::Error) -> String {
    error.chain().map(ToString::to_string).collect::<Vec<_>>().join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A component of two core modules, each with a linear memory of `pages` 64 KiB pages.
    fn two_memories(runtime: &Runtime, pages: u32) -> Component {
        let text = format!(
            "(component (core module $a (memory {pages})) (core module $b (memory {pages}))
               (core instance (instantiate $a)) (core instance (instantiate $b)))"
        );
        Component::new(runtime.engine(), wat::parse_str(text).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn the_memory_cap_holds_for_all_of_a_stores_memories_together() {
        let runtime = Runtime::new(Limits { memory_bytes: 16 << 20, ..Limits::default() }, None).unwrap();
        let linker = Linker::<GuestState>::new(runtime.engine());
        // 2 × 6.25 MiB fit in 16 MiB.
        let mut store = runtime.store(Duration::from_secs(5));
        linker.instantiate_async(&mut store, &two_memories(&runtime, 100)).await.unwrap();
        // 2 × 12.5 MiB do not, though each alone would.
        let mut store = runtime.store(Duration::from_secs(5));
        let error = linker.instantiate_async(&mut store, &two_memories(&runtime, 200)).await.unwrap_err();
        assert!(error.chain().any(|cause| cause.is::<MemoryCapReached>()), "{error:?}");
    }

    #[tokio::test]
    async fn a_growth_past_a_memorys_own_maximum_is_not_charged_to_the_cap() {
        let runtime = Runtime::new(Limits { memory_bytes: 16 << 20, ..Limits::default() }, None).unwrap();
        let linker = Linker::<GuestState>::new(runtime.engine());
        // The first memory asks for 15.6 MiB past its maximum of two pages (and gets -1); the
        // second then takes 12.5 MiB, which fits beside the first's real 64 KiB.
        let text = "(component
            (core module $a (memory 1 2) (func $probe (drop (memory.grow (i32.const 250)))) (start $probe))
            (core module $b (memory 200))
            (core instance (instantiate $a)) (core instance (instantiate $b)))";
        let component = Component::new(runtime.engine(), wat::parse_str(text).unwrap()).unwrap();
        let mut store = runtime.store(Duration::from_secs(5));
        linker.instantiate_async(&mut store, &component).await.unwrap();
    }
}
