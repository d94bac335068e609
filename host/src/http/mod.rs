//! The HTTP edge: the Docker token endpoint (`GET /token`, OAuth2 `POST /token`), health probes,
//! and the one error type that turns every failure into a status and the Docker error body.
//!
//! A request's path: the extractors (`extract`) read the credential and the parameters;
//! `authority` validates the caller's token; `scope` parses what is asked; `policy` decides;
//! `mint` signs. Only this module knows about HTTP.
//!
//! Every listener is [`edge`] around its routes: one log line per request (`line`: handlers note
//! what they learned, the edge logs it), the body limit, and the 401 challenge. A new
//! route is one `.route(...)` line; a new listener is one call of [`edge`].

mod admin;
mod error;
mod extract;
mod keys;
mod line;
pub mod listener;
mod token;

pub(crate) use admin::identifier;
pub use admin::{AdminError, RevocationRequest};
pub use error::{ApiError, OAuth};
pub use extract::MAX_QUERY_BYTES;
pub use token::get_response_body;

use crate::app::App;
use crate::metrics::metrics;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header::WWW_AUTHENTICATE;
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use std::sync::Arc;

/// Shared by every handler.
pub type AppState = Arc<App>;

/// The main listener's router: the token endpoint, the published signing keys and the probes.
pub fn router(app: AppState) -> Router {
    let routes = Router::new()
        // HEAD is refused: axum would run the whole exchange for it (sign, record an `issued`
        // event, even store a refresh token) and drop the token with the body.
        .route(
            "/token",
            get(token::get_token)
                .post(token::post_token)
                .head(not_allowed("GET, POST"))
                .fallback(not_allowed("GET, POST")),
        )
        .route("/.well-known/jwks.json", probe(get(keys::jwks)))
        .route("/certs.pem", probe(get(keys::certificates)))
        .merge(probes());
    edge(routes, app, Challenge::Basic)
}

/// The operator listener's router (`admin.listen`): the admin API and the probes.
pub fn admin_router(app: AppState) -> Router {
    let routes = Router::new()
        .route("/admin/v1/events", get(admin::list_events).fallback(not_allowed("GET, HEAD")))
        .route("/admin/v1/events/{id}", get(admin::get_event).fallback(not_allowed("GET, HEAD")))
        .route(
            "/admin/v1/revocations",
            get(admin::list_revocations)
                .post(admin::create_revocation)
                .fallback(not_allowed("GET, HEAD, POST")),
        )
        .route(
            "/admin/v1/revocations/{id}",
            axum::routing::delete(admin::delete_revocation).fallback(not_allowed("DELETE")),
        )
        .route("/admin/v1/refresh-tokens", get(admin::list_refresh_tokens).fallback(not_allowed("GET, HEAD")))
        .route(
            "/admin/v1/refresh-tokens/{id}",
            axum::routing::delete(admin::delete_refresh_token).fallback(not_allowed("DELETE")),
        )
        .route("/metrics", probe(get(admin::scrape)))
        .merge(probes());
    edge(routes, app, Challenge::Bearer)
}

/// The scheme a listener's 401 asks for: Basic on the token endpoint (the Authority token as the
/// password, as Docker clients send it), Bearer on the operator listener.
#[derive(Clone, Copy, Debug)]
enum Challenge {
    Basic,
    Bearer,
}

/// `/healthz` and `/readyz`, for every listener.
fn probes() -> Router<AppState> {
    Router::new().route("/healthz", probe(get(healthz))).route("/readyz", probe(get(readyz)))
}

/// What every listener has around its routes: 404 for unknown paths, the body limit of the
/// configuration (read at start; a change needs a restart), the `WWW-Authenticate` challenge on
/// a 401, and one log line per request.
fn edge(routes: Router<AppState>, app: AppState, challenge: Challenge) -> Router {
    let max_body = app.live().config.http.max_body_bytes;
    routes
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state((Arc::clone(&app), challenge), challenge_on_401))
        .layer(axum::middleware::from_fn(count_request))
        .layer(axum::middleware::from_fn(line::log_request))
        .with_state(app)
}

/// Every 401 of a listener asks for its scheme's credentials in the live configuration's realm.
async fn challenge_on_401(
    State((app, challenge)): State<(AppState, Challenge)>,
    request: Request,
    next: Next,
) -> Response {
    let mut response = next.run(request).await;
    if response.status() == StatusCode::UNAUTHORIZED && !response.headers().contains_key(WWW_AUTHENTICATE) {
        let realm = app.live().config.realm.replace('"', "'");
        let scheme = match challenge {
            Challenge::Basic => "Basic",
            Challenge::Bearer => "Bearer",
        };
        if let Ok(challenge) = HeaderValue::from_str(&format!("{scheme} realm=\"{realm}\"")) {
            response.headers_mut().insert(WWW_AUTHENTICATE, challenge);
        }
    }
    response
}

/// Counts every answered request by endpoint and status, with its latency.
async fn count_request(request: Request, next: Next) -> Response {
    if !metrics().enabled() {
        return next.run(request).await;
    }
    let endpoint = endpoint(request.method(), request.uri().path());
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    metrics().request(endpoint, response.status().as_str(), started.elapsed().as_secs_f64());
    response
}

/// The `endpoint` label: a few fixed names, never the path itself (unbounded).
fn endpoint(method: &Method, path: &str) -> &'static str {
    match path {
        "/token" if method == Method::POST => "token_post",
        "/token" => "token_get",
        "/healthz" | "/readyz" => "probe",
        "/metrics" => "metrics",
        "/.well-known/jwks.json" | "/certs.pem" => "jwks",
        admin if admin.starts_with("/admin/") => "admin",
        _ => "other",
    }
}

/// A probe route: `GET` (and `HEAD`), anything else 405.
fn probe(route: MethodRouter<AppState>) -> MethodRouter<AppState> {
    route.fallback(not_allowed("GET, HEAD"))
}

/// A handler answering 405, naming the methods a path allows.
fn not_allowed(
    allow: &'static str,
) -> impl Fn(Method) -> std::future::Ready<ApiError> + Clone + Send + Sync + 'static {
    move |method| std::future::ready(ApiError::MethodNotAllowed { method, allow })
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(app): State<AppState>) -> Response {
    let live = app.live();
    // A strict ledger that cannot be written means no token can be issued.
    let now = (app.clock)();
    // A signer that cannot sign, or a certificate that expired while the service ran: no token
    // minted now would be accepted.
    let signer = match live.keys.minter().signer().ready().await {
        Ok(()) => live.keys.active_certificate_problem(now).map_or(Ok(()), Err),
        Err(error) => Err(error.to_string()),
    };
    let ready =
        live.is_ready() && app.ledger.as_ref().is_none_or(crate::ledger::Ledger::can_issue) && signer.is_ok();
    let ledger = match &app.ledger {
        Some(ledger) => serde_json::to_value(ledger.health()).unwrap_or_default(),
        None => serde_json::json!("off"),
    };
    let body = serde_json::json!({
        "ready": ready,
        "ledger": ledger,
        "bundle": app.bundle_status(),
        "policy": {
            "module": live.policy.source(),
            "digest": live.policy.digest(),
            "contract": live.policy.contract(),
            "settings_version": live.policy.settings_version(),
        },
        "signing": {
            "algorithm": live.keys.minter().signer().algorithm().name(),
            "kid": live.keys.minter().kid(),
            "custody": live.keys.minter().signer().custody(),
            "ready": signer.is_ok(),
            "error": signer.err(),
            "warnings": live.keys.warnings(),
            "keys": live.keys.summary(now).into_iter().map(|key| {
                serde_json::json!({
                    "kid": key.kid,
                    "status": key.status,
                    "algorithm": key.algorithm,
                    "published": key.published,
                    "certificate_expires": key.certificate_expires
                        .map(|t| crate::mint::rfc3339(u64::try_from(t).unwrap_or_default())),
                })
            }).collect::<Vec<_>>(),
        },
    });
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(body)).into_response()
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}
