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
/// kubelet sets for a Service whose name starts `registry-token` (`registry-token`,
/// `registry-token-admin`, ...): `[NAME_]SERVICE_HOST`, `[NAME_]SERVICE_PORT[_PORTNAME]`,
/// `[NAME_]PORT` and `[NAME_]PORT_5050_TCP[_PROTO|_PORT|_ADDR]`. No configuration key has such a
/// name (a section's key has a `__`), so taking them for keys would only refuse to start.
fn kubernetes_service_link(key: &str) -> bool {
    if key.contains("__") {
        return false;
    }
    let parts: Vec<&str> = key.split('_').collect();
    let service = parts.windows(2).any(|pair| pair == ["service", "host"] || pair == ["service", "port"]);
    let port = parts.last() == Some(&"port")
        || parts.windows(3).any(|triple| {
            triple[0] == "port"
                && !triple[1].is_empty()
                && triple[1].bytes().all(|b| b.is_ascii_digit())
                && ["tcp", "udp", "sctp"].contains(&triple[2])
        });
    service || port
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

/// Each of `error`'s problems, naming the key and where its value came from (see [`origin`]).
pub(super) fn describe(error: figment::Error, path: &Path, overrides: &[(String, String)]) -> ConfigError {
    let lines: Vec<String> = error
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let origin = match e.metadata.as_ref().and_then(|m| m.source.as_ref()) {
                Some(figment::Source::File(file)) => file.display().to_string(),
                _ if e.metadata.as_ref().is_some_and(|m| m.name.contains("environment")) => {
                    let parts: Vec<&str> = e.path.iter().map(String::as_str).collect();
                    origin(&parts, path, overrides)
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

/// Where the value of the key at `key` (`["http", "shutdown_grace_seconds"]`) came from: the
/// variable of `overrides` that set it, or set the list or section holding it; else, for a
/// section checked as a whole (two keys that go together, say) that variables changed in part,
/// the file at `path` and those variables; else the file.
pub(super) fn origin(key: &[&str], path: &Path, overrides: &[(String, String)]) -> String {
    let names: Vec<String> = overrides.iter().map(|(name, _)| name.to_ascii_uppercase()).collect();
    let variable = |parts: &[&str]| format!("{ENV_PREFIX}{}", parts.join("__").to_ascii_uppercase());
    if let Some(set) = (1..=key.len()).rev().map(|end| variable(&key[..end])).find(|v| names.contains(v)) {
        return format!("environment variable {set}");
    }
    let within = format!("{}__", variable(key));
    let changed: Vec<&str> = names
        .iter()
        .filter(|name| !key.is_empty() && name.starts_with(&within))
        .map(String::as_str)
        .collect();
    match changed.as_slice() {
        [] => path.display().to_string(),
        some => format!("{} with {}", path.display(), some.join(", ")),
    }
}

/// The key a problem found by `Config::check` begins with (`http.shutdown_grace_seconds must be
/// ...`, `signing.keys[1] ...`, `authority: ...`), as a path.
pub(super) fn leading_key(problem: &str) -> Vec<&str> {
    let end = problem
        .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.'))
        .unwrap_or(problem.len());
    problem[..end].split('.').filter(|part| !part.is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_links_of_any_registry_token_service_are_not_keys() {
        for link in [
            "service_host",
            "service_port",
            "service_port_http",
            "port",
            "port_5050_tcp",
            "port_5050_tcp_addr",
            "admin_service_host",
            "admin_service_port_metrics",
            "admin_port",
            "admin_port_9090_udp_proto",
        ] {
            assert!(kubernetes_service_link(link), "{link}");
        }
        for key in
            ["services", "listen", "realm", "watch", "http__port", "report", "admin__listen", "support"]
        {
            assert!(!kubernetes_service_link(key), "{key}");
        }
    }

    #[test]
    fn the_origin_of_a_value_is_the_variable_that_set_it_or_what_holds_it() {
        let path = Path::new("/etc/registry-token.yaml");
        let set =
            |names: &[&str]| names.iter().map(|n| ((*n).to_owned(), "x".to_owned())).collect::<Vec<_>>();
        let audiences = set(&["REGISTRY_TOKEN_AUTHORITY__AUDIENCES"]);
        assert_eq!(
            origin(&["authority", "audiences", "1"], path, &audiences),
            "environment variable REGISTRY_TOKEN_AUTHORITY__AUDIENCES"
        );
        let url = set(&["REGISTRY_TOKEN_AUTHORITY__JWKS_URL", "REGISTRY_TOKEN_HTTP__MAX_CONNECTIONS"]);
        assert_eq!(
            origin(&["authority"], path, &url),
            "/etc/registry-token.yaml with REGISTRY_TOKEN_AUTHORITY__JWKS_URL"
        );
        assert_eq!(origin(&["policy"], path, &url), "/etc/registry-token.yaml");
        assert_eq!(
            leading_key("http.shutdown_grace_seconds must be between 0 and 3600"),
            ["http", "shutdown_grace_seconds"]
        );
        assert_eq!(leading_key("signing.keys[1] (file k.pem): ..."), ["signing", "keys"]);
    }
}
