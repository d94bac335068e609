//! The performance harness: one run, one machine, one table.
//!
//! ```sh
//! cargo bench -p registry-token --bench tokens             # full run, about six minutes
//! cargo bench -p registry-token --bench tokens -- --quick  # shorter load phases
//! cargo bench -p registry-token --bench tokens -- --stages # signing and stages, no load
//! cargo bench -p registry-token --bench tokens -- --ledger # the SQLite ledger stage alone
//! cargo bench -p registry-token --bench tokens -- --ab OTHER/registry-token  # A/B, interleaved
//! ```
//!
//! 1. The raw sign rate of the project's own signer on 1 and 2 threads (RS256 and ES256): the floor.
//! 2. Each stage of a request, alone: caller-token validation, scope parsing, policy evaluation on a
//!    fresh instance (no decision cache), signing, response encoding; and the strict SQLite
//!    ledger alone (CPU and bytes written per event, events per commit).
//! 3. The release server, started with a realistic configuration (the plan catalogue with 50
//!    plans), driven over loopback by wrk (Debian's package) at 16 and 64 connections in two mixes:
//!    *hot* (one caller repeating, with token reuse on and off) and *cold* (every request a
//!    distinct Authority token and scope). Tokens/s, p50/p99/p999 latency, tokens/s ÷ openssl's
//!    2-process sign rate measured just before the row, server CPU per token (and ÷ one
//!    signature's CPU), and the server's peak RSS; then issue 17's targets, met or not. The server
//!    runs in the production configuration: the SQLite ledger with strict durability, metrics on,
//!    logging at info, token reuse on, and the environment of the shipped systemd unit.
//! 4. The ledger's cost: the same mixes (RS256, 16 connections, reuse off) with the ledger off,
//!    SQLite strict and PostgreSQL strict (a throwaway cluster, as the tests start it), each
//!    against ledger off.
//! 5. The metrics' cost: the hot mix (reuse off) with metrics off and on (`admin.metrics`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use data_encoding::BASE64URL_NOPAD;
use registry_token::access::{Caller, Resource};
use registry_token::app::system_clock;
use registry_token::authority::{self, KeySource, Requirements};
use registry_token::mint::{Grant, KidFormat, Minter, SigningAlgorithm, SigningKey, keygen};
use registry_token::policy::{BUILTIN_PLAN_CATALOGUE, Limits, Policy};
use registry_token::{dev_authority, scope};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use test_support::{Config, Server, serve_command};

const BIN: &str = env!("CARGO_BIN_EXE_registry-token");
const ISSUER: &str = "https://authority.bench";
const SERVICE: &str = "registry.bench";
const PLANS: usize = 50;

struct Settings {
    load_seconds: f64,
    cold_tokens: usize,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let settings = if quick {
        Settings { load_seconds: 3.0, cold_tokens: 45_000 }
    } else {
        Settings { load_seconds: 8.0, cold_tokens: 90_000 }
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let root = root.as_path();
    prepare(root);
    if args.iter().any(|a| a == "--prepare-only") {
        cold_requests(root, 40_000);
        println!("prepared {} (kept)", dir.keep().display());
        return;
    }

    println!("registry-token benchmark — {} cores, {}", cores(), cpu_model());
    println!();

    if let Some(other) = args.iter().position(|a| a == "--ab").map(|at| args.get(at + 1)) {
        let other = other.expect("--ab takes the path of another build's registry-token binary");
        ab_section(root, Path::new(other), &settings);
        return;
    }

    if args.iter().any(|a| a == "--ledger") {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        ledger_section(&runtime, root);
        return;
    }

    // 1. The floor.
    let rs = SigningKey::from_file(&root.join("rs/signing-key.pem"), SigningAlgorithm::RS256).unwrap();
    let es = SigningKey::from_file(&root.join("es/signing-key.pem"), SigningAlgorithm::ES256).unwrap();
    let rs = Arc::new(rs);
    let es = Arc::new(es);
    let rs1 = sign_rate(&rs, 1);
    let rs2 = sign_rate(&rs, 2);
    let es1 = sign_rate(&es, 1);
    let es2 = sign_rate(&es, 2);
    println!("## Raw signing (the project's signer, aws-lc, key parsed once)");
    println!("| algorithm | 1 thread | 2 threads |");
    println!("|---|---:|---:|");
    println!("| RS256 (2048) | {rs1:.0}/s | {rs2:.0}/s |");
    println!("| ES256 (P-256) | {es1:.0}/s | {es2:.0}/s |");
    println!();

    if args.iter().any(|a| a == "--hsm") {
        hsm_section(root, &settings, &rs);
        return;
    }
    let stages_only = args.iter().any(|a| a == "--stages");
    // 2. Stages.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    println!("## Stages, one at a time (median and p99 of batches, per operation)");
    println!("| stage | median | p99 |");
    println!("|---|---:|---:|");
    runtime.block_on(stages(root));
    println!();
    ledger_section(&runtime, root);
    if stages_only {
        return;
    }

    // 3. Load, in the production configuration.
    println!(
        "## The release server over loopback (wrk, one client thread, keep-alive, {:.0} s per row)",
        settings.load_seconds
    );
    println!();
    println!(
        "Production configuration unless the row says otherwise: ledger SQLite strict, metrics on, logging \
         at info, token reuse on (a tenth of the lifetime). Each row's ratio is against openssl's \
         2-process sign rate measured just before it (`openssl speed -multi 2`); one signature's CPU is \
         one second over openssl's 1-process rate, measured with it."
    );
    println!();
    let cold = cold_requests(root, settings.cold_tokens);
    println!(
        "| signing | mix | connections | tokens/s | openssl sign/s, 2 processes | ratio | p50 | p99 | p999 | server CPU/token | ÷ one signature's CPU | wrk CPU/request | peak RSS | errors |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut any_repeated = false;
    let mut targets = Vec::new();
    for (algorithm, mix, config, connections) in [
        ("RS256", "hot, reuse on", "RS256", 16),
        ("RS256", "hot, reuse off", "RS256-noreuse", 16),
        ("RS256", "hot, reuse off", "RS256-noreuse", 64),
        ("RS256", "cold", "RS256", 16),
        ("RS256", "cold", "RS256", 64),
        ("ES256", "hot, reuse on", "ES256", 16),
        ("ES256", "hot, reuse off", "ES256-noreuse", 16),
        ("ES256", "cold", "ES256", 16),
    ] {
        // The machine's speed drifts (it is shared): the floor is re-measured next to each row.
        let (one, two) = openssl_rates(algorithm);
        let requests = if mix == "cold" { "cold" } else { "hot" };
        let row = load(root, config, requests, connections, &settings, &cold);
        let mark = if mix == "cold" && row.repeated { " †" } else { "" };
        any_repeated |= !mark.is_empty();
        let signature_cpu = 1e6 / one;
        println!(
            "| {algorithm} | {mix}{mark} | {connections} | {:.0} | {two:.0}/s | **{:.2}** | {} | {} | {} | {:.0} µs | {:.2} | {:.0} µs | {:.1} MiB | {} |",
            row.rate,
            row.rate / two,
            micros(row.p50),
            micros(row.p99),
            micros(row.p999),
            row.cpu_per_token_us,
            row.cpu_per_token_us / signature_cpu,
            row.client_cpu_per_request_us,
            row.peak_rss_kib as f64 / 1024.0,
            row.errors
        );
        if algorithm == "RS256" && connections == 16 {
            targets.push((mix, row, two, signature_cpu));
        }
    }
    if any_repeated {
        println!();
        println!(
            "† the {} prepared cold requests ran out and started again: that row is not entirely cold",
            settings.cold_tokens
        );
    }
    print_targets(&targets);

    // 4. The ledger's cost, against no ledger in the same run.
    println!();
    println!(
        "## The ledger's cost (RS256, 16 connections, reuse off: every token signed; each row against the ledger-off row before it; two rounds, as the host drifts)"
    );
    println!(
        "| mix | ledger | tokens/s | ratio to off | p50 | p99 | p99 − off | server CPU/token | errors |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    let cluster = test_support::PostgresCluster::start();
    write_config(root, "RS256", "RS256-postgres", &cluster.url());
    let ledgers = [
        ("off", "RS256-off"),
        ("SQLite strict", "RS256-sqlite"),
        ("SQLite strict, sqlite_sync normal", "RS256-sqlite-normal"),
        ("PostgreSQL strict", "RS256-postgres"),
    ];
    let mut ratios: Vec<(&str, &str, f64)> = Vec::new();
    for mix in ["hot", "cold"] {
        for round in 0..2 {
            let mut off: Option<(f64, u64)> = None;
            for (ledger, name) in ledgers {
                let row = load(root, name, mix, 16, &settings, &cold);
                let (off_rate, off_p99) = *off.get_or_insert((row.rate, row.p99));
                let label = if round == 0 { ledger.to_owned() } else { format!("{ledger} (again)") };
                print_row(mix, &label, &row, off_rate, off_p99);
                ratios.push((mix, ledger, row.rate / off_rate));
            }
        }
    }
    drop(cluster);
    println!();
    println!("| ledger | hot, ratio to off (two rounds) | cold, ratio to off (two rounds) |");
    println!("|---|---|---|");
    for (ledger, _) in &ledgers[1..] {
        let of = |mix: &str| {
            let found: Vec<String> = ratios
                .iter()
                .filter(|r| r.0 == mix && r.1 == *ledger)
                .map(|r| format!("{:.2}", r.2))
                .collect();
            found.join(", ")
        };
        println!("| {ledger} | {} | {} |", of("hot"), of("cold"));
    }

    // 5. The metrics' cost, in the production configuration otherwise.
    println!();
    println!("## The metrics' cost (RS256, hot, 16 connections, ledger SQLite strict, reuse off)");
    println!(
        "| mix | metrics | tokens/s | ratio to off | p50 | p99 | p99 − off | server CPU/token | errors |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for round in 0..2 {
        let off_row = load(root, "RS256-nometrics", "hot", 16, &settings, &cold);
        let on_row = load(root, "RS256-noreuse", "hot", 16, &settings, &cold);
        let round = if round == 0 { "" } else { " (again)" };
        print_row("hot", &format!("off{round}"), &off_row, off_row.rate, off_row.p99);
        print_row("hot", &format!("on{round}"), &on_row, off_row.rate, off_row.p99);
    }

    hsm_section(root, &settings, &rs);
}

/// `--ab OTHER`: the same rows with another build's server (A) and this one (B), interleaved
/// A B B A, A B B A, … (`BENCH_AB_ROUNDS`, default 4), so that the host's drift falls on both
/// alike; each row's B/A ratios, and their median. The configuration is this build's: the other
/// binary must read it.
fn ab_section(root: &Path, other: &Path, settings: &Settings) {
    let rounds: usize = std::env::var("BENCH_AB_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(4);
    assert!(other.is_file(), "--ab: {} is not a file", other.display());
    let this = Path::new(BIN);
    // Hot rows only: no cold requests to prepare.
    let cold = root.join("hot.requests");
    println!("## A/B, interleaved ({rounds} rounds, {:.0} s per row, 16 connections)", settings.load_seconds);
    println!("A: {}", other.display());
    println!("B: {} (this build)", this.display());
    println!();
    println!("| row | round | A tokens/s | B tokens/s | B ÷ A | A CPU/token | B CPU/token | A p99 | B p99 |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let rows = [
        ("ES256 hot, reuse on", "ES256", "hot"),
        ("ES256 hot, reuse off", "ES256-noreuse", "hot"),
        ("RS256 hot, reuse off", "RS256-noreuse", "hot"),
    ];
    let mut summary = Vec::new();
    for (label, config, mix) in rows {
        let mut ratios = Vec::new();
        for round in 0..rounds {
            let run = |binary: &Path| load_with(root, binary, config, mix, 16, settings, &cold);
            // A B, then B A: each build goes first as often as the other.
            let (a, b) = if round % 2 == 0 {
                let a = run(other);
                (a, run(this))
            } else {
                let b = run(this);
                (run(other), b)
            };
            let ratio = b.rate / a.rate;
            ratios.push(ratio);
            println!(
                "| {label} | {} | {:.0} | {:.0} | {ratio:.3} | {:.0} µs | {:.0} µs | {} | {} |",
                round + 1,
                a.rate,
                b.rate,
                a.cpu_per_token_us,
                b.cpu_per_token_us,
                micros(a.p99),
                micros(b.p99)
            );
        }
        ratios.sort_by(f64::total_cmp);
        summary.push((label, ratios));
    }
    println!();
    println!("| row | B ÷ A, each round (sorted) | median |");
    println!("|---|---|---:|");
    for (label, ratios) in summary {
        let shown: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
        let median = (ratios[(ratios.len() - 1) / 2] + ratios[ratios.len() / 2]) / 2.0;
        println!("| {label} | {} | **{median:.3}** |", shown.join(", "));
    }
}

/// Section 6: signing through SoftHSM2's PKCS#11 module beside the file key, each against
/// openssl's 2-process RSA-2048 sign rate measured just before it (`--hsm` runs only this).
fn hsm_section(root: &Path, settings: &Settings, rs: &Arc<SigningKey>) {
    prepare_softhsm(root);
    let cold = cold_requests(root, 1000);
    println!();
    println!(
        "## Signing through SoftHSM2 (RS256, hot, 16 connections, ledger SQLite strict, metrics on, reuse off)"
    );
    println!(
        "| key | tokens/s | openssl sign/s, 2 processes, just before | ratio | aws-lc sign/s, 2 threads | p50 | p99 | server CPU/token | errors |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (key, name) in
        [("file", "RS256-noreuse"), ("SoftHSM2 (PKCS#11)", "RS256-hsm"), ("file (again)", "RS256-noreuse")]
    {
        let openssl = openssl_sign_rate();
        let aws_lc = sign_rate(rs, 2);
        let row = load(root, name, "hot", 16, settings, &cold);
        println!(
            "| {key} | {:.0} | {openssl:.0}/s | **{:.2}** | {aws_lc:.0}/s | {} | {} | {:.0} µs | {} |",
            row.rate,
            row.rate / openssl,
            micros(row.p50),
            micros(row.p99),
            row.cpu_per_token_us,
            row.errors
        );
    }
}

/// openssl's sign rates for `algorithm` (`RS256`: rsa2048, `ES256`: ecdsap256), one process and
/// two, measured now.
fn openssl_rates(algorithm: &str) -> (f64, f64) {
    let test = if algorithm == "RS256" { "rsa2048" } else { "ecdsap256" };
    (openssl_speed(test, 1), openssl_speed(test, 2))
}

/// `openssl speed [-multi N] TEST`: signatures a second.
fn openssl_speed(test: &str, processes: usize) -> f64 {
    let mut command = Command::new("openssl");
    command.args(["speed", "-seconds", "2"]);
    if processes > 1 {
        command.args(["-multi", &processes.to_string()]);
    }
    let output = command.arg(test).stderr(Stdio::null()).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    // `rsa 2048 bits 0.000230s 0.000020s 4353.0 49809.9`, `256 bits ecdsa (nistp256) 0.0000s 0.0001s 29671.0 13813.0`
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with("rsa 2048 bits") || l.contains("ecdsa (nistp256)"))
        .unwrap_or_else(|| panic!("openssl speed {test}: {text}"));
    let fields: Vec<&str> = line.split_whitespace().collect();
    fields[fields.len() - 2].parse().unwrap()
}

/// Issue 17's targets, from the RS256 rows at 16 connections of the table above.
fn print_targets(rows: &[(&str, Row, f64, f64)]) {
    let find = |mix: &str| rows.iter().find(|(m, ..)| *m == mix);
    println!();
    println!("### Targets (RS256, 16 connections)");
    println!("| target | measured | met |");
    println!("|---|---:|---|");
    let line = |what: &str, measured: String, met: bool| {
        println!("| {what} | {measured} | {} |", if met { "yes" } else { "**no**" });
    };
    if let Some((_, row, two, _)) = find("hot, reuse on") {
        let ratio = row.rate / two;
        line("hot, reuse on ≥ 5 × the 2-process sign rate", format!("{ratio:.2} ×"), ratio >= 5.0);
        // What two cores allow at the CPU each answer took, the server's and wrk's together.
        let ceiling = 2e6 / (row.cpu_per_token_us + row.client_cpu_per_request_us);
        println!(
            "| (two cores at {:.0} µs server + {:.0} µs wrk per answer allow at most) | {ceiling:.0}/s = {:.2} × | |",
            row.cpu_per_token_us,
            row.client_cpu_per_request_us,
            ceiling / two
        );
    }
    if let Some((_, row, two, _)) = find("hot, reuse off") {
        let ratio = row.rate / two;
        line("hot, reuse off ≥ 0.85 ×", format!("{ratio:.2} ×"), ratio >= 0.85);
    }
    if let Some((_, row, two, signature)) = find("cold") {
        let ratio = row.rate / two;
        line("cold ≥ 0.75 ×", format!("{ratio:.2} ×"), ratio >= 0.75);
        line("cold p99 ≤ 10 ms", micros(row.p99), row.p99 <= 10_000);
        let cpu = row.cpu_per_token_us / signature;
        line("server CPU per cold token ≤ 1.4 × one signature's", format!("{cpu:.2} ×"), cpu <= 1.4);
    }
    let peak = rows.iter().map(|(_, row, ..)| row.peak_rss_kib).max().unwrap_or(0);
    line("peak RSS under load ≤ 64 MiB", format!("{:.1} MiB", peak as f64 / 1024.0), peak <= 64 * 1024);
}

/// `openssl speed -multi 2 rsa2048`: RSA-2048 signatures a second, two processes.
fn openssl_sign_rate() -> f64 {
    let output = Command::new("openssl")
        .args(["speed", "-seconds", "2", "-multi", "2", "rsa2048"])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("rsa 2048 bits"))
        .unwrap_or_else(|| panic!("openssl speed: {text}"));
    line.split_whitespace().nth(5).unwrap().parse().unwrap()
}

/// A SoftHSM2 token in `ROOT/hsm` with an RS256 key generated inside it, and `RS256-hsm.yaml`
/// signing with it (otherwise the production configuration of `RS256.yaml`).
fn prepare_softhsm(root: &Path) {
    let hsm = root.join("hsm");
    if hsm.exists() {
        return;
    }
    std::fs::create_dir_all(hsm.join("tokens")).unwrap();
    let conf = hsm.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!("directories.tokendir = {}\nobjectstore.backend = file\n", hsm.join("tokens").display()),
    )
    .unwrap();
    let init = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args(["--init-token", "--free", "--label", "bench", "--pin", "1234", "--so-pin", "5678"])
        .output()
        .expect("softhsm2-util (apt-get install -y softhsm2)");
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let pin = hsm.join("pin");
    std::fs::write(&pin, "1234\n").unwrap();
    std::fs::set_permissions(&pin, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let made = Command::new(BIN)
        .env("SOFTHSM2_CONF", &conf)
        .args(["keys", "new", "--pkcs11", "/usr/lib/softhsm/libsofthsm2.so", "--token-label", "bench"])
        .args(["--key-label", "bench-signing", "--name", "hsm", "--pin-file"])
        .arg(&pin)
        .arg("--dir")
        .arg(&hsm)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let mut config: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(root.join("RS256-noreuse.yaml")).unwrap()).unwrap();
    let signing = config["signing"].as_mapping_mut().unwrap();
    signing.remove("key_file");
    signing.remove("cert_file");
    signing.remove("algorithm");
    signing.insert(
        "keys".into(),
        serde_norway::from_str(&format!(
            "[{{pkcs11: {{module: /usr/lib/softhsm/libsofthsm2.so, token_label: bench, key_label: bench-signing, \
             pin_file: '{}'}}, cert_file: '{}', status: active}}]",
            pin.display(),
            hsm.join("hsm.crt").display()
        ))
        .unwrap(),
    );
    std::fs::write(root.join("RS256-hsm.yaml"), serde_norway::to_string(&config).unwrap()).unwrap();
}

/// One row of the comparison tables: `row` against the baseline's rate and p99.
fn print_row(mix: &str, what: &str, row: &Row, base_rate: f64, base_p99: u64) {
    println!(
        "| {mix} | {what} | {:.0} | **{:.2}** | {} | {} | {:+.2} ms | {:.0} µs | {} |",
        row.rate,
        row.rate / base_rate,
        micros(row.p50),
        micros(row.p99),
        (row.p99 as f64 - base_p99 as f64) / 1000.0,
        row.cpu_per_token_us,
        row.errors
    );
}

fn micros(us: u64) -> String {
    if us >= 1000 { format!("{:.2} ms", us as f64 / 1000.0) } else { format!("{us} µs") }
}

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}

/// Keys, a development Authority, a 50-plan catalogue and server configurations.
fn prepare(root: &Path) {
    keygen::generate(&root.join("rs"), SigningAlgorithm::RS256, 2048).unwrap();
    keygen::generate(&root.join("es"), SigningAlgorithm::ES256, 2048).unwrap();
    dev_authority::init(&root.join("authority"), ISSUER).unwrap();
    std::fs::write(root.join("plans.json"), plans_json()).unwrap();
    for algorithm in ["RS256", "ES256"] {
        write_config(
            root,
            algorithm,
            algorithm,
            &format!("sqlite://{}", root.join(format!("{algorithm}.db")).display()),
        );
    }
    write_config(root, "RS256", "RS256-off", "none");
    // Reuse off: every request signs (the rows that measure signing, and the ledger's cost per
    // token).
    for (algorithm, name) in [("RS256", "RS256-noreuse"), ("ES256", "ES256-noreuse")] {
        write_config(
            root,
            algorithm,
            name,
            &format!("sqlite://{}", root.join(format!("{name}.db")).display()),
        );
    }
    write_config(
        root,
        "RS256",
        "RS256-nometrics",
        &format!("sqlite://{}", root.join("RS256-nometrics.db").display()),
    );
    let mut config = serde_norway::from_str::<serde_norway::Value>(
        &std::fs::read_to_string(root.join("RS256-nometrics.yaml")).unwrap(),
    )
    .unwrap();
    config["admin"]["metrics"] = serde_norway::Value::Bool(false);
    std::fs::write(root.join("RS256-nometrics.yaml"), serde_norway::to_string(&config).unwrap()).unwrap();
    for name in ["RS256-sqlite", "RS256-sqlite-normal"] {
        write_config(root, "RS256", name, &format!("sqlite://{}", root.join(format!("{name}.db")).display()));
    }
}

/// `ROOT/NAME.yaml`: a server signing with `algorithm`, recording into `ledger_url` (strict).
/// Token reuse is on (the default) unless the name says `noreuse`, and off in the sections that
/// compare one cost per signed token (`-off`, `-sqlite`, `-postgres`, `-nometrics`); a name ending
/// in `-normal` sets `ledger.sqlite_sync: normal`.
fn write_config(root: &Path, algorithm: &str, name: &str, ledger_url: &str) {
    let dir = if algorithm == "RS256" { "rs" } else { "es" };
    let mut config = Config::installation(root, ISSUER, &[SERVICE]);
    config.signing.algorithm = Some(algorithm.to_owned());
    config.signing.key_file = root.join(format!("{dir}/signing-key.pem"));
    config.signing.cert_file = Some(root.join(format!("{dir}/signing-cert.pem")));
    config.policy.settings_file = Some(root.join("plans.json"));
    config.ledger.url = ledger_url.to_owned();
    if ["noreuse", "-off", "-sqlite", "-postgres", "-nometrics"].iter().any(|n| name.contains(n)) {
        config.signing.reuse_seconds = Some(0);
    }
    if name.ends_with("-normal") {
        config.ledger.sqlite_sync = Some("normal".to_owned());
    }
    config.write(&root.join(format!("{name}.yaml")));
}

/// A catalogue of 50 plans with four rules each (about 18 KB of JSON).
fn plans_json() -> String {
    let mut plans = serde_json::Map::new();
    for i in 0..PLANS {
        plans.insert(
            format!("plan-{i:02}"),
            serde_json::json!([
                {"repositories": [format!("team-{i:02}/*"), format!("shared-{i:02}/**")], "actions": ["pull", "push"]},
                {"repositories": ["{tenant}/**"], "actions": ["pull", "push", "delete"]},
                {"repositories": [format!("public-{i:02}/**"), "mirror/library/*"], "actions": ["pull"]},
                {"type": "registry", "repositories": ["catalog"], "actions": [if i % 10 == 0 { "*" } else { "none" }]},
            ]),
        );
    }
    let revoked: Vec<String> = (0..200).map(|i| format!("LIC-R{i:04}")).collect();
    serde_json::json!({"plans": plans, "revoked_licenses": revoked}).to_string()
}

fn sign_rate(key: &Arc<SigningKey>, threads: usize) -> f64 {
    let message = vec![b'x'; 600];
    let run = Duration::from_secs(2);
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let key = Arc::clone(key);
            let message = message.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                let mut count = 0u64;
                while started.elapsed() < run {
                    std::hint::black_box(key.sign(&message).unwrap());
                    count += 1;
                }
                count as f64 / started.elapsed().as_secs_f64()
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).sum()
}

/// Median and p99 per operation of batches of `batch` calls, over about a second.
fn measure<F: FnMut()>(mut op: F, batch: u32) -> (f64, f64) {
    let mut samples = Vec::new();
    for round in 0.. {
        let t = Instant::now();
        for _ in 0..batch {
            op();
        }
        if round > 0 {
            samples.push(t.elapsed().as_secs_f64() * 1e6 / f64::from(batch));
        }
        if samples.len() >= 20 && samples.iter().sum::<f64>() * f64::from(batch) > 1e6 {
            break;
        }
    }
    percentiles(samples)
}

/// [`measure`] for an async operation, awaited in place (no runtime entry per call).
async fn measure_async<F: FnMut() -> Fut, Fut: std::future::Future>(mut op: F, batch: u32) -> (f64, f64) {
    let mut samples = Vec::new();
    for round in 0.. {
        let t = Instant::now();
        for _ in 0..batch {
            op().await;
        }
        if round > 0 {
            samples.push(t.elapsed().as_secs_f64() * 1e6 / f64::from(batch));
        }
        if samples.len() >= 20 && samples.iter().sum::<f64>() * f64::from(batch) > 1e6 {
            break;
        }
    }
    percentiles(samples)
}

fn percentiles(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(|a, b| a.total_cmp(b));
    (samples[samples.len() / 2], samples[samples.len() * 99 / 100])
}

fn row(stage: &str, (median, p99): (f64, f64)) {
    println!("| {stage} | {median:.1} µs | {p99:.1} µs |");
}

fn caller() -> Caller {
    Caller {
        subject: "alice".into(),
        client_id: Some("ci".into()),
        tenant: Some("acme".into()),
        plan: Some("plan-25".into()),
        license: Some("LIC-0001".into()),
        scopes: vec!["registry.token.issue".into()],
        claims_json:
            r#"{"sub":"alice","client_id":"ci","stellaops:plan":"plan-25","stellaops:tenant":"acme"}"#.into(),
    }
}

async fn stages(root: &Path) {
    let token = authority_token(root, "alice", 600);
    let keys = KeySource::from_file(&root.join("authority/jwks.json")).unwrap();
    let requirements = Requirements {
        issuer: ISSUER.into(),
        audiences: vec!["registry-token".into()],
        required_scope: "registry.token.issue".into(),
        leeway_seconds: 30,
    };
    let now = system_clock()();
    row(
        "caller-token validation (RS256 verify, claims)",
        measure_async(|| async { authority::verify(&token, now, &keys, &requirements).await.unwrap() }, 50)
            .await,
    );

    let scopes = [
        "repository:team-25/app:pull,push",
        "repository:acme/tools/ci:pull repository:mirror/library/alpine:pull",
    ];
    row(
        "scope parsing (3 resources)",
        measure(
            || {
                std::hint::black_box(scope::parse_scopes(scopes).unwrap());
            },
            1000,
        ),
    );

    let settings = std::fs::read_to_string(root.join("plans.json")).unwrap();
    let policy =
        Policy::load(BUILTIN_PLAN_CATALOGUE, "builtin", &settings, Limits::default(), 0).await.unwrap();
    let policy_cached =
        Policy::load(BUILTIN_PLAN_CATALOGUE, "builtin", &settings, Limits::default(), 4096).await.unwrap();
    let requested = scope::parse_scopes(scopes).unwrap();
    let caller = caller();
    row(
        "policy evaluation, fresh instance (50 plans, 3 resources)",
        measure_async(
            || async { policy.evaluate_uncached(&caller, SERVICE, &requested, 0).await.unwrap() },
            50,
        )
        .await,
    );
    row(
        "policy evaluation, decision cache hit",
        measure_async(
            || async { policy_cached.evaluate(&caller, SERVICE, &requested, 0).await.unwrap() },
            1000,
        )
        .await,
    );

    for (name, dir, algorithm) in
        [("RS256", "rs", SigningAlgorithm::RS256), ("ES256", "es", SigningAlgorithm::ES256)]
    {
        let key = SigningKey::from_file(&root.join(format!("{dir}/signing-key.pem")), algorithm).unwrap();
        let chain =
            registry_token::mint::load_chain(&root.join(format!("{dir}/signing-cert.pem"))).unwrap().0;
        let minter = Minter::new(key, "registry-token", 300, KidFormat::Libtrust, Some(&chain));
        let granted: Vec<Resource> = requested.clone();
        let grant = Grant {
            subject: "alice",
            audience: SERVICE,
            access: &granted,
            now,
            not_after: u64::MAX,
            requested_lifetime: None,
            max_lifetime: 300,
        };
        row(
            &format!("minting and signing ({name})"),
            measure(
                || {
                    std::hint::black_box(minter.mint_now(&grant).unwrap());
                },
                if name == "RS256" { 20 } else { 200 },
            ),
        );
        if name == "RS256" {
            let minted = minter.mint_now(&grant).unwrap();
            row(
                "response encoding (JSON body)",
                measure(
                    || {
                        std::hint::black_box(registry_token::http::get_response_body(&minted, None));
                    },
                    1000,
                ),
            );
        }
    }
}

const LEDGER_STAGE_EVENTS: usize = 20_000;

fn ledger_section(runtime: &tokio::runtime::Runtime, root: &Path) {
    println!(
        "## The SQLite ledger alone, strict (16 tasks each committing one event at a time, {LEDGER_STAGE_EVENTS} events)"
    );
    println!(
        "| events | per event (wall) | CPU per event (user + system) | written per event | events per commit |"
    );
    println!("|---|---:|---:|---:|---:|");
    runtime.block_on(ledger_stage(root));
    println!();
}

/// The strict SQLite ledger with nothing else running: 16 tasks, as 16 connections would, each
/// committing an `issued` event and waiting for it, on a fresh file. *hot*: one caller repeating;
/// *cold*: every event a distinct subject, licence and caller `jti`. CPU is the whole process's
/// (the writer, the wake-ups, the kernel's share of the writes); "written" is what went to
/// `write`/`pwrite` (`/proc/self/io`'s `wchar`).
async fn ledger_stage(root: &Path) {
    use registry_token::config::{Durability, LedgerConfig, LedgerUrl};
    use registry_token::ledger::{Event, IssuedToken, Ledger, Outcome};
    for mix in ["hot", "cold"] {
        let config = LedgerConfig {
            url: LedgerUrl::Sqlite(root.join(format!("ledger-stage-{mix}.db"))),
            durability: Durability::Strict,
            ..LedgerConfig::default()
        };
        let ledger = Arc::new(Ledger::open(&config, true).await.unwrap().unwrap());
        let event = move |n: usize| {
            let mut event = Event::new(Outcome::Issued);
            let who = if mix == "hot" { 0 } else { n };
            event.sub = Some(format!("ci-bot-{who}"));
            event.client_id = Some("ci".into());
            event.tenant = Some("tenant-a".into());
            event.plan = Some("team".into());
            event.licence = Some(format!("LIC-{who:08}"));
            event.iss = Some(ISSUER.into());
            // An Authority's `jti`s are random (OpenIddict's are GUIDs).
            event.jti = Some(if mix == "hot" { "caller-jti".into() } else { random_id() });
            event.client_addr = Some("127.0.0.1".into());
            event.service = Some(SERVICE.into());
            event.requested = vec![format!("repository:team-25/app-{who}:pull,push")];
            event.granted = vec![format!("repository:team-25/app-{who}:pull")];
            event.policy_digest = Some(format!("sha256:{}", "a".repeat(64)));
            event.settings_version = Some("b".repeat(64));
            event.token = Some(IssuedToken {
                jti: registry_token::mint::new_jti().unwrap(),
                exp: 1_900_000_000,
                kid: "ABCD:EFGH:IJKL:MNOP:QRST:UVWX:YZ23:4567:ABCD:EFGH:IJKL:MNOP".into(),
            });
            event
        };
        let pid = std::process::id();
        let (cpu, written, commits) = (cpu_micros(pid), written_bytes(), ledger.commits());
        let started = Instant::now();
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (ledger, next) = (Arc::clone(&ledger), Arc::clone(&next));
                tokio::spawn(async move {
                    loop {
                        let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if n >= LEDGER_STAGE_EVENTS {
                            break;
                        }
                        ledger.commit(event(n)).await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let wall = started.elapsed().as_secs_f64() * 1e6;
        let events = LEDGER_STAGE_EVENTS as f64;
        let cpu = (cpu_micros(pid) - cpu) as f64;
        let written = (written_bytes() - written) as f64;
        let commits = (ledger.commits() - commits) as f64;
        println!(
            "| {mix} | {:.1} µs | {:.1} µs | {:.1} KiB | {:.1} |",
            wall / events,
            cpu / events,
            written / events / 1024.0,
            events / commits
        );
    }
}

/// 128 random bits, base64url.
fn random_id() -> String {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).unwrap();
    BASE64URL_NOPAD.encode(&bytes)
}

/// Bytes this process has handed to `write` and its kind (`/proc/self/io`).
fn written_bytes() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap();
    io.lines().find_map(|l| l.strip_prefix("wchar: ")).unwrap().trim().parse().unwrap()
}

/// An Authority token signed with the development Authority's key (parsed once, aws-lc).
fn authority_token(root: &Path, subject: &str, ttl: u64) -> String {
    let signer = AuthoritySigner::new(root);
    signer.token(subject, 0, ttl)
}

struct AuthoritySigner {
    key: SigningKey,
    header: String,
    now: u64,
}

impl AuthoritySigner {
    fn new(root: &Path) -> Self {
        let info: serde_json::Value =
            serde_json::from_slice(&std::fs::read(root.join("authority/authority.json")).unwrap()).unwrap();
        let key = SigningKey::from_file(&root.join("authority/authority-key.pem"), SigningAlgorithm::RS256)
            .unwrap();
        let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": info["kid"]}).to_string();
        AuthoritySigner { key, header: BASE64URL_NOPAD.encode(header.as_bytes()), now: system_clock()() }
    }

    fn token(&self, subject: &str, n: usize, ttl: u64) -> String {
        let claims = serde_json::json!({
            "iss": ISSUER, "sub": subject, "aud": "registry-token", "client_id": "bench",
            "iat": self.now, "nbf": self.now, "exp": self.now + ttl, "jti": format!("j{n}"),
            "scope": "registry.token.issue openid",
            "stellaops:plan": format!("plan-{:02}", n % PLANS), "stellaops:tenant": format!("tenant{}", n % 97),
            "stellaops:license": format!("LIC-{n:06}"),
        });
        let mut token = format!("{}.{}", self.header, BASE64URL_NOPAD.encode(claims.to_string().as_bytes()));
        let signature = self.key.sign(token.as_bytes()).unwrap();
        token.push('.');
        token.push_str(&BASE64URL_NOPAD.encode(&signature));
        token
    }
}

/// A file of `n` distinct `path<TAB>token` lines (a distinct caller and scope each), signed on
/// every core.
fn cold_requests(root: &Path, n: usize) -> std::path::PathBuf {
    let threads = cores();
    let per = n.div_ceil(threads);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let root = root.to_owned();
            std::thread::spawn(move || {
                let signer = AuthoritySigner::new(&root);
                let mut text = String::new();
                for i in t * per..((t + 1) * per).min(n) {
                    let path = format!(
                        "/token?service={SERVICE}&scope=repository%3Ateam-{:02}%2Fapp-{i}%3Apull%2Cpush",
                        i % PLANS
                    );
                    text.push_str(&format!("{path}\t{}\n", signer.token(&format!("user-{i}"), i, 3600)));
                }
                text
            })
        })
        .collect();
    let file = root.join("cold.requests");
    let text: String = handles.into_iter().map(|h| h.join().unwrap()).collect();
    std::fs::write(&file, text).unwrap();
    file
}

struct Row {
    rate: f64,
    p50: u64,
    p99: u64,
    p999: u64,
    cpu_per_token_us: f64,
    /// wrk's own CPU (user + system) per request: it shares the two cores with the server.
    client_cpu_per_request_us: f64,
    peak_rss_kib: u64,
    errors: u64,
    /// The cold list ran out and wrk started it again: some requests were not cold.
    repeated: bool,
}

/// The server of configuration `ROOT/NAME.yaml`, on a free port, with the environment the shipped
/// systemd unit gives it (logging at info, to a file here; glibc's arena count), as it would run
/// in production; killed when dropped, at the end of its row.
fn start_server(root: &Path, binary: &Path, name: &str) -> Server {
    let mut command = serve_command(binary, &root.join(format!("{name}.yaml")));
    command.envs(unit_environment()).env("SOFTHSM2_CONF", root.join("hsm/softhsm2.conf"));
    Server::start_logging_to(command, &root.join(format!("server-{name}.log")))
}

/// The `Environment=KEY=VALUE` lines of etc/registry-token.service.
fn unit_environment() -> Vec<(String, String)> {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../etc/registry-token.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    let environment: Vec<(String, String)> = text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("Environment="))
        .filter_map(|pair| pair.split_once('='))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect();
    assert!(
        environment.iter().any(|(key, _)| key == "REGISTRY_TOKEN_LOG"),
        "{} sets the log level",
        unit.display()
    );
    environment
}

/// utime + stime of a process, in microseconds.
fn cpu_micros(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks * 1_000_000 / clock_ticks()
}

fn clock_ticks() -> u64 {
    let output = Command::new("getconf").arg("CLK_TCK").stderr(Stdio::null()).output();
    output
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// wrk's script: requests from a file of `path<TAB>token` lines, in order (cold), or one request
/// repeated (hot, a one-line file); reports what the table needs as one JSON line.
const WRK_SCRIPT: &str = r#"
local lines = {}
local next_line = 0
local threads = {}
wrapped = false -- a global, so done() can read it from the thread
function setup(thread)
  table.insert(threads, thread)
end
function init(args)
  for line in io.lines(args[1]) do
    local path, token = line:match("([^\t]+)\t(.+)")
    lines[#lines + 1] = wrk.format("GET", path, { ["Authorization"] = "Bearer " .. token })
  end
end
function request()
  next_line = next_line + 1
  if next_line > #lines then next_line = 1; if #lines > 1 then wrapped = true end end
  return lines[next_line]
end
function done(summary, latency, requests)
  local e = summary.errors
  local repeated = false
  for _, thread in ipairs(threads) do
    if thread:get("wrapped") then repeated = true end
  end
  io.write(string.format('{"requests":%d,"duration_us":%d,"errors":%d,"p50":%d,"p99":%d,"p999":%d,"repeated":%s}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), tostring(repeated)))
end
"#;

/// Runs wrk (one client thread, `connections` keep-alive connections) for `seconds`: what it
/// reports, and the CPU time it used (µs, user + system), read from `/proc` once it has exited
/// and before it is reaped.
fn wrk(
    root: &Path,
    address: &str,
    connections: usize,
    seconds: f64,
    requests_file: &Path,
) -> (serde_json::Value, u64) {
    let script = root.join("tokens.lua");
    std::fs::write(&script, WRK_SCRIPT).unwrap();
    let mut output = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{}s", seconds.ceil() as u64),
            "--timeout",
            "10s",
            "-s",
        ])
        .arg(&script)
        .arg(format!("http://{address}/"))
        .arg("--")
        .arg(requests_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("wrk is needed for the load phase (apt-get install -y wrk): {e}"));
    let (mut stdout, mut stderr) = (String::new(), String::new());
    output.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    output.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    // Exited (a zombie until waited for): its stat holds its final CPU times.
    let deadline = Instant::now() + Duration::from_secs(10);
    while process_state(output.id()).is_none_or(|state| state != 'Z') && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    let cpu = cpu_micros(output.id());
    output.wait().unwrap();
    let line =
        stdout.lines().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("wrk said: {stdout}{stderr}"));
    (serde_json::from_str(line).unwrap(), cpu)
}

/// A process's state letter (`R`, `S`, `Z`, ...) from `/proc/PID/stat`.
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].chars().next()
}

/// With `BENCH_PERF_DIR=DIR`, each row's measured phase is recorded by `perf record -g`
/// into `DIR/CONFIG-MIX-CONNECTIONS.data` (read it with `perf report -i`).
fn profile_start(pid: u32, row: &str) -> Option<std::process::Child> {
    let dir = std::env::var_os("BENCH_PERF_DIR")?;
    std::fs::create_dir_all(&dir).expect("BENCH_PERF_DIR: cannot create the directory");
    let output = Path::new(&dir).join(format!("{row}.data"));
    let child = std::process::Command::new("perf")
        .args(["record", "-F", "2000", "-g", "-q", "-p", &pid.to_string(), "-o"])
        .arg(&output)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("BENCH_PERF_DIR needs perf (apt-get install -y linux-perf)");
    std::thread::sleep(std::time::Duration::from_millis(300));
    Some(child)
}

fn profile_stop(profile: Option<std::process::Child>) {
    if let Some(mut child) = profile {
        let _ = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status();
        let _ = child.wait();
    }
}

fn load(root: &Path, name: &str, mix: &str, connections: usize, settings: &Settings, cold: &Path) -> Row {
    load_with(root, Path::new(BIN), name, mix, connections, settings, cold)
}

/// [`load`] of another build's server binary.
fn load_with(
    root: &Path,
    binary: &Path,
    name: &str,
    mix: &str,
    connections: usize,
    settings: &Settings,
    cold: &Path,
) -> Row {
    let server = start_server(root, binary, name);
    let (pid, address) = (server.pid(), server.address());
    let hot = root.join("hot.requests");
    let hot_path = format!(
        "/token?service={SERVICE}&scope=repository%3Ateam-25%2Fapp%3Apull%2Cpush&scope=repository%3Amirror%2Flibrary%2Falpine%3Apull"
    );
    std::fs::write(&hot, format!("{hot_path}\t{}\n", authority_token(root, "alice", 3600))).unwrap();

    // Warm-up: connections, code paths, and for the hot mix the caches it is about.
    let _ = wrk(root, address, connections, 1.0, &hot);
    let requests = if mix == "hot" { &hot } else { cold };
    let profile = profile_start(pid, &format!("{name}-{mix}-{connections}"));
    let cpu_before = cpu_micros(pid);
    let (result, client_cpu) = wrk(root, address, connections, settings.load_seconds, requests);
    let cpu = cpu_micros(pid) - cpu_before;
    profile_stop(profile);
    let ok = result["requests"].as_u64().unwrap() - result["errors"].as_u64().unwrap();
    Row {
        rate: ok as f64 / (result["duration_us"].as_f64().unwrap() / 1e6),
        p50: result["p50"].as_u64().unwrap(),
        p99: result["p99"].as_u64().unwrap(),
        p999: result["p999"].as_u64().unwrap(),
        cpu_per_token_us: cpu as f64 / ok.max(1) as f64,
        client_cpu_per_request_us: client_cpu as f64 / result["requests"].as_u64().unwrap().max(1) as f64,
        peak_rss_kib: peak_rss_kib(pid),
        errors: result["errors"].as_u64().unwrap(),
        repeated: result["repeated"].as_bool().unwrap(),
    }
}
