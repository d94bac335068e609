//! A policy that misbehaves on demand, to test that the host fails closed and keeps serving.
//!
//! The first requested repository name picks the behaviour (`hostile/loop`, `hostile/bomb`,
//! `hostile/handles`, `hostile/slow`, ...);
//! any other request is granted in full. Settings `{"refuse": "why"}` make `configure` fail and
//! `{"configure": "loop"}` / `"panic"` / `"sleep"` make it misbehave (`"grow"`: a memory past
//! 128 MiB). `hostile/lifetime`, `hostile/time` and the `hostile/*-annotation*` names exercise
//! what 0.2.0 added.

use registry_policy::{Decision, Policy, Request, Resource};
use std::sync::atomic::{AtomicU32, Ordering};

/// Counts evaluations in this instance: with a fresh instance per request it is always 1.
static EVALUATIONS: AtomicU32 = AtomicU32::new(0);

pub struct Hostile {
    /// How long `hostile/slow` works before granting (it has no clock to look at).
    slow_iterations: u64,
}

impl Policy for Hostile {
    fn configure(settings: &str) -> Result<Self, String> {
        let settings: serde_json::Value = serde_json::from_str(settings).map_err(|e| e.to_string())?;
        if let Some(why) = settings.get("refuse").and_then(|v| v.as_str()) {
            return Err(why.to_owned());
        }
        let slow_iterations =
            settings.get("slow_iterations").and_then(|v| v.as_u64()).unwrap_or(1_000_000_000);
        match settings.get("configure").and_then(|v| v.as_str()) {
            Some("loop") => spin(),
            Some("panic") => panic!("hostile guest panicked while configuring"),
            // Grows its memory past 128 MiB (freed, but a memory never shrinks): the snapshot reads
            // all of it back.
            Some("grow") => {
                std::hint::black_box(vec![0u8; 130 << 20]);
                Ok(Hostile { slow_iterations })
            }
            Some("sleep") => {
                std::thread::sleep(std::time::Duration::from_secs(60));
                Ok(Hostile { slow_iterations })
            }
            _ => Ok(Hostile { slow_iterations }),
        }
    }

    fn evaluate(&self, request: &Request) -> Decision {
        let count = EVALUATIONS.fetch_add(1, Ordering::SeqCst) + 1;
        let first = request.resources.first().map(|r| r.name.as_str()).unwrap_or_default();
        match first {
            "hostile/loop" => spin(),
            // Waits in the host (WASI poll), where no epoch check runs.
            "hostile/sleep" => {
                std::thread::sleep(std::time::Duration::from_secs(30));
                Decision::grant(request.resources.clone())
            }
            "hostile/slow" => {
                let mut n: u64 = 0;
                while n < self.slow_iterations {
                    n = std::hint::black_box(n + 1);
                }
                Decision::grant(request.resources.clone())
            }
            "hostile/bomb" => bomb(),
            "hostile/handles" => handles(),
            "hostile/panic" => panic!("hostile guest panicked on purpose"),
            "hostile/huge-message" => Decision::deny("huge", "x".repeat(1 << 20)),
            "hostile/huge-grant" => {
                let one = Resource::new("repository", "hostile/huge-grant", ["pull"]);
                Decision::grant(vec![one; 5_000])
            }
            "hostile/overgrant" => {
                let mut granted = request.resources.clone();
                granted.push(Resource::new("repository", "secret/app", ["pull", "push"]));
                Decision::grant(granted)
            }
            "hostile/extra-action" => {
                let granted = request
                    .resources
                    .iter()
                    .map(|r| {
                        let mut actions = r.actions.clone();
                        actions.push("delete".to_owned());
                        r.with_actions(actions)
                    })
                    .collect();
                Decision::grant(granted)
            }
            // More than the host copies out of one answer (4 MiB), in 16 MiB of memory.
            "hostile/flood" => Decision::grant_with_note(request.resources.clone(), "f".repeat(5 << 20)),
            // The longest note the host accepts (4 KiB): for the decision cache's byte bound.
            "hostile/long-note" => Decision::grant_with_note(request.resources.clone(), "n".repeat(4096)),
            "hostile/bad-reason" => Decision::deny("Not Kebab Case", "nope"),
            "hostile/count" => {
                Decision::grant_with_note(request.resources.clone(), format!("evaluations={count}"))
            }
            "hostile/clock" => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(u64::MAX);
                let env = std::env::vars().count();
                let file = std::fs::read_to_string("/etc/hostname").is_ok();
                Decision::grant_with_note(Vec::new(), format!("now={now} env={env} file={file}"))
            }
            // 0.2.0 only (a 0.1.0 build drops lifetimes and annotations): what the host bounds.
            "hostile/lifetime" => {
                let seconds = request.resources.first().map_or(0, |r| r.actions.len() as u32);
                let seconds = match seconds {
                    1 => u32::MAX,
                    2 => 0,
                    _ => 120,
                };
                Decision::grant(request.resources.clone()).with_lifetime(seconds)
            }
            "hostile/time" => Decision::grant_with_note(Vec::new(), format!("time={}", request.time)),
            "hostile/many-annotations" => (0..9)
                .fold(Decision::grant(request.resources.clone()), |d, i| d.annotate(format!("k{i}"), "v")),
            "hostile/bad-annotation-key" => {
                Decision::grant(request.resources.clone()).annotate("Not Ok", "v")
            }
            "hostile/long-annotation" => Decision::deny("long", "no").annotate("k", "v".repeat(257)),
            "hostile/repeated-annotation" => {
                Decision::grant(request.resources.clone()).annotate("k", "1").annotate("k", "2")
            }
            _ => Decision::grant(request.resources.clone()),
        }
    }
}

fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

/// Fills the host's handle table: a new stdout handle, never dropped, again and again (each one
/// lives in the host's memory, not in the guest's).
fn handles() -> ! {
    loop {
        #[cfg(target_arch = "wasm32")]
        std::mem::forget(wasip2::cli::stdout::get_stdout());
    }
}

fn bomb() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![0xa5; 1 << 20]);
        std::hint::black_box(&hoard);
    }
}

// Built twice by test-support: against stellaops:registry-policy@0.2.0 and, with the
// `contract-0-1` feature, against 0.1.0, so every limit is tested through both versions.
#[cfg(not(feature = "contract-0-1"))]
registry_policy::export_policy!(Hostile);
#[cfg(feature = "contract-0-1")]
registry_policy::export_policy!(Hostile, contract = "0.1.0");
