//! Shared by the integration tests: a service built from a real configuration file, with a real
//! signing key and a development Authority generated in a temporary directory.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use registry_token::app::{App, Live, system_clock};
use registry_token::config::Config;
use registry_token::dev_authority::{self, TokenRequest};
use registry_token::mint::{SigningAlgorithm, keygen};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tower::ServiceExt;

pub const ISSUER: &str = "https://authority.test";
pub const SERVICE: &str = "registry.test";

pub use test_support::{PLANS, Reply};

/// A temporary installation: keys, a development Authority, plans and a configuration file.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    written: test_support::Config,
}

impl Fixture {
    /// A fixture with the default configuration.
    pub fn new() -> Fixture {
        Fixture::with(|_| {})
    }

    /// A fixture whose configuration `edit` may change before it is written.
    pub fn with(edit: impl FnOnce(&mut test_support::Config)) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        keygen::generate(&root.join("keys"), SigningAlgorithm::RS256, 2048).unwrap();
        dev_authority::init(&root.join("authority"), ISSUER).unwrap();
        std::fs::write(root.join("plans.yaml"), PLANS).unwrap();
        let mut written = test_support::Config::installation(root, ISSUER, &[SERVICE, "other.test"]);
        edit(&mut written);
        let config_path = root.join("registry-token.yaml");
        written.write(&config_path);
        Fixture { dir, config_path, written }
    }

    /// Changes the configuration file (for settings that need the fixture's files first).
    pub fn reconfigure(&mut self, edit: impl FnOnce(&mut test_support::Config)) {
        edit(&mut self.written);
        self.written.write(&self.config_path);
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn config(&self) -> Config {
        Config::load_with_env(&self.config_path, Vec::new()).unwrap()
    }

    /// A caller token from the development Authority: team plan, tenant acme, unless `edit` says
    /// otherwise.
    pub fn token(&self, edit: impl FnOnce(&mut TokenRequest)) -> String {
        self.token_at(system_clock()(), edit)
    }

    /// [`Fixture::token`] issued at `now` (a test clock's time).
    pub fn token_at(&self, now: u64, edit: impl FnOnce(&mut TokenRequest)) -> String {
        let mut request = TokenRequest {
            subject: "alice".into(),
            plan: Some("team".into()),
            license: Some("LIC-0001".into()),
            tenant: Some("acme".into()),
            scope: "registry.token.issue".into(),
            audience: "registry-token".into(),
            client_id: "tests".into(),
            ttl_seconds: 600,
            extra: Map::new(),
        };
        edit(&mut request);
        dev_authority::token(&self.root().join("authority"), &request, now).unwrap()
    }

    pub async fn service(&self) -> Arc<App> {
        let live = Live::build(self.config()).await.unwrap();
        Arc::new(App::new(live, Some(self.config_path.clone()), system_clock()))
    }

    pub async fn router(&self) -> Router {
        registry_token::http::router(self.service().await)
    }

    /// The service with its ledger open and serving (as `serve` runs it), on `clock`.
    pub async fn service_with_ledger(&self, clock: &TestClock) -> Arc<App> {
        let config = self.config();
        let ledger = registry_token::ledger::Ledger::open(&config.ledger, true).await.unwrap();
        let live = Live::build(config).await.unwrap();
        Arc::new(App::new(live, Some(self.config_path.clone()), clock.clock()).with_ledger(ledger))
    }
}

/// The service with its ledger open, on a clock the test moves, driven through the real router:
/// what the refresh-token and token-reuse tests run against.
pub struct LedgerWorld {
    pub fixture: Fixture,
    pub clock: TestClock,
    pub app: Arc<App>,
    pub router: Router,
}

impl LedgerWorld {
    pub async fn new(edit: impl FnOnce(&mut test_support::Config)) -> LedgerWorld {
        let fixture = Fixture::with(edit);
        let clock = TestClock::new();
        let app = fixture.service_with_ledger(&clock).await;
        let router = registry_token::http::router(Arc::clone(&app));
        LedgerWorld { fixture, clock, app, router }
    }

    pub fn ledger(&self) -> &registry_token::ledger::Ledger {
        self.app.ledger.as_ref().unwrap()
    }

    /// Every event so far, oldest first, once the writer has caught up.
    pub async fn events(&self) -> Vec<registry_token::ledger::Event> {
        self.ledger().flush(std::time::Duration::from_secs(5)).await.unwrap();
        let filter = registry_token::ledger::EventFilter { limit: 1000, ..Default::default() };
        let mut events = self.ledger().events(&filter).await.unwrap();
        events.reverse();
        events
    }
}

/// A clock a test moves by hand (Unix seconds), starting at the system's time.
#[derive(Clone)]
pub struct TestClock(Arc<std::sync::atomic::AtomicU64>);

impl TestClock {
    pub fn new() -> TestClock {
        TestClock(Arc::new(std::sync::atomic::AtomicU64::new(system_clock()())))
    }

    pub fn now(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn advance(&self, seconds: u64) {
        self.0.fetch_add(seconds, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn clock(&self) -> registry_token::app::Clock {
        let now = Arc::clone(&self.0);
        Arc::new(move || now.load(std::sync::atomic::Ordering::SeqCst))
    }
}

pub async fn send(router: &Router, request: Request<Body>) -> Reply {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Reply::new(status, headers, &bytes)
}

/// `GET uri` with `Authorization: Basic` carrying `token` as the password.
pub async fn get_basic(router: &Router, uri: &str, token: &str) -> Reply {
    let credentials = data_encoding::BASE64.encode(format!("alice:{token}").as_bytes());
    let request = Request::get(uri)
        .header("authorization", format!("Basic {credentials}"))
        .body(Body::empty())
        .unwrap();
    send(router, request).await
}

pub async fn get_bearer(router: &Router, uri: &str, token: &str) -> Reply {
    let request =
        Request::get(uri).header("authorization", format!("Bearer {token}")).body(Body::empty()).unwrap();
    send(router, request).await
}

pub async fn post_form(router: &Router, form: &str) -> Reply {
    let request = Request::post("/token")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from(form.to_owned()))
        .unwrap();
    send(router, request).await
}

/// Header and claims of a JWT, unverified.
pub fn decode(token: &str) -> (Value, Value) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "{token}");
    let json = |part: &str| {
        serde_json::from_slice(&data_encoding::BASE64URL_NOPAD.decode(part.as_bytes()).unwrap()).unwrap()
    };
    (json(parts[0]), json(parts[1]))
}

/// The `access` claim in scope syntax.
pub fn access(token: &str) -> Vec<String> {
    let (_, claims) = decode(token);
    claims["access"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let actions: Vec<&str> =
                a["actions"].as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect();
            format!("{}:{}:{}", a["type"].as_str().unwrap(), a["name"].as_str().unwrap(), actions.join(","))
        })
        .collect()
}

/// `scope=` parameters for a query.
pub fn query(service: &str, scopes: &[&str]) -> String {
    let mut query = form_urlencoded_pairs(&[("service", service)]);
    for scope in scopes {
        query.push('&');
        query.push_str(&form_urlencoded_pairs(&[("scope", scope)]));
    }
    format!("/token?{query}")
}

pub fn form_urlencoded_pairs(pairs: &[(&str, &str)]) -> String {
    pairs.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect::<Vec<_>>().join("&")
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// distribution 2.8's libtrust `kid` of the key a PEM certificate holds, computed here from the
/// certificate's SubjectPublicKeyInfo (independently of the service's code).
pub fn libtrust_kid_of(cert_pem: &Path) -> String {
    use sha2::Digest;
    let pem = pem::parse(std::fs::read(cert_pem).unwrap()).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(pem.contents()).unwrap();
    let digest = sha2::Sha256::digest(cert.public_key().raw);
    let encoded = data_encoding::BASE32_NOPAD.encode(&digest[..30]);
    encoded.as_bytes().chunks(4).map(|c| std::str::from_utf8(c).unwrap()).collect::<Vec<_>>().join(":")
}
