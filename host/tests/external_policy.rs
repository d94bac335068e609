//! The README's "Writing a policy", done for real: a crate outside the repository, depending only
//! on `guest/` (and through it `wit/`), built for wasm32-wasip2 and run through `policy test`.
//! The crate's source is taken from the README itself, so the documentation cannot drift.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_registry-token");

/// The text between `cat > FILE <<'TAG'` and `TAG` in the README.
fn readme_heredoc(readme: &str, opening: &str, tag: &str) -> String {
    let start = readme.find(opening).unwrap_or_else(|| panic!("README has no {opening:?}")) + opening.len();
    let rest = &readme[start..];
    let end = rest.find(&format!("\n{tag}\n")).unwrap();
    rest[..end].trim_start_matches('\n').to_owned() + "\n"
}

#[test]
fn a_policy_written_outside_the_repository_builds_and_runs() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().canonicalize().unwrap();
    let readme = std::fs::read_to_string(repo.join("README.md")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let krate = dir.path().join("my-policy");
    std::fs::create_dir_all(krate.join("src")).unwrap();

    let dependencies = readme_heredoc(&readme, "cat >> Cargo.toml <<'TOML'", "TOML")
        .replace("/path/to/registry-token/guest", &repo.join("guest").display().to_string());
    std::fs::write(
        krate.join("Cargo.toml"),
        format!("[package]\nname = \"my-policy\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[dependencies]\n{dependencies}"),
    )
    .unwrap();
    std::fs::write(krate.join("src/lib.rs"), readme_heredoc(&readme, "cat > src/lib.rs <<'RS'", "RS"))
        .unwrap();
    // The same versions the workspace builds with (cargo prunes what this crate does not use).
    std::fs::copy(repo.join("Cargo.lock"), krate.join("Cargo.lock")).unwrap();

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let build = Command::new(cargo)
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .current_dir(&krate)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "the external policy did not build:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let wasm = krate.join("target/wasm32-wasip2/release/my_policy.wasm");
    assert!(wasm.is_file());

    std::fs::write(krate.join("cases.yaml"), readme_heredoc(&readme, "cat > cases.yaml <<'YAML'", "YAML"))
        .unwrap();
    let test = Command::new(BIN)
        .args(["policy", "test", "--policy"])
        .arg(&wasm)
        .arg(krate.join("cases.yaml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&test.stdout);
    assert!(test.status.success(), "{stdout}{}", String::from_utf8_lossy(&test.stderr));
    assert_eq!(stdout.lines().last(), Some("2 passed, 0 failed"));
}
