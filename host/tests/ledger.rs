//! The issuance ledger on SQLite, through the running binary: what each exchange records, that no
//! secret reaches the database file, revocations through the admin API and the command line, the
//! tenant confinement of administrators, and the admin API's answers to bad input. (The crash test
//! is `ledger_crash.rs`; PostgreSQL replicas are `tests/e2e/postgres.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};
use test_support::{Client, Server};

const BIN: &str = env!("CARGO_BIN_EXE_registry-token");
const PULL: &str = "repository:team/app:pull";

/// An administrator's token: `registry.admin`, of `tenant` (or global).
fn admin_token(fixture: &Fixture, sub: &str, tenant: Option<&str>) -> String {
    fixture.token(|r| {
        r.subject = sub.into();
        r.scope = "registry.admin".into();
        r.tenant = tenant.map(Into::into);
        r.plan = None;
        r.license = None;
        r.client_id = "security-console".into();
    })
}

fn events(admin: &Client, token: &str, query: &str) -> Vec<Value> {
    let reply = admin.get_bearer(&format!("/admin/v1/events{query}"), token).unwrap();
    assert_eq!(reply.status, 200, "{reply}");
    reply.body["events"].as_array().unwrap().clone()
}

/// `read()` until `done` holds (at most 5 s), for events written after their answer.
fn eventually(read: impl Fn() -> Vec<Value>, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let since = Instant::now();
    loop {
        let value = read();
        if done(&value) || since.elapsed() > Duration::from_secs(5) {
            return value;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn event_by_id(admin: &Client, token: &str, id: &str) -> Value {
    let reply = admin.get_bearer(&format!("/admin/v1/events/{id}"), token).unwrap();
    assert_eq!(reply.status, 200, "{reply}");
    reply.body
}

fn revoke(admin: &Client, token: &str, body: Value) -> Value {
    let reply = admin.post_json_bearer("/admin/v1/revocations", token, &body.to_string()).unwrap();
    assert_eq!(reply.status, 201, "{reply}");
    reply.body
}

fn ledger_cli(fixture: &Fixture, args: &[&str]) -> std::process::Output {
    Command::new(BIN).arg("ledger").args(args).arg("--config").arg(&fixture.config_path).output().unwrap()
}

/// The event the server's log line names for the last request with `needle` in it.
fn logged_event_id(server: &Server, needle: &str) -> String {
    let log = server.stderr();
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains(needle) && l.contains("served"))
        .unwrap_or_else(|| panic!("{log}"));
    let start = line.find("event=\"").unwrap_or_else(|| panic!("no event id in {line}")) + 7;
    line[start..start + 36].to_owned()
}

#[test]
fn every_outcome_is_recorded_with_its_fields_and_no_secret_reaches_the_database() {
    let fixture = Fixture::new();
    let server = Server::start(BIN, &fixture.config_path);
    let (client, admin) = (server.client(), server.admin());
    let ready = client.get("/readyz").unwrap().body;

    // issued
    let caller = fixture.token(|_| {});
    let (_, caller_claims) = decode(&caller);
    let reply =
        client.get_basic(&query(SERVICE, &[PULL, "repository:secret/x:push"]), "alice", &caller).unwrap();
    assert_eq!(reply.status, 200, "{reply}");
    let registry_token = reply.body["token"].as_str().unwrap().to_owned();
    let (_, token_claims) = decode(&registry_token);
    // denied by the policy (LIC-0002 is revoked in the settings)
    let denied = fixture.token(|r| {
        r.subject = "bob".into();
        r.license = Some("LIC-0002".into());
    });
    assert_eq!(client.get_bearer(&query(SERVICE, &[PULL]), &denied).unwrap().status, 403);
    // refused: an expired caller token
    let expired = fixture.token(|r| r.ttl_seconds = -3600);
    assert_eq!(client.get_bearer(&query(SERVICE, &[PULL]), &expired).unwrap().status, 401);
    // refused: a malformed scope, with a valid credential
    assert_eq!(client.get_bearer(&query(SERVICE, &["repository::pull"]), &caller).unwrap().status, 400);
    // fault: a second server on the same ledger file runs the hostile guest, which panics
    let mut hostile = Fixture::with(|config| {
        config.policy.module = Some(test_support::HOSTILE_GUEST_WASM.into());
        config.policy.settings_file = None;
    });
    let shared_ledger = format!("sqlite://{}", fixture.root().join("ledger.db").display());
    hostile.reconfigure(|config| {
        config.ledger.url = shared_ledger.clone();
        config.authority.jwks_file = Some(fixture.root().join("authority/jwks.json"));
    });
    let hostile_server = Server::start(BIN, &hostile.config_path);
    let faulted = hostile_server
        .client()
        .get_bearer(&query(SERVICE, &["repository:hostile/panic:pull"]), &caller)
        .unwrap();
    assert_eq!(faulted.status, 503, "{faulted}");

    let token = admin_token(&fixture, "root", None);
    // Only an issued event is committed before its answer; the others follow within moments.
    let recorded = eventually(|| events(&admin, &token, "?limit=10"), |recorded| recorded.len() == 5);
    let outcomes: Vec<&str> = recorded.iter().map(|e| e["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["fault", "refused", "refused", "denied", "issued"], "newest first");

    let issued = &recorded[4];
    for (field, expected) in [
        ("sub", json!("alice")),
        ("client_id", json!("tests")),
        ("tenant", json!("acme")),
        ("plan", json!("team")),
        ("licence", json!("LIC-0001")),
        ("iss", json!(ISSUER)),
        ("jti", caller_claims["jti"].clone()),
        ("client_addr", json!("127.0.0.1")),
        ("service", json!(SERVICE)),
        ("requested", json!([PULL, "repository:secret/x:push"])),
        ("granted", json!([PULL])),
        ("policy_digest", ready["policy"]["digest"].clone()),
        ("settings_version", ready["policy"]["settings_version"].clone()),
        ("reason", Value::Null),
    ] {
        assert_eq!(issued[field], expected, "issued.{field} in {issued:#}");
    }
    assert_eq!(issued["token"]["jti"], token_claims["jti"]);
    assert_eq!(issued["token"]["exp"], token_claims["exp"]);
    assert_eq!(issued["token"]["kid"], ready["signing"]["kid"]);
    assert!(issued["time"].as_str().unwrap().ends_with('Z'));
    // The request's log line names the same event.
    assert_eq!(logged_event_id(&server, "sub=\"alice\""), issued["id"].as_str().unwrap());
    assert_eq!(event_by_id(&admin, &token, issued["id"].as_str().unwrap()), *issued);

    let denied = &recorded[3];
    assert_eq!((denied["sub"].as_str(), denied["reason"].as_str()), (Some("bob"), Some("licence-revoked")));
    assert!(denied["message"].as_str().unwrap().contains("LIC-0002"), "{denied}");
    assert_eq!((denied["granted"].clone(), denied["token"].clone()), (json!([]), Value::Null));
    let expired_event = &recorded[2];
    assert_eq!(expired_event["reason"], "expired", "{expired_event}");
    assert_eq!(expired_event["sub"], Value::Null, "an unvalidated token's claims are not believed");
    let malformed = &recorded[1];
    assert_eq!((malformed["reason"].as_str(), malformed["sub"].as_str()), (Some("bad_request"), None));
    let fault = &recorded[0];
    assert_eq!((fault["reason"].as_str(), fault["sub"].as_str()), (Some("panic"), Some("alice")), "{fault}");

    // The audit trail is its owner's to read: the database, its write-ahead log and the log's
    // index, whatever the umask.
    for file in ["ledger.db", "ledger.db-wal", "ledger.db-shm"] {
        let mode = std::fs::metadata(fixture.root().join(file)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{file} has mode {mode:o}");
    }

    // Tokens and keys never reach the database (or its write-ahead log).
    drop(hostile_server);
    let mut database = Vec::new();
    for file in ["ledger.db", "ledger.db-wal"] {
        database.extend(std::fs::read(fixture.root().join(file)).unwrap_or_default());
    }
    assert!(database.len() > 4096, "the database holds the events");
    let contains = |needle: &str| database.windows(needle.len()).any(|w| w == needle.as_bytes());
    // The search finds what is recorded (the tokens' ids), so its silence below means something.
    assert!(
        contains(token_claims["jti"].as_str().unwrap()) && contains(caller_claims["jti"].as_str().unwrap())
    );
    for (name, secret) in [
        ("the caller token", caller.as_str()),
        ("the caller token's signature", caller.rsplit('.').next().unwrap()),
        ("the caller token's claims", caller.split('.').nth(1).unwrap()),
        ("the registry token", registry_token.as_str()),
        ("the registry token's signature", registry_token.rsplit('.').next().unwrap()),
        ("the expired caller token's signature", expired.rsplit('.').next().unwrap()),
    ] {
        assert!(!contains(secret), "{name} is in the database file");
    }
    let key = std::fs::read_to_string(fixture.root().join("keys/signing-key.pem")).unwrap();
    let key_line = key.lines().nth(1).unwrap();
    assert!(!contains(key_line), "the signing key is in the database file");
}

#[test]
fn each_kind_of_revocation_refuses_at_once_with_its_reason_and_lifts() {
    let fixture = Fixture::new();
    let server = Server::start(BIN, &fixture.config_path);
    let (client, admin) = (server.client(), server.admin());
    let token = admin_token(&fixture, "root", None);
    let caller = fixture.token(|_| {});
    let (_, claims) = decode(&caller);
    let other = fixture.token(|r| {
        r.subject = "zoe".into();
        r.tenant = Some("globex".into());
        r.license = Some("LIC-0009".into());
        r.client_id = "other-client".into();
    });
    assert_eq!(client.get_bearer(&query(SERVICE, &[PULL]), &caller).unwrap().status, 200);

    for (kind, value) in [
        ("subject", "alice"),
        ("licence", "LIC-0001"),
        ("tenant", "acme"),
        ("client", "tests"),
        ("caller_token", claims["jti"].as_str().unwrap()),
    ] {
        let revocation =
            revoke(&admin, &token, json!({"kind": kind, "value": value, "reason": format!("{kind} test")}));
        assert_eq!((revocation["kind"].as_str(), revocation["value"].as_str()), (Some(kind), Some(value)));
        // The next request on this replica is refused, with the documented message.
        let reply = client.get_bearer(&query(SERVICE, &[PULL]), &caller).unwrap();
        assert_eq!((reply.status.as_u16(), reply.code()), (403, "DENIED"), "{kind}: {reply}");
        assert_eq!(reply.message(), format!("{kind} {value} has been revoked: {kind} test"));
        // Another caller is not affected.
        assert_eq!(client.get_bearer(&query(SERVICE, &[PULL]), &other).unwrap().status, 200, "{kind}");
        let id = revocation["id"].as_str().unwrap();
        let lifted = admin.delete_bearer(&format!("/admin/v1/revocations/{id}"), &token).unwrap();
        assert_eq!(lifted.status, 204, "{lifted}");
        assert_eq!(
            client.get_bearer(&query(SERVICE, &[PULL]), &caller).unwrap().status,
            200,
            "{kind} lifted"
        );
    }
    let denied = events(&admin, &token, "?outcome=denied&sub=alice");
    assert_eq!(denied.len(), 5);
    assert!(denied.iter().all(|e| e["reason"] == "revoked"), "{denied:#?}");
    let audit = events(&admin, &token, "?outcome=revocation_created");
    assert_eq!(audit.len(), 5);
    assert!(audit.iter().all(|e| e["sub"] == "root"), "who revoked is recorded: {audit:#?}");
    assert_eq!(events(&admin, &token, "?outcome=revocation_lifted").len(), 5);
    assert_eq!(
        admin
            .delete_bearer("/admin/v1/revocations/01938f3e-0000-7000-8000-000000000000", &token)
            .unwrap()
            .status,
        404
    );

    // A revocation with an expiry stops applying by itself. (Seconds ahead: the time is cut to
    // whole seconds, and the revocation must still be in force at the next request.)
    let lapses_at = std::time::SystemTime::now() + Duration::from_secs(4);
    let soon = humantime::format_rfc3339_seconds(lapses_at).to_string();
    revoke(
        &admin,
        &token,
        json!({"kind": "subject", "value": "alice", "reason": "cooling off", "expires_at": soon}),
    );
    assert_eq!(client.get_bearer(&query(SERVICE, &[PULL]), &caller).unwrap().status, 403);
    let in_force = || admin.get("/readyz").unwrap().body["ledger"]["revocations"].as_u64().unwrap();
    let before = in_force();
    if let Ok(left) = lapses_at.duration_since(std::time::SystemTime::now()) {
        std::thread::sleep(left + Duration::from_millis(100));
    }
    assert_eq!(
        client.get_bearer(&query(SERVICE, &[PULL]), &caller).unwrap().status,
        200,
        "expired revocation"
    );
    // /readyz counts what is in force; the lapsed one stays in the ledger until pruned.
    assert_eq!(in_force(), before - 1, "/readyz still counts the lapsed revocation");
    // The settings' revoked_licenses keep working beside the ledger.
    let settings_revoked = fixture.token(|r| r.license = Some("LIC-0002".into()));
    let reply = client.get_bearer(&query(SERVICE, &[PULL]), &settings_revoked).unwrap();
    assert_eq!(reply.status, 403);
    assert!(reply.message().contains("LIC-0002"), "{reply}");

    // An expiry written with an offset is that instant (five hours ahead of UTC: 00:00 UTC).
    let offset = revoke(
        &admin,
        &token,
        json!({"kind": "subject", "value": "nobody", "reason": "r", "expires_at": "2099-01-01T05:00:00.000+05:00"}),
    );
    assert_eq!(offset["expires_at"], "2099-01-01T00:00:00.000Z", "{offset}");
    // Unix seconds, as a JSON number or as text, are the same instant.
    for seconds in [json!(4_070_908_800_i64), json!("4070908800")] {
        let revocation = revoke(
            &admin,
            &token,
            json!({"kind": "subject", "value": "nobody", "reason": "r", "expires_at": seconds}),
        );
        assert_eq!(revocation["expires_at"], "2099-01-01T00:00:00.000Z", "{revocation}");
    }
}

#[test]
fn a_revocation_answers_401_when_denials_are_401() {
    let fixture = Fixture::with(|config| config.http.denial_status = Some(401));
    let server = Server::start(BIN, &fixture.config_path);
    let token = admin_token(&fixture, "root", None);
    revoke(&server.admin(), &token, json!({"kind": "subject", "value": "alice", "reason": "audit"}));
    let reply = server.client().get_bearer(&query(SERVICE, &[PULL]), &fixture.token(|_| {})).unwrap();
    assert_eq!((reply.status.as_u16(), reply.code()), (401, "DENIED"), "{reply}");
    assert_eq!(reply.message(), "subject alice has been revoked: audit");
}

#[test]
fn the_command_line_revokes_a_running_server_within_a_second_and_reads_the_ledger() {
    let fixture = Fixture::new();
    let server = Server::start(BIN, &fixture.config_path);
    let client = server.client();
    let caller = fixture.token(|_| {});
    assert_eq!(client.get_bearer(&query(SERVICE, &[PULL]), &caller).unwrap().status, 200);

    let output = ledger_cli(&fixture, &["revoke", "licence", "LIC-0001", "--reason", "contract ended"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let revoked_at = Instant::now();
    let id = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    let reply = loop {
        let reply = client.get_bearer(&query(SERVICE, &[PULL]), &caller).unwrap();
        if reply.status == 403 || revoked_at.elapsed() > Duration::from_secs(5) {
            break reply;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = revoked_at.elapsed();
    assert_eq!(reply.status, 403, "{reply}");
    assert!(took < Duration::from_secs(1), "the running server applied it after {took:?}");
    assert_eq!(reply.message(), "licence LIC-0001 has been revoked: contract ended");

    let listed = ledger_cli(&fixture, &["revocations", "--json"]);
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed["revocations"][0]["id"], id.as_str());
    assert!(listed["revocations"][0]["created_by"].as_str().unwrap().starts_with("cli:"));

    // The denial's event is written just after its answer.
    let events = eventually(
        || {
            let output = ledger_cli(&fixture, &["events", "--json", "--sub", "alice"]);
            assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
            let events: Value = serde_json::from_slice(&output.stdout).unwrap();
            events["events"].as_array().unwrap().clone()
        },
        |events| events.first().is_some_and(|e| e["outcome"] == "denied"),
    );
    let outcomes: Vec<&str> = events.iter().map(|e| e["outcome"].as_str().unwrap()).collect();
    // The first exchange, those before the revocation reached the server, then the refusal.
    assert_eq!(outcomes[0], "denied", "{events:#?}");
    assert!(outcomes.len() >= 2 && outcomes[1..].iter().all(|o| *o == "issued"), "{events:#?}");
    let lines = ledger_cli(&fixture, &["events", "--outcome", "revocation_created"]);
    let lines = String::from_utf8(lines.stdout).unwrap();
    assert!(lines.contains("licence LIC-0001 revoked by cli:"), "{lines}");

    let unrevoked = ledger_cli(&fixture, &["unrevoke", &id]);
    assert!(unrevoked.status.success(), "{}", String::from_utf8_lossy(&unrevoked.stderr));
    let lifted_at = Instant::now();
    while client.get_bearer(&query(SERVICE, &[PULL]), &caller).unwrap().status != 200 {
        assert!(lifted_at.elapsed() < Duration::from_secs(1), "the lift did not reach the server within 1 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    let bad = ledger_cli(&fixture, &["revoke", "planet", "x", "--reason", "r"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("kind \"planet\" is not one of subject, licence"));
    let bad = ledger_cli(&fixture, &["events", "--outcome", "planet"]);
    assert_eq!(bad.status.code(), Some(2));
    let said = String::from_utf8_lossy(&bad.stderr);
    assert!(said.contains("--outcome \"planet\" is not one of issued, denied, refused, fault"), "{said}");

    // A jti is random base64url: one that begins with '-' is a value, not an option.
    let hyphen = ledger_cli(&fixture, &["revoke", "caller_token", "-Wq-jti", "--reason", "leaked"]);
    assert!(hyphen.status.success(), "{}", String::from_utf8_lossy(&hyphen.stderr));
    let listed = ledger_cli(&fixture, &["revocations", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert!(listed["revocations"].as_array().unwrap().iter().any(|r| r["value"] == "-Wq-jti"), "{listed}");
    let events = ledger_cli(&fixture, &["events", "--jti", "-Wq-jti"]);
    assert!(events.status.success(), "{}", String::from_utf8_lossy(&events.stderr));

    // Filters are checked as the admin API checks them, before the ledger is read.
    for (args, says) in [
        (&["events", "--sub", "a'b"][..], "--sub contains '\\''"),
        (&["events", "--tenant", ""][..], "--tenant is empty"),
        (&["events", "--limit", "0"][..], "--limit 0 would list nothing"),
        (&["refresh-tokens", "--sub", "al ice"][..], "--sub contains ' '"),
    ] {
        let bad = ledger_cli(&fixture, args);
        assert_eq!(bad.status.code(), Some(2), "{args:?}");
        let said = String::from_utf8_lossy(&bad.stderr);
        assert!(said.contains(says), "{args:?}: {said}");
    }
}

#[test]
fn the_ledger_works_while_the_service_is_down_and_after_a_restart() {
    let fixture = Fixture::new();
    let caller = fixture.token(|_| {});
    {
        let mut server = Server::start(BIN, &fixture.config_path);
        assert_eq!(server.client().get_bearer(&query(SERVICE, &[PULL]), &caller).unwrap().status, 200);
        server.signal("TERM");
        assert!(server.wait(Duration::from_secs(20)).success(), "{}", server.stderr());
    }
    let output = ledger_cli(&fixture, &["revoke", "subject", "alice", "--reason", "offline revocation"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let server = Server::start(BIN, &fixture.config_path);
    let reply = server.client().get_bearer(&query(SERVICE, &[PULL]), &caller).unwrap();
    assert_eq!(reply.status, 403, "a revocation made while it was down applies from the start: {reply}");
    let token = admin_token(&fixture, "root", None);
    let recorded = eventually(|| events(&server.admin(), &token, ""), |recorded| recorded.len() == 3);
    let outcomes: Vec<&str> = recorded.iter().map(|e| e["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["denied", "revocation_created", "issued"]);
}

/// A client that hangs up mid-exchange (here: a policy that takes its whole 1.5 s deadline) and a
/// SIGTERM right after: the stop waits for the exchange, which runs on in a task of its own, so its
/// event is in the ledger and the stop is clean.
#[test]
fn a_stop_waits_for_the_exchange_of_a_client_that_hung_up() {
    use std::io::Write;
    let fixture = Fixture::with(|config| {
        config.policy.module = Some(test_support::HOSTILE_GUEST_WASM.into());
        config.policy.settings_file = None;
        config.policy.timeout_ms = Some(1500);
    });
    let mut server = Server::start(BIN, &fixture.config_path);
    let asked = "repository:hostile/sleep:pull";
    let mut stream = std::net::TcpStream::connect(server.address()).unwrap();
    write!(
        stream,
        "GET {} HTTP/1.1\r\nHost: registry-token\r\nAuthorization: Bearer {}\r\n\r\n",
        query(SERVICE, &[asked]),
        fixture.token(|_| {})
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(stream);
    std::thread::sleep(Duration::from_millis(100));
    server.signal("TERM");
    let status = server.wait(Duration::from_secs(20));
    assert!(status.success(), "{status}: {}", server.stderr());
    let output = ledger_cli(&fixture, &["events", "--json"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let listed: Value = serde_json::from_slice(&output.stdout).unwrap();
    let events = listed["events"].as_array().unwrap();
    let event = events.iter().find(|e| e["requested"] == json!([asked]));
    let event = event.unwrap_or_else(|| panic!("the exchange was cut off: {events:#?}\n{}", server.stderr()));
    assert_eq!(event["outcome"], "fault", "{event}");
    assert_eq!(event["reason"], "deadline", "{event}");
}

/// A relative `ledger.url` is from the working directory: a command run elsewhere than the service
/// must not create an empty ledger there and report nothing, build a bundle without the
/// revocations, or report a revocation no service will ever read. Every command refuses; only
/// `ledger revoke --create` sets a ledger up, and says so.
#[test]
fn ledger_commands_refuse_a_ledger_that_is_not_there_and_only_revoke_create_makes_one() {
    let fixture = Fixture::new();
    let text = std::fs::read_to_string(&fixture.config_path).unwrap();
    let absolute = format!("sqlite://{}", fixture.root().join("ledger.db").display());
    assert!(text.contains(&absolute), "{text}");
    let config = fixture.root().join("relative.yaml");
    std::fs::write(&config, text.replace(&absolute, "sqlite://var/ledger.db")).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let missing = elsewhere.path().join("var/ledger.db");
    let run = |args: &[&str]| {
        let output = Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(&config)
            .current_dir(elsewhere.path())
            .output()
            .unwrap();
        (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let refusal = format!("there is no ledger at {}", missing.display());
    for args in [
        &["ledger", "events"][..],
        &["ledger", "revocations"],
        &["ledger", "refresh-tokens"],
        &["ledger", "unrevoke", "0192f1c4-0000-7000-8000-000000000000"],
        &["ledger", "export", "--out", "export.jsonl"],
        &["bundle", "revisions"],
        &["ledger", "revoke", "subject", "alice", "--reason", "from the wrong directory"],
        &[
            "ledger",
            "revoke",
            "refresh_token",
            "0192f1c4-0000-7000-8000-000000000000",
            "--reason",
            "r",
            "--create",
        ],
    ] {
        let (code, stderr) = run(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&refusal) && stderr.contains("run this where the service runs"),
            "{args:?}: {stderr}"
        );
        assert!(!missing.exists(), "{args:?} created {}", missing.display());
    }
    // A mistyped revocation or filter is refused before the ledger is opened, so neither is an
    // empty one created nor a database asked.
    for (args, error) in [
        (&["ledger", "revoke", "subjct", "alice", "--reason", "typo"][..], "is not one of"),
        (&["ledger", "revoke", "subject", "alice", "--reason", ""], "reason"),
        (
            &[
                "ledger",
                "revoke",
                "subject",
                "alice",
                "--reason",
                "r",
                "--expires-at",
                "2001-01-01T00:00:00Z",
            ],
            "not in the future",
        ),
        (&["ledger", "events", "--since", "yesterday"], "--since"),
        (
            &["ledger", "events", "--since", "2030-01-01T00:00:00Z", "--until", "2020-01-01T00:00:00Z"],
            "--since (2030-01-01T00:00:00.000Z) is not before until (2020-01-01T00:00:00.000Z)",
        ),
    ] {
        let (code, stderr) = run(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(error) && !stderr.contains("ledger at"), "{args:?}: {stderr}");
        assert!(!missing.exists(), "{args:?} created {}", missing.display());
    }

    let (_, stderr) = run(&["ledger", "revoke", "subject", "alice", "--reason", "from the wrong directory"]);
    assert!(stderr.contains("`ledger revoke --create` sets up a ledger"), "{stderr}");
    let (code, stderr) =
        run(&["ledger", "revoke", "subject", "alice", "--reason", "set up offline", "--create"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains(&format!("there was no ledger at {}", missing.display())), "{stderr}");
    assert!(missing.exists());
    let (code, stderr) = run(&["ledger", "revocations"]);
    assert_eq!(code, Some(0), "now it is there: {stderr}");
    // The service's own ledger, by its absolute path, is untouched: there is none yet.
    assert!(!fixture.root().join("ledger.db").exists());
}

#[test]
fn a_tenant_administrator_reads_and_revokes_only_within_its_tenant() {
    let fixture = Fixture::new();
    let server = Server::start(BIN, &fixture.config_path);
    let (client, admin) = (server.client(), server.admin());
    let global = admin_token(&fixture, "root", None);
    let acme = admin_token(&fixture, "acme-admin", Some("acme"));
    let acme_bob = fixture.token(|r| r.subject = "bob".into());
    let globex_bob = fixture.token(|r| {
        r.subject = "bob".into();
        r.tenant = Some("globex".into());
    });
    for token in [&acme_bob, &globex_bob] {
        assert_eq!(client.get_bearer(&query(SERVICE, &[PULL]), token).unwrap().status, 200);
    }
    let globex_event = events(&admin, &global, "?tenant=globex")[0]["id"].as_str().unwrap().to_owned();
    let global_revocation =
        revoke(&admin, &global, json!({"kind": "client", "value": "nobody", "reason": "global"}));

    // Reading: only its tenant's events, whatever it asks.
    let seen = events(&admin, &acme, "");
    assert!(!seen.is_empty() && seen.iter().all(|e| e["tenant"] == "acme"), "{seen:#?}");
    let reply = admin.get_bearer("/admin/v1/events?tenant=globex", &acme).unwrap();
    assert_eq!(reply.status, 403, "{reply}");
    let reply = admin.get_bearer(&format!("/admin/v1/events/{globex_event}"), &acme).unwrap();
    assert_eq!(reply.status, 404, "another tenant's event is not found: {reply}");
    let cursor = data_encoding::BASE64URL_NOPAD.encode(globex_event.as_bytes());
    let reply = admin.get_bearer(&format!("/admin/v1/events?cursor={cursor}"), &acme).unwrap();
    assert_eq!(reply.status, 400, "a cursor into another tenant is not one issued to it: {reply}");
    let listed = admin.get_bearer("/admin/v1/revocations", &acme).unwrap();
    assert_eq!(listed.body["revocations"], json!([]), "the global revocation is not its to see");

    // A tenant claim that is null or empty is no global administrator's token.
    let null_tenant = fixture.token(|r| {
        r.subject = "half-admin".into();
        r.scope = "registry.admin".into();
        r.tenant = None;
        r.extra.insert("stellaops:tenant".into(), Value::Null);
    });
    let empty_tenant = admin_token(&fixture, "empty-admin", Some(""));
    for token in [&null_tenant, &empty_tenant] {
        for path in ["/admin/v1/events?tenant=globex", "/admin/v1/events", "/admin/v1/revocations"] {
            let reply = admin.get_bearer(path, token).unwrap();
            assert_eq!(reply.status, 403, "{path}: {reply}");
            assert!(reply.to_string().contains("stellaops:tenant is null or empty"), "{reply}");
        }
    }

    // Revoking: every way out of its tenant is a 403 that writes nothing.
    let before = (
        events(&admin, &global, "?limit=1000").len(),
        admin.get_bearer("/admin/v1/revocations", &global).unwrap().body,
    );
    for body in [
        json!({"kind": "tenant", "value": "globex", "reason": "x"}),
        json!({"kind": "tenant", "value": "globex", "reason": "x", "tenant": "acme"}),
        json!({"kind": "subject", "value": "bob", "reason": "x", "tenant": "globex"}),
    ] {
        let reply = admin.post_json_bearer("/admin/v1/revocations", &acme, &body.to_string()).unwrap();
        assert_eq!(reply.status, 403, "{body}: {reply}");
    }
    let id = global_revocation["id"].as_str().unwrap();
    assert_eq!(admin.delete_bearer(&format!("/admin/v1/revocations/{id}"), &acme).unwrap().status, 403);
    let after = (
        events(&admin, &global, "?limit=1000").len(),
        admin.get_bearer("/admin/v1/revocations", &global).unwrap().body,
    );
    assert_eq!(before, after, "a refused admin request wrote nothing");

    // Filters never reach out of its tenant: globex's bob is not among "bob"'s events.
    let bobs = events(&admin, &acme, "?sub=bob");
    assert_eq!(bobs.len(), 1, "{bobs:#?}");
    assert_eq!(bobs[0]["tenant"], "acme");
    let (_, globex_claims) = decode(&globex_bob);
    assert_eq!(events(&admin, &acme, &format!("?jti={}", globex_claims["jti"].as_str().unwrap())).len(), 0);

    // Within its tenant: whatever it revokes applies to acme's callers only.
    let acme_carol = fixture.token(|r| {
        r.subject = "carol".into();
        r.license = Some("LIC-7".into());
    });
    let globex_carol = fixture.token(|r| {
        r.subject = "carol".into();
        r.tenant = Some("globex".into());
        r.license = Some("LIC-7".into());
    });
    let revocation =
        revoke(&admin, &acme, json!({"kind": "subject", "value": "bob", "reason": "acme says so"}));
    assert_eq!(revocation["tenant"], "acme");
    assert_eq!(client.get_bearer(&query(SERVICE, &[PULL]), &acme_bob).unwrap().status, 403);
    assert_eq!(client.get_bearer(&query(SERVICE, &[PULL]), &globex_bob).unwrap().status, 200);
    revoke(&admin, &acme, json!({"kind": "licence", "value": "LIC-7", "reason": "acme's licence"}));
    assert_eq!(client.get_bearer(&query(SERVICE, &[PULL]), &acme_carol).unwrap().status, 403);
    assert_eq!(client.get_bearer(&query(SERVICE, &[PULL]), &globex_carol).unwrap().status, 200);

    // A global administrator's revocation aimed at acme is not acme's administrator's to lift.
    let aimed = revoke(
        &admin,
        &global,
        json!({"kind": "client", "value": "ci-bot", "reason": "global", "tenant": "acme"}),
    );
    let listed = admin.get_bearer("/admin/v1/revocations", &acme).unwrap().body;
    assert_eq!(listed["revocations"].as_array().unwrap().len(), 3, "it sees what applies to its tenant");
    let id = aimed["id"].as_str().unwrap();
    let reply = admin.delete_bearer(&format!("/admin/v1/revocations/{id}"), &acme).unwrap();
    assert_eq!(reply.status, 403, "{reply}");
    let audit = events(&admin, &acme, "?outcome=revocation_created");
    assert_eq!(audit.len(), 3, "the actions in its tenant are in its audit trail: {audit:#?}");

    // It may suspend its own tenant, and is then refused like its callers.
    revoke(&admin, &acme, json!({"kind": "tenant", "value": "acme", "reason": "suspended"}));
    assert_eq!(client.get_bearer(&query(SERVICE, &[PULL]), &fixture.token(|_| {})).unwrap().status, 403);
    let reply = admin.get_bearer("/admin/v1/revocations", &acme).unwrap();
    assert_eq!(reply.status, 403, "a revoked administrator is refused: {reply}");
    assert_eq!(reply.body["message"], "tenant acme has been revoked: suspended");
}

#[test]
fn a_revoked_administrator_cannot_lift_its_own_revocation() {
    let fixture = Fixture::new();
    let server = Server::start(BIN, &fixture.config_path);
    let admin = server.admin();
    let (security, leaked) = (admin_token(&fixture, "security", None), admin_token(&fixture, "root", None));
    let (_, claims) = decode(&leaked);
    let jti = claims["jti"].as_str().unwrap();
    let revocation =
        revoke(&admin, &security, json!({"kind": "caller_token", "value": jti, "reason": "leaked"}));
    let id = revocation["id"].as_str().unwrap();
    let reply = admin.delete_bearer(&format!("/admin/v1/revocations/{id}"), &leaked).unwrap();
    assert_eq!(reply.status, 403, "{reply}");
    assert_eq!(reply.body["message"], format!("caller_token {jti} has been revoked: leaked"));
    assert_eq!(admin.get_bearer("/admin/v1/events", &leaked).unwrap().status, 403);
    let listed = admin.get_bearer("/admin/v1/revocations", &security).unwrap().body;
    assert_eq!(listed["revocations"][0]["id"], id, "still in force");
}

#[test]
fn the_admin_api_refuses_bad_input_and_bad_credentials_and_writes_nothing() {
    let fixture = Fixture::new();
    let server = Server::start(BIN, &fixture.config_path);
    let admin = server.admin();
    let token = admin_token(&fixture, "root", None);

    let missing = admin.get("/admin/v1/events").unwrap();
    assert_eq!(missing.status, 401);
    assert_eq!(missing.headers["www-authenticate"], "Bearer realm=\"registry-token\"");
    let caller = fixture.token(|_| {});
    let reply = admin.get_bearer("/admin/v1/events", &caller).unwrap();
    assert_eq!(reply.status, 403, "a caller token is not an administrator's: {reply}");
    assert!(reply.body["message"].as_str().unwrap().contains("registry.admin"));
    let expired = fixture.token(|r| {
        r.scope = "registry.admin".into();
        r.ttl_seconds = -3600;
    });
    assert_eq!(admin.get_bearer("/admin/v1/events", &expired).unwrap().status, 401);
    assert_eq!(admin.get_basic("/admin/v1/events", "root", &token).unwrap().status, 401, "Bearer only");

    let oversized = json!({"kind": "subject", "value": "x", "reason": "r".repeat(20_000)}).to_string();
    for (body, says) in [
        ("{not json", "not a revocation as JSON"),
        (r#"{"kind": "planet", "value": "x", "reason": "r"}"#, "kind \"planet\" is not one of"),
        (r#"{"kind": "subject", "value": "", "reason": "r"}"#, "value is empty"),
        (r#"{"kind": "subject", "value": "x", "reason": ""}"#, "reason is empty"),
        (r#"{"kind": "subject", "value": "x"}"#, "missing field `reason`"),
        (r#"{"kind": "subject", "value": "x", "reason": "r", "admin": true}"#, "unknown field `admin`"),
        (r#"{"kind": "subject", "value": "al\"ice", "reason": "r"}"#, "value contains '\"'"),
        (
            r#"{"kind": "subject", "value": "x'; DROP TABLE revocations; --", "reason": "r"}"#,
            "value contains '\\''",
        ),
        (r#"{"kind": "subject", "value": "nul\u0000", "reason": "r"}"#, "value contains '\\0'"),
        (r#"{"kind": "subject", "value": "x", "reason": "r\u0000"}"#, "control characters"),
        (r#"{"kind": "subject", "value": "x", "reason": "r", "expires_at": "tomorrow"}"#, "expires_at"),
        (r#"{"kind": "subject", "value": "x", "reason": "r", "expires_at": 1.5e12}"#, "or Unix seconds"),
        (r#"{"kind": "subject", "value": "x", "reason": "r", "expires_at": true}"#, "or Unix seconds"),
        (
            r#"{"kind": "subject", "value": "x", "reason": "r", "expires_at": "2001-01-01T00:00:00Z"}"#,
            "not in the future",
        ),
        // Past what RFC 3339 can write back: it would break every listing of the revocations.
        (
            r#"{"kind": "subject", "value": "x", "reason": "r", "expires_at": "253402300800"}"#,
            "after 9999-12-31",
        ),
        (
            r#"{"kind": "subject", "value": "x", "reason": "r", "expires_at": "9999-12-31T23:59:59-01:00"}"#,
            "after 9999-12-31",
        ),
        // An offset the weak parser would have dropped: refused, never guessed.
        (
            r#"{"kind": "subject", "value": "x", "reason": "r", "expires_at": "2099-01-01T00:00:00+5"}"#,
            "is not an RFC 3339 time",
        ),
        (
            r#"{"kind": "tenant", "value": "acme", "reason": "r", "tenant": "globex"}"#,
            "cannot be scoped to tenant",
        ),
        (r#"["subject", "x"]"#, "not a revocation as JSON"),
        (oversized.as_str(), "larger than"),
    ] {
        let reply = admin.post_json_bearer("/admin/v1/revocations", &token, body).unwrap();
        assert_eq!(reply.status, 400, "{body}: {reply}");
        assert_eq!(reply.body["error"], "bad_request");
        let message = reply.body["message"].as_str().unwrap();
        assert!(message.contains(says), "{body}: {message:?} should say {says:?}");
    }
    for query in [
        "?limit=0",
        "?limit=1001",
        "?limit=ten",
        "?outcome=stolen",
        "?since=yesterday",
        "?since=2030-01-01T00:00:00Z&until=2020-01-01T00:00:00Z",
        "?since=1700000000&until=1700000000",
        "?sub=%27%20OR%201%3D1--",
        "?sub=a&sub=b",
        "?colour=blue",
        "?cursor=not-a-cursor",
        // Well-formed, but no event has this id: not a cursor this API issued.
        "?cursor=MDE5MzhmM2UtMDAwMC03MDAwLTgwMDAtMDAwMDAwMDAwMDAw",
    ] {
        let reply = admin.get_bearer(&format!("/admin/v1/events{query}"), &token).unwrap();
        assert_eq!(reply.status, 400, "{query}: {reply}");
    }
    // One filter under its two spellings is given twice too.
    let reply = admin.get_bearer("/admin/v1/events?licence=A&license=B", &token).unwrap();
    assert_eq!(reply.status, 400, "{reply}");
    assert_eq!(reply.body["message"], "licence is given more than once (as licence and license)", "{reply}");
    assert_eq!(admin.get_bearer("/admin/v1/events/not-a-uuid", &token).unwrap().status, 400);
    assert_eq!(admin.delete_bearer("/admin/v1/revocations/1%27%20OR%201=1", &token).unwrap().status, 400);
    assert_eq!(admin.get_bearer("/admin/v1/nothing", &token).unwrap().status, 404);

    // Nothing was written, and the server still serves.
    let listed = admin.get_bearer("/admin/v1/revocations", &token).unwrap();
    assert_eq!(listed.body, json!({"revocations": []}));
    assert_eq!(events(&admin, &token, "").len(), 0, "no admin event was written");
    assert_eq!(admin.get("/readyz").unwrap().status, 200);
    assert_eq!(server.client().get_bearer(&query(SERVICE, &[PULL]), &caller).unwrap().status, 200);
}

#[test]
fn events_page_newest_first_through_cursors() {
    let fixture = Fixture::new();
    let server = Server::start(BIN, &fixture.config_path);
    let caller = fixture.token(|_| {});
    for _ in 0..7 {
        assert_eq!(server.client().get_bearer(&query(SERVICE, &[PULL]), &caller).unwrap().status, 200);
    }
    let (admin, token) = (server.admin(), admin_token(&fixture, "root", None));
    // The six repeats were answered with the first token: their events are queued, not awaited,
    // and land within moments.
    let all = eventually(|| events(&admin, &token, ""), |all| all.len() == 7);
    assert_eq!(all.len(), 7);
    let mut paged = Vec::new();
    let mut path = "/admin/v1/events?limit=3&outcome=issued".to_owned();
    loop {
        let reply = admin.get_bearer(&path, &token).unwrap();
        assert_eq!(reply.status, 200, "{reply}");
        paged.extend(reply.body["events"].as_array().unwrap().iter().cloned());
        match reply.body["next_cursor"].as_str() {
            Some(cursor) => path = format!("/admin/v1/events?limit=3&outcome=issued&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(paged, all, "three pages, newest first, nothing twice");
    let ids: Vec<&str> = all.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(ids, sorted);
}

#[test]
fn readyz_reports_the_ledger_and_ledger_none_turns_it_off_loudly() {
    let fixture = Fixture::new();
    let server = Server::start(BIN, &fixture.config_path);
    let ready = server.admin().get("/readyz").unwrap();
    assert_eq!(ready.status, 200);
    assert_eq!(ready.body["ledger"]["backend"], "sqlite");
    assert_eq!(ready.body["ledger"]["durability"], "strict");
    assert_eq!(ready.body["ledger"]["writable"], true);
    assert_eq!(server.client().get("/readyz").unwrap().body, ready.body, "both listeners probe the same");
    drop(server);

    let off = Fixture::with(|config| config.ledger.url = "none".into());
    let server = Server::start(BIN, &off.config_path);
    assert!(server.stderr().contains("ledger.url is none: no audit trail"), "{}", server.stderr());
    assert_eq!(server.client().get_bearer(&query(SERVICE, &[PULL]), &off.token(|_| {})).unwrap().status, 200);
    assert_eq!(server.admin().get("/readyz").unwrap().body["ledger"], "off");
    let reply = server.admin().get_bearer("/admin/v1/revocations", &admin_token(&off, "root", None)).unwrap();
    assert_eq!((reply.status.as_u16(), reply.body["error"].as_str()), (503, Some("ledger_off")));
}

/// The fixture's ledger, created and migrated by the command line (`ledger revoke --create` sets a
/// ledger up, with one revocation of `nobody`), opened for the test to change its schema.
fn created_ledger(fixture: &Fixture) -> rusqlite::Connection {
    let created = ledger_cli(fixture, &["revoke", "subject", "nobody", "--reason", "set up", "--create"]);
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    rusqlite::Connection::open(fixture.root().join("ledger.db")).unwrap()
}

#[test]
fn a_ledger_with_a_newer_schema_is_refused_with_a_clear_message() {
    let fixture = Fixture::new();
    // A newer binary's migration, faked.
    let connection = created_ledger(&fixture);
    connection.execute("INSERT INTO schema_migrations (version, applied_at_ms) VALUES (99, 0)", []).unwrap();
    drop(connection);
    let output = test_support::serve_command(BIN, &fixture.config_path).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    // The known version grows with each migration; the message names both.
    assert!(stderr.contains("has schema version 99, newer than this registry-token knows ("), "{stderr}");
    assert!(stderr.contains("run a newer registry-token"), "{stderr}");
}

/// A command never migrates a ledger a service runs on (a newer binary on an auditor's machine
/// would leave the older replicas unable to start): one of an older schema is refused and left as
/// it was; once the service of this version has started on it, the command reads it.
#[test]
fn a_command_does_not_migrate_a_ledger_of_an_older_schema() {
    let fixture = Fixture::new();
    // Back to schema 3, as the previous release left it.
    let connection = created_ledger(&fixture);
    connection
        .execute_batch(
            "DROP INDEX events_tenant_id; CREATE INDEX events_tenant ON events (tenant, outcome, id);
             DELETE FROM schema_migrations WHERE version > 3;",
        )
        .unwrap();
    let schema = |connection: &rusqlite::Connection| -> (i64, i64) {
        let version = connection.query_row("SELECT MAX(version) FROM schema_migrations", [], |r| r.get(0));
        let old_index = connection.query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'events_tenant'",
            [],
            |r| r.get(0),
        );
        (version.unwrap(), old_index.unwrap())
    };
    assert_eq!(schema(&connection), (3, 1));
    for args in [&["events"][..], &["revocations"], &["revoke", "subject", "eve", "--reason", "r"]] {
        let output = ledger_cli(&fixture, args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("has schema version 3, older than this registry-token's"), "{stderr}");
        assert!(stderr.contains("a command does not migrate a ledger"), "{stderr}");
        assert_eq!(schema(&connection), (3, 1), "{args:?} changed the schema");
    }
    let mut server = Server::start(BIN, &fixture.config_path);
    server.signal("TERM");
    assert!(server.wait(Duration::from_secs(20)).success(), "{}", server.stderr());
    assert_eq!(schema(&connection).1, 0, "the service migrated it");
    let output = ledger_cli(&fixture, &["revocations"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("subject nobody"));
}

#[test]
fn relaxed_durability_issues_and_records_soon_after() {
    let fixture = Fixture::with(|config| config.ledger.durability = Some("relaxed".into()));
    let server = Server::start(BIN, &fixture.config_path);
    let caller = fixture.token(|_| {});
    for _ in 0..20 {
        assert_eq!(server.client().get_bearer(&query(SERVICE, &[PULL]), &caller).unwrap().status, 200);
    }
    let (admin, token) = (server.admin(), admin_token(&fixture, "root", None));
    let deadline = Instant::now() + Duration::from_secs(2);
    while events(&admin, &token, "").len() < 20 {
        assert!(Instant::now() < deadline, "relaxed events were not written within 2 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(admin.get("/readyz").unwrap().body["ledger"]["durability"], "relaxed");

    // What relaxed means: while another process holds the ledger's write lock, tokens are still
    // answered at once (strict waits for each commit, and refuses when it cannot happen); their
    // events are written once the lock is gone.
    let blocker = rusqlite::Connection::open(fixture.root().join("ledger.db")).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    for n in 0..5 {
        let scope = format!("repository:team/held{n}:pull");
        let reply = server.client().get_bearer(&query(SERVICE, &[scope.as_str()]), &caller).unwrap();
        assert_eq!(reply.status, 200, "{reply}");
    }
    blocker.execute_batch("ROLLBACK").unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while events(&admin, &token, "").len() < 25 {
        assert!(Instant::now() < deadline, "the events answered under the lock were not written");
        std::thread::sleep(Duration::from_millis(50));
    }
}
