//! {{name}}: a registry-token authorization policy.
//!
//! Everyone may pull the repositories `pull` lists; a caller may push to those `push` lists
//! (patterns with `*`, `**` and placeholders such as `{tenant}` and `{sub}`). A grant that includes
//! a push asks for `push_lifetime_seconds`, so a long upload keeps a valid token.

use registry_policy::actions::ActionSet;
use registry_policy::{Decision, RepoPattern, Request, TypedPolicy};
use serde::Deserialize;

/// The settings, parsed by the SDK: a misspelt or mistyped key is refused with its path.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pull: Vec<String>,
    push: Vec<String>,
    #[serde(default)]
    push_lifetime_seconds: Option<u32>,
}

/// The configured policy.
pub struct {{type_name}} {
    pull: Vec<RepoPattern>,
    push: Vec<RepoPattern>,
    push_lifetime_seconds: Option<u32>,
}

fn patterns(key: &str, list: &[String]) -> Result<Vec<RepoPattern>, String> {
    list.iter()
        .enumerate()
        .map(|(i, pattern)| RepoPattern::parse(pattern).map_err(|e| format!("{key}[{i}]: {e}")))
        .collect()
}

impl TypedPolicy for {{type_name}} {
    type Settings = Settings;

    fn new(settings: Settings) -> Result<Self, String> {
        Ok({{type_name}} {
            pull: patterns("pull", &settings.pull)?,
            push: patterns("push", &settings.push)?,
            push_lifetime_seconds: settings.push_lifetime_seconds,
        })
    }

    fn evaluate(&self, request: &Request) -> Decision {
        let caller = &request.caller;
        let mut pushes = false;
        let granted = request
            .resources
            .iter()
            .filter(|resource| resource.type_ == "repository")
            .filter_map(|resource| {
                let mut allowed = Vec::new();
                if self.pull.iter().any(|p| p.matches(&resource.name, caller)) {
                    allowed.push("pull");
                }
                if self.push.iter().any(|p| p.matches(&resource.name, caller)) {
                    allowed.push("push");
                }
                let actions = ActionSet::parse(allowed).ok()?.intersect(&resource.actions);
                pushes |= actions.iter().any(|action| action == "push");
                (!actions.is_empty()).then(|| resource.with_actions(actions))
            })
            .collect();
        let decision = Decision::grant(granted).annotate("policy", "{{name}}");
        match (pushes, self.push_lifetime_seconds) {
            (true, Some(seconds)) => decision.with_lifetime(seconds),
            _ => decision,
        }
    }
}

registry_policy::export_policy!({{type_name}});

#[cfg(test)]
mod tests {
    use super::*;
    use registry_policy::{Caller, Resource};

    #[test]
    fn a_tenant_pushes_only_to_its_own_repositories() {
        let policy = registry_policy::configure::<{{type_name}}>(
            r#"{"pull": ["public/**"], "push": ["{tenant}/**"], "push_lifetime_seconds": 600}"#,
        )
        .unwrap();
        let caller = Caller::new("alice").with_tenant("acme");
        let asked = vec![
            Resource::new("repository", "acme/app", ["pull", "push"]),
            Resource::new("repository", "globex/app", ["push"]),
        ];
        let Decision::Grant(grant) = policy.evaluate(&Request::new(caller, "registry.local", asked)) else {
            panic!("expected a grant");
        };
        assert_eq!(grant.resources, [Resource::new("repository", "acme/app", ["push"])]);
        assert_eq!(grant.lifetime_seconds, Some(600));
    }

    #[test]
    fn settings_errors_name_the_key() {
        let error = registry_policy::configure::<{{type_name}}>(r#"{"pull": ["a//b"], "push": []}"#).err().unwrap();
        assert!(error.starts_with("pull[0]: repository pattern"), "{error}");
        let error = registry_policy::configure::<{{type_name}}>(r#"{"pull": [], "push": 3}"#).err().unwrap();
        assert!(error.starts_with("push: invalid type"), "{error}");
    }
}
