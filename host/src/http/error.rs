//! The one error type of the HTTP edge. Each variant is a cause; the status, the Docker error body
//! (`{"errors":[{"code":"UNAUTHORIZED","message":"..."}]}`) and the `Allow` header are decided
//! in one place, [`ApiError::into_response`]. [`OAuth`] adds the RFC 6749 pair (`error`,
//! `error_description`) for `POST /token`. 5xx bodies are generic; their causes go to the log.
//!
//! The `WWW-Authenticate` challenge of a 401 names the realm of the live configuration, which
//! an error does not know: the listener's `challenge` layer adds it (see `http::edge`).

use super::line;
use crate::authority::AuthError;
use crate::config::DenialStatus;
use crate::ledger::RefreshError;
use crate::policy::Fault;
use crate::scope::ScopeError;
use axum::http::header::ALLOW;
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// A failed request, by cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// No credentials, or credentials that cannot hold an Authority token (401).
    #[error("{0}")]
    Credential(&'static str),
    /// The caller token failed a check (401).
    #[error(transparent)]
    Auth(AuthError),
    /// A refresh token that does not (or no longer) authenticate (401).
    #[error(transparent)]
    Refresh(RefreshError),
    /// The Authority's keys could not be had, so no caller can be validated (503).
    #[error("the Authority's keys are unavailable; try again later")]
    KeysUnavailable,
    /// A scope is malformed (400).
    #[error(transparent)]
    Scope(#[from] ScopeError),
    /// The policy refused the exchange (403, or 401 with `http.denial_status: 401`).
    #[error("{message}")]
    Denied {
        /// The policy's machine-readable reason (`licence-revoked`), for the log.
        reason: String,
        /// The policy's explanation, for the caller.
        message: String,
        /// The configured status of a denial.
        status: DenialStatus,
    },
    /// The policy failed; nothing was issued (503).
    #[error("the authorization policy failed; no token was issued")]
    Policy(#[from] Fault),
    /// The ledger cannot record the token, so it is not returned (503, strict durability).
    #[error("the issuance ledger is unavailable; no token was issued; try again later")]
    LedgerUnavailable,
    /// The HSM holding the signing key did not sign; nothing was issued (503).
    #[error("the signing key's HSM is unavailable; no token was issued; try again later")]
    SignerUnavailable,
    /// Signing failed (500).
    #[error("the token could not be issued; see the server log")]
    Signing,
    /// A malformed request (400).
    #[error("{0}")]
    BadRequest(String),
    /// An OAuth2 grant this service does not support (400).
    #[error("grant_type {0:?} is not supported; use refresh_token or password")]
    UnsupportedGrant(String),
    /// The body is over `http.max_body_bytes` (413).
    #[error("the request body is larger than {0} bytes")]
    BodyTooLarge(usize),
    /// The query is over the limit (414).
    #[error("the query string is longer than {0} bytes")]
    QueryTooLong(usize),
    /// The path exists, the method does not (405).
    #[error("method {method} is not allowed here")]
    MethodNotAllowed {
        /// What was sent.
        method: Method,
        /// What the path accepts, for `Allow`.
        allow: &'static str,
    },
    /// No such path (404).
    #[error("no such endpoint; tokens are issued at /token")]
    NotFound,
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::KeysUnavailable => ApiError::KeysUnavailable,
            error => ApiError::Auth(error),
        }
    }
}

impl ApiError {
    /// HTTP status, Docker error code, OAuth2 error code.
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            ApiError::Credential(_) | ApiError::Auth(_) | ApiError::Refresh(_) => {
                (StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "invalid_grant")
            }
            ApiError::Denied { status: DenialStatus::Unauthorized, .. } => {
                (StatusCode::UNAUTHORIZED, "DENIED", "access_denied")
            }
            ApiError::Denied { status: DenialStatus::Forbidden, .. } => {
                (StatusCode::FORBIDDEN, "DENIED", "access_denied")
            }
            ApiError::KeysUnavailable
            | ApiError::Policy(_)
            | ApiError::LedgerUnavailable
            | ApiError::SignerUnavailable => {
                (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", "temporarily_unavailable")
            }
            ApiError::Signing => (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", "server_error"),
            ApiError::Scope(_) => (StatusCode::BAD_REQUEST, "INVALID_REQUEST", "invalid_scope"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "INVALID_REQUEST", "invalid_request"),
            ApiError::UnsupportedGrant(_) => {
                (StatusCode::BAD_REQUEST, "UNSUPPORTED", "unsupported_grant_type")
            }
            ApiError::BodyTooLarge(_) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "INVALID_REQUEST", "invalid_request")
            }
            ApiError::QueryTooLong(_) => (StatusCode::URI_TOO_LONG, "INVALID_REQUEST", "invalid_request"),
            ApiError::MethodNotAllowed { .. } => {
                (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED", "invalid_request")
            }
            ApiError::NotFound => (StatusCode::NOT_FOUND, "NOT_FOUND", "invalid_request"),
        }
    }

    /// The response, with the OAuth2 members when `oauth`. Records why a request was refused on
    /// the request's log line, and logs the cause of a server-side failure.
    fn respond(self, oauth: bool) -> Response {
        let (status, code, oauth_error) = self.parts();
        let message = self.to_string();
        match &self {
            ApiError::Denied { reason, .. } => {
                line::note(|line| line.refused = Some(format!("policy denied: {reason}")));
            }
            ApiError::KeysUnavailable => {
                tracing::error!("cannot validate callers: the Authority's keys are unavailable");
            }
            ApiError::Signing => tracing::error!("signing failed"),
            // Logged with the HSM's error where it failed.
            ApiError::SignerUnavailable => {
                line::note(|line| line.refused = Some("the HSM is unavailable".into()));
            }
            // The ledger logs its own failure once, when it starts failing.
            ApiError::LedgerUnavailable => line::note(|line| {
                line.refused.get_or_insert_with(|| "the ledger is unavailable".into());
            }),
            // The fault itself was logged where the policy's identity is known.
            ApiError::Policy(_) => {}
            _ if status.is_client_error() => {
                line::note(|line| line.refused = Some(message.clone()));
            }
            _ => {}
        }
        let mut body = json!({ "errors": [{ "code": code, "message": message }] });
        if oauth {
            body["error"] = oauth_error.into();
            body["error_description"] = message.into();
        }
        let mut response = (status, axum::Json(body)).into_response();
        if let ApiError::MethodNotAllowed { allow, .. } = self {
            response.headers_mut().insert(ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.respond(false)
    }
}

/// An [`ApiError`] answered in the OAuth2 form (`POST /token`): the Docker body plus `error` and
/// `error_description`. Anything that converts into an `ApiError` converts into this, so the
/// OAuth2 handler uses `?` like the others.
#[derive(Debug)]
pub struct OAuth(pub ApiError);

impl<E> From<E> for OAuth
where
    ApiError: From<E>,
{
    fn from(error: E) -> Self {
        OAuth(ApiError::from(error))
    }
}

impl IntoResponse for OAuth {
    fn into_response(self) -> Response {
        self.0.respond(true)
    }
}
