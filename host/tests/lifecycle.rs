//! The running binary's life: reloading when a watched file changes, refusing to start on an
//! exposed key or a wrong policy, and draining in-flight requests on SIGTERM. (Reloading under
//! load is `reload_under_load.rs`, alone in its binary.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};
use test_support::{Server, plans_revoking, raw_exchange};

const BIN: &str = env!("CARGO_BIN_EXE_registry-token");

#[test]
fn sigterm_lets_an_in_flight_request_finish_then_exits_zero() {
    let fixture = Fixture::with(|config| {
        config.policy.module = Some(test_support::HOSTILE_GUEST_WASM.into());
        config.policy.timeout_ms = Some(10_000);
        config.policy.settings_file = None;
    });
    let mut server = Server::start(BIN, &fixture.config_path);
    let client = server.client();
    let token = fixture.token(|_| {});
    let slow = query(SERVICE, &["repository:hostile/slow:pull"]);
    let in_flight = {
        let (client, token) = (client.clone(), token.clone());
        std::thread::spawn(move || {
            let started = Instant::now();
            (client.get_bearer(&slow, &token), started.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(150));
    server.signal("TERM");
    std::thread::sleep(Duration::from_millis(50));
    assert!(TcpStream::connect(server.address()).is_err(), "no new connections after SIGTERM");
    let (response, took) = in_flight.join().unwrap();
    let reply = response.unwrap();
    assert_eq!(reply.status, 200, "the in-flight request completes: {}", reply.body);
    assert!(reply.body["token"].is_string());
    assert!(took > Duration::from_millis(150), "it really was in flight ({took:?})");
    assert!(server.wait(Duration::from_secs(20)).success(), "exit status 0:\n{}", server.stderr());
    assert!(server.stderr().contains("SIGTERM: draining in-flight requests"));
}

/// The memory a cold load peaks at depends on the allocator's settings, built into the binary from
/// .cargo/config.toml (docs/BENCHMARKS.md): a build that lost them would only show in a benchmark.
#[test]
fn the_binary_runs_on_jemalloc_with_its_settings_built_in() {
    let output = std::process::Command::new(BIN)
        .arg("--version")
        .env("_RJEM_MALLOC_CONF", "stats_print:true")
        .output()
        .unwrap();
    let stats = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stats}");
    assert!(stats.contains("opt.narenas: 2\n"), "two arenas:\n{stats}");
    assert!(stats.contains("opt.dirty_decay_ms: 1000 "), "a one-second decay:\n{stats}");
    assert!(stats.contains("opt.muzzy_decay_ms: 0 "), "{stats}");
}

/// Collectors parse `--log-format json`: one object per request, `fields.message` `served`, with
/// who asked, what was granted or why it was refused, and the ledger event; never a token.
#[test]
fn with_log_format_json_each_request_is_one_object_naming_who_got_what_and_never_a_token() {
    let fixture = Fixture::new();
    let mut command = test_support::serve_command(BIN, &fixture.config_path);
    command.args(["--log-format", "json"]);
    let server = Server::start_command(command);
    let client = server.client();
    let caller = fixture.token(|_| {});
    let reply = client.get_bearer(&query(SERVICE, &["repository:team/app:pull"]), &caller).unwrap();
    assert_eq!(reply.status, 200, "{reply}");
    let registry_token = reply.body["token"].as_str().unwrap().to_owned();
    let revoked = fixture.token(|t| t.license = Some("LIC-0002".into()));
    assert_eq!(
        client.get_bearer(&query(SERVICE, &["repository:team/app:pull"]), &revoked).unwrap().status,
        403
    );

    let log = server.stderr();
    assert!(!log.contains(&caller) && !log.contains(&registry_token), "no token in the log:\n{log}");
    let served: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .filter(|object| object["fields"]["message"] == "served" && object["fields"]["path"] == "/token")
        .collect();
    assert_eq!(served.len(), 2, "one object per request:\n{log}");
    let issued = &served[0];
    assert_eq!(issued["level"], "INFO");
    assert_eq!(issued["target"], "registry_token::http");
    let fields = &issued["fields"];
    assert_eq!(fields["method"], "GET");
    assert_eq!(fields["status"], 200);
    assert_eq!(fields["sub"], "alice");
    assert_eq!(fields["service"], SERVICE);
    assert_eq!(fields["granted"], "repository:team/app:pull");
    assert_eq!(fields["event"].as_str().map(str::len), Some(36), "the ledger event's id: {fields}");
    assert!(fields["latency_us"].is_u64(), "{fields}");
    let denied = &served[1]["fields"];
    assert_eq!(denied["status"], 403);
    assert_eq!(denied["refused"], "policy denied: licence-revoked", "{denied}");
    assert_ne!(denied["event"], fields["event"]);
}

/// A JWKS padded with ten thousand unusable entries loads its one good key, and the log names a
/// few of the rest and counts the others in one line, instead of a line each.
#[test]
fn a_jwks_full_of_unusable_keys_logs_a_few_lines_not_one_each() {
    let fixture = Fixture::new();
    let jwks_path = fixture.root().join("authority/jwks.json");
    let mut jwks: serde_json::Value = serde_json::from_slice(&std::fs::read(&jwks_path).unwrap()).unwrap();
    let keys = jwks["keys"].as_array_mut().unwrap();
    assert_eq!(keys.len(), 1);
    let good = keys.remove(0);
    keys.extend(std::iter::repeat_n(serde_json::json!({}), 10_000));
    keys.push(good);
    std::fs::write(&jwks_path, jwks.to_string()).unwrap();

    let server = Server::start(BIN, &fixture.config_path);
    let reply =
        server.client().get_bearer(&query(SERVICE, &["repository:team/app:pull"]), &fixture.token(|_| {}));
    assert_eq!(reply.unwrap().status, 200);
    let log = server.stderr();
    let named = log.lines().filter(|line| line.contains("JWKS key ignored")).count();
    assert_eq!(named, 8, "{log}");
    assert!(log.contains("9992 more JWKS keys ignored"), "{log}");
}

#[test]
fn a_log_filter_that_does_not_parse_is_reported_and_logging_stays_at_info() {
    let fixture = Fixture::new();
    let output = std::process::Command::new(BIN)
        .args(["--log", "registry_token=loud", "keys", "list", "--config"])
        .arg(&fixture.config_path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{said}");
    assert!(
        said.contains("the log filter \"registry_token=loud\" (--log, REGISTRY_TOKEN_LOG) is not valid"),
        "{said}"
    );
    assert!(said.contains("logging at info"), "{said}");
}

#[test]
fn an_exposed_signing_key_is_refused_with_the_fix() {
    let fixture = Fixture::new();
    let key = fixture.root().join("keys/signing-key.pem");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = test_support::serve_command(BIN, &fixture.config_path).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("readable by group or others (mode 644)"), "{stderr}");
    assert!(stderr.contains(&format!("chmod 600 {}", key.display())), "{stderr}");
    assert!(!stderr.contains("PRIVATE KEY"), "{stderr}");
}

/// The sample configuration's trial setting, `development.create_missing_keys`, beside a key set
/// made with `keygen` (as the sample's comment on `keys` says to do): the service starts and signs
/// with the set's key; there is no single key for the setting to create.
#[test]
fn a_key_set_starts_with_the_samples_create_missing_keys_on() {
    let fixture = Fixture::with(|config| {
        let key = std::mem::take(&mut config.signing.key_file);
        let cert = config.signing.cert_file.take().unwrap();
        config.signing.keys = vec![test_support::SigningKey::files(&key, &cert, "active")];
        config.set("development.create_missing_keys", true);
    });
    let server = Server::start(BIN, &fixture.config_path);
    let uri = query(SERVICE, &["repository:team/app:pull"]);
    let reply = server.client().get_basic(&uri, "alice", &fixture.token(|_| {})).unwrap();
    assert_eq!(reply.status, 200, "{reply}");
    let kid = libtrust_kid_of(&fixture.root().join("keys/signing-cert.pem"));
    assert_eq!(decode(reply.body["token"].as_str().unwrap()).0["kid"], kid);
}

#[test]
fn a_component_of_another_world_never_starts_serving() {
    let fixture = Fixture::with(|config| {
        config.policy.module = Some(test_support::WRONG_WORLD_GUEST_WASM.into());
    });
    let output = test_support::serve_command(BIN, &fixture.config_path).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "does not implement a world this host loads (stellaops:registry-policy/policy@0.2.0 or \
             stellaops:registry-policy/policy@0.1.0)"
        ),
        "{stderr}"
    );
    assert!(stderr.contains(test_support::WRONG_WORLD_GUEST_WASM), "names the file: {stderr}");
}

#[test]
fn private_key_material_never_reaches_debug_output() {
    let fixture = Fixture::new();
    let key_file = fixture.root().join("keys/signing-key.pem");
    let pem = std::fs::read_to_string(&key_file).unwrap();
    let key =
        registry_token::mint::SigningKey::from_file(&key_file, registry_token::mint::SigningAlgorithm::RS256)
            .unwrap();
    let key_shown = format!("{key:?}");
    let minter = registry_token::mint::Minter::new(key, "i", 60, Default::default(), None);
    let shown = format!("{key_shown} {minter:?}");
    assert!(shown.contains("<redacted>"), "{shown}");
    for line in pem.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!shown.contains(&line[..16]), "key material in Debug output");
    }
}

#[test]
fn a_100_kib_query_is_refused_and_the_server_keeps_serving() {
    let fixture = Fixture::new();
    let server = Server::start(BIN, &fixture.config_path);
    let client = server.client();
    let token = fixture.token(|_| {});
    let long = format!("/token?service={SERVICE}&account={}", "a".repeat(100 * 1024));
    // Raw: no HTTP client library sends a URI this long (the http crate refuses it).
    let response = raw_exchange(
        server.address(),
        &format!(
            "GET {long} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        ),
    );
    // hyper refuses a URI over 64 KiB before routing (414, no body); shorter ones over 16 KiB get
    // the Docker error body from the handler (tests/in_process/hostile.rs).
    assert_eq!(response.get(9..12), Some("414"), "{response}");
    let reply = client.get_bearer(&query(SERVICE, &["repository:team/app:pull"]), &token).unwrap();
    assert_eq!((reply.status.as_u16(), reply.body["token"].is_string()), (200, true));
}

#[test]
fn with_watch_on_a_changed_settings_file_reloads_by_itself() {
    let fixture = Fixture::with(|config| {
        config.watch = Some(true);
    });
    let plans_file = fixture.root().join("plans.yaml");
    let server = Server::start(BIN, &fixture.config_path);
    let client = server.client();
    let token = fixture.token(|t| t.license = Some("LIC-0003".into()));
    let pull = query(SERVICE, &["repository:team/app:pull"]);
    assert_eq!(client.get_bearer(&pull, &token).unwrap().status, 200);

    // Replaced the way editors and deployment tools do: a new file renamed over the old one.
    let before = client.settings_version();
    let staged = fixture.root().join(".plans.yaml.new");
    std::fs::write(&staged, plans_revoking(&["LIC-0002", "LIC-0003"])).unwrap();
    std::fs::rename(&staged, &plans_file).unwrap();
    let took = reloaded(&server, before);
    assert_eq!(client.get_bearer(&pull, &token).unwrap().status, 403);
    assert!(server.stderr().contains("a watched file changed: reloading"));
    eprintln!("watch: reloaded {took:?} after the file changed");
}

/// Waits (10 s at most) for `server` to serve settings other than `before`; how long it took.
fn reloaded(server: &Server, before: String) -> Duration {
    let (client, changed) = (server.client(), Instant::now());
    while client.settings_version() == before {
        assert!(
            changed.elapsed() < Duration::from_secs(10),
            "no reload after the change:\n{}",
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    changed.elapsed()
}

/// A Kubernetes ConfigMap volume: `plans.yaml` links to `..data/plans.yaml`, and an update makes
/// a new directory and swaps the `..data` link to it (no file named `plans.yaml` changes).
#[test]
fn with_watch_a_kubernetes_volume_update_reloads_by_itself() {
    let mut fixture = Fixture::with(|config| config.watch = Some(true));
    let volume = fixture.root().join("configmap");
    let version = |name: &str, revoked: &[&str]| {
        std::fs::create_dir_all(volume.join(name)).unwrap();
        std::fs::write(volume.join(name).join("plans.yaml"), plans_revoking(revoked)).unwrap();
    };
    version("..2026_12_04_10_00_00.1", &["LIC-0002"]);
    std::os::unix::fs::symlink("..2026_12_04_10_00_00.1", volume.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/plans.yaml", volume.join("plans.yaml")).unwrap();
    fixture.reconfigure(|config| config.policy.settings_file = Some(volume.join("plans.yaml")));
    let server = Server::start(BIN, &fixture.config_path);
    let client = server.client();
    let token = fixture.token(|t| t.license = Some("LIC-0003".into()));
    let pull = query(SERVICE, &["repository:team/app:pull"]);
    assert_eq!(client.get_bearer(&pull, &token).unwrap().status, 200);

    // The kubelet's update: a new directory, a new link, renamed over `..data`.
    let before = client.settings_version();
    version("..2026_12_04_10_05_00.2", &["LIC-0002", "LIC-0003"]);
    std::os::unix::fs::symlink("..2026_12_04_10_05_00.2", volume.join("..data_tmp")).unwrap();
    std::fs::rename(volume.join("..data_tmp"), volume.join("..data")).unwrap();
    reloaded(&server, before);
    assert_eq!(client.get_bearer(&pull, &token).unwrap().status, 403);
}

/// A reload asked for while the service starts (systemd's `ExecReload` right after a start, say)
/// does not end it. The start here waits 5 s for an Authority that accepts the connection and
/// never answers, and a SIGHUP arrives meanwhile: the service comes up, and keeps running.
#[test]
fn a_sighup_during_the_start_does_not_end_the_service() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/jwks.json", silent.local_addr().unwrap());
    let fixture = Fixture::with(|config| {
        config.authority.jwks_file = None;
        config.authority.jwks_url = Some(url);
    });
    let mut process = test_support::Process::start(
        "registry-token",
        test_support::serve_command(BIN, &fixture.config_path),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(process.running(), "{}", process.stderr());
    assert!(!process.stderr().contains("listening"), "started before the SIGHUP: {}", process.stderr());
    process.signal("HUP");
    process.wait_for_stdout("registry-token listening on", Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    assert!(process.running(), "the SIGHUP ended the service: {}", process.stderr());
    process.signal("TERM");
    let status = process.wait(Duration::from_secs(30));
    assert!(status.success(), "{status}: {}", process.stderr());
}
