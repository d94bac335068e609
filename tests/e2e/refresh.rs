//! Refresh tokens with the real clients: log in once with an Authority token that expires within
//! the minute, and keep pulling and pushing through Debian's `docker-registry` (distribution 2.8)
//! long after it has expired — with skopeo (an auth file holding only the identity token), the
//! Docker engine (`docker login`, which stores our refresh token as its identity token) and
//! containerd's `ctr` (the refresh token as its password) — until `ledger revoke subject …`
//! stops each of them within a second.
//!
//! Every real part is required: missing, the test fails and says what to install. Each process is
//! stopped by PID when its test ends.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use test_support::{
    Client, Config, DockerEngine, DockerRegistry, PLANS, Server, build_image, layout_digest, rootfs_tar,
    run_ok, skopeo,
};

const BIN: &str = env!("CARGO_BIN_EXE_registry-token");
const SERVICE: &str = "registry.e2e";
const ISSUER: &str = "https://authority.e2e";
/// How long the Authority token of a login lives: long enough to log in and push once.
const LOGIN_TTL: &str = "30";

/// One registry-token (with a ledger, refresh tokens on, no leeway on the Authority token's
/// expiry) and one docker-registry trusting it, in a temporary directory.
struct World {
    dir: tempfile::TempDir,
    token_service: Server,
    registry: DockerRegistry,
}

impl World {
    fn start() -> World {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        run_ok(Command::new(BIN).args(["keygen", "--out"]).arg(root.join("keys")));
        run_ok(
            Command::new(BIN)
                .args(["dev-authority", "init", "--issuer", ISSUER, "--dir"])
                .arg(root.join("authority")),
        );
        std::fs::write(root.join("plans.yaml"), PLANS).unwrap();
        let mut config = Config::installation(root, ISSUER, &[SERVICE]);
        // Expired means expired: the walk-through waits for it.
        config.authority.leeway_seconds = Some(0);
        config.write(&root.join("registry-token.yaml"));
        let token_service = Server::start(BIN, &root.join("registry-token.yaml"));
        let realm = format!("http://{}/token", token_service.address());
        let registry = DockerRegistry::start(root, &realm, SERVICE, &root.join("keys/signing-cert.pem"));
        World { dir, token_service, registry }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// An Authority token for alice (plan team, tenant acme) that expires in `LOGIN_TTL` seconds.
    fn login_token(&self) -> String {
        let output = run_ok(
            Command::new(BIN)
                .args(["dev-authority", "token", "--sub", "alice", "--plan", "team", "--tenant", "acme"])
                .args(["--ttl", LOGIN_TTL, "--dir"])
                .arg(self.root().join("authority")),
        );
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    }

    fn client(&self) -> Client {
        self.token_service.client()
    }

    /// A refresh token for `client_id`, as a login asks for one.
    fn refresh_token_for(&self, caller: &str, client_id: &str) -> String {
        let uri = format!("/token?service={SERVICE}&offline_token=true&client_id={client_id}&account=alice");
        let reply = self.client().get_basic(&uri, "alice", caller).unwrap();
        assert_eq!(reply.status, 200, "{reply}");
        let token = reply.body["refresh_token"].as_str().unwrap().to_owned();
        assert!(token.starts_with("rtr_"), "{reply}");
        token
    }

    /// Waits until the token service refuses `caller` as expired: from then on only the refresh
    /// tokens can be working.
    fn wait_until_expired(&self, caller: &str) {
        let since = Instant::now();
        loop {
            let reply = self.client().get_bearer(&format!("/token?service={SERVICE}"), caller).unwrap();
            if reply.status == 401 {
                assert!(reply.message().contains("the token has expired"), "{reply}");
                eprintln!("the Authority token has expired ({:?} after waiting began)", since.elapsed());
                return;
            }
            assert!(since.elapsed() < Duration::from_secs(90), "the Authority token never expired: {reply}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// `registry-token ledger revoke subject alice`, then waits until the token service refuses
    /// `refresh_token` (presented by `client_id`) and asserts that took at most a second.
    fn revoke_alice(&self, refresh_token: &str, client_id: &str) {
        let output = run_ok(
            Command::new(BIN)
                .args(["ledger", "revoke", "subject", "alice", "--reason", "left the company", "--config"])
                .arg(self.root().join("registry-token.yaml")),
        );
        let revoked = Instant::now();
        assert!(!output.stdout.is_empty(), "the revocation's id is printed");
        loop {
            let reply = self
                .client()
                .post_form(
                    "/token",
                    &[
                        ("grant_type", "refresh_token"),
                        ("refresh_token", refresh_token),
                        ("service", SERVICE),
                        ("client_id", client_id),
                    ],
                )
                .unwrap();
            if reply.status == 401 {
                assert!(
                    reply.message().contains(
                        "the refresh token was revoked: subject alice has been revoked: left the company"
                    ),
                    "{reply}"
                );
                eprintln!("revocation in force {:?} after `ledger revoke`", revoked.elapsed());
                assert!(revoked.elapsed() <= Duration::from_secs(1), "took {:?}", revoked.elapsed());
                return;
            }
            assert_eq!(reply.status, 200, "{reply}");
            assert!(revoked.elapsed() <= Duration::from_secs(1), "still refreshed after 1 s: {reply}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn reference(&self, repository: &str) -> String {
        format!("{}/{repository}:1", self.registry.address())
    }
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[test]
fn skopeo_pushes_and_pulls_on_the_identity_token_alone_until_revoked() {
    let world = World::start();
    let caller = world.login_token();
    // The identity token `docker login` stores (client_id docker), which containers/image reads
    // from the Docker configuration and presents as its own client.
    let identity_token = world.refresh_token_for(&caller, "docker");
    world.wait_until_expired(&caller);

    // containers/image keeps an identity token only beside an `auth` of the form `user:`.
    let authfile = world.root().join("auth.json");
    let entry = json!({ "auths": { world.registry.address().to_owned(): {
        "auth": data_encoding::BASE64.encode(b"alice:"),
        "identitytoken": identity_token,
    } } });
    std::fs::write(&authfile, entry.to_string()).unwrap();
    let image = world.root().join("image");
    let digest = build_image(&image);
    let push = skopeo(world.root())
        .args(["copy", "--insecure-policy", "--dest-tls-verify=false", "--dest-authfile"])
        .arg(&authfile)
        .arg(format!("oci:{}:1", image.display()))
        .arg(format!("docker://{}", world.reference("team/app")))
        .output()
        .unwrap();
    assert!(
        push.status.success(),
        "push on the identity token failed: {}\n{}",
        text(&push),
        world.token_service.stderr()
    );
    let pull = |dest: &PathBuf| {
        skopeo(world.root())
            .args(["copy", "--insecure-policy", "--src-tls-verify=false", "--src-authfile"])
            .arg(&authfile)
            .arg(format!("docker://{}", world.reference("team/app")))
            .arg(format!("oci:{}:1", dest.display()))
            .output()
            .unwrap()
    };
    let dest = world.root().join("pulled");
    let pulled = pull(&dest);
    assert!(pulled.status.success(), "pull on the identity token failed: {}", text(&pulled));
    assert_eq!(layout_digest(&dest), digest);

    world.revoke_alice(&identity_token, "containers/image");
    let refused = pull(&world.root().join("refused"));
    assert!(!refused.status.success(), "a revoked subject pulled");
    let message = text(&refused);
    assert!(message.contains("subject alice has been revoked: left the company"), "{message}");
    eprintln!("skopeo after the revocation: {}", message.trim());
}

#[test]
fn the_docker_engine_and_ctr_keep_pulling_after_the_login_token_expired_until_revoked() {
    let world = World::start();
    let engine = DockerEngine::start(&world.root().join("docker"));
    let registry = world.registry.address().to_owned();
    let reference = world.reference("team/app");
    let caller = world.login_token();

    // docker login: the engine asks for an offline token and keeps the refresh token it gets.
    let mut login = engine.docker();
    login.args(["login", "--username", "alice", "--password-stdin", &registry]).stdin(Stdio::piped());
    let mut child = login.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), caller.as_bytes()).unwrap();
    let login = child.wait_with_output().unwrap();
    assert!(
        login.status.success(),
        "docker login failed: {}\n{}",
        text(&login),
        world.token_service.stderr()
    );
    let stored =
        engine.client_config()["auths"][&registry]["identitytoken"].as_str().unwrap_or_default().to_owned();
    assert!(stored.starts_with("rtr_"), "docker login stored {:?}", engine.client_config());

    let rootfs = world.root().join("rootfs.tar");
    rootfs_tar(&rootfs);
    let imported = engine.run(&["import", rootfs.to_str().unwrap(), &reference]);
    assert!(imported.status.success(), "{}", text(&imported));
    let pushed = engine.run(&["push", &reference]);
    assert!(pushed.status.success(), "docker push failed: {}\n{}", text(&pushed), engine.log());

    // containerd's ctr sends the password grant as `containerd-client`, with the refresh token
    // `docker login` stored (as nerdctl and the engine's containerd image store do).
    let ctr_pull = || {
        engine
            .ctr("registry-token-e2e")
            .args(["images", "pull", "--plain-http", "--user"])
            .arg(format!("alice:{stored}"))
            .arg(&reference)
            .output()
            .unwrap()
    };

    world.wait_until_expired(&caller);
    assert!(engine.run(&["rmi", &reference]).status.success());
    // Each client's own requests: what the service logged while it ran.
    let posted = |log: &str| {
        log.lines()
            .any(|l| l.contains("method=POST") && l.contains("sub=\"alice\"") && l.contains("status=200"))
    };
    let before = world.token_service.stderr().len();
    let pulled = engine.run(&["pull", &reference]);
    assert!(pulled.status.success(), "docker pull on the stored identity token failed: {}", text(&pulled));
    let log = world.token_service.stderr();
    assert!(posted(&log[before..]), "the engine uses POST /token:\n{}", &log[before..]);
    let before = log.len();
    let pulled = ctr_pull();
    assert!(pulled.status.success(), "ctr pull on the refresh token failed: {}", text(&pulled));
    let log = world.token_service.stderr();
    assert!(posted(&log[before..]), "ctr uses POST /token:\n{}", &log[before..]);

    world.revoke_alice(&stored, "docker");
    assert!(engine.run(&["rmi", &reference]).status.success());
    let refused = engine.run(&["pull", &reference]);
    assert!(!refused.status.success(), "a revoked subject pulled with the Docker engine");
    let message = text(&refused);
    assert!(message.contains("subject alice has been revoked: left the company"), "{message}");
    eprintln!("docker pull after the revocation: {}", message.trim());
    let refused = ctr_pull();
    assert!(!refused.status.success(), "a revoked subject pulled with ctr");
    // ctr says only that the token endpoint answered 401.
    let message = text(&refused);
    assert!(message.contains("failed to fetch oauth token") && message.contains("401"), "{message}");
    eprintln!("ctr pull after the revocation: {}", message.trim());
}
