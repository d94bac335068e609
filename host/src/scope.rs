//! The Docker scope grammar (distribution `docs/spec/auth/scope.md`).
//!
//! ```text
//! resourcescope := resourcetype ":" resourcename ":" action [ ',' action ]*
//! resourcetype  := /[a-z0-9]+/ [ '(' /[a-z0-9]+/ ')' ]     the (class) is accepted and dropped
//! resourcename  := [ hostname '/' ] component [ '/' component ]*
//! hostname      := hostcomponent [ '.' hostcomponent ]* [ ':' port ]
//! component     := /[a-z0-9]+/ [ separator /[a-z0-9]+/ ]*    separator := [_.] | __ | [-]*
//! action        := /[a-z]+/ | "*"
//! ```
//!
//! The type is what precedes the first `:`, the actions what follows the last, so a name may carry
//! one `:` for a port (`repository:localhost:5000/a/b:pull`). Values arrive repeated (`scope=..&
//! scope=..`) and space-separated; requests for the same resource are merged.

use crate::access::Resource;
// The one definition of a repository path component, shared with the policies' patterns.
use registry_policy::is_path_component as is_component;

/// At most this many distinct resources per request; a blob mount asks for two.
pub const MAX_RESOURCES: usize = 100;
/// distribution's limit on a repository name.
const MAX_NAME_LEN: usize = 255;
const MAX_ACTIONS: usize = 16;
const MAX_ACTION_LEN: usize = 32;
const MAX_TYPE_LEN: usize = 64;

/// A scope the grammar refuses, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// One resource scope is malformed.
    #[error("invalid scope {scope:?}: {problem}")]
    Invalid {
        /// The offending scope, shortened to 200 characters.
        scope: String,
        /// What is wrong with it.
        problem: String,
    },
    /// More distinct resources than [`MAX_RESOURCES`].
    #[error(
        "too many scopes: more than {MAX_RESOURCES} resources requested, at most {MAX_RESOURCES} are accepted"
    )]
    TooMany,
}

/// Parses every `scope` value of a request (each may hold several space-separated scopes) into
/// resources, merging repeated requests for the same type and name.
pub fn parse_scopes<'a>(values: impl IntoIterator<Item = &'a str>) -> Result<Vec<Resource>, ScopeError> {
    let mut resources: Vec<Resource> = Vec::new();
    for value in values {
        for scope in value.split(' ').filter(|s| !s.is_empty()) {
            let parsed = parse_one(scope)?;
            match resources
                .iter_mut()
                .find(|r| r.resource_type == parsed.resource_type && r.name == parsed.name)
            {
                Some(existing) => {
                    for action in parsed.actions {
                        if !existing.actions.contains(&action) {
                            existing.actions.push(action);
                        }
                    }
                    if existing.actions.len() > MAX_ACTIONS {
                        return Err(invalid(scope, format!("more than {MAX_ACTIONS} actions")));
                    }
                }
                None => {
                    if resources.len() == MAX_RESOURCES {
                        return Err(ScopeError::TooMany);
                    }
                    resources.push(parsed);
                }
            }
        }
    }
    Ok(resources)
}

/// Parses one resource scope: `repository:team/app:pull,push`.
pub fn parse_one(scope: &str) -> Result<Resource, ScopeError> {
    let (Some(first), Some(last)) = (scope.find(':'), scope.rfind(':')) else {
        return Err(invalid(scope, "expected type:name:actions".to_owned()));
    };
    if first == last {
        return Err(invalid(scope, "expected type:name:actions".to_owned()));
    }
    let resource_type = parse_type(&scope[..first]).map_err(|p| invalid(scope, p))?;
    let name = &scope[first + 1..last];
    check_name(name).map_err(|p| invalid(scope, p))?;
    let actions = parse_actions(&scope[last + 1..]).map_err(|p| invalid(scope, p))?;
    Ok(Resource { resource_type, name: name.to_owned(), actions })
}

fn invalid(scope: &str, problem: String) -> ScopeError {
    let scope = match scope.char_indices().nth(200) {
        Some((cut, _)) => format!("{}...", &scope[..cut]),
        None => scope.to_owned(),
    };
    ScopeError::Invalid { scope, problem }
}

fn is_lower_alnum(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

fn parse_type(text: &str) -> Result<String, String> {
    let base = match text.split_once('(') {
        Some((base, class)) => {
            let class_ok = class.strip_suffix(')').is_some_and(is_lower_alnum);
            if !class_ok {
                return Err(format!("resource type {text:?} has a malformed (class)"));
            }
            base
        }
        None => text,
    };
    if !is_lower_alnum(base) || base.len() > MAX_TYPE_LEN {
        return Err(format!("resource type {text:?} must be lowercase letters and digits"));
    }
    Ok(base.to_owned())
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the resource name is empty".to_owned());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("the resource name is longer than {MAX_NAME_LEN} characters"));
    }
    let mut components = name.split('/');
    let first = components.next().unwrap_or_default();
    let rest: Vec<&str> = components.collect();
    // As in Docker's reference grammar, the first component is a hostname only when more follow
    // and it looks like one (has a `.` or a `:port`, or is `localhost`); otherwise it is a path
    // component, and so lowercase.
    // A first component that looks like a host but is not one (`a_b.c`) may still be a path
    // component: the grammar allows either.
    let looks_like_host = first.contains(['.', ':']) || first == "localhost";
    let first_ok = (!rest.is_empty() && looks_like_host && is_hostname(first)) || is_component(first);
    if !first_ok {
        return Err(format!("{first:?} is neither a repository path component nor a hostname"));
    }
    match rest.iter().find(|c| !is_component(c)) {
        Some(bad) => Err(format!(
            "name component {bad:?} must be lowercase letters and digits separated by '.', '_', '__' or '-'"
        )),
        None => Ok(()),
    }
}

fn is_hostname(text: &str) -> bool {
    let (host, port) = match text.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (text, None),
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    let label_ok = |label: &str| {
        let bytes = label.as_bytes();
        !bytes.is_empty()
            && bytes.len() <= 63
            && bytes.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
            && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
            && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
    };
    port_ok && host.split('.').all(label_ok)
}

fn parse_actions(text: &str) -> Result<Vec<String>, String> {
    let mut actions: Vec<String> = Vec::new();
    // The grammar's action is /[a-z]*/: an empty one is allowed, and asks for nothing.
    for action in text.split(',').filter(|a| !a.is_empty()) {
        let valid = action == "*"
            || (action.len() <= MAX_ACTION_LEN && action.bytes().all(|b| b.is_ascii_lowercase()));
        if !valid {
            return Err(format!("action {action:?} must be lowercase letters or `*`"));
        }
        if !actions.iter().any(|a| a == action) {
            actions.push(action.to_owned());
        }
        if actions.len() > MAX_ACTIONS {
            return Err(format!("more than {MAX_ACTIONS} actions"));
        }
    }
    Ok(actions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(values: &[&str]) -> Result<Vec<String>, ScopeError> {
        parse_scopes(values.iter().copied()).map(|r| r.iter().map(Resource::to_string).collect())
    }

    #[test]
    fn the_forms_real_clients_send() {
        assert_eq!(parse(&["repository:team/app:pull,push"]).unwrap(), ["repository:team/app:pull,push"]);
        assert_eq!(parse(&["repository:team/app:push,pull"]).unwrap(), ["repository:team/app:push,pull"]);
        // A blob mount: repeated parameters.
        assert_eq!(
            parse(&["repository:team/copy:pull,push", "repository:team/app:pull"]).unwrap(),
            ["repository:team/copy:pull,push", "repository:team/app:pull"]
        );
        // containerd: one value, several space-separated scopes.
        assert_eq!(
            parse(&["repository:a/b:pull repository:c/d:push"]).unwrap(),
            ["repository:a/b:pull", "repository:c/d:push"]
        );
        assert_eq!(parse(&["registry:catalog:*"]).unwrap(), ["registry:catalog:*"]);
        assert_eq!(parse(&[]).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn a_port_in_the_name_keeps_its_colon() {
        let r = parse_one("repository:localhost:5000/a/b:pull,push").unwrap();
        assert_eq!((r.resource_type.as_str(), r.name.as_str()), ("repository", "localhost:5000/a/b"));
        assert_eq!(r.actions, ["pull", "push"]);
        assert!(parse_one("repository:Registry.Example.com/a:pull").is_ok());
        assert!(parse_one("repository:localhost/a:pull").is_ok());
        assert!(parse_one("repository:Team/app:pull").is_err(), "not a host: a path component");
    }

    #[test]
    fn class_is_accepted_and_dropped() {
        let r = parse_one("repository(plugin):team/app:pull").unwrap();
        assert_eq!(r.resource_type, "repository");
        assert!(parse_one("repository(Plugin):team/app:pull").is_err());
        assert!(parse_one("repository(plugin:team/app:pull").is_err());
    }

    #[test]
    fn repeated_resources_merge_and_actions_dedupe() {
        assert_eq!(
            parse(&["repository:a/b:pull", "repository:a/b:push,pull", "repository:a/b:pull,pull"]).unwrap(),
            ["repository:a/b:pull,push"]
        );
    }

    #[test]
    fn malformed_scopes_are_refused_with_a_reason() {
        for (scope, problem) in [
            ("repository", "expected type:name:actions"),
            ("repository:team/app", "expected type:name:actions"),
            ("Repository:team/app:pull", "resource type"),
            (":team/app:pull", "resource type"),
            ("repository::pull", "name is empty"),
            ("repository:Team/app:pull", "neither a repository path component"),
            ("repository:team/App:pull", "name component \"App\""),
            ("repository:team//app:pull", "name component \"\""),
            ("repository:team/app/:pull", "name component \"\""),
            ("repository:team/app:PULL", "action \"PULL\""),
            ("repository:team/app:pu11", "action \"pu11\""),
            ("repository:a:b:c/d:pull", "neither"),
            ("repository:host:99999x/a:pull", "neither"),
            ("repository:te\u{e9}am/app:pull", "neither"),
        ] {
            let error = parse_one(scope).unwrap_err().to_string();
            assert!(error.contains(problem), "{scope:?}: {error}");
        }
        let long = format!("repository:{}:pull", "a".repeat(300));
        assert!(parse_one(&long).unwrap_err().to_string().contains("longer than 255"));
    }

    #[test]
    fn the_grammar_allows_empty_actions_and_dotted_path_components() {
        // action := /[a-z]*/ — an empty action asks for nothing.
        assert_eq!(parse_one("repository:team/app:").unwrap().actions, Vec::<String>::new());
        assert_eq!(parse_one("repository:team/app:pull,,push,").unwrap().actions, ["pull", "push"]);
        // `a_b.c` looks like a host but is not one; as a path component it is valid.
        assert_eq!(parse_one("repository:a_b.c/d:pull").unwrap().name, "a_b.c/d");
        assert_eq!(
            parse_one("repository:registry.example.com:5000/d:pull").unwrap().name,
            "registry.example.com:5000/d"
        );
    }

    #[test]
    fn too_many_resources_are_refused() {
        let many: Vec<String> = (0..=MAX_RESOURCES).map(|i| format!("repository:r/{i}:pull")).collect();
        let error = parse_scopes(many.iter().map(String::as_str)).unwrap_err();
        assert_eq!(error, ScopeError::TooMany);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        /// Whatever the bytes, parsing returns (never panics), and what it accepts round-trips.
        #[test]
        fn arbitrary_input_never_panics(input in "\\PC{0,300}") {
            if let Ok(resources) = parse_scopes([input.as_str()]) {
                for resource in resources {
                    let again = parse_one(&resource.to_string()).unwrap();
                    prop_assert_eq!(again, resource);
                }
            }
        }

        #[test]
        fn grammar_shaped_input_never_panics(input in "[a-z(]{0,8}[:]?[a-zA-Z0-9._/:-]{0,40}[:]?[a-z*,]{0,20}") {
            let _ = parse_scopes([input.as_str()]);
        }

        #[test]
        fn valid_scopes_parse(
            host in proptest::option::of("[a-z][a-z0-9]{0,8}(\\.[a-z0-9]{1,8}){0,2}(:[0-9]{1,5})?"),
            // A first component with a dot would read as a hostname, as in Docker's grammar.
            first in "[a-z0-9]{1,6}([_-][a-z0-9]{1,6}){0,2}",
            path in proptest::collection::vec("[a-z0-9]{1,6}([._-][a-z0-9]{1,6}){0,2}", 0..3),
            actions in proptest::collection::vec("[a-z]{1,8}|\\*", 1..4),
        ) {
            let path = std::iter::once(first).chain(path).collect::<Vec<_>>().join("/");
            let name = match &host {
                Some(host) => format!("{host}/{path}"),
                None => path,
            };
            let scope = format!("repository:{name}:{}", actions.join(","));
            let parsed = parse_one(&scope).unwrap();
            // The actions once each, in the order first asked; and what was parsed round-trips.
            let mut once: Vec<String> = Vec::new();
            for action in actions {
                if !once.contains(&action) {
                    once.push(action);
                }
            }
            prop_assert_eq!(&parsed.actions, &once);
            prop_assert_eq!(&parse_one(&parsed.to_string()).unwrap(), &parsed);
            prop_assert_eq!(parsed.name, name);
        }
    }
}
