//! Talking to a server over a real socket: [`Client`] for ordinary requests (reqwest, blocking), and
//! [`raw_exchange`] for the few tests that must send bytes exactly as written (a chunked POST as
//! skopeo sends it, malformed requests).

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;
use std::fmt;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// How long one request may take before it counts as failed.
const TIMEOUT: Duration = Duration::from_secs(30);

/// A response as a test reads it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The body parsed as JSON, or the body as a JSON string when it is not JSON.
    pub body: Value,
    /// The body as text.
    pub text: String,
}

impl Reply {
    pub fn new(status: StatusCode, headers: HeaderMap, bytes: &[u8]) -> Reply {
        let text = String::from_utf8_lossy(bytes).into_owned();
        let body = serde_json::from_slice(bytes).unwrap_or_else(|_| Value::String(text.clone()));
        Reply { status, headers, body, text }
    }

    /// The Docker error message, or the whole body if there is none.
    pub fn message(&self) -> String {
        self.body["errors"][0]["message"].as_str().map(str::to_owned).unwrap_or_else(|| self.body.to_string())
    }

    /// The Docker error code, or `""`.
    pub fn code(&self) -> &str {
        self.body["errors"][0]["code"].as_str().unwrap_or_default()
    }
}

/// The whole response (status line, headers, body), for failure messages and for assertions about
/// anything in it.
impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "HTTP {}", self.status)?;
        for (name, value) in &self.headers {
            writeln!(f, "{name}: {}", String::from_utf8_lossy(value.as_bytes()))?;
        }
        write!(f, "\n{}", self.text)
    }
}

/// An HTTP client of one server (`127.0.0.1:PORT`). Every request goes over a fresh connection,
/// closed after it (`Connection: close`): a request never depends on an earlier one's connection.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    inner: reqwest::blocking::Client,
}

impl Client {
    pub fn new(address: &str) -> Client {
        let mut headers = HeaderMap::new();
        headers.insert(reqwest::header::CONNECTION, "close".parse().unwrap());
        let inner = reqwest::blocking::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .default_headers(headers)
            .timeout(TIMEOUT)
            .build()
            .unwrap();
        Client { base: format!("http://{address}"), inner }
    }

    /// `GET path` (path and query) without credentials.
    pub fn get(&self, path: &str) -> reqwest::Result<Reply> {
        self.send(self.inner.get(self.url(path)))
    }

    /// `GET path` with `Authorization: Bearer TOKEN`.
    pub fn get_bearer(&self, path: &str, token: &str) -> reqwest::Result<Reply> {
        self.send(self.inner.get(self.url(path)).bearer_auth(token))
    }

    /// `GET path` with `Authorization: Basic` for `user` and `password`.
    pub fn get_basic(&self, path: &str, user: &str, password: &str) -> reqwest::Result<Reply> {
        self.send(self.inner.get(self.url(path)).basic_auth(user, Some(password)))
    }

    /// `POST path` with the form `pairs` (`application/x-www-form-urlencoded`).
    pub fn post_form(&self, path: &str, pairs: &[(&str, &str)]) -> reqwest::Result<Reply> {
        self.send(self.inner.post(self.url(path)).form(pairs))
    }

    /// `POST path` with `Authorization: Bearer TOKEN` and `body` as `application/json` (sent as
    /// written, so a test can send malformed JSON).
    pub fn post_json_bearer(&self, path: &str, token: &str, body: &str) -> reqwest::Result<Reply> {
        let request = self
            .inner
            .post(self.url(path))
            .bearer_auth(token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_owned());
        self.send(request)
    }

    /// `DELETE path` with `Authorization: Bearer TOKEN`.
    pub fn delete_bearer(&self, path: &str, token: &str) -> reqwest::Result<Reply> {
        self.send(self.inner.delete(self.url(path)).bearer_auth(token))
    }

    /// The live policy settings' version, from `/readyz`: it changes when a reload is applied.
    pub fn settings_version(&self) -> String {
        let reply = self.get("/readyz").unwrap();
        reply.body["policy"]["settings_version"].as_str().unwrap().to_owned()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn send(&self, request: reqwest::blocking::RequestBuilder) -> reqwest::Result<Reply> {
        let response = request.send()?;
        let (status, headers) = (response.status(), response.headers().clone());
        let bytes = response.bytes()?;
        Ok(Reply::new(status, headers, &bytes))
    }
}

/// Writes `request` as it is to a fresh connection to `address` and returns everything the server
/// answered before it closed the connection, as text. For requests a client library would not send
/// (or would send differently); the request should say `Connection: close`.
pub fn raw_exchange(address: &str, request: &str) -> String {
    let mut stream =
        TcpStream::connect(address).unwrap_or_else(|e| panic!("cannot connect to {address}: {e}"));
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}
