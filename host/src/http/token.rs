//! `GET /token` (the Docker token exchange) and `POST /token` (its OAuth2 form).

use super::Outcome;
use super::{ApiError, AppState};
use crate::access::{Resource, scope_string};
use crate::app::Live;
use crate::authority::{self, AuthError};
use crate::mint::Minted;
use crate::policy::Decision;
use crate::scope;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{RawQuery, State};
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, PRAGMA};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use data_encoding::BASE64;
use serde::Serialize;

/// Longest accepted query string: a blob mount's two scopes take a few hundred bytes, and
/// `scope::MAX_RESOURCES` scopes fit. (URIs over 64 KiB never get here: hyper answers 414 itself.)
pub const MAX_QUERY_BYTES: usize = 16 * 1024;

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

/// The parameters both forms share.
struct Exchange<'a> {
    /// The caller's Authority token.
    credential: &'a str,
    /// The registry service the token is for.
    service: String,
    /// What is asked for.
    requested: Vec<Resource>,
}

/// `GET /token?service=..&scope=..[&scope=..][&offline_token=true]` with the Authority token as a
/// Bearer token or as the Basic password.
pub async fn get_token(
    State(app): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let mut outcome = Outcome::default();
    let result = get_token_inner(&app, &headers, query, &mut outcome).await;
    respond(result, outcome)
}

async fn get_token_inner(
    app: &AppState,
    headers: &HeaderMap,
    query: Option<String>,
    outcome: &mut Outcome,
) -> Result<Response, ApiError> {
    let live = app.live();
    let query = query.unwrap_or_default();
    if query.len() > MAX_QUERY_BYTES {
        return Err(ApiError::uri_too_long(MAX_QUERY_BYTES));
    }
    let params = form_pairs(query.as_bytes())?;
    let credential = credential(headers, &live)?;
    let exchange = exchange(&live, &params, scope_values(&params, "scope"), &credential, outcome)?;
    let offline = first(&params, "offline_token").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let (minted, _granted) = issue(app, &live, &exchange, outcome).await?;
    // The caller's own Authority token: no new long-lived secret is created.
    let body = get_response_body(&minted, offline.then_some(exchange.credential));
    Ok(no_store(([(CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()))
}

/// The response, carrying what the log line should say.
fn respond(result: Result<Response, ApiError>, mut outcome: Outcome) -> Response {
    let mut response = match result {
        Ok(response) => response,
        Err(error) => {
            if error.status.is_client_error() && outcome.refused.is_none() {
                outcome.refused = Some(error.message.clone());
            }
            error.into_response()
        }
    };
    response.extensions_mut().insert(outcome);
    response
}

/// The JSON body of a successful `GET /token`.
pub fn get_response_body(minted: &Minted, refresh_token: Option<&str>) -> Vec<u8> {
    let body = GetResponse {
        token: &minted.token,
        access_token: &minted.token,
        expires_in: minted.expires_in,
        issued_at: &minted.issued_at,
        refresh_token,
    };
    serde_json::to_vec(&body).unwrap_or_default()
}

/// `POST /token`, form-encoded (chunked or not): `grant_type=refresh_token` (the Authority token as
/// `refresh_token`) or `grant_type=password` (the Authority token as `password`).
pub async fn post_token(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut outcome = Outcome::default();
    let result = post_token_inner(&app, &headers, body, &mut outcome).await.map_err(ApiError::oauth);
    respond(result, outcome)
}

async fn post_token_inner(
    app: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    outcome: &mut Outcome,
) -> Result<Response, ApiError> {
    let live = app.live();
    let body = body.map_err(|_| ApiError::too_large(live.config.http.max_body_bytes))?;
    let form_typed = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/x-www-form-urlencoded"));
    if !form_typed {
        return Err(ApiError::bad_request("POST /token takes an application/x-www-form-urlencoded form"));
    }
    let params = form_pairs(&body)?;
    let (credential, return_refresh) = match first(&params, "grant_type") {
        None => return Err(ApiError::bad_request("grant_type is required")),
        Some("refresh_token") => (required(&params, "refresh_token")?, true),
        Some("password") => {
            let offline = first(&params, "access_type") == Some("offline");
            (required(&params, "password")?, offline)
        }
        Some(other) => return Err(ApiError::unsupported_grant(other)),
    };
    let exchange = exchange(&live, &params, scope_values(&params, "scope"), credential, outcome)?;
    let (minted, granted) = issue(app, &live, &exchange, outcome).await?;
    let body = PostResponse {
        access_token: &minted.token,
        scope: scope_string(&granted),
        expires_in: minted.expires_in,
        issued_at: &minted.issued_at,
        // Never rotated: the Docker daemon does not store a new refresh token.
        refresh_token: return_refresh.then_some(exchange.credential),
    };
    Ok(no_store(axum::Json(body).into_response()))
}

fn required<'a>(params: &'a [(String, String)], name: &str) -> Result<&'a str, ApiError> {
    match first(params, name) {
        Some(value) if !value.is_empty() => Ok(value),
        _ => Err(ApiError::bad_request(format!("{name} is required"))),
    }
}

fn exchange<'a>(
    live: &Live,
    params: &[(String, String)],
    scopes: Vec<&str>,
    credential: &'a str,
    outcome: &mut Outcome,
) -> Result<Exchange<'a>, ApiError> {
    let service = match first(params, "service") {
        None | Some("") => return Err(ApiError::bad_request("service is required")),
        Some(service) if live.config.services.iter().any(|s| s == service) => service.to_owned(),
        Some(service) => {
            return Err(ApiError::bad_request(format!(
                "service {:?} is not one this token service issues for",
                authority::shorten(service)
            )));
        }
    };
    let requested = scope::parse_scopes(scopes).map_err(|e| ApiError::bad_scope(e.to_string()))?;
    outcome.service = Some(service.clone());
    Ok(Exchange { credential, service, requested })
}

/// Validate, decide, mint. Shared by both forms.
async fn issue(
    app: &AppState,
    live: &Live,
    exchange: &Exchange<'_>,
    outcome: &mut Outcome,
) -> Result<(Minted, Vec<Resource>), ApiError> {
    let now = (app.clock)();
    let realm = &live.config.realm;
    let validated = live.validator.validate(exchange.credential, now).await.map_err(|error| match error {
        AuthError::KeysUnavailable => {
            tracing::error!("cannot validate callers: the Authority's keys are unavailable");
            ApiError::unavailable("the Authority's keys are unavailable; try again later")
        }
        error => ApiError::unauthorized(realm, error.to_string()),
    })?;
    let caller = &validated.caller;
    outcome.sub = Some(caller.subject.clone());

    let decision =
        live.policy.evaluate(caller, &exchange.service, &exchange.requested).await.map_err(|fault| {
            tracing::error!(
                fault = fault.kind(),
                detail = %fault,
                policy = live.policy.source(),
                digest = live.policy.digest(),
                "policy fault; no token issued"
            );
            ApiError::unavailable("the authorization policy failed; no token was issued")
        })?;
    let granted = match decision {
        Decision::Deny { reason, message } => {
            outcome.refused = Some(format!("policy denied: {reason}"));
            return Err(ApiError::denied(realm, live.config.http.denial_status, message));
        }
        Decision::Grant { resources, note } => {
            // Why less than asked was granted: for the operator's log line.
            outcome.note = note;
            resources
        }
    };
    // The signature (≈ 0.2–0.45 ms of CPU for RS256) runs here, on the worker: it is the request's
    // own work with no I/O to overlap, the runtime has one worker per core, and a hand-off to the
    // blocking pool would add a thread wake-up per token. Other connections wait at most one
    // signature for this worker.
    // Validation accepted the caller token up to `leeway` past its `exp`; the registry token ends
    // there too, so it never outlives the credential it was exchanged for.
    let not_after = validated.expires_at.saturating_add(live.config.authority.leeway_seconds);
    let minted =
        live.minter.mint(&caller.subject, &exchange.service, &granted, now, not_after).map_err(|_| {
            tracing::error!("signing failed");
            ApiError::internal()
        })?;
    outcome.granted = Some(scope_string(&granted));
    Ok((minted, granted))
}

/// The Authority token: a Bearer token, or the password of Basic credentials (what `docker login`
/// and `skopeo --creds` send). No credentials is a 401 that asks for Basic.
fn credential(headers: &HeaderMap, live: &Live) -> Result<String, ApiError> {
    let realm = &live.config.realm;
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Err(ApiError::unauthorized(
            realm,
            "authentication required: send an Authority access token as the password (Basic) or as a Bearer token",
        ));
    };
    let value =
        value.to_str().map_err(|_| ApiError::unauthorized(realm, "the Authorization header is not ASCII"))?;
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
        return Ok(rest.to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded =
            BASE64.decode(rest.as_bytes()).ok().and_then(|bytes| String::from_utf8(bytes).ok()).ok_or_else(
                || ApiError::unauthorized(realm, "the Basic credentials are not base64 of user:password"),
            )?;
        let password = decoded.split_once(':').map(|(_, password)| password).unwrap_or_default();
        if password.is_empty() {
            return Err(ApiError::unauthorized(realm, "the password must be an Authority access token"));
        }
        return Ok(password.to_owned());
    }
    Err(ApiError::unauthorized(realm, "use Basic or Bearer authorization"))
}

/// Decodes `application/x-www-form-urlencoded` strictly: invalid UTF-8 is an error, not a
/// replacement character that could slip into a name.
fn form_pairs(bytes: &[u8]) -> Result<Vec<(String, String)>, ApiError> {
    let decode = |part: &[u8]| -> Result<String, ApiError> {
        let spaced: Vec<u8> = part.iter().map(|b| if *b == b'+' { b' ' } else { *b }).collect();
        let decoded: Vec<u8> = percent_encoding::percent_decode(&spaced).collect();
        String::from_utf8(decoded).map_err(|_| ApiError::bad_request("the parameters are not valid UTF-8"))
    };
    bytes
        .split(|b| *b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = match pair.iter().position(|b| *b == b'=') {
                Some(at) => (&pair[..at], &pair[at + 1..]),
                None => (pair, &[][..]),
            };
            Ok((decode(name)?, decode(value)?))
        })
        .collect()
}

fn first<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

fn scope_values<'a>(params: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    params.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect()
}

/// RFC 6749 §5.1: token responses must not be cached.
fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
    response
}
