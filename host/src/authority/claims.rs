//! Reading claims strictly: one value per name, the registered claims checked, and each claim the
//! policy reads of the right type.

use super::{AuthError, Requirements, shorten};
use crate::access::Caller;
use serde::de::{Deserialize, Deserializer, Error as _, MapAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

/// A JSON object that refuses duplicate member names (serde_json's `Map` keeps the last one, which
/// lets two parsers of the same token disagree about its claims).
pub struct StrictObject(pub Map<String, Value>);

impl<'de> Deserialize<'de> for StrictObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;

        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = StrictObject;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<StrictObject, A::Error> {
                let mut object = Map::new();
                while let Some(name) = access.next_key::<String>()? {
                    let value: Value = access.next_value()?;
                    if object.contains_key(&name) {
                        return Err(A::Error::custom(format!(
                            "{:?} appears more than once",
                            super::shorten(&name)
                        )));
                    }
                    object.insert(name, value);
                }
                Ok(StrictObject(object))
            }
        }

        deserializer.deserialize_map(ObjectVisitor)
    }
}

/// Maps a validated claim set to the caller the policy sees: `sub`, `client_id`,
/// `stellaops:tenant`, `stellaops:plan`, `stellaops:license`, the scopes (`scope` or `scp`, each as a
/// space-separated string or an array of strings, as Authorities differ), and every claim as JSON.
/// A claim of the wrong type is an error, never silently ignored.
pub fn caller_from_claims(claims: Map<String, Value>) -> Result<Caller, String> {
    let subject = match claims.get("sub") {
        Some(Value::String(sub)) if !sub.is_empty() => sub.clone(),
        Some(Value::String(_)) => return Err("sub is empty".into()),
        Some(_) => return Err("sub must be a string".into()),
        None => return Err("sub is missing".into()),
    };
    // A null claim is an absent one, as for the other optional claims.
    let present = |name: &str| claims.get(name).filter(|value| !value.is_null());
    let scopes = match (present("scope"), present("scp")) {
        (Some(scope), _) => scope_list("scope", scope)?,
        (None, Some(scp)) => scope_list("scp", scp)?,
        (None, None) => Vec::new(),
    };
    Ok(Caller {
        subject,
        client_id: optional_string(&claims, "client_id")?,
        tenant: optional_string(&claims, "stellaops:tenant")?,
        plan: optional_string(&claims, "stellaops:plan")?,
        license: optional_string(&claims, "stellaops:license")?,
        scopes,
        claims_json: Value::Object(claims).to_string(),
    })
}

/// The scopes of the claim `name`: a space-separated string (RFC 8693), or an array of strings
/// (IdentityServer's `scope`, Azure's `scp`).
fn scope_list(name: &str, value: &Value) -> Result<Vec<String>, String> {
    match value {
        Value::String(scopes) => Ok(scopes.split(' ').filter(|s| !s.is_empty()).map(str::to_owned).collect()),
        Value::Array(list) => list
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or_else(|| format!("{name} must hold strings")))
            .collect(),
        _ => Err(format!("{name} must be a space-separated string or an array of strings")),
    }
}

fn optional_string(claims: &Map<String, Value>, name: &str) -> Result<Option<String>, String> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(value)) => Ok(Some(value.clone())),
        Some(_) => Err(format!("{name} must be a string")),
    }
}

/// `exp`/`nbf` (with leeway), `iat`, `iss` and `aud`; the token's `exp` when all hold.
pub(super) fn check_registered_claims(
    claims: &Map<String, Value>,
    now: u64,
    requirements: &Requirements,
) -> Result<u64, AuthError> {
    let leeway = requirements.leeway_seconds as f64;
    let now = now as f64;
    let exp = match claims.get("exp") {
        Some(Value::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
        Some(_) => return Err(AuthError::Claim("exp must be a number".into())),
        None => return Err(AuthError::Claim("exp is missing".into())),
    };
    if !exp.is_finite() || exp + leeway <= now {
        return Err(AuthError::Expired);
    }
    match claims.get("nbf") {
        None => {}
        Some(Value::Number(n)) if n.as_f64().is_none_or(|nbf| nbf - leeway > now) => {
            return Err(AuthError::NotYetValid);
        }
        Some(Value::Number(_)) => {}
        Some(_) => return Err(AuthError::Claim("nbf must be a number".into())),
    }
    match claims.get("iat") {
        None | Some(Value::Number(_)) => {}
        Some(_) => return Err(AuthError::Claim("iat must be a number".into())),
    }
    match claims.get("iss") {
        Some(Value::String(iss)) if *iss == requirements.issuer => {}
        Some(Value::String(iss)) => return Err(AuthError::WrongIssuer(shorten(iss))),
        Some(_) => return Err(AuthError::Claim("iss must be a string".into())),
        None => return Err(AuthError::Claim("iss is missing".into())),
    }
    let audiences: Vec<&str> = match claims.get("aud") {
        Some(Value::String(aud)) => vec![aud.as_str()],
        Some(Value::Array(list)) => list
            .iter()
            .map(|v| v.as_str().ok_or_else(|| AuthError::Claim("aud must hold strings".into())))
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(AuthError::Claim("aud must be a string or an array of strings".into()));
        }
        None => return Err(AuthError::Claim("aud is missing".into())),
    };
    if !audiences.iter().any(|aud| requirements.audiences.iter().any(|a| a == aud)) {
        let shown = format!("{:?}", audiences.iter().map(|a| shorten(a)).collect::<Vec<_>>());
        return Err(AuthError::WrongAudience(shown));
    }
    // `exp` fits a u64 once it is known to be finite and in the future.
    Ok(exp as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => unreachable!(),
        }
    }

    #[test]
    fn duplicate_names_are_refused() {
        let error = serde_json::from_str::<StrictObject>(r#"{"sub":"a","sub":"b"}"#).err().unwrap();
        assert!(error.to_string().contains("\"sub\" appears more than once"), "{error}");
        assert!(serde_json::from_str::<StrictObject>(r#"{"a":{"x":1},"b":[1]}"#).is_ok());
        assert!(serde_json::from_str::<StrictObject>("[1]").is_err());
    }

    #[test]
    fn claims_map_to_the_caller() {
        let caller = caller_from_claims(object(json!({
            "sub": "alice", "client_id": "ci", "scope": "registry.token.issue other",
            "stellaops:plan": "team", "stellaops:tenant": "acme", "stellaops:license": "LIC-1"
        })))
        .unwrap();
        assert_eq!(caller.subject, "alice");
        assert_eq!(caller.plan.as_deref(), Some("team"));
        assert_eq!(caller.tenant.as_deref(), Some("acme"));
        assert_eq!(caller.license.as_deref(), Some("LIC-1"));
        assert_eq!(caller.client_id.as_deref(), Some("ci"));
        assert_eq!(caller.scopes, ["registry.token.issue", "other"]);
        let scp = caller_from_claims(object(json!({"sub": "a", "scp": ["x", "y"]}))).unwrap();
        assert_eq!(scp.scopes, ["x", "y"]);
    }

    #[test]
    fn wrong_types_are_errors() {
        for (claims, error) in [
            (json!({}), "sub is missing"),
            (json!({"sub": 7}), "sub must be a string"),
            (json!({"sub": ""}), "sub is empty"),
            (json!({"sub": "a", "scope": 3}), "scope must be"),
            (json!({"sub": "a", "scp": [1]}), "scp must hold strings"),
            (json!({"sub": "a", "stellaops:plan": ["team"]}), "stellaops:plan must be a string"),
            (json!({"sub": "a", "stellaops:license": 2}), "stellaops:license must be a string"),
        ] {
            let actual = caller_from_claims(object(claims)).unwrap_err();
            assert!(actual.starts_with(error), "{actual}");
        }
    }
}
