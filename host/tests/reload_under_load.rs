//! Reloading on SIGHUP under load: no failed request, a revoked licence refused within a second,
//! caches dropped, a bad set refused while the old one serves.
//!
//! Alone in its test binary: test binaries run one after another, while the tests of one binary
//! run in parallel, and this one measures a reload's latency on two cores with its own load
//! generator, so nothing else may compete with it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use test_support::{Server, plans_revoking};

const BIN: &str = env!("CARGO_BIN_EXE_registry-token");

#[test]
fn reloading_a_hundred_times_under_load_fails_no_request() {
    let fixture = Fixture::new();
    let plans_file = fixture.root().join("plans.yaml");
    let server = Server::start(BIN, &fixture.config_path);
    let client = server.client();
    let steady = fixture.token(|t| t.license = Some("LIC-0001".into()));
    let doomed = fixture.token(|t| t.license = Some("LIC-0003".into()));
    let pull = query(SERVICE, &["repository:team/app:pull"]);

    // The licence to be revoked is served, and its decision cached, before the reload.
    assert_eq!(client.get_bearer(&pull, &doomed).unwrap().status, 200);
    assert_eq!(client.get_bearer(&pull, &doomed).unwrap().status, 200);

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load: Vec<_> = (0..4)
        .map(|worker| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            let (client, token) = (client.clone(), steady.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    // Hot (cached) and distinct (uncached) requests alike.
                    let scope = if n.is_multiple_of(2) {
                        "repository:team/app:pull".to_owned()
                    } else {
                        format!("repository:team/w{worker}-{n}:pull,push")
                    };
                    match client.get_bearer(&query(SERVICE, &[&scope]), &token) {
                        Ok(reply) if reply.status == 200 && reply.body["token"].is_string() => {
                            ok.fetch_add(1, Ordering::Relaxed)
                        }
                        other => {
                            eprintln!("failed request during reloads: {other:?}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();

    let mut slowest = Duration::ZERO;
    let mut refusal_delay = Duration::ZERO;
    for i in 0..100 {
        let revoke = i % 2 == 0;
        let revoked: &[&str] = if revoke { &["LIC-0002", "LIC-0003"] } else { &["LIC-0002"] };
        let before = client.settings_version();
        std::fs::write(&plans_file, plans_revoking(revoked)).unwrap();
        let sent = Instant::now();
        server.signal("HUP");
        while client.settings_version() == before {
            assert!(
                sent.elapsed() < Duration::from_secs(30),
                "reload {i} did not happen:\n{}",
                server.stderr()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        slowest = slowest.max(sent.elapsed());
        let status = client.get_bearer(&pull, &doomed).unwrap().status;
        if revoke {
            assert_eq!(
                status, 403,
                "reload {i}: LIC-0003 is revoked, and no cached decision may say otherwise"
            );
            refusal_delay = refusal_delay.max(sent.elapsed());
        } else {
            assert_eq!(status, 200, "reload {i}: LIC-0003 is allowed again");
        }
    }

    // A set that does not load is refused, and the old one keeps serving.
    let before = client.settings_version();
    std::fs::write(&plans_file, "plans: {team: [{repositories: ['a//b'], actions: [pull]}]}").unwrap();
    server.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server.stderr().contains("reload refused") {
        assert!(Instant::now() < deadline, "no refusal logged:\n{}", server.stderr());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(server.stderr().contains("empty path segment"), "the log says why");
    assert_eq!(client.settings_version(), before);

    stop.store(true, Ordering::Relaxed);
    for worker in load {
        worker.join().unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!(
        "100 reloads under load: {ok} requests served, {failed} failed; slowest reload {slowest:?}; \
         revoked licence refused at most {refusal_delay:?} after SIGHUP"
    );
    let faults: Vec<String> =
        server.stderr().lines().filter(|l| l.contains("policy fault")).map(str::to_owned).collect();
    assert_eq!(failed, 0, "the server logged: {faults:#?}");
    assert!(ok > 100, "the load ran ({ok} requests)");
    assert!(refusal_delay < Duration::from_secs(1), "{refusal_delay:?}");
}
