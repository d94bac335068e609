//! The published signing keys, on the main listener: `/.well-known/jwks.json` (a valid
//! `auth.token.jwks` for distribution 3.x) and `/certs.pem` (a valid `auth.token.rootcertbundle`).
//! Cacheable for a fifth of the token lifetime, with a strong `ETag` and `304` on `If-None-Match`.

use super::AppState;
use crate::mint::etag;
use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

pub(super) async fn jwks(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let live = app.live();
    let body = live.keys.jwks((app.clock)());
    cacheable(&headers, body, "application/json", live.config.signing.lifetime_seconds)
}

pub(super) async fn certificates(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let live = app.live();
    let body = live.keys.certificates_pem((app.clock)());
    cacheable(&headers, body, "application/x-pem-file", live.config.signing.lifetime_seconds)
}

/// A fifth of the token lifetime: a registry or proxy that caches the set sees a new key well
/// before the runbook promotes it (a published key waits at least a lifetime).
fn cacheable(
    request: &HeaderMap,
    body: String,
    content_type: &'static str,
    lifetime_seconds: u64,
) -> Response {
    let tag = etag(&body);
    let max_age = format!("public, max-age={}", (lifetime_seconds / 5).max(1));
    let headers = [
        (ETAG, HeaderValue::from_str(&tag).unwrap_or(HeaderValue::from_static("\"\""))),
        (CACHE_CONTROL, HeaderValue::from_str(&max_age).unwrap_or(HeaderValue::from_static("no-cache"))),
    ];
    let matches = request
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|candidate| {
            let candidate = candidate.trim();
            candidate == "*" || candidate.trim_start_matches("W/") == tag
        });
    if matches {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    (headers, [(CONTENT_TYPE, HeaderValue::from_static(content_type))], body).into_response()
}
