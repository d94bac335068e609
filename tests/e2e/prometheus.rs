//! Metrics, for real: after a scripted sequence of exchanges, reloads and a policy fault, every
//! counter of `GET /metrics` (the operator listener) equals what happened; `promtool check metrics`
//! finds nothing wrong with the exposition, `promtool check rules` accepts the example alerts and
//! `promtool test rules` passes their unit tests; and a real Prometheus (Debian's `prometheus`, started by the test on a free loopback port,
//! scraping every second) answers the same numbers through its HTTP API.
//!
//! Prometheus and promtool are required: when missing, the test fails and says what to install.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../host/tests/common/mod.rs"]
mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use test_support::{Client, Process, Server, free_port, require_program};

const BIN: &str = env!("CARGO_BIN_EXE_registry-token");
const INSTALL: &str =
    "install Debian's prometheus package (apt-get install -y prometheus; tests/run does this as root)";
const RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../etc/prometheus/registry-token-alerts.yml");
const RULE_TESTS: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../etc/prometheus/registry-token-alerts.test.yml");

/// The exposition's samples: `name{labels}` (labels sorted, as written) → value.
fn samples(exposition: &str) -> BTreeMap<String, f64> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse().unwrap())
        })
        .collect()
}

/// The value of the one series of `name` whose labels include every `label="value"` in `labels`.
fn value(samples: &BTreeMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    let matching: Vec<(&String, &f64)> = samples
        .iter()
        .filter(|(series, _)| {
            let (series_name, rest) = series.split_once('{').unwrap_or((series, ""));
            series_name == name && labels.iter().all(|l| rest.contains(l))
        })
        .collect();
    match matching.as_slice() {
        [(_, value)] => **value,
        [] => panic!("no series {name} {labels:?}"),
        many => panic!("{name} {labels:?} matches several series: {many:?}"),
    }
}

fn scrape(admin: &Client) -> String {
    let reply = admin.get("/metrics").unwrap();
    assert_eq!(reply.status, 200, "{reply}");
    assert_eq!(reply.headers["content-type"], "text/plain; version=0.0.4; charset=utf-8");
    reply.text
}

#[test]
fn every_counter_equals_what_happened_and_a_real_prometheus_reads_the_same() {
    let promtool = require_program("promtool", INSTALL);
    let prometheus = require_program("prometheus", INSTALL);
    // The shared plans: team may pull and push team/*, LIC-0002 is revoked.
    let mut fixture = Fixture::new();
    let server = Server::start(BIN, &fixture.config_path);
    let (client, admin) = (server.client(), server.admin());

    // The sequence: 5 issued, 3 denied, 4 refused, a partial grant, an OAuth2 one, a login with a
    // refresh token and a use of it, an unknown refresh token, a revoked caller, one reload
    // refused, one applied, one fault.
    let alice = fixture.token(|_| {});
    let bob = fixture.token(|r| {
        r.subject = "bob".into();
        r.license = Some("LIC-0002".into());
    });
    for _ in 0..5 {
        let reply = client.get_bearer(&query(SERVICE, &["repository:team/app:pull,push"]), &alice).unwrap();
        assert_eq!(reply.status, 200, "{reply}");
    }
    for _ in 0..3 {
        assert_eq!(
            client.get_bearer(&query(SERVICE, &["repository:team/app:pull"]), &bob).unwrap().status,
            403
        );
    }
    let refused = [
        fixture.token(|r| r.ttl_seconds = -600),
        fixture.token(|r| r.ttl_seconds = -1200),
        fixture.token(|r| r.audience = "someone-else".into()),
        "not.a.token".to_owned(),
    ];
    for token in &refused {
        assert_eq!(
            client.get_bearer(&query(SERVICE, &["repository:team/app:pull"]), token).unwrap().status,
            401
        );
    }
    // A partial grant, the OAuth2 form, and a caller revoked through the admin API.
    let reply = client
        .get_bearer(&query(SERVICE, &["repository:team/app:pull", "repository:secret/x:push"]), &alice)
        .unwrap();
    assert_eq!(reply.status, 200, "{reply}");
    let form = [
        ("grant_type", "password"),
        ("username", "alice"),
        ("password", alice.as_str()),
        ("service", SERVICE),
        ("scope", "repository:team/app:pull"),
    ];
    assert_eq!(client.post_form("/token", &form).unwrap().status, 200);
    // A login's refresh token, used once, and a refresh token this service never issued.
    let login =
        format!("{}&offline_token=true&client_id=docker", query(SERVICE, &["repository:team/app:pull"]));
    let reply = client.get_bearer(&login, &alice).unwrap();
    let refresh_token = reply.body["refresh_token"].as_str().unwrap_or_else(|| panic!("{reply}")).to_owned();
    for (token, status) in [(refresh_token.as_str(), 200), ("rtr_not-one-of-ours", 401)] {
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", token),
            ("service", SERVICE),
            ("client_id", "docker"),
            ("scope", "repository:team/app:pull"),
        ];
        assert_eq!(client.post_form("/token", &form).unwrap().status, status);
    }
    let administrator = fixture.token(|r| r.scope = "registry.admin".into());
    let body = r#"{"kind": "subject", "value": "carol", "reason": "metrics test"}"#;
    assert_eq!(admin.post_json_bearer("/admin/v1/revocations", &administrator, body).unwrap().status, 201);
    let carol = fixture.token(|r| r.subject = "carol".into());
    assert_eq!(
        client.get_bearer(&query(SERVICE, &["repository:team/app:pull"]), &carol).unwrap().status,
        403
    );

    fixture.reconfigure(|config| config.policy.module = Some("/nonexistent/policy.wasm".into()));
    server.signal("HUP");
    wait_for_reload_line(&server, "reload refused");
    fixture.reconfigure(|config| {
        config.policy.module = Some(test_support::HOSTILE_GUEST_WASM.into());
        config.policy.settings_file = None;
    });
    server.signal("HUP");
    wait_for_reload_line(&server, "reloaded");
    let reply = client.get_bearer(&query(SERVICE, &["repository:hostile/panic:pull"]), &alice).unwrap();
    assert_eq!(reply.status, 503, "{reply}");

    // The hostile request's fault event is written after its answer (only issued events are
    // waited for): scrape once the writer has taken it, so that the queue gauge reads 0.
    let deadline = Instant::now() + Duration::from_secs(5);
    let exposition = loop {
        let exposition = scrape(&admin);
        let queued = value(&samples(&exposition), "registry_token_ledger_queue_events", &[]);
        if queued == 0.0 || Instant::now() > deadline {
            break exposition;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let s = samples(&exposition);
    let ready = client.get("/readyz").unwrap().body;
    for (name, labels, expected) in [
        (
            "registry_token_tokens_issued_total",
            vec!["service=\"registry.test\"", "algorithm=\"RS256\"", "via=\"credential\""],
            8.0,
        ),
        (
            "registry_token_tokens_issued_total",
            vec!["service=\"registry.test\"", "algorithm=\"RS256\"", "via=\"refresh_token\""],
            1.0,
        ),
        // The policy decides every request, a reused token's too: five identical requests (the
        // other four reuse the first one's token, signing.reuse_seconds), the offline login (it
        // asks what the password grant just did), the password grant, the refresh.
        ("registry_token_decisions_total", vec!["outcome=\"grant\""], 8.0),
        ("registry_token_cache_requests_total", vec!["cache=\"tokens\"", "result=\"hit\""], 5.0),
        // Granted, then not reused: alice's first, the partial grant, the password grant, the
        // refresh (denials and faults never reach the reuse cache).
        ("registry_token_cache_requests_total", vec!["cache=\"tokens\"", "result=\"miss\""], 4.0),
        ("registry_token_decisions_total", vec!["outcome=\"partial\""], 1.0),
        ("registry_token_decisions_total", vec!["outcome=\"revoked\""], 1.0),
        ("registry_token_decisions_total", vec!["outcome=\"deny\""], 3.0),
        ("registry_token_decisions_total", vec!["outcome=\"fault\""], 1.0),
        ("registry_token_caller_refusals_total", vec!["reason=\"expired\""], 2.0),
        ("registry_token_caller_refusals_total", vec!["reason=\"audience\""], 1.0),
        ("registry_token_caller_refusals_total", vec!["reason=\"malformed\""], 1.0),
        ("registry_token_caller_refusals_total", vec!["reason=\"refresh_token_unknown\""], 1.0),
        ("registry_token_policy_faults_total", vec!["kind=\"trap\""], 1.0),
        ("registry_token_reloads_total", vec!["result=\"applied\""], 1.0),
        ("registry_token_reloads_total", vec!["result=\"refused\""], 1.0),
        ("registry_token_requests_total", vec!["endpoint=\"token_get\"", "status=\"200\""], 7.0),
        ("registry_token_requests_total", vec!["endpoint=\"token_get\"", "status=\"403\""], 4.0),
        ("registry_token_requests_total", vec!["endpoint=\"token_post\"", "status=\"200\""], 2.0),
        ("registry_token_requests_total", vec!["endpoint=\"token_post\"", "status=\"401\""], 1.0),
        ("registry_token_requests_total", vec!["endpoint=\"admin\"", "status=\"201\""], 1.0),
        ("registry_token_requests_total", vec!["endpoint=\"token_get\"", "status=\"401\""], 4.0),
        ("registry_token_requests_total", vec!["endpoint=\"token_get\"", "status=\"503\""], 1.0),
        ("registry_token_request_duration_seconds_count", vec!["endpoint=\"token_get\""], 16.0),
        ("registry_token_request_duration_seconds_count", vec!["endpoint=\"token_post\""], 3.0),
        // Every decision but the revoked one (the host refuses before the policy is asked).
        ("registry_token_policy_evaluation_duration_seconds_count", vec![], 13.0),
        // alice's token: a miss, then 4 + 3 hits; bob's: a miss, 2 hits; the 4 refused and
        // carol's: misses; after the reload (a new cache) alice's: a miss. Refresh tokens are
        // looked up in the ledger, not this cache; the administrator's token is the admin
        // listener's, not a caller's.
        ("registry_token_cache_requests_total", vec!["cache=\"caller_tokens\"", "result=\"hit\""], 9.0),
        ("registry_token_cache_requests_total", vec!["cache=\"caller_tokens\"", "result=\"miss\""], 8.0),
        ("registry_token_build_info", vec![&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))], 1.0),
        ("registry_token_ledger_queue_events", vec![], 0.0),
        ("registry_token_ledger_events_dropped_total", vec![], 0.0),
        ("registry_token_revocations_active", vec!["kind=\"subject\""], 1.0),
        ("registry_token_revocations_active", vec!["kind=\"licence\""], 0.0),
    ] {
        assert_eq!(value(&s, name, &labels), expected, "{name} {labels:?} in\n{exposition}");
    }
    let policy = format!("digest=\"{}\"", ready["policy"]["digest"].as_str().unwrap());
    assert_eq!(value(&s, "registry_token_policy_info", &[&policy]), 1.0, "{exposition}");
    let kid = format!("kid=\"{}\"", ready["signing"]["kid"].as_str().unwrap());
    assert_eq!(
        value(&s, "registry_token_signing_key_info", &[&kid, "status=\"active\"", "published=\"true\""]),
        1.0
    );
    // The active certificate's expiry, as /readyz shows it: what an alert on a renewal due watches.
    let expires = value(&s, "registry_token_signing_certificate_expiry_timestamp_seconds", &[&kid]);
    let shown = ready["signing"]["keys"][0]["certificate_expires"].as_str().unwrap();
    assert_eq!(registry_token::mint::rfc3339(expires as u64), shown, "{exposition}");
    assert!(value(&s, "registry_token_ledger_commit_duration_seconds_count", &[]) >= 1.0);
    // Histograms, not summaries: buckets that aggregate across replicas.
    assert!(exposition.contains("# TYPE registry_token_request_duration_seconds histogram"));
    assert!(
        exposition.contains(
            "registry_token_request_duration_seconds_bucket{endpoint=\"token_get\",le=\"+Inf\"} 16"
        )
    );
    // No label carries a subject, a repository, a token or a client address.
    let labels: String =
        s.keys().filter_map(|series| series.split_once('{').map(|(_, l)| l.to_owned())).collect();
    for secret in [
        "alice",
        "bob",
        "carol",
        "team/app",
        "secret/x",
        "hostile",
        "127.0.0.1",
        "not.a.token",
        alice.as_str(),
        bob.as_str(),
        refresh_token.as_str(),
    ] {
        assert!(!labels.contains(secret), "a label value contains {secret:?}:\n{exposition}");
    }

    // promtool: the exposition and the example rules.
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check.stdin.take().unwrap().write_all(exposition.as_bytes()).unwrap();
    let checked = check.wait_with_output().unwrap();
    let said =
        format!("{}{}", String::from_utf8_lossy(&checked.stdout), String::from_utf8_lossy(&checked.stderr));
    assert!(checked.status.success() && said.trim().is_empty(), "promtool check metrics: {said}");
    let rules = Command::new(&promtool).args(["check", "rules", RULES]).output().unwrap();
    assert!(rules.status.success(), "{}", String::from_utf8_lossy(&rules.stdout));
    assert!(String::from_utf8_lossy(&rules.stdout).contains("SUCCESS: 5 rules found"));
    // The rules' own unit tests: an alert fires on the series it is meant for, and only on those.
    let tested = Command::new(&promtool).args(["test", "rules", RULE_TESTS]).output().unwrap();
    assert!(
        tested.status.success(),
        "promtool test rules: {}{}",
        String::from_utf8_lossy(&tested.stdout),
        String::from_utf8_lossy(&tested.stderr)
    );

    // A real Prometheus scraping the operator listener every second.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: [{RULES:?}]\n\
             scrape_configs:\n  - job_name: registry-token\n    static_configs: [{{targets: [\"{}\"]}}]\n",
            server.admin_address()
        ),
    )
    .unwrap();
    let port = free_port();
    let mut command = Command::new(&prometheus);
    command
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"));
    let prometheus = Process::start("prometheus", command);
    let api = Client::new(&format!("127.0.0.1:{port}"));
    let query_value = |promql: &str| -> Option<String> {
        let path = format!(
            "/api/v1/query?query={}",
            form_urlencoded_pairs(&[("q", promql)]).trim_start_matches("q=")
        );
        let reply = api.get(&path).ok()?;
        let result: &Value = &reply.body["data"]["result"][0]["value"][1];
        result.as_str().map(str::to_owned)
    };
    let since = Instant::now();
    let issued = loop {
        if let Some(value) = query_value("sum(registry_token_tokens_issued_total)") {
            break value;
        }
        assert!(
            since.elapsed() < Duration::from_secs(60),
            "Prometheus never scraped: {}",
            prometheus.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(issued, "9");
    assert_eq!(query_value("sum(registry_token_decisions_total{outcome=\"deny\"})").as_deref(), Some("3"));
    assert_eq!(query_value("sum(registry_token_caller_refusals_total)").as_deref(), Some("5"));
    assert_eq!(query_value("up{job=\"registry-token\"}").as_deref(), Some("1"));
}

fn wait_for_reload_line(server: &Server, line: &str) {
    let since = Instant::now();
    while !server.stderr().contains(line) {
        assert!(since.elapsed() < Duration::from_secs(30), "no {line:?}: {}", server.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn metrics_can_require_an_administrator_or_be_off() {
    let fixture = Fixture::with(|config| {
        config.set("admin.metrics_require_auth", true);
    });
    let server = Server::start(BIN, &fixture.config_path);
    let admin = server.admin();
    let reply = admin.get("/metrics").unwrap();
    assert_eq!(reply.status, 401, "{reply}");
    let caller = fixture.token(|_| {});
    assert_eq!(
        admin.get_bearer("/metrics", &caller).unwrap().status,
        403,
        "a caller is not an administrator"
    );
    let token = fixture.token(|r| r.scope = "registry.admin".into());
    admin.get_bearer("/metrics", &token).unwrap();
    let reply = admin.get_bearer("/metrics", &token).unwrap();
    assert_eq!(reply.status, 200);
    assert!(reply.text.contains("registry_token_build_info"));
    // No caller has asked for a token: the scrapes' own validations are not caller traffic.
    let s = samples(&reply.text);
    for result in ["hit", "miss"] {
        let labels = ["cache=\"caller_tokens\"", &format!("result=\"{result}\"")];
        assert_eq!(value(&s, "registry_token_cache_requests_total", &labels), 0.0, "{}", reply.text);
    }
    drop(server);

    let off = Fixture::with(|config| {
        config.set("admin.metrics", false);
    });
    let server = Server::start(BIN, &off.config_path);
    assert_eq!(server.admin().get("/metrics").unwrap().status, 404);
    assert_eq!(
        server
            .client()
            .get_bearer(&query(SERVICE, &["repository:team/app:pull"]), &off.token(|_| {}))
            .unwrap()
            .status,
        200
    );
}
