//! Refresh tokens: the long-lived credential `docker login` stores as its identity token, minted
//! here and kept in the ledger **only as a hash**, with the caller it was issued to. Presented
//! again (`POST /token` with `grant_type=refresh_token`, or as a password), it lets the policy
//! decide afresh for that caller, long after the caller's own Authority token has expired. It is
//! never rotated (the Docker engine throws a rotated one away) and stops working at its absolute
//! expiry, after `idle` unused, or at once when it or its caller is revoked.

use super::event::Millis;
use crate::access::Caller;
use serde::Serialize;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// What every refresh token starts with: recognisable in logs and secret scanners, and told apart
/// from an Authority token (a JWT) at a glance.
pub const PREFIX: &str = "rtr_";
/// Random bytes in a refresh token (256 bits, from the operating system).
const SECRET_BYTES: usize = 32;
/// Longest string worth looking up: the prefix and 43 base64url characters.
const MAX_LENGTH: usize = 64;

/// A refresh token as the ledger keeps it: everything but the token itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RefreshToken {
    /// UUIDv7; what events, revocations and the admin API name it by.
    pub id: String,
    /// The subject it was issued to.
    pub sub: String,
    /// The `client_id` it is bound to (`None`: issued to a request without one).
    pub client_id: Option<String>,
    /// The `service` it is bound to.
    pub service: String,
    /// The caller's `stellaops:tenant` (what tenant administrators see it by).
    pub tenant: Option<String>,
    /// When it was issued.
    pub issued_at: Millis,
    /// When it was last used to obtain a token.
    pub last_used_at: Millis,
    /// It never works at or after this.
    pub expires_at: Millis,
    /// Unused this long, it stops working (`None`: no idle limit).
    #[serde(serialize_with = "seconds")]
    pub idle_seconds: Option<u64>,
    /// The caller as the policy saw it when the token was issued; the policy decides again with
    /// it on every refresh.
    #[serde(skip)]
    pub caller: Caller,
    /// The Authority token's `iss`, for the events of its uses.
    #[serde(skip)]
    pub caller_iss: Option<String>,
    /// The Authority token's `jti`: revoking that token (`caller_token`) revokes this one too.
    #[serde(skip)]
    pub caller_jti: Option<String>,
}

fn seconds<S: serde::Serializer>(value: &Option<u64>, serializer: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(seconds) => serializer.serialize_u64(*seconds),
        None => serializer.serialize_none(),
    }
}

/// What a refresh token is issued for: it works only for this `service`. The `client_id` that
/// asked is recorded, not checked: it is a name any client may send, and the one `docker login`
/// stores the token under is not the one its other readers send (containerd's
/// `containerd-client`, BuildKit's `buildkit-client`, containers/image's own), so a check would
/// refuse them and stop no one who holds the token.
#[derive(Clone, Copy, Debug)]
pub struct Binding<'a> {
    /// The `service` (registry).
    pub service: &'a str,
    /// The `client_id` (`docker`, `containerd-client`, ...), if the request named one.
    pub client_id: Option<&'a str>,
}

/// How long a refresh token works: an absolute limit, and an idle one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetime {
    /// From issue to expiry.
    pub absolute_seconds: u64,
    /// Unused this long, it stops working (`None`: no idle limit).
    pub idle_seconds: Option<u64>,
}

/// Why a presented refresh token does not authenticate. Each text is what the client is told.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RefreshError {
    /// Not one this ledger issued (or malformed).
    #[error("the refresh token is not valid: this service did not issue it")]
    Unknown,
    /// Past its absolute expiry.
    #[error("the refresh token has expired (it was valid until {0}); log in again")]
    Expired(Millis),
    /// Unused for longer than its idle limit.
    #[error("the refresh token has expired: unused since {0}; log in again")]
    Idle(Millis),
    /// Presented for another `service`.
    #[error("the refresh token was issued for another service ({0})")]
    OtherService(String),
    /// It, or its caller, is revoked.
    #[error("the refresh token was revoked: {0}")]
    Revoked(String),
    /// `refresh_tokens.enabled: false`: none is honoured, including those issued before.
    #[error("refresh tokens are turned off on this service; log in again")]
    Disabled,
    /// Issued to a caller the configuration no longer accepts: another `authority.issuer`'s, or
    /// one without today's `authority.required_scope`.
    #[error("the refresh token was issued to a caller this service no longer accepts ({0}); log in again")]
    Superseded(String),
}

impl RefreshError {
    /// A short name for the event's reason and the metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            RefreshError::Unknown => "refresh_token_unknown",
            RefreshError::Expired(_) => "refresh_token_expired",
            RefreshError::Idle(_) => "refresh_token_idle",
            RefreshError::OtherService(_) => "refresh_token_binding",
            RefreshError::Revoked(_) => "revoked",
            RefreshError::Disabled => "refresh_token_disabled",
            RefreshError::Superseded(_) => "refresh_token_superseded",
        }
    }
}

impl RefreshToken {
    /// Why a `refresh_token` revocation of this token confined to `tenant` could never apply
    /// (the token is another tenant's), if it could not.
    pub fn beyond(&self, tenant: Option<&str>) -> Option<String> {
        let tenant = tenant?;
        (self.tenant.as_deref() != Some(tenant)).then(|| {
            format!(
                "refresh token {} is not of tenant {tenant}: a revocation confined to that tenant would never \
                 apply to it; leave tenant out",
                self.id
            )
        })
    }

    /// A new refresh token for `caller` (whose Authority token came from `caller_iss` with
    /// `caller_jti`), bound to `binding`, issued `now`, with the token text to hand out (once;
    /// only its hash is kept).
    pub fn issue(
        caller: &Caller,
        caller_iss: &str,
        caller_jti: Option<&str>,
        binding: Binding<'_>,
        now: Millis,
        lifetime: Lifetime,
    ) -> Result<(RefreshToken, Zeroizing<String>), getrandom::Error> {
        let mut random = Zeroizing::new([0u8; SECRET_BYTES]);
        getrandom::fill(random.as_mut())?;
        let mut secret = Zeroizing::new(String::with_capacity(PREFIX.len() + 43));
        secret.push_str(PREFIX);
        data_encoding::BASE64URL_NOPAD.encode_append(random.as_ref(), &mut secret);
        let absolute = i64::try_from(lifetime.absolute_seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
        let token = RefreshToken {
            id: uuid::Uuid::now_v7().to_string(),
            sub: caller.subject.clone(),
            client_id: binding.client_id.map(str::to_owned),
            service: binding.service.to_owned(),
            tenant: caller.tenant.clone(),
            issued_at: now,
            last_used_at: now,
            expires_at: Millis(now.0.saturating_add(absolute)),
            idle_seconds: lifetime.idle_seconds,
            caller: caller.clone(),
            caller_iss: Some(caller_iss.to_owned()),
            caller_jti: caller_jti.map(str::to_owned),
        };
        Ok((token, secret))
    }

    /// When it stops working for want of use (`None`: no idle limit).
    pub fn idle_expires_at(&self) -> Option<Millis> {
        self.idle_seconds.map(|idle| {
            Millis(self.last_used_at.0.saturating_add(i64::try_from(idle * 1000).unwrap_or(i64::MAX)))
        })
    }

    /// When it stops working, whichever limit comes first.
    pub fn ends_at(&self) -> Millis {
        self.idle_expires_at().map_or(self.expires_at, |idle| idle.min(self.expires_at))
    }

    /// Checks expiry and the `service` for a use at `now`.
    pub fn check(&self, service: &str, now: Millis) -> Result<(), RefreshError> {
        if now >= self.expires_at {
            return Err(RefreshError::Expired(self.expires_at));
        }
        if self.idle_expires_at().is_some_and(|idle| now >= idle) {
            return Err(RefreshError::Idle(self.last_used_at));
        }
        if service != self.service {
            return Err(RefreshError::OtherService(self.service.clone()));
        }
        Ok(())
    }
}

/// Whether `credential` is (meant to be) one of our refresh tokens rather than an Authority token.
pub fn is_refresh_token(credential: &str) -> bool {
    credential.starts_with(PREFIX)
}

/// What the ledger stores for a refresh token's text: its SHA-256, hex. The text carries 256 random
/// bits, so a fast hash is enough: no one can search for a preimage. `None` for a string that is
/// not of the refresh tokens' form (it is then unknown without a look-up).
pub fn token_hash(credential: &str) -> Option<String> {
    let valid = credential.len() <= MAX_LENGTH
        && credential.strip_prefix(PREFIX).is_some_and(|rest| {
            rest.len() == 43 && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    valid.then(|| data_encoding::HEXLOWER.encode(&Sha256::digest(credential.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller() -> Caller {
        Caller {
            subject: "alice".into(),
            client_id: Some("docker".into()),
            tenant: Some("acme".into()),
            plan: Some("team".into()),
            license: None,
            scopes: vec!["registry.token.issue".into()],
            claims_json: "{}".into(),
        }
    }

    fn binding<'a>(service: &'a str, client_id: Option<&'a str>) -> Binding<'a> {
        Binding { service, client_id }
    }

    fn issue() -> (RefreshToken, Zeroizing<String>) {
        let lifetime = Lifetime { absolute_seconds: 60, idle_seconds: Some(10) };
        RefreshToken::issue(&caller(), "iss", None, binding("reg", Some("docker")), Millis(0), lifetime)
            .unwrap()
    }

    #[test]
    fn a_new_token_is_prefixed_random_and_hashes_to_what_is_stored() {
        let (one, text) = issue();
        let (_, other) = issue();
        assert!(text.starts_with("rtr_") && text.len() == 47, "{}", text.as_str());
        assert_ne!(text.as_str(), other.as_str());
        assert_eq!(token_hash(&text).unwrap().len(), 64);
        assert_eq!(token_hash(&text), token_hash(&text.clone()));
        assert_eq!(token_hash(&text[..46]), None, "truncated");
        assert_eq!(token_hash("rtr_../../etc/passwd"), None);
        assert_eq!((one.expires_at, one.idle_expires_at()), (Millis(60_000), Some(Millis(10_000))));
    }

    #[test]
    fn expiry_idle_and_service_are_checked_in_that_order() {
        let (token, _) = issue();
        assert_eq!(token.check("reg", Millis(9_999)), Ok(()));
        assert_eq!(token.check("reg", Millis(10_000)), Err(RefreshError::Idle(Millis(0))));
        assert_eq!(token.check("reg", Millis(60_000)), Err(RefreshError::Expired(Millis(60_000))));
        assert_eq!(token.check("other", Millis(1)), Err(RefreshError::OtherService("reg".into())));
        let used = RefreshToken { last_used_at: Millis(50_000), ..token.clone() };
        assert_eq!(used.check("reg", Millis(59_000)), Ok(()), "use moves the idle limit");
        let unlimited = RefreshToken { idle_seconds: None, ..token };
        assert_eq!(unlimited.check("reg", Millis(59_999)), Ok(()));
        assert_eq!(unlimited.ends_at(), Millis(60_000));
    }
}
