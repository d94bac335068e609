//! Token reuse (`signing.reuse_seconds`): identical requests within moments get the token already
//! minted — never a different caller's, service's or scope's, never after a revocation, a reload
//! or a key change, never with less than 80 % of its lifetime left — and concurrent identical
//! requests mint once. Each reused answer is still a ledger event (`reused: true`, the same `jti`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::*;
use axum::http::StatusCode;
use registry_token::ledger::{Event, Millis, Outcome, Revocation, RevocationKind};
use registry_token::mint::{SigningAlgorithm, keygen};
use std::collections::HashSet;

const PULL: &str = "repository:team/app:pull";

struct World(LedgerWorld);

impl std::ops::Deref for World {
    type Target = LedgerWorld;
    fn deref(&self) -> &LedgerWorld {
        &self.0
    }
}

impl std::ops::DerefMut for World {
    fn deref_mut(&mut self) -> &mut LedgerWorld {
        &mut self.0
    }
}

impl World {
    async fn new(edit: impl FnOnce(&mut test_support::Config)) -> World {
        World(LedgerWorld::new(edit).await)
    }

    /// The registry token `caller` gets for `scopes` of `service`, and the reply's `expires_in`
    /// and `issued_at`.
    async fn token(&self, caller: &str, service: &str, scopes: &[&str]) -> (String, u64, String) {
        let reply = get_bearer(&self.router, &query(service, scopes), caller).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply}");
        (
            reply.body["token"].as_str().unwrap().to_owned(),
            reply.body["expires_in"].as_u64().unwrap(),
            reply.body["issued_at"].as_str().unwrap().to_owned(),
        )
    }
}

fn jti(token: &str) -> String {
    decode(token).1["jti"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn identical_requests_get_the_same_token_while_it_is_young_and_others_never_do() {
    let world = World::new(|_| {}).await;
    let alice = world.fixture.token_at(world.clock.now(), |_| {});
    let (first, expires_in, issued_at) = world.token(&alice, SERVICE, &[PULL]).await;
    assert_eq!(expires_in, 300);

    // Ten seconds later: the same token, its true issued_at, expires_in counted from now.
    world.clock.advance(10);
    let (again, expires_in, issued_again) = world.token(&alice, SERVICE, &[PULL]).await;
    assert_eq!(again, first);
    assert_eq!((expires_in, issued_again), (290, issued_at.clone()));

    // Anything different is a different token: scope, service, caller token (even alice's own).
    let other_scope = world.token(&alice, SERVICE, &["repository:team/app:pull,push"]).await.0;
    let other_service = world.token(&alice, "other.test", &[PULL]).await.0;
    let alice_again = world.fixture.token_at(world.clock.now(), |_| {});
    let other_caller = world.token(&alice_again, SERVICE, &[PULL]).await.0;
    let tokens: HashSet<String> =
        [&first, &other_scope, &other_service, &other_caller].into_iter().map(|t| jti(t)).collect();
    assert_eq!(tokens.len(), 4, "a different scope, service or caller token never reuses");
    assert_eq!(access(&other_scope), ["repository:team/app:pull,push"]);
    assert_eq!(decode(&other_service).1["aud"], "other.test");

    // The default window is a tenth of the lifetime: at 30 s still the same, at 31 s a new one.
    world.clock.advance(20);
    assert_eq!(world.token(&alice, SERVICE, &[PULL]).await.0, first);
    world.clock.advance(1);
    let fresh = world.token(&alice, SERVICE, &[PULL]).await.0;
    assert_ne!(jti(&fresh), jti(&first));
    assert_eq!(decode(&fresh).1["iat"].as_u64().unwrap(), world.clock.now());

    // Every answer is an event; the reused ones say so and name the token they handed out.
    let issued: Vec<Event> =
        world.events().await.into_iter().filter(|e| e.outcome == Outcome::Issued).collect();
    let reused: Vec<&Event> = issued.iter().filter(|e| e.reused).collect();
    assert_eq!((issued.len(), reused.len()), (7, 2), "{issued:#?}");
    for event in reused {
        assert_eq!(event.token.as_ref().unwrap().jti, jti(&first));
        assert_eq!(event.granted, [PULL]);
    }
}

#[tokio::test]
async fn a_reused_token_never_has_less_than_80_percent_of_its_lifetime_left() {
    // A window of a fifth of the lifetime, the most allowed.
    let world = World::new(|config| config.signing.reuse_seconds = Some(60)).await;
    let alice = world.fixture.token_at(world.clock.now(), |_| {});
    let first = world.token(&alice, SERVICE, &[PULL]).await.0;
    world.clock.advance(60);
    let (at_60, expires_in, _) = world.token(&alice, SERVICE, &[PULL]).await;
    assert_eq!((at_60 == first, expires_in), (true, 240), "exactly 80 % left");
    world.clock.advance(1);
    assert_ne!(world.token(&alice, SERVICE, &[PULL]).await.0, first);

    // A token cut short by its caller's expiry (100 s + 30 s of leeway) has a 130 s lifetime: it
    // is reused for 26 s, not 60.
    let short = world.fixture.token_at(world.clock.now(), |r| r.ttl_seconds = 100);
    let (cut, expires_in, _) = world.token(&short, SERVICE, &[PULL]).await;
    assert_eq!(expires_in, 130);
    world.clock.advance(26);
    assert_eq!(world.token(&short, SERVICE, &[PULL]).await.0, cut);
    world.clock.advance(1);
    assert_ne!(world.token(&short, SERVICE, &[PULL]).await.0, cut);

    // A window over a fifth of the lifetime is refused at start.
    let fixture = Fixture::with(|config| config.signing.reuse_seconds = Some(61));
    let error = registry_token::config::Config::load_with_env(&fixture.config_path, Vec::new()).unwrap_err();
    assert!(error.to_string().contains("signing.reuse_seconds (61) may be at most a fifth"), "{error}");
    // So is one whose fifth-check would overflow (times five, it wraps to 4 in 64 bits).
    let huge = u64::MAX / 5 + 1;
    let fixture = Fixture::with(|config| config.signing.reuse_seconds = Some(huge));
    let error = registry_token::config::Config::load_with_env(&fixture.config_path, Vec::new()).unwrap_err();
    assert!(error.to_string().contains(&format!("signing.reuse_seconds ({huge}) may be at most")), "{error}");
}

#[tokio::test]
async fn a_revocation_a_reload_or_a_key_change_in_between_means_a_new_token() {
    let mut world = World::new(|_| {}).await;
    let alice = world.fixture.token_at(world.clock.now(), |_| {});
    let first = world.token(&alice, SERVICE, &[PULL]).await.0;

    // A revocation of someone else still changes the revocations: no reuse across it.
    let ledger = world.app.ledger.clone().unwrap();
    let revocation = Revocation {
        id: Event::new(Outcome::Issued).id,
        kind: RevocationKind::Subject,
        value: "mallory".into(),
        tenant: None,
        reason: "tests".into(),
        created_at: Millis::now(),
        expires_at: None,
        created_by: "tests".into(),
        created_by_tenant: None,
    };
    ledger
        .revoke(&revocation, Event::revocation_audit(Outcome::RevocationCreated, &revocation, "tests"))
        .await
        .unwrap();
    let after_revocation = world.token(&alice, SERVICE, &[PULL]).await.0;
    assert_ne!(jti(&after_revocation), jti(&first));
    assert_eq!(world.token(&alice, SERVICE, &[PULL]).await.0, after_revocation, "and reused again after it");

    // A reload (the same files): a new live state, a new token.
    world.app.reload().await.unwrap();
    let after_reload = world.token(&alice, SERVICE, &[PULL]).await.0;
    assert_ne!(jti(&after_reload), jti(&after_revocation));

    // A new signing key: a new token, signed by it.
    keygen::generate(&world.fixture.root().join("keys2"), SigningAlgorithm::RS256, 2048).unwrap();
    let root = world.fixture.root().to_owned();
    world.fixture.reconfigure(|config| {
        config.signing.key_file = root.join("keys2/signing-key.pem");
        config.signing.cert_file = Some(root.join("keys2/signing-cert.pem"));
    });
    world.app.reload().await.unwrap();
    let after_key = world.token(&alice, SERVICE, &[PULL]).await.0;
    assert_ne!(jti(&after_key), jti(&after_reload));
    assert_ne!(decode(&after_key).0["kid"], decode(&after_reload).0["kid"]);
    assert_eq!(
        decode(&after_key).0["kid"].as_str().unwrap(),
        libtrust_kid_of(&root.join("keys2/signing-cert.pem"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_requests_mint_one_token() {
    let world = World::new(|_| {}).await;
    let alice = world.fixture.token_at(world.clock.now(), |_| {});
    let requests = (0..16).map(|_| {
        let (router, alice) = (world.router.clone(), alice.clone());
        tokio::spawn(async move { get_bearer(&router, &query(SERVICE, &[PULL]), &alice).await })
    });
    let mut tokens = HashSet::new();
    for request in requests {
        let reply = request.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{reply}");
        tokens.insert(jti(reply.body["token"].as_str().unwrap()));
    }
    assert_eq!(tokens.len(), 1, "16 concurrent identical requests, one token");
    let issued: Vec<Event> =
        world.events().await.into_iter().filter(|e| e.outcome == Outcome::Issued).collect();
    assert_eq!(issued.len(), 16, "every answer is recorded");
    assert_eq!(issued.iter().filter(|e| e.reused).count(), 15);
}

#[tokio::test]
async fn reuse_can_be_turned_off() {
    let world = World::new(|config| config.signing.reuse_seconds = Some(0)).await;
    let alice = world.fixture.token_at(world.clock.now(), |_| {});
    let first = world.token(&alice, SERVICE, &[PULL]).await.0;
    assert_ne!(jti(&world.token(&alice, SERVICE, &[PULL]).await.0), jti(&first));
    assert!(world.events().await.iter().all(|e| !e.reused));
}

#[tokio::test]
async fn a_policy_that_reads_the_time_decides_every_request_a_reused_token_answers() {
    let world = World::new(|_| {}).await;
    // alice's licence expires 20 s from now (the built-in catalogue reads the request's time).
    let expires = std::time::UNIX_EPOCH + std::time::Duration::from_secs(world.clock.now() + 20);
    let expires = humantime::format_rfc3339_seconds(expires).to_string();
    let plans = test_support::plans_with(|plans| {
        plans["license_expiry"] = serde_json::from_value(serde_json::json!({ "LIC-0001": expires })).unwrap();
    });
    std::fs::write(world.fixture.root().join("plans.yaml"), plans).unwrap();
    world.app.reload().await.unwrap();
    let alice = world.fixture.token_at(world.clock.now(), |_| {});
    let first = world.token(&alice, SERVICE, &[PULL]).await.0;
    world.clock.advance(15);
    assert_eq!(world.token(&alice, SERVICE, &[PULL]).await.0, first, "young, and the licence valid");

    // Within the reuse window, past the expiry: the policy's denial, not the young token.
    world.clock.advance(10);
    let reply = get_bearer(&world.router, &query(SERVICE, &[PULL]), &alice).await;
    assert_eq!((reply.status, reply.code()), (StatusCode::FORBIDDEN, "DENIED"), "{reply}");
    assert!(reply.message().contains("LIC-0001 expired"), "{reply}");
    let last = world.events().await.pop().unwrap();
    assert_eq!((last.outcome, last.reason.as_deref()), (Outcome::Denied, Some("licence-expired")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_whose_event_was_not_committed_is_never_handed_to_the_next_caller() {
    let world = World::new(|_| {}).await;
    let alice = world.fixture.token_at(world.clock.now(), |_| {});
    // Another process holds the ledger's write lock (a backup, a stuck tool): the strict commit
    // cannot happen, and the token minted meanwhile is not returned.
    let blocker = rusqlite::Connection::open(world.fixture.root().join("ledger.db")).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let refused = get_bearer(&world.router, &query(SERVICE, &[PULL]), &alice).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{refused}");
    blocker.execute_batch("ROLLBACK").unwrap();

    // Once the ledger is writable again, the identical request gets a token minted for it and
    // recorded as issued, not the one nobody received.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let token = loop {
        let reply = get_bearer(&world.router, &query(SERVICE, &[PULL]), &alice).await;
        if reply.status == StatusCode::OK {
            break reply.body["token"].as_str().unwrap().to_owned();
        }
        assert!(std::time::Instant::now() < deadline, "the ledger did not come back: {reply}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let events = world.events().await;
    let issued: Vec<&Event> = events.iter().filter(|e| e.outcome == Outcome::Issued).collect();
    assert!(issued.iter().all(|e| !e.reused), "the token of the refused request was handed out: {issued:#?}");
    let returned: Vec<&&Event> =
        issued.iter().filter(|e| e.token.as_ref().is_some_and(|t| t.jti == jti(&token))).collect();
    assert_eq!(returned.len(), 1, "{events:#?}");
    // The refused request's event may have landed once the lock was gone (its wait had ended):
    // then a fault event says its token was not returned.
    for unreturned in issued.iter().filter(|e| e.id != returned[0].id) {
        let said = format!("the token event {} records was not returned", unreturned.id);
        assert!(
            events
                .iter()
                .any(|e| e.outcome == Outcome::Fault
                    && e.message.as_deref().is_some_and(|m| m.contains(&said))),
            "{events:#?}"
        );
    }
}

/// A reused token's `issued` event was committed before it was first returned: the repeat's own
/// event is queued (as a denial's is) and the answer does not wait for its commit — it comes while
/// another process holds the ledger's write lock. Fail closed all the same: once the ledger is
/// known not to be writable, the repeat is refused like a new token. Nothing is lost: the queued
/// event is written when the ledger is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_answer_does_not_wait_for_its_own_commit_but_is_refused_while_the_ledger_is_down() {
    let world = World::new(|_| {}).await;
    let ledger = world.app.ledger.as_ref().unwrap();
    let alice = world.fixture.token_at(world.clock.now(), |_| {});
    let (first, ..) = world.token(&alice, SERVICE, &[PULL]).await;

    let blocker = rusqlite::Connection::open(world.fixture.root().join("ledger.db")).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let (again, ..) = world.token(&alice, SERVICE, &[PULL]).await;
    assert_eq!(again, first, "answered, with the same token, while the ledger's write lock is held");

    // The writer's commit of that event fails once SQLite's busy timeout runs out: the ledger is
    // then known not to be writable, and the repeat is refused.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while ledger.health().writable {
        assert!(std::time::Instant::now() < deadline, "the ledger never noticed the lock");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let refused = get_bearer(&world.router, &query(SERVICE, &[PULL]), &alice).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{refused}");
    assert!(refused.body.get("token").is_none(), "{refused}");

    blocker.execute_batch("ROLLBACK").unwrap();
    while !ledger.health().writable {
        assert!(std::time::Instant::now() < deadline, "the ledger did not come back");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(world.token(&alice, SERVICE, &[PULL]).await.0, first);
    let events = world.events().await;
    let answers: Vec<(bool, &str)> = events
        .iter()
        .filter(|e| e.outcome == Outcome::Issued)
        .map(|e| (e.reused, e.token.as_ref().unwrap().jti.as_str()))
        .collect();
    let jti = jti(&first);
    assert_eq!(
        answers,
        [(false, jti.as_str()), (true, jti.as_str()), (true, jti.as_str())],
        "the first answer, the one given while the lock was held (kept, then written), the last: {events:#?}"
    );
}
