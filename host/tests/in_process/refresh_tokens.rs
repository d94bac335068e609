//! Refresh tokens through the real router and a real SQLite ledger, on a clock the tests move:
//! issued to `docker login`, presented long after the Authority token expired, bound to their
//! service and client, expiring absolutely and when idle, stopped by every kind of revocation,
//! decided afresh by the live policy on every use, stored only as hashes, and refusing every
//! hostile imitation with a 401 and nothing minted. (The real clients — skopeo, the Docker engine,
//! containerd's ctr — are `tests/e2e/refresh.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::*;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use registry_token::ledger::{Event, Millis, Outcome, Revocation, RevocationKind};
use serde_json::{Value, json};
use std::sync::Arc;
use test_support::RefreshTokens;

const DAY: u64 = 86_400;
const PULL: &str = "repository:team/app:pull";

/// A service with a ledger, refresh tokens of `lifetime_days` and `idle_days`, on its own clock.
struct World(LedgerWorld);

impl std::ops::Deref for World {
    type Target = LedgerWorld;
    fn deref(&self) -> &LedgerWorld {
        &self.0
    }
}

impl World {
    async fn new(lifetime_days: u32, idle_days: u32) -> World {
        World(
            LedgerWorld::new(|config| {
                config.refresh_tokens = RefreshTokens {
                    lifetime_days: Some(lifetime_days),
                    idle_days: Some(idle_days),
                    ..RefreshTokens::default()
                };
            })
            .await,
        )
    }

    /// `docker login`: GET with the Authority token, `offline_token=true`, `client_id=docker`;
    /// returns the refresh token and the caller token.
    async fn login(
        &self,
        edit: impl FnOnce(&mut registry_token::dev_authority::TokenRequest),
    ) -> (String, String) {
        let caller = self.fixture.token_at(self.clock.now(), edit);
        let uri = format!("{}&client_id=docker&offline_token=true&account=alice", query(SERVICE, &[]));
        let reply = get_basic(&self.router, &uri, &caller).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply}");
        let refresh = reply.body["refresh_token"].as_str().unwrap_or_else(|| panic!("{reply}")).to_owned();
        (refresh, caller)
    }

    /// What the Docker engine sends for every pull and push after a login: the OAuth2 refresh grant.
    async fn refresh(&self, refresh_token: &str, service: &str, client_id: &str, scope: &str) -> Reply {
        let form = form_urlencoded_pairs(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("service", service),
            ("client_id", client_id),
            ("scope", scope),
        ]);
        post_form(&self.router, &form).await
    }

    async fn refresh_pull(&self, refresh_token: &str) -> Reply {
        self.refresh(refresh_token, SERVICE, "docker", PULL).await
    }

    async fn revoke(&self, kind: RevocationKind, value: &str) -> Revocation {
        self.revoke_in(kind, value, None).await
    }

    /// A revocation confined to `tenant`'s callers, written to the ledger directly.
    async fn revoke_in(&self, kind: RevocationKind, value: &str, tenant: Option<&str>) -> Revocation {
        let revocation = Revocation {
            id: uuid_v7(),
            kind,
            value: value.to_owned(),
            tenant: tenant.map(str::to_owned),
            reason: "left the company".into(),
            created_at: Millis::now(),
            expires_at: None,
            created_by: "tests".into(),
            created_by_tenant: None,
        };
        let audit = Event::revocation_audit(Outcome::RevocationCreated, &revocation, "tests");
        self.ledger().revoke(&revocation, audit).await.unwrap();
        revocation
    }

    /// How many events were refused for `reason`.
    async fn refused_for(&self, reason: &str) -> usize {
        self.events().await.into_iter().filter(|e| e.reason.as_deref() == Some(reason)).count()
    }

    async fn unrevoke(&self, revocation: &Revocation) {
        let audit = Event::revocation_audit(Outcome::RevocationLifted, revocation, "tests");
        assert!(self.ledger().unrevoke(&revocation.id, audit).await.unwrap());
    }
}

fn uuid_v7() -> String {
    // Any fresh id will do; the ledger's own events use UUIDv7 too.
    Event::new(Outcome::Issued).id
}

/// A 401 of `POST /token`, in the Docker and OAuth2 forms, naming `cause`, and no token.
fn assert_refused(reply: &Reply, cause: &str) {
    assert_eq!(reply.body["error"], "invalid_grant", "{reply}");
    assert_refused_get(reply, cause);
}

/// A 401 with the Docker error body naming `cause`, and no token.
fn assert_refused_get(reply: &Reply, cause: &str) {
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{reply}");
    assert_eq!(reply.code(), "UNAUTHORIZED", "{reply}");
    assert!(reply.message().contains(cause), "expected {cause:?} in {reply}");
    assert!(reply.body.get("access_token").is_none() && reply.body.get("token").is_none(), "{reply}");
}

#[tokio::test]
async fn a_login_keeps_working_after_the_authority_token_expires_and_is_never_rotated() {
    let world = World::new(30, 7).await;
    let (refresh, caller) = world.login(|r| r.ttl_seconds = 60).await;
    assert!(refresh.starts_with("rtr_") && refresh.len() >= 4 + 43, "{refresh}");
    assert_ne!(refresh, caller, "the Authority token is never handed back as a refresh token");

    // An hour later the Authority token is long expired; the refresh token still works.
    world.clock.advance(3600);
    let expired = get_basic(&world.router, &query(SERVICE, &[PULL]), &caller).await;
    assert_eq!(expired.status, StatusCode::UNAUTHORIZED, "{expired}");
    assert!(expired.message().contains("the token has expired"), "{expired}");

    let reply =
        world.refresh(&refresh, SERVICE, "docker", "repository:team/app:pull,push repository:x/y:pull").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply}");
    assert_eq!(reply.body["refresh_token"], refresh.as_str(), "the same refresh token, never rotated");
    assert_eq!(reply.body["scope"], "repository:team/app:pull,push", "the plan still decides");
    let registry_token = reply.body["access_token"].as_str().unwrap();
    let (_, claims) = decode(registry_token);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["aud"], SERVICE);
    assert_eq!(claims["exp"].as_u64().unwrap(), world.clock.now() + 300, "a full lifetime, not the caller's");

    // The same token as a Basic password (a GET, as a client with stored credentials may send it)
    // and as the password grant with access_type=offline (containerd): the same answer.
    let uri = format!("{}&client_id=docker&offline_token=true", query(SERVICE, &[PULL]));
    let reply = get_basic(&world.router, &uri, &refresh).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply}");
    assert_eq!(reply.body["refresh_token"], refresh.as_str());
    let form = form_urlencoded_pairs(&[
        ("grant_type", "password"),
        ("username", "alice"),
        ("password", &refresh),
        ("access_type", "offline"),
        ("service", SERVICE),
        ("client_id", "docker"),
        ("scope", PULL),
    ]);
    let reply = post_form(&world.router, &form).await;
    assert_eq!(
        (reply.status, reply.body["refresh_token"].as_str()),
        (StatusCode::OK, Some(refresh.as_str()))
    );

    // Each use is an event: via refresh_token, the refresh token's id, never its text.
    let events = world.events().await;
    let login = &events[0];
    let id = login.refresh_token_id.clone().unwrap();
    assert_eq!((login.via.as_deref(), login.outcome), (Some("credential"), Outcome::Issued));
    let uses: Vec<&Event> = events.iter().filter(|e| e.via.as_deref() == Some("refresh_token")).collect();
    assert_eq!(uses.len(), 3, "{events:#?}");
    for event in &uses {
        assert_eq!(event.outcome, Outcome::Issued);
        assert_eq!(event.refresh_token_id.as_deref(), Some(id.as_str()));
        assert_eq!(event.sub.as_deref(), Some("alice"));
        assert_eq!(event.tenant.as_deref(), Some("acme"));
        assert_eq!(event.jti, login.jti, "the Authority token it was exchanged for");
    }
    let stored = world.ledger().refresh_token(&id).await.unwrap().unwrap();
    assert_eq!(stored.last_used_at, Millis::from_seconds(world.clock.now()), "each use moves last used");
    assert_eq!(stored.issued_at, Millis::from_seconds(world.clock.now() - 3600));
    assert_eq!((stored.service.as_str(), stored.client_id.as_deref()), (SERVICE, Some("docker")));
}

#[tokio::test]
async fn the_database_holds_only_the_hash_of_a_refresh_token() {
    let world = World::new(30, 7).await;
    let (refresh, _) = world.login(|_| {}).await;
    assert_eq!(world.refresh_pull(&refresh).await.status, StatusCode::OK);
    let events = world.events().await;
    let id = events[0].refresh_token_id.clone().unwrap();
    // The service closes its ledger: what is on disk is all there is.
    let World(LedgerWorld { fixture, router, app, .. }) = world;
    drop(router);
    drop(app);

    let mut database = Vec::new();
    for file in ["ledger.db", "ledger.db-wal"] {
        database.extend(std::fs::read(fixture.root().join(file)).unwrap_or_default());
    }
    let contains = |needle: &[u8]| database.windows(needle.len()).any(|w| w == needle);
    // What is recorded is found (its id, and its hash), so the silence below means something.
    let hash = {
        use sha2::Digest;
        data_encoding::HEXLOWER.encode(&sha2::Sha256::digest(refresh.as_bytes()))
    };
    assert!(contains(id.as_bytes()) && contains(hash.as_bytes()));
    assert!(!contains(refresh.as_bytes()), "the refresh token's text is in the database file");
    let random_part = &refresh["rtr_".len()..];
    assert!(!contains(random_part.as_bytes()), "its random part is in the database file");
    let decoded = data_encoding::BASE64URL_NOPAD.decode(random_part.as_bytes()).unwrap();
    assert!(!contains(&decoded), "its random bytes are in the database file");
}

#[tokio::test]
async fn a_refresh_token_expires_absolutely_and_when_idle() {
    let world = World::new(3, 1).await;
    // Used every 20 hours it never idles out, but it ends 3 days after it was issued.
    let (refresh, _) = world.login(|_| {}).await;
    for _ in 0..3 {
        world.clock.advance(20 * 3600);
        assert_eq!(world.refresh_pull(&refresh).await.status, StatusCode::OK);
    }
    world.clock.advance(12 * 3600 + 1);
    assert_refused(&world.refresh_pull(&refresh).await, "the refresh token has expired (it was valid until");

    // Unused for more than a day, a fresh one stops working, even though it is far from its end.
    let (idle, _) = world.login(|_| {}).await;
    world.clock.advance(DAY - 1);
    assert_eq!(world.refresh_pull(&idle).await.status, StatusCode::OK);
    world.clock.advance(DAY);
    assert_refused(&world.refresh_pull(&idle).await, "the refresh token has expired: unused since");

    let refused: Vec<Event> =
        world.events().await.into_iter().filter(|e| e.outcome == Outcome::Refused).collect();
    let reasons: Vec<&str> = refused.iter().map(|e| e.reason.as_deref().unwrap()).collect();
    assert_eq!(reasons, ["refresh_token_expired", "refresh_token_idle"]);
    assert!(
        refused
            .iter()
            .all(|e| e.via.as_deref() == Some("refresh_token") && e.sub.as_deref() == Some("alice"))
    );
}

/// Bound to its service; not to the `client_id` that logged in: `docker login` stores the token
/// where containerd (`containerd-client`), BuildKit (`buildkit-client`) and containers/image read
/// it too, each sending its own name, and their GET fallback sends none.
#[tokio::test]
async fn a_refresh_token_is_bound_to_its_service_and_works_for_every_client_reading_the_login() {
    let world = World::new(30, 7).await;
    let (refresh, _) = world.login(|_| {}).await;
    assert_refused(
        &world.refresh(&refresh, "other.test", "docker", PULL).await,
        "the refresh token was issued for another service (registry.test)",
    );
    for client_id in ["docker", "containerd-client", "buildkit-client", "containers/image"] {
        let reply = world.refresh(&refresh, SERVICE, client_id, PULL).await;
        assert_eq!(reply.status, StatusCode::OK, "{client_id}: {reply}");
    }
    let reply = get_basic(&world.router, &query(SERVICE, &[PULL]), &refresh).await;
    assert_eq!(reply.status, StatusCode::OK, "no client_id: {reply}");
    assert!(reply.body["token"].as_str().is_some_and(|token| !token.is_empty()), "{reply}");
}

#[tokio::test]
async fn every_kind_of_revocation_stops_a_refresh_token_at_once() {
    let world = World::new(30, 7).await;
    let (refresh, caller) = world.login(|r| r.client_id = "ci-bot".into()).await;
    let (_, caller_claims) = decode(&caller);
    let id = world.events().await[0].refresh_token_id.clone().unwrap();
    let (other, _) = world.login(|r| r.subject = "zoe".into()).await;

    for (kind, value) in [
        (RevocationKind::Subject, "alice"),
        (RevocationKind::Licence, "LIC-0001"),
        (RevocationKind::Tenant, "acme"),
        (RevocationKind::Client, "ci-bot"),
        (RevocationKind::CallerToken, caller_claims["jti"].as_str().unwrap()),
        (RevocationKind::RefreshToken, id.as_str()),
    ] {
        let revocation = world.revoke(kind, value).await;
        let reply = world.refresh_pull(&refresh).await;
        assert_refused(
            &reply,
            &format!("the refresh token was revoked: {kind} {value} has been revoked: left the company"),
        );
        if !matches!(kind, RevocationKind::Licence | RevocationKind::Tenant) {
            assert_eq!(
                world.refresh_pull(&other).await.status,
                StatusCode::OK,
                "{kind} reaches only its own"
            );
        }
        world.unrevoke(&revocation).await;
        assert_eq!(world.refresh_pull(&refresh).await.status, StatusCode::OK, "lifted: {kind}");
    }
    let revoked = world.events().await.into_iter().filter(|e| e.reason.as_deref() == Some("revoked")).count();
    assert_eq!(revoked, 6);
}

#[tokio::test]
async fn the_policy_decides_again_on_every_refresh() {
    let world = World::new(30, 7).await;
    let (refresh, _) = world.login(|_| {}).await;
    let asked = "repository:team/app:pull,push";
    let reply = world.refresh(&refresh, SERVICE, "docker", asked).await;
    assert_eq!(reply.body["scope"], asked);

    // The operator narrows plan "team" to pulls and reloads: the next refresh gets the new grant.
    let narrowed = test_support::plans_with(|plans| {
        plans["plans"]["team"] =
            serde_norway::from_str(r#"[{repositories: ["team/*"], actions: [pull]}]"#).unwrap();
    });
    std::fs::write(world.fixture.root().join("plans.yaml"), narrowed).unwrap();
    world.app.reload().await.unwrap();
    let reply = world.refresh(&refresh, SERVICE, "docker", asked).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply}");
    assert_eq!(reply.body["scope"], PULL);

    // And revokes the caller's licence in the settings: the policy's own denial, a 403.
    let revoking = test_support::plans_revoking(&["LIC-0001"]);
    std::fs::write(world.fixture.root().join("plans.yaml"), revoking).unwrap();
    world.app.reload().await.unwrap();
    let reply = world.refresh_pull(&refresh).await;
    assert_eq!((reply.status, reply.code()), (StatusCode::FORBIDDEN, "DENIED"), "{reply}");
    assert!(reply.message().contains("licence LIC-0001 has been revoked"), "{reply}");
}

#[tokio::test]
async fn hostile_refresh_tokens_are_401_and_mint_nothing() {
    let world = World::new(30, 7).await;
    let (refresh, _) = world.login(|_| {}).await;
    let elsewhere = World::new(30, 7).await;
    let (foreign, _) = elsewhere.login(|_| {}).await;
    let registry_token = world.refresh_pull(&refresh).await.body["access_token"].as_str().unwrap().to_owned();
    let bob = world.fixture.token(|r| r.subject = "bob".into());
    let issued_before = world.events().await.iter().filter(|e| e.outcome == Outcome::Issued).count();

    let random = format!("rtr_{}", data_encoding::BASE64URL_NOPAD.encode(&[7u8; 32]));
    let mut changed = refresh.clone().into_bytes();
    changed[10] = if changed[10] == b'x' { b'y' } else { b'x' };
    let changed = String::from_utf8(changed).unwrap();
    for (what, token, cause) in [
        ("random", random.as_str(), "this service did not issue it"),
        ("truncated", &refresh[..refresh.len() - 1], "this service did not issue it"),
        ("one character changed", changed.as_str(), "this service did not issue it"),
        ("from another ledger", foreign.as_str(), "this service did not issue it"),
        ("prefix only", "rtr_", "this service did not issue it"),
        ("a registry token", registry_token.as_str(), "the token"),
        ("NUL and quotes", "rtr_\0\"'; DROP TABLE refresh_tokens; --", "this service did not issue it"),
    ] {
        let reply = world.refresh_pull(token).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{what}: {reply}");
        assert!(reply.message().contains(cause), "{what}: {reply}");
        assert!(reply.body.get("access_token").is_none(), "{what}");
    }
    // An Authority token of another subject beside alice's refresh token (a Basic password the
    // form does not carry) is not a second chance: refused, nothing minted.
    let form = form_urlencoded_pairs(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", &refresh),
        ("service", SERVICE),
        ("client_id", "docker"),
        ("scope", PULL),
    ]);
    let basic = data_encoding::BASE64.encode(format!("alice:{bob}").as_bytes());
    let request = Request::post("/token")
        .header("content-type", "application/x-www-form-urlencoded")
        .header("authorization", format!("Basic {basic}"))
        .body(Body::from(form))
        .unwrap();
    let reply = send(&world.router, request).await;
    assert_refused(&reply, "two different credentials");
    let conflicting = world.events().await.into_iter().last().unwrap();
    assert_eq!((conflicting.outcome, conflicting.reason.as_deref()), (Outcome::Refused, Some("credential")));

    let events = world.events().await;
    assert_eq!(
        events.iter().filter(|e| e.outcome == Outcome::Issued).count(),
        issued_before,
        "nothing minted"
    );
    assert!(world.refresh_pull(&refresh).await.status == StatusCode::OK, "and the real one still works");
}

/// Turning refresh tokens off (and reloading) stops those already issued, in both forms a client
/// presents one; turning them on again lets them work until their expiries.
#[tokio::test]
async fn turning_refresh_tokens_off_stops_those_already_issued() {
    let mut world = World::new(30, 7).await;
    let (refresh, _) = world.login(|_| {}).await;
    world.0.fixture.reconfigure(|config| config.refresh_tokens.enabled = Some(false));
    world.app.reload().await.unwrap();
    let turned_off = "refresh tokens are turned off on this service; log in again";
    assert_refused(&world.refresh_pull(&refresh).await, turned_off);
    let reply =
        get_basic(&world.router, &format!("{}&client_id=docker", query(SERVICE, &[PULL])), &refresh).await;
    assert_refused_get(&reply, turned_off);
    assert_eq!(world.refused_for("refresh_token_disabled").await, 2);

    world.0.fixture.reconfigure(|config| config.refresh_tokens.enabled = Some(true));
    world.app.reload().await.unwrap();
    assert_eq!(world.refresh_pull(&refresh).await.status, StatusCode::OK);
}

/// A login stands for an Authority token that the configuration would still accept: after a
/// reload to another Authority, or to a required scope the caller's token lacked, its refresh
/// token is refused like an Authority token would be (and works again once the change is undone).
#[tokio::test]
async fn a_refresh_token_is_refused_once_the_configuration_would_refuse_its_caller() {
    let mut world = World::new(30, 7).await;
    let (refresh, _) = world.login(|_| {}).await;
    assert_eq!(world.refresh_pull(&refresh).await.status, StatusCode::OK);

    world.0.fixture.reconfigure(|config| config.authority.issuer = "https://new-authority.test".into());
    world.app.reload().await.unwrap();
    let reply = world.refresh_pull(&refresh).await;
    assert_refused(&reply, "no longer accepts");
    assert!(reply.message().contains("authority.issuer is now https://new-authority.test"), "{reply}");

    world.0.fixture.reconfigure(|config| {
        config.authority.issuer = ISSUER.into();
        config.authority.required_scope = Some("registry.token.mirror".into());
    });
    world.app.reload().await.unwrap();
    let reply = world.refresh_pull(&refresh).await;
    assert_refused(&reply, "lacks the scope registry.token.mirror");
    assert_eq!(world.refused_for("refresh_token_superseded").await, 2);

    world.0.fixture.reconfigure(|config| config.authority.required_scope = None);
    world.app.reload().await.unwrap();
    assert_eq!(world.refresh_pull(&refresh).await.status, StatusCode::OK);
}

#[tokio::test]
async fn refresh_tokens_can_be_turned_off_and_need_a_ledger() {
    let fixture = Fixture::with(|config| config.refresh_tokens.enabled = Some(false));
    let clock = TestClock::new();
    let router = registry_token::http::router(fixture.service_with_ledger(&clock).await);
    let caller = fixture.token(|_| {});
    let uri = format!("{}&client_id=docker&offline_token=true", query(SERVICE, &[]));
    let reply = get_basic(&router, &uri, &caller).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body.get("refresh_token").is_none(), "{reply}");

    let fixture = Fixture::with(|config| {
        config.refresh_tokens.enabled = Some(true);
        config.ledger.url = "none".into();
    });
    let error = registry_token::config::Config::load_with_env(&fixture.config_path, Vec::new()).unwrap_err();
    assert!(
        error.to_string().contains("refresh_tokens.enabled: refresh tokens are kept in the ledger"),
        "{error}"
    );
}

/// `ledger` takes effect at the next restart: a reload that sets `ledger.url: none` warns and
/// leaves the running ledger, and the refresh tokens it keeps, as they are.
#[tokio::test]
async fn a_reload_that_drops_the_ledger_leaves_refresh_tokens_on_until_the_restart() {
    let mut world = LedgerWorld::new(|_| {}).await;
    world.fixture.reconfigure(|config| config.ledger.url = "none".into());
    world.app.reload().await.unwrap();
    let caller = world.fixture.token_at(world.clock.now(), |_| {});
    let uri = format!("{}&client_id=docker&offline_token=true", query(SERVICE, &[]));
    let reply = get_basic(&world.router, &uri, &caller).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply}");
    assert!(reply.body["refresh_token"].is_string(), "the running ledger still keeps them: {reply}");
}

/// An administrator's token: `registry.admin`, of `tenant` (or global).
fn admin_token(fixture: &Fixture, tenant: Option<&str>) -> String {
    fixture.token(|r| {
        r.subject = "security".into();
        r.scope = "registry.admin".into();
        r.tenant = tenant.map(Into::into);
    })
}

async fn admin_get(router: &Router, token: &str, uri: &str) -> Reply {
    get_bearer(router, uri, token).await
}

async fn admin_post(router: &Router, token: &str, body: &Value) -> Reply {
    let request = Request::post("/admin/v1/revocations")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    send(router, request).await
}

async fn admin_delete(router: &Router, token: &str, uri: &str) -> Reply {
    let request =
        Request::delete(uri).header("authorization", format!("Bearer {token}")).body(Body::empty()).unwrap();
    send(router, request).await
}

#[tokio::test]
async fn administrators_list_and_revoke_refresh_tokens_within_their_tenant() {
    let world = World::new(30, 7).await;
    let admin = registry_token::http::admin_router(Arc::clone(&world.app));
    let (alice, _) = world.login(|_| {}).await;
    let (globex, _) = world
        .login(|r| {
            r.subject = "gus".into();
            r.tenant = Some("globex".into());
        })
        .await;
    let root = admin_token(&world.fixture, None);
    let acme = admin_token(&world.fixture, Some("acme"));

    let listed = admin_get(&admin, &root, "/admin/v1/refresh-tokens").await;
    assert_eq!(listed.status, StatusCode::OK, "{listed}");
    let tokens = listed.body["refresh_tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 2);
    assert!(!listed.text.contains(&alice) && !listed.text.contains(&globex), "never a token's text");
    let gus = &tokens[0];
    for (field, expected) in [
        ("sub", json!("gus")),
        ("tenant", json!("globex")),
        ("client_id", json!("docker")),
        ("service", json!(SERVICE)),
        ("state", json!("active")),
        ("revoked", Value::Null),
        ("idle_seconds", json!(7 * DAY)),
    ] {
        assert_eq!(gus[field], expected, "{field} in {gus:#}");
    }
    for field in ["id", "issued_at", "last_used_at", "expires_at", "idle_expires_at"] {
        assert!(gus[field].is_string(), "{field} in {gus:#}");
    }
    let gus_id = gus["id"].as_str().unwrap().to_owned();
    let alice_id = tokens[1]["id"].as_str().unwrap().to_owned();

    // A tenant administrator sees its own tenant's only, and cannot revoke another's.
    let mine = admin_get(&admin, &acme, "/admin/v1/refresh-tokens").await;
    let ids: Vec<&str> =
        mine.body["refresh_tokens"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [alice_id.as_str()]);
    assert_eq!(
        admin_get(&admin, &acme, "/admin/v1/refresh-tokens?tenant=globex").await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        admin_get(&admin, &acme, "/admin/v1/refresh-tokens?sub=gus").await.body["refresh_tokens"],
        json!([])
    );
    let refused = admin_delete(&admin, &acme, &format!("/admin/v1/refresh-tokens/{gus_id}")).await;
    assert_eq!(refused.status, StatusCode::NOT_FOUND, "{refused}");
    // Nor through POST /admin/v1/revocations: another tenant's refresh token is not found there
    // either, and a global administrator cannot confine a token's revocation to a tenant the
    // token is not of (it would never apply, and read as done).
    let asked = json!({"kind": "refresh_token", "value": gus_id, "reason": "x"});
    let refused = admin_post(&admin, &acme, &asked).await;
    assert_eq!(refused.status, StatusCode::NOT_FOUND, "{refused}");
    let asked = json!({"kind": "refresh_token", "value": gus_id, "reason": "x", "tenant": "acme"});
    let refused = admin_post(&admin, &root, &asked).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{refused}");
    assert!(refused.text.contains(&format!("refresh token {gus_id} is not of tenant acme")), "{refused}");
    assert_eq!(world.refresh_pull(&globex).await.status, StatusCode::OK, "untouched");
    assert!(world.ledger().revocations().await.unwrap().is_empty(), "nothing written");

    // A revocation of alice's token confined to another tenant (one an older release let be
    // written) never stopped it, and does not pass for "already revoked" below.
    world.revoke_in(RevocationKind::RefreshToken, &alice_id, Some("globex")).await;
    assert_eq!(world.refresh_pull(&alice).await.status, StatusCode::OK, "not stopped by globex's");

    // Revoking one stops it at once, and the listing says so.
    let revoked =
        admin_delete(&admin, &acme, &format!("/admin/v1/refresh-tokens/{alice_id}?reason=laptop%20lost"))
            .await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT, "{revoked}");
    assert_refused(&world.refresh_pull(&alice).await, "was revoked: refresh_token");
    assert_refused(&world.refresh_pull(&alice).await, "laptop lost");
    let listed = admin_get(&admin, &acme, "/admin/v1/refresh-tokens?sub=alice").await;
    assert_eq!(listed.body["refresh_tokens"][0]["state"], "revoked", "{listed}");
    // Twice is once (globex's confined one, and acme's).
    assert_eq!(
        admin_delete(&admin, &acme, &format!("/admin/v1/refresh-tokens/{alice_id}")).await.status,
        StatusCode::NO_CONTENT
    );
    let refresh_revocations = || async {
        let made = world.ledger().revocations().await.unwrap();
        made.into_iter().filter(|r| r.kind == RevocationKind::RefreshToken).collect::<Vec<_>>()
    };
    assert_eq!(refresh_revocations().await.len(), 2);
    // But acme's may be lifted by acme: a global administrator's revocation is written beside it,
    // once, and stands when acme lifts its own.
    let acmes = refresh_revocations().await.into_iter().find(|r| r.created_by_tenant.is_some()).unwrap();
    for _ in 0..2 {
        let uri = format!("/admin/v1/refresh-tokens/{alice_id}?reason=compromised");
        assert_eq!(admin_delete(&admin, &root, &uri).await.status, StatusCode::NO_CONTENT);
    }
    assert_eq!(refresh_revocations().await.len(), 3);
    let lifted = admin_delete(&admin, &acme, &format!("/admin/v1/revocations/{}", acmes.id)).await;
    assert_eq!(lifted.status, StatusCode::NO_CONTENT, "{lifted}");
    assert_refused(&world.refresh_pull(&alice).await, "compromised");
    // A revocation that lapses does not stop a token for good either: gus's lapses in an hour,
    // and revoking the token writes one that does not.
    let lapsing = humantime::format_rfc3339_seconds(
        std::time::SystemTime::now() + std::time::Duration::from_secs(3600),
    );
    let asked =
        json!({"kind": "refresh_token", "value": gus_id, "reason": "x", "expires_at": lapsing.to_string()});
    assert_eq!(admin_post(&admin, &root, &asked).await.status, StatusCode::CREATED);
    assert_eq!(
        admin_delete(&admin, &root, &format!("/admin/v1/refresh-tokens/{gus_id}")).await.status,
        StatusCode::NO_CONTENT
    );
    let gus_revocations: Vec<_> =
        refresh_revocations().await.into_iter().filter(|r| r.value == gus_id).collect();
    assert_eq!(gus_revocations.iter().filter(|r| r.expires_at.is_none()).count(), 1, "{gus_revocations:?}");
    let made = world.ledger().revocations().await.unwrap();

    // Bad input: 400 or 404, nothing written — a bad query too when the token is revoked already.
    let alice_uri = format!("/admin/v1/refresh-tokens/{alice_id}");
    for (uri, status) in [
        ("/admin/v1/refresh-tokens/not-a-uuid".to_owned(), StatusCode::BAD_REQUEST),
        ("/admin/v1/refresh-tokens/0190b6a4-0000-7000-8000-000000000000".to_owned(), StatusCode::NOT_FOUND),
        (format!("{alice_uri}?reason="), StatusCode::BAD_REQUEST),
        (format!("{alice_uri}?reason=a%0Ab"), StatusCode::BAD_REQUEST),
        (format!("{alice_uri}?reason=a&reason=b"), StatusCode::BAD_REQUEST),
        (format!("{alice_uri}?reasn=laptop"), StatusCode::BAD_REQUEST),
    ] {
        assert_eq!(admin_delete(&admin, &root, &uri).await.status, status, "{uri}");
    }
    for uri in [
        "/admin/v1/refresh-tokens?sub=a'b",
        "/admin/v1/refresh-tokens?limit=0",
        "/admin/v1/refresh-tokens?token=x",
        "/admin/v1/refresh-tokens?sub=alice&sub=gus",
    ] {
        assert_eq!(admin_get(&admin, &root, uri).await.status, StatusCode::BAD_REQUEST, "{uri}");
    }
    let caller = world.fixture.token(|_| {});
    assert_eq!(admin_get(&admin, &caller, "/admin/v1/refresh-tokens").await.status, StatusCode::FORBIDDEN);
    assert_eq!(world.ledger().revocations().await.unwrap().len(), made.len());
}

/// The ids of a refresh-token listing, and its `next_cursor`.
async fn refresh_token_page(router: &Router, token: &str, uri: &str) -> (Vec<String>, Option<String>) {
    let reply = admin_get(router, token, uri).await;
    assert_eq!(reply.status, StatusCode::OK, "{uri}: {reply}");
    let ids = reply.body["refresh_tokens"]
        .as_array()
        .unwrap_or_else(|| panic!("{reply}"))
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect();
    (ids, reply.body["next_cursor"].as_str().map(str::to_owned))
}

#[tokio::test]
async fn administrators_page_through_refresh_tokens() {
    let world = World::new(30, 7).await;
    let admin = registry_token::http::admin_router(Arc::clone(&world.app));
    let mut logins = Vec::new();
    for (subject, tenant) in
        [("alice", "acme"), ("gus", "globex"), ("bob", "acme"), ("gus", "globex"), ("carol", "acme")]
    {
        world
            .login(|r| {
                r.subject = subject.into();
                r.tenant = Some(tenant.into());
            })
            .await;
        logins.push(tenant);
    }
    let root = admin_token(&world.fixture, None);
    let acme = admin_token(&world.fixture, Some("acme"));
    let (all, none) = refresh_token_page(&admin, &root, "/admin/v1/refresh-tokens").await;
    assert_eq!((all.len(), none), (5, None), "one page holds them all");

    // Pages of two: newest first, each token once, the last page without a cursor.
    let mut paged = Vec::new();
    let mut uri = "/admin/v1/refresh-tokens?limit=2".to_owned();
    let mut sizes = Vec::new();
    loop {
        let (ids, next) = refresh_token_page(&admin, &root, &uri).await;
        sizes.push(ids.len());
        paged.extend(ids);
        let Some(next) = next else { break };
        uri = format!("/admin/v1/refresh-tokens?limit=2&cursor={next}");
    }
    assert_eq!(sizes, [2, 2, 1]);
    assert_eq!(paged, all);

    // A tenant administrator's pages hold its tenant's only; a filter holds across pages.
    let (first, next) = refresh_token_page(&admin, &acme, "/admin/v1/refresh-tokens?limit=2").await;
    let next = next.expect("a second page");
    let (second, last) =
        refresh_token_page(&admin, &acme, &format!("/admin/v1/refresh-tokens?limit=2&cursor={next}")).await;
    assert_eq!(last, None);
    let acme_ids: Vec<String> = all
        .iter()
        .zip(logins.iter().rev())
        .filter(|(_, t)| **t == "acme")
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!([first, second].concat(), acme_ids);
    let (gus, next) = refresh_token_page(&admin, &root, "/admin/v1/refresh-tokens?sub=gus&limit=1").await;
    let uri = format!("/admin/v1/refresh-tokens?sub=gus&limit=1&cursor={}", next.unwrap());
    let (gus_older, last) = refresh_token_page(&admin, &root, &uri).await;
    assert_eq!((gus.len(), gus_older.len(), last), (1, 1, None));
    assert!(gus[0] > gus_older[0], "newest first");

    // A cursor the API did not issue to this administrator is a 400: garbage, an event's id, and
    // one into another tenant's tokens (their existence is not told).
    let cursor = |id: &str| data_encoding::BASE64URL_NOPAD.encode(id.as_bytes());
    let filter = registry_token::ledger::EventFilter { limit: 1, ..Default::default() };
    let event = world.ledger().events(&filter).await.unwrap();
    let globex_newest = &all[1];
    for bad in ["not-a-cursor".to_owned(), cursor(&event[0].id), cursor("x'; DROP TABLE refresh_tokens; --")]
    {
        let reply = admin_get(&admin, &root, &format!("/admin/v1/refresh-tokens?cursor={bad}")).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}: {reply}");
        assert!(reply.text.contains("the cursor was not issued by this API"), "{reply}");
    }
    let into_globex = format!("/admin/v1/refresh-tokens?cursor={}", cursor(globex_newest));
    assert_eq!(admin_get(&admin, &acme, &into_globex).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(admin_get(&admin, &root, &into_globex).await.status, StatusCode::OK);
}
