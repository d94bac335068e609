//! Token reuse: a deployment rolling out to hundreds of nodes asks, within seconds, for the same
//! token over and over — the same pull secret, the same service, the same scopes. Each such
//! request still has its credential validated, its revocations checked and its ledger event
//! written, but the token minted for the first is handed to the others while it is young: one RSA
//! signature instead of hundreds.
//!
//! An entry is keyed by the SHA-256 of the credential, the service and the requested scopes, and
//! is reused only within `window` seconds of its `iat`, while at least 80 % of its lifetime is
//! left, while the revocations are at the revision it was minted under, and while the policy
//! still decides the request as it did (a policy that reads the time may change its mind: the
//! policy is asked every time, from its decision cache; reuse saves the signature). The cache
//! belongs to one live configuration (policy, settings, signing key) and is dropped with it on
//! reload. Concurrent identical requests mint once: the first takes a slot, the others wait for
//! what it fills in once its ledger event is committed (or take the slot themselves if it could
//! not mint, or mint on their own after [`WAIT_FOR_MINT`]).

use super::Minted;
use crate::access::Resource;
use crate::bounded::{self, PerKib, Weighed};
use quick_cache::sync::{EntryAction, EntryResult, PlaceholderGuard};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

/// How long an identical request waits for the one minting before it mints on its own (a signer
/// or ledger that stalls must not queue every identical request behind one another).
pub const WAIT_FOR_MINT: Duration = Duration::from_secs(1);

/// What the policy decides of a request now: a token is reused only for the same decision.
#[derive(Clone, Copy, Debug)]
pub struct Decided<'a> {
    pub granted: &'a [Resource],
    /// The lifetime the policy asked for.
    pub lifetime_seconds: Option<u32>,
}

/// What identifies a reusable token: who (by the digest of their credential), for which
/// registry, asking what.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct ReuseKey {
    credential: [u8; 32],
    service: String,
    requested: Vec<Resource>,
}

impl ReuseKey {
    /// The key of a request presenting `credential` for `service` and `requested`.
    pub fn new(credential: &str, service: &str, requested: &[Resource]) -> ReuseKey {
        ReuseKey {
            credential: Sha256::digest(credential.as_bytes()).into(),
            service: service.to_owned(),
            requested: requested.to_vec(),
        }
    }

    fn bytes(&self) -> usize {
        32 + self.service.len()
            + self
                .requested
                .iter()
                .map(|r| {
                    72 + r.resource_type.len()
                        + r.name.len()
                        + r.actions.iter().map(|a| 24 + a.len()).sum::<usize>()
                })
                .sum::<usize>()
    }
}

/// A minted token, as kept for reuse.
#[derive(Clone, Debug)]
pub struct Reusable {
    /// The token and what its response says.
    pub minted: Arc<Minted>,
    /// What it grants (the `scope` of an OAuth2 answer, the event's `granted`).
    pub granted: Arc<[Resource]>,
    /// The lifetime the policy asked for.
    lifetime_seconds: Option<u32>,
    /// The revocations' revision it was minted under.
    revision: u64,
}

impl Reusable {
    /// `minted` on the decision `decided`, under revocations `revision`.
    pub fn new(minted: Minted, decided: Decided<'_>, revision: u64) -> Reusable {
        Reusable {
            minted: Arc::new(minted),
            granted: decided.granted.into(),
            lifetime_seconds: decided.lifetime_seconds,
            revision,
        }
    }

    /// The token as answered at `now`: its true `issued_at`, and `expires_in` counted from now.
    pub fn answer(&self, now: u64) -> Minted {
        Minted { expires_in: self.minted.expires_at.saturating_sub(now), ..(*self.minted).clone() }
    }

    fn bytes(&self) -> usize {
        let minted = &self.minted;
        minted.token.len()
            + minted.issued_at.len()
            + minted.jti.len()
            + 96
            + self.granted.iter().map(|r| 72 + r.name.len() + r.actions.len() * 32).sum::<usize>()
    }
}

type Guard<'a> = PlaceholderGuard<
    'a,
    ReuseKey,
    Weighed<Reusable>,
    PerKib,
    quick_cache::DefaultHashBuilder,
    quick_cache::sync::DefaultLifecycle<ReuseKey, Weighed<Reusable>>,
>;

/// What a look-up found.
#[derive(Debug)]
pub enum Lookup<'a> {
    /// A young token for exactly this request: answer with it.
    Reuse(Reusable),
    /// None (or only a stale one): mint, then [`Slot::fill`] it so that identical requests
    /// waiting meanwhile get the same token. Dropping the slot unfilled lets the next one mint.
    Mint(Option<Slot<'a>>),
}

/// The right, and duty, to mint the token of one key.
#[derive(Debug)]
pub struct Slot<'a> {
    guard: Guard<'a>,
    /// What the key holds: an entry weighs its key and its value.
    key_bytes: usize,
}

impl Slot<'_> {
    /// Offers `reusable` to the requests waiting for it and to later ones.
    pub fn fill(self, reusable: Reusable) {
        let bytes = self.key_bytes + reusable.bytes();
        let _ = self.guard.insert(Weighed::new(reusable, bytes));
    }
}

/// Recently minted tokens, bounded in entries and KiB like the other caches.
pub struct ReuseCache {
    cache: bounded::Cache<ReuseKey, Reusable>,
    window: u64,
}

impl std::fmt::Debug for ReuseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReuseCache")
            .field("window", &self.window)
            .field("entries", &self.cache.len())
            .finish()
    }
}

impl ReuseCache {
    /// Reuses tokens up to `window` seconds old, in `capacity` KiB; `None` when either is 0.
    pub fn new(capacity: usize, window: u64) -> Option<ReuseCache> {
        if window == 0 {
            return None;
        }
        bounded::cache(capacity).map(|cache| ReuseCache { cache, window })
    }

    /// Whether `reusable` may be answered at `now` for a request the policy decides as
    /// `decided`, under revocations `revision`: the same decision, under the same revocations, at
    /// most `window` seconds old, with at least 80 % of its lifetime left.
    fn young(&self, reusable: &Reusable, decided: Decided<'_>, revision: u64, now: u64) -> bool {
        let minted = &reusable.minted;
        let lifetime = minted.expires_at.saturating_sub(minted.iat);
        let left = minted.expires_at.saturating_sub(now);
        reusable.revision == revision
            && *reusable.granted == *decided.granted
            && reusable.lifetime_seconds == decided.lifetime_seconds
            && now.saturating_sub(minted.iat) <= self.window
            && left * 5 >= lifetime * 4
    }

    /// The young token for `key` and the decision `decided`, or the slot to mint it in. Waits
    /// (at most [`WAIT_FOR_MINT`]) while an identical request is minting; reads the `clock` when
    /// it decides, after any wait.
    pub async fn lookup(
        &self,
        key: &ReuseKey,
        decided: Decided<'_>,
        revision: u64,
        clock: &(dyn Fn() -> u64 + Send + Sync),
    ) -> Lookup<'_> {
        // The common case, a read lock only.
        if let Some(hit) = self.cache.get(key)
            && self.young(&hit.value, decided, revision, clock())
        {
            return Lookup::Reuse(hit.value);
        }
        let entry = self.cache.entry_async(key, |_, cached| {
            match self.young(&cached.value, decided, revision, clock()) {
                true => EntryAction::Retain(cached.value.clone()),
                false => EntryAction::ReplaceWithGuard,
            }
        });
        match tokio::time::timeout(WAIT_FOR_MINT, entry).await {
            Ok(EntryResult::Retained(reusable)) => Lookup::Reuse(reusable),
            Ok(EntryResult::Vacant(guard) | EntryResult::Replaced(guard, _)) => {
                Lookup::Mint(Some(Slot { guard, key_bytes: key.bytes() }))
            }
            // Waited long enough, or neither asked for (no timeout, no removal): mint unshared.
            Err(_) | Ok(EntryResult::Removed(..) | EntryResult::Timeout) => Lookup::Mint(None),
        }
    }

    /// Entries, and their weight in KiB.
    pub fn usage(&self) -> (usize, u64) {
        (self.cache.len(), self.cache.weight())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    const WINDOW: u64 = 30;
    const MINTED_AT: u64 = 1_000_000;

    fn pull() -> Vec<Resource> {
        vec![Resource {
            resource_type: "repository".into(),
            name: "team/app".into(),
            actions: vec!["pull".into()],
        }]
    }

    fn decided(granted: &[Resource]) -> Decided<'_> {
        Decided { granted, lifetime_seconds: None }
    }

    fn reusable(granted: &[Resource]) -> Reusable {
        let minted = Minted {
            token: "header.claims.signature".into(),
            expires_in: 300,
            issued_at: "1970-01-12T13:46:40Z".into(),
            iat: MINTED_AT,
            jti: "jti-1".into(),
            expires_at: MINTED_AT + 300,
            lifetime: None,
        };
        Reusable::new(minted, decided(granted), 0)
    }

    /// A request identical to one whose mint stalls (a signer or ledger that hangs) waits
    /// [`WAIT_FOR_MINT`], then mints on its own, unshared.
    #[tokio::test(start_paused = true)]
    async fn an_identical_request_waits_for_a_stalled_mint_at_most_a_second() {
        let cache = ReuseCache::new(1024, WINDOW).unwrap();
        let (key, granted) = (ReuseKey::new("caller", "registry", &pull()), pull());
        let clock = || MINTED_AT;
        let Lookup::Mint(Some(_held)) = cache.lookup(&key, decided(&granted), 0, &clock).await else {
            panic!("the first request did not get the slot");
        };
        let started = tokio::time::Instant::now();
        let waited =
            tokio::time::timeout(Duration::from_secs(60), cache.lookup(&key, decided(&granted), 0, &clock));
        let lookup = waited.await.expect("the identical request still waits after a minute");
        assert!(matches!(lookup, Lookup::Mint(None)), "{lookup:?}");
        assert_eq!(started.elapsed(), WAIT_FOR_MINT);
    }

    /// What a request identical to one minting gets when, while it waits, the clock moves
    /// `later` seconds past the token's `iat` and then the token arrives.
    async fn wait_while_the_clock_moves(later: u64) -> &'static str {
        let cache = Arc::new(ReuseCache::new(1024, WINDOW).unwrap());
        let now = Arc::new(AtomicU64::new(MINTED_AT));
        let key = ReuseKey::new("caller", "registry", &pull());
        let granted = pull();
        let clock = {
            let now = Arc::clone(&now);
            move || now.load(Ordering::SeqCst)
        };
        let Lookup::Mint(Some(slot)) = cache.lookup(&key, decided(&granted), 0, &clock).await else {
            panic!("the first request did not get the slot");
        };
        let waiter = {
            let (cache, key, clock) = (Arc::clone(&cache), key.clone(), clock.clone());
            tokio::spawn(async move {
                let granted = pull();
                match cache.lookup(&key, decided(&granted), 0, &clock).await {
                    Lookup::Reuse(_) => "reuse",
                    Lookup::Mint(Some(_)) => "mint, in the slot",
                    Lookup::Mint(None) => "mint, unshared",
                }
            })
        };
        // The waiter is parked on the slot (well within WAIT_FOR_MINT) when the clock moves and
        // the token arrives.
        tokio::time::sleep(Duration::from_millis(200)).await;
        now.store(MINTED_AT + later, Ordering::SeqCst);
        slot.fill(reusable(&granted));
        waiter.await.unwrap()
    }

    /// A request that waited for an identical one's token judges its age when it arrives, not
    /// when the wait began: one that became too old meanwhile is not reused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_request_reads_the_clock_after_its_wait() {
        assert_eq!(wait_while_the_clock_moves(WINDOW).await, "reuse");
        assert_eq!(wait_while_the_clock_moves(WINDOW + 1).await, "mint, in the slot");
    }
}
