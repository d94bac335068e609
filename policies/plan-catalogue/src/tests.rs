//! The rules as plain Rust; `cases.yaml` runs the same rules through the wasm component.

use super::*;
use registry_policy::{Caller, Grant};

fn configure(settings: &str) -> Result<PlanCatalogue, String> {
    registry_policy::configure::<PlanCatalogue>(settings)
}

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
    ],
    "release": [
      {"repositories": ["releases/**"], "actions": ["pull", "push"], "lifetime_seconds": 3600},
      {"repositories": ["releases/big/**"], "actions": ["push"], "lifetime_seconds": 7200},
      {"repositories": ["team/*"], "actions": ["pull"]}
    ]
  },
  "revoked_licenses": ["LIC-0002"],
  "license_expiry": {"LIC-0003": "2026-06-30T00:00:00Z"}
}"#;

fn decide(caller: Caller, resources: &[(&str, &str, &[&str])]) -> Decision {
    decide_at(0, caller, resources)
}

fn decide_at(time: u64, caller: Caller, resources: &[(&str, &str, &[&str])]) -> Decision {
    let policy = configure(SETTINGS).unwrap();
    let resources = resources
        .iter()
        .map(|(t, name, actions)| Resource::new(*t, *name, actions.iter().copied()))
        .collect();
    policy.evaluate(&Request::new(caller, "registry.local", resources).at(time))
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
        (r#"{"plans": {}, "license_expiry": {"L": "tomorrow"}}"#, "license_expiry.L: \"tomorrow\" is not"),
        (
            r#"{"plans": {"t": [{"repositories": ["a"], "actions": ["pull"], "lifetime_seconds": 0}]}}"#,
            "plans.t[0]: lifetime_seconds",
        ),
    ] {
        let error = configure(settings).unwrap_err();
        assert!(error.contains(expected), "{settings}: {error}");
    }
}

#[test]
fn a_lifetime_is_asked_only_when_every_granted_resource_allows_one() {
    let lifetime = |decision: Decision| match decision {
        Decision::Grant(grant) => grant.lifetime_seconds,
        Decision::Deny(denial) => panic!("denied: {denial:?}"),
    };
    let releaser = || Caller::new("rel").with_plan("release");
    assert_eq!(lifetime(decide(releaser(), &[("repository", "releases/app", &["push"])])), Some(3600));
    // The longest of the rules that granted the resource: releases/big/** allows 7200 for push.
    assert_eq!(lifetime(decide(releaser(), &[("repository", "releases/big/x", &["push"])])), Some(7200));
    // The smallest over the resources.
    let both = [("repository", "releases/big/x", &["push"][..]), ("repository", "releases/app", &["pull"])];
    assert_eq!(lifetime(decide(releaser(), &both)), Some(3600));
    // A resource from a rule without a lifetime: the host's default.
    let mixed = [("repository", "releases/app", &["push"][..]), ("repository", "team/app", &["pull"])];
    assert_eq!(lifetime(decide(releaser(), &mixed)), None);
    assert_eq!(lifetime(decide(releaser(), &[])), None);
}

#[test]
fn an_expired_licence_is_denied_from_its_expiry_on() {
    let caller = || Caller::new("ann").with_plan("team").with_license("LIC-0003");
    let expiry = 1_782_777_600; // 2026-06-30T00:00:00Z
    match decide_at(expiry - 1, caller(), &[("repository", "team/app", &["pull"])]) {
        Decision::Grant(grant) => assert_eq!(grant.resources.len(), 1),
        other => panic!("expected a grant the second before, got {other:?}"),
    }
    match decide_at(expiry, caller(), &[("repository", "team/app", &["pull"])]) {
        Decision::Deny(denial) => {
            assert_eq!(denial.reason, "licence-expired");
            assert!(denial.annotations.iter().any(|a| a.key == "licence-expired-at"));
        }
        other => panic!("expected a denial at the expiry, got {other:?}"),
    }
}
