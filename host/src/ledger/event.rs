//! What the ledger records: one [`Event`] per exchange (and per admin action), and the
//! [`Revocation`]s the host checks before any policy is asked.

use crate::access::Caller;
use crate::rfc3339::{self, Refused};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// Milliseconds since the Unix epoch; rendered as RFC 3339 UTC with milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millis(pub i64);

impl Millis {
    /// The system clock.
    pub fn now() -> Millis {
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Millis(i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
    }

    /// From Unix seconds.
    pub fn from_seconds(seconds: u64) -> Millis {
        Millis(i64::try_from(seconds).unwrap_or(i64::MAX / 1000).saturating_mul(1000))
    }

    /// Parses RFC 3339 (`2026-12-31T00:00:00Z`, any offset; see [`crate::rfc3339`]) or Unix
    /// seconds, from 1970 to the end of 9999 (what can be written back).
    pub fn parse(text: &str) -> Result<Millis, String> {
        let parsed = match text.parse::<u64>() {
            Ok(seconds) if seconds > (rfc3339::LAST_MILLIS / 1000).unsigned_abs() => Err(Refused::After9999),
            Ok(seconds) => Ok(Millis::from_seconds(seconds).0),
            Err(_) => rfc3339::parse_millis(text),
        };
        parsed.map(Millis).map_err(|refused| match refused {
            Refused::NotATime => {
                format!("{:?} is not an RFC 3339 time (2026-12-31T00:00:00Z) or Unix seconds", short(text))
            }
            refused => format!("{:?} is {refused}", short(text)),
        })
    }
}

/// A window of time given as `since` (at or after) and `until` (before): an error naming both
/// when it holds no instant, so that a mistyped bound is not answered with an empty page, or a
/// signed export of no events.
pub fn check_window(since: Option<Millis>, until: Option<Millis>) -> Result<(), String> {
    match (since, until) {
        (Some(since), Some(until)) if since >= until => {
            Err(format!("since ({since}) is not before until ({until}): the window holds no time"))
        }
        _ => Ok(()),
    }
}

impl fmt::Display for Millis {
    /// Never fails: a value outside 1970–9999 (none is parsed; a row written before that was
    /// checked) shows as the nearest end.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0.clamp(0, rfc3339::LAST_MILLIS).unsigned_abs();
        let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(millis);
        humantime::format_rfc3339_millis(time).fmt(f)
    }
}

impl Serialize for Millis {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Read back as written (a policy bundle's `revocations.json` is a snapshot of the ledger's).
impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Millis::parse(&text).map_err(serde::de::Error::custom)
    }
}

fn short(text: &str) -> &str {
    text.char_indices().nth(40).map_or(text, |(cut, _)| &text[..cut])
}

/// What happened to an exchange, or which admin action an event records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A registry token was returned.
    Issued,
    /// The policy or a revocation refused the caller.
    Denied,
    /// The request was refused before the policy: the caller token failed validation, or the
    /// request was malformed.
    Refused,
    /// The service failed (policy fault, keys unavailable, signing): nothing was issued.
    Fault,
    /// An administrator revoked something.
    RevocationCreated,
    /// An administrator lifted a revocation.
    RevocationLifted,
}

impl Outcome {
    /// Every outcome, for parsing.
    pub const ALL: [Outcome; 6] = [
        Outcome::Issued,
        Outcome::Denied,
        Outcome::Refused,
        Outcome::Fault,
        Outcome::RevocationCreated,
        Outcome::RevocationLifted,
    ];

    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Issued => "issued",
            Outcome::Denied => "denied",
            Outcome::Refused => "refused",
            Outcome::Fault => "fault",
            Outcome::RevocationCreated => "revocation_created",
            Outcome::RevocationLifted => "revocation_lifted",
        }
    }

    /// The outcome named `name`.
    pub fn from_name(name: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == name)
    }

    /// The outcome named `name`, or the message a filter's caller gets (it names the outcomes).
    pub fn parse(name: &str) -> Result<Outcome, String> {
        Outcome::from_name(name).ok_or_else(|| {
            let known: Vec<&str> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
            format!("outcome {name:?} is not one of {}", known.join(", "))
        })
    }
}

impl Serialize for Outcome {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// The registry token an `issued` event is about (never the token itself).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IssuedToken {
    /// Its `jti`.
    pub jti: String,
    /// Its `exp`, Unix seconds.
    pub exp: i64,
    /// The `kid` of the key that signed it.
    pub kid: String,
}

/// The token lifetime a policy asked for, and what the host issued (`policy` 0.2.0 grants).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct LifetimeRecord {
    /// Seconds the policy asked for.
    pub requested: u32,
    /// Seconds the token got (`exp - iat`).
    pub granted: u64,
    /// What bounded it when it was not issued as asked: `minimum`,
    /// `signing.max_lifetime_seconds` or `caller_token`.
    pub limited_by: Option<String>,
}

/// One record of the ledger. Never holds a token, a key or a password.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Event {
    /// UUIDv7: sortable by time.
    pub id: String,
    /// When it happened.
    pub time: Millis,
    /// What happened.
    pub outcome: Outcome,
    /// Machine-readable cause: the denial reason (`revoked`, `licence-revoked`), the validation
    /// failure (`expired`, `signature`, ...), the fault kind, or the revocation kind.
    pub reason: Option<String>,
    /// The explanation, as the caller (or the operator) was told.
    pub message: Option<String>,
    /// The caller's `sub` (for an admin event: the administrator's).
    pub sub: Option<String>,
    /// The caller's `client_id`.
    pub client_id: Option<String>,
    /// The caller's `stellaops:tenant` (for an admin event: the tenant it acted in).
    pub tenant: Option<String>,
    /// The caller's `stellaops:plan`.
    pub plan: Option<String>,
    /// The caller's `stellaops:license`.
    pub licence: Option<String>,
    /// The caller token's `iss`.
    pub iss: Option<String>,
    /// The caller token's `jti`.
    pub jti: Option<String>,
    /// The client's address: the socket's, or the first untrusted `X-Forwarded-For` hop.
    pub client_addr: Option<String>,
    /// The `service` asked for.
    pub service: Option<String>,
    /// The scopes asked for, in scope syntax.
    pub requested: Vec<String>,
    /// The scopes granted, in scope syntax.
    pub granted: Vec<String>,
    /// The SHA-256 of the policy component that decided.
    pub policy_digest: Option<String>,
    /// The version (SHA-256) of the policy's settings.
    pub settings_version: Option<String>,
    /// For `issued`: the registry token's `jti`, `exp` and signing `kid`.
    pub token: Option<IssuedToken>,
    /// What the caller presented at the token endpoint: `credential` (an Authority token) or
    /// `refresh_token` (one of ours).
    pub via: Option<String>,
    /// The refresh token this exchange used, or issued (its id; never the token).
    pub refresh_token_id: Option<String>,
    /// For `issued`: the token was minted moments before for an identical request and handed out
    /// again (`signing.reuse_seconds`); `token.jti` is that token's.
    pub reused: bool,
    /// The policy's annotations for the audit trail (`key: value`, in its order; 0.2.0 policies).
    /// Shown as a JSON object (keys are unique).
    #[serde(serialize_with = "pairs_as_object")]
    pub annotations: Vec<(String, String)>,
    /// For `issued`: the lifetime the policy asked for and what was issued, when it asked.
    pub lifetime: Option<LifetimeRecord>,
}

fn pairs_as_object<S: Serializer>(pairs: &[(String, String)], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_map(pairs.iter().map(|(k, v)| (k, v)))
}

impl Event {
    /// A new event happening now, with a fresh id.
    pub fn new(outcome: Outcome) -> Event {
        Event::at(outcome, Millis::now())
    }

    /// A new event at `time`, with a fresh id.
    pub fn at(outcome: Outcome, time: Millis) -> Event {
        Event {
            id: uuid::Uuid::now_v7().to_string(),
            time,
            outcome,
            reason: None,
            message: None,
            sub: None,
            client_id: None,
            tenant: None,
            plan: None,
            licence: None,
            iss: None,
            jti: None,
            client_addr: None,
            service: None,
            requested: Vec::new(),
            granted: Vec::new(),
            policy_digest: None,
            settings_version: None,
            token: None,
            via: None,
            refresh_token_id: None,
            reused: false,
            annotations: Vec::new(),
            lifetime: None,
        }
    }

    /// The audit event of `actor` creating or lifting `revocation`: in the tenant the revocation
    /// applies in (so that tenant's administrators see it), the kind as its reason, and a message
    /// naming what, who and which revocation. The caller of it fills in who the actor is further
    /// ([`Event::set_caller`], the client address) when it knows more.
    pub fn revocation_audit(outcome: Outcome, revocation: &Revocation, actor: &str) -> Event {
        let mut event = Event::new(outcome);
        event.sub = Some(actor.to_owned());
        event.tenant.clone_from(&revocation.tenant);
        event.reason = Some(revocation.kind.as_str().to_owned());
        let verb = if outcome == Outcome::RevocationCreated { "revoked" } else { "revocation lifted" };
        event.message = Some(format!(
            "{} {} {verb} by {actor} (revocation {}): {}",
            revocation.kind, revocation.value, revocation.id, revocation.reason
        ));
        event
    }

    /// Records who the caller is.
    pub fn set_caller(&mut self, caller: &Caller, issuer: &str, jti: Option<&str>) {
        self.sub = Some(caller.subject.clone());
        self.client_id.clone_from(&caller.client_id);
        self.tenant.clone_from(&caller.tenant);
        self.plan.clone_from(&caller.plan);
        self.licence.clone_from(&caller.license);
        self.iss = Some(issuer.to_owned());
        self.jti = jti.map(str::to_owned);
    }
}

/// What a revocation names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RevocationKind {
    /// A `sub`.
    Subject,
    /// A `stellaops:license`.
    Licence,
    /// A `stellaops:tenant`.
    Tenant,
    /// A `client_id`.
    Client,
    /// One Authority token, by its `jti` (and the refresh tokens it was exchanged for).
    CallerToken,
    /// One refresh token, by its id.
    RefreshToken,
}

impl RevocationKind {
    /// Every kind, for parsing and messages.
    pub const ALL: [RevocationKind; 6] = [
        RevocationKind::Subject,
        RevocationKind::Licence,
        RevocationKind::Tenant,
        RevocationKind::Client,
        RevocationKind::CallerToken,
        RevocationKind::RefreshToken,
    ];

    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationKind::Subject => "subject",
            RevocationKind::Licence => "licence",
            RevocationKind::Tenant => "tenant",
            RevocationKind::Client => "client",
            RevocationKind::CallerToken => "caller_token",
            RevocationKind::RefreshToken => "refresh_token",
        }
    }

    /// The kind named `name` (`license` is accepted for `licence`).
    pub fn from_name(name: &str) -> Option<RevocationKind> {
        if name == "license" {
            return Some(RevocationKind::Licence);
        }
        RevocationKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The caller's value this kind compares with.
    fn value_of<'a>(self, caller: &'a Caller, tokens: Presented<'a>) -> Option<&'a str> {
        match self {
            RevocationKind::Subject => Some(&caller.subject),
            RevocationKind::Licence => caller.license.as_deref(),
            RevocationKind::Tenant => caller.tenant.as_deref(),
            RevocationKind::Client => caller.client_id.as_deref(),
            RevocationKind::CallerToken => tokens.caller_jti,
            RevocationKind::RefreshToken => tokens.refresh_token,
        }
    }
}

impl fmt::Display for RevocationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for RevocationKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for RevocationKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        RevocationKind::from_name(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("{name:?} is not a revocation kind")))
    }
}

/// The tokens behind a caller that revocations may name: the Authority token's `jti` and, when the
/// caller came with one of our refresh tokens, its id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Presented<'a> {
    /// The Authority token's `jti` (for a refresh token: the one it was exchanged for).
    pub caller_jti: Option<&'a str>,
    /// The refresh token's id.
    pub refresh_token: Option<&'a str>,
}

impl<'a> Presented<'a> {
    /// An Authority token with `jti`.
    pub fn caller_token(jti: Option<&'a str>) -> Presented<'a> {
        Presented { caller_jti: jti, refresh_token: None }
    }
}

/// The highest policy bundle revision applied from one source (`policy.bundle` as configured): a
/// restart refuses a lower one, as a running service refuses a rollback from its live bundle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AppliedBundle {
    /// `policy.bundle`, as configured.
    pub source: String,
    /// The manifest's revision.
    pub revision: u64,
    /// What its signature covers (`Bundle::content_sha256`): the same for a bundle signed again.
    pub content_sha256: String,
    /// When it was first applied.
    pub applied_at: Millis,
}

/// A revocation: callers it names are refused before any policy is asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revocation {
    /// UUIDv7.
    pub id: String,
    /// What it names.
    pub kind: RevocationKind,
    /// The value named.
    pub value: String,
    /// Only callers of this tenant are affected; `None`: every caller.
    pub tenant: Option<String>,
    /// Why; shown to the refused caller.
    pub reason: String,
    /// When it was made.
    pub created_at: Millis,
    /// When it stops applying; `None`: until lifted.
    pub expires_at: Option<Millis>,
    /// Who made it (the administrator's `sub`, or `cli:` and the local user).
    pub created_by: String,
    /// The tenant of the administrator who made it; `None`: a global administrator (or the
    /// command line). A tenant administrator lifts only its own tenant's revocations.
    pub created_by_tenant: Option<String>,
}

impl Revocation {
    /// Whether it refuses `caller` (who presented `tokens`) at `now`.
    pub fn applies_to(&self, caller: &Caller, tokens: Presented<'_>, now: Millis) -> bool {
        self.expires_at.is_none_or(|expires| now < expires)
            && self.tenant.as_ref().is_none_or(|tenant| caller.tenant.as_ref() == Some(tenant))
            && self.kind.value_of(caller, tokens) == Some(self.value.as_str())
    }

    /// What the refused caller is told: `subject alice has been revoked: <reason>`.
    pub fn message(&self) -> String {
        format!("{} {} has been revoked: {}", self.kind, self.value, self.reason)
    }
}

/// The revocations in force, indexed for the request path.
#[derive(Clone, Debug, Default)]
pub struct RevocationSet {
    by_value: std::collections::HashMap<(RevocationKind, String), Vec<Revocation>>,
}

impl RevocationSet {
    /// Indexes `revocations`.
    pub fn new(revocations: Vec<Revocation>) -> RevocationSet {
        let mut set = RevocationSet::default();
        for revocation in revocations {
            set.by_value.entry((revocation.kind, revocation.value.clone())).or_default().push(revocation);
        }
        set
    }

    /// This set and `revocation` (committed here, before a read of the ledger has it).
    pub fn and(&self, revocation: Revocation) -> RevocationSet {
        let mut set = self.clone();
        set.by_value.entry((revocation.kind, revocation.value.clone())).or_default().push(revocation);
        set
    }

    /// This set without the revocation `id` (lifted here, before a read of the ledger says so).
    pub fn without(&self, id: &str) -> RevocationSet {
        let mut set = self.clone();
        for list in set.by_value.values_mut() {
            list.retain(|revocation| revocation.id != id);
        }
        set.by_value.retain(|_, list| !list.is_empty());
        set
    }

    /// The first revocation that refuses `caller` (who presented `tokens`) at `now`, if any.
    pub fn check(&self, caller: &Caller, tokens: Presented<'_>, now: Millis) -> Option<&Revocation> {
        if self.by_value.is_empty() {
            return None;
        }
        RevocationKind::ALL.into_iter().find_map(|kind| {
            let value = kind.value_of(caller, tokens)?;
            self.by_value
                .get(&(kind, value.to_owned()))?
                .iter()
                .find(|revocation| revocation.applies_to(caller, tokens, now))
        })
    }

    /// Revocations in force at `now`, by kind (every kind, zeros included).
    pub fn active_by_kind(&self, now: Millis) -> Vec<(&'static str, usize)> {
        RevocationKind::ALL
            .into_iter()
            .map(|kind| {
                let active = self
                    .by_value
                    .iter()
                    .filter(|((k, _), _)| *k == kind)
                    .flat_map(|(_, list)| list)
                    .filter(|r| r.expires_at.is_none_or(|expires| now < expires))
                    .count();
                (kind.as_str(), active)
            })
            .collect()
    }

    /// How many revocations it holds (expired ones included until pruned).
    pub fn len(&self) -> usize {
        self.by_value.values().map(Vec::len).sum()
    }

    /// How many are in force at `now` (the expired ones are kept until pruned).
    pub fn active(&self, now: Millis) -> usize {
        self.by_value.values().flatten().filter(|r| r.expires_at.is_none_or(|expires| now < expires)).count()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.by_value.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(sub: &str, tenant: Option<&str>) -> Caller {
        Caller {
            subject: sub.into(),
            client_id: Some("ci".into()),
            tenant: tenant.map(Into::into),
            plan: Some("team".into()),
            license: Some("LIC-1".into()),
            scopes: vec![],
            claims_json: "{}".into(),
        }
    }

    fn revocation(
        kind: RevocationKind,
        value: &str,
        tenant: Option<&str>,
        expires: Option<i64>,
    ) -> Revocation {
        Revocation {
            id: "r".into(),
            kind,
            value: value.into(),
            tenant: tenant.map(Into::into),
            reason: "left".into(),
            created_at: Millis(0),
            expires_at: expires.map(Millis),
            created_by: "t".into(),
            created_by_tenant: None,
        }
    }

    #[test]
    fn a_revocation_applies_by_kind_tenant_and_expiry() {
        let set = RevocationSet::new(vec![
            revocation(RevocationKind::Subject, "alice", Some("acme"), None),
            revocation(RevocationKind::Client, "ci", None, Some(1_000)),
            revocation(RevocationKind::CallerToken, "j-1", None, None),
            revocation(RevocationKind::RefreshToken, "r-1", None, None),
        ]);
        let none = Presented::default();
        let now = Millis(500);
        // The tenant-scoped subject revocation refuses acme's alice only.
        assert_eq!(
            set.check(&caller("alice", Some("acme")), none, now).map(|r| r.kind),
            Some(RevocationKind::Subject)
        );
        // The client revocation refuses everyone with client_id ci until it expires.
        assert_eq!(
            set.check(&caller("alice", Some("other")), none, now).map(|r| r.kind),
            Some(RevocationKind::Client)
        );
        assert!(set.check(&caller("alice", Some("other")), none, Millis(1_000)).is_none());
        assert!(set.check(&caller("bob", None), none, Millis(2_000)).is_none());
        assert_eq!(
            set.check(&caller("bob", None), Presented::caller_token(Some("j-1")), Millis(2_000))
                .map(Revocation::message),
            Some("caller_token j-1 has been revoked: left".to_owned())
        );
        let refreshing = Presented { caller_jti: Some("j-2"), refresh_token: Some("r-1") };
        assert_eq!(
            set.check(&caller("bob", None), refreshing, Millis(2_000)).map(|r| r.kind),
            Some(RevocationKind::RefreshToken)
        );
    }

    #[test]
    fn times_parse_as_rfc3339_or_seconds_and_render_with_millis() {
        assert_eq!(Millis::parse("2026-12-31T00:00:00Z").unwrap(), Millis(1_798_675_200_000));
        assert_eq!(Millis::parse("1798675200").unwrap(), Millis(1_798_675_200_000));
        assert_eq!(Millis(1_798_675_200_123).to_string(), "2026-12-31T00:00:00.123Z");
        assert!(Millis::parse("yesterday").unwrap_err().contains("RFC 3339"));
    }
}
