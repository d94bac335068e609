//! Prometheus metrics: one process-wide set, recorded into from wherever a thing happens (a leaf
//! module: it knows nothing of the others) and exposed by `http` as `GET /metrics` on the operator
//! listener, in the Prometheus text format (0.0.4, which `promtool check metrics` and every
//! Prometheus read).
//!
//! Names follow Prometheus' conventions: the `registry_token_` prefix, base units, counters ending
//! in `_total`, histograms (they aggregate across replicas), and labels of bounded cardinality only
//! — never a subject, repository, token id or client address. Values that change at reload (the
//! policy's digest, the signing key) are `_info` gauges, set afresh at each scrape.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, Ordering};

/// Latency buckets, in seconds: a cached token takes tens of microseconds, a cold one about a
/// millisecond, a loaded one tens of milliseconds.
const LATENCY_BUCKETS: &[f64] =
    &[0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// The process's metrics.
pub struct Metrics {
    registry: Registry,
    enabled: AtomicBool,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    tokens_issued: IntCounterVec,
    decisions: IntCounterVec,
    caller_refusals: IntCounterVec,
    policy_evaluation: Histogram,
    policy_faults: IntCounterVec,
    cache_hits: [IntCounter; 3],
    cache_misses: [IntCounter; 3],
    reloads: IntCounterVec,
    authority_key_fetches: IntCounterVec,
    ledger_commit: Histogram,
    ledger_queue: IntGauge,
    ledger_dropped: IntCounter,
    revocations_active: IntGaugeVec,
    signing_key_info: IntGaugeVec,
    signing_certificate_expiry: IntGaugeVec,
    policy_info: IntGaugeVec,
    bundles_applied: IntCounter,
    bundle_refusals: IntCounterVec,
    bundle_revision: IntGauge,
    /// Held through a scrape: the gauges it sets from its snapshot are reset first, and another
    /// scrape reading meanwhile would miss them.
    rendering: std::sync::Mutex<()>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").field("enabled", &self.enabled()).finish_non_exhaustive()
    }
}

/// Which cache a lookup asked.
#[derive(Clone, Copy, Debug)]
pub enum CacheName {
    /// Validated caller tokens.
    CallerTokens = 0,
    /// Policy decisions.
    Decisions = 1,
    /// Minted tokens reused for identical requests (`signing.reuse_seconds`).
    Tokens = 2,
}

/// What is current at a scrape: the gauges that are read, not counted.
#[derive(Debug, Default)]
pub struct Snapshot<'a> {
    /// Events waiting to be written to the ledger.
    pub ledger_queue: usize,
    /// Revocations in force, by kind.
    pub revocations: Vec<(&'static str, usize)>,
    /// The signing keys.
    pub signing_keys: &'a [crate::mint::KeySummary],
    /// The live policy's digest and settings version.
    pub policy: Option<(&'a str, &'a str)>,
    /// The live policy bundle's revision (`None`: no `policy.bundle`, the gauge reads 0).
    pub bundle_revision: Option<u64>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

// Every name and label below is a constant, so registering cannot fail but by a programming error
// that the first test run would show.
#[allow(clippy::expect_used)]
fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, collector: T) -> T {
    registry.register(Box::new(collector.clone())).expect("metric names and labels are valid and unique");
    collector
}

#[allow(clippy::expect_used)]
fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(registry, IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter"))
}

#[allow(clippy::expect_used)]
fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(registry, IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge"))
}

#[allow(clippy::expect_used)]
fn histogram(registry: &Registry, name: &str, help: &str) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
    register(registry, Histogram::with_opts(opts).expect("valid histogram"))
}

impl Metrics {
    #[allow(clippy::expect_used)]
    fn new() -> Metrics {
        let r = Registry::new();
        let cache = counter_vec(
            &r,
            "registry_token_cache_requests_total",
            "Lookups of the hot-path caches, by cache and result.",
            &["cache", "result"],
        );
        let cache_counter = |name: &str, result: &str| cache.with_label_values(&[name, result]);
        let metrics = Metrics {
            enabled: AtomicBool::new(true),
            requests: counter_vec(
                &r,
                "registry_token_requests_total",
                "HTTP requests answered, by endpoint and status code.",
                &["endpoint", "status"],
            ),
            request_duration: register(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "registry_token_request_duration_seconds",
                        "Time from request to response, by endpoint.",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                    &["endpoint"],
                )
                .expect("valid histogram"),
            ),
            tokens_issued: counter_vec(
                &r,
                "registry_token_tokens_issued_total",
                "Registry tokens returned, by service, signing algorithm and what the caller presented.",
                &["service", "algorithm", "via"],
            ),
            decisions: counter_vec(
                &r,
                "registry_token_decisions_total",
                "Authorization decisions: grant (all asked), partial, empty, deny (the policy), revoked (the ledger), fault.",
                &["outcome"],
            ),
            caller_refusals: counter_vec(
                &r,
                "registry_token_caller_refusals_total",
                "Caller tokens refused by validation, by the check that failed.",
                &["reason"],
            ),
            policy_evaluation: histogram(
                &r,
                "registry_token_policy_evaluation_duration_seconds",
                "Time the policy took to decide (decision cache hits included).",
            ),
            policy_faults: counter_vec(
                &r,
                "registry_token_policy_faults_total",
                "Policy evaluations that failed, by kind; no token was issued.",
                &["kind"],
            ),
            cache_hits: [
                cache_counter("caller_tokens", "hit"),
                cache_counter("decisions", "hit"),
                cache_counter("tokens", "hit"),
            ],
            cache_misses: [
                cache_counter("caller_tokens", "miss"),
                cache_counter("decisions", "miss"),
                cache_counter("tokens", "miss"),
            ],
            reloads: counter_vec(
                &r,
                "registry_token_reloads_total",
                "Configuration reloads, applied or refused (the previous one kept serving).",
                &["result"],
            ),
            authority_key_fetches: counter_vec(
                &r,
                "registry_token_authority_keys_fetches_total",
                "Fetches of the Authority's JWKS URL, by result.",
                &["result"],
            ),
            ledger_commit: histogram(
                &r,
                "registry_token_ledger_commit_duration_seconds",
                "Time to commit one batch of ledger events.",
            ),
            ledger_queue: register(
                &r,
                IntGauge::new("registry_token_ledger_queue_events", "Ledger events waiting to be written.")
                    .expect("valid gauge"),
            ),
            ledger_dropped: register(
                &r,
                IntCounter::new(
                    "registry_token_ledger_events_dropped_total",
                    "Ledger events dropped: the queue was full (relaxed), crowded (a refused caller's), or \
                     the database refused the event itself.",
                )
                .expect("valid counter"),
            ),
            revocations_active: gauge_vec(
                &r,
                "registry_token_revocations_active",
                "Revocations in force on this replica, by kind.",
                &["kind"],
            ),
            signing_key_info: gauge_vec(
                &r,
                "registry_token_signing_key_info",
                "The signing keys (always 1), with their kid, status, algorithm, and whether they are \
                 published (a retired key past its retire_after is not).",
                &["kid", "status", "algorithm", "published"],
            ),
            signing_certificate_expiry: gauge_vec(
                &r,
                "registry_token_signing_certificate_expiry_timestamp_seconds",
                "When each signing key's certificate expires (Unix seconds); registries refuse a token \
                 whose x5c carries an expired one.",
                &["kid"],
            ),
            policy_info: gauge_vec(
                &r,
                "registry_token_policy_info",
                "The live policy (always 1), with its component digest and settings version.",
                &["digest", "settings_version"],
            ),
            bundles_applied: register(
                &r,
                IntCounter::new(
                    "registry_token_bundles_applied_total",
                    "Policy bundles applied (at start, on reload, or found by polling).",
                )
                .expect("valid counter"),
            ),
            bundle_refusals: counter_vec(
                &r,
                "registry_token_bundle_refusals_total",
                "Policy bundles refused (the live one kept serving), by reason: unavailable, too_large, \
                 unsafe_entry, malformed, files, digest, unsigned, unknown_key, signature, rollback, policy.",
                &["reason"],
            ),
            bundle_revision: register(
                &r,
                IntGauge::new("registry_token_bundle_revision", "The revision of the live policy bundle.")
                    .expect("valid gauge"),
            ),
            rendering: std::sync::Mutex::new(()),
            registry: r,
        };
        let build =
            gauge_vec(&metrics.registry, "registry_token_build_info", "The build (always 1).", &["version"]);
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        metrics
    }

    /// Whether recording is on (`admin.metrics`); off, every record call is a load and a branch.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Turns recording on or off (at start, from the configuration).
    pub fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::Relaxed);
    }

    /// One HTTP request answered.
    pub fn request(&self, endpoint: &str, status: &str, seconds: f64) {
        if self.enabled() {
            self.requests.with_label_values(&[endpoint, status]).inc();
            self.request_duration.with_label_values(&[endpoint]).observe(seconds);
        }
    }

    /// One registry token returned.
    pub fn issued(&self, service: &str, algorithm: &str, via: &str) {
        if self.enabled() {
            self.tokens_issued.with_label_values(&[service, algorithm, via]).inc();
        }
    }

    /// One decision: `grant`, `partial`, `empty`, `deny`, `revoked` or `fault`.
    pub fn decision(&self, outcome: &str) {
        if self.enabled() {
            self.decisions.with_label_values(&[outcome]).inc();
        }
    }

    /// One caller token refused by validation check `reason`.
    pub fn refusal(&self, reason: &str) {
        if self.enabled() {
            self.caller_refusals.with_label_values(&[reason]).inc();
        }
    }

    /// One policy evaluation that took `seconds`.
    pub fn evaluation(&self, seconds: f64) {
        if self.enabled() {
            self.policy_evaluation.observe(seconds);
        }
    }

    /// One policy fault of `kind` (the runtime's: deadline, memory, panic, trap, malformed,
    /// overgrant), counted under the names operators alert on (`panic` is a `trap`, `malformed`
    /// a `malformed_answer`).
    pub fn fault(&self, kind: &str) {
        if self.enabled() {
            let kind = match kind {
                "panic" => "trap",
                "malformed" => "malformed_answer",
                other => other,
            };
            self.policy_faults.with_label_values(&[kind]).inc();
        }
    }

    /// One cache lookup.
    pub fn cache(&self, cache: CacheName, hit: bool) {
        if self.enabled() {
            let counters = if hit { &self.cache_hits } else { &self.cache_misses };
            counters[cache as usize].inc();
        }
    }

    /// One reload, applied or refused.
    pub fn reload(&self, applied: bool) {
        if self.enabled() {
            self.reloads.with_label_values(&[if applied { "applied" } else { "refused" }]).inc();
        }
    }

    /// One fetch of the Authority's JWKS URL.
    pub fn keys_fetch(&self, ok: bool) {
        if self.enabled() {
            self.authority_key_fetches.with_label_values(&[if ok { "ok" } else { "error" }]).inc();
        }
    }

    /// A policy bundle was applied (its revision is read from the live state at each scrape).
    pub fn bundle_applied(&self) {
        if self.enabled() {
            self.bundles_applied.inc();
        }
    }

    /// A policy bundle was refused for `reason` ([`crate::bundle::BundleError::reason`]).
    pub fn bundle_refused(&self, reason: &str) {
        if self.enabled() {
            self.bundle_refusals.with_label_values(&[reason]).inc();
        }
    }

    /// One ledger commit that took `seconds`.
    pub fn ledger_commit(&self, seconds: f64) {
        if self.enabled() {
            self.ledger_commit.observe(seconds);
        }
    }

    /// One ledger event dropped.
    pub fn ledger_event_dropped(&self) {
        if self.enabled() {
            self.ledger_dropped.inc();
        }
    }

    /// The exposition, in the Prometheus text format, with the gauges of `snapshot`.
    pub fn render(&self, snapshot: &Snapshot<'_>) -> String {
        let _one_at_a_time = self.rendering.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.ledger_queue.set(i64::try_from(snapshot.ledger_queue).unwrap_or(i64::MAX));
        self.revocations_active.reset();
        for (kind, count) in &snapshot.revocations {
            self.revocations_active.with_label_values(&[kind]).set(i64::try_from(*count).unwrap_or(i64::MAX));
        }
        self.signing_key_info.reset();
        self.signing_certificate_expiry.reset();
        for key in snapshot.signing_keys {
            let published = if key.published { "true" } else { "false" };
            self.signing_key_info.with_label_values(&[&key.kid, key.status, key.algorithm, published]).set(1);
            if let Some(expires) = key.certificate_expires {
                self.signing_certificate_expiry.with_label_values(&[&key.kid]).set(expires);
            }
        }
        // What is live at the scrape: a reload that drops `policy.bundle` drops the revision too.
        self.bundle_revision
            .set(snapshot.bundle_revision.map_or(0, |r| i64::try_from(r).unwrap_or(i64::MAX)));
        self.policy_info.reset();
        if let Some((digest, settings)) = snapshot.policy {
            self.policy_info.with_label_values(&[digest, settings]).set(1);
        }
        let mut out = Vec::new();
        // Encoding into memory fails only on a metric the registry would not have taken.
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(%error, "cannot encode the metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// The exposition's `Content-Type`.
    pub const CONTENT_TYPE: &'static str = "text/plain; version=0.0.4; charset=utf-8";
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scrapes at the same moment each see every series: a scrape resets the gauges it sets from
    /// its snapshot, and one reading meanwhile saw none of them.
    #[test]
    fn scrapes_at_the_same_moment_each_see_every_series() {
        let snapshot = Snapshot {
            ledger_queue: 0,
            revocations: vec![("subject", 1)],
            signing_keys: &[crate::mint::KeySummary {
                kid: "kid-a".into(),
                status: "active",
                algorithm: "RS256",
                published: true,
                certificate_expires: Some(1_900_000_000),
            }],
            policy: Some(("sha256:0", "v1")),
            bundle_revision: None,
        };
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..500 {
                        let exposition = metrics().render(&snapshot);
                        for series in [
                            "registry_token_signing_key_info{",
                            "registry_token_signing_certificate_expiry_timestamp_seconds{",
                            "registry_token_policy_info{",
                            "registry_token_revocations_active{",
                        ] {
                            assert!(exposition.contains(series), "{series} missing from a scrape");
                        }
                    }
                });
            }
        });
    }
}
