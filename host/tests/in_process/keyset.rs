//! The signing key set (`signing.keys`): every invalid set refused with a message naming the entry,
//! the published JWKS and certificate bundle matching the configured keys (kids recomputed here,
//! independently of the service's code), ETag and 304, and a reload that swaps the set atomically
//! or not at all.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::{Fixture, SERVICE, decode, get_basic, libtrust_kid_of, query, send};
use axum::body::Body;
use axum::http::Request;
use jsonwebtoken::jwk::{Jwk, JwkSet, ThumbprintHash};
use jsonwebtoken::{DecodingKey, Validation};
use registry_token::app::Live;
use registry_token::config::Config;
use registry_token::mint::{SigningAlgorithm, keygen};
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use test_support::SigningKey;

/// Generates `NAME.pem`/`NAME.crt` below the fixture's `keys/`.
fn new_key(root: &Path, name: &str, algorithm: SigningAlgorithm) -> (PathBuf, PathBuf) {
    let (key, cert) = (root.join(format!("keys/{name}.pem")), root.join(format!("keys/{name}.crt")));
    keygen::generate_as(&key, &cert, algorithm, 2048).unwrap();
    (key, cert)
}

/// `keys/NAME-FILE.crt`: a certificate of key `NAME`, valid from `from` to `until` seconds from
/// now (either may be negative: in the past).
fn certify(root: &Path, name: &str, file: &str, from: i64, until: i64) -> PathBuf {
    let pem = std::fs::read_to_string(root.join(format!("keys/{name}.pem"))).unwrap();
    let key = rcgen::KeyPair::from_pem(&pem).unwrap();
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
    let at = |offset: i64| {
        let now = std::time::SystemTime::now();
        let by = std::time::Duration::from_secs(offset.unsigned_abs());
        if offset < 0 { now - by } else { now + by }
    };
    params.not_before = at(from).into();
    params.not_after = at(until).into();
    let path = root.join(format!("keys/{name}-{file}.crt"));
    std::fs::write(&path, params.self_signed(&key).unwrap().pem()).unwrap();
    path
}

fn entry(root: &Path, name: &str, status: &str) -> SigningKey {
    SigningKey::files(&root.join(format!("keys/{name}.pem")), &root.join(format!("keys/{name}.crt")), status)
}

/// A fixture whose key set is `keys`, made from keys `a` (RS256), `b` (ES256) and `c` (RS256).
fn fixture_with(keys: impl FnOnce(&Path) -> Vec<SigningKey>) -> Fixture {
    let mut fixture = Fixture::new();
    let root = fixture.root().to_owned();
    new_key(&root, "a", SigningAlgorithm::RS256);
    new_key(&root, "b", SigningAlgorithm::ES256);
    new_key(&root, "c", SigningAlgorithm::RS256);
    let keys = keys(&root);
    fixture.reconfigure(|config| {
        config.signing.key_file = PathBuf::new();
        config.signing.cert_file = None;
        config.signing.keys = keys;
    });
    fixture
}

/// What the service says when it loads the configuration: the first refusal, or `None`.
async fn refusal(fixture: &Fixture) -> Option<String> {
    let config = match Config::load_with_env(&fixture.config_path, Vec::new()) {
        Ok(config) => config,
        Err(error) => return Some(error.to_string()),
    };
    Live::build(config).await.err().map(|e| e.to_string())
}

/// A certificate that expires while the service runs (it was valid at load): the replica says so
/// in `/readyz` — 503, the reason, each key's `certificate_expires` — so that a probe or an alert
/// notices before registries refuse its tokens for long.
#[tokio::test]
async fn an_active_certificate_that_expires_while_serving_makes_the_replica_unready() {
    let fixture = fixture_with(|r| {
        let mut a = entry(r, "a", "active");
        a.cert_file = Some(certify(r, "a", "day", -60, 86_400));
        vec![a, entry(r, "b", "published")]
    });
    let clock = crate::common::TestClock::new();
    let live = Live::build(fixture.config()).await.unwrap();
    let app = std::sync::Arc::new(registry_token::app::App::new(
        live,
        Some(fixture.config_path.clone()),
        clock.clock(),
    ));
    let router = registry_token::http::router(app);
    let ready = get(&router, "/readyz", None).await;
    assert_eq!(ready.status, 200, "{ready}");
    let expires = ready.body["signing"]["keys"][0]["certificate_expires"].as_str().unwrap().to_owned();
    let in_a_day = registry_token::mint::rfc3339(clock.now() + 86_400);
    assert_eq!(expires[..16], in_a_day[..16], "to the minute");
    assert!(ready.body["signing"]["keys"][1]["certificate_expires"].as_str().unwrap() > in_a_day.as_str());

    clock.advance(86_400 + 60);
    let ready = get(&router, "/readyz", None).await;
    assert_eq!(ready.status, 503, "{ready}");
    assert_eq!(
        (ready.body["ready"].as_bool(), ready.body["signing"]["ready"].as_bool()),
        (Some(false), Some(false))
    );
    let error = ready.body["signing"]["error"].as_str().unwrap();
    assert!(
        error.starts_with(&format!("the active key's certificate expired at {expires}: registries refuse")),
        "{error}"
    );
}

/// `fixture`'s key set replaced by `keys`, and `app` reloaded on it.
async fn reload(fixture: &mut Fixture, app: &registry_token::app::App, keys: Vec<SigningKey>) {
    fixture.reconfigure(|c| c.signing.keys = keys);
    app.reload().await.unwrap();
}

/// The steps of a rotation that make registries refuse tokens are applied (an operator replacing
/// a compromised key does them on purpose) but said, in the log and in `/readyz`'s
/// `signing.warnings`: a new active key never published, the key active until then removed, a
/// retired key past its `retire_after`. A rotation done in order says nothing.
#[tokio::test]
async fn rotation_steps_that_registries_would_refuse_are_warned_about() {
    let mut fixture = fixture_with(|r| vec![entry(r, "a", "active")]);
    let root = fixture.root().to_owned();
    let app = fixture.service().await;
    let router = registry_token::http::router(app.clone());
    let kid = |name: &str| libtrust_kid_of(&root.join(format!("keys/{name}.crt")));
    let warnings = || {
        let router = router.clone();
        async move {
            let ready = get(&router, "/readyz", None).await;
            let list =
                ready.body["signing"]["warnings"].as_array().unwrap_or_else(|| panic!("{ready}")).clone();
            list.into_iter().map(|w| w.as_str().unwrap().to_owned()).collect::<Vec<_>>()
        }
    };
    assert_eq!(warnings().await, Vec::<String>::new());

    let none = Vec::<String>::new();
    let retired = |name: &str, after: String| {
        let mut key = entry(&root, name, "retired");
        key.retire_after = Some(after);
        key
    };

    // b published first, then made active with a retired with a retire_after already past: a
    // stops being published at once.
    reload(&mut fixture, &app, vec![entry(&root, "a", "active"), entry(&root, "b", "published")]).await;
    assert_eq!(warnings().await, none);
    reload(
        &mut fixture,
        &app,
        vec![entry(&root, "b", "active"), retired("a", "2020-01-01T00:00:00Z".into())],
    )
    .await;
    assert_eq!(
        warnings().await,
        [format!(
            "retired key {} is past its retire_after (2020-01-01T00:00:00Z): this reload stopped publishing \
             it, and tokens it signed no longer verify against the published keys",
            kid("a")
        )]
    );
    // Left listed past its retire_after (the rotation's last step pending), it is not news.
    reload(
        &mut fixture,
        &app,
        vec![entry(&root, "b", "active"), retired("a", "2020-01-01T00:00:00Z".into())],
    )
    .await;
    assert_eq!(warnings().await, none);

    // c made active at once, b dropped.
    reload(&mut fixture, &app, vec![entry(&root, "c", "active")]).await;
    let said = warnings().await;
    assert_eq!(said.len(), 2, "{said:?}");
    assert!(
        said[0].starts_with(&format!("the new active key {} was not published before this reload", kid("c")))
    );
    assert!(said[1].starts_with(&format!("the key active until this reload, {}, was removed", kid("b"))));

    // In order: b published, then b active and c retired for an hour.
    reload(&mut fixture, &app, vec![entry(&root, "c", "active"), entry(&root, "b", "published")]).await;
    assert_eq!(warnings().await, none);
    let later = registry_token::mint::rfc3339(registry_token::app::system_clock()() + 3600);
    reload(&mut fixture, &app, vec![entry(&root, "b", "active"), retired("c", later)]).await;
    assert_eq!(warnings().await, none);
}

#[tokio::test]
async fn every_invalid_key_set_is_refused_with_a_message_naming_the_entry() {
    let in_an_hour = registry_token::mint::rfc3339(registry_token::app::system_clock()() + 3600);
    type Edit = Box<dyn FnOnce(&Path) -> Vec<SigningKey>>;
    let cases: Vec<(&str, Edit, Vec<String>)> = vec![
        (
            "two active keys",
            Box::new(|r| vec![entry(r, "a", "active"), entry(r, "b", "active")]),
            vec![
                "signing.keys[0]".into(),
                "signing.keys[1]".into(),
                "are all active; exactly one may be".into(),
            ],
        ),
        (
            "no active key",
            Box::new(|r| vec![entry(r, "a", "published"), entry(r, "b", "published")]),
            vec!["signing.keys: no key is active".into()],
        ),
        (
            "a published key without a certificate",
            Box::new(|r| {
                let mut b = entry(r, "b", "published");
                b.cert_file = None;
                vec![entry(r, "a", "active"), b]
            }),
            vec!["signing.keys[1]".into(), "b.pem".into(), "a published key needs cert_file".into()],
        ),
        (
            "a retired key without retire_after",
            Box::new(|r| {
                let mut c = entry(r, "c", "retired");
                c.key_file = None;
                vec![entry(r, "a", "active"), c]
            }),
            vec!["signing.keys[1]".into(), "c.crt".into(), "a retired key needs retire_after".into()],
        ),
        (
            "a key with another key's certificate",
            Box::new(|r| {
                let mut a = entry(r, "a", "active");
                a.cert_file = Some(r.join("keys/c.crt"));
                vec![a]
            }),
            vec!["signing.keys[0]".into(), "a.pem".into(), "its certificate is for another key".into()],
        ),
        (
            "a world-readable key file",
            Box::new(|r| {
                std::fs::set_permissions(r.join("keys/b.pem"), std::fs::Permissions::from_mode(0o644))
                    .unwrap();
                vec![entry(r, "a", "active"), entry(r, "b", "published")]
            }),
            vec!["signing.keys[1]".into(), "b.pem".into(), "readable by group or others (mode 644)".into()],
        ),
        (
            "a world-readable PIN file",
            Box::new(|r| {
                let pin = r.join("hsm-pin");
                std::fs::write(&pin, "1234\n").unwrap();
                std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o604)).unwrap();
                let hsm = SigningKey {
                    pkcs11: Some(test_support::Pkcs11Key {
                        module: "/usr/lib/softhsm/libsofthsm2.so".into(),
                        token_label: "registry-token".into(),
                        key_label: "signing".into(),
                        pin_file: pin,
                    }),
                    cert_file: Some(r.join("keys/a.crt")),
                    status: "active".into(),
                    ..SigningKey::default()
                };
                vec![hsm]
            }),
            vec![
                "signing.keys[0] (pkcs11 registry-token/signing)".into(),
                "the PIN file".into(),
                "readable by group or others (mode 604)".into(),
            ],
        ),
        (
            "retire_after on an active key",
            Box::new(move |r| {
                let mut a = entry(r, "a", "active");
                a.retire_after = Some(in_an_hour);
                vec![a]
            }),
            vec!["signing.keys[0]".into(), "retire_after is for retired keys only".into()],
        ),
        (
            "an active key whose certificate expired",
            Box::new(|r| {
                let mut a = entry(r, "a", "active");
                a.cert_file = Some(certify(r, "a", "expired", -30 * 86_400, -86_400));
                vec![a]
            }),
            vec![
                "signing.keys[0]".into(),
                "its certificate".into(),
                "a-expired.crt expired at".into(),
                "registries refuse every token whose x5c carries it".into(),
            ],
        ),
        (
            "an active key whose certificate is not valid yet",
            Box::new(|r| {
                let mut a = entry(r, "a", "active");
                a.cert_file = Some(certify(r, "a", "early", 86_400, 30 * 86_400));
                vec![a]
            }),
            vec!["signing.keys[0]".into(), "a-early.crt is not valid until".into()],
        ),
    ];
    for (name, keys, expected) in cases {
        let fixture = fixture_with(keys);
        let refused = refusal(&fixture).await.unwrap_or_else(|| panic!("{name}: the set was accepted"));
        for part in &expected {
            assert!(refused.contains(part.as_str()), "{name}: {refused:?} should say {part:?}");
        }
    }

    // A key that signs nothing new may keep an expired certificate (it is only warned about).
    let fixture = fixture_with(|r| {
        let mut c = entry(r, "c", "published");
        c.cert_file = Some(certify(r, "c", "expired", -30 * 86_400, -86_400));
        vec![entry(r, "a", "active"), c]
    });
    assert_eq!(refusal(&fixture).await, None);

    // signing.algorithm is the single key's: beside a key set it is not used (each entry signs
    // with what its key is), and the service says so at load instead of ignoring it silently.
    let mut fixture = fixture_with(|r| vec![entry(r, "a", "active"), entry(r, "b", "published")]);
    let config = Config::load_with_env(&fixture.config_path, Vec::new()).unwrap();
    assert_eq!(config.signing.unused_algorithm(), None);
    fixture.reconfigure(|config| config.signing.algorithm = Some("ES256".into()));
    assert_eq!(refusal(&fixture).await, None, "a configuration that worked before still loads");
    let config = Config::load_with_env(&fixture.config_path, Vec::new()).unwrap();
    let warning = config.signing.unused_algorithm().expect("no warning for signing.algorithm beside keys");
    assert!(warning.contains("signing.algorithm (ES256) is not used with signing.keys"), "{warning}");
    let live = Live::build(config).await.unwrap();
    assert_eq!(live.keys.minter().signer().algorithm().name(), "RS256", "key a is an RSA key");
}

fn cert_der(path: &Path) -> Vec<u8> {
    pem::parse(std::fs::read(path).unwrap()).unwrap().into_contents()
}

async fn get(router: &axum::Router, path: &str, if_none_match: Option<&str>) -> test_support::Reply {
    let mut request = Request::get(path);
    if let Some(tag) = if_none_match {
        request = request.header("if-none-match", tag);
    }
    send(router, request.body(Body::empty()).unwrap()).await
}

#[tokio::test]
async fn the_published_sets_are_the_configured_keys_and_tokens_verify_with_them() {
    let now = registry_token::app::system_clock()();
    let later = registry_token::mint::rfc3339(now + 3600);
    let past = registry_token::mint::rfc3339(now - 60);
    let mut gone = None;
    let fixture = fixture_with(|r| {
        // a's certificate file holds a chain: its own certificate, then its issuer's (a CA).
        let ca = rcgen::generate_simple_self_signed(vec!["registry-token test CA".to_owned()]).unwrap();
        let mut chain = std::fs::read_to_string(r.join("keys/a.crt")).unwrap();
        chain.push_str(&ca.cert.pem());
        std::fs::write(r.join("keys/a.crt"), chain).unwrap();
        // d: retired and past its retire_after, so no longer published.
        new_key(r, "d", SigningAlgorithm::RS256);
        gone = Some(r.join("keys/d.crt"));
        let retired = |name: &str, after: &str| SigningKey {
            cert_file: Some(r.join(format!("keys/{name}.crt"))),
            status: "retired".into(),
            retire_after: Some(after.to_owned()),
            ..SigningKey::default()
        };
        vec![entry(r, "a", "active"), entry(r, "b", "published"), retired("c", &later), retired("d", &past)]
    });
    let root = fixture.root();
    let router = fixture.router().await;

    let reply = get(&router, "/.well-known/jwks.json", None).await;
    assert_eq!(reply.status, 200, "{reply}");
    assert_eq!(reply.headers["content-type"], "application/json");
    let set: JwkSet = serde_json::from_value(reply.body.clone()).unwrap();
    assert_eq!(
        set.keys.len(),
        3,
        "active, published, and the retired key before its retire_after: {}",
        reply.body
    );
    let published: Vec<&str> = ["a", "b", "c"].to_vec();
    for (jwk, name) in set.keys.iter().zip(&published) {
        let raw = reply.body["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == jwk.common.key_id.clone().unwrap());
        let raw = raw.unwrap();
        // The kid is the RFC 7638 thumbprint, as jsonwebtoken computes it.
        assert_eq!(
            jwk.common.key_id.as_deref(),
            Some(jwk.thumbprint(ThumbprintHash::SHA256).unwrap().as_str())
        );
        assert_eq!(raw["use"], "sig");
        let cert = root.join(format!("keys/{name}.crt"));
        assert_eq!(
            raw["x5c"][0].as_str().unwrap(),
            data_encoding::BASE64.encode(&cert_der(&cert)),
            "x5c of {name} is its certificate"
        );
        assert_eq!(raw["alg"], if *name == "b" { "ES256" } else { "RS256" });
        let chain = raw["x5c"].as_array().unwrap().len();
        assert_eq!(chain, if *name == "a" { 2 } else { 1 }, "x5c of {name} is its chain");
    }

    let certs = get(&router, "/certs.pem", None).await;
    assert_eq!(certs.status, 200);
    let bundle: Vec<Vec<u8>> =
        pem::parse_many(certs.text.as_bytes()).unwrap().into_iter().map(|p| p.into_contents()).collect();
    let expected: Vec<Vec<u8>> =
        published.iter().map(|n| cert_der(&root.join(format!("keys/{n}.crt")))).collect();
    // Never the rest of a chain: a CA in a registry's rootcertbundle would make every key it signed
    // a signer of tokens.
    assert_eq!(bundle, expected, "the bundle holds exactly the published keys' own certificates");
    assert!(!bundle.contains(&cert_der(&gone.unwrap())), "a key past retire_after is not published");

    // A token from the active key carries its libtrust kid and verifies with its published JWK.
    let token = fixture.token(|_| {});
    let reply = get_basic(&router, &query(SERVICE, &["repository:team/app:pull"]), &token).await;
    let token = reply.body["token"].as_str().unwrap();
    let (header, _) = decode(token);
    assert_eq!(header["kid"], libtrust_kid_of(&root.join("keys/a.crt")));
    let active: &Jwk = &set.keys[0];
    let mut validation = Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[SERVICE]);
    jsonwebtoken::decode::<Value>(token, &DecodingKey::from_jwk(active).unwrap(), &validation)
        .expect("the token verifies with the active key's published JWK");
}

#[tokio::test]
async fn the_sets_are_cacheable_with_an_etag_and_304() {
    let fixture = fixture_with(|r| vec![entry(r, "a", "active"), entry(r, "b", "published")]);
    let router = fixture.router().await;
    for path in ["/.well-known/jwks.json", "/certs.pem"] {
        let first = get(&router, path, None).await;
        let tag = first.headers["etag"].to_str().unwrap().to_owned();
        assert!(tag.starts_with('"') && tag.len() > 10, "{path}: a strong ETag, got {tag}");
        assert_eq!(
            first.headers["cache-control"], "public, max-age=60",
            "{path}: a fifth of the 300 s lifetime"
        );
        let again = get(&router, path, Some(&tag)).await;
        assert_eq!(again.status, 304, "{path}");
        assert!(again.text.is_empty());
        assert_eq!(again.headers["etag"], tag.as_str());
        let other = get(&router, path, Some("\"something-else\"")).await;
        assert_eq!(other.status, 200, "{path}: another tag gets the document");
    }
}

#[tokio::test]
async fn a_reload_swaps_the_set_whole_or_keeps_the_old_one() {
    let mut fixture = fixture_with(|r| vec![entry(r, "a", "active"), entry(r, "b", "published")]);
    let root = fixture.root().to_owned();
    let app = fixture.service().await;
    let router = registry_token::http::router(app.clone());
    let kid_of_token = |router: axum::Router, token: String| async move {
        let reply = get_basic(&router, &query(SERVICE, &["repository:team/app:pull"]), &token).await;
        decode(reply.body["token"].as_str().unwrap()).0["kid"].as_str().unwrap().to_owned()
    };
    let token = fixture.token(|_| {});
    let a_kid = libtrust_kid_of(&root.join("keys/a.crt"));
    assert_eq!(kid_of_token(router.clone(), token.clone()).await, a_kid);
    let jwks_before = get(&router, "/.well-known/jwks.json", None).await;

    // Half a rotation (b promoted, a still active) is refused; a keeps signing, nothing changed.
    fixture.reconfigure(|c| c.signing.keys = vec![entry(&root, "a", "active"), entry(&root, "b", "active")]);
    let refused = app.reload().await.unwrap_err().to_string();
    assert!(refused.contains("are all active"), "{refused}");
    assert_eq!(kid_of_token(router.clone(), token.clone()).await, a_kid);
    assert_eq!(get(&router, "/.well-known/jwks.json", None).await.body, jwks_before.body);

    // A set with an unreadable entry is refused whole too.
    fixture.reconfigure(|c| {
        c.signing.keys = vec![
            entry(&root, "b", "active"),
            SigningKey::files(&root.join("keys/missing.pem"), &root.join("keys/a.crt"), "published"),
        ]
    });
    let refused = app.reload().await.unwrap_err().to_string();
    assert!(refused.contains("signing.keys[1]") && refused.contains("missing.pem"), "{refused}");
    assert_eq!(kid_of_token(router.clone(), token.clone()).await, a_kid);

    // The promotion: b active, a retired for an hour. New tokens carry b's kid (ES256); a stays
    // published, so tokens it signed keep verifying.
    let later = registry_token::mint::rfc3339(registry_token::app::system_clock()() + 3600);
    fixture.reconfigure(|c| {
        let mut a = entry(&root, "a", "retired");
        a.key_file = None;
        a.retire_after = Some(later);
        c.signing.keys = vec![entry(&root, "b", "active"), a];
    });
    app.reload().await.unwrap();
    let token_b = get_basic(&router, &query(SERVICE, &["repository:team/app:pull"]), &token).await;
    let (header, _) = decode(token_b.body["token"].as_str().unwrap());
    assert_eq!(header["kid"], libtrust_kid_of(&root.join("keys/b.crt")));
    assert_eq!(header["alg"], "ES256");
    let jwks = get(&router, "/.well-known/jwks.json", None).await;
    assert_ne!(jwks.headers["etag"], jwks_before.headers["etag"], "a new set has a new ETag");
    let statuses: Vec<&str> =
        jwks.body["keys"].as_array().unwrap().iter().map(|k| k["alg"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["ES256", "RS256"]);
}
