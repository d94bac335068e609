//! The contract between host and guest, as the host enforces it: the request handed to the
//! guest, and the checks on its answer (sizes, reason syntax, nothing unrequested granted).

use super::bindings::stellaops::registry_policy::types as wit;
use super::{Decision, Fault};
use crate::access::{Caller, Resource};

/// Longest accepted `reason` of a denial.
const MAX_REASON: usize = 64;
/// Longest accepted denial `message`.
const MAX_MESSAGE: usize = 1024;
/// Longest accepted `note` of a grant.
const MAX_NOTE: usize = 4096;

pub(super) fn to_guest(caller: &Caller, service: &str, requested: &[Resource]) -> wit::Request {
    wit::Request {
        caller: wit::Caller {
            subject: caller.subject.clone(),
            client_id: caller.client_id.clone(),
            tenant: caller.tenant.clone(),
            plan: caller.plan.clone(),
            license: caller.license.clone(),
            scopes: caller.scopes.clone(),
            claims_json: caller.claims_json.clone(),
        },
        service: service.to_owned(),
        resources: requested
            .iter()
            .map(|r| wit::Resource {
                type_: r.resource_type.clone(),
                name: r.name.clone(),
                actions: r.actions.clone(),
            })
            .collect(),
    }
}

/// Enforces the contract on the guest's answer, and clips the grant to what was requested: the
/// result is built from the requested list, so nothing unrequested can reach a token.
pub(super) fn check_answer(answer: wit::Decision, requested: &[Resource]) -> Result<Decision, Fault> {
    match answer {
        wit::Decision::Deny(denial) => {
            let reason_ok = !denial.reason.is_empty()
                && denial.reason.len() <= MAX_REASON
                && denial.reason.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !reason_ok {
                return Err(Fault::Malformed(format!(
                    "a denial reason must be 1 to {MAX_REASON} characters of [a-z0-9-], got {:?}",
                    truncate(&denial.reason, 80)
                )));
            }
            if denial.message.len() > MAX_MESSAGE {
                return Err(Fault::Malformed(format!(
                    "a denial message may have at most {MAX_MESSAGE} bytes, got {}",
                    denial.message.len()
                )));
            }
            Ok(Decision::Deny { reason: denial.reason, message: denial.message })
        }
        wit::Decision::Grant(grant) => {
            if grant.note.as_ref().is_some_and(|note| note.len() > MAX_NOTE) {
                return Err(Fault::Malformed(format!("a note may have at most {MAX_NOTE} bytes")));
            }
            for granted in &grant.resources {
                let asked =
                    requested.iter().find(|r| r.resource_type == granted.type_ && r.name == granted.name);
                let Some(asked) = asked else {
                    return Err(Fault::Overgrant(format!("{}:{}", granted.type_, granted.name)));
                };
                if let Some(extra) = granted.actions.iter().find(|a| !asked.actions.contains(a)) {
                    return Err(Fault::Overgrant(format!(
                        "action {extra:?} on {}:{}",
                        granted.type_, granted.name
                    )));
                }
            }
            if grant.resources.len() > requested.len() {
                return Err(Fault::Malformed(format!(
                    "{} grant entries for {} requested resources",
                    grant.resources.len(),
                    requested.len()
                )));
            }
            let resources = requested
                .iter()
                .filter_map(|asked| {
                    let actions: Vec<String> = asked
                        .actions
                        .iter()
                        .filter(|action| {
                            grant.resources.iter().any(|g| {
                                g.type_ == asked.resource_type
                                    && g.name == asked.name
                                    && g.actions.contains(action)
                            })
                        })
                        .cloned()
                        .collect();
                    (!actions.is_empty()).then(|| Resource { actions, ..asked.clone() })
                })
                .collect();
            Ok(Decision::Grant { resources, note: grant.note })
        }
    }
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((cut, _)) => &text[..cut],
        None => text,
    }
}
