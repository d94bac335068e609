//! The `registry-token` binary as operators run it: `policy test|eval`, `keygen`, `dev-authority`,
//! and `serve` on a real socket (Connection: close, a chunked POST, configuration errors).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;
use test_support::{Server, output_within, raw_exchange, serve_command};

const BIN: &str = env!("CARGO_BIN_EXE_registry-token");

fn workspace() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).current_dir(workspace()).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn the_shipped_cases_pass_and_there_are_at_least_thirty() {
    let output = run(&["policy", "test", "policies/plan-catalogue/cases.yaml"]);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    let last = stdout.lines().last().unwrap();
    let (passed, failed) = last.split_once(" passed, ").unwrap();
    assert_eq!(failed, "0 failed", "{stdout}");
    assert!(passed.parse::<usize>().unwrap() >= 30, "{last}");
}

#[test]
fn a_failing_case_shows_expected_and_actual_and_fails_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("cases.yaml");
    std::fs::write(
        &cases,
        r#"
settings: {plans: {team: [{repositories: ["team/*"], actions: [pull]}]}}
cases:
  - name: right
    claims: {sub: a, "stellaops:plan": team}
    scope: repository:team/app:pull,push
    grant: repository:team/app:pull
  - name: wrong on purpose
    claims: {sub: a, "stellaops:plan": team}
    scope: repository:team/app:pull,push
    grant: repository:team/app:pull,push
"#,
    )
    .unwrap();
    let output = run(&["policy", "test", cases.to_str().unwrap()]);
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL") && stdout.contains("wrong on purpose"), "{stdout}");
    assert!(stdout.contains("expected grant [repository:team/app:pull,push]"), "{stdout}");
    assert!(stdout.contains("actual   grant [repository:team/app:pull]"), "{stdout}");
    assert_eq!(stdout.lines().last(), Some("1 passed, 1 failed"));

    // A file without cases would pass while testing nothing: refused.
    std::fs::write(&cases, "settings: {plans: {}}\ncases: []\n").unwrap();
    let output = run(&["policy", "test", cases.to_str().unwrap()]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("no cases; a case file without any would pass while testing nothing"),
        "{stderr}"
    );
}

/// The limits take what the configuration takes: a deadline of 0 failed every case as "ran past
/// its 0ns deadline", and a policy passing at a cap the server refuses proved nothing.
#[test]
fn policy_limits_out_of_the_servers_range_are_refused() {
    let cases = "policies/plan-catalogue/cases.yaml";
    for (flag, value, range) in [
        ("--timeout-ms", "0", "1..=10000"),
        ("--timeout-ms", "10001", "1..=10000"),
        ("--memory-mib", "0", "1..=1024"),
        ("--memory-mib", "4096", "1..=1024"),
    ] {
        let output = run(&["policy", "test", flag, value, cases]);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{flag} {value}: {stderr}");
        assert!(stderr.contains(flag) && stderr.contains(range), "{flag} {value}: {stderr}");
    }
    let output = run(&["policy", "test", "--timeout-ms", "10000", "--memory-mib", "1024", cases]);
    assert!(output.status.success(), "{}", text(&output.stderr));
}

#[test]
fn any_component_runs_through_policy_test_and_eval() {
    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("hostile.yaml");
    std::fs::write(
        &cases,
        r#"
settings: {}
cases:
  - {name: loop, claims: {sub: a}, scope: "repository:hostile/loop:pull", fault: deadline}
  - {name: bomb, claims: {sub: a}, scope: "repository:hostile/bomb:pull", fault: memory}
  - {name: panic, claims: {sub: a}, scope: "repository:hostile/panic:pull", fault: panic}
  - {name: overgrant, claims: {sub: a}, scope: "repository:hostile/overgrant:pull", fault: overgrant}
  - {name: fine, claims: {sub: a}, scope: "repository:x/y:pull", grant: "repository:x/y:pull"}
"#,
    )
    .unwrap();
    let output =
        run(&["policy", "test", "--policy", test_support::HOSTILE_GUEST_WASM, cases.to_str().unwrap()]);
    assert!(output.status.success(), "{}{}", text(&output.stdout), text(&output.stderr));
    assert_eq!(text(&output.stdout).lines().last(), Some("5 passed, 0 failed"));

    let mut eval = Command::new(BIN)
        .args(["policy", "eval", "--settings", "etc/plans.yaml"])
        .current_dir(workspace())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    eval.stdin
        .take()
        .unwrap()
        .write_all(br#"{"claims": {"sub": "alice", "stellaops:plan": "team"}, "scope": "repository:team/app:pull,delete"}"#)
        .unwrap();
    let output = eval.wait_with_output().unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(answer["decision"], "grant");
    assert_eq!(
        answer["access"],
        serde_json::json!([{"type": "repository", "name": "team/app", "actions": ["pull"]}])
    );
}

#[test]
fn keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("keys");
    let output = run(&["keygen", "--out", out.to_str().unwrap(), "--bits", "3072"]);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    let mode = std::fs::metadata(out.join("signing-key.pem")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let key = registry_token::mint::SigningKey::from_file(
        &out.join("signing-key.pem"),
        registry_token::mint::SigningAlgorithm::RS256,
    )
    .unwrap();
    assert!(
        stdout.contains(&format!("kid (libtrust, distribution 2.8): {}", key.libtrust_kid())),
        "{stdout}"
    );
    assert!(stdout.contains(&key.thumbprint_kid()), "{stdout}");
    let cert = std::fs::read_to_string(out.join("signing-cert.pem")).unwrap();
    assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));

    let before = std::fs::read(out.join("signing-key.pem")).unwrap();
    let again = run(&["keygen", "--out", out.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("already exists; keygen never overwrites"),
        "{}",
        text(&again.stderr)
    );
    assert_eq!(std::fs::read(out.join("signing-key.pem")).unwrap(), before);

    let es = run(&["keygen", "--out", dir.path().join("es").to_str().unwrap(), "--algorithm", "ES256"]);
    assert!(es.status.success(), "{}", text(&es.stderr));
    let bad = run(&["keygen", "--out", dir.path().join("bad").to_str().unwrap(), "--bits", "1024"]);
    assert!(text(&bad.stderr).contains("use 2048, 3072 or 4096"), "{}", text(&bad.stderr));
}

#[test]
fn the_development_authority_mints_tokens_the_service_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let authority = dir.path().join("authority");
    let init =
        run(&["dev-authority", "init", "--dir", authority.to_str().unwrap(), "--issuer", "https://a.test"]);
    assert!(init.status.success(), "{}", text(&init.stderr));
    let token = run(&[
        "dev-authority",
        "token",
        "--dir",
        authority.to_str().unwrap(),
        "--sub",
        "alice",
        "--plan",
        "team",
        "--license",
        "LIC-7",
        "--tenant",
        "acme",
        "--ttl",
        "120",
    ]);
    assert!(token.status.success(), "{}", text(&token.stderr));
    let token = text(&token.stdout).trim().to_owned();
    let (header, claims) = decode(&token);
    assert_eq!(header["alg"], "RS256");
    assert_eq!(claims["iss"], "https://a.test");
    assert_eq!(claims["stellaops:plan"], "team");
    assert_eq!(claims["stellaops:license"], "LIC-7");
    assert_eq!(claims["scope"], "registry.token.issue");
    assert_eq!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(), 120);

    let keys = registry_token::authority::KeySource::from_file(&authority.join("jwks.json")).unwrap();
    let requirements = registry_token::authority::Requirements {
        issuer: "https://a.test".into(),
        audiences: vec!["registry-token".into()],
        required_scope: "registry.token.issue".into(),
        leeway_seconds: 0,
    };
    let now = registry_token::app::system_clock()();
    let validated =
        futures_lite_block_on(registry_token::authority::verify(&token, now, &keys, &requirements)).unwrap();
    assert_eq!(validated.caller.subject, "alice");
}

/// A directory that already holds one of its files (a real Authority's `jwks.json`): `init`
/// refuses, names it, and writes nothing, not even a key.
#[test]
fn dev_authority_init_beside_an_existing_jwks_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, r#"{"keys": []}"#).unwrap();
    let init = run(&["dev-authority", "init", "--dir", dir.path().to_str().unwrap()]);
    assert!(!init.status.success());
    assert!(
        text(&init.stderr).contains(&format!("{} already exists", jwks.display())),
        "{}",
        text(&init.stderr)
    );
    let mut left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    left.sort();
    assert_eq!(left, ["jwks.json"]);
    assert_eq!(std::fs::read_to_string(&jwks).unwrap(), r#"{"keys": []}"#);
}

fn futures_lite_block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(future)
}

#[test]
fn serve_answers_skopeo_style_get_and_a_chunked_post_on_a_real_socket() {
    let fixture = Fixture::new();
    let server = Server::start(BIN, &fixture.config_path);
    let address = server.address();
    let token = fixture.token(|_| {});
    let basic = data_encoding::BASE64.encode(format!("alice:{token}").as_bytes());

    // As skopeo sends it: account, Basic, Connection: close, gzip accepted (and, here, a refresh
    // token asked for, as `docker login` does).
    let response = raw_exchange(
        address,
        &format!(
            "GET /token?account=alice&scope=repository%3Ateam%2Fapp%3Apull%2Cpush&service={SERVICE}\
             &offline_token=true&client_id=containers%2Fimage HTTP/1.1\r\n\
             Host: {address}\r\nAuthorization: Basic {basic}\r\nConnection: close\r\nAccept-Encoding: gzip\r\n\r\n"
        ),
    );
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let body: serde_json::Value = serde_json::from_str(response.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(access(body["token"].as_str().unwrap()), ["repository:team/app:pull,push"]);
    let refresh_token = body["refresh_token"].as_str().unwrap().to_owned();
    assert!(refresh_token.starts_with("rtr_"), "{body}");

    // As skopeo sends the OAuth2 form when its auth file holds an identitytoken: chunked.
    let form = form_urlencoded_pairs(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", &refresh_token),
        ("service", SERVICE),
        ("scope", "repository:team/app:pull"),
        ("client_id", "containers/image"),
    ]);
    let (first, second) = form.split_at(form.len() / 2);
    let response = raw_exchange(
        address,
        &format!(
            "POST /token HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
             Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{first}\r\n{:x}\r\n{second}\r\n0\r\n\r\n",
            first.len(),
            second.len()
        ),
    );
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let body: serde_json::Value = serde_json::from_str(response.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["scope"], "repository:team/app:pull");
    assert_eq!(body["refresh_token"], refresh_token.as_str(), "never rotated");
}

/// The server on `fixture`'s configuration with one environment `variable` set, and its address.
fn serve_with(fixture: &Fixture, (name, value): (&str, &str)) -> (Server, String) {
    let mut command = serve_command(BIN, &fixture.config_path);
    command.env(name, value);
    let server = Server::start_command(command);
    let address = server.address().to_owned();
    (server, address)
}

/// Reads what `stream` receives until the server closes it; panics if it is still open after
/// `within`.
fn read_until_closed(stream: &mut std::net::TcpStream, within: Duration) -> String {
    use std::io::Read;
    stream.set_read_timeout(Some(within)).unwrap();
    let mut received = Vec::new();
    match stream.read_to_end(&mut received) {
        Ok(_) => String::from_utf8_lossy(&received).into_owned(),
        // A reset after hyper closed a connection with unread input is a close too.
        Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {
            String::from_utf8_lossy(&received).into_owned()
        }
        Err(error) => {
            panic!("the connection is still open after {within:?} ({error}); received {received:?}")
        }
    }
}

/// A client that opens a connection and trickles its request (a slow-loris) holds it no longer
/// than `http.read_timeout_seconds`: a connection without a whole head is closed, an unfinished body answered
/// 400 with why; and the service keeps answering everyone else meanwhile.
#[test]
fn a_request_that_does_not_arrive_in_time_is_cut_off() {
    let fixture = Fixture::new();
    let (server, address) = serve_with(&fixture, ("REGISTRY_TOKEN_HTTP__READ_TIMEOUT_SECONDS", "1"));

    // A connection that sends nothing at all is closed too (it would hold a slot for ever).
    let mut silent = std::net::TcpStream::connect(&address).unwrap();
    let received = read_until_closed(&mut silent, Duration::from_secs(10));
    assert!(received.is_empty() || received.starts_with("HTTP/1.1 408"), "{received}");

    let mut head = std::net::TcpStream::connect(&address).unwrap();
    head.write_all(format!("GET /token?service={SERVICE} HTTP/1.1\r\nHost: {address}\r\n").as_bytes())
        .unwrap();
    let received = read_until_closed(&mut head, Duration::from_secs(10));
    assert!(received.is_empty() || received.starts_with("HTTP/1.1 408"), "{received}");

    let mut body = std::net::TcpStream::connect(&address).unwrap();
    body.write_all(
        format!(
            "POST /token HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: 100\r\nConnection: close\r\n\r\ngrant_type=password"
        )
        .as_bytes(),
    )
    .unwrap();
    let received = read_until_closed(&mut body, Duration::from_secs(10));
    assert!(received.starts_with("HTTP/1.1 400"), "{received}");
    assert!(received.contains("the request body did not arrive within 1s"), "{received}");

    let reply =
        server.client().get_bearer(&format!("/token?service={SERVICE}"), &fixture.token(|_| {})).unwrap();
    assert_eq!(reply.status, 200, "{reply}");
}

/// At most `http.max_connections` connections are open at once: one more waits (in the kernel's
/// backlog) until one closes, and is then served; the log says why it waited.
#[test]
fn connections_beyond_max_connections_wait_for_one_to_close() {
    let fixture = Fixture::new();
    let (server, address) = serve_with(&fixture, ("REGISTRY_TOKEN_HTTP__MAX_CONNECTIONS", "2"));
    let idle: Vec<std::net::TcpStream> =
        (0..2).map(|_| std::net::TcpStream::connect(&address).unwrap()).collect();
    let mut third = std::net::TcpStream::connect(&address).unwrap();
    third
        .write_all(
            format!("GET /token?service={SERVICE} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
    third.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut byte = [0u8; 1];
    let waited = std::io::Read::read(&mut third, &mut byte);
    assert!(
        waited.as_ref().is_err_and(|e| matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )),
        "a third connection was served while two were open: {waited:?}"
    );
    drop(idle);
    let received = read_until_closed(&mut third, Duration::from_secs(10));
    assert!(received.starts_with("HTTP/1.1 401"), "served once one closed: {received}");
    assert!(server.stderr().contains("http.max_connections connections are open"), "{}", server.stderr());
}

#[test]
fn configuration_errors_name_the_key_and_where_it_came_from() {
    let fixture = Fixture::with(|config| {
        config.set("signing.lifetime_secs", 60);
    });
    let output = run(&["serve", "--config", fixture.config_path.to_str().unwrap()]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("unknown field: found `lifetime_secs`"), "{stderr}");
    assert!(stderr.contains(fixture.config_path.to_str().unwrap()), "{stderr}");

    let fixture = Fixture::new();
    let output = serve_command(BIN, &fixture.config_path)
        .env("REGISTRY_TOKEN_SIGNING__LIFETIME_SECONDS", "soon")
        .output()
        .unwrap();
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("REGISTRY_TOKEN_SIGNING__LIFETIME_SECONDS"), "{stderr}");
    assert!(stderr.contains("signing.lifetime_seconds"), "{stderr}");

    let output = serve_command(BIN, &fixture.config_path)
        .env("REGISTRY_TOKEN_SIGNING__LIFETIME_SECONDS", "900")
        .output()
        .unwrap();
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(
            "signing.lifetime_seconds must be between 5 and signing.max_lifetime_seconds (300), got 900"
        ),
        "{stderr}"
    );

    for (variable, value, message) in [
        ("REGISTRY_TOKEN_AUTHORITY__LEEWAY_SECONDS", "3600", "authority.leeway_seconds may be at most 300"),
        (
            "REGISTRY_TOKEN_AUTHORITY__JWKS_MIN_REFETCH_SECONDS",
            "0",
            "authority.jwks_min_refetch_seconds must be at least 1",
        ),
        // Accepted, it would overflow the shutdown's deadline at SIGTERM: a panic that skips
        // flushing the ledger's queue.
        (
            "REGISTRY_TOKEN_HTTP__SHUTDOWN_GRACE_SECONDS",
            "18446744073709551615",
            "http.shutdown_grace_seconds must be between 0 and 3600",
        ),
    ] {
        let mut serve = serve_command(BIN, &fixture.config_path);
        serve.env(variable, value);
        let output = output_within(serve, Duration::from_secs(30));
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        // Named where it came from: the variable, not the file it overrides.
        assert!(stderr.contains(&format!("environment variable {variable}: {message}")), "{stderr}");
    }

    // ledger.sqlite_sync: one of SQLite's two settings offered, and only for an SQLite ledger.
    let output = serve_command(BIN, &fixture.config_path)
        .env("REGISTRY_TOKEN_LEDGER__SQLITE_SYNC", "off")
        .output()
        .unwrap();
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("sqlite_sync") && stderr.contains("`full` or `normal`"), "{stderr}");
    let output = serve_command(BIN, &fixture.config_path)
        .env("REGISTRY_TOKEN_LEDGER__SQLITE_SYNC", "normal")
        .env("REGISTRY_TOKEN_LEDGER__URL", "none")
        .output()
        .unwrap();
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("ledger.sqlite_sync applies to an SQLite ledger"), "{stderr}");

    // A key set twice (the later one would silently win): refused, naming the key and the line.
    let yaml = std::fs::read_to_string(&fixture.config_path).unwrap();
    let services = yaml.lines().find(|line| line.starts_with("services:")).unwrap();
    std::fs::write(&fixture.config_path, format!("{yaml}\n{services}\n")).unwrap();
    let output = run(&["serve", "--config", fixture.config_path.to_str().unwrap()]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(fixture.config_path.to_str().unwrap()), "{stderr}");
    assert!(stderr.contains("duplicate entry with key \"services\""), "{stderr}");

    let output = run(&["serve", "--config", "/nonexistent/registry-token.yaml"]);
    assert!(text(&output.stderr).contains("/nonexistent/registry-token.yaml does not exist"));
}

/// A container overrides what the file it ships with chose: an empty value unsets a key, so the
/// file's `jwks_file` gives way to a `jwks_url` from the environment (both set is an error).
#[test]
fn an_empty_environment_value_unsets_the_files_key() {
    use registry_token::config::{Config, JwksSource};
    let fixture = Fixture::new();
    let url = ("REGISTRY_TOKEN_AUTHORITY__JWKS_URL".to_owned(), "https://authority.example/jwks".to_owned());
    let error = Config::load_with_env(&fixture.config_path, [url.clone()]).unwrap_err().to_string();
    assert!(error.contains("not both"), "{error}");
    // The section is checked as a whole: the file and the variable that changed it, not a
    // variable REGISTRY_TOKEN_AUTHORITY that no one set.
    let origin =
        format!("{} with REGISTRY_TOKEN_AUTHORITY__JWKS_URL: authority:", fixture.config_path.display());
    assert!(error.starts_with(&origin), "{error}");
    let unset = ("REGISTRY_TOKEN_AUTHORITY__JWKS_FILE".to_owned(), String::new());
    let config = Config::load_with_env(&fixture.config_path, [url, unset.clone()]).unwrap();
    assert_eq!(config.authority.jwks, JwksSource::Url("https://authority.example/jwks".into()));
    // A key that must have a value cannot be unset: the error names the variable.
    let issuer = ("REGISTRY_TOKEN_AUTHORITY__ISSUER".to_owned(), String::new());
    let error = Config::load_with_env(&fixture.config_path, [issuer]).unwrap_err().to_string();
    assert!(error.contains("environment variable REGISTRY_TOKEN_AUTHORITY__ISSUER"), "{error}");
}

/// A Kubernetes Service named `registry-token` gives every pod in its namespace service-link
/// variables with our prefix (`REGISTRY_TOKEN_SERVICE_HOST`, `REGISTRY_TOKEN_PORT_5050_TCP`, ...):
/// they are not configuration keys, and the service starts beside them. A misspelt key is still
/// refused.
#[test]
fn kubernetes_service_link_variables_are_not_configuration_keys() {
    let fixture = Fixture::new();
    let links = [
        ("REGISTRY_TOKEN_SERVICE_HOST", "10.96.0.12"),
        ("REGISTRY_TOKEN_SERVICE_PORT", "5050"),
        ("REGISTRY_TOKEN_SERVICE_PORT_HTTP", "5050"),
        ("REGISTRY_TOKEN_PORT", "tcp://10.96.0.12:5050"),
        ("REGISTRY_TOKEN_PORT_5050_TCP", "tcp://10.96.0.12:5050"),
        ("REGISTRY_TOKEN_PORT_5050_TCP_PROTO", "tcp"),
        ("REGISTRY_TOKEN_PORT_5050_TCP_PORT", "5050"),
        ("REGISTRY_TOKEN_PORT_5050_TCP_ADDR", "10.96.0.12"),
        // A second Service, registry-token-admin, for the operator listener.
        ("REGISTRY_TOKEN_ADMIN_SERVICE_HOST", "10.96.0.13"),
        ("REGISTRY_TOKEN_ADMIN_PORT_5051_TCP_ADDR", "10.96.0.13"),
    ];
    let mut serve = serve_command(BIN, &fixture.config_path);
    serve.envs(links);
    let server = Server::start_command(serve);
    let reply = server
        .client()
        .get_bearer(&query(SERVICE, &["repository:team/app:pull"]), &fixture.token(|_| {}))
        .unwrap();
    assert_eq!(reply.status, 200, "{reply}");
    drop(server);

    let mut serve = serve_command(BIN, &fixture.config_path);
    serve.envs(links).env("REGISTRY_TOKEN_SERVICES_", "[registry.test]");
    let output = output_within(serve, Duration::from_secs(30));
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("REGISTRY_TOKEN_SERVICES_"), "{stderr}");
}

/// `keys export` writes what the service publishes, from the certificates alone: a publishing
/// job (a CI step that updates the registries' bundle) needs no private key and no HSM. Before, it
/// opened every private key, and failed where they were not.
#[test]
fn keys_export_publishes_from_certificates_without_opening_private_keys() {
    let mut fixture = Fixture::new();
    let root = fixture.root().to_owned();
    let server = Server::start(BIN, &fixture.config_path);
    let served_jwks = server.client().get("/.well-known/jwks.json").unwrap().text;
    let served_certs = server.client().get("/certs.pem").unwrap().text;
    drop(server);

    // The publishing host has the configuration and the certificates; the active key is in an
    // HSM it cannot reach (a module and PIN file that are not there) and the next key's file is
    // elsewhere.
    registry_token::mint::keygen::generate(
        &root.join("next"),
        registry_token::mint::SigningAlgorithm::RS256,
        2048,
    )
    .unwrap();
    fixture.reconfigure(|config| {
        let cert = config.signing.cert_file.take().unwrap();
        config.signing.key_file = Default::default();
        config.signing.keys = vec![
            test_support::SigningKey {
                pkcs11: Some(test_support::Pkcs11Key {
                    module: "/nonexistent/libsofthsm2.so".into(),
                    token_label: "registry-token".into(),
                    key_label: "signing".into(),
                    pin_file: "/nonexistent/pin".into(),
                }),
                cert_file: Some(cert),
                status: "active".into(),
                ..Default::default()
            },
            test_support::SigningKey::files(
                &root.join("elsewhere/signing-key.pem"),
                &root.join("next/signing-cert.pem"),
                "published",
            ),
        ];
    });
    let (jwks, certs) = (root.join("out/jwks.json"), root.join("out/certs.pem"));
    std::fs::create_dir_all(root.join("out")).unwrap();
    let output = run(&[
        "keys",
        "export",
        "--config",
        fixture.config_path.to_str().unwrap(),
        "--jwks",
        jwks.to_str().unwrap(),
        "--certs",
        certs.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(
        text(&output.stdout),
        format!("wrote {} (2 keys)\nwrote {} (2 certificates)\n", jwks.display(), certs.display())
    );
    // The same documents as the service served, plus the next key.
    let exported: serde_json::Value = serde_json::from_slice(&std::fs::read(&jwks).unwrap()).unwrap();
    let served: serde_json::Value = serde_json::from_str(&served_jwks).unwrap();
    assert_eq!(exported["keys"][0], served["keys"][0]);
    assert_eq!(exported["keys"].as_array().unwrap().len(), 2);
    let exported_certs = std::fs::read_to_string(&certs).unwrap();
    assert!(exported_certs.starts_with(&served_certs), "{exported_certs}");
    // (Written back in the service's own PEM layout.)
    let bare = |pem: &str| pem.split_whitespace().collect::<String>();
    let next = std::fs::read_to_string(root.join("next/signing-cert.pem")).unwrap();
    assert!(bare(&exported_certs).ends_with(&bare(&next)), "{exported_certs}");

    // A key without a certificate is published from its private key: that one must be reached.
    fixture.reconfigure(|config| config.signing.keys[0].cert_file = None);
    let config = fixture.config_path.to_str().unwrap();
    let output = run(&["keys", "export", "--config", config, "--jwks", jwks.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("signing.keys[0]"), "{}", text(&output.stderr));
}

/// An offline site takes the Authority's keys from its bundle only when the bundle's signature is
/// checked: otherwise whoever can change the bundle can add a key and sign any caller's token.
#[test]
fn authority_keys_from_an_unsigned_bundle_are_refused() {
    use registry_token::config::{Config, JwksSource};
    let mut fixture = Fixture::with(|config| {
        config.authority.jwks_file = None;
        config.policy.settings_file = None;
        config.set("policy.bundle", "/srv/kit.tar.gz");
    });
    let error = Config::load_with_env(&fixture.config_path, Vec::new()).unwrap_err().to_string();
    assert!(error.contains("policy.bundle_keys is empty"), "{error}");
    let output = run(&["serve", "--config", fixture.config_path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
    assert!(text(&output.stderr).contains("set policy.bundle_keys"), "{}", text(&output.stderr));

    fixture.reconfigure(|config| {
        config.set("policy.bundle_keys", vec!["/srv/kit-signer.pem"]);
    });
    assert_eq!(fixture.config().authority.jwks, JwksSource::Bundle);
}

/// An environment value is text where the key wants text: a numeric scope name or username is
/// not refused as "found unsigned int, expected a string"; numbers and booleans still parse where
/// the key wants them.
#[test]
fn environment_values_are_text_where_the_key_wants_text() {
    use registry_token::config::Config;
    let fixture = Fixture::new();
    let vars = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect()
    };
    let config = Config::load_with_env(
        &fixture.config_path,
        vars(&[
            ("REGISTRY_TOKEN_ADMIN__REQUIRED_SCOPE", "1234"),
            ("REGISTRY_TOKEN_REALM", "true"),
            ("REGISTRY_TOKEN_ADMIN__METRICS", "false"),
            ("REGISTRY_TOKEN_SIGNING__LIFETIME_SECONDS", "120"),
        ]),
    )
    .unwrap();
    assert_eq!(config.admin.required_scope, "1234");
    assert_eq!(config.realm, "true");
    assert!(!config.admin.metrics);
    assert_eq!(config.signing.lifetime_seconds, 120);
    let error =
        Config::load_with_env(&fixture.config_path, vars(&[("REGISTRY_TOKEN_ADMIN__METRICS", "maybe")]))
            .unwrap_err()
            .to_string();
    assert!(error.contains("environment variable REGISTRY_TOKEN_ADMIN__METRICS"), "{error}");
}

#[test]
fn environment_overrides_reach_the_running_service() {
    let fixture = Fixture::new();
    let mut command = serve_command(BIN, &fixture.config_path);
    command
        .env("REGISTRY_TOKEN_SIGNING__LIFETIME_SECONDS", "120")
        .env("REGISTRY_TOKEN_SERVICES", "[env.test]");
    let server = Server::start_command(command);
    let token = fixture.token(|_| {});
    let reply = server.client().get_bearer("/token?service=env.test", &token).unwrap();
    assert_eq!(reply.status, 200, "{reply}");
    assert!(reply.text.contains("\"expires_in\":120"), "{reply}");
}
