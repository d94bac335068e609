//! Action sets: what a rule allows, and the intersection with what a caller asked for.
//!
//! A rule listing the action `*` allows every action. A caller asking for `*` (the registry wants
//! `registry:catalog:*`) gets it only from a rule that allows `*`: `*` is never assembled out of
//! `pull` and `push`.
//!
//! ```
//! use registry_policy::actions::ActionSet;
//!
//! let pull_push = ActionSet::parse(["pull", "push"]).unwrap();
//! let asked = ["push".to_owned(), "delete".to_owned(), "pull".to_owned()];
//! assert_eq!(pull_push.intersect(&asked), ["push", "pull"]);
//!
//! let any = ActionSet::parse(["*"]).unwrap();
//! assert_eq!(any.intersect(&["*".to_owned()]), ["*"]);
//! assert!(pull_push.intersect(&["*".to_owned()]).is_empty());
//! ```

use std::collections::BTreeSet;
use std::fmt;

/// The actions a rule allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ActionSet {
    /// `*`: every action, including a requested `*`.
    Any,
    /// Exactly these actions.
    Only(BTreeSet<String>),
}

/// An action that is neither `*` nor lowercase letters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActionError(String);

impl fmt::Display for ActionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "action {:?} is not `*` or lowercase letters", self.0)
    }
}

impl std::error::Error for ActionError {}

impl ActionSet {
    /// Builds a set from a rule's action list, refusing actions outside the scope grammar.
    pub fn parse<S: AsRef<str>>(actions: impl IntoIterator<Item = S>) -> Result<Self, ActionError> {
        let mut only = BTreeSet::new();
        let mut any = false;
        for action in actions {
            let action = action.as_ref();
            if action == "*" {
                any = true;
            } else if !action.is_empty() && action.bytes().all(|b| b.is_ascii_lowercase()) {
                only.insert(action.to_owned());
            } else {
                return Err(ActionError(action.to_owned()));
            }
        }
        Ok(if any { ActionSet::Any } else { ActionSet::Only(only) })
    }

    /// Whether the set allows `action` (a requested `*` only when the set is [`ActionSet::Any`]).
    pub fn allows(&self, action: &str) -> bool {
        match self {
            ActionSet::Any => true,
            ActionSet::Only(only) => action != "*" && only.contains(action),
        }
    }

    /// The requested actions this set allows, in the order asked.
    pub fn intersect(&self, requested: &[String]) -> Vec<String> {
        requested.iter().filter(|action| self.allows(action)).cloned().collect()
    }
}
