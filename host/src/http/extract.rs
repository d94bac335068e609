//! What the token endpoint reads from a request, as extractors: the caller's credential
//! (`Authorization: Basic|Bearer`), the query parameters, and the OAuth2 form. Each rejects with
//! the [`ApiError`] the client should see, so handlers receive only well-formed input.

use super::error::{ApiError, OAuth};
use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use data_encoding::BASE64;
use std::net::{IpAddr, SocketAddr};

/// Longest accepted query string: a blob mount's two scopes take a few hundred bytes, and
/// `scope::MAX_RESOURCES` scopes of names up to about 120 bytes fit (a longer request is a POST
/// form). (URIs over 64 KiB never get here: hyper answers 414 itself.)
pub const MAX_QUERY_BYTES: usize = 16 * 1024;

/// Decoded `application/x-www-form-urlencoded` pairs, in order, repeats kept (`scope` repeats).
#[derive(Debug, Default)]
pub struct Params(Vec<(String, String)>);

impl Params {
    /// Decodes strictly: invalid UTF-8 is an error, not a replacement character that could slip
    /// into a name.
    pub(super) fn parse(bytes: &[u8]) -> Result<Params, ApiError> {
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

    /// Every pair, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
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

impl FromRequest<super::AppState> for Form {
    type Rejection = OAuth;

    async fn from_request(request: Request, state: &super::AppState) -> Result<Self, OAuth> {
        let form_typed = request
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"));
        // Read once at start, like the router's limit itself (a change needs a restart).
        let limit = state.live().config.http.max_body_bytes;
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

/// The Authority token: a Bearer token, or the password of Basic credentials (what `docker login`
/// and `skopeo --creds` send). No credentials is a 401 that asks for Basic.
#[derive(Debug)]
pub struct Credential(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Credential {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        credential_of(&parts.headers)?.map(Credential).ok_or(ApiError::Credential(
            "authentication required: send an Authority access token as the password (Basic) or as a Bearer token",
        ))
    }
}

/// The credential of the `Authorization` header: a Bearer token, or the Basic password. `None`
/// without the header; an error for a header that cannot hold one.
pub(super) fn credential_of(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| ApiError::Credential("the Authorization header is not ASCII"))?;
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        if rest.is_empty() {
            return Err(ApiError::Credential("the Bearer token is empty"));
        }
        return Ok(Some(rest.to_owned()));
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
        Some((_, password)) if !password.is_empty() => Ok(Some(password.to_owned())),
        _ => Err(ApiError::Credential("the password must be an Authority access token or a refresh token")),
    }
}

/// The client's address, for the ledger: the socket's peer, or — when the peer is one of
/// `http.trusted_proxies` — the first hop of `X-Forwarded-For`, read from the right, that is not a
/// trusted proxy. `None` without a socket (tests driving the router directly).
#[derive(Debug)]
pub struct ClientAddr(pub Option<String>);

impl FromRequestParts<super::AppState> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, app: &super::AppState) -> Result<Self, Self::Rejection> {
        // Only the ledger records it: without one, nothing to work out.
        let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>().copied() else {
            return Ok(ClientAddr(None));
        };
        if app.ledger.is_none() {
            return Ok(ClientAddr(None));
        }
        let live = app.live();
        let trusted = &live.config.http.trusted_proxies;
        let forwarded = parts.headers.get_all("x-forwarded-for").iter().map(|v| v.to_str().unwrap_or(""));
        let client = client_address(peer.ip(), forwarded, trusted);
        Ok(ClientAddr(Some(client.to_string())))
    }
}

/// The client behind `peer`: `peer` itself unless it is a trusted proxy; then, walking the
/// `X-Forwarded-For` hops from the right (each trusted proxy names who connected to it), the first
/// hop that is not a trusted proxy. A hop that is not an address ends the walk at the last address
/// a trusted proxy vouched for.
fn client_address<'a>(
    peer: IpAddr,
    forwarded: impl Iterator<Item = &'a str>,
    trusted: &crate::config::TrustedProxies,
) -> IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    let hops: Vec<Option<IpAddr>> =
        forwarded.flat_map(|value| value.split(',')).map(|hop| hop.trim().parse::<IpAddr>().ok()).collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Some(hop) = hop else { break };
        client = *hop;
        if !trusted.contains(hop) {
            break;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TrustedProxies;

    fn client(peer: &str, forwarded: &[&str], trusted: &[&str]) -> String {
        let trusted =
            TrustedProxies::try_from(trusted.iter().map(|t| (*t).to_owned()).collect::<Vec<_>>()).unwrap();
        client_address(peer.parse().unwrap(), forwarded.iter().copied(), &trusted).to_string()
    }

    #[test]
    fn the_client_is_the_first_untrusted_hop_from_the_right() {
        // An untrusted peer's header is ignored: anyone can send one.
        assert_eq!(client("203.0.113.9", &["10.0.0.1"], &["10.0.0.0/8"]), "203.0.113.9");
        // Behind one trusted proxy.
        assert_eq!(client("10.0.0.2", &["198.51.100.7"], &["10.0.0.0/8"]), "198.51.100.7");
        // A client that forges hops on the left gains nothing: the walk stops at its real address.
        assert_eq!(
            client("10.0.0.2", &["1.2.3.4, 198.51.100.7", "10.0.0.3"], &["10.0.0.0/8"]),
            "198.51.100.7"
        );
        // Only trusted hops: the leftmost one.
        assert_eq!(client("10.0.0.2", &["10.0.0.5, 10.0.0.3"], &["10.0.0.0/8", "127.0.0.1"]), "10.0.0.5");
        // Garbage ends the walk at the last vouched-for address; no header: the peer.
        assert_eq!(client("10.0.0.2", &["junk, 10.0.0.3"], &["10.0.0.0/8"]), "10.0.0.3");
        assert_eq!(client("10.0.0.2", &[], &["10.0.0.0/8"]), "10.0.0.2");
        assert_eq!(client("::1", &["2001:db8::1"], &["::1"]), "2001:db8::1");
    }
}
