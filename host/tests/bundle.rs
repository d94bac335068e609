//! Policy bundles as operators use them: `bundle build|sign|verify|inspect|test` through the
//! binary (deterministic bytes; every refusal with its message, hostile archives refused before
//! anything is written), a server serving a bundle from a file and from an HTTPS URL on loopback
//! (a CA made here, polled, rollbacks refused and shown, after a restart too until the operator
//! forgets the recorded revision), the offline kit deciding exactly as the
//! online instance its bundle came from, and signed ledger exports.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use test_support::{Client, Server, plans_with};

const BIN: &str = env!("CARGO_BIN_EXE_registry-token");
const CREATED_AT: &str = "2026-12-01T00:00:00Z";

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let output = run(args);
    assert!(output.status.success(), "{args:?} failed:\n{}{}", text(&output.stdout), text(&output.stderr));
    text(&output.stdout)
}

/// The command's error message (it must fail).
fn refused(args: &[&str]) -> String {
    let output = run(args);
    assert!(!output.status.success(), "{args:?} succeeded:\n{}", text(&output.stdout));
    text(&output.stderr)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A key pair to sign bundles with (`keygen`): `DIR/signing-key.pem`, `DIR/signing-cert.pem`.
fn signer(dir: &Path, algorithm: &str) -> (PathBuf, PathBuf) {
    ok(&["keygen", "--algorithm", algorithm, "--out", path(dir)]);
    (dir.join("signing-key.pem"), dir.join("signing-cert.pem"))
}

/// `bundle build` of the built-in policy with `plans` (YAML) as settings; returns the digest it
/// printed.
fn build(dir: &Path, out: &Path, plans: &str, revision: u64, extra: &[&str]) -> String {
    let settings = dir.join(format!("settings-{revision}-{}.yaml", digest_of(plans.as_bytes())));
    std::fs::write(&settings, plans).unwrap();
    let revision = revision.to_string();
    let mut args = vec![
        "bundle",
        "build",
        "--policy",
        "builtin:plan-catalogue",
        "--settings",
        path(&settings),
        "--revision",
        &revision,
        "--created-at",
        CREATED_AT,
        "--out",
        path(out),
    ];
    args.extend_from_slice(extra);
    let stdout = ok(&args);
    let first = stdout.lines().next().unwrap();
    let (digest, file) = first.split_once("  ").unwrap();
    assert_eq!(file, path(out));
    assert_eq!(digest, digest_of(&std::fs::read(out).unwrap()), "the printed digest is the file's");
    digest.to_owned()
}

fn digest_of(bytes: &[u8]) -> String {
    use sha2::Digest;
    data_encoding::HEXLOWER.encode(&sha2::Sha256::digest(bytes))
}

fn sign(bundle: &Path, key: &Path) {
    ok(&["bundle", "sign", "--key", path(key), path(bundle)]);
}

/// The files of a bundle, unpacked in memory (the test's own reader).
fn files_of(bundle: &Path) -> BTreeMap<String, Vec<u8>> {
    let bytes = std::fs::read(bundle).unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes.as_slice()));
    let mut files = BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_str().unwrap().to_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        files.insert(name, data);
    }
    files
}

/// A tar entry written exactly as given: any name (`../x`, `/etc/passwd`), any type, any declared
/// size, whatever data follows.
struct Raw<'a> {
    name: &'a str,
    kind: tar::EntryType,
    declared: u64,
    data: &'a [u8],
}

fn raw_tar(entries: &[Raw<'_>]) -> Vec<u8> {
    let mut tar = Vec::new();
    for entry in entries {
        let mut header = tar::Header::new_ustar();
        let name = &mut header.as_old_mut().name;
        name[..entry.name.len()].copy_from_slice(entry.name.as_bytes());
        header.set_entry_type(entry.kind);
        header.set_size(entry.declared);
        header.set_mode(0o644);
        if entry.kind == tar::EntryType::Symlink {
            header.set_link_name("settings.json").unwrap();
        }
        header.set_cksum();
        tar.extend_from_slice(header.as_bytes());
        tar.extend_from_slice(entry.data);
        tar.resize(tar.len().div_ceil(512) * 512, 0);
    }
    tar.extend_from_slice(&[0; 1024]);
    tar
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gzip.write_all(bytes).unwrap();
    gzip.finish().unwrap()
}

/// Files packed as a bundle the way `bundle build` does not check: for tampered bundles.
fn pack(files: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
    let entries: Vec<Raw<'_>> = files
        .iter()
        .map(|(name, data)| Raw { name, kind: tar::EntryType::Regular, declared: data.len() as u64, data })
        .collect();
    gzip(&raw_tar(&entries))
}

fn listing(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| (p.file_name().unwrap().to_str().unwrap().to_owned(), std::fs::read(&p).unwrap()))
        .collect();
    files.sort();
    files
}

#[test]
fn two_builds_from_the_same_inputs_are_identical_and_a_changed_setting_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let cases = root.join("cases.yaml");
    std::fs::write(
        &cases,
        "cases:\n  - {name: team pushes, claims: {sub: a, \"stellaops:plan\": team}, \
         scope: \"repository:team/app:pull,push\", grant: \"repository:team/app:pull,push\"}\n  \
         - {name: LIC-0002 is refused, claims: {sub: a, \"stellaops:plan\": team, \"stellaops:license\": LIC-0002}, \
         scope: \"repository:team/app:pull\", deny: licence-revoked}\n",
    )
    .unwrap();
    let jwks = root.join("jwks.json");
    registry_token::dev_authority::init(&root.join("authority"), ISSUER).unwrap();
    std::fs::copy(root.join("authority/jwks.json"), &jwks).unwrap();
    let extra = ["--cases", path(&cases), "--authority-jwks", path(&jwks)];
    let first = build(root, &root.join("first.tar.gz"), PLANS, 1, &extra);
    let second = build(root, &root.join("second.tar.gz"), PLANS, 1, &extra);
    println!("bundle digest, two independent builds: {first} and {second}");
    assert_eq!(first, second);
    assert_eq!(
        std::fs::read(root.join("first.tar.gz")).unwrap(),
        std::fs::read(root.join("second.tar.gz")).unwrap()
    );

    // One setting changed (a plan's action): another digest.
    let changed_plans = PLANS.replacen("actions: [pull]", "actions: [pull, push]", 1);
    assert_ne!(changed_plans, PLANS);
    let changed = build(root, &root.join("changed.tar.gz"), &changed_plans, 1, &extra);
    assert_ne!(changed, first);
    // The revision is part of it too.
    assert_ne!(build(root, &root.join("rev2.tar.gz"), PLANS, 2, &extra), first);

    // A component is carried as policy.wasm, and two builds of it are identical as well.
    let settings = root.join("empty.json");
    std::fs::write(&settings, "{}").unwrap();
    let component = |out: &str| {
        let out = root.join(out);
        let stdout = ok(&[
            "bundle",
            "build",
            "--policy",
            test_support::HOSTILE_GUEST_WASM,
            "--settings",
            path(&settings),
            "--revision",
            "1",
            "--created-at",
            CREATED_AT,
            "--out",
            path(&out),
        ]);
        assert!(stdout.contains("policy.wasm (WIT 0.1.0)"), "{stdout}");
        std::fs::read(out).unwrap()
    };
    assert_eq!(component("c1.tar.gz"), component("c2.tar.gz"));

    // Signing: RS256 gives the same bytes from the same key, ES256 does not (a random nonce), and
    // both verify.
    let (rsa, rsa_cert) = signer(&root.join("rsa"), "RS256");
    let (ec, ec_cert) = signer(&root.join("ec"), "ES256");
    for (key, cert, deterministic) in [(&rsa, &rsa_cert, true), (&ec, &ec_cert, false)] {
        let (a, b) = (root.join("a.tar.gz"), root.join("b.tar.gz"));
        std::fs::copy(root.join("first.tar.gz"), &a).unwrap();
        std::fs::copy(root.join("first.tar.gz"), &b).unwrap();
        sign(&a, key);
        sign(&b, key);
        assert_eq!(
            std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
            deterministic,
            "{}",
            key.display()
        );
        for signed in [&a, &b] {
            let stdout = ok(&["bundle", "verify", "--key", path(cert), path(signed)]);
            assert!(stdout.contains("verified: signed by kid"), "{stdout}");
        }
    }

    // inspect shows what is inside; test runs the carried cases with the carried settings.
    let inspected: Value =
        serde_json::from_str(&ok(&["bundle", "inspect", path(&root.join("a.tar.gz"))])).unwrap();
    assert_eq!(inspected["manifest"]["revision"], 1);
    assert_eq!(inspected["manifest"]["wit_version"], "0.2.0");
    assert_eq!(inspected["manifest"]["policy"], "builtin:plan-catalogue");
    assert_eq!(inspected["manifest"]["created_at"], CREATED_AT);
    let names: Vec<&str> =
        inspected["files"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["authority-jwks.json", "cases.yaml", "manifest.json", "settings.json", "signatures.json"]
    );
    assert_eq!(inspected["signatures"][0]["alg"], "ES256");
    assert_eq!(inspected["signatures"][0]["typ"], "registry-token-bundle");
    assert_eq!(
        ok(&["bundle", "test", path(&root.join("a.tar.gz"))]).lines().last(),
        Some("2 passed, 0 failed")
    );
    // With the changed settings, readonly may push: the case file's expectations fail there.
    std::fs::write(
        &cases,
        "cases:\n  - {name: readonly only pulls, claims: {sub: a, \"stellaops:plan\": readonly}, \
         scope: \"repository:team/app:pull,push\", grant: \"repository:team/app:pull\"}\n",
    )
    .unwrap();
    build(root, &root.join("changed.tar.gz"), &changed_plans, 1, &["--cases", path(&cases)]);
    let output = run(&["bundle", "test", path(&root.join("changed.tar.gz"))]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stdout).contains("FAIL") && text(&output.stdout).ends_with("0 passed, 1 failed\n"));
}

#[test]
fn every_refusal_names_its_cause_and_hostile_archives_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (key, cert) = signer(&root.join("signer"), "RS256");
    let (other, _) = signer(&root.join("other"), "RS256");
    let work = root.join("work");
    std::fs::create_dir(&work).unwrap();
    let cases = root.join("cases.yaml");
    std::fs::write(&cases, "cases: []\n").unwrap();
    let good = work.join("good.tar.gz");
    build(root, &good, PLANS, 1, &["--cases", path(&cases)]);
    let unsigned = std::fs::read(&good).unwrap();
    sign(&good, &key);
    let signed = files_of(&good);
    let verify = |file: &Path| refused(&["bundle", "verify", "--key", path(&cert), path(file)]);
    let write = |name: &str, bytes: &[u8]| {
        let file = work.join(name);
        std::fs::write(&file, bytes).unwrap();
        file
    };

    // Signature refusals.
    let case = write("unsigned.tar.gz", &unsigned);
    assert!(
        verify(&case).contains("the bundle is not signed (it has no signatures.json)"),
        "{}",
        verify(&case)
    );
    let mut files = signed.clone();
    files.insert("revocations.json".into(), br#"{"revocations": []}"#.to_vec());
    let case = write("extra.tar.gz", &pack(&files));
    assert!(
        verify(&case).contains("extra file revocations.json: the signature does not cover it"),
        "{}",
        verify(&case)
    );
    let mut files = signed.clone();
    files.remove("cases.yaml");
    let case = write("missing.tar.gz", &pack(&files));
    assert!(verify(&case).contains("missing file cases.yaml: the signature lists it"), "{}", verify(&case));
    let mut files = signed.clone();
    files.get_mut("settings.json").unwrap().extend_from_slice(b" ");
    let case = write("tampered.tar.gz", &pack(&files));
    assert!(verify(&case).contains("settings.json does not match its signed SHA-256"), "{}", verify(&case));
    let case = write("other-key.tar.gz", &unsigned);
    sign(&case, &other);
    let message = verify(&case);
    assert!(
        message.contains("signed by kid") && message.contains("which is not one of the trusted keys"),
        "{message}"
    );
    // Another key claiming the trusted key's kid: the signature does not verify.
    let trusted_kid = ok(&["bundle", "verify", "--key", path(&cert), path(&good)])
        .lines()
        .nth(1)
        .and_then(|l| l.strip_prefix("verified: signed by kid "))
        .and_then(|l| l.split(';').next())
        .unwrap()
        .to_owned();
    ok(&["bundle", "sign", "--key", path(&other), "--kid", &trusted_kid, path(&case)]);
    assert!(verify(&case).contains("does not verify with key"), "{}", verify(&case));
    // A kid may begin with a hyphen (as one thumbprint in 64 does): it is the value, not a flag.
    let hyphen = write("hyphen-kid.tar.gz", &unsigned);
    ok(&["bundle", "sign", "--key", path(&key), "--kid", "-Vhyphen-first", path(&hyphen)]);
    let shown = ok(&["bundle", "inspect", path(&hyphen)]);
    assert!(shown.contains("\"-Vhyphen-first\""), "{shown}");
    // Without keys, the manifest still vouches for the content.
    let mut files = files_of(&write("unsigned-copy.tar.gz", &unsigned));
    files.insert("settings.json".into(), b"{\"plans\":{}}".to_vec());
    let case = write("inconsistent.tar.gz", &pack(&files));
    let message = refused(&["bundle", "inspect", path(&case)]);
    assert!(message.contains("settings.json does not match the manifest's settings_digest"), "{message}");

    // Hostile archives: refused by every command, and nothing written (sign rewrites in place).
    let settings = signed["settings.json"].as_slice();
    let regular = |name: &'static str| Raw { name, kind: tar::EntryType::Regular, declared: 2, data: b"{}" };
    let mut too_many: Vec<Raw<'_>> = [
        "authority-jwks.json",
        "cases.yaml",
        "manifest.json",
        "policy.wasm",
        "revocations.json",
        "settings.json",
        "signatures.json",
    ]
    .into_iter()
    .map(regular)
    .collect();
    too_many.push(regular("settings.json"));
    // A valid little tar, then 8 MiB of zeros: 8 KiB of gzip.
    let mut bomb =
        raw_tar(&[Raw { name: "settings.json", kind: tar::EntryType::Regular, declared: 2, data: b"{}" }]);
    bomb.resize(bomb.len() + (8 << 20), 0);
    let bomb = gzip(&bomb);
    assert!(bomb.len() < 16 * 1024, "{}", bomb.len());
    let hostile: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dotdot.tar.gz",
            gzip(&raw_tar(&[Raw {
                name: "../settings.json",
                kind: tar::EntryType::Regular,
                declared: 2,
                data: b"{}",
            }])),
            "entry ../settings.json: a path out of the bundle (..)",
        ),
        (
            "absolute.tar.gz",
            gzip(&raw_tar(&[Raw {
                name: "/etc/passwd",
                kind: tar::EntryType::Regular,
                declared: 2,
                data: b"{}",
            }])),
            "entry /etc/passwd: an absolute path",
        ),
        (
            "symlink.tar.gz",
            gzip(&raw_tar(&[Raw {
                name: "policy.wasm",
                kind: tar::EntryType::Symlink,
                declared: 0,
                data: b"",
            }])),
            "entry policy.wasm: a symbolic link; a bundle holds regular files only",
        ),
        (
            "huge.tar.gz",
            gzip(&raw_tar(&[Raw {
                name: "policy.wasm",
                kind: tar::EntryType::Regular,
                declared: 2 << 30,
                data: b"",
            }])),
            "entry policy.wasm declares 2147483648 bytes, more than the limit of 1048576",
        ),
        ("bomb.tar.gz", bomb, "the bundle expands to more than the limit of 1048576 bytes when unpacked"),
        ("many.tar.gz", gzip(&raw_tar(&too_many)), "the bundle has more than 7 entries"),
        (
            "stranger.tar.gz",
            gzip(&raw_tar(&[Raw {
                name: "notes.txt",
                kind: tar::EntryType::Regular,
                declared: 2,
                data: b"{}",
            }])),
            "extra file notes.txt: a bundle holds only",
        ),
        ("large.tar.gz", vec![0u8; 1_100_000], "more than the limit of 1048576"),
        ("not-gzip.tar.gz", settings.to_vec(), "not a gzip'd tar"),
    ];
    for (name, bytes, expected) in hostile {
        let case = write(name, &bytes);
        let before = listing(&work);
        let limit = ["--max-bytes", "1048576"];
        for args in [
            vec!["bundle", "verify", limit[0], limit[1], "--key", path(&cert), path(&case)],
            vec!["bundle", "inspect", limit[0], limit[1], path(&case)],
            vec!["bundle", "test", limit[0], limit[1], path(&case)],
        ] {
            let message = refused(&args);
            assert!(message.contains(expected), "{name}: {args:?}: {message}");
        }
        let message =
            refused(&["bundle", "sign", "--max-bytes", "1048576", "--key", path(&key), path(&case)]);
        assert!(message.contains(expected), "{name}: sign: {message}");
        assert_eq!(listing(&work), before, "{name}: a refused bundle changed the directory");
    }

    // Nor is one built past the limit that servers and the other commands would then refuse.
    std::fs::write(root.join("settings.yaml"), PLANS).unwrap();
    let before = listing(&work);
    let big = refused(&[
        "bundle",
        "build",
        "--policy",
        test_support::HOSTILE_GUEST_WASM,
        "--settings",
        path(&root.join("settings.yaml")),
        "--revision",
        "1",
        "--created-at",
        CREATED_AT,
        "--max-bytes",
        "65536",
        "--out",
        path(&work.join("big.tar.gz")),
    ]);
    assert!(big.contains("would be refused") && big.contains("limit of 65536"), "{big}");
    assert_eq!(listing(&work), before, "a bundle too large to open was written");

    // Through a pipe, whose length reads 0: cut off at the limit all the same, not read whole.
    let mut inspect = Command::new(BIN)
        .args(["bundle", "inspect", "--max-bytes", "1048576", "/dev/stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = inspect.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || stdin.write_all(&vec![0u8; 4 << 20]).is_ok());
    let output = inspect.wait_with_output().unwrap();
    let fed_whole = feeder.join().unwrap();
    assert!(!output.status.success(), "{}", text(&output.stdout));
    let message = text(&output.stderr);
    assert!(message.contains("grew past the limit of 1048576 bytes (--max-bytes)"), "{message}");
    assert!(!fed_whole, "the command read all 4 MiB of the pipe");
}

/// Waits until `check` holds, or fails with `what` and the last value seen.
fn wait_for<T: std::fmt::Debug>(what: &str, timeout: Duration, mut check: impl FnMut() -> (bool, T)) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let (done, seen) = check();
        if done {
            return seen;
        }
        if Instant::now() > deadline {
            panic!("{what} within {timeout:?}; last seen: {seen:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn readyz(client: &Client) -> Value {
    client.get("/readyz").unwrap().body
}

/// A series' value in `/metrics`, if it is there.
fn series(admin: &Client, name: &str) -> Option<f64> {
    let metrics = admin.get("/metrics").unwrap().text;
    metrics.lines().find_map(|line| line.strip_prefix(name).and_then(|rest| rest.trim().parse().ok()))
}

/// A labelled counter's value in `/metrics`, 0 when absent (it is, until first counted).
fn counter(admin: &Client, name: &str) -> f64 {
    series(admin, name).unwrap_or(0.0)
}

/// The access a team member of acme gets to `team/app` and `readonly`'s to it.
fn grants(fixture: &Fixture, client: &Client) -> (Vec<String>, Vec<String>) {
    let grant = |plan: &str| {
        let token = fixture.token(|r| r.plan = Some(plan.into()));
        let reply = client
            .get_basic(&query(SERVICE, &["repository:team/app:pull,push,delete"]), "alice", &token)
            .unwrap();
        assert_eq!(reply.status, 200, "{reply}");
        access(reply.body["token"].as_str().unwrap())
    };
    (grant("team"), grant("readonly"))
}

#[test]
fn a_bundle_file_is_served_a_newer_revision_applied_and_a_rollback_or_unsigned_one_refused() {
    let mut fixture = Fixture::new();
    let root = fixture.root().to_owned();
    let (key, cert) = signer(&root.join("bundle-signer"), "ES256");
    let live = root.join("live.tar.gz");
    let rev = |n: u64, plans: &str| {
        let out = root.join(format!("rev{n}.tar.gz"));
        build(&root, &out, plans, n, &[]);
        out
    };
    let rev1 = rev(1, PLANS);
    let readonly_pushes = plans_with(|p| {
        p["plans"]["readonly"][0]["actions"] = serde_norway::from_str("[pull, push]").unwrap()
    });
    let rev2 = rev(2, &readonly_pushes);
    for bundle in [&rev1, &rev2] {
        sign(bundle, &key);
    }
    std::fs::copy(&rev1, &live).unwrap();
    // Both a module and a bundle: the configuration is refused.
    fixture.reconfigure(|config| {
        config.set("policy.bundle", path(&live));
    });
    let output = test_support::serve_command(BIN, &fixture.config_path).output().unwrap();
    assert!(
        text(&output.stderr).contains("set bundle, or module and settings_file, not both"),
        "{}",
        text(&output.stderr)
    );
    fixture.reconfigure(|config| {
        config.policy.settings_file = None;
        config.set("policy.bundle_keys", vec![path(&cert).to_owned()]);
    });
    let server = Server::start(BIN, &fixture.config_path);
    let (client, admin) = (server.client(), server.admin());
    let status = readyz(&client);
    assert_eq!(status["bundle"]["revision"], 1, "{status}");
    assert_eq!(status["bundle"]["source"], path(&live));
    assert!(status["bundle"]["signed_by"].is_string(), "{status}");
    assert_eq!(status["policy"]["settings_version"], status["bundle"]["settings_digest"]);
    assert_eq!(status["policy"]["module"], "builtin:plan-catalogue (bundle revision 1)");
    assert_eq!(grants(&fixture, &client).1, ["repository:team/app:pull"]);

    // A newer revision: applied at the reload.
    std::fs::copy(&rev2, &live).unwrap();
    server.signal("HUP");
    wait_for("revision 2 applied", Duration::from_secs(20), || {
        let status = readyz(&client);
        (status["bundle"]["revision"] == 2, status)
    });
    assert_eq!(grants(&fixture, &client).1, ["repository:team/app:pull,push"]);
    assert_eq!(series(&admin, "registry_token_bundle_revision"), Some(2.0));

    // Refused, each with its reason, while revision 2 keeps serving: a rollback to 1, an unsigned
    // revision 3, a revision 3 whose settings were changed after it was signed.
    let rev3 = rev(3, PLANS);
    let rev3_signed = root.join("rev3-signed.tar.gz");
    std::fs::copy(&rev3, &rev3_signed).unwrap();
    sign(&rev3_signed, &key);
    let mut tampered = files_of(&rev3_signed);
    tampered.get_mut("settings.json").unwrap().extend_from_slice(b" ");
    let tampered_file = root.join("rev3-tampered.tar.gz");
    std::fs::write(&tampered_file, pack(&tampered)).unwrap();
    for (bundle, reason, message) in [
        (&rev1, "rollback", "rollback refused: revision 1 is lower than the live revision 2"),
        (&rev3, "unsigned", "the bundle is not signed"),
        (&tampered_file, "digest", "settings.json does not match its signed SHA-256"),
    ] {
        let before = counter(&admin, &format!("registry_token_bundle_refusals_total{{reason=\"{reason}\"}}"));
        std::fs::copy(bundle, &live).unwrap();
        server.signal("HUP");
        let status = wait_for(&format!("the {reason} refusal shown"), Duration::from_secs(20), || {
            let status = readyz(&client);
            (status["bundle"]["last_refusal"]["reason"] == reason, status)
        });
        assert!(status["bundle"]["last_refusal"]["message"].as_str().unwrap().contains(message), "{status}");
        assert_eq!(status["bundle"]["revision"], 2, "{status}");
        assert_eq!(status["ready"], true);
        let after = counter(&admin, &format!("registry_token_bundle_refusals_total{{reason=\"{reason}\"}}"));
        assert_eq!(after, before + 1.0, "{reason}");
        assert!(server.stderr().contains(message), "the refusal is logged:\n{}", server.stderr());
        assert_eq!(
            grants(&fixture, &client).1,
            ["repository:team/app:pull,push"],
            "revision 2 still decides"
        );
    }
    // Back to a settings file: no bundle is live, and the revision gauge no longer names one.
    fixture.reconfigure(|config| {
        config.set("policy.bundle", serde_norway::Value::Null);
        config.set("policy.bundle_keys", Vec::<String>::new());
        config.policy.settings_file = Some(root.join("plans.yaml"));
    });
    server.signal("HUP");
    wait_for("the bundle dropped", Duration::from_secs(20), || {
        let status = readyz(&client);
        (status["bundle"].is_null(), status)
    });
    assert_eq!(series(&admin, "registry_token_bundle_revision"), Some(0.0));
    fixture.reconfigure(|config| {
        config.set("policy.bundle", path(&live));
        config.set("policy.bundle_keys", vec![path(&cert).to_owned()]);
        config.policy.settings_file = None;
    });
    drop(server);

    // The ledger remembers revision 2 as the highest applied from this source, so a restart
    // refuses a rollback too: the service does not start on revision 1 and says why.
    let config = path(&fixture.config_path).to_owned();
    let revisions = || -> Value {
        serde_json::from_str(&ok(&["bundle", "revisions", "--config", &config, "--json"])).unwrap()
    };
    let content = |bundle: &Path| -> Value {
        serde_json::from_str::<Value>(&ok(&["bundle", "inspect", path(bundle)])).unwrap()["content_sha256"]
            .clone()
    };
    let listed = revisions();
    assert_eq!(listed["bundles"][0]["source"], path(&live), "{listed}");
    assert_eq!(listed["bundles"][0]["revision"], 2, "{listed}");
    assert_eq!(listed["bundles"][0]["content_sha256"], content(&rev2), "{listed}");
    std::fs::copy(&rev1, &live).unwrap();
    let output = test_support::serve_command(BIN, &fixture.config_path).output().unwrap();
    assert!(!output.status.success(), "started on a rollback:\n{}", text(&output.stderr));
    let applied_at = listed["bundles"][0]["applied_at"].as_str().unwrap();
    assert!(
        text(&output.stderr).contains(&format!(
            "rollback refused: revision 1 is lower than revision 2, applied from this source at {applied_at} \
             (the ledger's record): publish revision 2 or higher there"
        )),
        "{}",
        text(&output.stderr)
    );
    // Revision 2 signed again (an ES256 signature differs each time): the same content, so it
    // starts.
    let rev2_again = root.join("rev2-again.tar.gz");
    std::fs::copy(&rev2, &rev2_again).unwrap();
    sign(&rev2_again, &key);
    assert_ne!(digest_of_file(&rev2_again), digest_of_file(&rev2));
    std::fs::copy(&rev2_again, &live).unwrap();
    let server = Server::start(BIN, &fixture.config_path);
    assert_eq!(readyz(&server.client())["bundle"]["revision"], 2);
    drop(server);

    // A deliberate rollback: the operator forgets the record, and revision 1 starts (and is
    // recorded in turn).
    std::fs::copy(&rev1, &live).unwrap();
    let forgot = run(&["bundle", "forget-revision", "--config", &config]);
    assert!(forgot.status.success(), "{}", text(&forgot.stderr));
    let said = text(&forgot.stderr);
    assert!(said.contains(&format!("forgot revision 2 of {}", path(&live))), "{said}");
    assert!(
        refused(&["bundle", "forget-revision", "--config", &config]).contains("no revision is recorded for"),
        "forgetting twice is an error"
    );
    let server = Server::start(BIN, &fixture.config_path);
    let client = server.client();
    assert_eq!(readyz(&client)["bundle"]["revision"], 1);
    assert_eq!(grants(&fixture, &client).1, ["repository:team/app:pull"]);
    let listed = ok(&["bundle", "revisions", "--config", &config]);
    assert!(listed.starts_with(&format!("{}  revision 1  content sha256:", path(&live))), "{listed}");

    // A second replica on the same ledger (one host, one SQLite file) applies revision 3 from the
    // same source; the first, still on revision 1, then refuses revision 2 at its reload: above
    // its live one, below the record.
    std::fs::copy(&rev3_signed, &live).unwrap();
    let replica = Server::start(BIN, &fixture.config_path);
    assert_eq!(readyz(&replica.client())["bundle"]["revision"], 3);
    drop(replica);
    std::fs::copy(&rev2, &live).unwrap();
    server.signal("HUP");
    let status = wait_for("the record's refusal shown", Duration::from_secs(20), || {
        let status = readyz(&client);
        (status["bundle"]["last_refusal"]["reason"] == "rollback", status)
    });
    assert!(
        status["bundle"]["last_refusal"]["message"]
            .as_str()
            .unwrap()
            .contains("rollback refused: revision 2 is lower than revision 3, applied from this source"),
        "{status}"
    );
    assert_eq!(status["bundle"]["revision"], 1, "{status}");

    // A newer revision is recorded as soon as it is applied (not at the next reload, nor by the
    // retry of a record the ledger refused, 5 s later).
    let rev4 = rev(4, PLANS);
    sign(&rev4, &key);
    std::fs::copy(&rev4, &live).unwrap();
    server.signal("HUP");
    wait_for("revision 4 applied", Duration::from_secs(20), || {
        let status = readyz(&client);
        (status["bundle"]["revision"] == 4, status)
    });
    wait_for("revision 4 recorded", Duration::from_secs(1), || {
        let listed = revisions();
        (listed["bundles"][0]["revision"] == 4, listed)
    });

    // The configuration moves to another source serving the very same bundle: nothing changes
    // for the callers, but that source gets its record too, so a restart refuses a rollback there.
    let moved = root.join("moved.tar.gz");
    std::fs::copy(&rev4, &moved).unwrap();
    fixture.reconfigure(|config| {
        config.set("policy.bundle", path(&moved));
    });
    server.signal("HUP");
    let listed = wait_for("the new source recorded", Duration::from_secs(20), || {
        let listed = revisions();
        (listed["bundles"][1]["source"] == path(&moved), listed)
    });
    assert_eq!(listed["bundles"][1]["revision"], 4, "{listed}");
    assert_eq!(readyz(&client)["bundle"]["source"], path(&moved));
    drop(server);
    std::fs::copy(&rev3_signed, &moved).unwrap();
    let output = test_support::serve_command(BIN, &fixture.config_path).output().unwrap();
    assert!(!output.status.success(), "started on a rollback:\n{}", text(&output.stderr));
    assert!(
        text(&output.stderr).contains("rollback refused: revision 3 is lower than revision 4"),
        "{}",
        text(&output.stderr)
    );
}

/// `sha256:HEX` of the file `path`.
fn digest_of_file(path: &Path) -> String {
    format!("sha256:{}", digest_of(&std::fs::read(path).unwrap()))
}

/// A loopback HTTPS server with a certificate from a CA made here, serving one bundle at
/// `/bundle.tar.gz` with an `ETag` and answering `If-None-Match` with 304.
struct HttpsBundleServer {
    address: std::net::SocketAddr,
    bundle: Arc<Mutex<Vec<u8>>>,
    not_modified: Arc<std::sync::atomic::AtomicUsize>,
    _runtime: tokio::runtime::Runtime,
}

struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, address)) = self.tcp.accept().await else { continue };
            if let Ok(tls) = self.acceptor.accept(stream).await {
                return (tls, address);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

impl HttpsBundleServer {
    /// Starts it; writes the CA's certificate to `ca_file`.
    fn start(ca_file: &Path) -> HttpsBundleServer {
        HttpsBundleServer::start_on(ca_file, "127.0.0.1:0".parse().unwrap())
    }

    /// [`HttpsBundleServer::start`] on `address` (the one a server before it had).
    fn start_on(ca_file: &Path, address: std::net::SocketAddr) -> HttpsBundleServer {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "registry-token test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        std::fs::write(ca_file, ca.pem()).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let mut leaf_params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        leaf_params.subject_alt_names.push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();
        let tls =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(
                    vec![leaf.der().clone()],
                    rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
                )
                .unwrap();
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let bundle = Arc::new(Mutex::new(Vec::new()));
        let not_modified = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (served, counted) = (Arc::clone(&bundle), Arc::clone(&not_modified));
        let route = move |headers: axum::http::HeaderMap| {
            let (served, counted) = (Arc::clone(&served), Arc::clone(&counted));
            async move {
                let bytes = served.lock().unwrap().clone();
                let etag = format!("\"{}\"", digest_of(&bytes));
                let asked = headers.get("if-none-match").and_then(|v| v.to_str().ok());
                if asked == Some(etag.as_str()) {
                    counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return (axum::http::StatusCode::NOT_MODIFIED, [("etag", etag)], Vec::new());
                }
                (axum::http::StatusCode::OK, [("etag", etag)], bytes)
            }
        };
        let app = axum::Router::new().route("/bundle.tar.gz", axum::routing::get(route));
        let listener = runtime.block_on(async {
            let tcp = tokio::net::TcpListener::bind(address).await.unwrap();
            TlsListener { tcp, acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(tls)) }
        });
        let address = axum::serve::Listener::local_addr(&listener).unwrap();
        runtime.spawn(async move { axum::serve(listener, app).await });
        HttpsBundleServer { address, bundle, not_modified, _runtime: runtime }
    }

    fn serve(&self, bundle: &Path) {
        *self.bundle.lock().unwrap() = std::fs::read(bundle).unwrap();
    }

    fn url(&self) -> String {
        format!("https://{}/bundle.tar.gz", self.address)
    }
}

#[test]
fn a_bundle_from_an_https_url_is_polled_a_new_revision_picked_up_and_an_old_one_refused() {
    let mut fixture = Fixture::new();
    let root = fixture.root().to_owned();
    let (key, cert) = signer(&root.join("bundle-signer"), "RS256");
    let rev1 = root.join("rev1.tar.gz");
    build(&root, &rev1, PLANS, 1, &[]);
    let readonly_pushes = plans_with(|p| {
        p["plans"]["readonly"][0]["actions"] = serde_norway::from_str("[pull, push]").unwrap()
    });
    let rev2 = root.join("rev2.tar.gz");
    build(&root, &rev2, &readonly_pushes, 2, &[]);
    sign(&rev1, &key);
    sign(&rev2, &key);
    let https = HttpsBundleServer::start(&root.join("ca.pem"));
    https.serve(&rev1);
    // Credentials in the URL (Basic, as reqwest sends them) and a pre-signed query: neither may
    // reach `/readyz` (served on the callers' listener), the log or an error.
    let secret_url =
        format!("https://deploy:s3cret-pw@{}/bundle.tar.gz?X-Signature=s1gnature", https.address);
    let shown = format!("{}?...", https.url());
    fixture.reconfigure(|config| {
        from_https(config, &secret_url, &cert, &root);
        config.set("policy.bundle_poll_seconds", 1);
    });
    let server = Server::start(BIN, &fixture.config_path);
    let (client, admin) = (server.client(), server.admin());
    assert_eq!(readyz(&client)["bundle"]["revision"], 1);
    assert_eq!(grants(&fixture, &client).1, ["repository:team/app:pull"]);
    // Polled with If-None-Match: the unchanged bundle is answered 304 and not downloaded again.
    wait_for("a conditional poll answered 304", Duration::from_secs(20), || {
        let count = https.not_modified.load(std::sync::atomic::Ordering::Relaxed);
        (count >= 2, count)
    });

    // A poll applies what the bundle carries and nothing else: files changed on disk since the
    // start wait for a reload. Here a new signing key (not yet trusted by any registry), an
    // Authority key file and a bundle_keys file being rewritten (unreadable for now).
    let kid = readyz(&client)["signing"]["kid"].clone();
    let on_disk = [root.join("keys/signing-key.pem"), root.join("keys/signing-cert.pem")];
    let saved = on_disk.clone().map(|file| std::fs::read(file).unwrap());
    ok(&["keygen", "--out", path(&root.join("next-key"))]);
    for (file, name) in on_disk.iter().zip(["signing-key.pem", "signing-cert.pem"]) {
        std::fs::copy(root.join("next-key").join(name), file).unwrap();
    }
    let half_written = [root.join("authority/jwks.json"), cert.clone()];
    let saved_half = half_written.clone().map(|file| std::fs::read(file).unwrap());
    for file in &half_written {
        std::fs::write(file, "{\"keys\": [").unwrap();
    }
    https.serve(&rev2);
    wait_for("revision 2 picked up by polling", Duration::from_secs(30), || {
        let status = readyz(&client);
        (status["bundle"]["revision"] == 2, status)
    });
    assert_eq!(grants(&fixture, &client).1, ["repository:team/app:pull,push"]);
    assert_eq!(readyz(&client)["signing"]["kid"], kid, "a poll signs with the key the service started with");
    let reply = client
        .get_basic(&query(SERVICE, &["repository:team/app:pull"]), "alice", &fixture.token(|_| {}))
        .unwrap();
    let header = jsonwebtoken::decode_header(reply.body["token"].as_str().unwrap()).unwrap();
    assert_eq!(Some(header.kid.unwrap().as_str()), kid.as_str(), "{reply}");
    for (file, bytes) in on_disk.iter().chain(&half_written).zip(saved.iter().chain(&saved_half)) {
        std::fs::write(file, bytes).unwrap();
    }

    https.serve(&rev1);
    let status = wait_for("the rollback refused", Duration::from_secs(30), || {
        let status = readyz(&client);
        (status["bundle"]["last_refusal"]["reason"] == "rollback", status)
    });
    assert_eq!(status["bundle"]["revision"], 2, "{status}");
    assert!(
        status["bundle"]["last_refusal"]["message"]
            .as_str()
            .unwrap()
            .contains("rollback refused: revision 1 is lower than the live revision 2"),
        "{status}"
    );
    assert!(counter(&admin, "registry_token_bundle_refusals_total{reason=\"rollback\"}") >= 1.0);
    assert_eq!(status["bundle"]["source"], shown.as_str(), "{status}");
    let (probe, log) = (client.get("/readyz").unwrap().text, server.stderr());
    for secret in ["s3cret-pw", "s1gnature"] {
        assert!(!probe.contains(secret) && !log.contains(secret), "{secret}: {probe}\n{log}");
    }
    assert_eq!(grants(&fixture, &client).1, ["repository:team/app:pull,push"]);

    // The operator lifts the record naming the source as the configuration does, secrets and
    // all: the record is found, and the secrets are not repeated.
    let config = path(&fixture.config_path).to_owned();
    let forgot = run(&["bundle", "forget-revision", "--config", &config, &secret_url]);
    let said = text(&forgot.stderr);
    assert!(forgot.status.success(), "{said}");
    assert!(said.contains(&format!("forgot revision 2 of {shown}")), "{said}");
    assert!(!said.contains("s3cret-pw") && !said.contains("s1gnature"), "{said}");

    // Trusting another CA, the service does not trust the server: it does not start.
    let stranger = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    std::fs::write(root.join("stranger-ca.pem"), stranger.cert.pem()).unwrap();
    fixture.reconfigure(|config| {
        config.set("policy.bundle_ca_file", path(&root.join("stranger-ca.pem")));
    });
    let output = test_support::serve_command(BIN, &fixture.config_path).output().unwrap();
    let stderr = text(&output.stderr);
    assert!(stderr.contains(&format!("cannot fetch {shown}")) && stderr.contains("certificate"), "{stderr}");
    assert!(!stderr.contains("s3cret-pw") && !stderr.contains("s1gnature"), "{stderr}");
}

/// The operator stops trusting a bundle signing key (it leaked): `policy.bundle_keys` now names
/// another, and SIGHUP. The reload fails, as the live bundle was signed by the removed key, and
/// the live one keeps serving; but the polls that follow check new bundles against the keys the
/// configuration names now. Before, they kept the removed key: whoever held it could publish a
/// revision that the next poll applied.
#[test]
fn a_bundle_key_removed_by_a_reload_is_not_trusted_by_the_polls_after_it() {
    let mut fixture = Fixture::new();
    let root = fixture.root().to_owned();
    let (leaked, leaked_cert) = signer(&root.join("leaked-signer"), "RS256");
    let (next, next_cert) = signer(&root.join("next-signer"), "RS256");
    let pushes = plans_with(|p| {
        p["plans"]["readonly"][0]["actions"] = serde_norway::from_str("[pull, push]").unwrap()
    });
    let revisions: Vec<PathBuf> = (1..=3).map(|n| root.join(format!("rev{n}.tar.gz"))).collect();
    build(&root, &revisions[0], PLANS, 1, &[]);
    build(&root, &revisions[1], &pushes, 2, &[]);
    build(&root, &revisions[2], &pushes, 3, &[]);
    sign(&revisions[0], &leaked);
    sign(&revisions[1], &leaked);
    sign(&revisions[2], &next);
    let https = HttpsBundleServer::start(&root.join("ca.pem"));
    https.serve(&revisions[0]);
    let url = https.url();
    fixture.reconfigure(|config| {
        from_https(config, &url, &leaked_cert, &root);
        config.set("policy.bundle_poll_seconds", 1);
    });
    let server = Server::start(BIN, &fixture.config_path);
    let (client, admin) = (server.client(), server.admin());
    assert_eq!(readyz(&client)["bundle"]["revision"], 1);

    fixture.reconfigure(|config| {
        config.set("policy.bundle_keys", vec![path(&next_cert).to_owned()]);
    });
    server.signal("HUP");
    let status = wait_for("the reload refused", Duration::from_secs(30), || {
        let status = readyz(&client);
        (status["bundle"]["last_refusal"]["reason"] == "unknown_key", status)
    });
    assert_eq!(status["bundle"]["revision"], 1, "the live bundle keeps serving: {status}");

    // A revision signed with the removed key: refused by every poll.
    https.serve(&revisions[1]);
    let refusals = || counter(&admin, "registry_token_bundle_refusals_total{reason=\"unknown_key\"}");
    let before = refusals();
    wait_for("polls refusing revision 2", Duration::from_secs(30), || {
        (refusals() >= before + 2.0, refusals())
    });
    let status = readyz(&client);
    assert_eq!(status["bundle"]["revision"], 1, "{status}");
    assert_eq!(status["bundle"]["last_refusal"]["reason"], "unknown_key", "{status}");
    assert_eq!(grants(&fixture, &client).1, ["repository:team/app:pull"]);

    // One signed with the key the configuration names now: applied by the next poll.
    https.serve(&revisions[2]);
    wait_for("revision 3 picked up by polling", Duration::from_secs(30), || {
        let status = readyz(&client);
        (status["bundle"]["revision"] == 3, status)
    });
    assert_eq!(grants(&fixture, &client).1, ["repository:team/app:pull,push"]);
}

/// The policy from a bundle at the HTTPS `url` (whose server's CA is `ROOT/ca.pem`), signed by
/// `cert`'s key.
fn from_https(config: &mut test_support::Config, url: &str, cert: &Path, root: &Path) {
    config.policy.settings_file = None;
    config.set("policy.bundle", url);
    config.set("policy.bundle_keys", vec![path(cert).to_owned()]);
    config.set("policy.bundle_ca_file", path(&root.join("ca.pem")));
}

/// A fixture whose policy is revision 1 of a signed bundle (readonly may push, unlike the
/// default plans) served by a loopback HTTPS server, its configuration edited by `edit` (given
/// the fixture's root).
fn served_over_https(
    edit: impl FnOnce(&mut test_support::Config, &Path),
) -> (Fixture, HttpsBundleServer, PathBuf) {
    let mut fixture = Fixture::new();
    let root = fixture.root().to_owned();
    let (key, cert) = signer(&root.join("bundle-signer"), "RS256");
    let pushes = plans_with(|p| {
        p["plans"]["readonly"][0]["actions"] = serde_norway::from_str("[pull, push]").unwrap()
    });
    let rev1 = root.join("rev1.tar.gz");
    build(&root, &rev1, &pushes, 1, &[]);
    sign(&rev1, &key);
    let https = HttpsBundleServer::start(&root.join("ca.pem"));
    https.serve(&rev1);
    let url = https.url();
    fixture.reconfigure(|config| {
        from_https(config, &url, &cert, &root);
        edit(config, &root);
    });
    (fixture, https, rev1)
}

/// The bundle server is down when the operator reloads to change something else (a signing key
/// to rotate, a token lifetime): the reload goes on with the live bundle, checked again, and says
/// in `/readyz` that the source could not be fetched. Before, the whole reload was refused until
/// the bundle server came back.
#[test]
fn a_reload_while_the_bundle_source_is_down_keeps_the_live_bundle_and_applies_the_rest() {
    let (mut fixture, https, _) = served_over_https(|config, _| {
        config.set("policy.bundle_poll_seconds", 0);
    });
    let server = Server::start(BIN, &fixture.config_path);
    let (client, admin) = (server.client(), server.admin());
    assert_eq!(readyz(&client)["bundle"]["revision"], 1);
    let expires_in = |fixture: &Fixture| {
        let reply = client
            .get_basic(&query(SERVICE, &["repository:team/app:pull"]), "alice", &fixture.token(|_| {}))
            .unwrap();
        assert_eq!(reply.status, 200, "{reply}");
        reply.body["expires_in"].clone()
    };
    assert_eq!(expires_in(&fixture), 300);

    drop(https);
    fixture.reconfigure(|config| {
        config.set("signing.lifetime_seconds", 120);
    });
    server.signal("HUP");
    wait_for("the reload applied", Duration::from_secs(30), || {
        let seen = expires_in(&fixture);
        (seen == 120, seen)
    });
    let status = readyz(&client);
    assert_eq!(status["ready"], true, "{status}");
    assert_eq!(status["bundle"]["revision"], 1, "{status}");
    let refusal = &status["bundle"]["last_refusal"];
    assert_eq!(refusal["reason"], "unavailable", "{status}");
    assert!(refusal["message"].as_str().unwrap().contains("the reload kept the live bundle"), "{status}");
    assert!(counter(&admin, "registry_token_bundle_refusals_total{reason=\"unavailable\"}") >= 1.0);
    assert!(counter(&admin, "registry_token_reloads_total{result=\"applied\"}") >= 1.0);
    // Still the bundle's policy deciding.
    assert_eq!(grants(&fixture, &client).1, ["repository:team/app:pull,push"]);
    assert!(server.stderr().contains("the reload keeps the live bundle"), "{}", server.stderr());
}

/// With `policy.cache_dir`, the service keeps a copy of the last bundle it applied from a remote
/// source, and a start while the source is down starts on it (checked like a fetched one: a
/// copy that is not a valid bundle is refused, naming where it came from). Before, the service
/// could not start until the bundle server came back.
#[test]
fn a_start_while_the_bundle_source_is_down_serves_the_last_bundle_applied_from_it() {
    use std::os::unix::fs::PermissionsExt;
    let (fixture, https, rev1) = served_over_https(|config, root| {
        config.set("policy.cache_dir", path(&root.join("cache")));
        config.set("policy.bundle_poll_seconds", 1);
    });
    let root = fixture.root().to_owned();
    let cache = root.join("cache");
    let server = Server::start(BIN, &fixture.config_path);
    assert_eq!(readyz(&server.client())["bundle"]["revision"], 1);
    let copies: Vec<PathBuf> =
        std::fs::read_dir(cache.join("bundles")).unwrap().map(|entry| entry.unwrap().path()).collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    let copy = copies[0].clone();
    assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&rev1).unwrap());
    assert_eq!(std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777, 0o600);
    drop(server);

    // The bundle server is gone: the service starts on the copy, and says so.
    let address = https.address;
    drop(https);
    let server = Server::start(BIN, &fixture.config_path);
    let client = server.client();
    let status = readyz(&client);
    assert_eq!(status["ready"], true, "{status}");
    assert_eq!(status["bundle"]["revision"], 1, "{status}");
    // (Polls that fail while the source is down may have replaced the start's own message.)
    assert_eq!(status["bundle"]["last_refusal"]["reason"], "unavailable", "{status}");
    let log = server.stderr();
    assert!(
        log.contains("starting on the last bundle applied from it") && log.contains(&*copy.to_string_lossy()),
        "{log}"
    );
    assert_eq!(grants(&fixture, &client).1, ["repository:team/app:pull,push"]);
    // The bundle server is back with the same bundle: once polled, the source's version is
    // known, and later polls are answered 304 rather than downloaded again.
    let https = HttpsBundleServer::start_on(&root.join("ca.pem"), address);
    https.serve(&rev1);
    wait_for("conditional polls answered 304", Duration::from_secs(20), || {
        let count = https.not_modified.load(std::sync::atomic::Ordering::Relaxed);
        (count >= 2, count)
    });
    drop(server);
    drop(https);

    // A copy that is not a bundle (a disk that lost it, a hand that edited it) is refused.
    std::fs::write(&copy, b"not a bundle").unwrap();
    let output = test_support::serve_command(BIN, &fixture.config_path).output().unwrap();
    let stderr = text(&output.stderr);
    assert!(!output.status.success(), "started on a broken copy:\n{stderr}");
    assert!(stderr.contains(&format!("the copy of it kept in {}", copy.display())), "{stderr}");
    // And without one, the start fails as before, saying what it looked for.
    std::fs::remove_file(&copy).unwrap();
    let output = test_support::serve_command(BIN, &fixture.config_path).output().unwrap();
    let stderr = text(&output.stderr);
    assert!(!output.status.success(), "started with no bundle:\n{stderr}");
    assert!(stderr.contains("no copy of a bundle applied from it could be read"), "{stderr}");
}

/// While the ledger cannot record the live bundle (another process holds its write lock), the
/// service asks it again every few seconds; those retries must not put the next poll off. They
/// did: each restarted the poll's timer, so no new revision was picked up until the ledger came
/// back. Nothing is lost: once the lock is gone, the ledger records the revision serving.
#[test]
fn polls_go_on_on_time_while_the_ledger_cannot_record_the_live_bundle() {
    let mut fixture = Fixture::new();
    let root = fixture.root().to_owned();
    let (key, cert) = signer(&root.join("bundle-signer"), "RS256");
    let actions = ["[pull]", "[pull, push]", "[pull, push, delete]"];
    let revisions: Vec<PathBuf> = (1..=3)
        .zip(actions)
        .map(|(revision, actions)| {
            let plans = plans_with(|p| {
                p["plans"]["readonly"][0]["actions"] = serde_norway::from_str(actions).unwrap()
            });
            let file = root.join(format!("rev{revision}.tar.gz"));
            build(&root, &file, &plans, revision, &[]);
            sign(&file, &key);
            file
        })
        .collect();
    let https = HttpsBundleServer::start(&root.join("ca.pem"));
    https.serve(&revisions[0]);
    // Longer than the 5 s between the ledger's retries.
    let poll_seconds = 6;
    fixture.reconfigure(|config| {
        config.policy.settings_file = None;
        config.set("policy.bundle", https.url().as_str());
        config.set("policy.bundle_keys", vec![path(&cert).to_owned()]);
        config.set("policy.bundle_poll_seconds", poll_seconds);
        config.set("policy.bundle_ca_file", path(&root.join("ca.pem")));
    });
    let server = Server::start(BIN, &fixture.config_path);
    let client = server.client();
    assert_eq!(readyz(&client)["bundle"]["revision"], 1);

    let ledger = rusqlite::Connection::open(root.join("ledger.db")).unwrap();
    let recorded = |ledger: &rusqlite::Connection| -> i64 {
        ledger.query_row("SELECT revision FROM bundle_revisions", [], |row| row.get(0)).unwrap()
    };
    assert_eq!(recorded(&ledger), 1);
    ledger.execute_batch("BEGIN IMMEDIATE").unwrap();
    https.serve(&revisions[1]);
    wait_for("revision 2 applied by a poll", Duration::from_secs(20), || {
        let status = readyz(&client);
        (status["bundle"]["revision"] == 2, status)
    });
    wait_for("the ledger's refusal to record it logged", Duration::from_secs(20), || {
        let log = server.stderr();
        (log.contains("did not record the live policy bundle"), log)
    });

    // The next poll is due `poll_seconds` after the last, whatever the ledger's retries do
    // meanwhile (each takes SQLite's 5 s busy timeout, then waits 5 s).
    https.serve(&revisions[2]);
    wait_for("revision 3 applied by a poll while the ledger is locked", Duration::from_secs(30), || {
        let status = readyz(&client);
        (status["bundle"]["revision"] == 3, status)
    });

    ledger.execute_batch("ROLLBACK").unwrap();
    wait_for("revision 3 recorded once the ledger is writable", Duration::from_secs(30), || {
        let revision = recorded(&ledger);
        (revision == 3, revision)
    });
    assert_eq!(grants(&fixture, &client).1, ["repository:team/app:pull,push,delete"]);
}

/// One request of the parity sequence: who asks, for what, how.
struct Ask {
    what: &'static str,
    token: String,
    scopes: Vec<&'static str>,
    post: bool,
}

/// What a client sees of an answer: status, error code and message, or the token's subject,
/// audience, access and lifetime (the two instances sign with different keys, so the tokens
/// themselves differ).
fn observed(client: &Client, ask: &Ask) -> Value {
    let reply = if ask.post {
        let scope = ask.scopes.join(" ");
        client
            .post_form(
                "/token",
                &[
                    ("grant_type", "password"),
                    ("username", "x"),
                    ("password", &ask.token),
                    ("service", SERVICE),
                    ("scope", &scope),
                ],
            )
            .unwrap()
    } else {
        client.get_basic(&query(SERVICE, &ask.scopes), "x", &ask.token).unwrap()
    };
    let token = reply.body["token"].as_str().or(reply.body["access_token"].as_str());
    match token {
        Some(token) => {
            let (_, claims) = decode(token);
            serde_json::json!({
                "status": reply.status.as_u16(),
                "sub": claims["sub"], "aud": claims["aud"], "access": claims["access"],
                "lifetime": claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
                "scope": reply.body["scope"],
            })
        }
        None => serde_json::json!({
            "status": reply.status.as_u16(),
            "code": reply.code(),
            "message": reply.message(),
            "oauth": reply.body["error"],
        }),
    }
}

#[test]
fn the_offline_kit_decides_exactly_as_the_online_instance_its_bundle_was_built_from() {
    // The online instance: the Authority's JWKS file, a ledger with revocations, the plans.
    let mut online = Fixture::new();
    let root = online.root().to_owned();
    let config = path(&online.config_path).to_owned();
    let revoked_jti_token = online.token(|r| r.subject = "frank".into());
    let (_, claims) = decode(&revoked_jti_token);
    let jti = claims["jti"].as_str().unwrap().to_owned();
    // A revocation that expires in a few seconds: lapsed by the time the requests are made. Made
    // first, and seconds ahead (the time is cut to whole seconds): one in the past is refused.
    let lapses_at = std::time::SystemTime::now() + Duration::from_secs(5);
    let lapses = humantime::format_rfc3339_seconds(lapses_at).to_string();
    for revoke in [
        vec!["subject", "eve", "--reason", "suspended", "--expires-at", lapses.as_str()],
        vec!["subject", "mallory", "--reason", "left the company"],
        vec!["tenant", "globex", "--reason", "contract ended"],
        vec!["caller_token", jti.as_str(), "--reason", "leaked"],
        vec!["licence", "LIC-0007", "--reason", "unpaid", "--tenant", "acme"],
    ] {
        // `--create`: no service has run on this ledger yet.
        let mut args = vec!["ledger", "revoke", "--create", "--config", config.as_str()];
        args.extend(revoke);
        ok(&args);
    }
    let online_server = Server::start(BIN, &online.config_path);

    // The kit: policy, settings, the ledger's revocations, the Authority's keys; signed.
    let kit = root.join("kit.tar.gz");
    build(
        &root,
        &kit,
        PLANS,
        1,
        &["--revocations-from", &config, "--authority-jwks", path(&root.join("authority/jwks.json"))],
    );
    let (key, cert) = signer(&root.join("kit-signer"), "RS256");
    sign(&kit, &key);
    let inspected: Value = serde_json::from_str(&ok(&["bundle", "inspect", path(&kit)])).unwrap();
    assert_eq!(inspected["revocations"], 5);

    // The offline instance: its own signing key, no Authority source, no network: only the kit.
    let offline_dir = tempfile::tempdir().unwrap();
    let offline_root = offline_dir.path();
    ok(&["keygen", "--out", path(&offline_root.join("keys"))]);
    let mut offline = test_support::Config::installation(offline_root, ISSUER, &[SERVICE, "other.test"]);
    offline.authority.jwks_file = None;
    offline.policy.settings_file = None;
    offline.set("policy.bundle", path(&kit)).set("policy.bundle_keys", vec![path(&cert).to_owned()]);
    let offline_config = offline_root.join("registry-token.yaml");
    offline.write(&offline_config);
    let offline_server = Server::start(BIN, &offline_config);
    let status = readyz(&offline_server.client());
    assert_eq!(status["bundle"]["authority_jwks"], true, "{status}");
    assert_eq!(status["bundle"]["revocations"], 5, "{status}");

    let token = |edit: &dyn Fn(&mut registry_token::dev_authority::TokenRequest)| online.token(|r| edit(r));
    let asks = vec![
        Ask {
            what: "a team member of acme: a partial grant",
            token: token(&|_| {}),
            scopes: vec!["repository:team/app:pull,push,delete", "repository:acme/tools/ci:delete"],
            post: false,
        },
        Ask {
            what: "readonly",
            token: token(&|r| r.plan = Some("readonly".into())),
            scopes: vec!["repository:team/app:pull,push"],
            post: false,
        },
        Ask {
            what: "admin: the catalog",
            token: token(&|r| r.plan = Some("admin".into())),
            scopes: vec!["registry:catalog:*"],
            post: false,
        },
        Ask {
            what: "a plan the catalogue lacks",
            token: token(&|r| r.plan = Some("gold".into())),
            scopes: vec!["repository:team/app:pull"],
            post: false,
        },
        Ask { what: "docker login (no scope)", token: token(&|_| {}), scopes: vec![], post: false },
        Ask {
            what: "the OAuth2 form",
            token: token(&|_| {}),
            scopes: vec!["repository:team/app:pull repository:shared/x/y:push"],
            post: true,
        },
        Ask {
            what: "the policy's revoked licence",
            token: token(&|r| r.license = Some("LIC-0002".into())),
            scopes: vec!["repository:team/app:pull"],
            post: false,
        },
        Ask {
            what: "a revoked subject",
            token: token(&|r| r.subject = "mallory".into()),
            scopes: vec!["repository:team/app:pull"],
            post: false,
        },
        Ask {
            what: "a revoked tenant",
            token: token(&|r| r.tenant = Some("globex".into())),
            scopes: vec!["repository:team/app:pull"],
            post: false,
        },
        Ask {
            what: "a revoked caller token",
            token: revoked_jti_token.clone(),
            scopes: vec!["repository:team/app:pull"],
            post: false,
        },
        Ask {
            what: "another token of the same caller",
            token: token(&|r| r.subject = "frank".into()),
            scopes: vec!["repository:team/app:pull"],
            post: false,
        },
        Ask {
            what: "a licence revoked in acme",
            token: token(&|r| r.license = Some("LIC-0007".into())),
            scopes: vec!["repository:team/app:pull"],
            post: false,
        },
        Ask {
            what: "the same licence in another tenant",
            token: token(&|r| {
                r.license = Some("LIC-0007".into());
                r.tenant = Some("initech".into());
            }),
            scopes: vec!["repository:initech/app:pull"],
            post: false,
        },
        Ask {
            what: "an expired revocation",
            token: token(&|r| r.subject = "eve".into()),
            scopes: vec!["repository:team/app:pull"],
            post: false,
        },
        Ask {
            what: "an expired caller token",
            token: token(&|r| r.ttl_seconds = -120),
            scopes: vec!["repository:team/app:pull"],
            post: false,
        },
        Ask {
            what: "another audience",
            token: token(&|r| r.audience = "someone-else".into()),
            scopes: vec!["repository:team/app:pull"],
            post: false,
        },
        Ask {
            what: "without the required scope",
            token: token(&|r| r.scope = "openid".into()),
            scopes: vec!["repository:team/app:pull"],
            post: false,
        },
        Ask {
            what: "not a token",
            token: "garbage".into(),
            scopes: vec!["repository:team/app:pull"],
            post: false,
        },
    ];
    if let Ok(left) = lapses_at.duration_since(std::time::SystemTime::now()) {
        std::thread::sleep(left + Duration::from_secs(1));
    }
    let (online_client, offline_client) = (online_server.client(), offline_server.client());
    let mut statuses = Vec::new();
    for ask in &asks {
        let (on, off) = (observed(&online_client, ask), observed(&offline_client, ask));
        assert_eq!(on, off, "{}: the online and the offline instance disagree", ask.what);
        statuses.push((ask.what, on));
    }
    println!("offline parity: {} requests, every grant and denial identical", asks.len());
    // The sequence exercises what it claims to: grants, the policy's denial, each revocation, refusals.
    let seen = |what: &str| statuses.iter().find(|(w, _)| *w == what).map(|(_, v)| v.clone()).unwrap();
    assert_eq!(seen("a team member of acme: a partial grant")["access"].as_array().unwrap().len(), 2);
    assert_eq!(seen("a revoked subject")["message"], "subject mallory has been revoked: left the company");
    assert_eq!(seen("a revoked tenant")["message"], "tenant globex has been revoked: contract ended");
    assert_eq!(
        seen("a revoked caller token")["message"],
        format!("caller_token {jti} has been revoked: leaked")
    );
    assert_eq!(seen("another token of the same caller")["status"], 200);
    assert_eq!(seen("a licence revoked in acme")["message"], "licence LIC-0007 has been revoked: unpaid");
    assert_eq!(seen("the same licence in another tenant")["status"], 200);
    assert_eq!(seen("an expired revocation")["status"], 200);
    assert_eq!(seen("the policy's revoked licence")["code"], "DENIED");
    assert_eq!(seen("an expired caller token")["status"], 401);
    // Both count the same revocations in force (the offline instance's are its bundle's), eve's
    // lapsed.
    for (kind, expected) in [("subject", 1.0), ("tenant", 1.0), ("caller_token", 1.0), ("licence", 1.0)] {
        let series = format!("registry_token_revocations_active{{kind=\"{kind}\"}}");
        assert_eq!(counter(&online_server.admin(), &series), expected, "online: {series}");
        assert_eq!(counter(&offline_server.admin(), &series), expected, "offline: {series}");
    }

    // The offline site's administrator sees why mallory is refused: the kit's revocations are
    // listed as the bundle's, and one cannot be lifted here (a 409 that says how; not a 204 that
    // changes nothing, nor a 404 for what is in force).
    let offline_admin = offline_server.admin();
    let admin_token = |tenant: Option<&str>| {
        online.token(|r| {
            r.subject = "security".into();
            r.scope = "registry.admin".into();
            r.tenant = tenant.map(str::to_owned);
        })
    };
    let listed = offline_admin.get_bearer("/admin/v1/revocations", &admin_token(None)).unwrap();
    assert_eq!(listed.status, 200, "{listed}");
    let revocations = listed.body["revocations"].as_array().unwrap();
    assert_eq!(revocations.len(), 5, "{listed}");
    assert!(revocations.iter().all(|r| r["source"] == "bundle"), "{listed}");
    let mallory = revocations.iter().find(|r| r["value"] == "mallory").unwrap();
    assert_eq!(mallory["reason"], "left the company");
    let id = mallory["id"].as_str().unwrap();
    let lifted =
        offline_admin.delete_bearer(&format!("/admin/v1/revocations/{id}"), &admin_token(None)).unwrap();
    assert_eq!(lifted.status, 409, "{lifted}");
    assert_eq!(lifted.body["error"], "conflict");
    let message = lifted.body["message"].as_str().unwrap();
    assert!(
        message.contains("carried by the policy bundle (revision 1 from")
            && message.contains("a revision built without it"),
        "{message}"
    );
    let ask = asks.iter().find(|a| a.what == "a revoked subject").unwrap();
    assert_eq!(observed(&offline_client, ask), seen("a revoked subject"), "still refused");
    // An acme administrator sees acme's only: the licence revoked in acme.
    let acme = offline_admin.get_bearer("/admin/v1/revocations", &admin_token(Some("acme"))).unwrap();
    let values: Vec<&Value> =
        acme.body["revocations"].as_array().unwrap().iter().map(|r| &r["value"]).collect();
    assert_eq!(values, ["LIC-0007"], "{acme}");
    // The online instance, whose ledger holds them: its own, to lift.
    let online_listed =
        online_server.admin().get_bearer("/admin/v1/revocations", &admin_token(None)).unwrap();
    let online_revocations = online_listed.body["revocations"].as_array().unwrap();
    assert_eq!(online_revocations.len(), 5, "{online_listed}");
    assert!(online_revocations.iter().all(|r| r["source"] == "ledger"), "{online_listed}");

    // A site that keeps the ledger its kit was built from and serves the kit too: `ledger
    // unrevoke` lifts the ledger's copy and says that the bundle keeps the revocation in force.
    online.reconfigure(|c| {
        c.policy.settings_file = None;
        c.set("policy.bundle", path(&kit)).set("policy.bundle_keys", vec![path(&cert).to_owned()]);
    });
    let id = online_revocations.iter().find(|r| r["value"] == "mallory").unwrap()["id"].as_str().unwrap();
    let lifted = Command::new(BIN).args(["ledger", "unrevoke", id, "--config", &config]).output().unwrap();
    let stderr = String::from_utf8_lossy(&lifted.stderr);
    assert!(lifted.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "note: the policy bundle {} (revision 1) carries this revocation too",
            kit.display()
        )) && stderr.contains("until a revision built without it is applied"),
        "{stderr}"
    );
}

#[test]
fn a_ledger_export_is_deterministic_signed_and_an_edited_line_is_named() {
    let fixture = Fixture::new();
    let root = fixture.root().to_owned();
    let config = path(&fixture.config_path).to_owned();
    // Events without a server: each revocation and lift is one.
    for subject in ["alice", "bob", "carol", "dave"] {
        ok(&[
            "ledger",
            "revoke",
            "--create",
            "--config",
            &config,
            "subject",
            subject,
            "--reason",
            "audit test",
        ]);
    }
    let until = "2100-01-01T00:00:00Z";
    let (first, second) = (root.join("first.jsonl"), root.join("second.jsonl"));
    for out in [&first, &second] {
        ok(&[
            "ledger",
            "export",
            "--config",
            &config,
            "--since",
            "2020-01-01T00:00:00Z",
            "--until",
            until,
            "--out",
            path(out),
        ]);
    }
    assert_eq!(std::fs::read(&first).unwrap(), std::fs::read(&second).unwrap());
    assert_eq!(
        std::fs::read(root.join("first.jsonl.sig")).unwrap(),
        std::fs::read(root.join("second.jsonl.sig")).unwrap(),
        "RS256 over the same lines: the same signature"
    );
    // A kid names the key given to sign with; without one it would be ignored, so it is refused.
    let nowhere = root.join("nowhere.jsonl");
    let said = refused(&["ledger", "export", "--config", &config, "--kid", "mine", "--out", path(&nowhere)]);
    assert!(said.contains("--kid") && said.contains("--key"), "{said}");
    assert!(!nowhere.exists());
    // Bounds the wrong way round (a typo) would sign "no events" for the window: refused.
    let said = refused(&[
        "ledger",
        "export",
        "--config",
        &config,
        "--since",
        until,
        "--until",
        "2020-01-01T00:00:00Z",
        "--out",
        path(&nowhere),
    ]);
    assert!(said.contains("--since (2100-01-01T00:00:00.000Z) is not before until"), "{said}");
    assert!(!nowhere.exists() && !root.join("nowhere.jsonl.sig").exists());
    let exported = std::fs::read_to_string(&first).unwrap();
    let lines: Vec<&str> = exported.lines().collect();
    assert_eq!(lines.len(), 4);
    let mut ids = Vec::new();
    for line in &lines {
        let event: Value = serde_json::from_str(line).unwrap();
        let keys: Vec<&String> = event.as_object().unwrap().keys().collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted, "canonical field order");
        assert_eq!(serde_json::to_string(&event).unwrap(), *line, "compact, sorted keys");
        assert_eq!(event["outcome"], "revocation_created");
        ids.push(event["id"].as_str().unwrap().to_owned());
    }
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "in id order");

    // Verified with the configuration's keys, with the certificate, with the published JWKS.
    let stdout = ok(&["ledger", "verify", "--config", &config, path(&first)]);
    assert!(stdout.contains("4 events") && stdout.ends_with("verified\n"), "{stdout}");
    ok(&[
        "ledger",
        "verify",
        "--config",
        &config,
        "--key",
        path(&root.join("keys/signing-cert.pem")),
        path(&first),
    ]);
    let jwks = root.join("published.jwks");
    ok(&["keys", "export", "--config", &config, "--jwks", path(&jwks)]);
    ok(&["ledger", "verify", "--config", &config, "--jwks", path(&jwks), path(&first)]);

    // An edited line fails with its number; so does a removed one; another key's signature fails.
    let edited = exported.replacen(lines[2], &lines[2].replace("audit test", "audit test!"), 1);
    assert_ne!(edited, exported);
    std::fs::write(&second, &edited).unwrap();
    let message = refused(&["ledger", "verify", "--config", &config, path(&second)]);
    assert!(message.contains("line 3 is not the line that was signed"), "{message}");
    let shortened: String = lines[..3].iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&second, shortened).unwrap();
    let message = refused(&["ledger", "verify", "--config", &config, path(&second)]);
    assert!(message.contains("line 4 is missing"), "{message}");
    let (other, other_cert) = signer(&root.join("other"), "ES256");
    let third = root.join("third.jsonl");
    ok(&[
        "ledger",
        "export",
        "--config",
        &config,
        "--until",
        until,
        "--out",
        path(&third),
        "--key",
        path(&other),
    ]);
    ok(&["ledger", "verify", "--config", &config, "--key", path(&other_cert), path(&third)]);
    let message = refused(&["ledger", "verify", "--config", &config, path(&third)]);
    assert!(message.contains("which is not one of the trusted keys"), "{message}");
}

#[test]
fn a_bundle_and_a_ledger_export_signed_by_a_key_in_softhsm2_verify_with_its_certificate() {
    let fixture = Fixture::new();
    let root = fixture.root().to_owned();
    let conf = test_support::softhsm_token(&root, "bundles", "1234-bundle-pin");
    let pin = root.join("hsm/pin");
    let hsm = |args: &[&str]| {
        let output = Command::new(BIN).env("SOFTHSM2_CONF", &conf).args(args).output().unwrap();
        assert!(output.status.success(), "{args:?}: {}", text(&output.stderr));
        text(&output.stdout)
    };
    let module = test_support::SOFTHSM_MODULE;
    let pkcs11 =
        ["--pkcs11", module, "--token-label", "bundles", "--key-label", "signer", "--pin-file", path(&pin)];
    let keys = root.join("hsm-keys");
    let mut new = vec!["keys", "new", "--algorithm", "ES256", "--dir", path(&keys)];
    new.extend_from_slice(&pkcs11);
    hsm(&new);
    let cert = keys.join("signer.crt");

    let bundle = root.join("b.tar.gz");
    build(&root, &bundle, PLANS, 1, &[]);
    let mut sign = vec!["bundle", "sign"];
    sign.extend_from_slice(&pkcs11);
    sign.push(path(&bundle));
    assert!(hsm(&sign).contains("(ES256)"));
    let stdout = ok(&["bundle", "verify", "--key", path(&cert), path(&bundle)]);
    assert!(stdout.contains("verified: signed by kid"), "{stdout}");

    let config = path(&fixture.config_path).to_owned();
    ok(&["ledger", "revoke", "--create", "--config", &config, "subject", "mallory", "--reason", "hsm test"]);
    let export = root.join("export.jsonl");
    let mut args = vec!["ledger", "export", "--config", &config, "--out", path(&export)];
    args.extend_from_slice(&pkcs11);
    hsm(&args);
    let stdout = ok(&["ledger", "verify", "--config", &config, "--key", path(&cert), path(&export)]);
    assert!(stdout.contains("1 events") && stdout.contains("(ES256): verified"), "{stdout}");

    // The public object under the key's label becomes another key's (a key made again by hand
    // over a leftover public object): the key is refused when opened, and nothing is signed.
    let mut new = vec!["keys", "new", "--algorithm", "ES256", "--dir", path(&keys)];
    new.extend_from_slice(&pkcs11);
    *new.iter_mut().find(|arg| **arg == "signer").unwrap() = "other";
    hsm(&new);
    let other_cert = pem::parse(std::fs::read(keys.join("other.crt")).unwrap()).unwrap();
    let (_, other_cert) = x509_parser::parse_x509_certificate(other_cert.contents()).unwrap();
    let other_public = root.join("other.der");
    std::fs::write(&other_public, other_cert.public_key().raw).unwrap();
    let tool = test_support::require_program("pkcs11-tool", "install it with `apt-get install -y opensc`");
    let pin_text = std::fs::read_to_string(&pin).unwrap();
    for edit in [
        vec!["--delete-object", "--type", "pubkey", "--label", "signer"],
        vec!["--write-object", path(&other_public), "--type", "pubkey", "--label", "signer"],
    ] {
        let output = Command::new(&tool)
            .env("SOFTHSM2_CONF", &conf)
            .args(["--module", module, "--token-label", "bundles", "--login", "--pin", pin_text.trim()])
            .args(&edit)
            .output()
            .unwrap();
        assert!(output.status.success(), "pkcs11-tool {edit:?}: {}", text(&output.stderr));
    }
    let before = std::fs::read(&bundle).unwrap();
    let output = Command::new(BIN).env("SOFTHSM2_CONF", &conf).args(&sign).output().unwrap();
    let said = text(&output.stderr);
    assert!(!output.status.success(), "signed with a key its public object does not match");
    assert!(said.contains("does not verify with the public key of the same label"), "{said}");
    assert_eq!(std::fs::read(&bundle).unwrap(), before, "the bundle is as it was");
}
