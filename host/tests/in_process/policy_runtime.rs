//! The policy runtime against real guests built from source: the default plan catalogue and a
//! hostile guest, built against both contract versions (0.1.0 as released, and 0.2.0). Every
//! fault must be typed, must not produce a grant, and must leave the runtime able to serve the
//! next request.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use registry_token::access::{Caller, Resource};
use registry_token::policy::{BUILTIN_PLAN_CATALOGUE, Contract, Decision, Fault, Limits, LoadError, Policy};
use std::time::{Duration, Instant};

/// The hostile guest of each contract version.
const HOSTILE: [(Contract, &str); 2] = [
    (Contract::V0_1, test_support::HOSTILE_GUEST_WASM),
    (Contract::V0_2, test_support::HOSTILE_GUEST_V0_2_WASM),
];

fn caller(plan: &str) -> Caller {
    Caller {
        subject: "alice".into(),
        client_id: Some("ci".into()),
        tenant: Some("acme".into()),
        plan: Some(plan.into()),
        license: Some("LIC-0001".into()),
        scopes: vec!["registry.token.issue".into()],
        claims_json: r#"{"sub":"alice"}"#.into(),
    }
}

async fn hostile() -> Policy {
    hostile_of(Contract::V0_1, 0).await
}

/// The hostile guest built against `contract`, remembering decisions in `cache` KiB.
async fn hostile_of(contract: Contract, cache: usize) -> Policy {
    let wasm = HOSTILE.iter().find(|(c, _)| *c == contract).unwrap().1;
    let module = std::fs::read(wasm).unwrap();
    let policy = Policy::load(&module, "hostile", "{}", Limits::default(), cache).await.unwrap();
    assert_eq!(policy.contract(), contract, "{wasm} is built against the contract it says");
    policy
}

fn granted(decision: &Decision) -> Vec<String> {
    match decision {
        Decision::Grant { resources, .. } => resources.iter().map(ToString::to_string).collect(),
        Decision::Deny { reason, .. } => panic!("denied: {reason}"),
    }
}

/// The shared plan catalogue, as the JSON the service hands the policy.
fn plans() -> String {
    test_support::as_json(test_support::PLANS)
}

#[tokio::test]
async fn the_builtin_catalogue_decides() {
    let policy =
        Policy::load(BUILTIN_PLAN_CATALOGUE, "builtin", &plans(), Limits::default(), 0).await.unwrap();
    assert!(policy.digest().starts_with("sha256:"));
    let asked = [Resource::new("repository", "team/app", &["pull", "push", "delete"])];
    let decision = policy.evaluate(&caller("team"), "registry.local", &asked, 0).await.unwrap();
    assert_eq!(granted(&decision), ["repository:team/app:pull,push"]);

    let mut revoked = caller("team");
    revoked.license = Some("LIC-0002".into());
    match policy.evaluate(&revoked, "registry.local", &asked, 0).await.unwrap() {
        Decision::Deny { reason, message, .. } => {
            assert_eq!(reason, "licence-revoked");
            assert!(message.contains("LIC-0002"), "{message}");
        }
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[tokio::test]
async fn invalid_settings_never_go_live() {
    let error = Policy::load(
        BUILTIN_PLAN_CATALOGUE,
        "builtin",
        r#"{"plans": {"x": [{"repositories": ["a//b"], "actions": ["pull"]}]}}"#,
        Limits::default(),
        0,
    )
    .await
    .unwrap_err();
    match error {
        LoadError::Settings { reason, .. } => assert!(reason.contains("plans.x[0]"), "{reason}"),
        other => panic!("expected a settings error, got {other}"),
    }
}

/// Runs a hostile request, checks the fault, then proves the same runtime still serves.
async fn fault_then_recover(policy: &Policy, name: &str) -> Fault {
    let asked = [Resource::new("repository", name, &["pull"])];
    let fault = policy.evaluate(&caller("team"), "registry.local", &asked, 0).await.unwrap_err();
    let good = [Resource::new("repository", "team/app", &["pull"])];
    let next = policy.evaluate(&caller("team"), "registry.local", &good, 0).await.unwrap();
    assert_eq!(granted(&next), ["repository:team/app:pull"], "after {name}");
    fault
}

#[tokio::test]
async fn an_endless_loop_is_stopped_by_the_deadline() {
    for (contract, _) in HOSTILE {
        let policy = hostile_of(contract, 0).await;
        let started = Instant::now();
        let fault = fault_then_recover(&policy, "hostile/loop").await;
        assert_eq!(fault, Fault::Deadline(Duration::from_millis(50)), "{contract}");
        // The deadline, the epoch tick and a second evaluation, with room for a loaded machine.
        assert!(started.elapsed() < Duration::from_millis(400), "{contract}: took {:?}", started.elapsed());
    }
}

#[tokio::test]
async fn a_guest_waiting_in_the_host_is_stopped_by_the_deadline() {
    // `std::thread::sleep` in a guest is a WASI poll on a timer: no epoch check runs while it
    // waits, so the wall-clock deadline has to stop it (the guest asks for 30 s).
    let policy = hostile().await;
    let started = Instant::now();
    let fault = fault_then_recover(&policy, "hostile/sleep").await;
    assert_eq!(fault, Fault::Deadline(Duration::from_millis(50)));
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn a_memory_bomb_hits_the_cap() {
    for (contract, _) in HOSTILE {
        let policy = hostile_of(contract, 0).await;
        assert_eq!(
            fault_then_recover(&policy, "hostile/bomb").await,
            Fault::Memory(16 * 1024 * 1024),
            "{contract}"
        );
    }
}

/// Handles a guest holds live in the host's memory, outside its memory cap: one that takes them
/// without end is stopped at a thousand, with a message that says so (before, at wasmtime's
/// store-wide 100,000, with "store handle limit exceeded").
#[tokio::test]
async fn a_guest_hoarding_host_handles_is_stopped_at_the_cap() {
    for (contract, _) in HOSTILE {
        let policy = hostile_of(contract, 0).await;
        match fault_then_recover(&policy, "hostile/handles").await {
            Fault::Trap(message) => {
                assert!(message.contains("more than 1024 host handles"), "{contract}: {message}")
            }
            other => panic!("{contract}: expected a trap at the handle cap, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_panic_is_a_fault_with_its_message() {
    for (contract, _) in HOSTILE {
        let policy = hostile_of(contract, 0).await;
        match fault_then_recover(&policy, "hostile/panic").await {
            Fault::Panic(message) => assert!(message.contains("panicked on purpose"), "{message}"),
            other => panic!("{contract}: expected a panic, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn granting_more_than_requested_is_a_fault() {
    for (contract, _) in HOSTILE {
        let policy = hostile_of(contract, 0).await;
        assert_eq!(
            fault_then_recover(&policy, "hostile/overgrant").await,
            Fault::Overgrant("repository:secret/app".into()),
            "{contract}"
        );
        match fault_then_recover(&policy, "hostile/extra-action").await {
            Fault::Overgrant(what) => assert!(what.contains("\"delete\""), "{what}"),
            other => panic!("{contract}: expected an overgrant, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn annotations_beyond_the_bounds_are_faults() {
    let policy = hostile_of(Contract::V0_2, 0).await;
    for (name, problem) in [
        ("hostile/many-annotations", "at most 8 annotations, got 9"),
        (
            "hostile/bad-annotation-key",
            "annotation key must be 1 to 64 characters of [a-z0-9._-], got \"Not Ok\"",
        ),
        ("hostile/long-annotation", "annotation \"k\" has 257 bytes; at most 256"),
        ("hostile/repeated-annotation", "annotation \"k\" is given twice"),
    ] {
        let fault = fault_then_recover(&policy, name).await;
        assert_eq!(fault.kind(), "malformed", "{name}: {fault}");
        assert!(fault.to_string().contains(problem), "{name}: {fault}");
    }
    // A 0.1.0 guest cannot carry annotations at all: the same requests are plain grants.
    let old = hostile_of(Contract::V0_1, 0).await;
    let asked = [Resource::new("repository", "hostile/many-annotations", &["pull"])];
    let decision = old.evaluate(&caller("team"), "s", &asked, 0).await.unwrap();
    assert_eq!(decision.annotations(), &Vec::<(String, String)>::new());
    assert_eq!(granted(&decision), ["repository:hostile/many-annotations:pull"]);
}

#[tokio::test]
async fn a_grant_carries_the_lifetime_a_new_guest_asks_for() {
    let policy = hostile_of(Contract::V0_2, 0).await;
    let lifetime = |decision: Decision| match decision {
        Decision::Grant { lifetime_seconds, .. } => lifetime_seconds,
        other => panic!("{other:?}"),
    };
    // The guest picks by the number of actions asked; the host clamps later, when it mints.
    for (actions, expected) in
        [(&["pull"][..], u32::MAX), (&["pull", "push"][..], 0), (&["pull", "push", "delete"][..], 120)]
    {
        let asked = [Resource::new("repository", "hostile/lifetime", actions)];
        let decision = policy.evaluate(&caller("team"), "s", &asked, 0).await.unwrap();
        assert_eq!(lifetime(decision), Some(expected));
    }
    let old = hostile_of(Contract::V0_1, 0).await;
    let asked = [Resource::new("repository", "hostile/lifetime", &["pull"])];
    assert_eq!(lifetime(old.evaluate(&caller("team"), "s", &asked, 0).await.unwrap()), None);
}

#[tokio::test]
async fn the_request_time_reaches_new_guests_and_keys_their_cached_decisions() {
    let note = |decision: Decision| match decision {
        Decision::Grant { note, .. } => note.unwrap_or_default(),
        other => panic!("{other:?}"),
    };
    let time = [Resource::new("repository", "hostile/time", &["pull"])];
    let new = hostile_of(Contract::V0_2, 64).await;
    assert_eq!(note(new.evaluate(&caller("team"), "s", &time, 1_234).await.unwrap()), "time=1234");
    assert_eq!(note(new.evaluate(&caller("team"), "s", &time, 1_235).await.unwrap()), "time=1235");
    assert_eq!(note(new.evaluate(&caller("team"), "s", &time, 1_234).await.unwrap()), "time=1234");
    assert_eq!(new.cached_decisions().0, 2, "one decision per second it was asked at");

    // A 0.1.0 guest has no time to see; its decision holds whatever the time.
    let old = hostile_of(Contract::V0_1, 64).await;
    assert_eq!(note(old.evaluate(&caller("team"), "s", &time, 1_234).await.unwrap()), "time=0");
    assert_eq!(note(old.evaluate(&caller("team"), "s", &time, 1_235).await.unwrap()), "time=0");
    assert_eq!(old.cached_decisions().0, 1);
}

#[tokio::test]
async fn malformed_answers_are_faults() {
    for (contract, _) in HOSTILE {
        let policy = hostile_of(contract, 0).await;
        for name in ["hostile/huge-message", "hostile/huge-grant", "hostile/bad-reason"] {
            let fault = fault_then_recover(&policy, name).await;
            assert_eq!(fault.kind(), "malformed", "{contract} {name}: {fault}");
        }
        // An answer larger than the host copies out (here one 5 MiB note: overlapping strings
        // could make it any size) is refused while it is copied, not after.
        let fault = fault_then_recover(&policy, "hostile/flood").await;
        assert_eq!(
            fault,
            Fault::Malformed("the answer is larger than the 4 MiB the host copies out of a policy".into()),
            "{contract}"
        );
    }
}

#[tokio::test]
async fn every_request_gets_a_fresh_instance() {
    let policy = hostile().await;
    let asked = [Resource::new("repository", "hostile/count", &["pull"])];
    for _ in 0..3 {
        match policy.evaluate(&caller("team"), "s", &asked, 0).await.unwrap() {
            Decision::Grant { note, .. } => assert_eq!(note.as_deref(), Some("evaluations=1")),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn guests_see_no_clock_environment_or_files() {
    let policy = hostile().await;
    let asked = [Resource::new("repository", "hostile/clock", &["pull"])];
    match policy.evaluate(&caller("team"), "s", &asked, 0).await.unwrap() {
        Decision::Grant { note, .. } => assert_eq!(note.as_deref(), Some("now=0 env=0 file=false")),
        other => panic!("{other:?}"),
    }
}

/// A policy may grow its memory while it configures, up to `policy.memory_mib`: past wasmtime's
/// default 128 MiB of hostcall fuel too, the snapshot reads the whole memory back.
#[tokio::test]
async fn a_configured_memory_past_128_mib_is_snapshotted() {
    let module = std::fs::read(test_support::HOSTILE_GUEST_WASM).unwrap();
    let limits = Limits { memory_bytes: 256 << 20, ..Limits::default() };
    let policy = Policy::load(&module, "h", r#"{"configure": "grow"}"#, limits, 0).await.unwrap();
    let asked = [Resource::new("repository", "team/app", &["pull"])];
    let decision = policy.evaluate(&caller("team"), "s", &asked, 0).await.unwrap();
    assert_eq!(granted(&decision), ["repository:team/app:pull"]);
}

#[tokio::test]
async fn hostile_configure_is_refused_at_load() {
    let module = std::fs::read(test_support::HOSTILE_GUEST_WASM).unwrap();
    let refused =
        Policy::load(&module, "h", r#"{"refuse": "bad settings here"}"#, Limits::default(), 0).await;
    assert!(matches!(refused, Err(LoadError::Settings { ref reason, .. }) if reason == "bad settings here"));

    let limits = Limits { timeout: Duration::from_millis(10), ..Limits::default() };
    // configure gets max(20 × 10 ms, 2 s), and the error says so (not the request's 10 ms);
    // the guest would loop or sleep for ever.
    match Policy::load(&module, "h", r#"{"configure": "loop"}"#, limits, 0).await {
        Err(LoadError::Configure { fault: Fault::Deadline(limit), .. }) => {
            assert_eq!(limit, Duration::from_secs(2))
        }
        other => panic!("expected a configure deadline, got {other:?}"),
    }
    let started = Instant::now();
    match Policy::load(&module, "h", r#"{"configure": "sleep"}"#, limits, 0).await {
        Err(LoadError::Configure { fault: Fault::Deadline(limit), .. }) => {
            assert_eq!(limit, Duration::from_secs(2))
        }
        other => panic!("expected a configure deadline, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    match Policy::load(&module, "h", r#"{"configure": "panic"}"#, limits, 0).await {
        Err(LoadError::Configure { fault: Fault::Panic(message), .. }) => {
            assert!(message.contains("while configuring"), "{message}")
        }
        other => panic!("expected a configure panic, got {other:?}"),
    }
}

#[tokio::test]
async fn a_component_of_another_world_is_refused_at_load() {
    let module = std::fs::read(test_support::WRONG_WORLD_GUEST_WASM).unwrap();
    let error = Policy::load(&module, "wrong.wasm", "{}", Limits::default(), 0).await.unwrap_err();
    assert!(matches!(error, LoadError::World { .. }), "{error}");
    let message = error.to_string();
    assert!(message.contains("wrong.wasm"), "{message}");
    assert!(message.contains("policy@0.2.0 or stellaops:registry-policy/policy@0.1.0"), "{message}");

    let error = Policy::load(b"not wasm at all", "junk.wasm", "{}", Limits::default(), 0).await.unwrap_err();
    assert!(matches!(error, LoadError::Compile { .. }), "{error}");
}

#[tokio::test]
async fn the_decision_cache_answers_only_the_exact_same_request() {
    let policy =
        Policy::load(BUILTIN_PLAN_CATALOGUE, "builtin", &plans(), Limits::default(), 64).await.unwrap();
    let asked = [Resource::new("repository", "team/app", &["pull", "push"])];
    let team = caller("team");
    assert_eq!(
        granted(&policy.evaluate(&team, "registry.local", &asked, 0).await.unwrap()),
        ["repository:team/app:pull,push"]
    );
    // Same subject, another plan: not the cached answer.
    assert!(
        granted(&policy.evaluate(&caller("gold"), "registry.local", &asked, 0).await.unwrap()).is_empty()
    );
    // Same plan, another claim the guest can read (the licence): not the cached answer either.
    let mut revoked = caller("team");
    revoked.license = Some("LIC-0002".into());
    assert!(matches!(
        policy.evaluate(&revoked, "registry.local", &asked, 0).await.unwrap(),
        Decision::Deny { .. }
    ));
    // Another resource, another service: evaluated, not looked up.
    let other = [Resource::new("repository", "team/other", &["pull"])];
    assert_eq!(
        granted(&policy.evaluate(&team, "registry.local", &other, 0).await.unwrap()),
        ["repository:team/other:pull"]
    );
    // Four distinct requests, four entries; the first one again is answered from its entry.
    assert_eq!(policy.cached_decisions().0, 4);
    assert_eq!(
        granted(&policy.evaluate(&team, "registry.local", &asked, 0).await.unwrap()),
        ["repository:team/app:pull,push"]
    );
    assert_eq!(policy.cached_decisions().0, 4);
}

#[tokio::test]
async fn faults_are_never_cached() {
    let module = std::fs::read(test_support::HOSTILE_GUEST_WASM).unwrap();
    let policy = Policy::load(&module, "hostile", "{}", Limits::default(), 64).await.unwrap();
    let asked = [Resource::new("repository", "hostile/panic", &["pull"])];
    for _ in 0..2 {
        let fault = policy.evaluate(&caller("team"), "s", &asked, 0).await.unwrap_err();
        assert_eq!(fault.kind(), "panic");
    }
    assert_eq!(policy.cached_decisions().0, 0, "a fault was remembered");
    // The control: an answer is.
    let fine = [Resource::new("repository", "team/app", &["pull"])];
    policy.evaluate(&caller("team"), "s", &fine, 0).await.unwrap();
    assert_eq!(policy.cached_decisions().0, 1);
}

#[tokio::test]
async fn the_decision_cache_is_bounded_in_bytes_not_only_entries() {
    let policy =
        Policy::load(BUILTIN_PLAN_CATALOGUE, "builtin", &plans(), Limits::default(), 64).await.unwrap();
    // Small requests: one KiB of capacity each.
    for n in 0..32 {
        let asked = [Resource::new("repository", &format!("team/app{n}"), &["pull"])];
        policy.evaluate(&caller("team"), "registry.local", &asked, 0).await.unwrap();
    }
    assert_eq!(policy.cached_decisions(), (32, 32));
    // Callers with 8 KiB of claims each: every entry weighs at least 8, so at most 8 fit.
    for n in 0..40 {
        let mut big = caller("team");
        big.claims_json = format!(r#"{{"sub":"alice","padding":"{}","n":{n}}}"#, "x".repeat(8 * 1024));
        let asked = [Resource::new("repository", "team/app", &["pull"])];
        policy.evaluate(&big, "registry.local", &asked, 0).await.unwrap();
    }
    let (entries, kib) = policy.cached_decisions();
    assert!(kib <= 64, "{kib} KiB remembered, capacity 64");
    // At most 8 of those and the 32 small ones (an entry count alone would have kept 64).
    assert!(entries <= 40, "{entries} entries");
}

#[tokio::test]
async fn the_decision_cache_counts_notes_and_messages_against_its_bound() {
    let module = std::fs::read(test_support::HOSTILE_GUEST_WASM).unwrap();
    let policy = Policy::load(&module, "hostile", "{}", Limits::default(), 64).await.unwrap();
    // Each answer carries a 4 KiB note; 40 distinct requests, each entry weighing at least 5 KiB.
    for n in 0..40 {
        let asked = [
            Resource::new("repository", "hostile/long-note", &["pull"]),
            Resource::new("repository", &format!("team/app{n}"), &["pull"]),
        ];
        let decision = policy.evaluate(&caller("team"), "s", &asked, 0).await.unwrap();
        let Decision::Grant { note: Some(note), .. } = decision else { panic!("{decision:?}") };
        assert_eq!(note.len(), 4096);
    }
    let (entries, kib) = policy.cached_decisions();
    assert!(kib <= 64, "{kib} KiB remembered, capacity 64");
    // Counting the note, at most 64 / 5 entries fit; counting only the request, all 40 would.
    assert!((1..=12).contains(&entries), "{entries} entries of 4 KiB notes within 64 KiB");
    assert!(entries as u64 * 5 <= kib, "{entries} entries weigh {kib} KiB: the notes are counted");
}
