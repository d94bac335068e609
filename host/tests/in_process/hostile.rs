//! Fail closed under attack: hostile caller tokens and hostile requests, table-driven. Every case
//! must be refused with a clear message and the Docker error body, never a 5xx and never a token,
//! and the server must serve a good request right after.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::*;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use data_encoding::BASE64URL_NOPAD;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use registry_token::authority::{self, KeySource, Requirements};
use registry_token::mint::{SigningAlgorithm, SigningKey};
use serde_json::{Value, json};
use std::cell::Cell;

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
        (
            "scope array holding a number",
            with(&|c| c["scope"] = json!(["registry.token.issue", 42])),
            "scope must hold strings",
        ),
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
        reply.message().contains("too many scopes: more than 100 resources requested, at most 100"),
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
    let empty_bearer =
        Request::get(query(SERVICE, &[])).header("authorization", "Bearer  ").body(Body::empty()).unwrap();
    let reply = send(&router, empty_bearer).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.message(), "the Bearer token is empty");

    // HEAD would run the whole exchange and drop the token with the body: refused.
    let head = Request::head(query(SERVICE, &["repository:team/app:pull"]))
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    let reply = send(&router, head).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.headers["allow"], "GET, POST");

    // A client_id is stored with a refresh token and quoted in its errors: printable ASCII only.
    let long = "c".repeat(257);
    for client_id in ["a%00b", "docker%0Aevil", "d%C3%A9j%C3%A0", long.as_str()] {
        let uri = format!("{}&offline_token=true&client_id={client_id}", query(SERVICE, &[]));
        let reply = get_bearer(&router, &uri, &token).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{client_id}");
        assert_eq!(reply.message(), "client_id must be printable ASCII of at most 256 bytes", "{client_id}");
    }
    tried += 16;

    // Unharmed.
    let reply = get_bearer(&router, &query(SERVICE, &["repository:team/app:pull"]), &token).await;
    assert_eq!(reply.status, StatusCode::OK);
    eprintln!("hostile requests: {tried} cases, all 4xx, 0 tokens minted");
}

/// What the fixture's service requires of a caller token.
fn fixture_requirements() -> Requirements {
    Requirements {
        issuer: ISSUER.into(),
        audiences: vec!["registry-token".into()],
        required_scope: "registry.token.issue".into(),
        leeway_seconds: 30,
    }
}

fn property_runner(cases: u32) -> TestRunner {
    TestRunner::new(ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() })
}

/// Random edits of a real caller token — bit flips, deletions, insertions, truncation, in any
/// segment — are refused, or (where an edit leaves the signed bytes as they were) validate to the
/// very same caller: never a panic, never anyone else. The test command's counterpart of
/// `cargo fuzz run caller_token`.
#[test]
fn edited_caller_tokens_never_validate_as_anyone_else() {
    let fixture = Fixture::new();
    let keys = KeySource::from_file(&fixture.root().join("authority/jwks.json")).unwrap();
    let requirements = fixture_requirements();
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let now = registry_token::app::system_clock()();
    let token = fixture.token(|_| {});
    let original = runtime.block_on(authority::verify(&token, now, &keys, &requirements)).unwrap();

    let edit = (any::<usize>(), any::<u8>(), 0..4u8);
    let (refused, same) = (Cell::new(0u32), Cell::new(0u32));
    property_runner(20_000)
        .run(&proptest::collection::vec(edit, 1..4), |edits| {
            let mut bytes = token.clone().into_bytes();
            for (at, byte, kind) in edits {
                let at = at % bytes.len().max(1);
                match kind {
                    0 if !bytes.is_empty() => bytes[at] ^= 1 << (byte % 8),
                    1 if !bytes.is_empty() => drop(bytes.remove(at)),
                    2 => bytes.insert(at, byte),
                    _ => bytes.truncate(at),
                }
            }
            let edited = String::from_utf8_lossy(&bytes);
            match runtime.block_on(authority::verify(&edited, now, &keys, &requirements)) {
                Ok(validated) => {
                    prop_assert_eq!(&validated.caller, &original.caller, "edited: {}", edited);
                    same.set(same.get() + 1);
                }
                Err(_) => refused.set(refused.get() + 1),
            }
            Ok(())
        })
        .unwrap();
    let (refused, same) = (refused.get(), same.get());
    assert!(refused > 19_000, "most edits must break the token: {refused} refused");
    eprintln!("edited caller tokens: {refused} refused, {same} validated as the same caller, 0 as another");
}

/// A claim value for the property below: mostly the good one, otherwise absent, `null`, or a value
/// of another shape or type.
fn claim(good: Value) -> impl Strategy<Value = Option<Value>> {
    let now = registry_token::app::system_clock()() as i64;
    prop_oneof![
        40 => Just(Some(good)),
        1 => Just(None),
        1 => Just(Some(Value::Null)),
        1 => any::<bool>().prop_map(|b| Some(json!(b))),
        1 => (-100i64..100).prop_map(move |d| Some(json!(now + d))),
        1 => any::<f64>().prop_map(|f| Some(json!(f))),
        1 => "[a-z.: ]{0,24}".prop_map(|s| Some(json!(s))),
        1 => proptest::collection::vec("[a-z.:-]{0,22}", 0..3).prop_map(|v| Some(json!(v))),
        1 => Just(Some(json!({"nested": ["registry.token.issue"]}))),
        1 => Just(Some(json!("registry.token.issue"))),
        1 => Just(Some(json!(["registry-token", "registry.token.issue"]))),
    ]
}

/// Claims of any type and value, signed with the Authority's real key: a token validates only when
/// every rule holds (issuer, audience, expiry and not-before with 30 s leeway, subject, required
/// scope), and the caller then carries exactly the claims' values; a token whose claims are all
/// good always validates. The test command's counterpart of `cargo fuzz run claims`.
#[test]
fn only_claims_that_follow_every_rule_validate() {
    let fixture = Fixture::new();
    let forger = Forger::new(&fixture);
    let keys = KeySource::from_file(&fixture.root().join("authority/jwks.json")).unwrap();
    let requirements = fixture_requirements();
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let now = registry_token::app::system_clock()();

    let names = [
        ("iss", json!(ISSUER)),
        ("aud", json!("registry-token")),
        ("sub", json!("alice")),
        ("scope", json!("registry.token.issue pull")),
        ("scp", json!(["registry.token.issue"])),
        ("exp", json!(now + 600)),
        ("nbf", json!(now - 5)),
        ("iat", json!(now - 5)),
        ("client_id", json!("ci")),
        ("stellaops:plan", json!("team")),
        ("stellaops:tenant", json!("acme")),
        ("stellaops:license", json!("LIC-0001")),
    ];
    let strategy: Vec<_> = names.iter().map(|(_, good)| claim(good.clone())).collect();
    let (accepted, refused) = (Cell::new(0u32), Cell::new(0u32));
    property_runner(3_000)
        .run(&strategy, |values| {
            let mut claims = serde_json::Map::new();
            for ((name, _), value) in names.iter().zip(values) {
                if let Some(value) = value {
                    claims.insert((*name).to_owned(), value.clone());
                }
            }
            let all_good = names.iter().all(|(name, good)| claims.get(*name) == Some(good));
            let token = forger.sign_claims(&Value::Object(claims.clone()));
            let result = runtime.block_on(authority::verify(&token, now, &keys, &requirements));
            let Ok(validated) = result else {
                prop_assert!(!all_good, "good claims refused: {:?}", result.err());
                refused.set(refused.get() + 1);
                return Ok(());
            };
            accepted.set(accepted.get() + 1);
            let number = |name: &str| claims.get(name).and_then(Value::as_f64);
            let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
            let issuer = text("iss");
            prop_assert_eq!(issuer.as_deref(), Some(ISSUER));
            let audiences = match claims.get("aud") {
                Some(Value::Array(list)) => list.clone(),
                Some(other) => vec![other.clone()],
                None => Vec::new(),
            };
            prop_assert!(audiences.contains(&json!("registry-token")), "aud {:?}", claims.get("aud"));
            prop_assert!(
                number("exp").is_some_and(|exp| exp + 30.0 > now as f64),
                "exp {:?}",
                claims.get("exp")
            );
            prop_assert!(
                claims.get("nbf").is_none() || number("nbf").is_some_and(|nbf| nbf - 30.0 <= now as f64),
                "nbf {:?}",
                claims.get("nbf")
            );
            prop_assert_eq!(Some(validated.caller.subject.clone()), text("sub"));
            // `scope`, else `scp` (a null one is absent), as a space-separated string or an array.
            let present = |name: &str| claims.get(name).filter(|value| !value.is_null());
            let listed = |value: &Value| -> Vec<String> {
                match value {
                    Value::String(text) => text.split(' ').map(str::to_owned).collect(),
                    Value::Array(list) => list.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
                    _ => Vec::new(),
                }
            };
            let scopes = present("scope").or_else(|| present("scp")).map(listed).unwrap_or_default();
            prop_assert!(scopes.iter().any(|s| s == "registry.token.issue"), "scopes {:?}", scopes);
            prop_assert_eq!(validated.caller.plan.clone(), text("stellaops:plan"));
            prop_assert_eq!(validated.caller.tenant.clone(), text("stellaops:tenant"));
            prop_assert_eq!(validated.caller.license.clone(), text("stellaops:license"));
            prop_assert_eq!(validated.caller.client_id.clone(), text("client_id"));
            Ok(())
        })
        .unwrap();
    let (accepted, refused) = (accepted.get(), refused.get());
    assert!(
        accepted > 100 && refused > 1_000,
        "both outcomes must be exercised: {accepted} accepted, {refused} refused"
    );
    eprintln!("claims of any type: {accepted} validated (each checked against the rules), {refused} refused");
}
