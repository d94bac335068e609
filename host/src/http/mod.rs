//! The HTTP edge: the Docker token endpoint (`GET /token`, OAuth2 `POST /token`), health probes,
//! and the one error type that turns every failure into a status and the Docker error body.
//!
//! A request's path: credentials and parameters are read here; `authority` validates the caller's
//! token; `scope` parses what is asked; `policy` decides; `mint` signs. Only this module knows
//! about HTTP.

mod error;
mod token;

pub use error::ApiError;
pub use token::get_response_body;

use crate::app::Service;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::Arc;
use std::time::Instant;

/// Shared by every handler.
pub type AppState = Arc<Service>;

/// What a handler learned about a request, for its log line (attached to the response).
#[derive(Clone, Debug, Default)]
pub(crate) struct Outcome {
    pub sub: Option<String>,
    pub service: Option<String>,
    pub granted: Option<String>,
    /// The policy's explanation of a partial grant.
    pub note: Option<String>,
    /// Why the request was refused (a 4xx), safe to log.
    pub refused: Option<String>,
}

/// The router, with one log line per request and the body limit of the live configuration.
pub fn router(service: AppState) -> Router {
    let max_body = service.live().config.http.max_body_bytes;
    Router::new()
        .route("/token", get(token::get_token).post(token::post_token).fallback(token_methods))
        .route("/healthz", get(healthz).fallback(probe_methods))
        .route("/readyz", get(readyz).fallback(probe_methods))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn(log_request))
        .with_state(service)
}

/// One event per request: method, path (never the query, which is long), status, latency, and
/// what the handler learned (subject, service, granted scopes, why it refused). Never tokens.
async fn log_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let outcome = response.extensions().get::<Outcome>();
    tracing::info!(
        %method,
        path,
        status = response.status().as_u16(),
        latency_us = started.elapsed().as_micros() as u64,
        sub = outcome.and_then(|o| o.sub.as_deref()),
        service = outcome.and_then(|o| o.service.as_deref()),
        granted = outcome.and_then(|o| o.granted.as_deref()),
        note = outcome.and_then(|o| o.note.as_deref()),
        refused = outcome.and_then(|o| o.refused.as_deref()),
        "served"
    );
    response
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(service): State<AppState>) -> Response {
    let live = service.live();
    let body = serde_json::json!({
        "ready": live.is_ready(),
        "policy": {
            "module": live.policy.source(),
            "digest": live.policy.digest(),
            "settings_version": live.policy.settings_version(),
        },
        "signing": {
            "algorithm": live.minter.key().algorithm().name(),
            "kid": live.minter.kid(),
        },
    });
    let status = if live.is_ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(body)).into_response()
}

async fn token_methods(method: Method) -> ApiError {
    ApiError::method_not_allowed(&method, "GET, POST")
}

async fn probe_methods(method: Method) -> ApiError {
    ApiError::method_not_allowed(&method, "GET, HEAD")
}

async fn not_found() -> ApiError {
    ApiError::not_found()
}
