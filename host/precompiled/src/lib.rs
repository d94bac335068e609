//! A directory of compiled policy code (`policy.cache_dir`), so a large guest (a JavaScript policy
//! is 1.6 MB of QuickJS) starts and reloads without compiling it again.
//!
//! An entry is one file, `<sha256 of the wasm>-<hash of the engine's compile settings>.cwasm`,
//! holding a header and what `Engine::precompile_component` produced. Loading compiled code runs
//! it as native code, so wasmtime marks `Component::deserialize` unsafe: it must only see bytes
//! this host wrote for this engine. Before an entry is used this crate checks, in order:
//!
//! 1. the directory and the file belong to the same user and neither is writable by group or
//!    others (nobody else can have placed or changed it);
//! 2. the header: magic, format version, the SHA-256 of the wasm and the engine hash it was
//!    compiled for (a file copied under another name, or from another configuration, is foreign);
//! 3. the SHA-256 of the compiled bytes (a truncated or corrupted file);
//! 4. wasmtime's own check that the bytes are a component for this wasmtime and configuration.
//!
//! Anything that fails is logged, never loaded, and replaced by a fresh compilation (written to a
//! temporary file and renamed into place, so a reader never sees half an entry). A cache that
//! cannot be written is not an error: the component is compiled as without a cache.

use sha2::{Digest, Sha256};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use wasmtime::component::Component;
use wasmtime::{Engine, Precompiled};

/// Identifies the file format; bump the digit when the header changes.
const MAGIC: &[u8; 8] = b"RTCODE1\n";
/// Magic, the wasm's SHA-256, the engine hash, the compiled bytes' SHA-256.
const HEADER_LEN: usize = 8 + 32 + 32 + 32;

/// What happened to one lookup, for logs and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A verified entry was loaded.
    Hit,
    /// No entry: compiled and stored.
    Miss,
    /// An entry failed verification (the reason): compiled again and replaced.
    Refused(String),
}

/// The cache directory of one engine.
#[derive(Debug)]
pub struct CodeCache {
    dir: PathBuf,
    engine_hash: [u8; 32],
}

/// Feeds `Hash` output into SHA-256, so the engine's compile settings give a stable file name.
struct Sha256Hasher(Sha256);

impl std::hash::Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

impl CodeCache {
    /// A cache in `dir` for code compiled by `engine` (the directory is created, mode 0700, on first
    /// write).
    pub fn new(dir: &Path, engine: &Engine) -> CodeCache {
        let mut hasher = Sha256Hasher(Sha256::new());
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
        CodeCache { dir: dir.to_owned(), engine_hash: hasher.0.finalize().into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file an entry for `wasm` lives in.
    pub fn entry_path(&self, wasm: &[u8]) -> PathBuf {
        let hex = data_encoding::HEXLOWER;
        let module = hex.encode(&Sha256::digest(wasm));
        self.dir.join(format!("{module}-{}.cwasm", &hex.encode(&self.engine_hash)[..16]))
    }

    /// `wasm` compiled by `engine`: from a verified entry, or compiled now (and stored).
    pub fn component(&self, engine: &Engine, wasm: &[u8]) -> wasmtime::Result<Component> {
        self.component_with_outcome(engine, wasm).map(|(component, _)| component)
    }

    /// [`CodeCache::component`], saying whether the entry was used.
    pub fn component_with_outcome(
        &self,
        engine: &Engine,
        wasm: &[u8],
    ) -> wasmtime::Result<(Component, Outcome)> {
        let path = self.entry_path(wasm);
        let module_digest: [u8; 32] = Sha256::digest(wasm).into();
        let outcome = match self.read_verified(&path, &module_digest) {
            Ok(Some(compiled)) => match deserialize(engine, &compiled) {
                Ok(component) => return Ok((component, Outcome::Hit)),
                Err(error) => Outcome::Refused(format!("wasmtime refused it: {}", error.root_cause())),
            },
            Ok(None) => Outcome::Miss,
            Err(reason) => Outcome::Refused(reason),
        };
        if let Outcome::Refused(reason) = &outcome {
            tracing::warn!(
                entry = %path.display(),
                reason = reason.as_str(),
                "policy.cache_dir: refused a compiled-code entry; compiling again"
            );
        }
        let compiled = engine.precompile_component(wasm)?;
        if let Err(error) = self.write(&path, &module_digest, &compiled) {
            tracing::warn!(
                dir = %self.dir.display(),
                %error,
                "policy.cache_dir: cannot store compiled code; the next start compiles again"
            );
        }
        Ok((deserialize(engine, &compiled)?, outcome))
    }

    /// The compiled bytes of a verified entry; `Ok(None)` when there is none, `Err(reason)` when
    /// there is one that must not be used.
    fn read_verified(&self, path: &Path, module_digest: &[u8; 32]) -> Result<Option<Vec<u8>>, String> {
        let file_meta = match fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(format!("cannot read it: {error}")),
        };
        let dir_meta = fs::metadata(&self.dir).map_err(|e| format!("cannot read the directory: {e}"))?;
        if !file_meta.file_type().is_file() {
            return Err("it is not a regular file".to_owned());
        }
        // Only this service's user (or root) may have placed it, or made the directory it is in,
        // and nobody else may write either: another user's compiled code would run as the policy.
        let me = rustix::process::geteuid().as_raw();
        for (what, meta) in [("the directory", &dir_meta), ("the file", &file_meta)] {
            if meta.uid() != me && meta.uid() != 0 {
                return Err(format!(
                    "{what} belongs to uid {}, neither this service's user ({me}) nor root",
                    meta.uid()
                ));
            }
            if meta.mode() & 0o022 != 0 {
                return Err(format!(
                    "{what} is writable by group or others (mode {:o})",
                    meta.mode() & 0o777
                ));
            }
        }
        let bytes = fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
        let Some((header, compiled)) = bytes.split_at_checked(HEADER_LEN) else {
            return Err("it is shorter than its header".to_owned());
        };
        if &header[..8] != MAGIC {
            return Err("it is not a registry-token code-cache entry of this format".to_owned());
        }
        if header[8..40] != module_digest[..] {
            return Err("it was compiled from another module".to_owned());
        }
        if header[40..72] != self.engine_hash[..] {
            return Err("it was compiled for another engine configuration".to_owned());
        }
        if header[72..104] != Sha256::digest(compiled)[..] {
            return Err("its compiled code does not match its checksum (corrupted or truncated)".to_owned());
        }
        if Engine::detect_precompiled(compiled) != Some(Precompiled::Component) {
            return Err("its payload is not a compiled component".to_owned());
        }
        Ok(Some(compiled.to_vec()))
    }

    fn write(&self, path: &Path, module_digest: &[u8; 32], compiled: &[u8]) -> std::io::Result<()> {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.dir)?;
        let mut file = tempfile::NamedTempFile::new_in(&self.dir)?;
        file.as_file().set_permissions(fs::Permissions::from_mode(0o600))?;
        file.write_all(MAGIC)?;
        file.write_all(module_digest)?;
        file.write_all(&self.engine_hash)?;
        file.write_all(&Sha256::digest(compiled))?;
        file.write_all(compiled)?;
        file.as_file().sync_all()?;
        file.persist(path).map_err(|e| e.error)?;
        Ok(())
    }
}

/// Loads compiled code.
#[allow(unsafe_code)]
fn deserialize(engine: &Engine, compiled: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: wasmtime requires that the bytes come from `Engine::precompile_component` of a
    // compatible engine and were not tampered with. They either were produced by `engine` in this
    // process a moment ago, or passed `read_verified`: a file only this user (or root) can write, whose
    // header names this module and this engine configuration, and whose checksum matches. wasmtime
    // then checks the version and configuration in the bytes themselves.
    unsafe { Component::deserialize(engine, compiled) }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const ANSWER: &str = r#"(component
        (core module $m (func (export "f") (result i32) i32.const 42))
        (core instance $i (instantiate $m))
        (func (export "answer") (result u32) (canon lift (core func $i "f"))))"#;
    const OTHER: &str = r#"(component
        (core module $m (func (export "f") (result i32) i32.const 7))
        (core instance $i (instantiate $m))
        (func (export "answer") (result u32) (canon lift (core func $i "f"))))"#;

    fn answer(engine: &Engine, component: &Component) -> u32 {
        let mut store = wasmtime::Store::new(engine, ());
        let linker = wasmtime::component::Linker::<()>::new(engine);
        let instance = linker.instantiate(&mut store, component).unwrap();
        let f = instance.get_typed_func::<(), (u32,)>(&mut store, "answer").unwrap();
        f.call(&mut store, ()).unwrap().0
    }

    fn engine() -> Engine {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        Engine::new(&config).unwrap()
    }

    fn wat(text: &str) -> Vec<u8> {
        wat::parse_str(text).unwrap()
    }

    #[test]
    fn a_second_lookup_loads_the_entry_and_a_corrupted_one_is_refused_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let cache_dir = dir.path().join("code");
        let engine = engine();
        let cache = CodeCache::new(&cache_dir, &engine);
        let module = wat(ANSWER);

        let (component, outcome) = cache.component_with_outcome(&engine, &module).unwrap();
        assert_eq!((answer(&engine, &component), outcome), (42, Outcome::Miss));
        let path = cache.entry_path(&module);
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let (component, outcome) = cache.component_with_outcome(&engine, &module).unwrap();
        assert_eq!((answer(&engine, &component), outcome), (42, Outcome::Hit));

        // One flipped byte in the compiled code.
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 100;
        bytes[last] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        let (component, outcome) = cache.component_with_outcome(&engine, &module).unwrap();
        assert_eq!(answer(&engine, &component), 42);
        assert!(matches!(&outcome, Outcome::Refused(r) if r.contains("checksum")), "{outcome:?}");
        // Replaced by a good entry.
        assert_eq!(cache.component_with_outcome(&engine, &module).unwrap().1, Outcome::Hit);

        // Truncated.
        fs::write(&path, &fs::read(&path).unwrap()[..50]).unwrap();
        let outcome = cache.component_with_outcome(&engine, &module).unwrap().1;
        assert!(matches!(&outcome, Outcome::Refused(r) if r.contains("shorter")), "{outcome:?}");
    }

    #[test]
    fn a_foreign_entry_is_refused_never_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine();
        let cache = CodeCache::new(dir.path(), &engine);
        let (answer_wasm, other_wasm) = (wat(ANSWER), wat(OTHER));
        cache.component(&engine, &other_wasm).unwrap();
        // Another module's entry, under this module's name: loading it would answer 7.
        fs::copy(cache.entry_path(&other_wasm), cache.entry_path(&answer_wasm)).unwrap();
        let (component, outcome) = cache.component_with_outcome(&engine, &answer_wasm).unwrap();
        assert_eq!(answer(&engine, &component), 42);
        assert!(matches!(&outcome, Outcome::Refused(r) if r.contains("another module")), "{outcome:?}");

        // An entry of another engine configuration (fuel on changes the compiled code).
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true).consume_fuel(true);
        let fueled = Engine::new(&config).unwrap();
        let foreign = CodeCache::new(dir.path(), &fueled);
        foreign.component(&fueled, &other_wasm).unwrap();
        fs::copy(foreign.entry_path(&other_wasm), cache.entry_path(&other_wasm)).unwrap();
        let outcome = cache.component_with_outcome(&engine, &other_wasm).unwrap().1;
        assert!(matches!(&outcome, Outcome::Refused(r) if r.contains("another engine")), "{outcome:?}");

        // Writable by others: refused whatever it holds.
        let path = cache.entry_path(&answer_wasm);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
        let outcome = cache.component_with_outcome(&engine, &answer_wasm).unwrap().1;
        assert!(matches!(&outcome, Outcome::Refused(r) if r.contains("writable")), "{outcome:?}");
    }

    /// An entry another user placed (mode 0600, a valid header and checksum: what that user's own
    /// run of the same binary writes) in a directory that user made is refused: its code would run
    /// as the policy. Needs root, as the test command does (it installs packages): only root can
    /// give a file to another user.
    #[test]
    fn an_entry_or_directory_of_another_user_is_refused() {
        assert_eq!(
            rustix::process::geteuid().as_raw(),
            0,
            "this test gives files to another user: run it as root"
        );
        let nobody = 65534;
        let dir = tempfile::tempdir().unwrap();
        let engine = engine();
        let cache = CodeCache::new(dir.path(), &engine);
        let module = wat(ANSWER);
        cache.component(&engine, &module).unwrap();
        let path = cache.entry_path(&module);
        std::os::unix::fs::chown(&path, Some(nobody), None).unwrap();
        let outcome = cache.component_with_outcome(&engine, &module).unwrap().1;
        assert!(
            matches!(&outcome, Outcome::Refused(r) if r.contains("the file belongs to uid 65534")),
            "{outcome:?}"
        );
        // Replaced by this user's own entry; then the directory is given away.
        assert_eq!(cache.component_with_outcome(&engine, &module).unwrap().1, Outcome::Hit);
        std::os::unix::fs::chown(dir.path(), Some(nobody), None).unwrap();
        let outcome = cache.component_with_outcome(&engine, &module).unwrap().1;
        assert!(
            matches!(&outcome, Outcome::Refused(r) if r.contains("the directory belongs to uid 65534")),
            "{outcome:?}"
        );
    }
}
