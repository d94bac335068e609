//! The default registry-token policy: a catalogue of plans, each a list of repository rules, and a
//! list of revoked licences.
//!
//! ```yaml
//! plans:
//!   team:
//!     - repositories: ["team/*", "shared/**"]
//!       actions: [pull, push]
//!     - repositories: ["{tenant}/**"]
//!       actions: [pull, push, delete]
//!   admin:
//!     - repositories: ["**"]
//!       actions: ["*"]
//!     - type: registry
//!       repositories: [catalog]
//!       actions: ["*"]
//! revoked_licenses: [LIC-0002]
//! ```
//!
//! * A caller whose `stellaops:license` is revoked is denied the whole exchange (`licence-revoked`).
//! * Otherwise each requested resource gets the requested actions that some rule of the caller's
//!   plan allows for it (`type` defaults to `repository`; patterns are [`RepoPattern`]s; the action
//!   `*` allows any action, and a requested `*` only comes from a rule allowing `*`).
//! * No plan claim, or a plan not in the catalogue, grants nothing; the note says why.

use registry_policy::actions::ActionSet;
use registry_policy::{Decision, Policy, RepoPattern, Request, Resource};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};

/// The configured catalogue.
#[derive(Debug)]
pub struct PlanCatalogue {
    plans: BTreeMap<String, Vec<Rule>>,
    revoked_licenses: BTreeSet<String>,
}

#[derive(Debug)]
struct Rule {
    resource_type: String,
    repositories: Vec<RepoPattern>,
    actions: ActionSet,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    plans: BTreeMap<String, Vec<RuleSettings>>,
    #[serde(default)]
    revoked_licenses: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSettings {
    #[serde(rename = "type", default = "default_type")]
    resource_type: String,
    repositories: Vec<String>,
    actions: Vec<String>,
}

fn default_type() -> String {
    "repository".to_owned()
}

impl Policy for PlanCatalogue {
    fn configure(settings: &str) -> Result<Self, String> {
        let mut json = serde_json::Deserializer::from_str(settings);
        let settings: Settings = serde_path_to_error::deserialize(&mut json).map_err(|e| {
            let path = e.path().to_string();
            let error = e.into_inner();
            if path == "." { error.to_string() } else { format!("{path}: {error}") }
        })?;

        let mut plans = BTreeMap::new();
        for (plan, rules) in settings.plans {
            let rules = rules
                .into_iter()
                .enumerate()
                .map(|(i, rule)| {
                    compile_rule(rule).map_err(|problem| format!("plans.{plan}[{i}]: {problem}"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            plans.insert(plan, rules);
        }
        let revoked_licenses = settings.revoked_licenses.into_iter().collect();
        Ok(PlanCatalogue { plans, revoked_licenses })
    }

    fn evaluate(&self, request: &Request) -> Decision {
        let caller = &request.caller;
        if let Some(license) = &caller.license
            && self.revoked_licenses.contains(license)
        {
            return Decision::deny(
                "licence-revoked",
                format!("licence {license} has been revoked; no registry access is issued for it"),
            );
        }

        let rules = match caller.plan.as_deref() {
            None => return nothing_granted(request, "the caller has no stellaops:plan claim"),
            Some(plan) => match self.plans.get(plan) {
                Some(rules) => rules,
                None => {
                    return nothing_granted(request, &format!("plan {plan:?} is not in the catalogue"));
                }
            },
        };

        let mut granted = Vec::new();
        let mut short = Vec::new();
        for resource in &request.resources {
            let matching: Vec<&Rule> = rules
                .iter()
                .filter(|rule| {
                    rule.resource_type == resource.type_
                        && rule.repositories.iter().any(|p| p.matches(&resource.name, caller))
                })
                .collect();
            let actions: Vec<String> = resource
                .actions
                .iter()
                .filter(|action| matching.iter().any(|rule| rule.actions.allows(action)))
                .cloned()
                .collect();
            if actions.len() < resource.actions.len() {
                short.push(resource.to_string());
            }
            if !actions.is_empty() {
                granted.push(resource.with_actions(actions));
            }
        }

        match short.is_empty() {
            true => Decision::grant(granted),
            false => Decision::grant_with_note(
                granted,
                format!(
                    "plan {:?} does not allow all of: {}",
                    caller.plan.as_deref().unwrap_or_default(),
                    short.join(" ")
                ),
            ),
        }
    }
}

fn compile_rule(rule: RuleSettings) -> Result<Rule, String> {
    let type_ok = !rule.resource_type.is_empty()
        && rule.resource_type.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !type_ok {
        return Err(format!("type {:?} is not lowercase letters and digits", rule.resource_type));
    }
    if rule.repositories.is_empty() {
        return Err("repositories is empty".to_owned());
    }
    if rule.actions.is_empty() {
        return Err("actions is empty".to_owned());
    }
    let repositories = rule
        .repositories
        .iter()
        .map(|p| RepoPattern::parse(p).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let actions = ActionSet::parse(&rule.actions).map_err(|e| e.to_string())?;
    Ok(Rule { resource_type: rule.resource_type, repositories, actions })
}

fn nothing_granted(request: &Request, why: &str) -> Decision {
    if request.resources.is_empty() {
        return Decision::grant(Vec::new());
    }
    let asked: Vec<String> = request.resources.iter().map(Resource::to_string).collect();
    Decision::grant_with_note(Vec::new(), format!("{why}; nothing granted of: {}", asked.join(" ")))
}

registry_policy::export_policy!(PlanCatalogue);

#[cfg(test)]
mod tests;
