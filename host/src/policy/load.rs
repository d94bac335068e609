//! Loading a policy: take it out of a componentize-qjs composition (`compose`) → give QuickJS its
//! own function table (`relink`) → instrument for wizer → compile → type-check against the world
//! → instantiate → `configure(settings)` → snapshot the configured instance → compile the
//! snapshot → type-check it → one trial instantiation. Settings are parsed once, here, never per request.

use super::cache::DecisionCache;
use super::runtime::{Runtime, within};
use super::snapshot::Configured;
use super::{Fault, LoadError, Loaded, Policy, sha256_hex};
use std::sync::Arc;

/// Runs the whole pipeline for `module` in `runtime`. CPU-heavy (two compilations): callers run
/// it off the request path.
pub(super) async fn load(
    runtime: Arc<Runtime>,
    module: &[u8],
    source_name: &str,
    settings_json: &str,
    decision_cache: usize,
) -> Result<Policy, LoadError> {
    let source = source_name.to_owned();
    let compile_error =
        |e: wasmtime::Error| LoadError::Compile { source_name: source.clone(), reason: root(&e) };
    let world_error = |reason: String| LoadError::World { source_name: source.clone(), reason };
    let snapshot_error =
        |e: wasmtime::Error| LoadError::Snapshot { source_name: source.clone(), reason: root(&e) };

    // wizer instruments the component so its state can be read back after `configure`.
    let wizer = {
        let mut wizer = wasmtime_wizer::Wizer::new();
        wizer.init_func("configure").keep_init_func(true);
        wizer
    };
    // A JavaScript policy as componentize-qjs composes it: the policy component alone (`compose`).
    let component_bytes = super::compose::policy_component(module);
    // Its function table moved into the module that fills it, so each fresh instance fills it
    // lazily instead of slot by slot (`relink`).
    let component_bytes = super::relink::own_table(component_bytes).bytes;
    let (context, instrumented) = wizer.instrument_component(&component_bytes).map_err(compile_error)?;
    let component = runtime.compile_cached(&instrumented).map_err(compile_error)?;
    let pre = runtime.pre(&component).map_err(world_error)?;

    // Configuring takes a pool slot like any evaluation, so a reload under load cannot exhaust
    // the pool that requests are using.
    let slot = runtime.slot().await;
    let timeout = runtime.limits().configure_timeout();
    let mut store = runtime.store(timeout);
    let configured = within(timeout, async {
        let instance = pre.instance_pre().instantiate_async(&mut store).await?;
        let answer = pre.configure(&mut store, &instance, settings_json).await?;
        Ok::<_, wasmtime::Error>((instance, answer))
    })
    .await;
    let instance = match configured {
        Ok(Ok((instance, Ok(())))) => instance,
        Ok(Ok((_, Err(reason)))) => return Err(LoadError::Settings { source_name: source, reason }),
        Ok(Err(error)) => {
            // Stopped by the epoch: at `configure`'s deadline, not a request's.
            let fault = match runtime.classify(&error, &store) {
                Fault::Deadline(_) => Fault::Deadline(timeout),
                fault => fault,
            };
            return Err(LoadError::Configure { source_name: source, fault });
        }
        Err(fault) => return Err(LoadError::Configure { source_name: source, fault }),
    };

    // Reading the state back runs wizer's accessors, not the guest's code, under a deadline of
    // its own: a `configure` that finished just in time is not interrupted in the read-back.
    Runtime::set_deadline(&mut store, timeout);
    // Each accessor call copies a whole memory out: allow the largest memory the limits allow
    // (wasmtime's default, 128 MiB, is less than `policy.memory_mib` may be).
    store.set_hostcall_fuel(runtime.limits().memory_bytes.saturating_add(1 << 20));
    let mut configured = Configured::new(&mut store, instance);
    let snapshot = wizer.snapshot_component(&context, &mut configured).await;
    let snapshot = snapshot.and_then(|snapshot| configured.finish(snapshot)).map_err(snapshot_error)?;
    drop(store);
    drop(slot);

    let component = runtime.compile(&snapshot).map_err(snapshot_error)?;
    let pre = runtime.pre(&component).map_err(world_error)?;

    // One instantiation now, so a snapshot that cannot start under the limits (its memory is
    // already over the cap, say) is refused at load rather than on every request.
    let trial = {
        let _slot = runtime.slot().await;
        let mut store = runtime.store(runtime.limits().timeout);
        pre.trial(&mut store).await.map_err(|error| runtime.classify(&error, &store))
    };
    if let Err(fault) = trial {
        return Err(LoadError::Configure { source_name: source, fault });
    }
    Ok(Policy {
        inner: Arc::new(Loaded {
            runtime,
            pre,
            source,
            digest: sha256_hex(module),
            settings_version: sha256_hex(settings_json.as_bytes()),
            decisions: DecisionCache::new(decision_cache),
        }),
    })
}

fn root(error: &wasmtime::Error) -> String {
    error.root_cause().to_string()
}
