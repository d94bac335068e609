//! The token endpoint through the real router: every branch of the Docker token exchange and its
//! OAuth2 form, asserting what a client sees (status, headers, body, the token's claims).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::*;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use registry_token::mint::{SigningAlgorithm, SigningKey};

#[tokio::test]
async fn basic_and_bearer_both_carry_the_authority_token() {
    let fixture = Fixture::new();
    let router = fixture.router().await;
    let token = fixture.token(|_| {});
    let uri = query(SERVICE, &["repository:team/app:pull,push"]);
    for reply in [get_basic(&router, &uri, &token).await, get_bearer(&router, &uri, &token).await] {
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        let minted = reply.body["token"].as_str().unwrap();
        assert_eq!(reply.body["access_token"], reply.body["token"]);
        assert_eq!(access(minted), ["repository:team/app:pull,push"]);
        assert!(reply.body.get("refresh_token").is_none());
        assert_eq!(reply.headers["cache-control"], "no-store");
    }
}

#[tokio::test]
async fn minted_tokens_have_the_claims_and_types_the_registry_checks() {
    let fixture = Fixture::new();
    let router = fixture.router().await;
    let reply =
        get_basic(&router, &query(SERVICE, &["repository:team/app:pull"]), &fixture.token(|_| {})).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body["expires_in"].is_u64(), "an integer, not 300.0: {}", reply.body);
    assert_eq!(reply.body["expires_in"], 300);
    let issued_at = reply.body["issued_at"].as_str().unwrap();
    assert!(issued_at.ends_with('Z') && issued_at.contains('T') && issued_at.len() == 20, "{issued_at}");

    let minted = reply.body["token"].as_str().unwrap();
    let (header, claims) = decode(minted);
    assert_eq!(header["typ"], "JWT");
    assert_eq!(header["alg"], "RS256");
    let key =
        SigningKey::from_file(&fixture.root().join("keys/signing-key.pem"), SigningAlgorithm::RS256).unwrap();
    assert_eq!(header["kid"], key.libtrust_kid());
    assert_eq!(header["x5c"].as_array().unwrap().len(), 1, "the configured certificate");

    assert_eq!(claims["iss"], "registry-token");
    assert_eq!(claims["sub"], "alice");
    assert!(claims["aud"].is_string(), "2.8.2 refuses an array: {}", claims["aud"]);
    assert_eq!(claims["aud"], SERVICE);
    for name in ["exp", "nbf", "iat"] {
        assert!(claims[name].is_u64(), "{name} must be an integer: {}", claims[name]);
    }
    assert_eq!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(), 300);
    assert_eq!(
        claims["jti"].as_str().unwrap().len(),
        22,
        "16 bytes (the millisecond and 80 random bits), base64url"
    );

    // The signature verifies with the public key of the certificate's key.
    let public = pem::encode(&pem::Pem::new("PUBLIC KEY", key.spki_der().to_vec()));
    let decoding = jsonwebtoken::DecodingKey::from_rsa_pem(public.as_bytes()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[SERVICE]);
    validation.set_issuer(&["registry-token"]);
    jsonwebtoken::decode::<serde_json::Value>(minted, &decoding, &validation).unwrap();

    // Two tokens never share a jti.
    let again =
        get_basic(&router, &query(SERVICE, &["repository:team/app:pull"]), &fixture.token(|_| {})).await;
    let (_, again) = decode(again.body["token"].as_str().unwrap());
    assert_ne!(again["jti"], claims["jti"]);
}

#[tokio::test]
async fn a_registry_token_ends_by_the_caller_tokens_exp_plus_the_leeway() {
    let fixture = Fixture::new();
    let router = fixture.router().await;
    // Expires in 20 s; validation tolerates 30 s of skew past that, and so does the registry token.
    let short = fixture.token(|t| t.ttl_seconds = 20);
    let (_, caller) = decode(&short);
    let caller_exp = caller["exp"].as_u64().unwrap();
    for reply in [
        get_basic(&router, &query(SERVICE, &["repository:team/app:pull"]), &short).await,
        post_form(&router, &format!("grant_type=refresh_token&refresh_token={short}&service={SERVICE}"))
            .await,
    ] {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        let (_, claims) = decode(reply.body["access_token"].as_str().unwrap());
        assert_eq!(claims["exp"].as_u64().unwrap(), caller_exp + 30, "capped at the caller's exp + leeway");
        let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
        assert!(lifetime <= 50, "{lifetime}");
        assert_eq!(reply.body["expires_in"], lifetime, "expires_in says the same");
    }
}

#[tokio::test]
async fn no_credentials_is_a_401_that_asks_for_basic() {
    let fixture = Fixture::new();
    let router = fixture.router().await;
    let reply = send(
        &router,
        Request::get(query(SERVICE, &["repository:team/app:pull"])).body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.headers["www-authenticate"], "Basic realm=\"registry-token\"");
    assert_eq!(reply.code(), "UNAUTHORIZED");
    assert!(reply.message().contains("authentication required"), "{}", reply.message());

    for (header, message) in [
        ("Basic !!!", "not base64"),
        ("Basic YWxpY2U6", "password must be an Authority access token"),
        ("Digest abc", "use Basic or Bearer"),
    ] {
        let request =
            Request::get(query(SERVICE, &[])).header("authorization", header).body(Body::empty()).unwrap();
        let reply = send(&router, request).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{header}");
        assert!(reply.message().contains(message), "{header}: {}", reply.message());
    }
}

#[tokio::test]
async fn bad_caller_tokens_are_401_saying_which_check_failed() {
    let fixture = Fixture::new();
    let router = fixture.router().await;
    let cases: Vec<(String, &str)> = vec![
        (fixture.token(|t| t.ttl_seconds = -120), "expired"),
        (
            fixture.token(|t| t.audience = "someone-else".into()),
            "audience [\"someone-else\"] is not accepted",
        ),
        (fixture.token(|t| t.scope = "openid profile".into()), "lacks the scope registry.token.issue"),
        (
            fixture.token(|t| {
                t.extra.insert("iss".into(), "https://evil.test".into());
            }),
            "issuer \"https://evil.test\"",
        ),
        ("not-a-jwt".to_owned(), "malformed"),
    ];
    for (token, message) in cases {
        let reply = get_basic(&router, &query(SERVICE, &["repository:team/app:pull"]), &token).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{message}");
        assert_eq!(reply.code(), "UNAUTHORIZED");
        assert!(reply.message().contains(message), "expected {message:?} in {:?}", reply.message());
        assert!(reply.body.get("token").is_none());
    }
}

#[tokio::test]
async fn the_service_must_be_a_configured_one() {
    let fixture = Fixture::new();
    let router = fixture.router().await;
    let token = fixture.token(|_| {});
    let reply = get_basic(&router, &query("registry.elsewhere", &[]), &token).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.message().contains("\"registry.elsewhere\" is not one"), "{}", reply.message());
    let reply = get_basic(&router, "/token?scope=repository:team/app:pull", &token).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.message().contains("service is required"));

    // Each configured service is the audience of its tokens.
    let reply = get_basic(&router, &query("other.test", &[]), &token).await;
    let (_, claims) = decode(reply.body["token"].as_str().unwrap());
    assert_eq!(claims["aud"], "other.test");
}

#[tokio::test]
async fn malformed_scopes_are_400_naming_the_scope() {
    let fixture = Fixture::new();
    let router = fixture.router().await;
    let token = fixture.token(|_| {});
    for (scope, problem) in [
        ("repository:Team/app:pull", "\"repository:Team/app:pull\""),
        ("repository:team/app", "expected type:name:actions"),
        ("repository:team/app:pu$h", "action \"pu$h\""),
    ] {
        let reply = get_basic(&router, &query(SERVICE, &[scope]), &token).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{scope}");
        assert!(reply.message().contains(problem), "{scope}: {}", reply.message());
    }
}

#[tokio::test]
async fn repeated_and_space_separated_scopes_are_merged() {
    let fixture = Fixture::new();
    let router = fixture.router().await;
    let token = fixture.token(|_| {});
    let uri = query(
        SERVICE,
        &[
            "repository:team/copy:pull,push",
            "repository:team/app:pull repository:acme/x:delete",
            "repository:team/app:push",
        ],
    );
    let reply = get_basic(&router, &uri, &token).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        access(reply.body["token"].as_str().unwrap()),
        ["repository:team/copy:pull,push", "repository:team/app:pull,push", "repository:acme/x:delete"]
    );
}

#[tokio::test]
async fn names_with_a_registry_port_keep_it() {
    let fixture = Fixture::new();
    let router = fixture.router().await;
    let token = fixture.token(|t| t.plan = Some("admin".into()));
    let reply =
        get_basic(&router, &query(SERVICE, &["repository:localhost:5000/a/b:pull,push"]), &token).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(access(reply.body["token"].as_str().unwrap()), ["repository:localhost:5000/a/b:pull,push"]);
}

#[tokio::test]
async fn login_without_scope_gets_a_token_with_empty_access() {
    let fixture = Fixture::new();
    let router = fixture.router().await;
    let token = fixture.token(|_| {});
    let uri = format!("{}&client_id=docker&offline_token=true&account=alice", query(SERVICE, &[]));
    let reply = get_basic(&router, &uri, &token).await;
    assert_eq!(reply.status, StatusCode::OK);
    let (_, claims) = decode(reply.body["token"].as_str().unwrap());
    assert_eq!(claims["access"], serde_json::json!([]));
    // Without a ledger there are no refresh tokens, and the Authority token is never handed back
    // as one (tests/refresh_tokens.rs has them with a ledger).
    assert!(reply.body.get("refresh_token").is_none(), "{}", reply.body);
}

#[tokio::test]
async fn a_partial_grant_is_not_an_error() {
    let fixture = Fixture::new();
    let router = fixture.router().await;
    let token = fixture.token(|t| t.plan = Some("readonly".into()));
    let reply = get_basic(
        &router,
        &query(SERVICE, &["repository:team/app:pull,push", "repository:x/y:pull"]),
        &token,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(access(reply.body["token"].as_str().unwrap()), ["repository:team/app:pull"]);
}

#[tokio::test]
async fn a_revoked_licence_is_403_with_the_policy_message() {
    let fixture = Fixture::new();
    let router = fixture.router().await;
    let token = fixture.token(|t| t.license = Some("LIC-0002".into()));
    let reply = get_basic(&router, &query(SERVICE, &["repository:team/app:pull"]), &token).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.code(), "DENIED");
    assert!(reply.message().contains("licence LIC-0002 has been revoked"), "{}", reply.message());
    assert!(reply.body.get("token").is_none());
}

#[tokio::test]
async fn denials_can_be_401_for_clients_that_only_print_401_bodies() {
    let fixture = Fixture::with(|config| {
        config.http.denial_status = Some(401);
    });
    let router = fixture.router().await;
    let token = fixture.token(|t| t.license = Some("LIC-0002".into()));
    let reply = get_basic(&router, &query(SERVICE, &["repository:team/app:pull"]), &token).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.code(), "DENIED");
    assert_eq!(reply.headers["www-authenticate"], "Basic realm=\"registry-token\"");
    assert!(reply.message().contains("licence LIC-0002 has been revoked"), "{}", reply.message());
}

/// Clients that stored an Authority token as their refresh token (before refresh tokens existed)
/// keep working; it is never handed back as one.
#[tokio::test]
async fn post_refresh_token_grant_still_takes_an_authority_token() {
    let fixture = Fixture::new();
    let router = fixture.router().await;
    let token = fixture.token(|_| {});
    let form = form_urlencoded_pairs(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", &token),
        ("service", SERVICE),
        ("scope", "repository:team/app:pull,push repository:other/x:pull"),
        ("client_id", "docker"),
    ]);
    let reply = post_form(&router, &form).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["scope"], "repository:team/app:pull,push");
    assert!(reply.body.get("refresh_token").is_none(), "{}", reply.body);
    assert!(reply.body["expires_in"].is_u64());
    assert!(reply.body["issued_at"].is_string());
    assert_eq!(access(reply.body["access_token"].as_str().unwrap()), ["repository:team/app:pull,push"]);
}

#[tokio::test]
async fn post_password_grant_as_containerd_sends_it() {
    let fixture = Fixture::new();
    let router = fixture.router().await;
    let token = fixture.token(|_| {});
    let form = form_urlencoded_pairs(&[
        ("grant_type", "password"),
        ("username", "alice"),
        ("password", &token),
        ("scope", "repository:team/a:pull repository:team/b:pull,push"),
        ("service", SERVICE),
        ("client_id", "containerd-client"),
    ]);
    let reply = post_form(&router, &form).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["scope"], "repository:team/a:pull repository:team/b:pull,push");
    assert!(reply.body.get("refresh_token").is_none(), "no access_type=offline");

    // Without a ledger, no refresh token even offline; never the Authority token itself.
    let offline = format!("{form}&access_type=offline");
    let reply = post_form(&router, &offline).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert!(reply.body.get("refresh_token").is_none(), "{}", reply.body);
}

#[tokio::test]
async fn post_errors_speak_oauth2_too() {
    let fixture = Fixture::new();
    let router = fixture.router().await;
    let reply = post_form(&router, "grant_type=client_credentials&service=registry.test").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.body["error"], "unsupported_grant_type");
    assert_eq!(reply.code(), "UNSUPPORTED");

    let reply = post_form(&router, "service=registry.test").await;
    assert_eq!(
        (reply.status, reply.body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );

    let reply = post_form(&router, "grant_type=refresh_token&refresh_token=junk&service=registry.test").await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.body["error"], "invalid_grant");

    let request =
        Request::post("/token").header("content-type", "application/json").body(Body::from("{}")).unwrap();
    assert_eq!(send(&router, request).await.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_policy_fault_is_503_and_never_a_token() {
    let fixture = Fixture::with(|config| {
        config.policy.module = Some(test_support::HOSTILE_GUEST_WASM.into());
        config.policy.settings_file = None;
    });
    let router = fixture.router().await;
    let token = fixture.token(|_| {});
    for name in [
        "hostile/panic",
        "hostile/loop",
        "hostile/sleep",
        "hostile/bomb",
        "hostile/overgrant",
        "hostile/huge-message",
    ] {
        let reply = get_basic(&router, &query(SERVICE, &[&format!("repository:{name}:pull")]), &token).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{name}");
        assert_eq!(reply.code(), "UNAVAILABLE");
        assert_eq!(reply.message(), "the authorization policy failed; no token was issued");
        assert!(reply.body.get("token").is_none() && reply.body.get("access_token").is_none());
        // And the next, well-behaved request is served.
        let ok = get_basic(&router, &query(SERVICE, &["repository:team/app:pull"]), &token).await;
        assert_eq!(ok.status, StatusCode::OK, "after {name}");
    }
}

#[tokio::test]
async fn health_probes_and_unknown_routes() {
    let fixture = Fixture::new();
    let router = fixture.router().await;
    let reply = send(&router, Request::get("/healthz").body(Body::empty()).unwrap()).await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = send(&router, Request::get("/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["ready"], true);
    assert!(reply.body["policy"]["digest"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(reply.body["policy"]["module"], "builtin:plan-catalogue");

    let reply = send(&router, Request::put("/token").body(Body::empty()).unwrap()).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.headers["allow"], "GET, POST");
    assert_eq!(reply.code(), "UNSUPPORTED");
    let reply = send(&router, Request::get("/v2/").body(Body::empty()).unwrap()).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(reply.message().contains("/token"));
}

/// Fixed keys whose kids were computed with openssl (tests/fixtures/README.md).
#[test]
fn kid_vectors() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    let read = |name: &str| std::fs::read(fixtures.join(name)).unwrap();
    for (file, algorithm, libtrust, thumbprint) in [
        (
            "test-signing-key.pem",
            SigningAlgorithm::RS256,
            "GPY4:MG6F:WM5M:ZGX5:EEUD:QNZU:EWJD:E5GS:FL6T:SQW5:7VP2:TUGO",
            "930LJyA1IGB4dn35-pUpR-7XxEb5eh-wFG_jio_qqO0",
        ),
        (
            "test-signing-key-pkcs1.pem",
            SigningAlgorithm::RS256,
            "GPY4:MG6F:WM5M:ZGX5:EEUD:QNZU:EWJD:E5GS:FL6T:SQW5:7VP2:TUGO",
            "930LJyA1IGB4dn35-pUpR-7XxEb5eh-wFG_jio_qqO0",
        ),
        (
            "test-signing-key-p256.pem",
            SigningAlgorithm::ES256,
            "XDBT:TGUV:NMW2:LUN5:SF4G:M6U3:XCYP:MXW6:6RQI:2REG:LTAF:W653",
            "_388QcDe_Czyr2JcE3lYXgqjIv2VO5ZLqL42lj5_6Ko",
        ),
    ] {
        let key = SigningKey::from_pem(&read(file), algorithm, file).unwrap();
        assert_eq!(key.libtrust_kid(), libtrust, "{file}");
        assert_eq!(key.thumbprint_kid(), thumbprint, "{file}");
    }
    // The wrong algorithm for a key is refused with a reason.
    let error = SigningKey::from_pem(&read("test-signing-key-p256.pem"), SigningAlgorithm::RS256, "p256")
        .unwrap_err();
    assert!(error.to_string().contains("not an RSA key"), "{error}");
}

#[tokio::test]
async fn thumbprint_kids_and_es256_are_configurable() {
    let fixture = Fixture::with(|config| {
        config.signing.kid_format = Some("thumbprint".into());
    });
    let router = fixture.router().await;
    let reply = get_basic(&router, &query(SERVICE, &[]), &fixture.token(|_| {})).await;
    let (header, _) = decode(reply.body["token"].as_str().unwrap());
    let key =
        SigningKey::from_file(&fixture.root().join("keys/signing-key.pem"), SigningAlgorithm::RS256).unwrap();
    assert_eq!(header["kid"], key.thumbprint_kid());

    let mut fixture = Fixture::new();
    let es_dir = fixture.root().join("es256");
    registry_token::mint::keygen::generate(&es_dir, SigningAlgorithm::ES256, 2048).unwrap();
    fixture.reconfigure(|config| {
        config.signing.algorithm = Some("ES256".into());
        config.signing.key_file = es_dir.join("signing-key.pem");
        config.signing.cert_file = None;
    });
    let router = fixture.router().await;
    let reply =
        get_basic(&router, &query(SERVICE, &["repository:team/app:pull"]), &fixture.token(|_| {})).await;
    assert_eq!(reply.status, StatusCode::OK);
    let (header, _) = decode(reply.body["token"].as_str().unwrap());
    assert_eq!(header["alg"], "ES256");
    assert!(header.get("x5c").is_none());
}

/// A request body that fails while it is read (a client that resets mid-body).
struct BrokenBody;

impl http_body::Body for BrokenBody {
    type Data = axum::body::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::task::Poll::Ready(Some(Err(std::io::Error::other("connection reset mid-body"))))
    }
}

#[tokio::test]
async fn a_body_that_cannot_be_read_is_a_400_not_a_413() {
    let fixture = Fixture::new();
    let router = fixture.router().await;
    let request = Request::post("/token")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::new(BrokenBody))
        .unwrap();
    let reply = send(&router, request).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
    assert!(reply.message().contains("the request body could not be read"), "{}", reply.body);
    assert!(!reply.message().contains("larger than"), "{}", reply.body);
    assert_eq!(reply.body["error"], "invalid_request", "in the OAuth2 form: {}", reply.body);

    // A media type is case-insensitive, and may carry parameters; another type is refused.
    let form = format!("grant_type=password&service={SERVICE}&password={}", fixture.token(|_| {}));
    for (content_type, status) in [
        ("Application/X-WWW-Form-URLEncoded", StatusCode::OK),
        ("application/x-www-form-urlencoded; charset=utf-8", StatusCode::OK),
        ("application/x-www-form-urlencodedx", StatusCode::BAD_REQUEST),
        ("application/json", StatusCode::BAD_REQUEST),
    ] {
        let request = Request::post("/token")
            .header("content-type", content_type)
            .body(Body::from(form.clone()))
            .unwrap();
        let reply = send(&router, request).await;
        assert_eq!(reply.status, status, "{content_type}: {}", reply.body);
    }

    // A body over the limit is still the 413 it was.
    let limit = fixture.config().http.max_body_bytes;
    let form = format!("grant_type=password&password={}", "x".repeat(limit + 1));
    let reply = post_form(&router, &form).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", reply.body);
    assert!(reply.message().contains(&format!("larger than {limit} bytes")), "{}", reply.body);
}

/// A client that hangs up while its exchange is under way (here: a policy that takes its whole
/// 1 s deadline) does not take the exchange's event with it: the exchange runs to its end and is
/// recorded.
#[tokio::test]
async fn an_exchange_whose_client_hangs_up_is_still_recorded() {
    use tower::ServiceExt;
    let world = LedgerWorld::new(|config| {
        config.policy.module = Some(test_support::HOSTILE_GUEST_WASM.into());
        config.policy.timeout_ms = Some(1000);
    })
    .await;
    let asked = "repository:hostile/sleep:pull";
    let request = Request::get(query(SERVICE, &[asked]))
        .header("authorization", format!("Bearer {}", world.fixture.token(|_| {})))
        .body(Body::empty())
        .unwrap();
    let hung_up =
        tokio::time::timeout(std::time::Duration::from_millis(200), world.router.clone().oneshot(request))
            .await;
    assert!(hung_up.is_err(), "the policy answered within 200 ms");

    let since = std::time::Instant::now();
    loop {
        let events = world.events().await;
        if let Some(event) = events.iter().find(|e| e.requested == [asked]) {
            assert_eq!(event.outcome, registry_token::ledger::Outcome::Fault, "{event:?}");
            assert_eq!(event.reason.as_deref(), Some("deadline"), "{event:?}");
            break;
        }
        assert!(since.elapsed().as_secs() < 10, "no event for the exchange whose client hung up: {events:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
