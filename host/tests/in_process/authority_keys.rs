//! The Authority's keys from a URL (cached, refreshed, refetched once on an unknown `kid`, bounded)
//! and the validated-token cache (never past a token's `exp`, dropped when the keys change).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use axum::Router;
use axum::routing::get;
use registry_token::authority::{AuthError, KeySource, Requirements, Validator};
use registry_token::dev_authority::{self, TokenRequest};
use serde_json::Map;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const ISSUER: &str = "https://authority.keys";

fn requirements() -> Requirements {
    Requirements {
        issuer: ISSUER.into(),
        audiences: vec!["registry-token".into()],
        required_scope: "registry.token.issue".into(),
        leeway_seconds: 0,
    }
}

fn token(authority: &Path, ttl: i64, now: u64) -> String {
    let request = TokenRequest {
        subject: "alice".into(),
        plan: Some("team".into()),
        license: None,
        tenant: None,
        scope: "registry.token.issue".into(),
        audience: "registry-token".into(),
        client_id: "tests".into(),
        ttl_seconds: ttl,
        extra: Map::new(),
    };
    dev_authority::token(authority, &request, now).unwrap()
}

/// A development Authority in a temporary directory, and the one key its JWKS publishes.
fn authority_and_its_key() -> (tempfile::TempDir, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    dev_authority::init(dir.path(), ISSUER).unwrap();
    let published: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("jwks.json")).unwrap()).unwrap();
    let key = published["keys"][0].clone();
    (dir, key)
}

/// A JWKS endpoint on 127.0.0.1 serving whatever `document` holds, counting its requests.
struct JwksServer {
    url: String,
    document: Arc<std::sync::Mutex<String>>,
    hits: Arc<AtomicUsize>,
}

async fn jwks_server(initial: String) -> JwksServer {
    let document = Arc::new(std::sync::Mutex::new(initial));
    let hits = Arc::new(AtomicUsize::new(0));
    let (served, counted) = (document.clone(), hits.clone());
    let app = Router::new().route(
        "/jwks.json",
        get(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            let body = served.lock().unwrap().clone();
            async move { body }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    JwksServer { url, document, hits }
}

#[tokio::test]
async fn a_jwks_url_is_fetched_and_a_rotated_key_is_picked_up_on_its_first_use() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (dir.path().join("first"), dir.path().join("second"));
    dev_authority::init(&first, ISSUER).unwrap();
    dev_authority::init(&second, ISSUER).unwrap();
    let read = |d: &Path| std::fs::read_to_string(d.join("jwks.json")).unwrap();
    let server = jwks_server(read(&first)).await;

    let keys =
        KeySource::from_url(&server.url, Duration::from_secs(300), Duration::ZERO, false).await.unwrap();
    assert!(keys.is_ready());
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);
    let now = registry_token::app::system_clock()();
    let validator = Validator::new(keys, requirements(), 16);
    let before_rotation = token(&first, 600, now);
    assert_eq!(validator.validate(&before_rotation, now).await.unwrap().caller.subject, "alice");
    assert_eq!(server.hits.load(Ordering::SeqCst), 1, "known keys are not refetched");

    // The Authority rotates to a new key: the first token signed with it triggers one refetch.
    *server.document.lock().unwrap() = read(&second);
    let rotated = validator.validate(&token(&second, 600, now), now).await.unwrap();
    assert_eq!(rotated.caller.subject, "alice");
    assert_eq!(server.hits.load(Ordering::SeqCst), 2, "exactly one refetch");
    // The retired key is gone with the old document, and so is the cached validation of the
    // token it signed.
    let retired = validator.validate(&before_rotation, now).await.unwrap_err();
    assert!(matches!(retired, AuthError::UnknownKey(_)), "{retired}");
}

#[tokio::test]
async fn unavailable_keys_refuse_callers_and_made_up_kids_do_not_flood_the_authority() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (dir.path().join("first"), dir.path().join("second"));
    dev_authority::init(&first, ISSUER).unwrap();
    dev_authority::init(&second, ISSUER).unwrap();
    // The JWKS is unavailable at start (a 404 page): the service starts, refuses callers as
    // "keys unavailable", and recovers on the first fetch that works.
    let server = jwks_server("not a jwks".into()).await;
    let keys = KeySource::from_url(&server.url, Duration::from_secs(300), Duration::from_secs(2), false)
        .await
        .unwrap();
    assert!(!keys.is_ready());
    let validator = Validator::new(keys, requirements(), 16);
    let now = registry_token::app::system_clock()();
    assert_eq!(
        validator.validate(&token(&second, 600, now), now).await.unwrap_err(),
        AuthError::KeysUnavailable
    );

    *server.document.lock().unwrap() = std::fs::read_to_string(second.join("jwks.json")).unwrap();
    // Still within 2 s of the failed fetch: nothing is fetched, so a flood of made-up kids costs
    // the Authority nothing.
    for _ in 0..20 {
        let _ = validator.validate(&token(&first, 600, now), now).await;
    }
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);
    // Past that interval, the next caller's kid makes the fetch that works.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(validator.validate(&token(&second, 600, now), now).await.unwrap().caller.subject, "alice");
    assert_eq!(server.hits.load(Ordering::SeqCst), 2);
}

/// A replica that started while the Authority was down gets its keys soon after the Authority is
/// back, with no traffic to trigger a fetch (a load balancer sends none to an unready replica):
/// not at the next periodic refresh, minutes later. Retries come at most once per
/// `jwks_min_refetch_seconds`.
#[tokio::test]
async fn a_replica_started_during_an_outage_is_ready_soon_after_without_traffic() {
    let dir = tempfile::tempdir().unwrap();
    dev_authority::init(dir.path(), ISSUER).unwrap();
    let server = jwks_server("upstream unavailable".into()).await;
    let keys = KeySource::from_url(&server.url, Duration::from_secs(300), Duration::from_secs(1), false)
        .await
        .unwrap();
    assert!(!keys.is_ready());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let during = server.hits.load(Ordering::SeqCst);
    assert!((2..=4).contains(&during), "{during} fetches in 2.5 s: one a second, not a flood");
    assert!(!keys.is_ready());

    *server.document.lock().unwrap() = std::fs::read_to_string(dir.path().join("jwks.json")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !keys.is_ready() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(keys.is_ready(), "still not ready 5 s after the Authority came back");
    // Then the usual interval: nothing more within the next second and a half.
    let after = server.hits.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(server.hits.load(Ordering::SeqCst), after);
}

/// While the Authority does not answer, a token signed with a key it may have added meanwhile is
/// a 503 to retry (KeysUnavailable), not a 401 that tells `docker login` the credentials are bad;
/// the keys held keep validating, and once the Authority answers an unknown key is a 401 again.
#[tokio::test]
async fn an_unknown_key_while_the_authority_does_not_answer_is_unavailable_not_bad() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second, made_up) =
        (dir.path().join("first"), dir.path().join("second"), dir.path().join("x"));
    for authority in [&first, &second, &made_up] {
        dev_authority::init(authority, ISSUER).unwrap();
    }
    let read = |d: &Path| std::fs::read_to_string(d.join("jwks.json")).unwrap();
    let server = jwks_server(read(&first)).await;
    let keys =
        KeySource::from_url(&server.url, Duration::from_secs(300), Duration::ZERO, false).await.unwrap();
    let validator = Validator::new(keys, requirements(), 16);
    let now = registry_token::app::system_clock()();

    *server.document.lock().unwrap() = "upstream unavailable".into();
    let rotated = token(&second, 600, now);
    assert_eq!(validator.validate(&rotated, now).await.unwrap_err(), AuthError::KeysUnavailable);
    assert_eq!(validator.validate(&token(&first, 600, now), now).await.unwrap().caller.subject, "alice");

    *server.document.lock().unwrap() = read(&second);
    assert_eq!(validator.validate(&rotated, now).await.unwrap().caller.subject, "alice");
    let refused = validator.validate(&token(&made_up, 600, now), now).await.unwrap_err();
    assert!(matches!(refused, AuthError::UnknownKey(_)), "{refused}");
}

#[tokio::test]
async fn an_oversized_or_empty_jwks_is_refused() {
    let huge = format!("{{\"keys\": [], \"padding\": \"{}\"}}", "x".repeat(2 * 1024 * 1024));
    let server = jwks_server(huge).await;
    let keys = KeySource::from_url(&server.url, Duration::from_secs(300), Duration::from_secs(30), false)
        .await
        .unwrap();
    assert!(!keys.is_ready(), "a 2 MiB document is not read");

    let error = registry_token::authority::KeySet::from_json(
        br#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#,
        "test",
    )
    .unwrap_err();
    assert!(error.to_string().contains("no usable signature keys"), "{error}");
}

#[tokio::test]
async fn a_cached_validation_ends_at_the_tokens_exp() {
    let dir = tempfile::tempdir().unwrap();
    dev_authority::init(dir.path(), ISSUER).unwrap();
    let keys = KeySource::from_file(&dir.path().join("jwks.json")).unwrap();
    let validator = Validator::new(keys, requirements(), 16);
    let issued = 1_900_000_000;
    let short = token(dir.path(), 60, issued);

    let first = validator.validate(&short, issued).await.unwrap();
    let again = validator.validate(&short, issued + 30).await.unwrap();
    assert!(Arc::ptr_eq(&first, &again), "the second validation came from the cache");
    assert_eq!(validator.validate(&short, issued + 60).await.unwrap_err(), AuthError::Expired);
    assert_eq!(validator.validate(&short, issued + 3600).await.unwrap_err(), AuthError::Expired);

    // Bounded: far more tokens than entries, all still validated correctly.
    for i in 0..100 {
        let t = token(dir.path(), 600, issued + i);
        assert_eq!(validator.validate(&t, issued + i).await.unwrap().expires_at, issued + i + 600);
    }
}

/// An Authority may publish one key under one `kid` for two algorithms. Listed PS256 first, an
/// RS256 token still verifies with the RS256 entry (it was refused for the first entry's
/// algorithm); a PS256 token is checked against the PS256 entry.
#[tokio::test]
async fn a_kid_published_for_two_algorithms_verifies_with_the_tokens_own() {
    let (dir, mut rs256) = authority_and_its_key();
    rs256["alg"] = "RS256".into();
    let mut ps256 = rs256.clone();
    ps256["alg"] = "PS256".into();
    let document = serde_json::json!({ "keys": [ps256, rs256] }).to_string();
    let keys = KeySource::from_json(document.as_bytes(), "two algorithms").unwrap();
    let validator = Validator::new(keys, requirements(), 16);
    let now = 1_900_000_000;
    let validated = validator.validate(&token(dir.path(), 600, now), now).await;
    assert_eq!(validated.unwrap().caller.subject, "alice");
    // The same signature presented as PS256 meets the PS256 entry, and fails as a PS256 one.
    let rs = token(dir.path(), 600, now + 1);
    let header = data_encoding::BASE64URL_NOPAD.decode(rs.split('.').next().unwrap().as_bytes()).unwrap();
    let mut header: serde_json::Value = serde_json::from_slice(&header).unwrap();
    header["alg"] = "PS256".into();
    let header = data_encoding::BASE64URL_NOPAD.encode(header.to_string().as_bytes());
    let forged = format!("{header}.{}", rs.split_once('.').unwrap().1);
    assert_eq!(validator.validate(&forged, now).await.unwrap_err(), AuthError::BadSignature);
}

/// RFC 7517 makes `kid` optional: an Authority publishing its one key without one still has its
/// tokens (which name a `kid`) verified with it. Two keys without `kid`s cannot be told apart:
/// refused as an unknown key, never tried one after the other.
#[tokio::test]
async fn a_jwks_of_one_key_without_a_kid_verifies_tokens_that_name_one() {
    let (dir, mut unnamed) = authority_and_its_key();
    unnamed.as_object_mut().unwrap().remove("kid");
    let now = 1_900_000_000;
    let token = token(dir.path(), 600, now);
    let document = serde_json::json!({ "keys": [unnamed] }).to_string();
    let validator =
        Validator::new(KeySource::from_json(document.as_bytes(), "no kid").unwrap(), requirements(), 16);
    assert_eq!(validator.validate(&token, now).await.unwrap().caller.subject, "alice");

    let (_other, mut second) = authority_and_its_key();
    second.as_object_mut().unwrap().remove("kid");
    let document = serde_json::json!({ "keys": [unnamed, second] }).to_string();
    let validator =
        Validator::new(KeySource::from_json(document.as_bytes(), "two").unwrap(), requirements(), 16);
    assert!(matches!(validator.validate(&token, now).await, Err(AuthError::UnknownKey(_))));
}

/// An Authority whose one key names no `kid` rotates it: the first token signed with the new key
/// (its header names a `kid` the old key only stood in for) fails against the cached key, and one
/// refetch picks the new key up, as an unknown `kid` would — not a 401 until the next refresh.
#[tokio::test]
async fn a_rotated_key_without_a_kid_is_picked_up_on_its_first_use() {
    let (first, mut old) = authority_and_its_key();
    let (second, mut new) = authority_and_its_key();
    old.as_object_mut().unwrap().remove("kid");
    new.as_object_mut().unwrap().remove("kid");
    let server = jwks_server(serde_json::json!({ "keys": [old] }).to_string()).await;
    let keys =
        KeySource::from_url(&server.url, Duration::from_secs(300), Duration::ZERO, false).await.unwrap();
    let validator = Validator::new(keys, requirements(), 0);
    let now = registry_token::app::system_clock()();
    assert_eq!(
        validator.validate(&token(first.path(), 600, now), now).await.unwrap().caller.subject,
        "alice"
    );
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);

    *server.document.lock().unwrap() = serde_json::json!({ "keys": [new] }).to_string();
    let rotated = validator.validate(&token(second.path(), 600, now), now).await;
    assert_eq!(rotated.unwrap().caller.subject, "alice");
    assert_eq!(server.hits.load(Ordering::SeqCst), 2, "exactly one refetch");
    // A token the new key did not sign is still refused (after at most that one refetch).
    let forged = token(first.path(), 600, now + 1);
    assert_eq!(validator.validate(&forged, now).await.unwrap_err(), AuthError::BadSignature);
}

/// Authorities differ in how they write a token's scopes: `scope` as RFC 8693's space-separated
/// string, or as an array (IdentityServer); `scp` as either. The required scope is found in each.
#[tokio::test]
async fn scopes_as_a_string_or_an_array_are_read_alike() {
    let dir = tempfile::tempdir().unwrap();
    dev_authority::init(dir.path(), ISSUER).unwrap();
    let keys = KeySource::from_json(&std::fs::read(dir.path().join("jwks.json")).unwrap(), "dev").unwrap();
    let validator = Validator::new(keys, requirements(), 0);
    let now = 1_900_000_000;
    let with = |claim: &str, scopes: serde_json::Value| {
        let mut extra = Map::new();
        extra.insert(claim.into(), scopes);
        if claim == "scp" {
            extra.insert("scope".into(), serde_json::Value::Null);
        }
        let request = TokenRequest {
            subject: "alice".into(),
            plan: None,
            license: None,
            tenant: None,
            scope: String::new(),
            audience: "registry-token".into(),
            client_id: "tests".into(),
            ttl_seconds: 600,
            extra,
        };
        dev_authority::token(dir.path(), &request, now).unwrap()
    };
    for (claim, scopes) in [
        ("scope", serde_json::json!("openid registry.token.issue")),
        ("scope", serde_json::json!(["openid", "registry.token.issue"])),
        ("scp", serde_json::json!(["openid", "registry.token.issue"])),
        ("scp", serde_json::json!("openid registry.token.issue")),
    ] {
        let validated = validator.validate(&with(claim, scopes.clone()), now).await;
        let caller = validated.unwrap_or_else(|e| panic!("{claim} {scopes}: {e}")).caller.clone();
        assert_eq!(caller.scopes, ["openid", "registry.token.issue"], "{claim} {scopes}");
    }
    let without = validator.validate(&with("scope", serde_json::json!(["openid"])), now).await;
    assert!(matches!(without, Err(AuthError::MissingScope(_))), "{without:?}");
}

/// An operator revokes a licence and reloads while the Authority is down: the reload applies, and
/// the keys fetched before the outage keep validating callers (a reload with the same `jwks_url`
/// keeps its keys instead of starting again from none) — also when it changes how often they are
/// refreshed.
#[tokio::test]
async fn a_reload_during_an_authority_outage_keeps_the_keys_it_has() {
    use axum::http::StatusCode;
    let server = jwks_server(String::new()).await;
    let url = server.url.clone();
    let mut fixture = common::Fixture::with(|config| {
        config.authority.jwks_file = None;
        config.authority.jwks_url = Some(url);
    });
    *server.document.lock().unwrap() =
        std::fs::read_to_string(fixture.root().join("authority/jwks.json")).unwrap();
    let service = fixture.service().await;
    let router = registry_token::http::router(service.clone());
    let token = fixture.token(|_| {});
    let uri = common::query(common::SERVICE, &["repository:team/app:pull"]);
    assert_eq!(common::get_basic(&router, &uri, &token).await.status, StatusCode::OK);
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);

    *server.document.lock().unwrap() = "upstream unavailable".into();
    let revoked = test_support::plans_revoking(&["LIC-0002", "LIC-0001"]);
    std::fs::write(fixture.root().join("plans.yaml"), revoked).unwrap();
    service.reload().await.unwrap();

    let reply = common::get_basic(&router, &uri, &token).await;
    assert_eq!(
        reply.status,
        StatusCode::FORBIDDEN,
        "the reload applied and the caller validated: {}",
        reply.body
    );
    assert_eq!(reply.code(), "DENIED");
    assert!(service.live().is_ready(), "keys still loaded");
    assert_eq!(server.hits.load(Ordering::SeqCst), 1, "the reload did not refetch");

    // New refresh intervals for the same URL are fetched with, and during the outage the reload
    // still applies (here: the licences allowed again) and keeps the keys.
    std::fs::write(fixture.root().join("plans.yaml"), test_support::PLANS).unwrap();
    fixture.reconfigure(|config| config.authority.jwks_refresh_seconds = Some(120));
    service.reload().await.unwrap();
    let reply = common::get_basic(&router, &uri, &token).await;
    assert_eq!(reply.status, StatusCode::OK, "the reload applied with the keys it had: {}", reply.body);
    assert_eq!(service.live().config.authority.jwks_refresh_seconds, 120);
    assert_eq!(server.hits.load(Ordering::SeqCst), 2, "the new intervals were fetched with, once");

    // The keys kept are refreshed at the old intervals: the next reload, once the Authority
    // answers, fetches with the new ones (before, it took them for the source in use, which then
    // ran at the old intervals until a restart).
    *server.document.lock().unwrap() =
        std::fs::read_to_string(fixture.root().join("authority/jwks.json")).unwrap();
    service.reload().await.unwrap();
    assert_eq!(server.hits.load(Ordering::SeqCst), 3, "the new intervals are fetched with");
    service.reload().await.unwrap();
    assert_eq!(server.hits.load(Ordering::SeqCst), 3, "and then kept");
}

/// While the Authority's keys cannot be had, an administrator's request is a 503 to retry (as a
/// caller's is), not a 401 that calls its token bad.
#[tokio::test]
async fn the_admin_api_answers_503_while_the_authority_keys_are_unavailable() {
    use axum::http::StatusCode;
    let server = jwks_server("upstream unavailable".into()).await;
    let url = server.url.clone();
    let fixture = common::Fixture::with(|config| {
        config.authority.jwks_file = None;
        config.authority.jwks_url = Some(url);
    });
    let service = fixture.service().await;
    let admin = registry_token::http::admin_router(service.clone());
    let token = fixture.token(|r| r.scope = "registry.admin".into());
    let reply = common::get_bearer(&admin, "/admin/v1/events", &token).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{}", reply.body);
    assert_eq!(reply.body["error"], "unavailable", "{}", reply.body);
    assert!(reply.body["message"].as_str().unwrap().contains("keys are unavailable"), "{}", reply.body);
    assert!(reply.headers.get("www-authenticate").is_none(), "no challenge: the token is not at fault");
}

/// An operator moves `jwks_url` to an Authority that does not answer (a typo, a host not up yet)
/// and reloads: the reload fails and says why, and the keys in use keep validating callers. The
/// same reload once the new URL answers is applied, and its keys are the ones used.
#[tokio::test]
async fn a_reload_to_a_jwks_url_that_does_not_answer_fails_and_keeps_the_keys_in_use() {
    use axum::http::StatusCode;
    let old = jwks_server(String::new()).await;
    let url = old.url.clone();
    let mut fixture = common::Fixture::with(|config| {
        config.authority.jwks_file = None;
        config.authority.jwks_url = Some(url);
    });
    let jwks = std::fs::read_to_string(fixture.root().join("authority/jwks.json")).unwrap();
    *old.document.lock().unwrap() = jwks.clone();
    let service = fixture.service().await;
    let router = registry_token::http::router(service.clone());
    let token = fixture.token(|_| {});
    let uri = common::query(common::SERVICE, &["repository:team/app:pull"]);
    assert_eq!(common::get_basic(&router, &uri, &token).await.status, StatusCode::OK);

    let new = jwks_server("upstream unavailable".into()).await;
    let new_url = new.url.clone();
    fixture.reconfigure(|config| config.authority.jwks_url = Some(new_url));
    let error = service.reload().await.expect_err("a reload to keys that cannot be fetched");
    assert!(error.to_string().contains(&new.url), "the error names the URL: {error}");
    assert_eq!(new.hits.load(Ordering::SeqCst), 1);
    let reply = common::get_basic(&router, &uri, &token).await;
    assert_eq!(reply.status, StatusCode::OK, "the keys in use still validate: {}", reply.body);
    assert!(service.live().is_ready());

    *new.document.lock().unwrap() = jwks;
    service.reload().await.unwrap();
    let before = old.hits.load(Ordering::SeqCst);
    let fresh = fixture.token(|request| request.subject = "bob".into());
    assert_eq!(common::get_basic(&router, &uri, &fresh).await.status, StatusCode::OK);
    assert_eq!(new.hits.load(Ordering::SeqCst), 2, "the applied reload fetched from the new URL");
    assert_eq!(old.hits.load(Ordering::SeqCst), before, "and the old URL is no longer asked");
}
