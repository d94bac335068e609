//! `registry-token policy bench --policy FILE [--settings S] CASES.yaml`: what one evaluation costs,
//! as the server pays it — the same runtime, limits and pool (the policy is loaded exactly as
//! `serve` loads it), a fresh instance per evaluation, no decision cache — per case: median and
//! p99 over a few thousand runs, as `opa bench` reports.

use super::cases::{self, Prepared};
use crate::policy::Policy;
use std::time::{Duration, Instant};

/// Per-case figures.
struct Figures {
    name: String,
    median: Duration,
    p99: Duration,
}

/// Runs every case of `files` `runs` times (after a warm-up) through `policy` and prints the table.
pub(super) async fn run(
    policy: &Policy,
    files: &[(std::path::PathBuf, cases::CaseFile)],
    runs: usize,
    load_time: Duration,
) -> Result<(), String> {
    let limits = policy.limits();
    println!(
        "policy bench: {} ({}, {}), fresh instance per evaluation, {runs} runs per case",
        policy.source(),
        policy.contract(),
        policy.digest(),
    );
    println!(
        "limits: {} ms, {} MiB; loaded (compile, configure, snapshot) in {:.1} ms",
        limits.timeout.as_millis(),
        limits.memory_bytes / (1024 * 1024),
        load_time.as_secs_f64() * 1000.0
    );
    let mut all = Vec::new();
    let mut rows = Vec::new();
    for (path, file) in files {
        for case in &file.cases {
            let Prepared { caller, service, requested, time } =
                cases::prepare(file, case).map_err(|e| format!("{}: {}: {e}", path.display(), case.name))?;
            let once = async || {
                let started = Instant::now();
                // Faults are figures too (a case may expect one); the cost is what is measured.
                let _ = policy.evaluate_uncached(&caller, &service, &requested, time).await;
                started.elapsed()
            };
            for _ in 0..(runs / 20).max(10) {
                once().await;
            }
            let mut samples = Vec::with_capacity(runs);
            for _ in 0..runs {
                samples.push(once().await);
            }
            samples.sort();
            all.extend_from_slice(&samples);
            rows.push(Figures {
                name: case.name.clone(),
                median: percentile(&samples, 50),
                p99: percentile(&samples, 99),
            });
        }
    }
    if rows.is_empty() {
        return Err("no cases to run".into());
    }
    let width = rows.iter().map(|r| r.name.chars().count()).max().unwrap_or(4).min(72);
    println!("{:<width$}  {:>10}  {:>10}", "case", "median", "p99");
    for row in &rows {
        let name: String = row.name.chars().take(width).collect();
        println!("{name:<width$}  {:>10}  {:>10}", micros(row.median), micros(row.p99));
    }
    all.sort();
    println!(
        "{:<width$}  {:>10}  {:>10}",
        format!("all {} cases ({} evaluations)", rows.len(), all.len()),
        micros(percentile(&all, 50)),
        micros(percentile(&all, 99))
    );
    Ok(())
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    let index = (sorted.len() * p / 100).min(sorted.len().saturating_sub(1));
    sorted.get(index).copied().unwrap_or_default()
}

fn micros(duration: Duration) -> String {
    format!("{:.1} µs", duration.as_secs_f64() * 1e6)
}
