//! Settings parsed by the SDK: the operator's document into a policy's own `serde` type, with
//! errors that name the key path (`plans.team[0].actions: invalid type: ...`).

use serde::de::DeserializeOwned;

/// Parses a settings document (JSON; the host converts YAML settings files to JSON) into `S`.
/// An error names the key at fault, so the operator sees where to look.
///
/// ```
/// #[derive(serde::Deserialize)]
/// struct Settings {
///     #[allow(dead_code)]
///     max_age_days: u32,
/// }
///
/// let error = registry_policy::parse_settings::<Settings>(r#"{"max_age_days": "ten"}"#)
///     .err()
///     .unwrap();
/// assert!(error.starts_with("max_age_days: invalid type"), "{error}");
/// ```
pub fn parse_settings<S: DeserializeOwned>(settings: &str) -> Result<S, String> {
    let mut json = serde_json::Deserializer::from_str(settings);
    serde_path_to_error::deserialize(&mut json).map_err(|error| {
        let path = error.path().to_string();
        let error = error.into_inner();
        if path == "." { error.to_string() } else { format!("{path}: {error}") }
    })
}
