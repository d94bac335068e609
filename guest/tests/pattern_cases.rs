//! The shared table of pattern and action cases (`pattern-cases.json`), which the JavaScript SDK's
//! tests (`guest-js/test/patterns.test.js`) run too: both SDKs give the same answers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use registry_policy::actions::ActionSet;
use registry_policy::{Caller, RepoPattern, is_path_component};
use serde_json::Value;

const CASES: &str = include_str!("pattern-cases.json");

fn caller(value: &Value) -> Caller {
    let text = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_owned);
    let mut caller = Caller::new(text("sub").unwrap());
    caller.tenant = text("tenant");
    caller.plan = text("plan");
    caller.client_id = text("client_id");
    caller
}

fn strings(value: &Value) -> Vec<String> {
    value.as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect()
}

#[test]
fn patterns_match_as_the_shared_table_says() {
    let cases: Value = serde_json::from_str(CASES).unwrap();
    let default_caller = caller(&cases["caller"]);
    let mut checked = 0;
    for case in cases["matches"].as_array().unwrap() {
        let pattern = RepoPattern::parse(case["pattern"].as_str().unwrap()).unwrap();
        let who = case.get("caller").map_or_else(|| default_caller.clone(), caller);
        let name = case["name"].as_str().unwrap();
        assert_eq!(pattern.matches(name, &who), case["matches"].as_bool().unwrap(), "{case}");
        checked += 1;
    }
    assert!(checked >= 30, "only {checked} cases");
}

#[test]
fn invalid_patterns_are_refused_with_the_shared_reason() {
    let cases: Value = serde_json::from_str(CASES).unwrap();
    for case in cases["invalid"].as_array().unwrap() {
        let error = RepoPattern::parse(case["pattern"].as_str().unwrap()).unwrap_err().to_string();
        assert!(error.contains(case["error"].as_str().unwrap()), "{case}: {error}");
    }
}

#[test]
fn path_components_follow_the_shared_table() {
    let cases: Value = serde_json::from_str(CASES).unwrap();
    for good in strings(&cases["path_components"]["valid"]) {
        assert!(is_path_component(&good), "{good:?}");
    }
    for bad in strings(&cases["path_components"]["invalid"]) {
        assert!(!is_path_component(&bad), "{bad:?}");
    }
}

#[test]
fn action_sets_follow_the_shared_table() {
    let cases: Value = serde_json::from_str(CASES).unwrap();
    for case in cases["actions"].as_array().unwrap() {
        let parsed = ActionSet::parse(strings(&case["allowed"]));
        match case.get("error") {
            Some(error) => {
                let message = parsed.unwrap_err().to_string();
                assert!(message.contains(error.as_str().unwrap()), "{case}: {message}");
            }
            None => {
                let granted = parsed.unwrap().intersect(&strings(&case["requested"]));
                assert_eq!(granted, strings(&case["granted"]), "{case}");
            }
        }
    }
}
