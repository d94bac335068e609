//! The vocabulary every module shares: who is asking ([`Caller`]) and for what ([`Resource`]).
//!
//! A leaf module: it depends on nothing else in the crate, so `authority` (which produces a
//! `Caller`), `scope` (which produces `Resource`s), `policy` (which decides on both) and `mint`
//! (which writes the granted `Resource`s into the token) can share it without knowing each other.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The caller, as established from a validated Authority token.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Caller {
    /// `sub`; the subject of the registry token.
    pub subject: String,
    /// `client_id`.
    pub client_id: Option<String>,
    /// `stellaops:tenant`.
    pub tenant: Option<String>,
    /// `stellaops:plan`.
    pub plan: Option<String>,
    /// `stellaops:license`.
    pub license: Option<String>,
    /// The Authority scopes the token carries.
    pub scopes: Vec<String>,
    /// Every claim of the token, as a compact JSON object.
    pub claims_json: String,
}

/// One resource of the Docker scope grammar with its actions; also the shape of an entry of a
/// registry token's `access` claim.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resource {
    /// `repository`, `registry`, ...
    #[serde(rename = "type")]
    pub resource_type: String,
    /// `team/app`, `localhost:5000/a/b`, `catalog`.
    pub name: String,
    /// `pull`, `push`, `delete`, `*`: no duplicates, in the order first asked.
    pub actions: Vec<String>,
}

impl Resource {
    /// A resource with actions given as string slices.
    pub fn new(resource_type: &str, name: &str, actions: &[&str]) -> Self {
        Resource {
            resource_type: resource_type.to_owned(),
            name: name.to_owned(),
            actions: actions.iter().map(|a| (*a).to_owned()).collect(),
        }
    }
}

impl fmt::Display for Resource {
    /// The scope syntax: `repository:team/app:pull,push`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.resource_type, self.name, self.actions.join(","))
    }
}

/// Resources in scope syntax, space-separated: the OAuth2 `scope` of a response.
pub fn scope_string(resources: &[Resource]) -> String {
    resources.iter().map(Resource::to_string).collect::<Vec<_>>().join(" ")
}
