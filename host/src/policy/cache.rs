//! The decision cache: a guest is a pure function of its settings and the request (no clock, no
//! randomness, a fresh instance each time), so a decision can be reused for the exact same
//! request. One cache belongs to one loaded (module, settings) pair and is dropped with it.

use super::Decision;
use crate::access::{Caller, Resource};
use crate::bounded::{self, Weighed};

/// Decisions keyed by the exact input of an evaluation, bounded in entries and KiB.
pub(super) struct DecisionCache {
    cache: bounded::Cache<Key, Decision>,
}

/// The exact input of an evaluation: the time too, for a guest that can see it.
#[derive(Hash, PartialEq, Eq)]
struct Key {
    caller: Caller,
    service: String,
    resources: Vec<Resource>,
    time: u64,
}

/// A [`Key`] by reference, so a cache hit allocates nothing. Hashes as the owned key does.
struct Query<'a> {
    caller: &'a Caller,
    service: &'a str,
    resources: &'a [Resource],
    time: u64,
}

impl std::hash::Hash for Query<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.caller.hash(state);
        self.service.hash(state);
        self.resources.hash(state);
        self.time.hash(state);
    }
}

impl quick_cache::Equivalent<Key> for Query<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        *self.caller == key.caller
            && self.service == key.service
            && self.resources == key.resources.as_slice()
            && self.time == key.time
    }
}

impl DecisionCache {
    /// A cache of `capacity` KiB (entries of up to a KiB each), or none for 0.
    pub fn new(capacity: usize) -> Option<DecisionCache> {
        bounded::cache(capacity).map(|cache| DecisionCache { cache })
    }

    pub fn get(&self, caller: &Caller, service: &str, resources: &[Resource], time: u64) -> Option<Decision> {
        self.cache.get(&Query { caller, service, resources, time }).map(|hit| hit.value)
    }

    pub fn insert(
        &self,
        caller: &Caller,
        service: &str,
        resources: &[Resource],
        time: u64,
        decision: &Decision,
    ) {
        let bytes = key_bytes(caller, service, resources) + decision_bytes(decision);
        let key =
            Key { caller: caller.clone(), service: service.to_owned(), resources: resources.to_vec(), time };
        self.cache.insert(key, Weighed::new(decision.clone(), bytes));
    }

    /// Entries, and their weight in KiB (at most the capacity).
    pub fn usage(&self) -> (usize, u64) {
        (self.cache.len(), self.cache.weight())
    }
}

/// Every byte an entry's key holds: the caller's fields and claims, the service, the resources.
fn key_bytes(caller: &Caller, service: &str, resources: &[Resource]) -> usize {
    let optional = |field: &Option<String>| field.as_ref().map_or(0, String::len);
    let caller_bytes = caller.subject.len()
        + optional(&caller.client_id)
        + optional(&caller.tenant)
        + optional(&caller.plan)
        + optional(&caller.license)
        + caller.scopes.iter().map(|s| s.len() + 24).sum::<usize>()
        + caller.claims_json.len();
    caller_bytes + service.len() + resources_bytes(resources)
}

/// Every byte a decision holds: granted resources and the note, or the reason and message; and
/// the annotations.
fn decision_bytes(decision: &Decision) -> usize {
    let annotations: usize = decision.annotations().iter().map(|(k, v)| 48 + k.len() + v.len()).sum();
    annotations
        + match decision {
            Decision::Grant { resources, note, .. } => {
                resources_bytes(resources) + note.as_ref().map_or(0, String::len)
            }
            Decision::Deny { reason, message, .. } => reason.len() + message.len(),
        }
}

/// Strings count their bytes plus a `String`'s own 24; each resource its three fields' headers.
fn resources_bytes(resources: &[Resource]) -> usize {
    resources
        .iter()
        .map(|r| {
            72 + r.resource_type.len() + r.name.len() + r.actions.iter().map(|a| a.len() + 24).sum::<usize>()
        })
        .sum()
}
