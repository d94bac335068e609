//! The contract between host and guest, as the host enforces it: the request handed to the
//! guest (in the WIT types of the guest's contract version), and the checks on its answer (sizes,
//! reason syntax, annotations, nothing unrequested granted), made once on a version-neutral
//! [`Answer`].

use super::bindings::v0_1::stellaops::registry_policy::types as v0_1;
use super::bindings::v0_2::stellaops::registry_policy::types as v0_2;
use super::{Annotations, Decision, Fault};
use crate::access::{Caller, Resource};

/// Longest accepted `reason` of a denial.
const MAX_REASON: usize = 64;
/// Longest accepted denial `message`.
const MAX_MESSAGE: usize = 1024;
/// Longest accepted `note` of a grant.
const MAX_NOTE: usize = 4096;
/// Most annotations one decision may carry: a few notes for the audit trail, not a log.
pub const MAX_ANNOTATIONS: usize = 8;
/// Longest annotation key (`[a-z0-9._-]`, at least one character).
pub const MAX_ANNOTATION_KEY: usize = 64;
/// Longest annotation value, in bytes.
pub const MAX_ANNOTATION_VALUE: usize = 256;
/// The most the host copies out of a guest for one answer (its text and lists, counted as
/// wasmtime lifts them, before any check above): the bound on what a hostile guest can make the
/// host allocate per evaluation. Strings in a guest's memory may overlap, so without it a guest
/// in 16 MiB could name one string a million times. Far above any answer that passes the checks
/// (at most 100 resources of a few hundred bytes, a 4 KiB note, eight annotations).
pub const MAX_ANSWER_BYTES: usize = 4 << 20;

/// What the host asks, before it is put in a contract version's types.
pub(super) struct Request<'a> {
    pub caller: &'a Caller,
    pub service: &'a str,
    pub requested: &'a [Resource],
    /// Unix seconds (0.2.0 only; a 0.1.0 guest has no field for it).
    pub time: u64,
}

macro_rules! to_wit {
    ($wit:ident, $request:expr) => {{
        let request = $request;
        let caller = request.caller;
        (
            $wit::Caller {
                subject: caller.subject.clone(),
                client_id: caller.client_id.clone(),
                tenant: caller.tenant.clone(),
                plan: caller.plan.clone(),
                license: caller.license.clone(),
                scopes: caller.scopes.clone(),
                claims_json: caller.claims_json.clone(),
            },
            request.service.to_owned(),
            request
                .requested
                .iter()
                .map(|r| $wit::Resource {
                    type_: r.resource_type.clone(),
                    name: r.name.clone(),
                    actions: r.actions.clone(),
                })
                .collect::<Vec<_>>(),
        )
    }};
}

impl Request<'_> {
    pub fn v0_1(&self) -> v0_1::Request {
        let (caller, service, resources) = to_wit!(v0_1, self);
        v0_1::Request { caller, service, resources }
    }

    pub fn v0_2(&self) -> v0_2::Request {
        let (caller, service, resources) = to_wit!(v0_2, self);
        v0_2::Request { caller, service, resources, time: self.time }
    }
}

/// A guest's answer in the host's terms, whatever its contract version.
pub(super) enum Answer {
    Grant {
        /// `(type, name, actions)` as the guest wrote them.
        resources: Vec<(String, String, Vec<String>)>,
        note: Option<String>,
        lifetime_seconds: Option<u32>,
        annotations: Annotations,
    },
    Deny {
        reason: String,
        message: String,
        annotations: Annotations,
    },
}

impl From<v0_1::Decision> for Answer {
    fn from(decision: v0_1::Decision) -> Answer {
        match decision {
            v0_1::Decision::Grant(grant) => Answer::Grant {
                resources: grant.resources.into_iter().map(|r| (r.type_, r.name, r.actions)).collect(),
                note: grant.note,
                lifetime_seconds: None,
                annotations: Vec::new(),
            },
            v0_1::Decision::Deny(denial) => {
                Answer::Deny { reason: denial.reason, message: denial.message, annotations: Vec::new() }
            }
        }
    }
}

impl From<v0_2::Decision> for Answer {
    fn from(decision: v0_2::Decision) -> Answer {
        let pairs = |annotations: Vec<v0_2::Annotation>| -> Annotations {
            annotations.into_iter().map(|a| (a.key, a.value)).collect()
        };
        match decision {
            v0_2::Decision::Grant(grant) => Answer::Grant {
                resources: grant.resources.into_iter().map(|r| (r.type_, r.name, r.actions)).collect(),
                note: grant.note,
                lifetime_seconds: grant.lifetime_seconds,
                annotations: pairs(grant.annotations),
            },
            v0_2::Decision::Deny(denial) => Answer::Deny {
                reason: denial.reason,
                message: denial.message,
                annotations: pairs(denial.annotations),
            },
        }
    }
}

/// The annotation rules: a bounded number, keys of `[a-z0-9._-]`, each key once, short values.
fn check_annotations(annotations: &Annotations) -> Result<(), Fault> {
    if annotations.len() > MAX_ANNOTATIONS {
        return Err(Fault::Malformed(format!(
            "a decision may carry at most {MAX_ANNOTATIONS} annotations, got {}",
            annotations.len()
        )));
    }
    for (i, (key, value)) in annotations.iter().enumerate() {
        let key_ok = !key.is_empty()
            && key.len() <= MAX_ANNOTATION_KEY
            && key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
        if !key_ok {
            return Err(Fault::Malformed(format!(
                "an annotation key must be 1 to {MAX_ANNOTATION_KEY} characters of [a-z0-9._-], got {:?}",
                truncate(key, 80)
            )));
        }
        if value.len() > MAX_ANNOTATION_VALUE {
            return Err(Fault::Malformed(format!(
                "annotation {key:?} has {} bytes; at most {MAX_ANNOTATION_VALUE} are accepted",
                value.len()
            )));
        }
        if annotations[..i].iter().any(|(earlier, _)| earlier == key) {
            return Err(Fault::Malformed(format!("annotation {key:?} is given twice")));
        }
    }
    Ok(())
}

/// Enforces the contract on the guest's answer, and clips the grant to what was requested: the
/// result is built from the requested list, so nothing unrequested can reach a token.
pub(super) fn check_answer(answer: Answer, requested: &[Resource]) -> Result<Decision, Fault> {
    match answer {
        Answer::Deny { reason, message, annotations } => {
            let denial = (reason, message);
            let (reason, message) = denial;
            let reason_ok = !reason.is_empty()
                && reason.len() <= MAX_REASON
                && reason.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !reason_ok {
                return Err(Fault::Malformed(format!(
                    "a denial reason must be 1 to {MAX_REASON} characters of [a-z0-9-], got {:?}",
                    truncate(&reason, 80)
                )));
            }
            if message.len() > MAX_MESSAGE {
                return Err(Fault::Malformed(format!(
                    "a denial message may have at most {MAX_MESSAGE} bytes, got {}",
                    message.len()
                )));
            }
            check_annotations(&annotations)?;
            Ok(Decision::Deny { reason, message, annotations })
        }
        Answer::Grant { resources: granted_list, note, lifetime_seconds, annotations } => {
            if note.as_ref().is_some_and(|note| note.len() > MAX_NOTE) {
                return Err(Fault::Malformed(format!("a note may have at most {MAX_NOTE} bytes")));
            }
            for (type_, name, actions) in &granted_list {
                let asked = requested.iter().find(|r| r.resource_type == *type_ && r.name == *name);
                let Some(asked) = asked else {
                    return Err(Fault::Overgrant(format!("{type_}:{name}")));
                };
                if let Some(extra) = actions.iter().find(|a| !asked.actions.contains(a)) {
                    return Err(Fault::Overgrant(format!("action {extra:?} on {type_}:{name}")));
                }
            }
            if granted_list.len() > requested.len() {
                return Err(Fault::Malformed(format!(
                    "{} grant entries for {} requested resources",
                    granted_list.len(),
                    requested.len()
                )));
            }
            check_annotations(&annotations)?;
            let resources = requested
                .iter()
                .filter_map(|asked| {
                    let actions: Vec<String> = asked
                        .actions
                        .iter()
                        .filter(|action| {
                            granted_list.iter().any(|(type_, name, actions)| {
                                *type_ == asked.resource_type
                                    && *name == asked.name
                                    && actions.contains(action)
                            })
                        })
                        .cloned()
                        .collect();
                    (!actions.is_empty()).then(|| Resource { actions, ..asked.clone() })
                })
                .collect();
            Ok(Decision::Grant { resources, note, lifetime_seconds, annotations })
        }
    }
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((cut, _)) => &text[..cut],
        None => text,
    }
}
