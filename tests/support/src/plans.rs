//! The plan catalogue the tests rely on (the built-in policy's settings), and its variations.

use serde_norway::Value;

/// The plans the tests rely on: `team` (its own repositories, a shared tree and the tenant's),
/// `readonly`, `admin` (everything and the catalog), and the revoked licence `LIC-0002`.
pub const PLANS: &str = r#"
plans:
  team:
    - repositories: ["team/*", "shared/**"]
      actions: [pull, push]
    - repositories: ["{tenant}/**"]
      actions: [pull, push, delete]
  readonly:
    - repositories: ["team/*"]
      actions: [pull]
  admin:
    - repositories: ["**"]
      actions: ["*"]
    - type: registry
      repositories: [catalog]
      actions: ["*"]
revoked_licenses: [LIC-0002]
"#;

/// [`PLANS`] as YAML after `edit` changed it (a plan added, a rule changed).
pub fn plans_with(edit: impl FnOnce(&mut Value)) -> String {
    let mut plans: Value = serde_norway::from_str(PLANS).unwrap();
    edit(&mut plans);
    serde_norway::to_string(&plans).unwrap()
}

/// [`PLANS`] with `revoked` as its revoked licences instead of `LIC-0002`.
pub fn plans_revoking(revoked: &[&str]) -> String {
    plans_with(|plans| plans["revoked_licenses"] = revoked.iter().map(|l| Value::from(*l)).collect())
}

/// A YAML settings text as the JSON the policy is handed (what the service does at load).
pub fn as_json(yaml: &str) -> String {
    let value: serde_json::Value = serde_norway::from_str(yaml).unwrap();
    value.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variations_keep_the_rest() {
        let revoked: Value = serde_norway::from_str(&plans_revoking(&["LIC-0002", "LIC-0003"])).unwrap();
        let mut expected: Value = serde_norway::from_str(PLANS).unwrap();
        expected["revoked_licenses"] = serde_norway::from_str("[LIC-0002, LIC-0003]").unwrap();
        assert_eq!(revoked, expected);
        let json: serde_json::Value = serde_json::from_str(&as_json(PLANS)).unwrap();
        assert_eq!(json["plans"]["team"][1]["repositories"][0], "{tenant}/**");
    }
}
