//! The one error type of the HTTP edge: a status, the Docker error body
//! (`{"errors":[{"code":"UNAUTHORIZED","message":"..."}]}`), and on the OAuth2 POST also the
//! RFC 6749 pair (`error`, `error_description`). 5xx bodies are generic; details go to the log.

use axum::http::header::{ALLOW, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// A failed request, as the client will see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Docker error code: `UNAUTHORIZED`, `DENIED`, `INVALID_REQUEST`, ...
    pub code: &'static str,
    /// Shown to the user by their client.
    pub message: String,
    oauth_error: &'static str,
    oauth: bool,
    challenge: Option<String>,
    allow: Option<&'static str>,
}

impl ApiError {
    fn new(
        status: StatusCode,
        code: &'static str,
        oauth_error: &'static str,
        message: impl Into<String>,
    ) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            oauth_error,
            oauth: false,
            challenge: None,
            allow: None,
        }
    }

    /// 401: no credentials, or a caller token that failed a check. Tells the client to send
    /// Basic credentials (the Authority token as the password).
    pub fn unauthorized(realm: &str, message: impl Into<String>) -> Self {
        let mut error = ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "invalid_grant", message);
        error.challenge = Some(format!("Basic realm=\"{}\"", realm.replace('"', "'")));
        error
    }

    /// 400: a malformed request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "INVALID_REQUEST", "invalid_request", message)
    }

    /// 400: a malformed scope.
    pub fn bad_scope(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "INVALID_REQUEST", "invalid_scope", message)
    }

    /// 400: an OAuth2 grant this service does not support.
    pub fn unsupported_grant(grant: &str) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
            "unsupported_grant_type",
            format!("grant_type {grant:?} is not supported; use refresh_token or password"),
        )
    }

    /// 403 (or 401, `http.denial_status`): the policy refused the exchange.
    pub fn denied(realm: &str, status: u16, message: impl Into<String>) -> Self {
        match status {
            401 => ApiError {
                code: "DENIED",
                oauth_error: "access_denied",
                ..ApiError::unauthorized(realm, message)
            },
            _ => ApiError::new(StatusCode::FORBIDDEN, "DENIED", "access_denied", message),
        }
    }

    /// 503: no decision could be made (a policy fault, the Authority's keys unavailable). Nothing
    /// was issued; the cause is in the log.
    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", "temporarily_unavailable", message)
    }

    /// 500: a bug or a crypto failure; the cause is in the log.
    pub fn internal() -> Self {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "UNKNOWN",
            "server_error",
            "the token could not be issued; see the server log",
        )
    }

    /// 413: the body is over the limit.
    pub fn too_large(limit: usize) -> Self {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "INVALID_REQUEST",
            "invalid_request",
            format!("the request body is larger than {limit} bytes"),
        )
    }

    /// 414: the query is over the limit.
    pub fn uri_too_long(limit: usize) -> Self {
        ApiError::new(
            StatusCode::URI_TOO_LONG,
            "INVALID_REQUEST",
            "invalid_request",
            format!("the query string is longer than {limit} bytes"),
        )
    }

    /// 405, naming the methods `allow`ed.
    pub fn method_not_allowed(method: &Method, allow: &'static str) -> Self {
        let mut error = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "invalid_request",
            format!("method {method} is not allowed here"),
        );
        error.allow = Some(allow);
        error
    }

    /// 404.
    pub fn not_found() -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "invalid_request",
            "no such endpoint; tokens are issued at /token",
        )
    }

    /// Adds the OAuth2 `error`/`error_description` members (for `POST /token`).
    pub fn oauth(mut self) -> Self {
        self.oauth = true;
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "errors": [{ "code": self.code, "message": self.message }] });
        if self.oauth {
            body["error"] = self.oauth_error.into();
            body["error_description"] = self.message.clone().into();
        }
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(challenge) = self.challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            response.headers_mut().insert(WWW_AUTHENTICATE, challenge);
        }
        if let Some(allow) = self.allow {
            response.headers_mut().insert(ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}
