//! Shared by the build scripts of `registry-token` (the embedded default policy) and `test-support`
//! (the hostile test guests): compile workspace crates to WebAssembly components.
//!
//! The nested cargo uses its own target directory under `OUT_DIR`, so it never waits on the lock
//! of the outer build, and the workspace's `Cargo.lock`, so guests build from the same versions.

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

/// Builds each `(package, env)` for wasm32-wasip2 and exports its path as the compile-time
/// environment variable `env`; then each `(package, feature, env)` once more with that cargo
/// feature (another build of the same crate: against an older contract version, say). `watch`
/// lists crate directories, relative to the workspace root, whose changes trigger a rebuild (the
/// SDK and the WIT are always watched).
pub fn build(packages: &[(&str, &str)], featured: &[(&str, &str, &str)], watch: &[&str]) {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let root = workspace_root(&manifest_dir);
    let out_dir = PathBuf::from(env("OUT_DIR"));
    let target_dir = out_dir.join("guests");

    for dir in ["wit", "guest", "Cargo.lock"].iter().chain(watch) {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }

    // Guests build with the workspace's pinned toolchain (rust-toolchain.toml, which brings the
    // wasm32-wasip2 target) even when the host is built with another (`cargo +nightly fuzz`):
    // through rustup's `cargo` when rustup is there, with the outer toolchain's choices removed.
    let rustup = std::env::var_os("RUSTUP_HOME").is_some() || std::env::var_os("RUSTUP_TOOLCHAIN").is_some();
    let cargo = match rustup {
        true => "cargo".to_owned(),
        false => std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()),
    };
    if rustup {
        ensure_target(&root);
    }
    let builds = std::iter::once((packages.iter().map(|(p, e)| (*p, *e)).collect::<Vec<_>>(), None))
        .chain(featured.iter().map(|(package, feature, env)| (vec![(*package, *env)], Some(*feature))));
    for (packages, feature) in builds {
        if !packages.is_empty() {
            build_once(&cargo, rustup, &root, &target_dir, &out_dir, &packages, feature);
        }
    }
}

/// One nested `cargo build` of `packages` (with `feature`, if any), copied to `out_dir` under a name
/// that says which feature, and exported.
fn build_once(
    cargo: &str,
    rustup: bool,
    root: &Path,
    target_dir: &Path,
    out_dir: &Path,
    packages: &[(&str, &str)],
    feature: Option<&str>,
) {
    let mut command = Command::new(cargo);
    if rustup {
        command.env_remove("RUSTUP_TOOLCHAIN").env_remove("RUSTC").env_remove("RUSTDOC");
    }
    command
        .current_dir(root)
        .args(["build", "--release", "--locked", "--target", TARGET])
        .arg("--target-dir")
        .arg(target_dir)
        // Names stay for readable traps; DWARF would make each guest megabytes larger.
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo")
        // Flags meant for the host build (instrumentation, target-cpu) must not reach the guest.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET");
    for (package, _) in packages {
        command.args(["--package", package]);
    }
    if let Some(feature) = feature {
        command.args(["--features", feature]);
    }

    let status = match command.status() {
        Ok(status) => status,
        Err(e) => fail(&format!("could not run cargo to build the policy guests: {e}")),
    };
    if !status.success() {
        fail(&format!(
            "building the policy guests for {TARGET} failed (see above). Without rustup the target \
             cannot be added here: install the Rust standard library for {TARGET} for this toolchain."
        ));
    }

    for (package, env_name) in packages {
        let file = format!("{}.wasm", package.replace('-', "_"));
        let built = target_dir.join(TARGET).join("release").join(&file);
        let dest = match feature {
            None => out_dir.join(&file),
            Some(feature) => out_dir.join(format!("{}-{feature}.wasm", package.replace('-', "_"))),
        };
        if let Err(e) = std::fs::copy(&built, &dest) {
            fail(&format!("{} was not produced: {e}", built.display()));
        }
        println!("cargo:rustc-env={env_name}={}", dest.display());
    }
}

/// rustup installs the targets that `rust-toolchain.toml` lists only when it installs the toolchain
/// itself; a machine that already had the toolchain lacks `wasm32-wasip2`. Add it here, once, so
/// `cargo run` works on such a machine with no extra step, and say so. Both build scripts (the
/// host's and test-support's) may run at once: a lock file keeps them from racing in rustup.
fn ensure_target(root: &Path) {
    let pinned = |program: &str| {
        let mut command = Command::new(program);
        command
            .current_dir(root)
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("RUSTC")
            .env_remove("RUSTDOC")
            .env_remove("CARGO");
        command
    };
    let installed = || {
        pinned("rustc")
            .args(["--print", "target-libdir", "--target", TARGET])
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()))
            .is_some_and(|libdir| has_std(&libdir))
    };
    if installed() {
        return;
    }
    let lock_path = std::env::temp_dir().join("registry-token-rustup-target.lock");
    let lock = std::fs::File::create(&lock_path)
        .and_then(|file| file.lock().map(|()| file))
        .unwrap_or_else(|e| fail(&format!("cannot lock {}: {e}", lock_path.display())));
    if !installed() {
        println!(
            "cargo:warning=the {TARGET} target is missing from the pinned toolchain; \
             installing it with `rustup target add {TARGET}` (rust-toolchain.toml lists it)"
        );
        let status = pinned("rustup").args(["target", "add", TARGET]).status();
        match status {
            Ok(status) if status.success() => {}
            Ok(status) => fail(&format!(
                "`rustup target add {TARGET}` failed ({status}); install the target and build again"
            )),
            Err(e) => fail(&format!("cannot run rustup to add {TARGET}: {e}")),
        }
    }
    drop(lock);
}

/// Whether a target's library directory holds the standard library (`libstd-<hash>.rlib`).
fn has_std(libdir: &Path) -> bool {
    std::fs::read_dir(libdir).is_ok_and(|entries| {
        entries.filter_map(Result::ok).any(|entry| entry.file_name().to_string_lossy().starts_with("libstd-"))
    })
}

fn workspace_root(manifest_dir: &Path) -> PathBuf {
    manifest_dir
        .ancestors()
        .find(|dir| dir.join("rust-toolchain.toml").is_file())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| fail("cannot find the workspace root (rust-toolchain.toml) above the crate"))
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| fail(&format!("cargo did not set {name}")))
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1)
}
