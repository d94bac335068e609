//! `REGISTRY_TOKEN_<SECTION>__<KEY>` overrides, and error messages that name the key and where
//! its value came from.

use super::{ConfigError, ENV_PREFIX};
use std::path::Path;

/// `REGISTRY_TOKEN_<SECTION>__<KEY>` variables from a given environment. (figment's own `Env`
/// reads the process environment, which tests cannot safely change.)
pub(super) struct EnvOverrides(pub(super) Vec<(String, String)>);

impl figment::Provider for EnvOverrides {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("environment")
    }

    fn data(&self) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        let mut dict = figment::value::Dict::new();
        for (name, value) in &self.0 {
            let Some(key) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let key = key.to_ascii_lowercase();
            // The CLI's own variables are not configuration keys, nor are those Kubernetes gives
            // every pod in the namespace of a Service named `registry-token`.
            if key == "config" || key == "log" || kubernetes_service_link(&key) {
                continue;
            }
            let path: Vec<&str> = key.split("__").collect();
            // An empty value unsets the key (a file's `jwks_file`, say, for `jwks_url` to take
            // its place): an optional key is then absent, a required one missing.
            let parsed: figment::value::Value = match value.is_empty() {
                true => {
                    figment::value::Value::Empty(figment::value::Tag::Default, figment::value::Empty::None)
                }
                // A lone number or boolean stays the text it was: whether `1000` is a number
                // is the key's to say (a username, say, is a string), and the lossy extraction
                // reads text as a number or boolean where the key wants one.
                false => match value.parse() {
                    Ok(
                        figment::value::Value::Bool(..)
                        | figment::value::Value::Num(..)
                        | figment::value::Value::Char(..),
                    )
                    | Err(_) => value.clone().into(),
                    Ok(parsed) => parsed,
                },
            };
            insert(&mut dict, &path, parsed);
        }
        Ok(figment::Profile::Default.collect(dict))
    }
}

/// Whether `key` (lower case, the prefix stripped) is one of the service-link variables the
/// kubelet sets for a Service named `registry-token`: `…_SERVICE_HOST`, `…_SERVICE_PORT[_NAME]`,
/// `…_PORT` and `…_PORT_5050_TCP[_PROTO|_PORT|_ADDR]`. No configuration key has those names (a
/// section's key has a `__`), so taking them for keys would only refuse to start.
fn kubernetes_service_link(key: &str) -> bool {
    !key.contains("__")
        && (key == "service_host"
            || key == "service_port"
            || key.starts_with("service_port_")
            || key == "port"
            || key.starts_with("port_"))
}

fn insert(dict: &mut figment::value::Dict, path: &[&str], value: figment::value::Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert((*last).to_owned(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry((*first).to_owned())
                .or_insert_with(|| figment::value::Value::from(figment::value::Dict::new()));
            if let figment::value::Value::Dict(_, inner) = entry {
                insert(inner, rest, value);
            } else {
                let mut inner = figment::value::Dict::new();
                insert(&mut inner, rest, value);
                *entry = inner.into();
            }
        }
    }
}

pub(super) fn describe(error: figment::Error, path: &Path) -> ConfigError {
    let lines: Vec<String> = error
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let origin = match e.metadata.as_ref().and_then(|m| m.source.as_ref()) {
                Some(figment::Source::File(file)) => file.display().to_string(),
                _ if e.metadata.as_ref().is_some_and(|m| m.name.contains("environment")) => {
                    format!(
                        "environment variable {ENV_PREFIX}{}",
                        key.to_ascii_uppercase().replace('.', "__")
                    )
                }
                _ => path.display().to_string(),
            };
            match key.is_empty() {
                true => format!("{origin}: {}", e.kind),
                false => format!("{origin}: {key}: {}", e.kind),
            }
        })
        .collect();
    ConfigError(lines.join("\n"))
}
