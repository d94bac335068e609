//! Both contract versions side by side: the plan catalogue built against 0.1.0 (as released) and
//! against 0.2.0 pass their cases through `policy test` and serve through the running binary; a
//! 0.2.0 grant's lifetime reaches the token clamped as the configuration says, and its
//! annotations and the lifetime decision reach the ledger and the log. Also `policy inspect` and
//! the compiled-code cache (`policy.cache_dir`), through the binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use test_support::{PLAN_CATALOGUE_V0_1_WASM, Server, plans_with};

const BIN: &str = env!("CARGO_BIN_EXE_registry-token");

fn registry_token(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn repo() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// The shipped cases without those only a 0.2.0 guest can pass (a lifetime asked for,
/// annotations, an expiry decided from the request time), and settings without the expiries.
fn cases_for_contract_0_1(dir: &Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(repo().join("policies/plan-catalogue/cases.yaml")).unwrap();
    let mut file: serde_norway::Value = serde_norway::from_str(&text).unwrap();
    file["settings"].as_mapping_mut().unwrap().remove("license_expiry").unwrap();
    for rules in file["settings"]["plans"].as_mapping_mut().unwrap().values_mut() {
        for rule in rules.as_sequence_mut().unwrap() {
            rule.as_mapping_mut().unwrap().remove("lifetime_seconds");
        }
    }
    let cases = file["cases"].as_sequence_mut().unwrap();
    let before = cases.len();
    cases.retain(|case| {
        let needs_0_2 = case.get("annotations").is_some()
            || case.get("lifetime").is_some_and(|l| l.as_str() != Some("none"))
            || case.get("deny").and_then(|d| d.as_str()) == Some("licence-expired");
        !needs_0_2
    });
    assert_eq!(before - cases.len(), 7, "the 0.2.0-only cases");
    let path = dir.join("cases-0.1.yaml");
    std::fs::write(&path, serde_norway::to_string(&file).unwrap()).unwrap();
    path
}

#[test]
fn the_plan_catalogue_of_each_contract_version_passes_its_cases() {
    let cases = repo().join("policies/plan-catalogue/cases.yaml");
    let new = registry_token(&["policy", "test", cases.to_str().unwrap()]);
    assert!(new.status.success(), "{}{}", stdout(&new), stderr(&new));
    assert_eq!(stdout(&new).lines().last(), Some("50 passed, 0 failed"));

    let dir = tempfile::tempdir().unwrap();
    let old_cases = cases_for_contract_0_1(dir.path());
    let old = registry_token(&[
        "policy",
        "test",
        "--policy",
        PLAN_CATALOGUE_V0_1_WASM,
        old_cases.to_str().unwrap(),
    ]);
    assert!(old.status.success(), "{}{}", stdout(&old), stderr(&old));
    assert_eq!(stdout(&old).lines().last(), Some("43 passed, 0 failed"));

    // Really two versions: inspect says so, from the components themselves.
    let contract = |module: &str| {
        let output = registry_token(&["policy", "inspect", "--json", module]);
        assert!(output.status.success(), "{}", stderr(&output));
        let info: Value = serde_json::from_slice(&output.stdout).unwrap();
        info["contract"].as_str().unwrap().to_owned()
    };
    assert_eq!(contract("builtin:plan-catalogue"), "stellaops:registry-policy@0.2.0");
    assert_eq!(contract(PLAN_CATALOGUE_V0_1_WASM), "stellaops:registry-policy@0.1.0");

    // And the 0.1.0 build refuses what only 0.2.0 can decide, and fails the cases only 0.2.0 can
    // express. A rule's lifetime: 0.1.0 cannot ask for one, so a rule asking for a short one
    // would get the longer default. An expiry: it needs the request's time, without which no
    // licence would ever expire.
    let policy_test = |file: &Path| {
        let output =
            registry_token(&["policy", "test", "--policy", PLAN_CATALOGUE_V0_1_WASM, file.to_str().unwrap()]);
        assert!(!output.status.success(), "{}", stdout(&output));
        stderr(&output)
    };
    let refused = policy_test(&cases);
    assert!(
        refused.contains("refused its settings: plans.release[0]: lifetime_seconds needs contract 0.2.0"),
        "{refused}"
    );
    let old_text = std::fs::read_to_string(&old_cases).unwrap();
    type Edit = fn(&mut serde_norway::Value);
    let edits: [(Edit, &str); 2] = [
        (
            |settings| settings["plans"]["team"][0]["lifetime_seconds"] = 60.into(),
            "plans.team[0]: lifetime_seconds needs contract 0.2.0",
        ),
        (
            |settings| {
                settings["license_expiry"] =
                    serde_norway::from_str("{LIC-7: '2026-12-31T00:00:00Z'}").unwrap()
            },
            "license_expiry needs the request's time",
        ),
    ];
    for (edit, expected) in edits {
        let mut file: serde_norway::Value = serde_norway::from_str(&old_text).unwrap();
        edit(&mut file["settings"]);
        let edited = dir.path().join("cases-edited.yaml");
        std::fs::write(&edited, serde_norway::to_string(&file).unwrap()).unwrap();
        let refused = policy_test(&edited);
        assert!(refused.contains(&format!("refused its settings: {expected}")), "{refused}");
    }
    let without_expiry = dir.path().join("cases-without-expiry.yaml");
    let mut file: serde_norway::Value = serde_norway::from_str(&old_text).unwrap();
    let all: serde_norway::Value = serde_norway::from_str(&std::fs::read_to_string(&cases).unwrap()).unwrap();
    file["cases"] = all["cases"].clone();
    file["cases"]
        .as_sequence_mut()
        .unwrap()
        .retain(|case| case.get("deny").and_then(|d| d.as_str()) != Some("licence-expired"));
    std::fs::write(&without_expiry, serde_norway::to_string(&file).unwrap()).unwrap();
    let full = registry_token(&[
        "policy",
        "test",
        "--policy",
        PLAN_CATALOGUE_V0_1_WASM,
        without_expiry.to_str().unwrap(),
    ]);
    assert_eq!(stdout(&full).lines().last(), Some("43 passed, 6 failed"));
}

#[test]
fn inspect_shows_the_metadata_the_world_and_the_imports() {
    let builtin = registry_token(&["policy", "inspect", "builtin:plan-catalogue"]);
    let text = stdout(&builtin);
    assert!(builtin.status.success(), "{text}{}", stderr(&builtin));
    for expected in [
        "world      stellaops:registry-policy/policy@0.2.0 (contract 0.2.0)",
        "metadata   plan-catalogue 0.1.0",
        "description  The default registry-token policy",
        "built with   registry-policy 0.1.0 against stellaops:registry-policy@0.2.0",
        "settings     plan-catalogue settings",
        "keys: license_expiry, plans, revoked_licenses",
        "all offered by the host",
        "wasi:cli/environment@",
    ] {
        assert!(text.contains(expected), "{expected:?} in\n{text}");
    }

    let json = registry_token(&["policy", "inspect", "--json", "builtin:plan-catalogue"]);
    let info: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(info["source"], "builtin:plan-catalogue");
    assert_eq!(info["world"], "stellaops:registry-policy/policy@0.2.0");
    assert_eq!(info["metadata"]["name"], "plan-catalogue");
    assert_eq!(info["metadata"]["wit"], "stellaops:registry-policy@0.2.0");
    let schema: Value = serde_json::from_str(info["metadata"]["settings_schema"].as_str().unwrap()).unwrap();
    assert_eq!(schema["required"], serde_json::json!(["plans"]));
    assert!(info["refused"].is_null());
    assert!(info["size"].as_u64().unwrap() > 10_000);
    assert!(info["digest"].as_str().unwrap().starts_with("sha256:"));
    assert!(info["compile_ms"].as_f64().unwrap() > 0.0);

    // A component no SDK built (no metadata), of a world the host does not load: exit 1.
    let wrong = registry_token(&["policy", "inspect", test_support::WRONG_WORLD_GUEST_WASM]);
    let text = stdout(&wrong);
    assert_eq!(wrong.status.code(), Some(1), "{text}");
    assert!(text.contains("metadata   no metadata"), "{text}");
    assert!(text.contains("world      none the host loads"), "{text}");

    let missing = registry_token(&["policy", "inspect", "/nonexistent/policy.wasm"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("cannot read /nonexistent/policy.wasm"), "{}", stderr(&missing));
}

#[test]
fn a_corrupted_or_foreign_code_cache_entry_is_refused_and_recompiled() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("code");
    let cases = repo().join("policies/plan-catalogue/cases.yaml");
    let run = |policy: Option<&str>| {
        let mut args = vec!["policy", "test", "--cache-dir", cache.to_str().unwrap()];
        if let Some(policy) = policy {
            args.extend(["--policy", policy]);
        }
        let old_cases;
        if policy.is_some() {
            old_cases = cases_for_contract_0_1(dir.path());
            args.push(old_cases.to_str().unwrap());
        } else {
            args.push(cases.to_str().unwrap());
        }
        let output = registry_token(&args);
        assert!(output.status.success(), "{}{}", stdout(&output), stderr(&output));
        stderr(&output)
    };
    let entries = || {
        let mut entries: Vec<_> = std::fs::read_dir(&cache).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        entries
    };

    let first = run(None);
    assert!(!first.contains("refused"), "{first}");
    // The instrumented module (for configure) and the configured snapshot.
    let stored = entries();
    assert_eq!(stored.len(), 2, "{stored:?}");
    let written: Vec<Vec<u8>> = stored.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(!run(None).contains("refused"));
    assert_eq!(entries(), stored, "a second run adds nothing");

    // One byte of compiled code flipped: refused, compiled again, replaced by a good entry.
    let mut corrupted = written[1].clone();
    let at = corrupted.len() - 64;
    corrupted[at] ^= 0x55;
    std::fs::write(&stored[1], &corrupted).unwrap();
    let log = run(None);
    assert!(log.contains("refused a compiled-code entry"), "{log}");
    assert!(log.contains("does not match its checksum"), "{log}");
    // wasmtime's compiled output is not byte-for-byte stable between compilations of one module,
    // so "replaced" is what a user sees: not the corrupted bytes, and used from then on.
    let replaced = std::fs::read(&stored[1]).unwrap();
    assert!(replaced != corrupted, "the corrupted entry was replaced");
    let log = run(None);
    assert!(!log.contains("refused"), "the replacement is used: {log}");
    assert!(std::fs::read(&stored[1]).unwrap() == replaced, "and kept");

    // Another module's entry under this module's name (the 0.1.0 catalogue's snapshot): refused,
    // never run — the run passes the 0.2.0 cases, which the 0.1.0 code would fail.
    run(Some(PLAN_CATALOGUE_V0_1_WASM));
    let foreign = entries().into_iter().find(|p| !stored.contains(p)).unwrap();
    std::fs::copy(&foreign, &stored[1]).unwrap();
    let log = run(None);
    assert!(log.contains("it was compiled from another module"), "{log}");
    let replaced = std::fs::read(&stored[1]).unwrap();
    assert!(replaced != std::fs::read(&foreign).unwrap(), "the foreign entry was replaced");
    let log = run(None);
    assert!(!log.contains("refused"), "the replacement is used: {log}");
}

/// A caller of plan `release` whose Authority token lives `ttl` seconds.
fn release_token(fixture: &Fixture, ttl: i64) -> String {
    fixture.token(|r| {
        r.subject = "rel".into();
        r.plan = Some("release".into());
        r.ttl_seconds = ttl;
    })
}

fn admin_events(server: &Server, fixture: &Fixture) -> Vec<Value> {
    let admin = fixture.token(|r| {
        r.subject = "security".into();
        r.scope = "registry.admin".into();
        r.tenant = None;
        r.plan = None;
    });
    let reply = server.admin().get_bearer("/admin/v1/events?sub=rel", &admin).unwrap();
    assert_eq!(reply.status, 200, "{reply}");
    reply.body["events"].as_array().unwrap().clone()
}

#[test]
fn an_old_and_a_new_guest_serve_side_by_side_and_a_lifetime_is_clamped_and_recorded() {
    let plans = plans_with(|plans| {
        plans["plans"]["release"] = serde_norway::from_str(
            r#"[{repositories: ["releases/**"], actions: [pull, push], lifetime_seconds: 1800},
                {repositories: ["releases/big/**"], actions: [push], lifetime_seconds: 86400}]"#,
        )
        .unwrap();
    });
    let configure = |module: Option<&str>, plans: &str| {
        let fixture = Fixture::with(|config| {
            config.policy.module = module.map(Into::into);
            config.signing.max_lifetime_seconds = Some(3600);
        });
        std::fs::write(fixture.root().join("plans.yaml"), plans).unwrap();
        fixture
    };
    // The old guest cannot ask for a lifetime: it refuses rules that would (a short one would
    // get the longer default), and the service does not start on them.
    let old_fixture = configure(Some(PLAN_CATALOGUE_V0_1_WASM), &plans);
    let refused = test_support::serve_command(BIN, &old_fixture.config_path).output().unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("plans.release[0]: lifetime_seconds needs contract 0.2.0"), "{stderr}");
    let without_lifetimes = plans_with(|plans| {
        plans["plans"]["release"] = serde_norway::from_str(
            r#"[{repositories: ["releases/**"], actions: [pull, push]},
                {repositories: ["releases/big/**"], actions: [push]}]"#,
        )
        .unwrap();
    });
    let (old_fixture, new_fixture) =
        (configure(Some(PLAN_CATALOGUE_V0_1_WASM), &without_lifetimes), configure(None, &plans));
    let old = Server::start(BIN, &old_fixture.config_path);
    let new = Server::start(BIN, &new_fixture.config_path);
    let contract =
        |server: &Server| server.client().get("/readyz").unwrap().body["policy"]["contract"].clone();
    assert_eq!(contract(&old), "stellaops:registry-policy@0.1.0");
    assert_eq!(contract(&new), "stellaops:registry-policy@0.2.0");

    let push = "repository:releases/app:pull,push";
    // Exchanges a caller token of `ttl` seconds for `scope`; the token's lifetime (`exp - iat`).
    let lifetime_of = |server: &Server, fixture: &Fixture, ttl: i64, scope: &str| {
        let reply =
            server.client().get_bearer(&query(SERVICE, &[scope]), &release_token(fixture, ttl)).unwrap();
        assert_eq!(reply.status, 200, "{reply}");
        let token = reply.body["token"].as_str().unwrap();
        assert_eq!(access(token), [scope]);
        let (_, claims) = decode(token);
        let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
        assert_eq!(reply.body["expires_in"], lifetime);
        lifetime
    };

    // The same request: the old guest's token has the default lifetime, the new one's the rule's.
    assert_eq!(lifetime_of(&old, &old_fixture, 7200, push), 300);
    assert_eq!(lifetime_of(&new, &new_fixture, 7200, push), 1800);
    // 86400 asked, signing.max_lifetime_seconds (3600) issued.
    assert_eq!(lifetime_of(&new, &new_fixture, 7200, "repository:releases/big/db:push"), 3600);
    // Never past the caller token's exp plus the leeway (30 s by default).
    let short = lifetime_of(&new, &new_fixture, 600, push);
    assert!((590..=630).contains(&short), "{short}");

    // What the ledger keeps, newest first: the caller-token clamp, the maximum, as asked.
    let events = admin_events(&new, &new_fixture);
    assert_eq!(events.len(), 3, "{events:#?}");
    assert_eq!(events[0]["lifetime"]["requested"], 1800);
    assert_eq!(events[0]["lifetime"]["limited_by"], "caller_token");
    assert_eq!(
        events[1]["lifetime"],
        serde_json::json!({"requested": 86400, "granted": 3600, "limited_by": "signing.max_lifetime_seconds"})
    );
    assert_eq!(
        events[1]["annotations"],
        serde_json::json!({"plan": "release", "lifetime-rule": "plans.release[1]"})
    );
    assert_eq!(
        events[2]["lifetime"],
        serde_json::json!({"requested": 1800, "granted": 1800, "limited_by": null})
    );
    assert_eq!(
        events[2]["annotations"],
        serde_json::json!({"plan": "release", "lifetime-rule": "plans.release[0]"})
    );
    // And the log line says so.
    let log = new.stderr();
    assert!(log.contains(r#"lifetime="86400s asked, 3600s issued (signing.max_lifetime_seconds)""#), "{log}");
    assert!(log.contains(r#"lifetime="1800s as asked""#), "{log}");
    assert!(log.contains(r#"issued (caller_token)""#), "{log}");

    // The old guest's event: no lifetime asked, no annotations.
    let events = admin_events(&old, &old_fixture);
    assert_eq!(events.len(), 1, "{events:#?}");
    assert!(events[0]["lifetime"].is_null());
    assert_eq!(events[0]["annotations"], serde_json::json!({}));
    assert_eq!(events[0]["outcome"], "issued");

    // A denial's annotations are kept too.
    let revoked = new_fixture.token(|r| {
        r.subject = "rel".into();
        r.plan = Some("release".into());
        r.license = Some("LIC-0002".into());
    });
    let reply = new.client().get_bearer(&query(SERVICE, &[push]), &revoked).unwrap();
    assert_eq!(reply.status, 403, "{reply}");
    // Only issued events are committed before the answer; a denial's follows it.
    let since = std::time::Instant::now();
    let mut events = admin_events(&new, &new_fixture);
    while events[0]["outcome"] != "denied" && since.elapsed() < std::time::Duration::from_secs(5) {
        std::thread::sleep(std::time::Duration::from_millis(20));
        events = admin_events(&new, &new_fixture);
    }
    assert_eq!(events[0]["outcome"], "denied");
    assert_eq!(events[0]["annotations"], serde_json::json!({"plan": "release"}));
}

#[test]
fn policy_bench_prints_a_median_and_p99_per_case_as_the_server_runs_it() {
    let cases = repo().join("policies/plan-catalogue/cases.yaml");
    let output = registry_token(&["policy", "bench", "--runs", "40", cases.to_str().unwrap()]);
    let text = stdout(&output);
    assert!(output.status.success(), "{text}{}", stderr(&output));
    assert!(
        text.starts_with("policy bench: builtin:plan-catalogue (stellaops:registry-policy@0.2.0, sha256:"),
        "{text}"
    );
    assert!(text.contains("fresh instance per evaluation, 40 runs per case"), "{text}");
    assert!(text.contains("limits: 50 ms, 16 MiB; loaded (compile, configure, snapshot) in "), "{text}");
    // One row per case (its median and p99 in µs), then the total.
    let rows: Vec<&str> = text.lines().filter(|l| l.ends_with(" µs")).collect();
    assert_eq!(rows.len(), 50 + 1, "{text}");
    assert!(rows[0].starts_with("team pulls and pushes a team repository"), "{text}");
    assert!(rows[50].starts_with("all 50 cases (2000 evaluations)"), "{text}");
    for row in rows {
        let figures: Vec<f64> =
            row.split("µs").filter_map(|part| part.split_whitespace().last()?.parse().ok()).collect();
        assert!(figures.len() == 2 && figures[0] > 0.0 && figures[0] <= figures[1], "{row}");
    }

    let none = registry_token(&["policy", "bench", "--runs", "0", cases.to_str().unwrap()]);
    assert_eq!(none.status.code(), Some(2));
    assert!(stderr(&none).contains("--runs must be at least 1"));
}

#[test]
fn policy_new_writes_a_project_and_never_over_anything() {
    let dir = tempfile::tempdir().unwrap();
    let parent = dir.path().to_str().unwrap();
    let made = registry_token(&["policy", "new", "team-rules", "--dir", parent]);
    assert!(made.status.success(), "{}", stderr(&made));
    let project = dir.path().join("team-rules");
    for file in ["Cargo.toml", "Cargo.lock", "src/lib.rs", "cases.yaml", "README.md", ".gitignore"] {
        assert!(project.join(file).is_file(), "{file}");
    }
    let lib = std::fs::read_to_string(project.join("src/lib.rs")).unwrap();
    assert!(lib.contains("pub struct TeamRules") && lib.contains("export_policy!(TeamRules)"), "{lib}");
    let manifest = std::fs::read_to_string(project.join("Cargo.toml")).unwrap();
    let sdk = repo().join("guest").canonicalize().unwrap();
    assert!(
        manifest.contains(&format!("registry-policy = {{ path = \"{}\" }}", sdk.display())),
        "{manifest}"
    );
    let readme = std::fs::read_to_string(project.join("README.md")).unwrap();
    assert!(readme.contains("policy test --policy target/wasm32-wasip2/release/team_rules.wasm cases.yaml"));

    // Never over an existing directory, and only names that make a crate and a file.
    let again = registry_token(&["policy", "new", "team-rules", "--dir", parent]);
    assert_eq!(again.status.code(), Some(2));
    assert!(stderr(&again).contains("already exists; nothing was written"), "{}", stderr(&again));
    for bad in ["Team", "1x", "a/b", "", "x y"] {
        let refused = registry_token(&["policy", "new", bad, "--dir", parent]);
        assert_eq!(refused.status.code(), Some(2), "{bad:?}");
        assert!(stderr(&refused).contains("is not a usable policy name"), "{bad:?}: {}", stderr(&refused));
    }

    let js = registry_token(&["policy", "new", "js-rules", "--lang", "js", "--dir", parent]);
    assert!(js.status.success(), "{}", stderr(&js));
    let project = dir.path().join("js-rules");
    for file in
        ["policy.js", "registry-policy.js", "wit/registry-policy@0.2.0/registry-policy.wit", "cases.yaml"]
    {
        assert!(project.join(file).is_file(), "{file}");
    }
    // The copies are the SDK and the contract as they are in this repository.
    assert_eq!(
        std::fs::read(project.join("registry-policy.js")).unwrap(),
        std::fs::read(repo().join("guest-js/registry-policy.js")).unwrap()
    );
    assert_eq!(
        std::fs::read(project.join("wit/registry-policy@0.2.0/registry-policy.wit")).unwrap(),
        std::fs::read(repo().join("wit/registry-policy@0.2.0/registry-policy.wit")).unwrap()
    );
}
