//! Strict durability survives `kill -9`: the release server under load over several connections is
//! killed mid-load, and every registry token a client received has its `issued` event in the
//! ledger; the service then restarts on the same file. With SQLite's `synchronous` at `full` (the
//! default) and at `normal` (`ledger.sqlite_sync`, which promises exactly this and no more). Alone
//! in its binary: it loads the machine.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::Value;
use std::collections::HashSet;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use test_support::Server;

const BIN: &str = env!("CARGO_BIN_EXE_registry-token");
/// Connections sending requests at once.
const CONNECTIONS: usize = 6;
/// Tokens received before the kill.
const KILL_AFTER: usize = 2000;

#[test]
fn kill_9_under_load_loses_no_record_of_a_token_a_client_received() {
    for sqlite_sync in [None, Some("normal")] {
        crash_under_load(sqlite_sync);
    }
}

fn crash_under_load(sqlite_sync: Option<&str>) {
    let fixture = Fixture::with(|config| config.ledger.sqlite_sync = sqlite_sync.map(str::to_owned));
    let mut server = Server::start(BIN, &fixture.config_path);
    let address = server.address().to_owned();
    let received: Arc<Mutex<HashSet<String>>> = Arc::default();
    let count = Arc::new(AtomicUsize::new(0));
    let callers: Vec<String> =
        (0..CONNECTIONS).map(|n| fixture.token(|r| r.subject = format!("load-{n}"))).collect();
    let started = Instant::now();
    let clients: Vec<_> = callers
        .into_iter()
        .enumerate()
        .map(|(n, caller)| {
            let (received, count, address) = (Arc::clone(&received), Arc::clone(&count), address.clone());
            std::thread::spawn(move || {
                // One keep-alive connection per thread, as a busy client pool has.
                let client = reqwest::blocking::Client::builder()
                    .no_proxy()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap();
                for i in 0..100_000 {
                    let url = format!(
                        "http://{address}{}",
                        // Every request distinct: each token is its own signature and its own record.
                        query(SERVICE, &[&format!("repository:team/app-{n}-{i}:pull")])
                    );
                    let Ok(response) = client.get(&url).bearer_auth(&caller).send() else { break };
                    if response.status() != 200 {
                        continue;
                    }
                    let Ok(bytes) = response.bytes() else { break };
                    let body: Value = serde_json::from_slice(&bytes).unwrap();
                    let (_, claims) = decode(body["token"].as_str().unwrap());
                    received.lock().unwrap().insert(claims["jti"].as_str().unwrap().to_owned());
                    count.fetch_add(1, Ordering::Relaxed);
                    if started.elapsed() > Duration::from_secs(120) {
                        break;
                    }
                }
            })
        })
        .collect();
    while count.load(Ordering::Relaxed) < KILL_AFTER {
        assert!(started.elapsed() < Duration::from_secs(120), "the load never reached {KILL_AFTER} tokens");
        std::thread::sleep(Duration::from_millis(5));
    }
    server.signal("KILL");
    let status = server.wait(Duration::from_secs(10));
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9), "{status:?}");
    for client in clients {
        client.join().unwrap();
    }
    let received = received.lock().unwrap().clone();

    // The ledger, read directly by the command line while the service is down.
    let output = Command::new(BIN)
        .args(["ledger", "events", "--outcome", "issued", "--limit", "1000000", "--json", "--config"])
        .arg(&fixture.config_path)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let events: Value = serde_json::from_slice(&output.stdout).unwrap();
    let recorded: HashSet<String> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["token"]["jti"].as_str().unwrap().to_owned())
        .collect();
    let missing: Vec<&String> = received.difference(&recorded).collect();
    println!(
        "crash test (sqlite_sync {}): {} tokens received by clients, {} issued events recorded, {} missing, {} recorded but not received",
        sqlite_sync.unwrap_or("full, the default"),
        received.len(),
        recorded.len(),
        missing.len(),
        recorded.difference(&received).count()
    );
    assert!(received.len() >= KILL_AFTER);
    assert!(
        missing.is_empty(),
        "{} tokens were received without an issued event: {missing:?}",
        missing.len()
    );

    // The service restarts on the same file and keeps recording.
    let server = Server::start(BIN, &fixture.config_path);
    let caller = fixture.token(|_| {});
    let reply = server.client().get_bearer(&query(SERVICE, &["repository:team/app:pull"]), &caller).unwrap();
    assert_eq!(reply.status, 200, "{reply}");
    let ready = server.admin().get("/readyz").unwrap();
    assert_eq!(ready.body["ledger"]["writable"], true, "{ready}");
}
