//! The "Writing a policy" pages (docs/POLICY-RUST.md, docs/POLICY-JS.md), done for real: their
//! commands are extracted from the pages and run in an empty directory — `policy new`, the build,
//! `policy test`, `policy inspect` — and the configuration they give is served, so the pages cannot
//! drift from the code. Also the JavaScript plan catalogue against the Rust one's cases, and the
//! JavaScript SDK's own tests (the pattern table both SDKs share) under Node.
//!
//! JavaScript needs componentize-qjs: `tests/run` installs its npm package into target/tools and
//! names it in `COMPONENTIZE_QJS`; otherwise it must be on PATH. Node.js runs the SDK's tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use test_support::Server;

const BIN: &str = env!("CARGO_BIN_EXE_registry-token");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().canonicalize().unwrap()
}

/// The componentize-qjs command, failing with how to install it when it is missing.
fn componentize_qjs() -> String {
    let command = std::env::var("COMPONENTIZE_QJS").unwrap_or_else(|_| "componentize-qjs".to_owned());
    let found = Command::new(&command).arg("--help").output();
    assert!(
        found.is_ok(),
        "{command} is not installed: npm install -g componentize-qjs@0.4.5 (bash tests/run installs it \
         into target/tools), or set COMPONENTIZE_QJS"
    );
    command
}

/// The fenced blocks of `language` in a Markdown page, in order.
fn blocks(page: &str, language: &str) -> Vec<String> {
    let fence = format!("```{language}\n");
    let mut found = Vec::new();
    let mut rest = page;
    while let Some(start) = rest.find(&fence) {
        let body = &rest[start + fence.len()..];
        let end = body.find("\n```").unwrap();
        found.push(body[..end].to_owned() + "\n");
        rest = &body[end + 4..];
    }
    found
}

/// Runs a page's shell blocks in `dir` with bash, `registry-token` meaning this build's binary.
fn run_page_commands(page: &str, dir: &Path) -> Output {
    let script = format!(
        "set -euo pipefail\nregistry-token() {{ {BIN:?} \"$@\"; }}\ncomponentize-qjs() {{ {:?} \"$@\"; }}\n{}",
        std::env::var("COMPONENTIZE_QJS").unwrap_or_else(|_| "componentize-qjs".to_owned()),
        blocks(page, "sh").concat()
    );
    Command::new("bash")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .unwrap()
}

/// Walks a page: its commands must succeed and print the case count the page shows; then the
/// configuration it gives is served and a tenant's push gets the lifetime the policy asks for.
fn walk(page_name: &str) {
    let page = std::fs::read_to_string(repo().join(page_name)).unwrap();
    let work = tempfile::tempdir().unwrap();
    let ran = run_page_commands(&page, work.path());
    let stdout = String::from_utf8_lossy(&ran.stdout);
    let stderr = String::from_utf8_lossy(&ran.stderr);
    assert!(ran.status.success(), "{page_name}'s commands failed:\n{stdout}\n{stderr}");
    assert!(stdout.lines().any(|line| line == "6 passed, 0 failed"), "{page_name}:\n{stdout}\n{stderr}");
    assert!(page.contains("# 6 passed, 0 failed"), "the page shows what policy test prints");
    assert!(stdout.contains("(contract 0.2.0)"), "policy inspect ran:\n{stdout}");

    // The page's configuration, on top of a test installation (keys, a development Authority).
    let yaml = blocks(&page, "yaml").into_iter().find(|b| b.contains("policy:")).unwrap();
    let given: serde_norway::Value = serde_norway::from_str(&yaml).unwrap();
    let fixture = Fixture::with(|config| {
        for (section, keys) in given.as_mapping().unwrap() {
            for (key, value) in keys.as_mapping().unwrap() {
                let path = format!("{}.{}", section.as_str().unwrap(), key.as_str().unwrap());
                let value = match value.as_str() {
                    // Paths in the page are relative to where its commands ran.
                    Some(relative) if key != "module" || !relative.starts_with("builtin:") => {
                        serde_norway::Value::from(work.path().join(relative).display().to_string())
                    }
                    _ => value.clone(),
                };
                config.set(&path, value);
            }
        }
        config.policy.settings_file = None;
        config.policy.module = None;
    });
    let server = Server::start(BIN, &fixture.config_path);
    let token = fixture.token(|r| {
        r.tenant = Some("acme".into());
        r.ttl_seconds = 7200;
    });
    let reply =
        server.client().get_bearer(&query(SERVICE, &["repository:acme/app:pull,push"]), &token).unwrap();
    assert_eq!(reply.status, 200, "{reply}\n{}", server.stderr());
    assert_eq!(access(reply.body["token"].as_str().unwrap()), ["repository:acme/app:pull,push"]);
    assert_eq!(reply.body["expires_in"], 1800, "the lifetime the policy asks for a push");
    let public =
        server.client().get_bearer(&query(SERVICE, &["repository:public/base:pull,push"]), &token).unwrap();
    assert_eq!(access(public.body["token"].as_str().unwrap()), ["repository:public/base:pull"]);
}

#[test]
fn the_rust_page_from_policy_new_to_serving() {
    walk("docs/POLICY-RUST.md");
}

#[test]
fn the_javascript_page_from_policy_new_to_serving() {
    componentize_qjs();
    walk("docs/POLICY-JS.md");
}

#[test]
fn the_javascript_plan_catalogue_passes_the_rust_ones_cases() {
    let command = componentize_qjs();
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("plan_catalogue_js.wasm");
    let built = Command::new(&command)
        .args([
            "--sync",
            "--wit",
            "wit/registry-policy@0.2.0",
            "--js",
            "policies/plan-catalogue-js/policy.js",
        ])
        .args(["--module-root", "."])
        .arg("-o")
        .arg(&wasm)
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    let cases = repo().join("policies/plan-catalogue/cases.yaml");
    let run = |policy: Option<&Path>| {
        let mut command = Command::new(BIN);
        command.args(["policy", "test"]);
        if let Some(policy) = policy {
            command.arg("--policy").arg(policy);
        }
        let output = command.arg(&cases).output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
        stdout.lines().last().unwrap().to_owned()
    };
    let javascript = run(Some(&wasm));
    assert_eq!(javascript, run(None), "the same cases, the same result");
    assert_eq!(javascript, "50 passed, 0 failed");

    // The same settings: what the Rust policy refuses for its type, so does the JavaScript one
    // (which would otherwise take a string for a list of its characters, a list for a map).
    let rule = "plans:\n  team:\n    - repositories: [\"team/*\"]\n      actions: [pull]\n";
    for (mistyped, field) in [
        ("revoked_licenses: LIC-0002", "revoked_licenses"),
        ("revoked_licenses: [12345]", "revoked_licenses[0]"),
        ("revoked_licenses: null", "revoked_licenses"),
        ("license_expiry: [2026-12-31T00:00:00Z]", "license_expiry"),
        ("license_expiry: {LIC-0003: 20261231}", "license_expiry.LIC-0003"),
        ("plans: [team]", "plans"),
        (
            "plans:\n  team:\n    - repositories: [team/a, 7]\n      actions: [pull]",
            "plans.team[0].repositories[1]",
        ),
    ] {
        let settings = dir.path().join("mistyped.yaml");
        let text = if mistyped.starts_with("plans") {
            format!("{mistyped}\n")
        } else {
            format!("{rule}{mistyped}\n")
        };
        std::fs::write(&settings, text).unwrap();
        for policy in [Some(wasm.as_path()), None] {
            let mut command = Command::new(BIN);
            command.args(["policy", "test", "--settings"]).arg(&settings);
            if let Some(policy) = policy {
                command.arg("--policy").arg(policy);
            }
            let output = command.arg(&cases).output().unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                !output.status.success() && stderr.contains(&format!("refused its settings: {field}: ")),
                "{policy:?} with {mistyped:?}: {stderr}{}",
                String::from_utf8_lossy(&output.stdout)
            );
        }
    }

    // Those cases ran with QuickJS's function table made its own (policy/relink.rs), as the
    // server loads it: inspect says how many slots are filled lazily instead of per instance.
    let inspect = Command::new(BIN).args(["policy", "inspect", "--json"]).arg(&wasm).output().unwrap();
    assert!(inspect.status.success(), "{}", String::from_utf8_lossy(&inspect.stderr));
    let info: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let slots = info["lazy_table_slots"].as_u64().unwrap_or(0);
    assert!(slots > 500, "QuickJS's table moved into its module: {info:#}");
    let builtin =
        Command::new(BIN).args(["policy", "inspect", "--json", "builtin:plan-catalogue"]).output().unwrap();
    let info: serde_json::Value = serde_json::from_slice(&builtin.stdout).unwrap();
    assert!(info["lazy_table_slots"].is_null(), "a Rust component is loaded as it is: {info:#}");
}

#[test]
fn the_javascript_sdk_runs_the_shared_pattern_table() {
    let output = Command::new("node")
        .args(["--test", "test/"])
        .current_dir(repo().join("guest-js"))
        .output()
        .unwrap_or_else(|e| {
            panic!("node is needed for the JavaScript SDK's tests (apt-get install nodejs): {e}")
        });
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("# pass 4") && stdout.contains("# fail 0"), "{stdout}");
}
