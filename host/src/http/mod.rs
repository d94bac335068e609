//! The HTTP edge: the Docker token endpoint (`GET /token`, OAuth2 `POST /token`), health probes,
//! and the one error type that turns every failure into a status and the Docker error body.
//!
//! A request's path: credentials and parameters are read here; `authority` validates the caller's
//! token; `scope` parses what is asked; `policy` decides; `mint` signs. Only this module knows
//! about HTTP.

mod error;
mod token;

pub use error::ApiError;

use crate::app::Service;
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::Arc;
use std::time::Duration;
use tower_http::trace::TraceLayer;
use tracing::{Span, field};

/// Shared by every handler.
pub type AppState = Arc<Service>;

/// The router, with request tracing and the body limit of the live configuration.
pub fn router(service: AppState) -> Router {
    let max_body = service.live().config.http.max_body_bytes;
    Router::new()
        .route(
            "/token",
            get(token::get_token)
                .post(token::post_token)
                .fallback(token_methods),
        )
        .route("/healthz", get(healthz).fallback(probe_methods))
        .route("/readyz", get(readyz).fallback(probe_methods))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request<_>| {
                    // The path only: the query holds nothing secret, but it is long and the
                    // parsed scopes are recorded below once they are known to be valid.
                    tracing::info_span!(
                        "request",
                        method = %request.method(),
                        path = %request.uri().path(),
                        sub = field::Empty,
                        service = field::Empty,
                        granted = field::Empty,
                    )
                })
                .on_request(())
                .on_response(|response: &Response, latency: Duration, _span: &Span| {
                    tracing::info!(
                        status = response.status().as_u16(),
                        latency_us = latency.as_micros() as u64,
                        "served"
                    );
                })
                .on_failure(()),
        )
        .with_state(service)
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
    let status = if live.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
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
