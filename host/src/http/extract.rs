//! What the token endpoint reads from a request, as extractors: the caller's credential
//! (`Authorization: Basic|Bearer`), the query parameters, and the OAuth2 form. Each rejects with
//! the [`ApiError`] the client should see, so handlers receive only well-formed input.

use super::error::{ApiError, OAuth};
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use data_encoding::BASE64;

/// Longest accepted query string: a blob mount's two scopes take a few hundred bytes, and
/// `scope::MAX_RESOURCES` scopes fit. (URIs over 64 KiB never get here: hyper answers 414 itself.)
pub const MAX_QUERY_BYTES: usize = 16 * 1024;

/// Decoded `application/x-www-form-urlencoded` pairs, in order, repeats kept (`scope` repeats).
#[derive(Debug, Default)]
pub struct Params(Vec<(String, String)>);

impl Params {
    /// Decodes strictly: invalid UTF-8 is an error, not a replacement character that could slip
    /// into a name.
    fn parse(bytes: &[u8]) -> Result<Params, ApiError> {
        let decode = |part: &[u8]| -> Result<String, ApiError> {
            let spaced: Vec<u8> = part.iter().map(|b| if *b == b'+' { b' ' } else { *b }).collect();
            let decoded: Vec<u8> = percent_encoding::percent_decode(&spaced).collect();
            String::from_utf8(decoded)
                .map_err(|_| ApiError::BadRequest("the parameters are not valid UTF-8".into()))
        };
        let pairs = bytes
            .split(|b| *b == b'&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (name, value) = match pair.iter().position(|b| *b == b'=') {
                    Some(at) => (&pair[..at], &pair[at + 1..]),
                    None => (pair, &[][..]),
                };
                Ok((decode(name)?, decode(value)?))
            })
            .collect::<Result<_, ApiError>>()?;
        Ok(Params(pairs))
    }

    /// The first value of `name`.
    pub fn first(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, in order.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0.iter().filter(move |(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The first value of `name`, which must be present and not empty.
    pub fn required(&self, name: &str) -> Result<&str, ApiError> {
        match self.first(name) {
            Some(value) if !value.is_empty() => Ok(value),
            _ => Err(ApiError::BadRequest(format!("{name} is required"))),
        }
    }
}

/// The query parameters of a `GET`, at most [`MAX_QUERY_BYTES`].
#[derive(Debug)]
pub struct Query(pub Params);

impl<S: Send + Sync> FromRequestParts<S> for Query {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or("");
        if query.len() > MAX_QUERY_BYTES {
            return Err(ApiError::QueryTooLong(MAX_QUERY_BYTES));
        }
        Params::parse(query.as_bytes()).map(Query)
    }
}

/// The body of an OAuth2 `POST`: a form (chunked or not) within the router's body limit.
/// Rejections are in the OAuth2 form.
#[derive(Debug)]
pub struct Form(pub Params);

impl<S: Send + Sync> FromRequest<S> for Form {
    type Rejection = OAuth;

    async fn from_request(request: Request, state: &S) -> Result<Self, OAuth> {
        let form_typed = request
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("application/x-www-form-urlencoded"));
        let limit = request.extensions().get::<BodyLimit>().map_or(0, |limit| limit.0);
        let body = Bytes::from_request(request, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::BodyTooLarge(limit)
            } else {
                ApiError::BadRequest(format!("the request body could not be read: {}", rejection.body_text()))
            }
        })?;
        if !form_typed {
            return Err(ApiError::BadRequest(
                "POST /token takes an application/x-www-form-urlencoded form".into(),
            )
            .into());
        }
        Ok(Form(Params::parse(&body)?))
    }
}

/// The body limit in force, as the router set it (for the 413's message).
#[derive(Clone, Copy, Debug)]
pub struct BodyLimit(pub usize);

/// The Authority token: a Bearer token, or the password of Basic credentials (what `docker login`
/// and `skopeo --creds` send). No credentials is a 401 that asks for Basic.
#[derive(Debug)]
pub struct Credential(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Credential {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get(AUTHORIZATION) else {
            return Err(ApiError::Credential(
                "authentication required: send an Authority access token as the password (Basic) or as a Bearer token",
            ));
        };
        let value =
            value.to_str().map_err(|_| ApiError::Credential("the Authorization header is not ASCII"))?;
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
            return Ok(Credential(rest.to_owned()));
        }
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err(ApiError::Credential("use Basic or Bearer authorization"));
        }
        let decoded = BASE64
            .decode(rest.as_bytes())
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or(ApiError::Credential("the Basic credentials are not base64 of user:password"))?;
        match decoded.split_once(':') {
            Some((_, password)) if !password.is_empty() => Ok(Credential(password.to_owned())),
            _ => Err(ApiError::Credential("the password must be an Authority access token")),
        }
    }
}
