//! Fail closed under attack: hostile caller tokens and hostile requests, table-driven. Every case
//! must be refused with a clear message and the Docker error body, never a 5xx and never a token,
//! and the server must serve a good request right after.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use data_encoding::BASE64URL_NOPAD;
use registry_token::mint::{SigningAlgorithm, SigningKey};
use serde_json::{Value, json};

/// Signs arbitrary header and payload bytes with the development Authority's real key, so the
/// cases that must get past the signature check do.
struct Forger {
    key: SigningKey,
    kid: String,
}

impl Forger {
    fn new(fixture: &Fixture) -> Forger {
        let authority = fixture.root().join("authority");
        let info: Value =
            serde_json::from_slice(&std::fs::read(authority.join("authority.json")).unwrap()).unwrap();
        let key =
            SigningKey::from_file(&authority.join("authority-key.pem"), SigningAlgorithm::RS256).unwrap();
        Forger { key, kid: info["kid"].as_str().unwrap().to_owned() }
    }

    fn header(&self) -> String {
        json!({"alg": "RS256", "typ": "JWT", "kid": self.kid}).to_string()
    }

    fn good_claims(&self) -> Value {
        let now = registry_token::app::system_clock()();
        json!({
            "iss": ISSUER, "sub": "mallory", "aud": "registry-token", "iat": now, "nbf": now, "exp": now + 600,
            "scope": "registry.token.issue", "stellaops:plan": "admin",
        })
    }

    /// `header.payload.signature` with a valid RS256 signature over whatever bytes are given.
    fn sign_raw(&self, header: &str, payload: &str) -> String {
        let signing_input = format!("{}.{}", b64(header), b64(payload));
        let signature = self.key.sign(signing_input.as_bytes()).unwrap();
        format!("{signing_input}.{}", BASE64URL_NOPAD.encode(&signature))
    }

    fn sign_claims(&self, claims: &Value) -> String {
        self.sign_raw(&self.header(), &claims.to_string())
    }
}

fn with_sub(forger: &Forger, sub: &str) -> String {
    let mut claims = forger.good_claims();
    claims["sub"] = json!(sub);
    claims.to_string()
}

fn b64(text: &str) -> String {
    BASE64URL_NOPAD.encode(text.as_bytes())
}

fn hmac_sha256(secret: &[u8], message: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    BASE64URL_NOPAD.encode(aws_lc_rs::hmac::sign(&key, message).as_ref())
}

async fn assert_refused(router: &Router, token: &str, expected: &str, case: &str) {
    let reply = get_bearer(router, &query(SERVICE, &["repository:team/app:pull,push"]), token).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{case}: {}", reply.body);
    assert_eq!(reply.code(), "UNAUTHORIZED", "{case}");
    assert!(reply.message().contains(expected), "{case}: expected {expected:?} in {:?}", reply.message());
    assert!(
        reply.body.get("token").is_none() && reply.body.get("access_token").is_none(),
        "{case}: a token!"
    );
    assert!(!reply.message().contains("BEGIN"), "{case}: key material in a message");
}

#[tokio::test]
async fn hostile_caller_tokens_are_refused_with_the_check_that_failed() {
    let fixture = Fixture::new();
    // The same Authority key, but published as RS384: an RS256 header must not choose RS256.
    let other = Fixture::new();
    let jwks_path = other.root().join("authority/jwks.json");
    let jwks = std::fs::read_to_string(&jwks_path).unwrap().replace("\"RS256\"", "\"RS384\"");
    std::fs::write(&jwks_path, jwks).unwrap();

    let router = fixture.router().await;
    let forger = Forger::new(&fixture);
    let good = forger.sign_claims(&forger.good_claims());
    // The forged baseline is accepted: the cases below differ from it in one way each.
    assert_eq!(get_bearer(&router, &query(SERVICE, &[]), &good).await.status, StatusCode::OK);

    let public_pem = pem::encode(&pem::Pem::new("PUBLIC KEY", forger.key.spki_der().to_vec()));
    let claims64 = b64(&forger.good_claims().to_string());
    let hs_header = b64(&json!({"alg": "HS256", "typ": "JWT", "kid": forger.kid}).to_string());
    let hs_input = format!("{hs_header}.{claims64}");
    let none_header = b64(&json!({"alg": "none", "typ": "JWT"}).to_string());
    let (head, rest) = good.split_once('.').unwrap();
    let (payload, signature) = rest.split_once('.').unwrap();
    let mut flipped = BASE64URL_NOPAD.decode(signature.as_bytes()).unwrap();
    flipped[17] ^= 0x01;
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut claims = forger.good_claims();
        edit(&mut claims);
        forger.sign_claims(&claims)
    };
    let now = registry_token::app::system_clock()();
    let mut nested = String::from("1");
    for _ in 0..200 {
        nested = format!("[{nested}]");
    }

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "alg none, empty signature",
            format!("{none_header}.{claims64}."),
            "unsigned tokens are not accepted",
        ),
        (
            "alg none, any signature",
            format!("{none_header}.{claims64}.AAAA"),
            "algorithm \"none\" is not accepted",
        ),
        (
            "HS256 keyed with the public key (PEM)",
            format!("{hs_input}.{}", hmac_sha256(public_pem.as_bytes(), hs_input.as_bytes())),
            "algorithm \"HS256\" is not accepted",
        ),
        (
            "HS256 keyed with the public key (DER)",
            format!("{hs_input}.{}", hmac_sha256(forger.key.spki_der(), hs_input.as_bytes())),
            "algorithm \"HS256\" is not accepted",
        ),
        (
            "unknown kid",
            forger.sign_raw(
                &json!({"alg": "RS256", "kid": "not-a-key"}).to_string(),
                &forger.good_claims().to_string(),
            ),
            "does not publish (kid \"not-a-key\")",
        ),
        (
            "kid with ../",
            forger.sign_raw(
                &json!({"alg": "RS256", "kid": "../../etc/passwd"}).to_string(),
                &forger.good_claims().to_string(),
            ),
            "does not publish (kid \"../../etc/passwd\")",
        ),
        (
            "kid 10 KiB long",
            forger.sign_raw(
                &json!({"alg": "RS256", "kid": "k".repeat(10 * 1024)}).to_string(),
                &forger.good_claims().to_string(),
            ),
            "larger than 8192 bytes",
        ),
        ("signature stripped", format!("{head}.{payload}."), "a segment is empty"),
        (
            "signature bit-flipped",
            format!("{head}.{payload}.{}", BASE64URL_NOPAD.encode(&flipped)),
            "signature does not verify",
        ),
        (
            "signature of another payload",
            format!("{head}.{}.{signature}", b64(&with_sub(&forger, "root"))),
            "signature does not verify",
        ),
        ("expired", with(&|c| c["exp"] = json!(now - 3600)), "has expired"),
        ("nbf in the future", with(&|c| c["nbf"] = json!(now + 3600)), "not valid yet"),
        ("wrong iss", with(&|c| c["iss"] = json!("https://evil.test")), "issuer \"https://evil.test\""),
        ("wrong aud", with(&|c| c["aud"] = json!(["someone", "else"])), "audience [\"someone\", \"else\"]"),
        (
            "no sub",
            with(&|c| {
                c.as_object_mut().unwrap().remove("sub");
            }),
            "sub is missing",
        ),
        (
            "no scope",
            with(&|c| {
                c.as_object_mut().unwrap().remove("scope");
            }),
            "lacks the scope registry.token.issue",
        ),
        (
            "insufficient scope",
            with(&|c| c["scope"] = json!("registry.token.read openid")),
            "lacks the scope",
        ),
        ("a 64 KiB token", format!("{head}.{}.{signature}", "A".repeat(64 * 1024)), "larger than 8192 bytes"),
        ("non-base64 header", format!("!!!.{payload}.{signature}"), "header is not unpadded base64url"),
        ("padded base64", format!("{head}=.{payload}.{signature}"), "header is not unpadded base64url"),
        (
            "non-JSON header",
            format!("{}.{payload}.{signature}", b64("not json")),
            "header is not a valid JOSE header",
        ),
        ("non-JSON payload", forger.sign_raw(&forger.header(), "not json"), "payload is not a JSON object"),
        ("JSON array payload", forger.sign_raw(&forger.header(), "[1,2]"), "payload is not a JSON object"),
        (
            "deeply nested JSON",
            forger.sign_raw(&forger.header(), &format!(r#"{{"sub":"x","n":{nested}}}"#)),
            "recursion limit",
        ),
        (
            "duplicate claim names",
            forger.sign_raw(
                &forger.header(),
                &forger.good_claims().to_string().replacen('{', r#"{"sub":"root","#, 1),
            ),
            "\"sub\" appears more than once",
        ),
        (
            "duplicate header names",
            forger.sign_raw(
                &forger.header().replacen('{', r#"{"alg":"none","#, 1),
                &forger.good_claims().to_string(),
            ),
            "appears more than once",
        ),
        ("exp as a string", with(&|c| c["exp"] = json!((now + 600).to_string())), "exp must be a number"),
        ("nbf as a string", with(&|c| c["nbf"] = json!("now")), "nbf must be a number"),
        ("scope as a number", with(&|c| c["scope"] = json!(42)), "scope must be a space-separated string"),
        ("sub as an object", with(&|c| c["sub"] = json!({"name": "root"})), "sub must be a string"),
        (
            "plan as an array",
            with(&|c| c["stellaops:plan"] = json!(["admin"])),
            "stellaops:plan must be a string",
        ),
        (
            "critical header",
            forger.sign_raw(
                &json!({"alg": "RS256", "kid": forger.kid, "crit": ["exp"]}).to_string(),
                &forger.good_claims().to_string(),
            ),
            "crit",
        ),
        ("two segments", format!("{head}.{payload}"), "three dot-separated segments"),
        ("four segments", format!("{good}.{signature}"), "three dot-separated segments"),
    ];
    let tried = cases.len() + 1;
    for (case, token, expected) in &cases {
        assert_refused(&router, token, expected, case).await;
    }

    // RS256 header, key published for RS384.
    let other_router = other.router().await;
    let other_forger = Forger::new(&other);
    let token = other_forger.sign_claims(&other_forger.good_claims());
    assert_refused(&other_router, &token, "algorithm RS256 does not match its key's RS384", "alg confusion")
        .await;

    // And the server still serves.
    assert_eq!(get_bearer(&router, &query(SERVICE, &[]), &good).await.status, StatusCode::OK);
    eprintln!("hostile caller tokens: {tried} cases, 0 tokens minted");
}

fn malformed_scopes() -> Vec<String> {
    let mut corpus: Vec<String> = [
        "",
        ":",
        "::",
        ":::",
        "repository",
        "repository:",
        "repository::",
        "repository:::",
        "repository:a",
        "repository:a:",
        "repository::pull",
        ":a:pull",
        "Repository:a:pull",
        "repo sitory:a:pull",
        "repository:A/b:pull",
        "repository:a/B:pull",
        "repository:a//b:pull",
        "repository:/a:pull",
        "repository:a/:pull",
        "repository:a/b/:pull",
        "repository:-a:pull",
        "repository:a-:pull",
        "repository:a..b:pull",
        "repository:a___b:pull",
        "repository:a:b:c:pull",
        "repository:host:port/a:pull",
        "repository:host:99999999/a:pull",
        "repository:a:pull,",
        "repository:a:,pull",
        "repository:a:pull,,push",
        "repository:a:PULL",
        "repository:a:pull1",
        "repository:a:pu-ll",
        "repository:a:**",
        "repository(:a:pull",
        "repository():a:pull",
        "repository(x:a:pull",
        "repository(X):a:pull",
        "repository:a\u{0}b:pull",
        "repository:a\nb:pull",
        "repository:\u{e9}:pull",
        "repository:a:p\u{fc}ll",
        "repository:%2e%2e:pull",
        "repository:../etc:pull",
        "repository:a/../b:pull",
        "repository:a\\b:pull",
        "repository:a b:pull",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    corpus.push(format!("repository:{}:pull", "a".repeat(256)));
    corpus.push(format!("repository:a:{}", "p".repeat(40)));
    corpus.push(format!("{}:a:pull", "t".repeat(65)));
    // Seventeen distinct actions on one resource.
    corpus.push(format!(
        "repository:a:{}",
        (b'a'..=b'q').map(|c| (c as char).to_string()).collect::<Vec<_>>().join(",")
    ));
    corpus
}

#[tokio::test]
async fn hostile_requests_get_a_4xx_with_the_docker_error_body() {
    let fixture = Fixture::new();
    let router = fixture.router().await;
    let token = fixture.token(|_| {});
    let mut tried = 0;

    // A corpus of malformed scopes (the empty one included: `scope=` asks for nothing and is fine).
    for scope in malformed_scopes().iter().filter(|s| !s.is_empty()) {
        let reply = get_bearer(&router, &query(SERVICE, &[scope]), &token).await;
        tried += 1;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{scope:?} → {}", reply.body);
        assert_eq!(reply.code(), "INVALID_REQUEST");
        assert!(reply.message().starts_with("invalid scope"), "{scope:?}: {}", reply.message());
    }

    let scopes = |n: usize| (0..n).map(|i| format!("repository:team/r{i}:pull")).collect::<Vec<_>>();
    let many = scopes(101);
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let reply = get_bearer(&router, &query(SERVICE, &many), &token).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(
        reply.message().contains("too many scopes: 101 resources requested, at most 100"),
        "{}",
        reply.message()
    );

    // A thousand scopes (about 30 KB of query), like any query over 16 KiB: 414 with the body.
    let thousand = scopes(1000);
    let thousand: Vec<&str> = thousand.iter().map(String::as_str).collect();
    let reply = get_bearer(&router, &query(SERVICE, &thousand), &token).await;
    assert_eq!(reply.status, StatusCode::URI_TOO_LONG);
    assert_eq!(reply.code(), "INVALID_REQUEST");
    assert!(reply.message().contains("longer than 16384 bytes"), "{}", reply.message());

    let reply = get_bearer(&router, &query("nope.example", &[]), &token).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);

    for method in ["PUT", "DELETE", "PATCH", "OPTIONS"] {
        let reply =
            send(&router, Request::builder().method(method).uri("/token").body(Body::empty()).unwrap()).await;
        assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(reply.code(), "UNSUPPORTED");
    }

    for uri in [
        format!("/token?service=%FF%FE{SERVICE}"),
        format!("/token?service={SERVICE}&scope=repository%3Aa%C0%AF%3Apull"),
    ] {
        let reply = get_bearer(&router, &uri, &token).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{uri}");
        assert!(reply.message().contains("not valid UTF-8"), "{}", reply.message());
    }

    let huge = format!("grant_type=password&password={}", "x".repeat(10 * 1024 * 1024));
    let reply = post_form(&router, &huge).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.body["error"], "invalid_request");
    assert!(reply.message().contains("larger than 65536 bytes"));

    let non_ascii = Request::get(query(SERVICE, &[]))
        .header("authorization", axum::http::HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap())
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&router, non_ascii).await.status, StatusCode::UNAUTHORIZED);
    tried += 10;

    // Unharmed.
    let reply = get_bearer(&router, &query(SERVICE, &["repository:team/app:pull"]), &token).await;
    assert_eq!(reply.status, StatusCode::OK);
    eprintln!("hostile requests: {tried} cases, all 4xx, 0 tokens minted");
}
