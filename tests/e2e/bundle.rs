//! Policy bundles in the real registry: Debian's `docker-registry` (distribution 2.8), whose token
//! realm is one registry-token, holds a signed bundle that `bundle push` uploaded as an OCI
//! artifact (authenticating like any client: an Authority token as the password); a second
//! registry-token serves it from `oci://`, picks up a new revision by polling, and refuses a
//! rollback pushed to the same tag. skopeo, a real client, reads the artifact's manifest.
//!
//! docker-registry and skopeo are required: the test fails and says what to install when one is
//! missing; it never skips. Every process is stopped by PID when the test ends.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use test_support::{Client, Config, DockerRegistry, PLANS, Server, plans_with, run_ok, skopeo};

const BIN: &str = env!("CARGO_BIN_EXE_registry-token");
const SERVICE: &str = "registry.e2e";
const ISSUER: &str = "https://authority.e2e";

fn registry_token(args: &[&str]) -> String {
    let output = run_ok(Command::new(BIN).args(args));
    String::from_utf8(output.stdout).unwrap()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// An Authority token for `sub` of `plan`, written to a password file (mode 0600).
fn password_file(root: &Path, sub: &str, plan: &str) -> PathBuf {
    let authority = root.join("authority");
    let token =
        registry_token(&["dev-authority", "token", "--dir", path(&authority), "--sub", sub, "--plan", plan]);
    let file = root.join(format!("{sub}.password"));
    std::fs::write(&file, token.trim()).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    file
}

/// `bundle build` of the built-in policy with `plans`, signed with `key`.
fn bundle(root: &Path, name: &str, plans: &str, revision: u64, key: &Path) -> PathBuf {
    let settings = root.join(format!("{name}.yaml"));
    std::fs::write(&settings, plans).unwrap();
    let out = root.join(format!("{name}.tar.gz"));
    let revision = revision.to_string();
    registry_token(&[
        "bundle",
        "build",
        "--policy",
        "builtin:plan-catalogue",
        "--settings",
        path(&settings),
        "--revision",
        &revision,
        "--created-at",
        "2026-12-01T00:00:00Z",
        "--out",
        path(&out),
    ]);
    registry_token(&["bundle", "sign", "--key", path(key), path(&out)]);
    out
}

fn push(bundle: &Path, reference: &str, password: &Path) -> std::process::Output {
    Command::new(BIN)
        .args([
            "bundle",
            "push",
            "--username",
            "publisher",
            "--password-file",
            path(password),
            path(bundle),
            reference,
        ])
        .output()
        .unwrap()
}

fn wait_for(what: &str, client: &Client, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let status = client.get("/readyz").unwrap().body;
        if check(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "{what} within 40 s; /readyz: {status}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What `readonly` gets on `team/app` from the serving instance.
fn readonly_grant(client: &Client, token: &str) -> Value {
    let reply = client
        .get_basic(&format!("/token?service={SERVICE}&scope=repository:team/app:pull,push"), "bob", token)
        .unwrap();
    assert_eq!(reply.status, 200, "{reply}");
    let claims = reply.body["token"].as_str().unwrap().split('.').nth(1).unwrap().to_owned();
    let claims: Value =
        serde_json::from_slice(&data_encoding::BASE64URL_NOPAD.decode(claims.as_bytes()).unwrap()).unwrap();
    claims["access"][0]["actions"].clone()
}

#[test]
fn a_bundle_pushed_to_the_real_registry_is_served_from_oci_and_updated_by_polling() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();

    // The registry and its token realm: registry-token with the shared plans (team may push to
    // team/*, readonly may pull there).
    registry_token(&["keygen", "--out", path(&root.join("keys"))]);
    registry_token(&["dev-authority", "init", "--issuer", ISSUER, "--dir", path(&root.join("authority"))]);
    std::fs::write(root.join("plans.yaml"), PLANS).unwrap();
    Config::installation(root, ISSUER, &[SERVICE]).write(&root.join("realm.yaml"));
    let realm = Server::start(BIN, &root.join("realm.yaml"));
    let registry = DockerRegistry::start(
        root,
        &format!("http://{}/token", realm.address()),
        SERVICE,
        &root.join("keys/signing-cert.pem"),
    );
    let reference = format!("oci://{}/team/policy:live", registry.address());

    // Push revision 1 as a team member; a readonly caller may not push.
    let signer = root.join("bundle-signer");
    registry_token(&["keygen", "--out", path(&signer)]);
    let key = signer.join("signing-key.pem");
    let rev1 = bundle(root, "rev1", PLANS, 1, &key);
    let publisher = password_file(root, "publisher", "team");
    let puller = password_file(root, "puller", "readonly");
    let refused = push(&rev1, &reference, &puller);
    let message = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(!refused.status.success(), "a readonly caller pushed");
    // Its token grants pull only: the registry refuses the upload.
    assert!(message.contains("cannot push") && message.contains("code: 401"), "{message}");
    println!("readonly push refused: {}", message.trim());
    let pushed = push(&rev1, &reference, &publisher);
    let stdout = String::from_utf8_lossy(&pushed.stdout);
    assert!(pushed.status.success(), "{stdout}{}", String::from_utf8_lossy(&pushed.stderr));
    assert!(stdout.starts_with(&format!("pushed {reference}@sha256:")), "{stdout}");
    println!("{}", stdout.trim());

    // skopeo sees an OCI artifact of the bundle's media types.
    let token = std::fs::read_to_string(&puller).unwrap();
    let inspected = run_ok(
        skopeo(root)
            .args(["inspect", "--raw", "--tls-verify=false", "--creds"])
            .arg(format!("puller:{token}"))
            .arg(format!("docker://{}/team/policy:live", registry.address())),
    );
    let manifest: Value = serde_json::from_slice(&inspected.stdout).unwrap();
    assert_eq!(
        manifest["layers"][0]["mediaType"],
        "application/vnd.stellaops.registry-token.bundle.v1.tar+gzip"
    );
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.stellaops.registry-token.bundle.manifest.v1+json"
    );
    assert_eq!(manifest["annotations"]["org.opencontainers.image.version"], "1");

    // The serving instance: the same Authority, its own key, the bundle from the registry, pulled
    // with a readonly caller's token, polled every second.
    let serving = root.join("serving");
    registry_token(&["keygen", "--out", path(&serving.join("keys"))]);
    let mut config = Config::installation(&serving, ISSUER, &[SERVICE]);
    config.authority.jwks_file = Some(root.join("authority/jwks.json"));
    config.policy.settings_file = None;
    config
        .set("policy.bundle", reference.as_str())
        .set("policy.bundle_keys", vec![path(&signer.join("signing-cert.pem")).to_owned()])
        .set("policy.bundle_poll_seconds", 1)
        .set("policy.bundle_username", "puller")
        .set("policy.bundle_password_file", path(&puller));
    config.write(&serving.join("serving.yaml"));
    let server = Server::start(BIN, &serving.join("serving.yaml"));
    let client = server.client();
    let status = client.get("/readyz").unwrap().body;
    assert_eq!(status["bundle"]["revision"], 1, "{status}");
    assert_eq!(status["bundle"]["source"], reference.as_str());
    let bob = registry_token(&[
        "dev-authority",
        "token",
        "--dir",
        path(&root.join("authority")),
        "--sub",
        "bob",
        "--plan",
        "readonly",
    ]);
    let bob = bob.trim();
    assert_eq!(readonly_grant(&client, bob), serde_json::json!(["pull"]));

    // Revision 2 (readonly may push) pushed to the same tag: picked up by polling.
    let readonly_pushes = plans_with(|p| {
        p["plans"]["readonly"][0]["actions"] = serde_norway::from_str("[pull, push]").unwrap()
    });
    let rev2 = bundle(root, "rev2", &readonly_pushes, 2, &key);
    assert!(push(&rev2, &reference, &publisher).status.success());
    let status = wait_for("revision 2 pulled from the registry", &client, |s| s["bundle"]["revision"] == 2);
    println!("serving {} revision 2, sha256 {}", reference, status["bundle"]["sha256"]);
    assert_eq!(readonly_grant(&client, bob), serde_json::json!(["pull", "push"]));

    // Revision 1 pushed again to the tag: a rollback, refused; revision 2 keeps deciding.
    assert!(push(&rev1, &reference, &publisher).status.success());
    let status =
        wait_for("the rollback refused", &client, |s| s["bundle"]["last_refusal"]["reason"] == "rollback");
    assert_eq!(status["bundle"]["revision"], 2, "{status}");
    assert!(server.stderr().contains("rollback refused: revision 1 is lower than the live revision 2"));
    assert_eq!(readonly_grant(&client, bob), serde_json::json!(["pull", "push"]));
    let metrics = server.admin().get("/metrics").unwrap().text;
    assert!(metrics.contains("registry_token_bundle_refusals_total{reason=\"rollback\"}"), "{metrics}");
    drop(registry);
}
