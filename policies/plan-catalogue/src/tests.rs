//! The rules as plain Rust; `cases.yaml` runs the same rules through the wasm component.

use super::*;
use registry_policy::{Caller, Grant};

const SETTINGS: &str = r#"{
  "plans": {
    "team": [
      {"repositories": ["team/*", "shared/**"], "actions": ["pull", "push"]},
      {"repositories": ["{tenant}/**"], "actions": ["pull", "push", "delete"]}
    ],
    "free": [{"repositories": ["public/**"], "actions": ["pull"]}],
    "admin": [
      {"repositories": ["**"], "actions": ["*"]},
      {"type": "registry", "repositories": ["catalog"], "actions": ["*"]}
    ]
  },
  "revoked_licenses": ["LIC-0002"]
}"#;

fn decide(caller: Caller, resources: &[(&str, &str, &[&str])]) -> Decision {
    let policy = PlanCatalogue::configure(SETTINGS).unwrap();
    let resources = resources
        .iter()
        .map(|(t, name, actions)| Resource::new(*t, *name, actions.iter().copied()))
        .collect();
    policy.evaluate(&Request::new(caller, "registry.local", resources))
}

fn granted(decision: Decision) -> Vec<String> {
    match decision {
        Decision::Grant(Grant { resources, .. }) => resources.iter().map(|r| r.to_string()).collect(),
        Decision::Deny(denial) => panic!("denied: {denial:?}"),
    }
}

#[test]
fn team_plan_grants_the_intersection() {
    let alice = Caller::new("alice").with_plan("team").with_tenant("acme");
    let decision = decide(
        alice,
        &[
            ("repository", "team/app", &["pull", "push", "delete"]),
            ("repository", "acme/deep/app", &["delete"]),
            ("repository", "other/app", &["pull"]),
        ],
    );
    assert_eq!(granted(decision), ["repository:team/app:pull,push", "repository:acme/deep/app:delete"]);
}

#[test]
fn revoked_licence_denies_everything() {
    let caller = Caller::new("mallory").with_plan("admin").with_license("LIC-0002");
    match decide(caller, &[]) {
        Decision::Deny(denial) => {
            assert_eq!(denial.reason, "licence-revoked");
            assert!(denial.message.contains("LIC-0002"));
        }
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[test]
fn unknown_or_missing_plan_grants_nothing_and_says_why() {
    for (caller, why) in [
        (Caller::new("a").with_plan("gold"), "plan \"gold\" is not in the catalogue"),
        (Caller::new("a"), "no stellaops:plan claim"),
    ] {
        match decide(caller, &[("repository", "team/app", &["pull"])]) {
            Decision::Grant(grant) => {
                assert!(grant.resources.is_empty());
                assert!(grant.note.unwrap().contains(why));
            }
            other => panic!("expected an empty grant, got {other:?}"),
        }
    }
}

#[test]
fn catalog_star_needs_a_star_rule() {
    let admin = Caller::new("root").with_plan("admin");
    assert_eq!(granted(decide(admin, &[("registry", "catalog", &["*"])])), ["registry:catalog:*"]);
    let team = Caller::new("alice").with_plan("team");
    assert!(granted(decide(team, &[("registry", "catalog", &["*"])])).is_empty());
}

#[test]
fn settings_errors_name_the_key() {
    for (settings, expected) in [
        (r#"{"plan": {}}"#, "unknown field `plan`"),
        (r#"{"plans": {"team": [{"repositories": ["a"], "actions": ["Pull"]}]}}"#, "plans.team[0]"),
        (r#"{"plans": {"team": [{"repositories": ["a//b"], "actions": ["pull"]}]}}"#, "empty path segment"),
        (r#"{"plans": {"team": [{"repositories": [], "actions": ["pull"]}]}}"#, "repositories is empty"),
        (r#"{"plans": {"team": [{"repositories": ["a"], "actions": 3}]}}"#, "plans.team[0].actions"),
        ("not json", "expected"),
    ] {
        let error = PlanCatalogue::configure(settings).unwrap_err();
        assert!(error.contains(expected), "{settings}: {error}");
    }
}
