//! Replicas sharing one PostgreSQL ledger, for real: Debian's `postgresql`, started by the test on a
//! free loopback port in a temporary directory (as an unprivileged user when the suite runs as
//! root), and two release servers on it. A revocation made through one replica's admin API, or by
//! `registry-token ledger revoke`, is refused by every replica within a second; stopping
//! PostgreSQL under load with strict durability gives 503s and never a token without its record,
//! and service resumes when it comes back, without a restart. The policy bundle revisions recorded
//! there are shared too, and only rise; a replica asked for a new bundle while the record cannot be
//! read refuses it until it can.
//!
//! PostgreSQL is required: when it is missing the test fails and says what to install; it never
//! skips. One cluster serves the whole suite, which runs its scenarios in order (the outage one
//! stops the server).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../host/tests/common/mod.rs"]
mod common;

use common::*;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use test_support::{Client, PostgresCluster, Server};

const BIN: &str = env!("CARGO_BIN_EXE_registry-token");
const PULL: &str = "repository:team/app:pull";

fn admin_token(fixture: &Fixture) -> String {
    fixture.token(|r| {
        r.subject = "security".into();
        r.scope = "registry.admin".into();
        r.tenant = None;
    })
}

/// How long after `since` `client` first refuses `caller` (polling every 10 ms, at most 5 s).
fn refused_after(client: &Client, caller: &str, since: Instant) -> (Duration, String) {
    loop {
        let reply = client.get_bearer(&query(SERVICE, &[PULL]), caller).unwrap();
        if reply.status == 403 || since.elapsed() > Duration::from_secs(5) {
            return (since.elapsed(), reply.message());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn allowed_again(client: &Client, caller: &str) {
    let since = Instant::now();
    while client.get_bearer(&query(SERVICE, &[PULL]), caller).unwrap().status != 200 {
        assert!(since.elapsed() < Duration::from_secs(2), "a lifted revocation still refuses");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `registry-token bundle build` of the plan catalogue at `revision` into `out` (unsigned: the
/// replica that serves it trusts no bundle key).
fn build_bundle(dir: &std::path::Path, revision: u64, out: &std::path::Path) {
    let settings = dir.join("bundle-settings.yaml");
    std::fs::write(&settings, test_support::PLANS).unwrap();
    let output = Command::new(BIN)
        .args(["bundle", "build", "--policy", "builtin:plan-catalogue", "--settings"])
        .arg(&settings)
        .args(["--revision", &revision.to_string(), "--created-at", "2026-12-01T00:00:00Z", "--out"])
        .arg(out)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

/// Waits (at most 5 s) until the ledger's one bundle record is at `revision`.
fn wait_for_recorded_revision(cluster: &PostgresCluster, revision: &str) {
    let since = Instant::now();
    loop {
        let recorded = cluster.psql("SELECT revision FROM bundle_revisions");
        if recorded.trim() == revision {
            return;
        }
        assert!(since.elapsed() < Duration::from_secs(5), "revision {revision} not recorded: {recorded:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `client`'s `/readyz` (whatever its status) until `done` holds, at most 30 s.
fn readyz_until(client: &Client, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let since = Instant::now();
    loop {
        let status = client.get("/readyz").unwrap().body;
        if done(&status) {
            return status;
        }
        assert!(since.elapsed() < Duration::from_secs(30), "{what} within 30 s: {status}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn replicas_on_one_postgres_ledger_share_revocations_and_fail_closed_when_it_is_down() {
    let mut cluster = PostgresCluster::start();
    let url = cluster.url();
    let fixture = Fixture::with(|config| config.ledger.url = url.clone());
    // 0. Before any replica has run: a command refuses the empty database and writes nothing;
    //    `ledger revoke --create` gives it the schema and a revocation the replicas apply from
    //    their first request.
    let revoke_mallory = |create: &[&str]| {
        Command::new(BIN)
            .args(["ledger", "revoke", "subject", "mallory", "--reason", "laptop lost"])
            .args(create)
            .arg("--config")
            .arg(&fixture.config_path)
            .output()
            .unwrap()
    };
    let refused = revoke_mallory(&[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "a revocation written to a database with no schema: {stderr}");
    assert!(stderr.contains("has no schema yet") && stderr.contains("ledger revoke --create"), "{stderr}");
    assert_eq!(cluster.psql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").trim(), "0");
    let created = revoke_mallory(&["--create"]);
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    // A role that may write rows but not create tables (an auditor's) revokes with --create on
    // the ledger now that it has its schema: nothing is created, so nothing needs that right.
    cluster.psql(
        "CREATE ROLE auditor LOGIN; REVOKE CREATE ON SCHEMA public FROM PUBLIC; \
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO auditor",
    );
    let auditor = fixture.root().join("auditor.yaml");
    let yaml = std::fs::read_to_string(&fixture.config_path).unwrap();
    assert!(yaml.contains(&url));
    std::fs::write(&auditor, yaml.replace(&url, &url.replacen("registry_token@", "auditor@", 1))).unwrap();
    let output = Command::new(BIN)
        .args(["ledger", "revoke", "subject", "trudy", "--reason", "audit", "--create", "--config"])
        .arg(&auditor)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    // Two replicas of one installation: the same configuration, each on its own free ports.
    let a = Server::start(BIN, &fixture.config_path);
    let b = Server::start(BIN, &fixture.config_path);
    let (a_client, b_client) = (a.client(), b.client());
    let admin = admin_token(&fixture);
    let alice = fixture.token(|_| {});
    let mallory = fixture.token(|r| r.subject = "mallory".into());
    for client in [&a_client, &b_client] {
        assert_eq!(client.get_bearer(&query(SERVICE, &[PULL]), &alice).unwrap().status, 200);
        let reply = client.get_bearer(&query(SERVICE, &[PULL]), &mallory).unwrap();
        assert_eq!(reply.status, 403, "{reply}");
        assert_eq!(reply.message(), "subject mallory has been revoked: laptop lost");
    }
    // PostgreSQL's text holds no NUL: a caller whose claim has one still gets its token (strict:
    // its event was committed), recorded with U+FFFD in its place.
    let nul = fixture.token(|r| r.subject = "nul\0sub".into());
    assert_eq!(a_client.get_bearer(&query(SERVICE, &[PULL]), &nul).unwrap().status, 200);
    assert_eq!(cluster.psql("SELECT sub FROM events WHERE sub LIKE 'nul%'").trim(), "nul\u{fffd}sub");

    // 1. Through replica A's admin API; replica B refuses within a second.
    let body = json!({"kind": "subject", "value": "alice", "reason": "badge returned"}).to_string();
    let reply = a.admin().post_json_bearer("/admin/v1/revocations", &admin, &body).unwrap();
    assert_eq!(reply.status, 201, "{reply}");
    let revoked_at = Instant::now();
    let (took, message) = refused_after(&b_client, &alice, revoked_at);
    println!("replica B refused {took:?} after replica A's revocation");
    assert!(took < Duration::from_secs(1), "replica B refused only after {took:?}");
    assert_eq!(message, "subject alice has been revoked: badge returned");
    assert_eq!(refused_after(&a_client, &alice, Instant::now()).1, message, "and A at once");
    let id = reply.body["id"].as_str().unwrap();
    assert_eq!(b.admin().delete_bearer(&format!("/admin/v1/revocations/{id}"), &admin).unwrap().status, 204);
    allowed_again(&a_client, &alice);

    // 2. From the command line, on the shared database; both replicas refuse within a second.
    let output = Command::new(BIN)
        .args(["ledger", "revoke", "tenant", "acme", "--reason", "unpaid", "--config"])
        .arg(&fixture.config_path)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let revoked_at = Instant::now();
    for (name, client) in [("A", &a_client), ("B", &b_client)] {
        let (took, message) = refused_after(client, &alice, revoked_at);
        println!("replica {name} refused {took:?} after `ledger revoke`");
        assert!(took < Duration::from_secs(1), "replica {name} refused only after {took:?}");
        assert_eq!(message, "tenant acme has been revoked: unpaid");
    }
    let id = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    let output = Command::new(BIN)
        .args(["ledger", "unrevoke", &id, "--config"])
        .arg(&fixture.config_path)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    allowed_again(&a_client, &alice);
    allowed_again(&b_client, &alice);

    // 3. A refresh token issued by replica A works on replica B (it lives in the shared ledger);
    //    revoked through B's admin API, A refuses it within a second.
    let login = format!("{}&offline_token=true&client_id=docker", query(SERVICE, &[]));
    let reply = a_client.get_bearer(&login, &alice).unwrap();
    let refresh_token = reply.body["refresh_token"].as_str().unwrap_or_else(|| panic!("{reply}")).to_owned();
    let refresh = |client: &Client| {
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.as_str()),
            ("service", SERVICE),
            ("client_id", "docker"),
            ("scope", PULL),
        ];
        client.post_form("/token", &form).unwrap()
    };
    let reply = refresh(&b_client);
    assert_eq!((reply.status.as_u16(), reply.body["scope"].as_str()), (200, Some(PULL)), "{reply}");
    assert_eq!(reply.body["refresh_token"], refresh_token.as_str());
    let listed = b.admin().get_bearer("/admin/v1/refresh-tokens?sub=alice", &admin).unwrap();
    let id = listed.body["refresh_tokens"][0]["id"].as_str().unwrap_or_else(|| panic!("{listed}")).to_owned();
    assert!(!listed.text.contains(&refresh_token), "never a token's text");
    let reply = b.admin().delete_bearer(&format!("/admin/v1/refresh-tokens/{id}"), &admin).unwrap();
    assert_eq!(reply.status, 204, "{reply}");
    let revoked_at = Instant::now();
    loop {
        let reply = refresh(&a_client);
        if reply.status == 401 {
            assert!(reply.message().contains("the refresh token was revoked: refresh_token"), "{reply}");
            break;
        }
        assert!(revoked_at.elapsed() < Duration::from_secs(1), "replica A still refreshes: {reply}");
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("replica A refused the refresh token {:?} after replica B revoked it", revoked_at.elapsed());
    // Every use is an event on the shared ledger: the issued ones (committed before their answer)
    // and the refused one (written moments after its answer).
    let uses = |outcome: &str| {
        let sql = format!(
            "SELECT count(*) FROM events WHERE refresh_token_id = '{id}' AND via = 'refresh_token' \
             AND outcome = '{outcome}'"
        );
        cluster.psql(&sql).trim().parse::<usize>().unwrap()
    };
    assert!(uses("issued") >= 1);
    let since = Instant::now();
    while uses("refused") == 0 {
        assert!(since.elapsed() < Duration::from_secs(5), "the refused use was not recorded");
        std::thread::sleep(Duration::from_millis(50));
    }

    // 3b. A dozen audit listings that cannot end (another session holds a lock on the refresh
    //     tokens, so each waits out its statement timeout) take at most two of replica A's eight
    //     connections: its strict exchanges are still committed and answered meanwhile. A command
    //     is not bound by the service's 5 s statement timeout: it waits the lock out (an export of
    //     a long window takes as long as it takes).
    let mut locker = cluster.session();
    {
        use std::io::Write;
        let stdin = locker.stdin.as_mut().unwrap();
        writeln!(stdin, "BEGIN; LOCK TABLE refresh_tokens IN ACCESS EXCLUSIVE MODE;").unwrap();
        stdin.flush().unwrap();
    }
    let locked = "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
                  WHERE c.relname = 'refresh_tokens' AND l.mode = 'AccessExclusiveLock' AND l.granted";
    let since = Instant::now();
    while cluster.psql(locked).trim() != "1" {
        assert!(since.elapsed() < Duration::from_secs(10), "psql never took the lock");
        std::thread::sleep(Duration::from_millis(20));
    }
    let command_started = Instant::now();
    let command = Command::new(BIN)
        .args(["ledger", "refresh-tokens", "--config"])
        .arg(&fixture.config_path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let listings: Vec<_> = (0..12)
        .map(|_| {
            let (admin_client, token) = (a.admin(), admin.clone());
            std::thread::spawn(move || admin_client.get_bearer("/admin/v1/refresh-tokens", &token).unwrap())
        })
        .collect();
    let bob = fixture.token(|r| r.subject = "bob".into());
    let since = Instant::now();
    let mut exchanges = 0;
    while since.elapsed() < Duration::from_secs(6) {
        let reply = a_client.get_bearer(&query(SERVICE, &[PULL]), &bob).unwrap();
        assert_eq!(reply.status, 200, "an exchange beside stuck audit listings: {reply}");
        exchanges += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    // Well past the service's statement timeout for the command too.
    std::thread::sleep(Duration::from_secs(7).saturating_sub(command_started.elapsed()));
    {
        use std::io::Write;
        let stdin = locker.stdin.as_mut().unwrap();
        writeln!(stdin, "COMMIT;").unwrap();
    }
    drop(locker.stdin.take());
    assert!(locker.wait().unwrap().success());
    let statuses: Vec<u16> = listings.into_iter().map(|l| l.join().unwrap().status.as_u16()).collect();
    println!("{exchanges} exchanges answered beside 12 stuck audit listings, which answered {statuses:?}");
    assert!(statuses.iter().all(|s| [200, 503].contains(s)), "{statuses:?}");
    assert!(statuses.contains(&200), "the listings run once the lock is gone: {statuses:?}");
    let output = command.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("alice"), "the command listed the refresh tokens: {stdout}");
    println!("`ledger refresh-tokens` waited {:?} for the lock and answered", command_started.elapsed());

    // 4. The highest policy bundle revision applied from a source, shared by every replica: a
    //    record only rises (replicas may apply revisions in any order) and is forgotten on request.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let config = registry_token::config::Config::load(&fixture.config_path).unwrap();
        let ledger = registry_token::ledger::Ledger::open(&config.ledger, false).await.unwrap().unwrap();
        let applied = |revision: u64, content: &str| registry_token::ledger::AppliedBundle {
            source: "oci://127.0.0.1:5000/team/policy:live".into(),
            revision,
            content_sha256: content.into(),
            applied_at: registry_token::ledger::Millis(1_767_225_600_000),
        };
        assert!(ledger.record_applied_bundle(&applied(3, "sha256:three")).await.unwrap());
        assert!(!ledger.record_applied_bundle(&applied(2, "sha256:two")).await.unwrap(), "lowered");
        assert!(!ledger.record_applied_bundle(&applied(3, "sha256:other")).await.unwrap(), "replaced");
        assert_eq!(ledger.applied_bundles().await.unwrap(), [applied(3, "sha256:three")]);
    });
    let output = Command::new(BIN)
        .args(["bundle", "revisions", "--config"])
        .arg(&fixture.config_path)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "oci://127.0.0.1:5000/team/policy:live  revision 3  content sha256:three  applied 2026-01-01T00:00:00.000Z\n",
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = Command::new(BIN)
        .args(["bundle", "forget-revision", "oci://127.0.0.1:5000/team/policy:live", "--config"])
        .arg(&fixture.config_path)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(cluster.psql("SELECT count(*) FROM bundle_revisions").trim(), "0");

    // A third replica serves a policy bundle file: the revision it starts on is recorded in the
    // shared ledger, and during the outage below it refuses a new revision it cannot check
    // against that record (a rollback guard that cannot be read fails closed).
    let mut bundled = Fixture::with(|config| config.ledger.url = url.clone());
    let live_bundle = bundled.root().join("live.tar.gz");
    let next_bundle = bundled.root().join("rev2.tar.gz");
    build_bundle(bundled.root(), 1, &live_bundle);
    build_bundle(bundled.root(), 2, &next_bundle);
    bundled.reconfigure(|config| {
        config.policy.settings_file = None;
        config.set("policy.bundle", live_bundle.to_str().unwrap());
    });
    let c = Server::start(BIN, &bundled.config_path);
    let c_client = c.client();
    // A fourth replica, stopped during the outage below with events it could not write.
    let mut d = Server::start(BIN, &fixture.config_path);
    readyz_until(&c_client, "replica C serving revision 1", |s| s["bundle"]["revision"] == 1);
    wait_for_recorded_revision(&cluster, "1");

    // 5. PostgreSQL stops under load: strict durability answers 503 and never hands out a token
    //    without its record; service resumes when the database is back, with no restart.
    let received: Arc<Mutex<HashSet<String>>> = Arc::default();
    let (ok, unavailable, other) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let load: Vec<_> = (0..4)
        .map(|n| {
            let client = if n % 2 == 0 { a_client.clone() } else { b_client.clone() };
            let caller = fixture.token(|r| r.subject = format!("load-{n}"));
            let (received, ok, unavailable, other, stop) =
                (received.clone(), ok.clone(), unavailable.clone(), other.clone(), stop.clone());
            std::thread::spawn(move || {
                // A repository of its own per request: every 200 is a token minted for it (none
                // is a reused one, whose record was committed before the outage).
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) || started.elapsed() >= Duration::from_secs(120) {
                        break;
                    }
                    let scope = format!("repository:team/load{n}-{i}:pull");
                    let reply = client.get_bearer(&query(SERVICE, &[scope.as_str()]), &caller).unwrap();
                    match reply.status.as_u16() {
                        200 => {
                            let (_, claims) = decode(reply.body["token"].as_str().unwrap());
                            received.lock().unwrap().insert(claims["jti"].as_str().unwrap().to_owned());
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        503 => {
                            assert!(reply.body["token"].is_null(), "a 503 carries no token: {reply}");
                            unavailable.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            other.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        let since = Instant::now();
        while !done() {
            assert!(since.elapsed() < Duration::from_secs(30), "{what} did not happen within 30 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait_for("200 tokens before the outage", &|| ok.load(Ordering::Relaxed) >= 200);
    cluster.stop();
    let before_outage = ok.load(Ordering::Relaxed);
    wait_for("503s during the outage", &|| unavailable.load(Ordering::Relaxed) >= 20);
    let ready = a.admin().get("/readyz").unwrap();
    assert_eq!(ready.status, 503, "not ready while the strict ledger cannot be written: {ready}");
    assert_eq!(ready.body["ledger"]["writable"], false);
    // Replica C has no traffic and nothing to write: its revocation poll tells it.
    readyz_until(&c.admin(), "idle replica C not ready", |s| s["ledger"]["writable"] == false);
    assert_eq!(c.admin().get("/readyz").unwrap().status, 503);
    let during_outage = ok.load(Ordering::Relaxed);
    // Replica C is asked to apply revision 2 while the record it must check it against cannot
    // be read: refused, with why; revision 1 keeps serving.
    std::fs::copy(&next_bundle, &live_bundle).unwrap();
    c.signal("HUP");
    let status = readyz_until(&c_client, "replica C's refusal shown", |s| {
        s["bundle"]["last_refusal"]["reason"] == "unavailable"
    });
    let message = status["bundle"]["last_refusal"]["message"].as_str().unwrap();
    assert!(
        message
            .contains("the ledger's record of the highest revision applied from this source cannot be read"),
        "{status}"
    );
    assert!(message.contains("the bundle is applied only once it can be checked against it"), "{status}");
    assert_eq!(status["bundle"]["revision"], 1, "{status}");
    // Replica D is stopped holding events it cannot write (refusals are queued, not refused):
    // it says they are lost and exits with an error, not as a clean stop.
    for _ in 0..3 {
        assert_eq!(d.client().get_bearer(&query(SERVICE, &[PULL]), "not.a.token").unwrap().status, 401);
    }
    d.signal("TERM");
    let exit = d.wait(Duration::from_secs(30));
    assert_eq!(exit.code(), Some(2), "{}", d.stderr());
    assert!(d.stderr().contains("ledger events unwritten (lost)"), "{}", d.stderr());
    cluster.start_again();
    let resumed_at = Instant::now();
    wait_for("tokens again after PostgreSQL came back", &|| {
        ok.load(Ordering::Relaxed) >= during_outage + 100
    });
    println!("service resumed {:?} after PostgreSQL restarted", resumed_at.elapsed());
    stop.store(true, Ordering::Relaxed);
    for thread in load {
        thread.join().unwrap();
    }
    // Both replicas ready again, and nothing they kept through the outage was lost: the
    // batches that failed while PostgreSQL came back were written whole once it answered, never
    // taken for batches the database refuses.
    for (name, replica) in [("A", &a), ("B", &b)] {
        let ready = readyz_until(&replica.admin(), &format!("replica {name} ready again"), |s| {
            s["ledger"]["writable"] == true && s["ledger"]["queued"] == 0
        });
        println!("replica {name} ready {:?} after PostgreSQL restarted", resumed_at.elapsed());
        assert_eq!(ready["ledger"]["dropped"], 0, "{ready}");
        let log = replica.stderr();
        for wrong in ["a ledger batch was refused", "it is dropped"] {
            assert!(!log.contains(wrong), "replica {name} logged {wrong:?}:\n{log}");
        }
        // Each refused request says why on its own line; the outage itself is logged once, not
        // once more per request.
        assert!(log.contains("refused=\"no token: its ledger event"), "replica {name}:\n{log}");
        let alarms = log.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).count();
        println!("replica {name}: {alarms} warnings and errors in its log through the outage");
        assert!(alarms <= 50, "replica {name} logged {alarms} warnings and errors:\n{log}");
    }
    readyz_until(&c.admin(), "idle replica C ready again", |s| s["ledger"]["writable"] == true);
    // With the record readable again, the next reload applies revision 2 and raises the record.
    c.signal("HUP");
    readyz_until(&c_client, "replica C serving revision 2", |s| s["bundle"]["revision"] == 2);
    wait_for_recorded_revision(&cluster, "2");
    let reply = c_client.get_bearer(&query(SERVICE, &[PULL]), &bundled.token(|_| {})).unwrap();
    assert_eq!(reply.status, 200, "{reply}");
    assert_eq!(access(reply.body["token"].as_str().unwrap()), [PULL], "and it grants by it");

    let recorded: HashSet<String> = cluster
        .psql("SELECT token_jti FROM events WHERE outcome = 'issued'")
        .lines()
        .map(str::to_owned)
        .collect();
    let received = received.lock().unwrap().clone();
    let missing: Vec<&String> = received.difference(&recorded).collect();
    println!(
        "outage: {} tokens received ({before_outage} before the stop), {} answers 503, {} other; {} issued \
         events recorded; {} tokens without a record",
        received.len(),
        unavailable.load(Ordering::Relaxed),
        other.load(Ordering::Relaxed),
        recorded.len(),
        missing.len()
    );
    assert!(missing.is_empty(), "tokens handed out without an issued event: {missing:?}");
    assert_eq!(received.len(), ok.load(Ordering::Relaxed), "every 200 carried a token of its own");
    assert_eq!(other.load(Ordering::Relaxed), 0, "only 200 and 503 during an outage");
    // Every 503 of the outage is on the record too: a `fault` event of reason `ledger`, kept
    // while PostgreSQL was down and written when it came back.
    let faults: usize = cluster
        .psql(
            "SELECT count(*) FROM events WHERE outcome = 'fault' AND reason = 'ledger' AND sub LIKE 'load-%'",
        )
        .trim()
        .parse()
        .unwrap();
    assert_eq!(faults, unavailable.load(Ordering::Relaxed), "one fault event per 503");

    // 6. PostgreSQL stops answering without closing anything (a frozen host, a partition): no
    //    call waits for it without end. A strict request is a 503, `/readyz` says the ledger is
    //    not writable (the load balancer stops sending), and all recovers when it answers again.
    let caller = fixture.token(|r| r.subject = "frozen".into());
    cluster.freeze();
    let frozen_at = Instant::now();
    let reply = a_client.get_bearer(&query(SERVICE, &["repository:team/frozen:pull"]), &caller).unwrap();
    assert_eq!(reply.status, 503, "{reply}");
    // The writer's call, on a connection it had, is cut off and says why (without a deadline it
    // waited for as long as the server was frozen).
    let status = readyz_until(&a.admin(), "replica A's ledger: PostgreSQL did not answer", |s| {
        s["ledger"]["writable"] == false
            && s["ledger"]["error"].as_str().is_some_and(|e| e.contains("PostgreSQL did not answer within"))
    });
    assert_eq!(a.admin().get("/readyz").unwrap().status, 503, "{status}");
    println!("replica A not ready, PostgreSQL not answering, {:?} after it froze", frozen_at.elapsed());
    cluster.thaw();
    readyz_until(&a.admin(), "replica A ready after PostgreSQL thawed", |s| {
        s["ledger"]["writable"] == true && s["ledger"]["queued"] == 0
    });
    let reply = a_client.get_bearer(&query(SERVICE, &["repository:team/thawed:pull"]), &caller).unwrap();
    assert_eq!(reply.status, 200, "{reply}");
    let recorded = cluster.psql("SELECT outcome, reason FROM events WHERE sub = 'frozen' ORDER BY id");
    // The 503's commit was cut off by the deadline, not refused: the frozen server may still
    // apply it once thawed. Its `issued` then stands on the record with the `fault` that says
    // its token was not returned right after it; either way the 503 and the token are recorded.
    assert!(
        ["fault|ledger\nissued|", "issued|\nfault|ledger\nissued|"].contains(&recorded.trim()),
        "the 503 and the token, each on the record: {recorded}"
    );
    // Both replicas are the processes started at the beginning.
    assert!(a.stderr().contains("the ledger is writable again"), "{}", a.stderr());
    let events: Value = a.admin().get_bearer("/admin/v1/events?limit=1", &admin).unwrap().body;
    assert_eq!(events["events"].as_array().unwrap().len(), 1);
}
