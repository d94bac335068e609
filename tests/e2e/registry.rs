//! End to end, for real: Debian's `docker-registry` (distribution 2.8) trusts registry-token's
//! certificate, and `skopeo` pushes and pulls through it with Authority tokens from the development
//! Authority. Each scenario asserts what a user sees: skopeo's exit status and message, digests.
//!
//! Both programs are required: when one is missing the tests fail and say what to install
//! (`apt-get install -y docker-registry skopeo`); they never skip. Every process is stopped by PID
//! when its test ends, passed or failed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;
use test_support::{
    Client, Config, DockerRegistry, Server, build_image, layout_digest, plans_with, run_ok, skopeo,
};

const BIN: &str = env!("CARGO_BIN_EXE_registry-token");
const SERVICE: &str = "registry.e2e";
const ISSUER: &str = "https://authority.e2e";

/// The shared plans (`team`, `readonly`, `admin`, `LIC-0002` revoked) and `elsewhere`, a plan that
/// grants nothing in `team/`.
fn plans() -> String {
    plans_with(|plans| {
        plans["plans"]["elsewhere"] =
            serde_norway::from_str(r#"[{repositories: ["other/**"], actions: [pull, push]}]"#).unwrap();
    })
}

/// One registry-token and one docker-registry that trusts it, in a temporary directory.
struct World {
    dir: tempfile::TempDir,
    token_service: Server,
    registry: DockerRegistry,
}

struct Options {
    kid_format: &'static str,
    lifetime_seconds: u64,
    denial_status: u16,
}

impl Default for Options {
    fn default() -> Self {
        Options { kid_format: "libtrust", lifetime_seconds: 300, denial_status: 403 }
    }
}

impl World {
    fn start(options: Options) -> World {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        run_ok(Command::new(BIN).args(["keygen", "--out"]).arg(root.join("keys")));
        run_ok(
            Command::new(BIN)
                .args(["dev-authority", "init", "--issuer", ISSUER, "--dir"])
                .arg(root.join("authority")),
        );
        std::fs::write(root.join("plans.yaml"), plans()).unwrap();
        let mut config = Config::installation(root, ISSUER, &[SERVICE]);
        config.signing.kid_format = Some(options.kid_format.to_owned());
        config.signing.lifetime_seconds = Some(options.lifetime_seconds);
        config.http.denial_status = Some(options.denial_status);
        config.write(&root.join("registry-token.yaml"));
        let token_service = Server::start(BIN, &root.join("registry-token.yaml"));
        let realm = format!("http://{}/token", token_service.address());
        let registry = DockerRegistry::start(root, &realm, SERVICE, &root.join("keys/signing-cert.pem"));
        World { dir, token_service, registry }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// A caller token: plan `plan`, valid, unless `extra` says otherwise (`--ttl`, `--aud`, ...).
    fn caller_token(&self, plan: &str, extra: &[&str]) -> String {
        let output = run_ok(
            Command::new(BIN)
                .args(["dev-authority", "token", "--sub", "alice", "--plan", plan, "--dir"])
                .arg(self.root().join("authority"))
                .args(extra),
        );
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    }

    fn image_ref(&self, repository: &str) -> String {
        self.registry.image_ref(repository, "1")
    }

    /// `skopeo copy oci:IMAGE:1 docker://REGISTRY/REPO:1 --dest-creds alice:TOKEN`.
    fn push(&self, image: &Path, repository: &str, token: &str) -> Output {
        let digest_file = self.root().join("pushed.digest");
        skopeo(self.root())
            .args(["copy", "--insecure-policy", "--dest-tls-verify=false", "--digestfile"])
            .arg(&digest_file)
            .arg("--dest-creds")
            .arg(format!("alice:{token}"))
            .arg(format!("oci:{}:1", image.display()))
            .arg(self.image_ref(repository))
            .output()
            .unwrap()
    }

    /// `skopeo copy docker://REGISTRY/REPO:1 oci:DEST:1 --src-creds alice:TOKEN`.
    fn pull(&self, repository: &str, token: &str, dest: &Path) -> Output {
        skopeo(self.root())
            .args(["copy", "--insecure-policy", "--src-tls-verify=false", "--src-creds"])
            .arg(format!("alice:{token}"))
            .arg(self.image_ref(repository))
            .arg(format!("oci:{}:1", dest.display()))
            .output()
            .unwrap()
    }

    fn registry_client(&self) -> Client {
        self.registry.client()
    }

    /// A registry token from the token service for `scope`, for a caller of `plan`.
    fn registry_token(&self, plan: &str, scope: &str) -> String {
        let caller = self.caller_token(plan, &[]);
        let reply = self
            .token_service
            .client()
            .get_bearer(&format!("/token?service={SERVICE}&scope={scope}"), &caller);
        reply.unwrap().body["token"].as_str().unwrap().to_owned()
    }

    fn registry_log(&self) -> String {
        self.registry.log()
    }

    fn token_log(&self) -> String {
        self.token_service.stderr()
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn image(world: &World) -> (PathBuf, String) {
    let dir = world.root().join("image");
    let digest = build_image(&dir);
    (dir, digest)
}

/// Pushes the test image as an admin, for scenarios that pull.
fn seed(world: &World, repository: &str) -> String {
    let (image, digest) = image(world);
    let output = world.push(&image, repository, &world.caller_token("admin", &[]));
    assert!(
        output.status.success(),
        "seeding {repository} failed: {}\n{}",
        stderr(&output),
        world.token_log()
    );
    digest
}

#[test]
fn push_then_pull_round_trips_the_same_manifest() {
    let world = World::start(Options::default());
    let (image, built) = image(&world);
    let token = world.caller_token("team", &[]);

    let pushed = world.push(&image, "team/app", &token);
    assert!(pushed.status.success(), "push failed: {}\n{}", stderr(&pushed), world.token_log());
    let pushed_digest = std::fs::read_to_string(world.root().join("pushed.digest")).unwrap();
    assert_eq!(pushed_digest.trim(), built);

    let dest = world.root().join("pulled");
    let pulled = world.pull("team/app", &token, &dest);
    assert!(pulled.status.success(), "pull failed: {}", stderr(&pulled));
    assert_eq!(layout_digest(&dest), pushed_digest.trim(), "the manifest pulled is the manifest pushed");
}

#[test]
fn a_pull_only_plan_cannot_push_but_can_pull() {
    let world = World::start(Options::default());
    let digest = seed(&world, "team/app");
    let token = world.caller_token("readonly", &[]);

    let (image, _) = image(&world);
    let pushed = world.push(&image, "team/app", &token);
    assert!(!pushed.status.success(), "a pull-only plan pushed");
    let message = stderr(&pushed);
    assert!(
        message.contains("authentication required")
            || message.contains("denied")
            || message.contains("unauthorized"),
        "{message}"
    );
    eprintln!("pull-only push refused; skopeo said: {message}");

    let dest = world.root().join("pulled");
    let pulled = world.pull("team/app", &token, &dest);
    assert!(pulled.status.success(), "pull failed: {}", stderr(&pulled));
    assert_eq!(layout_digest(&dest), digest);
}

#[test]
fn a_plan_without_the_repository_cannot_pull() {
    let world = World::start(Options::default());
    seed(&world, "team/app");
    let pulled = world.pull("team/app", &world.caller_token("elsewhere", &[]), &world.root().join("pulled"));
    assert!(!pulled.status.success(), "a plan without team/app pulled it");
    let message = stderr(&pulled);
    assert!(
        message.contains("authentication required")
            || message.contains("denied")
            || message.contains("unauthorized"),
        "{message}"
    );
    eprintln!(
        "no-grant pull refused; skopeo said: {message}\nregistry logged: {}",
        last_refusal(&world.registry_log())
    );
}

/// containers/image (skopeo 1.9) prints a token endpoint's explanation only on a 401; on a 403 it
/// says "invalid status code from registry 403 (Forbidden)". With `http.denial_status: 401` the
/// user reads why; the default 403 refuses just as firmly.
#[test]
fn a_revoked_licence_fails_with_the_token_service_explanation() {
    let world = World::start(Options { denial_status: 401, ..Options::default() });
    seed(&world, "team/app");
    let token = world.caller_token("team", &["--license", "LIC-0002"]);
    let pulled = world.pull("team/app", &token, &world.root().join("pulled"));
    assert!(!pulled.status.success());
    let message = stderr(&pulled);
    assert!(message.contains("licence LIC-0002 has been revoked"), "{message}");
    eprintln!("revoked licence (denial_status 401); skopeo said: {message}");

    let world = World::start(Options::default());
    seed(&world, "team/app");
    let token = world.caller_token("team", &["--license", "LIC-0002"]);
    let pulled = world.pull("team/app", &token, &world.root().join("pulled"));
    assert!(!pulled.status.success(), "a revoked licence pulled");
    let message = stderr(&pulled);
    assert!(message.contains("403 (Forbidden)"), "{message}");
    eprintln!("revoked licence (denial_status 403); skopeo said: {message}");
}

#[test]
fn bad_authority_tokens_are_authentication_failures() {
    let world = World::start(Options::default());
    seed(&world, "team/app");
    for (extra, why) in [
        (vec!["--ttl", "-120"], "the token has expired"),
        (vec!["--aud", "someone-else"], "audience"),
        (vec!["--scope", "openid profile"], "lacks the scope registry.token.issue"),
    ] {
        let token = world.caller_token("team", &extra);
        let pulled = world.pull("team/app", &token, &world.root().join("pulled"));
        assert!(!pulled.status.success(), "{why}");
        let message = stderr(&pulled);
        assert!(
            message.contains("invalid username/password"),
            "skopeo reports an authentication failure: {message}"
        );
        assert!(message.contains(why), "{why}: {message}");
        eprintln!("{why}: skopeo said: {message}");
    }
}

#[test]
fn a_registry_token_past_its_lifetime_is_refused_by_the_registry() {
    let world = World::start(Options { lifetime_seconds: 5, ..Options::default() });
    seed(&world, "team/app");
    let registry_token = world.registry_token("team", "repository:team/app:pull");

    let inspect = |token: &str| {
        skopeo(world.root())
            .args(["inspect", "--tls-verify=false", "--raw", "--registry-token", token])
            .arg(world.image_ref("team/app"))
            .output()
            .unwrap()
    };
    let fresh = inspect(&registry_token);
    assert!(fresh.status.success(), "a fresh token works: {}", stderr(&fresh));
    // exp is 5 s away and the registry allows 60 s of leeway.
    std::thread::sleep(Duration::from_secs(5 + 60 + 2));
    let stale = inspect(&registry_token);
    assert!(!stale.status.success(), "the registry accepted an expired token");
    let message = stderr(&stale);
    assert!(message.contains("unauthorized") || message.contains("authentication required"), "{message}");
    eprintln!(
        "expired registry token; skopeo said: {message}\nregistry logged: {}",
        last_refusal(&world.registry_log())
    );
}

#[test]
fn an_identity_token_makes_skopeo_use_the_oauth2_post() {
    let world = World::start(Options::default());
    let digest = seed(&world, "team/app");
    let authfile = world.root().join("auth.json");
    // containers/image keeps an identity token only beside an `auth` of the form `user:`.
    let entry = json!({ "auths": { world.registry.address().to_owned(): {
        "auth": data_encoding::BASE64.encode(b"alice:"),
        "identitytoken": world.caller_token("team", &[]),
    } } });
    std::fs::write(&authfile, entry.to_string()).unwrap();

    let dest = world.root().join("pulled");
    let pulled = skopeo(world.root())
        .args(["copy", "--insecure-policy", "--src-tls-verify=false", "--src-authfile"])
        .arg(&authfile)
        .arg(world.image_ref("team/app"))
        .arg(format!("oci:{}:1", dest.display()))
        .output()
        .unwrap();
    assert!(pulled.status.success(), "pull with an identity token failed: {}", stderr(&pulled));
    assert_eq!(layout_digest(&dest), digest);
    let log = world.token_log();
    assert!(
        log.lines()
            .any(|l| l.contains("method=POST") && l.contains("path=\"/token\"") && l.contains("status=200")),
        "skopeo should have used POST /token:\n{log}"
    );
}

#[test]
fn thumbprint_kids_with_a_certificate_work_on_2_8_through_x5c() {
    let world = World::start(Options { kid_format: "thumbprint", ..Options::default() });
    let (image, built) = image(&world);
    let token = world.caller_token("team", &[]);
    let pushed = world.push(&image, "team/app", &token);
    assert!(pushed.status.success(), "push failed: {}\n{}", stderr(&pushed), world.registry_log());
    let dest = world.root().join("pulled");
    assert!(world.pull("team/app", &token, &dest).status.success());
    assert_eq!(layout_digest(&dest), built);

    // What the registry accepted: tokens naming the key by its RFC 7638 thumbprint (not the
    // libtrust form 2.8 would also take) and carrying the certificate in x5c.
    let keys = world.root().join("keys");
    let key = registry_token::mint::SigningKey::from_file(
        &keys.join("signing-key.pem"),
        registry_token::mint::SigningAlgorithm::RS256,
    )
    .unwrap();
    let header =
        jsonwebtoken::decode_header(world.registry_token("team", "repository:team/app:pull")).unwrap();
    assert_eq!(header.kid.as_deref(), Some(key.thumbprint_kid().as_str()));
    let certificate = pem::parse(std::fs::read(keys.join("signing-cert.pem")).unwrap()).unwrap();
    let x5c = header.x5c.unwrap_or_default();
    assert_eq!(x5c, [data_encoding::BASE64.encode(certificate.contents())]);
}

#[test]
fn the_catalog_needs_registry_catalog_star() {
    let world = World::start(Options::default());
    seed(&world, "team/app");
    let catalog = |plan: &str| {
        let token = world.registry_token(plan, "registry:catalog:*");
        world.registry_client().get_bearer("/v2/_catalog", &token).unwrap()
    };
    let admin = catalog("admin");
    assert_eq!(admin.status, 200, "{admin}");
    assert_eq!(admin.body["repositories"], json!(["team/app"]));

    let team = catalog("team");
    assert_eq!(team.status, 401, "{team}");
    // Anywhere in the response: the WWW-Authenticate header or the body.
    let team = team.to_string();
    assert!(team.contains("insufficient_scope") || team.contains("UNAUTHORIZED"), "{team}");
    eprintln!("catalog refused for team; registry logged: {}", last_refusal(&world.registry_log()));
}

/// The last line of the registry's log that records a refusal, for the scenario's report.
fn last_refusal(log: &str) -> String {
    log.lines()
        .rev()
        .find(|l| {
            l.contains("error authorizing")
                || l.contains("authentication")
                || l.contains("unauthorized")
                || l.contains("insufficient")
        })
        .unwrap_or("(no refusal logged)")
        .to_owned()
}
