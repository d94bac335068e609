//! `registry-token policy test`: case tables run through the same runtime as the server.
//!
//! ```yaml
//! settings_file: plans.yaml          # relative to this file; or `settings:` inline; --settings wins
//! service: registry.local            # default for every case
//! at: 2026-12-01T12:00:00Z           # the request time every case is decided at (RFC 3339 or Unix
//!                                    # seconds); without it, the time the command runs
//! cases:
//!   - name: team members push to team repositories
//!     claims: {sub: alice, "stellaops:plan": team, "stellaops:tenant": acme}
//!     scope: repository:team/app:pull,push      # a string (space-separated) or a list
//!     grant: repository:team/app:pull,push      # expected (scope syntax); or `deny: licence-revoked`, or `fault: deadline`
//!     at: 2027-01-01T00:00:00Z                  # this case's request time, instead of the file's
//!     lifetime: 3600                            # the token lifetime the grant asks for; `none`: it asks for none
//!     annotations: {plan: team}                 # exactly these annotations
//! ```

use crate::access::{Resource, scope_string};
use crate::app::yaml_to_json;
use crate::authority::caller_from_claims;
use crate::policy::{Decision, Policy};
use crate::scope::parse_scopes;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A case file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    /// Settings file, relative to the case file.
    #[serde(default)]
    pub settings_file: Option<PathBuf>,
    /// Inline settings.
    #[serde(default)]
    pub settings: Option<Value>,
    /// Default `service`.
    #[serde(default = "default_service")]
    pub service: String,
    /// Default request time.
    #[serde(default)]
    pub at: Option<At>,
    /// The cases.
    pub cases: Vec<Case>,
}

/// A request time: Unix seconds, or RFC 3339 (`2026-12-31T00:00:00Z`).
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum At {
    /// Unix seconds.
    Seconds(u64),
    /// RFC 3339.
    Text(String),
}

impl At {
    /// Unix seconds.
    pub fn seconds(&self) -> Result<u64, String> {
        match self {
            At::Seconds(seconds) => Ok(*seconds),
            At::Text(text) => crate::rfc3339::parse_seconds(text).map_err(|refused| match refused {
                crate::rfc3339::Refused::NotATime => {
                    format!("at: {text:?} is not an RFC 3339 time (2026-12-31T00:00:00Z) or Unix seconds")
                }
                refused => format!("at: {text:?} is {refused}"),
            }),
        }
    }
}

/// An expected lifetime: seconds, or `none` for a grant that asks for none.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum ExpectedLifetime {
    /// Seconds asked.
    Seconds(u32),
    /// `none`.
    Word(String),
}

fn default_service() -> String {
    "registry.local".to_owned()
}

/// One case: a request and its expected outcome.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// Shown on failure.
    pub name: String,
    /// The caller's Authority claims (`sub`, `stellaops:plan`, ...).
    pub claims: Map<String, Value>,
    /// Overrides the file's `service`.
    #[serde(default)]
    pub service: Option<String>,
    /// The requested scopes.
    #[serde(default)]
    pub scope: Scopes,
    /// Expected grant, in scope syntax.
    #[serde(default)]
    pub grant: Option<Scopes>,
    /// Expected denial reason.
    #[serde(default)]
    pub deny: Option<String>,
    /// Expected fault kind (`deadline`, `memory`, `panic`, `trap`, `malformed`, `overgrant`).
    #[serde(default)]
    pub fault: Option<String>,
    /// The request time, instead of the file's.
    #[serde(default)]
    pub at: Option<At>,
    /// The lifetime the grant is expected to ask for.
    #[serde(default)]
    pub lifetime: Option<ExpectedLifetime>,
    /// The annotations expected on the decision, exactly.
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// One scope string or a list of them.
#[derive(Debug, Default, Deserialize)]
#[serde(untagged)]
pub enum Scopes {
    /// None asked (`docker login`).
    #[default]
    None,
    /// `repository:a/b:pull repository:c/d:push`.
    One(String),
    /// `[repository:a/b:pull, repository:c/d:push]`.
    Many(Vec<String>),
}

impl Scopes {
    fn values(&self) -> Vec<&str> {
        match self {
            Scopes::None => Vec::new(),
            Scopes::One(one) => vec![one.as_str()],
            Scopes::Many(many) => many.iter().map(String::as_str).collect(),
        }
    }
}

/// What happened to one case.
#[derive(Debug)]
pub struct CaseResult {
    /// The case's name.
    pub name: String,
    /// `None` if it passed; otherwise expected vs actual.
    pub failure: Option<String>,
}

/// Parses a case file's text (`origin` names it in errors); its settings are not read.
pub fn parse(text: &str, origin: &str) -> Result<CaseFile, String> {
    serde_norway::from_str(text).map_err(|e| format!("{origin}: {e}"))
}

/// Reads a case file and the settings it names (unless `settings_override` is given), as JSON.
pub fn read(path: &Path, settings_override: Option<&Path>) -> Result<(CaseFile, String), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let file = parse(&text, &path.display().to_string())?;
    let settings = match (settings_override, &file.settings_file, &file.settings) {
        (Some(override_path), _, _) => crate::app::settings_json(override_path).map_err(|e| e.to_string())?,
        (None, Some(relative), _) => {
            let base = path.parent().unwrap_or(Path::new("."));
            crate::app::settings_json(&base.join(relative)).map_err(|e| e.to_string())?
        }
        (None, None, Some(inline)) => inline.to_string(),
        (None, None, None) => {
            return Err(format!(
                "{}: no settings: add settings_file or settings, or pass --settings",
                path.display()
            ));
        }
    };
    // Normalise through YAML->JSON so inline and file settings reach the guest the same way.
    let settings = yaml_to_json(&settings)?;
    Ok((file, settings))
}

/// One case, ready to evaluate: what `policy test` and `policy bench` run.
#[derive(Debug)]
pub struct Prepared {
    /// The caller.
    pub caller: crate::access::Caller,
    /// The service.
    pub service: String,
    /// The requested resources.
    pub requested: Vec<Resource>,
    /// The request time.
    pub time: u64,
}

/// The request `case` describes, at the case's, the file's or the current time.
pub fn prepare(file: &CaseFile, case: &Case) -> Result<Prepared, String> {
    let caller = caller_from_claims(case.claims.clone()).map_err(|e| format!("claims: {e}"))?;
    let requested = parse_scopes(case.scope.values()).map_err(|e| format!("scope: {e}"))?;
    let service = case.service.clone().unwrap_or_else(|| file.service.clone());
    let time = match case.at.as_ref().or(file.at.as_ref()) {
        Some(at) => at.seconds()?,
        None => crate::app::system_clock()(),
    };
    Ok(Prepared { caller, service, requested, time })
}

/// Runs every case of `file` through `policy`.
pub async fn run(policy: &Policy, file: &CaseFile) -> Vec<CaseResult> {
    let mut outcomes = Vec::with_capacity(file.cases.len());
    for case in &file.cases {
        let failure = run_case(policy, file, case).await.err();
        outcomes.push(CaseResult { name: case.name.clone(), failure });
    }
    outcomes
}

/// The cases passed and failed over one or more case files (`policy test`, `bundle test`).
#[derive(Debug, Default)]
pub struct Tally {
    passed: usize,
    failed: usize,
}

impl Tally {
    /// Runs `file` (read from `origin`) through `policy`, printing each failure. A file without
    /// cases is an error: it would pass while testing nothing.
    pub async fn run(&mut self, policy: &Policy, file: &CaseFile, origin: &str) -> Result<(), String> {
        if file.cases.is_empty() {
            return Err(format!(
                "{origin}: no cases; a case file without any would pass while testing nothing"
            ));
        }
        for outcome in run(policy, file).await {
            match outcome.failure {
                None => self.passed += 1,
                Some(failure) => {
                    self.failed += 1;
                    println!("FAIL {origin}: {}\n    {failure}", outcome.name);
                }
            }
        }
        Ok(())
    }

    /// Prints `N passed, N failed`; the exit code says whether any failed.
    pub fn report(&self) -> std::process::ExitCode {
        println!("{} passed, {} failed", self.passed, self.failed);
        if self.failed == 0 { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::FAILURE }
    }
}

async fn run_case(policy: &Policy, file: &CaseFile, case: &Case) -> Result<(), String> {
    let expectations = [case.grant.is_some(), case.deny.is_some(), case.fault.is_some()];
    if expectations.iter().filter(|e| **e).count() > 1 {
        return Err("state only one of grant, deny and fault".into());
    }
    let Prepared { caller, service, requested, time } = prepare(file, case)?;
    let actual = policy.evaluate(&caller, &service, &requested, time).await;

    let shown = match &actual {
        Ok(Decision::Grant { resources, note, .. }) => match note {
            Some(note) => format!("grant [{}] (note: {note})", scope_string(resources)),
            None => format!("grant [{}]", scope_string(resources)),
        },
        Ok(Decision::Deny { reason, message, .. }) => format!("deny {reason} ({message})"),
        Err(fault) => format!("fault {} ({fault})", fault.kind()),
    };
    let (expected, matched) = match (&case.grant, &case.deny, &case.fault) {
        (Some(grant), _, _) => {
            let expected = parse_scopes(grant.values()).map_err(|e| format!("grant: {e}"))?;
            let matched =
                matches!(&actual, Ok(Decision::Grant { resources, .. }) if same_grant(resources, &expected));
            (format!("grant [{}]", scope_string(&expected)), matched)
        }
        (_, Some(reason), _) => {
            let matched = matches!(&actual, Ok(Decision::Deny { reason: r, .. }) if r == reason);
            (format!("deny {reason}"), matched)
        }
        (None, None, Some(kind)) => (format!("fault {kind}"), matches!(&actual, Err(f) if f.kind() == kind)),
        (None, None, None) => return Err("state one of grant, deny and fault".into()),
    };
    if !matched {
        return Err(format!("expected {expected}\n    actual   {shown}"));
    }
    if let Some(expected) = &case.lifetime {
        let expected = match expected {
            ExpectedLifetime::Seconds(seconds) => Some(*seconds),
            ExpectedLifetime::Word(word) if word == "none" => None,
            ExpectedLifetime::Word(word) => {
                return Err(format!("lifetime: {word:?} is neither seconds nor `none`"));
            }
        };
        let actual = match &actual {
            Ok(Decision::Grant { lifetime_seconds, .. }) => *lifetime_seconds,
            _ => return Err(format!("lifetime is expected of a grant; actual {shown}")),
        };
        if actual != expected {
            let show = |l: Option<u32>| l.map_or("none".to_owned(), |s| format!("{s} s"));
            return Err(format!(
                "expected lifetime {}\n    actual   lifetime {}",
                show(expected),
                show(actual)
            ));
        }
    }
    if let Some(expected) = &case.annotations {
        let actual: BTreeMap<String, String> = match &actual {
            Ok(decision) => decision.annotations().iter().cloned().collect(),
            Err(_) => return Err(format!("annotations are expected of a decision; actual {shown}")),
        };
        if actual != *expected {
            return Err(format!("expected annotations {expected:?}\n    actual   annotations {actual:?}"));
        }
    }
    Ok(())
}

/// Grants are compared as sets: which actions on which resources, whatever the order.
fn same_grant(actual: &[Resource], expected: &[Resource]) -> bool {
    let as_set = |resources: &[Resource]| -> BTreeMap<(String, String), BTreeSet<String>> {
        resources
            .iter()
            .filter(|r| !r.actions.is_empty())
            .map(|r| ((r.resource_type.clone(), r.name.clone()), r.actions.iter().cloned().collect()))
            .collect()
    };
    as_set(actual) == as_set(expected)
}
