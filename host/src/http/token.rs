//! `GET /token` (the Docker token exchange) and `POST /token` (its OAuth2 form): validate the
//! caller, let the policy decide, mint. What the request's log line says is recorded on its span.

use super::AppState;
use super::error::{ApiError, OAuth};
use super::extract::{ClientAddr, Credential, Form, Params, Query};
use crate::access::{Resource, scope_string};
use crate::app::Live;
use crate::authority::{self, AuthError};
use crate::ledger::{Event, IssuedToken, LifetimeRecord, Millis, Outcome};
use crate::metrics::metrics;
use crate::mint::{Grant, Minted, SignError};
use crate::policy::Decision;
use crate::scope;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, PRAGMA};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::time::Instant;
use tracing::Span;

#[derive(Serialize)]
struct GetResponse<'a> {
    token: &'a str,
    access_token: &'a str,
    expires_in: u64,
    issued_at: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<&'a str>,
}

#[derive(Serialize)]
struct PostResponse<'a> {
    access_token: &'a str,
    scope: String,
    expires_in: u64,
    issued_at: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<&'a str>,
}

/// What both forms ask: a token for `service` granting (some of) `requested`.
struct Exchange {
    service: String,
    requested: Vec<Resource>,
}

impl Exchange {
    /// Checks `service` against the configuration and parses the `scope` values.
    fn new(live: &Live, params: &Params) -> Result<Exchange, ApiError> {
        let service = match params.first("service") {
            None | Some("") => return Err(ApiError::BadRequest("service is required".into())),
            Some(service) if live.config.services.iter().any(|s| s == service) => service.to_owned(),
            Some(service) => {
                return Err(ApiError::BadRequest(format!(
                    "service {:?} is not one this token service issues for",
                    authority::shorten(service)
                )));
            }
        };
        let requested = scope::parse_scopes(params.all("scope"))?;
        Span::current().record("service", service.as_str());
        Ok(Exchange { service, requested })
    }
}

/// `GET /token?service=..&scope=..[&scope=..][&offline_token=true]` with the Authority token as a
/// Bearer token or as the Basic password.
pub(super) async fn get_token(
    State(app): State<AppState>,
    ClientAddr(client_addr): ClientAddr,
    Query(params): Query,
    Credential(credential): Credential,
) -> Result<Response, ApiError> {
    let live = app.live();
    let offline = params.first("offline_token").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let (minted, _granted) = exchange(&app, &live, &params, &credential, client_addr).await?;
    // The caller's own Authority token: no new long-lived secret is created.
    let body = get_response_body(&minted, offline.then_some(credential.as_str()));
    Ok(no_store(([(CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()))
}

/// The JSON body of a successful `GET /token`. Public for the benchmark of the hot path.
#[doc(hidden)]
pub fn get_response_body(minted: &Minted, refresh_token: Option<&str>) -> Vec<u8> {
    let body = GetResponse {
        token: &minted.token,
        access_token: &minted.token,
        expires_in: minted.expires_in,
        issued_at: &minted.issued_at,
        refresh_token,
    };
    // Strings and integers only: serializing into memory has no way to fail.
    #[allow(clippy::expect_used)]
    serde_json::to_vec(&body).expect("a struct of strings and integers serializes")
}

/// `POST /token`, form-encoded: `grant_type=refresh_token` (the Authority token as
/// `refresh_token`) or `grant_type=password` (the Authority token as `password`).
pub(super) async fn post_token(
    State(app): State<AppState>,
    ClientAddr(client_addr): ClientAddr,
    Form(params): Form,
) -> Result<Response, OAuth> {
    let live = app.live();
    let (credential, return_refresh) = match params.first("grant_type") {
        None => return Err(ApiError::BadRequest("grant_type is required".into()).into()),
        Some("refresh_token") => (params.required("refresh_token")?, true),
        Some("password") => (params.required("password")?, params.first("access_type") == Some("offline")),
        Some(other) => return Err(ApiError::UnsupportedGrant(other.to_owned()).into()),
    };
    let (minted, granted) = exchange(&app, &live, &params, credential, client_addr).await?;
    let body = PostResponse {
        access_token: &minted.token,
        scope: scope_string(&granted),
        expires_in: minted.expires_in,
        issued_at: &minted.issued_at,
        // Never rotated: the Docker daemon does not store a new refresh token.
        refresh_token: return_refresh.then_some(credential),
    };
    Ok(no_store(axum::Json(body).into_response()))
}

/// Both forms, once the credential is read: validate, decide, mint — and record the exchange in
/// the ledger, one event whatever the outcome. With strict durability an issued token is returned
/// only once its event is committed; if it cannot be, the token is dropped and the answer is 503.
async fn exchange(
    app: &AppState,
    live: &Live,
    params: &Params,
    credential: &str,
    client_addr: Option<String>,
) -> Result<(Minted, Vec<Resource>), ApiError> {
    let Some(ledger) = &app.ledger else {
        let exchange = Exchange::new(live, params)?;
        let issued = issue(app, live, credential, &exchange, None).await?;
        count_issued(live, &exchange.service);
        return Ok(issued);
    };
    let mut event = Event::new(Outcome::Issued);
    event.client_addr = client_addr;
    Span::current().record("event", event.id.as_str());
    let result = match Exchange::new(live, params) {
        Ok(exchange) => {
            event.service = Some(exchange.service.clone());
            event.requested = exchange.requested.iter().map(Resource::to_string).collect();
            issue(app, live, credential, &exchange, Some(&mut event)).await
        }
        Err(error) => Err(error),
    };
    match &result {
        Ok((minted, granted)) => {
            event.granted = granted.iter().map(Resource::to_string).collect();
            event.token = Some(IssuedToken {
                jti: minted.jti.clone(),
                exp: i64::try_from(minted.expires_at).unwrap_or(i64::MAX),
                kid: live.keys.minter().kid().to_owned(),
            });
            event.lifetime = minted.lifetime.map(|lifetime| LifetimeRecord {
                requested: lifetime.requested,
                granted: lifetime.granted,
                limited_by: lifetime.limited_by.map(|limit| limit.as_str().to_owned()),
            });
        }
        Err(error) => describe_failure(&mut event, error),
    }
    if let Err(unavailable) = ledger.keep(event).await {
        tracing::warn!(error = %unavailable, "no token returned: its ledger event could not be committed");
        return Err(ApiError::LedgerUnavailable);
    }
    if result.is_ok() {
        // `Exchange::new` checked it: one of the configured services.
        count_issued(live, params.first("service").unwrap_or_default());
    }
    result
}

/// A token is counted once it is returned (after its ledger commit): never one the caller did
/// not get.
fn count_issued(live: &Live, service: &str) {
    metrics().issued(service, live.keys.minter().signer().algorithm().name(), "credential");
}

/// The outcome and reason of a failed exchange, for its event.
fn describe_failure(event: &mut Event, error: &ApiError) {
    let (outcome, reason) = match error {
        ApiError::Auth(error) => (Outcome::Refused, error.kind().to_owned()),
        ApiError::Denied { reason, .. } => (Outcome::Denied, reason.clone()),
        ApiError::KeysUnavailable => (Outcome::Fault, "keys_unavailable".to_owned()),
        ApiError::Policy(fault) => (Outcome::Fault, fault.kind().to_owned()),
        ApiError::Signing => (Outcome::Fault, "signing".to_owned()),
        ApiError::SignerUnavailable => (Outcome::Fault, "signer_unavailable".to_owned()),
        ApiError::LedgerUnavailable => (Outcome::Fault, "ledger".to_owned()),
        _ => (Outcome::Refused, "bad_request".to_owned()),
    };
    event.outcome = outcome;
    event.reason = Some(reason);
    event.message = Some(error.to_string());
}

/// Validate, check revocations, decide, mint, noting on the ledger's `event` (when there is a
/// ledger) who asked and what decided.
async fn issue(
    app: &AppState,
    live: &Live,
    credential: &str,
    exchange: &Exchange,
    mut event: Option<&mut Event>,
) -> Result<(Minted, Vec<Resource>), ApiError> {
    let now = (app.clock)();
    let span = Span::current();
    let validated = live.validator.validate(credential, now).await.inspect_err(|error| {
        if *error != AuthError::KeysUnavailable {
            metrics().refusal(error.kind());
        }
    })?;
    let caller = &validated.caller;
    span.record("sub", caller.subject.as_str());
    if let Some(ledger) = &app.ledger
        && let Some(event) = event.as_deref_mut()
    {
        event.set_caller(caller, &live.config.authority.issuer, validated.jti.as_deref());
        // The host's own check, before any policy is asked: no policy can grant to a revoked caller.
        if let Some(revocation) = ledger.revoked(caller, validated.jti.as_deref(), Millis::from_seconds(now))
        {
            metrics().decision("revoked");
            return Err(ApiError::Denied {
                reason: "revoked".to_owned(),
                message: revocation.message(),
                status: live.config.http.denial_status,
            });
        }
        event.policy_digest = Some(live.policy.digest().to_owned());
        event.settings_version = Some(live.policy.settings_version().to_owned());
    }

    let started = Instant::now();
    let decision = live.policy.evaluate(caller, &exchange.service, &exchange.requested, now).await;
    metrics().evaluation(started.elapsed().as_secs_f64());
    let decision = decision.inspect_err(|fault| {
        metrics().fault(fault.kind());
        metrics().decision("fault");
        tracing::error!(
            fault = fault.kind(),
            detail = %fault,
            policy = live.policy.source(),
            digest = live.policy.digest(),
            "policy fault; no token issued"
        );
    })?;
    if let Some(event) = event {
        event.annotations.clone_from(decision.annotations());
    }
    let (granted, requested_lifetime) = match decision {
        Decision::Deny { reason, message, .. } => {
            metrics().decision("deny");
            return Err(ApiError::Denied { reason, message, status: live.config.http.denial_status });
        }
        Decision::Grant { resources, note, lifetime_seconds, .. } => {
            // Why less than asked was granted: for the operator's log line.
            if let Some(note) = &note {
                span.record("note", note.as_str());
            }
            let actions = |resources: &[Resource]| resources.iter().map(|r| r.actions.len()).sum::<usize>();
            metrics().decision(match actions(&resources) {
                0 => "empty",
                n if n >= actions(&exchange.requested) => "grant",
                _ => "partial",
            });
            (resources, lifetime_seconds)
        }
    };
    // A file key's signature (≈ 0.2–0.45 ms of CPU for RS256) runs here, on the worker: it is the
    // request's own work with no I/O to overlap, the runtime has one worker per core, and a hand-off
    // to the blocking pool would add a thread wake-up per token. Other connections wait at most one
    // signature for this worker. An HSM's signature waits on the device: it goes to the blocking
    // pool, under a deadline, and its failure is a 503.
    // Validation accepted the caller token up to `leeway` past its `exp`; the registry token ends
    // there at the latest, so it outlives its credential by no more than the tolerated skew.
    let not_after = validated.expires_at.saturating_add(live.config.authority.leeway_seconds);
    let grant = Grant {
        subject: &caller.subject,
        audience: &exchange.service,
        access: &granted,
        now,
        not_after,
        requested_lifetime,
        max_lifetime: live.config.signing.max_lifetime_seconds,
    };
    let minted = live.keys.minter().mint(&grant).await.map_err(|error| match error {
        SignError::Crypto => ApiError::Signing,
        SignError::Hsm(error) => {
            tracing::error!(%error, "the HSM did not sign; no token issued");
            ApiError::SignerUnavailable
        }
    })?;
    span.record("granted", scope_string(&granted));
    if let Some(lifetime) = &minted.lifetime {
        // A policy's lifetime, as asked and as issued: `3600s as asked`, or
        // `86400s asked, 900s issued (signing.max_lifetime_seconds)`.
        let said = match lifetime.limited_by {
            None => format!("{}s as asked", lifetime.granted),
            Some(limit) => {
                format!("{}s asked, {}s issued ({})", lifetime.requested, lifetime.granted, limit.as_str())
            }
        };
        span.record("lifetime", said);
    }
    Ok((minted, granted))
}

/// RFC 6749 §5.1: token responses must not be cached.
fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
    response
}
