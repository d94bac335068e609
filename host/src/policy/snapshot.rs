//! Reading a configured instance's state back for wizer's snapshot.
//!
//! wizer instruments a component with accessor functions (one per global and memory) and calls
//! them through a [`ComponentInstanceState`]. Its own implementation, behind its `wasmtime`
//! feature, panics when a call fails, and that feature also compiles wasmtime's GC, threads and
//! code cache into the service, none of which a policy needs. This one records the first failure
//! instead: wizer's interface has no room for an error, so [`Configured::finish`] discards the
//! snapshot built around it and reports why.

use wasmtime::Store;
use wasmtime::component::{Instance, Lift, WasmList};
use wasmtime_wizer::ComponentInstanceState;

pub(super) struct Configured<'a, T: 'static> {
    store: &'a mut Store<T>,
    instance: Instance,
    failure: Option<wasmtime::Error>,
}

impl<'a, T: Send> Configured<'a, T> {
    pub(super) fn new(store: &'a mut Store<T>, instance: Instance) -> Self {
        Configured { store, instance, failure: None }
    }

    /// The snapshot wizer built, unless one of the reads it was built from failed.
    pub(super) fn finish(self, snapshot: Vec<u8>) -> wasmtime::Result<Vec<u8>> {
        match self.failure {
            None => Ok(snapshot),
            Some(error) => Err(error.context("reading the configured state back failed")),
        }
    }

    /// Calls the accessor `instance#func` and hands its result to `read`; after a failure, calls
    /// nothing more and answers `O::default()`, which [`Configured::finish`] never lets out.
    async fn read<R, O>(&mut self, instance: &str, func: &str, read: impl FnOnce(&Store<T>, R) -> O) -> O
    where
        R: Lift + Send + Sync + 'static,
        O: Default,
    {
        if self.failure.is_some() {
            return O::default();
        }
        match self.call::<R>(instance, func).await {
            Ok(value) => read(self.store, value),
            Err(error) => {
                self.failure = Some(error);
                O::default()
            }
        }
    }

    async fn call<R: Lift + Send + Sync + 'static>(
        &mut self,
        instance: &str,
        func: &str,
    ) -> wasmtime::Result<R> {
        let missing =
            || wasmtime::format_err!("the instrumented component does not export {instance}#{func}");
        let (_, exported) = self.instance.get_export(&mut *self.store, None, instance).ok_or_else(missing)?;
        let (_, index) =
            self.instance.get_export(&mut *self.store, Some(&exported), func).ok_or_else(missing)?;
        let accessor = self.instance.get_typed_func::<(), (R,)>(&mut *self.store, index)?;
        let (value,) = accessor.call_async(&mut *self.store, ()).await?;
        Ok(value)
    }
}

impl<T: Send> ComponentInstanceState for Configured<'_, T> {
    async fn call_func_ret_list_u8(
        &mut self,
        instance: &str,
        func: &str,
        contents: impl FnOnce(&[u8]) + Send,
    ) {
        let mut contents = Some(contents);
        self.read(instance, func, |store, list: WasmList<u8>| {
            if let Some(contents) = contents.take() {
                contents(list.as_le_slice(store));
            }
        })
        .await;
        // After a failed read wizer still counts on one memory's contents (it records a size per
        // memory and asserts on the count when it rewrites): empty ones, in a snapshot that
        // `finish` discards.
        if let Some(contents) = contents.take() {
            contents(&[]);
        }
    }

    async fn call_func_ret_s32(&mut self, instance: &str, func: &str) -> i32 {
        self.read(instance, func, |_, value| value).await
    }

    async fn call_func_ret_s64(&mut self, instance: &str, func: &str) -> i64 {
        self.read(instance, func, |_, value| value).await
    }

    async fn call_func_ret_f32(&mut self, instance: &str, func: &str) -> u32 {
        self.read(instance, func, |_, value: f32| value.to_bits()).await
    }

    async fn call_func_ret_f64(&mut self, instance: &str, func: &str) -> u64 {
        self.read(instance, func, |_, value: f64| value.to_bits()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::Engine;
    use wasmtime::component::{Component, Linker};

    #[tokio::test]
    async fn a_read_that_fails_discards_the_snapshot_instead_of_panicking() {
        // A component without wizer's accessors: every read fails.
        let engine = Engine::default();
        let component = Component::new(&engine, wat::parse_str("(component)").unwrap()).unwrap();
        let mut store = Store::new(&engine, ());
        let instance = Linker::new(&engine).instantiate_async(&mut store, &component).await.unwrap();
        let mut configured = Configured::new(&mut store, instance);

        assert_eq!(configured.call_func_ret_s32("wasmtime:wizer/access", "global-get-0").await, 0);
        let mut read = None;
        configured.call_func_ret_list_u8("wasmtime:wizer/access", "memory-0", |c| read = Some(c.len())).await;
        assert_eq!(read, Some(0), "empty contents after a failed read, so wizer's rewrite stays consistent");
        let error = configured.finish(b"a snapshot built around the failure".to_vec()).unwrap_err();
        let message = format!("{error:#}");
        assert!(message.contains("reading the configured state back failed"), "{message}");
        assert!(message.contains("does not export wasmtime:wizer/access#global-get-0"), "{message}");
    }
}
