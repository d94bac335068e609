//! Key custody end to end, for real: one Debian `docker-registry` (distribution 2.8) whose
//! `rootcertbundle` holds the certificates of every key this suite signs with, `skopeo` pushing
//! and pulling through it, and one release server whose key set is changed by SIGHUP, following
//! the README's rotation runbook:
//!
//! 1. **Rotation under load**: key `a` active and `b` published; while a loop pushes and pulls
//!    continuously, `b` is promoted and `a` retired: no push or pull fails, and new tokens carry
//!    `b`'s kid.
//! 2. **ES256**: a P-256 key signs; skopeo pushes and pulls through registry 2.8.
//! 3. **SoftHSM2**: a key generated inside a SoftHSM2 token (initialised here, in a temporary
//!    directory, through `SOFTHSM2_CONF`) signs; the configuration names only labels, no key file
//!    exists, and the token reports the key sensitive and never extractable. With the token gone the
//!    endpoint answers 503; when it returns, tokens are signed again. A PIN the token refuses is
//!    tried once, not at every reconnect, and a reload with the right one signs again.
//! 4. **Retirement**: a token signed by `a` keeps working until `a` leaves the set and the
//!    registry's bundle, written by `keys export` (the same documents the server publishes), no
//!    longer has its certificate (the registry restarted to reread it); then the registry refuses it.
//!
//! docker-registry, skopeo and softhsm2 are required: when one is missing the test fails and says
//! what to install; it never skips. One registry serves the whole suite, which runs in order.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../host/tests/common/mod.rs"]
mod common;

use common::libtrust_kid_of;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use test_support::{
    Config, DockerRegistry, PLANS, Pkcs11Key, SOFTHSM_MODULE, Server, SigningKey, build_image, layout_digest,
    run_ok, serve_command, skopeo,
};

const BIN: &str = env!("CARGO_BIN_EXE_registry-token");
const SERVICE: &str = "registry.keys";
const ISSUER: &str = "https://authority.keys";
const TOKEN_LABEL: &str = "registry-token";
const HSM_KEY: &str = "signing-hsm";
/// A P-256 key in the same token.
const HSM_EC_KEY: &str = "signing-hsm-p256";
const PIN: &str = "4921-test-pin";
/// `signing.lifetime_seconds` (the default) plus `authority.leeway_seconds` (the default): how
/// long a retired key must stay published.
const LONGEST_TOKEN: u64 = 300 + 60;

struct Suite {
    dir: tempfile::TempDir,
    softhsm_conf: PathBuf,
    config: Config,
    server: Server,
    registry: DockerRegistry,
    /// An admin-plan Authority token: skopeo's password.
    caller: String,
}

impl Suite {
    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn key(&self, name: &str, status: &str) -> SigningKey {
        let keys = self.root().join("keys");
        SigningKey::files(&keys.join(format!("{name}.pem")), &keys.join(format!("{name}.crt")), status)
    }

    fn retired(&self, name: &str) -> SigningKey {
        SigningKey {
            cert_file: Some(self.root().join(format!("keys/{name}.crt"))),
            status: "retired".into(),
            retire_after: Some(rfc3339(now() + LONGEST_TOKEN)),
            ..SigningKey::default()
        }
    }

    fn hsm_key(&self, label: &str) -> SigningKey {
        SigningKey {
            pkcs11: Some(Pkcs11Key {
                module: SOFTHSM_MODULE.into(),
                token_label: TOKEN_LABEL.into(),
                key_label: label.into(),
                pin_file: self.root().join("hsm/pin"),
            }),
            cert_file: Some(self.root().join(format!("keys/{label}.crt"))),
            status: "active".into(),
            ..SigningKey::default()
        }
    }

    /// Asks for tokens until one is signed by `kid` (each answer before it a 503), at most 15 s
    /// after `what`; returns how long it took.
    fn signing_again(&self, kid: &str, what: &str) -> Duration {
        let since = Instant::now();
        loop {
            let (status, token, body) = self.token("repository:team/hsm:pull");
            if status == 200 {
                assert_eq!(header_of(&token)["kid"], kid);
                return since.elapsed();
            }
            assert_eq!(status, 503, "{body}");
            assert!(since.elapsed() < Duration::from_secs(15), "no recovery after {what}: {body}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn kid(&self, name: &str) -> String {
        libtrust_kid_of(&self.root().join(format!("keys/{name}.crt")))
    }

    /// Writes the key set and reloads by SIGHUP; returns once `/readyz` shows exactly that set
    /// (each entry's kid, in order) and tokens carry `kid`.
    fn switch_to(&mut self, keys: Vec<SigningKey>, kid: &str) {
        let expected: Vec<String> =
            keys.iter().map(|key| libtrust_kid_of(key.cert_file.as_ref().unwrap())).collect();
        self.config.signing.keys = keys;
        self.config.write(&self.root().join("registry-token.yaml"));
        self.server.signal("HUP");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let ready = self.server.client().get("/readyz").unwrap();
            let listed: Vec<&str> = ready.body["signing"]["keys"]
                .as_array()
                .map(|keys| keys.iter().filter_map(|k| k["kid"].as_str()).collect())
                .unwrap_or_default();
            if ready.body["signing"]["kid"] == kid && listed == expected {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the server did not switch to {kid} with {expected:?}:\n{}", self.server.stderr());
    }

    fn push(&self, repository: &str) -> Output {
        let image = self.root().join("image");
        skopeo(self.root())
            .args(["copy", "--insecure-policy", "--dest-tls-verify=false", "--dest-creds"])
            .arg(format!("alice:{}", self.caller))
            .arg(format!("oci:{}:1", image.display()))
            .arg(self.registry.image_ref(repository, "1"))
            .output()
            .unwrap()
    }

    fn pull(&self, repository: &str, dest: &Path) -> Output {
        skopeo(self.root())
            .args(["copy", "--insecure-policy", "--src-tls-verify=false", "--src-creds"])
            .arg(format!("alice:{}", self.caller))
            .arg(self.registry.image_ref(repository, "1"))
            .arg(format!("oci:{}:1", dest.display()))
            .output()
            .unwrap()
    }

    /// Pushes then pulls `repository`, asserting both work and the manifest round-trips.
    fn push_and_pull(&self, repository: &str, what: &str) {
        let pushed = self.push(repository);
        assert!(
            pushed.status.success(),
            "{what}: push failed: {}\n{}",
            stderr(&pushed),
            self.server.stderr()
        );
        let dest = self.root().join(format!("pulled-{}", repository.replace('/', "-")));
        let pulled = self.pull(repository, &dest);
        assert!(pulled.status.success(), "{what}: pull failed: {}", stderr(&pulled));
        assert_eq!(layout_digest(&dest), layout_digest(&self.root().join("image")), "{what}");
    }

    /// `GET /token` for `scope`: the status and the token, if any.
    fn token(&self, scope: &str) -> (u16, String, serde_json::Value) {
        let reply = self
            .server
            .client()
            .get_basic(&format!("/token?service={SERVICE}&scope={scope}"), "alice", &self.caller)
            .unwrap();
        let token = reply.body["token"].as_str().unwrap_or_default().to_owned();
        (reply.status.as_u16(), token, reply.body)
    }

    /// What the registry answers `GET /v2/REPOSITORY/tags/list` with `token`.
    fn registry_status(&self, repository: &str, token: &str) -> u16 {
        self.registry
            .client()
            .get_bearer(&format!("/v2/{repository}/tags/list"), token)
            .unwrap()
            .status
            .as_u16()
    }
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn header_of(token: &str) -> serde_json::Value {
    let header = token.split('.').next().unwrap();
    serde_json::from_slice(&data_encoding::BASE64URL_NOPAD.decode(header.as_bytes()).unwrap()).unwrap()
}

/// A SoftHSM2 token of our own, in `root/hsm`: its configuration file for `SOFTHSM2_CONF`.
fn init_softhsm(root: &Path) -> PathBuf {
    test_support::softhsm_token(root, TOKEN_LABEL, PIN)
}

fn start() -> Suite {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let keys = root.join("keys");
    for (name, algorithm) in [("a", "RS256"), ("b", "RS256"), ("e", "ES256")] {
        run_ok(
            Command::new(BIN)
                .args(["keys", "new", "--name", name, "--algorithm", algorithm, "--dir"])
                .arg(&keys),
        );
        let mode = std::fs::metadata(keys.join(format!("{name}.pem"))).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600,
            "{name}.pem is the owner's only"
        );
    }
    let again = Command::new(BIN).args(["keys", "new", "--name", "a", "--dir"]).arg(&keys).output().unwrap();
    assert!(!again.status.success() && stderr(&again).contains("already exists"), "keys new overwrote a key");

    let softhsm_conf = init_softhsm(root);
    for (label, algorithm) in [(HSM_KEY, "RS256"), (HSM_EC_KEY, "ES256")] {
        run_ok(
            Command::new(BIN)
                .env("SOFTHSM2_CONF", &softhsm_conf)
                .args(["keys", "new", "--pkcs11", SOFTHSM_MODULE, "--token-label", TOKEN_LABEL])
                .args(["--key-label", label, "--algorithm", algorithm, "--pin-file"])
                .arg(root.join("hsm/pin"))
                .arg("--dir")
                .arg(&keys),
        );
        assert!(!keys.join(format!("{label}.pem")).exists(), "keys new --pkcs11 writes only the certificate");
    }

    // The registry trusts every key the suite will sign with.
    let bundle: String = ["a", "b", "e", HSM_KEY, HSM_EC_KEY]
        .iter()
        .map(|name| std::fs::read_to_string(keys.join(format!("{name}.crt"))).unwrap())
        .collect();
    std::fs::write(root.join("bundle.pem"), bundle).unwrap();

    run_ok(
        Command::new(BIN)
            .args(["dev-authority", "init", "--issuer", ISSUER, "--dir"])
            .arg(root.join("authority")),
    );
    std::fs::write(root.join("plans.yaml"), PLANS).unwrap();
    let mut config = Config::installation(root, ISSUER, &[SERVICE]);
    config.signing.key_file = PathBuf::new();
    config.signing.cert_file = None;
    // This suite is about signing: every request signs (no token reuse), so a request while the
    // HSM is away cannot be answered with a token minted before.
    config.signing.reuse_seconds = Some(0);
    let mut suite_keys = vec![
        SigningKey::files(&keys.join("a.pem"), &keys.join("a.crt"), "active"),
        SigningKey::files(&keys.join("b.pem"), &keys.join("b.crt"), "published"),
    ];
    config.signing.keys.append(&mut suite_keys);
    config.write(&root.join("registry-token.yaml"));
    let mut command = serve_command(BIN, &root.join("registry-token.yaml"));
    command.env("SOFTHSM2_CONF", &softhsm_conf);
    let server = Server::start_command(command);
    let realm = format!("http://{}/token", server.address());
    let registry = DockerRegistry::start(root, &realm, SERVICE, &root.join("bundle.pem"));
    let caller = String::from_utf8(
        run_ok(
            Command::new(BIN)
                .args([
                    "dev-authority",
                    "token",
                    "--sub",
                    "alice",
                    "--plan",
                    "admin",
                    "--ttl",
                    "3600",
                    "--dir",
                ])
                .arg(root.join("authority")),
        )
        .stdout,
    )
    .unwrap()
    .trim()
    .to_owned();
    build_image(&root.join("image"));
    Suite { dir, softhsm_conf, config, server, registry, caller }
}

#[test]
fn keys_rotate_under_load_sign_es256_and_sign_from_softhsm2_against_registry_2_8() {
    let suite = start();
    let (kid_a, kid_b) = (suite.kid("a"), suite.kid("b"));
    suite.push_and_pull("team/rotate", "before the rotation");

    // 1. Rotation under load: a loop pushes and pulls while b is promoted and a retired.
    let (status, token_from_a, _) = suite.token("repository:team/rotate:pull");
    assert_eq!(status, 200);
    assert_eq!(header_of(&token_from_a)["kid"], kid_a.as_str());
    let suite = Arc::new(std::sync::Mutex::new(suite));
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(std::sync::Mutex::new(Vec::<(bool, bool, String)>::new()));
    let (root, caller, registry_ref) = {
        let s = suite.lock().unwrap();
        (s.root().to_owned(), s.caller.clone(), s.registry.image_ref("team/rotate", "1"))
    };
    let switched = Arc::new(AtomicBool::new(false));
    let looper = {
        let (stop, ops, switched) = (stop.clone(), ops.clone(), switched.clone());
        std::thread::spawn(move || {
            let image = format!("oci:{}:1", root.join("image").display());
            let dest = format!("oci:{}:1", root.join("pulled-loop").display());
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let after_switch = switched.load(Ordering::SeqCst);
                let output = if n % 2 == 0 {
                    skopeo(&root)
                        .args(["copy", "--insecure-policy", "--dest-tls-verify=false", "--dest-creds"])
                        .arg(format!("alice:{caller}"))
                        .args([&image, &registry_ref])
                        .output()
                } else {
                    skopeo(&root)
                        .args(["copy", "--insecure-policy", "--src-tls-verify=false", "--src-creds"])
                        .arg(format!("alice:{caller}"))
                        .args([&registry_ref, &dest])
                        .output()
                }
                .unwrap();
                ops.lock().unwrap().push((output.status.success(), after_switch, stderr(&output)));
                n += 1;
            }
        })
    };
    let wait_for = |count: usize, after_switch: bool| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while ops.lock().unwrap().iter().filter(|(_, after, _)| *after == after_switch).count() < count {
            assert!(Instant::now() < deadline, "the load loop stalled");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for(10, false);
    {
        let mut s = suite.lock().unwrap();
        let keys = vec![s.key("b", "active"), s.retired("a")];
        s.switch_to(keys, &kid_b);
    }
    switched.store(true, Ordering::SeqCst);
    wait_for(10, true);
    stop.store(true, Ordering::SeqCst);
    looper.join().unwrap();
    let ops = ops.lock().unwrap().clone();
    let failed: Vec<&(bool, bool, String)> = ops.iter().filter(|(ok, _, _)| !ok).collect();
    let after = ops.iter().filter(|(_, after, _)| *after).count();
    eprintln!(
        "rotation under load: {} pushes and pulls ({} before the switch, {after} after), {} failed",
        ops.len(),
        ops.len() - after,
        failed.len()
    );
    assert!(failed.is_empty(), "pushes or pulls failed across the rotation: {failed:?}");
    let mut suite = Arc::try_unwrap(suite).ok().unwrap().into_inner().unwrap();
    let (_, token_from_b, _) = suite.token("repository:team/rotate:pull");
    assert_eq!(header_of(&token_from_b)["kid"], kid_b.as_str(), "new tokens carry the new kid");
    let jwks = suite.server.client().get("/.well-known/jwks.json").unwrap();
    assert_eq!(jwks.body["keys"].as_array().unwrap().len(), 2, "b active and a retired are both published");
    assert_eq!(
        suite.registry_status("team/rotate", &token_from_a),
        200,
        "a's token works while a is in the bundle"
    );

    // 2. ES256 through registry 2.8.
    let kid_e = suite.kid("e");
    let keys = vec![suite.key("e", "active"), suite.retired("b"), suite.retired("a")];
    suite.switch_to(keys, &kid_e);
    let (_, token, _) = suite.token("repository:team/es256:pull");
    assert_eq!(header_of(&token)["alg"], "ES256");
    suite.push_and_pull("team/es256", "ES256");

    // 3. SoftHSM2: the key exists only in the token.
    let kid_h = suite.kid(HSM_KEY);
    let keys = vec![suite.hsm_key(HSM_KEY), suite.retired("e"), suite.retired("a")];
    suite.switch_to(keys, &kid_h);
    let config_text = std::fs::read_to_string(suite.root().join("registry-token.yaml")).unwrap();
    let hsm_entry = &config_text[config_text.find("pkcs11").unwrap()..];
    let hsm_entry = &hsm_entry[..hsm_entry.find("status").unwrap()];
    assert!(!hsm_entry.contains("key_file") && hsm_entry.contains(HSM_KEY), "only labels: {hsm_entry}");
    assert_key_stays_in_the_token(&suite.softhsm_conf, &suite.root().join("registry-token.yaml"));
    let (status, token, _) = suite.token("repository:team/hsm:pull");
    assert_eq!(status, 200);
    assert_eq!(header_of(&token)["kid"], kid_h.as_str());
    suite.push_and_pull("team/hsm", "SoftHSM2");

    // The token taken away: 503 and no token; back: signed again, without a restart.
    let tokens = suite.root().join("hsm/tokens");
    let away = suite.root().join("hsm/tokens.away");
    std::fs::rename(&tokens, &away).unwrap();
    let (status, token, body) = suite.token("repository:team/hsm:pull");
    assert_eq!(status, 503, "{body}");
    assert!(token.is_empty());
    assert!(body.to_string().contains("HSM is unavailable"), "{body}");
    let (status, _, _) = suite.token("repository:team/hsm:pull");
    assert_eq!(status, 503, "still no token while the HSM is away");
    // A replica that cannot sign is not ready: the load balancer sends its pulls elsewhere.
    let ready = suite.server.admin().get("/readyz").unwrap();
    assert_eq!(ready.status, 503, "ready while it cannot sign: {}", ready.body);
    assert_eq!(ready.body["signing"]["ready"], false, "{}", ready.body);
    assert!(ready.body["signing"]["error"].as_str().is_some_and(|e| !e.is_empty()), "{}", ready.body);
    std::fs::rename(&away, &tokens).unwrap();
    // Ready again by its own probe signature, before any token request: it gets no traffic while
    // it is not ready, so it cannot wait for one to find out.
    let since = Instant::now();
    loop {
        let ready = suite.server.admin().get("/readyz").unwrap();
        if ready.status == 200 {
            assert_eq!(ready.body["signing"]["ready"], true, "{}", ready.body);
            break;
        }
        assert!(
            since.elapsed() < Duration::from_secs(15),
            "not ready after the HSM came back: {}",
            ready.body
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let back = suite.signing_again(&kid_h, "the HSM came back");
    eprintln!("SoftHSM2: signing again {back:?} after the token came back");
    suite.push_and_pull("team/hsm", "SoftHSM2 after recovery");

    // A failover to a token with the same labels and another key under them: 503, never a token
    // signed by a key no registry trusts; the right token back: signed again.
    let other = tempfile::tempdir().unwrap();
    let other_conf = init_softhsm(other.path());
    run_ok(
        Command::new(BIN)
            .env("SOFTHSM2_CONF", &other_conf)
            .args(["keys", "new", "--pkcs11", SOFTHSM_MODULE, "--token-label", TOKEN_LABEL])
            .args(["--key-label", HSM_KEY, "--algorithm", "RS256", "--pin-file"])
            .arg(other.path().join("hsm/pin"))
            .arg("--dir")
            .arg(other.path().join("keys")),
    );
    std::fs::rename(&tokens, &away).unwrap();
    std::fs::rename(other.path().join("hsm/tokens"), &tokens).unwrap();
    // Every answer a 503, through the module's reconnects, until one has found the other key.
    let swapped = Instant::now();
    loop {
        let (status, token, body) = suite.token("repository:team/hsm:pull");
        assert_eq!(status, 503, "a token from another key: {body}");
        assert!(token.is_empty() && body.to_string().contains("HSM is unavailable"), "{body}");
        let log = suite.server.stderr();
        if log.contains("does not verify with its public key (the one published)") {
            break;
        }
        assert!(
            swapped.elapsed() < Duration::from_secs(15),
            "the log never said why:\n{}",
            &log[log.len().saturating_sub(3000)..]
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for _ in 0..3 {
        assert_eq!(suite.token("repository:team/hsm:pull").0, 503, "and stays refused");
    }
    std::fs::rename(&tokens, other.path().join("hsm/tokens")).unwrap();
    std::fs::rename(&away, &tokens).unwrap();
    suite.signing_again(&kid_h, "the right token came back");
    suite.push_and_pull("team/hsm", "SoftHSM2 after the failover was undone");

    // The PIN changed in the token (its officer's doing) and the module reconnected: the old PIN
    // is tried once, not once a second (a real HSM locks the PIN after a few wrong ones); a
    // reload with the new PIN signs again.
    const NEW_PIN: &str = "5832-test-pin-2";
    let tool = test_support::require_program("pkcs11-tool", "install it with `apt-get install -y opensc`");
    run_ok(
        Command::new(tool)
            .env("SOFTHSM2_CONF", &suite.softhsm_conf)
            .args(["--module", SOFTHSM_MODULE, "--token-label", TOKEN_LABEL, "--login", "--pin", PIN])
            .args(["--change-pin", "--new-pin", NEW_PIN]),
    );
    std::fs::rename(&tokens, &away).unwrap();
    assert_eq!(suite.token("repository:team/hsm:pull").0, 503, "the token is away");
    std::fs::rename(&away, &tokens).unwrap();
    let wrong = "is wrong";
    let back = Instant::now();
    while !suite.server.stderr().contains(wrong) {
        assert!(
            back.elapsed() < Duration::from_secs(15),
            "the wrong PIN was never tried:\n{}",
            suite.server.stderr()
        );
        assert_eq!(suite.token("repository:team/hsm:pull").0, 503);
        std::thread::sleep(Duration::from_millis(100));
    }
    // Three seconds of requests: without the latch the module reconnects and logs in once a second.
    let tried = Instant::now();
    while tried.elapsed() < Duration::from_secs(3) {
        let (status, token, body) = suite.token("repository:team/hsm:pull");
        assert_eq!(status, 503, "{body}");
        assert!(token.is_empty());
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = suite.server.stderr();
    assert_eq!(log.matches(wrong).count(), 1, "the wrong PIN was tried more than once:\n{log}");
    assert!(log.contains("refused this PIN before; signing does not try it again"), "{log}");
    // A reload with the PIN file as it was (here a SIGHUP; with `watch: true`, any watched file
    // that changes) is refused without spending another attempt on the same wrong PIN.
    let refusals = log.matches("reload refused").count();
    suite.server.signal("HUP");
    let reloaded = Instant::now();
    while suite.server.stderr().matches("reload refused").count() == refusals {
        assert!(
            reloaded.elapsed() < Duration::from_secs(15),
            "the reload was not refused:\n{}",
            suite.server.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = suite.server.stderr();
    assert_eq!(log.matches(wrong).count(), 1, "the reload tried the refused PIN again:\n{log}");
    assert!(log.contains("nor does a reload with the same PIN"), "{log}");
    assert_eq!(suite.token("repository:team/hsm:pull").0, 503);
    let ready = suite.server.admin().get("/readyz").unwrap();
    assert_eq!(ready.status, 503, "ready with a refused PIN: {}", ready.body);
    assert!(
        ready.body["signing"]["error"].as_str().is_some_and(|e| e.contains("refused this PIN before")),
        "{}",
        ready.body
    );
    let log = suite.server.stderr();
    assert_eq!(log.matches(wrong).count(), 1, "the readiness probe tried the refused PIN:\n{log}");
    let pin_file = suite.root().join("hsm/pin");
    std::fs::write(&pin_file, format!("{NEW_PIN}\n")).unwrap();
    suite.server.signal("HUP");
    suite.signing_again(&kid_h, "a reload with the new PIN");
    assert_eq!(suite.server.admin().get("/readyz").unwrap().status, 200, "ready with the new PIN");
    // A wrong PIN written while the token is logged in cannot be checked by the token: the reload
    // is refused (applied, it would fail at the next reconnect, a wrong attempt) and the key in
    // use keeps signing.
    std::fs::write(&pin_file, "0000-wrong-pin\n").unwrap();
    suite.server.signal("HUP");
    let reloaded = Instant::now();
    while !suite.server.stderr().contains("cannot check it while this service is logged in") {
        assert!(
            reloaded.elapsed() < Duration::from_secs(15),
            "the reload was not refused:\n{}",
            suite.server.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, token, _) = suite.token("repository:team/hsm:pull");
    assert_eq!((status, header_of(&token)["kid"].as_str()), (200, Some(kid_h.as_str())));
    std::fs::write(&pin_file, format!("{NEW_PIN}\n")).unwrap();

    // ES256 from the HSM too.
    let kid_hsm_ec = suite.kid(HSM_EC_KEY);
    let keys = vec![suite.hsm_key(HSM_EC_KEY), suite.retired(HSM_KEY), suite.retired("a")];
    suite.switch_to(keys, &kid_hsm_ec);
    let (_, token, _) = suite.token("repository:team/hsm-p256:pull");
    assert_eq!(header_of(&token)["alg"], "ES256");
    suite.push_and_pull("team/hsm-p256", "SoftHSM2, P-256");

    // 4. The runbook's last step: a is removed from the set, and the registry's bundle is written
    // by `keys export` from the configuration (the same documents the server publishes). The
    // registry, restarted to reread it, refuses a's token.
    let keys = vec![suite.hsm_key(HSM_EC_KEY), suite.retired(HSM_KEY)];
    suite.switch_to(keys, &kid_hsm_ec);
    let exported = suite.root().join("exported");
    std::fs::create_dir_all(&exported).unwrap();
    run_ok(
        Command::new(BIN)
            .env("SOFTHSM2_CONF", &suite.softhsm_conf)
            .args(["keys", "export", "--config"])
            .arg(suite.root().join("registry-token.yaml"))
            .arg("--jwks")
            .arg(exported.join("jwks.json"))
            .arg("--certs")
            .arg(suite.root().join("bundle.pem")),
    );
    let served = suite.server.client().get("/.well-known/jwks.json").unwrap();
    assert_eq!(
        std::fs::read_to_string(exported.join("jwks.json")).unwrap(),
        served.text,
        "keys export --jwks"
    );
    let served = suite.server.client().get("/certs.pem").unwrap();
    assert_eq!(
        std::fs::read_to_string(suite.root().join("bundle.pem")).unwrap(),
        served.text,
        "keys export --certs"
    );
    assert_eq!(served.text.matches("BEGIN CERTIFICATE").count(), 2, "the two HSM keys' certificates");
    suite.registry.stop();
    suite.registry.start_again();
    assert_eq!(
        suite.registry_status("team/rotate", &token_from_a),
        401,
        "a retired key's token after it left the bundle"
    );
    let (_, fresh, _) = suite.token("repository:team/rotate:pull");
    assert_eq!(suite.registry_status("team/rotate", &fresh), 200, "the active key's token");
}

/// What `keys list` says of the HSM key: the token reports it sensitive and never extractable.
fn assert_key_stays_in_the_token(softhsm_conf: &Path, config: &Path) {
    let listed = run_ok(
        Command::new(BIN).env("SOFTHSM2_CONF", softhsm_conf).args(["keys", "list", "--config"]).arg(config),
    );
    let listed = String::from_utf8(listed.stdout).unwrap();
    let expected = format!(
        "pkcs11 token \"{TOKEN_LABEL}\" key \"{HSM_KEY}\" (sensitive, not extractable, never extractable)"
    );
    assert!(listed.contains(&expected), "keys list should say {expected:?}:\n{listed}");
}
