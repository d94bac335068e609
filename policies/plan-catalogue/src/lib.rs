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
//!   release:
//!     - repositories: ["releases/**"]
//!       actions: [pull, push]
//!       lifetime_seconds: 3600     # large layer uploads outlive a 5-minute token
//! revoked_licenses: [LIC-0002]
//! license_expiry:                  # licences valid until a date (RFC 3339, UTC)
//!   LIC-0003: 2026-06-30T00:00:00Z
//! ```
//!
//! * A caller whose `stellaops:license` is revoked is denied the whole exchange (`licence-revoked`),
//!   and so is one whose licence expired before the request's time (`licence-expired`).
//! * Otherwise each requested resource gets the requested actions that some rule of the caller's
//!   plan allows for it (`type` defaults to `repository`; patterns are [`RepoPattern`]s; the action
//!   `*` allows any action, and a requested `*` only comes from a rule allowing `*`).
//! * No plan claim, or a plan not in the catalogue, grants nothing; the note says why.
//! * A rule's `lifetime_seconds` asks for that token lifetime when every granted resource was
//!   granted by such a rule (the smallest of them; the host clamps it to its own bounds).
//! * Every decision is annotated with the caller's `plan`; a lifetime with the rule that set it.

use registry_policy::actions::ActionSet;
use registry_policy::{Decision, RepoPattern, Request, Resource, TypedPolicy};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};

mod date;

/// The configured catalogue.
#[derive(Debug)]
pub struct PlanCatalogue {
    plans: BTreeMap<String, Vec<Rule>>,
    revoked_licenses: BTreeSet<String>,
    /// Licence → the Unix second it expires at.
    license_expiry: BTreeMap<String, (u64, String)>,
}

#[derive(Debug)]
struct Rule {
    /// `plans.<plan>[<i>]`, for the annotations.
    name: String,
    resource_type: String,
    repositories: Vec<RepoPattern>,
    actions: ActionSet,
    lifetime_seconds: Option<u32>,
}

/// The settings document.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    plans: BTreeMap<String, Vec<RuleSettings>>,
    #[serde(default)]
    revoked_licenses: Vec<String>,
    #[serde(default)]
    license_expiry: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSettings {
    #[serde(rename = "type", default = "default_type")]
    resource_type: String,
    repositories: Vec<String>,
    actions: Vec<String>,
    #[serde(default)]
    lifetime_seconds: Option<u32>,
}

fn default_type() -> String {
    "repository".to_owned()
}

impl TypedPolicy for PlanCatalogue {
    type Settings = Settings;

    fn new(settings: Settings) -> Result<Self, String> {
        let mut plans = BTreeMap::new();
        for (plan, rules) in settings.plans {
            let rules = rules
                .into_iter()
                .enumerate()
                .map(|(i, rule)| {
                    let name = format!("plans.{plan}[{i}]");
                    compile_rule(rule, &name).map_err(|problem| format!("{name}: {problem}"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            plans.insert(plan, rules);
        }
        let revoked_licenses = settings.revoked_licenses.into_iter().collect();
        // Contract 0.1.0 gives no request time: an expiry would never be reached (fail open).
        if cfg!(feature = "contract-0-1") && !settings.license_expiry.is_empty() {
            return Err("license_expiry needs the request's time, which contract 0.1.0 does not give: \
                        use the build for contract 0.2.0"
                .to_owned());
        }
        let license_expiry = settings
            .license_expiry
            .into_iter()
            .map(|(license, date)| match date::parse_rfc3339(&date) {
                Some(seconds) => Ok((license, (seconds, date))),
                None => Err(format!(
                    "license_expiry.{license}: {date:?} is not an RFC 3339 UTC time (2026-12-31T00:00:00Z)"
                )),
            })
            .collect::<Result<_, _>>()?;
        Ok(PlanCatalogue { plans, revoked_licenses, license_expiry })
    }

    fn evaluate(&self, request: &Request) -> Decision {
        let caller = &request.caller;
        let plan = caller.plan.as_deref().unwrap_or_default();
        if let Some(license) = &caller.license {
            if self.revoked_licenses.contains(license) {
                return Decision::deny(
                    "licence-revoked",
                    format!("licence {license} has been revoked; no registry access is issued for it"),
                )
                .annotate("plan", plan);
            }
            if let Some((expires, date)) = self.license_expiry.get(license)
                && request.time >= *expires
            {
                return Decision::deny(
                    "licence-expired",
                    format!("licence {license} expired at {date}; no registry access is issued for it"),
                )
                .annotate("plan", plan)
                .annotate("licence-expired-at", date.as_str());
            }
        }

        let rules = match caller.plan.as_deref() {
            None => return nothing_granted(request, "the caller has no stellaops:plan claim"),
            Some(plan) => match self.plans.get(plan) {
                Some(rules) => rules,
                None => {
                    return nothing_granted(request, &format!("plan {plan:?} is not in the catalogue"))
                        .annotate("plan", plan);
                }
            },
        };

        let mut granted = Vec::new();
        let mut short = Vec::new();
        // The lifetime every granted resource allows (the smallest), and the rule that set it;
        // `None` once a resource is granted by rules without one.
        let mut lifetime: Option<Option<(u32, &str)>> = None;
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
            if actions.is_empty() {
                continue;
            }
            // The longest lifetime among the rules that granted this resource's actions.
            let longest = matching
                .iter()
                .filter(|rule| actions.iter().any(|action| rule.actions.allows(action)))
                .filter_map(|rule| rule.lifetime_seconds.map(|seconds| (seconds, rule.name.as_str())))
                .max_by_key(|(seconds, _)| *seconds);
            lifetime = Some(match (lifetime, longest) {
                (None, longest) => longest,
                (Some(Some(so_far)), Some(this)) => Some(if this.0 < so_far.0 { this } else { so_far }),
                (Some(_), _) => None,
            });
            granted.push(resource.with_actions(actions));
        }

        let mut decision = match short.is_empty() {
            true => Decision::grant(granted),
            false => Decision::grant_with_note(
                granted,
                format!("plan {plan:?} does not allow all of: {}", short.join(" ")),
            ),
        }
        .annotate("plan", plan);
        if let Some(Some((seconds, rule))) = lifetime {
            decision = decision.with_lifetime(seconds).annotate("lifetime-rule", rule);
        }
        decision
    }
}

fn compile_rule(rule: RuleSettings, name: &str) -> Result<Rule, String> {
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
    // Contract 0.1.0 cannot ask for a lifetime: the token would get `signing.lifetime_seconds`,
    // longer than a rule that asks for less (fail open).
    if cfg!(feature = "contract-0-1") && rule.lifetime_seconds.is_some() {
        return Err("lifetime_seconds needs contract 0.2.0, which 0.1.0 cannot ask the host for: \
                    use the build for contract 0.2.0"
            .to_owned());
    }
    if rule.lifetime_seconds == Some(0) {
        return Err("lifetime_seconds must be at least 1".to_owned());
    }
    Ok(Rule {
        name: name.to_owned(),
        resource_type: rule.resource_type,
        repositories,
        actions,
        lifetime_seconds: rule.lifetime_seconds,
    })
}

fn nothing_granted(request: &Request, why: &str) -> Decision {
    if request.resources.is_empty() {
        return Decision::grant(Vec::new());
    }
    let asked: Vec<String> = request.resources.iter().map(Resource::to_string).collect();
    Decision::grant_with_note(Vec::new(), format!("{why}; nothing granted of: {}", asked.join(" ")))
}

// The default build implements stellaops:registry-policy@0.2.0; the `contract-0-1` feature builds
// the same rules against 0.1.0, which the host's tests keep as the older guest it must still load.
#[cfg(not(feature = "contract-0-1"))]
registry_policy::export_policy!(PlanCatalogue, settings_schema = include_str!("../settings.schema.json"));
#[cfg(feature = "contract-0-1")]
registry_policy::export_policy!(PlanCatalogue, contract = "0.1.0");

#[cfg(test)]
mod tests;
