//! The issuance ledger: every exchange recorded durably, and the revocations the host checks
//! before any policy is asked. SQLite by default (one file), PostgreSQL for replicas sharing one
//! ledger. It knows nothing of HTTP: `http` records events and asks about revocations, `cli`
//! reads and revokes, `app` holds it.
//!
//! Writes go through one bounded queue to one writer task, which commits whatever has queued up
//! in one transaction (group commit): concurrent requests share a commit. With
//! [`Durability::Strict`] a request waits for its `issued` event's commit before it returns the
//! token; with [`Durability::Relaxed`] it does not, and what the queue cannot hold is dropped and
//! counted. Revocations are read back every [`POLL`] by every replica, so one made anywhere
//! applies everywhere within a second, and at once on the replica that took it.

mod event;
mod postgres;
pub mod refresh;
mod sqlite;
mod store;

pub use event::{
    AppliedBundle, Event, IssuedToken, LifetimeRecord, Millis, Outcome, Presented, Revocation,
    RevocationKind, RevocationSet, check_window,
};
pub use refresh::{RefreshError, RefreshToken};
pub use store::{Change, EventFilter, ExportWindow, Migrate, RefreshTokenFilter, StoreError};

use crate::access::Caller;
use crate::config::{Durability, LedgerConfig, LedgerUrl};
use arc_swap::ArcSwap;
use sqlite::Checkpointer;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use store::{Param, Record, Store};
use tokio::sync::{mpsc, oneshot};

/// How often every replica reads the revocations' revision.
pub const POLL: Duration = Duration::from_millis(250);
/// The longest a strict request waits for its commit before it is refused (503).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(5);
/// Events per transaction, at most.
const MAX_BATCH: usize = 512;
/// How long a relaxed commit waits for more events (nobody waits on it).
const RELAXED_GATHER: Duration = Duration::from_millis(50);
/// How long a strict commit of events nobody waits for (reused answers, denials) waits for more,
/// unless one that is waited for arrives first.
const QUEUED_GATHER: Duration = Duration::from_millis(10);
/// How often old events are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// A poller's checkpoint round this short leaves the writer a tail of a few milliseconds' copying;
/// after a longer one (the log had grown) the poller copies again, at most
/// [`CHECKPOINT_ROUNDS`] times per poll.
const QUICK_CHECKPOINT: Duration = Duration::from_millis(20);
const CHECKPOINT_ROUNDS: usize = 4;

/// A record on its way to a commit ([`Ledger::submit`]).
#[derive(Debug)]
pub struct Committing {
    done: oneshot::Receiver<Result<(), String>>,
    timeout: Duration,
}

impl Committing {
    /// Waits until the record is committed (at most the commit timeout).
    pub async fn wait(self) -> Result<(), Unavailable> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        self.wait_until(deadline).await
    }

    /// Waits until the record is committed, or `deadline` (which ends a wait of the timeout).
    async fn wait_until(self, deadline: tokio::time::Instant) -> Result<(), Unavailable> {
        match tokio::time::timeout_at(deadline, self.done).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(error))) => Err(Unavailable::new(error)),
            Ok(Err(_)) => Err(Unavailable::new("the writer stopped")),
            // Still queued, or being written: it may yet be committed.
            Err(_) => {
                Err(Unavailable { message: format!("no commit within {:?}", self.timeout), may_land: true })
            }
        }
    }
}

/// The ledger could not take an event a strict request must commit: no token is returned.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the issuance ledger cannot be written: {message}")]
pub struct Unavailable {
    pub message: String,
    /// The record was queued and its commit not refused: it may yet land (a timeout).
    pub may_land: bool,
}

impl Unavailable {
    fn new(message: impl Into<String>) -> Unavailable {
        Unavailable { message: message.into(), may_land: false }
    }
}

struct Pending {
    /// `None`: a barrier ([`Ledger::flush`]), answered once everything before it is committed.
    record: Option<Record>,
    committed: Option<oneshot::Sender<Result<(), String>>>,
}

impl Pending {
    /// Whether someone waits for its commit (a strict token, a barrier).
    fn awaited(&self) -> bool {
        self.committed.is_some()
    }
}

/// The ledger's state, for `/readyz`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Health {
    /// `sqlite` or `postgres`.
    pub backend: &'static str,
    /// `strict` or `relaxed`.
    pub durability: &'static str,
    /// Whether the last write (or check) succeeded.
    pub writable: bool,
    /// Events waiting to be written.
    pub queued: usize,
    /// Events dropped since start (relaxed: the queue was full; strict: events other than
    /// `issued` that could not be kept while the ledger was down).
    pub dropped: u64,
    /// Revocations in force on this replica.
    pub revocations: usize,
    /// The last write error, while not writable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

struct Shared {
    store: Store,
    url: String,
    durability: Durability,
    writable: AtomicBool,
    queued: AtomicUsize,
    dropped: AtomicU64,
    last_error: Mutex<Option<String>>,
    revocations: ArcSwap<RevocationSet>,
    revision: AtomicU64,
    /// One refresh at a time, so an older read never replaces a newer one.
    refreshing: tokio::sync::Mutex<()>,
    /// Events the writer holds for a retry (the database was down).
    kept: AtomicUsize,
    /// The poller's checkpoint left frames for the writer's (SQLite).
    tail_due: AtomicBool,
    /// The last checkpoint failed (logged once until one succeeds again).
    checkpoint_failing: AtomicBool,
    /// Transactions the writer committed since start.
    commits: AtomicU64,
    /// Checkpoints the writer made (SQLite).
    #[cfg(test)]
    writer_checkpoints: AtomicU64,
    /// Makes every read of the revocations fail (a database that commits, then cannot be read).
    #[cfg(test)]
    revocations_unreadable: AtomicBool,
    retention: Duration,
    /// Rung when an event someone waits for (or a barrier) is queued: a writer gathering events
    /// nobody waits for commits then, without being woken by each of those.
    awaited_queued: tokio::sync::Notify,
}

impl Shared {
    /// Counts one event dropped (in `/readyz` and in metrics); the count since start.
    fn drop_one(&self) -> u64 {
        crate::metrics::metrics().ledger_event_dropped();
        self.dropped.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// A handle on the ledger: cheap to clone, shared by the request path and the admin API.
#[derive(Clone)]
pub struct Ledger {
    shared: Arc<Shared>,
    queue: Option<mpsc::Sender<Pending>>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").field("url", &self.shared.url).field("store", &self.shared.store).finish()
    }
}

impl Ledger {
    /// Opens the configured ledger (creating and migrating it), loads the revocations, and — when
    /// `serving` — starts the writer, the revocation poller and the pruner. `Ok(None)` for
    /// `url: none`.
    pub async fn open(config: &LedgerConfig, serving: bool) -> Result<Option<Ledger>, StoreError> {
        Ledger::open_with(config, serving, Migrate::Apply).await
    }

    /// The ledger `config` names, for a command (it writes nothing in the background): with
    /// [`Migrate::Never`], a ledger of another schema version is refused, never migrated.
    pub async fn open_for_command(
        config: &LedgerConfig,
        migrate: Migrate,
    ) -> Result<Option<Ledger>, StoreError> {
        Ledger::open_with(config, false, migrate).await
    }

    async fn open_with(
        config: &LedgerConfig,
        serving: bool,
        migrate: Migrate,
    ) -> Result<Option<Ledger>, StoreError> {
        let url = config.url.to_string();
        let store = match &config.url {
            LedgerUrl::None => return Ok(None),
            LedgerUrl::Sqlite(path) => {
                Store::Sqlite(sqlite::Store::open(path, config.sqlite_sync(), migrate).await?)
            }
            LedgerUrl::Postgres(full) => {
                Store::Postgres(postgres::Store::open(full, &url, migrate, serving).await?)
            }
        };
        let shared = Arc::new(Shared {
            store,
            url,
            durability: config.durability,
            writable: AtomicBool::new(true),
            queued: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
            last_error: Mutex::new(None),
            revocations: ArcSwap::from_pointee(RevocationSet::default()),
            revision: AtomicU64::new(u64::MAX),
            refreshing: tokio::sync::Mutex::new(()),
            kept: AtomicUsize::new(0),
            tail_due: AtomicBool::new(false),
            checkpoint_failing: AtomicBool::new(false),
            commits: AtomicU64::new(0),
            #[cfg(test)]
            writer_checkpoints: AtomicU64::new(0),
            #[cfg(test)]
            revocations_unreadable: AtomicBool::new(false),
            retention: Duration::from_secs(u64::from(config.retention_days) * 86_400),
            awaited_queued: tokio::sync::Notify::new(),
        });
        refresh_revocations(&shared).await?;
        if !serving {
            return Ok(Some(Ledger { shared, queue: None }));
        }
        let (queue, receiver) = mpsc::channel(config.queue_events);
        tokio::spawn(write_loop(Arc::clone(&shared), receiver, config.queue_events));
        tokio::spawn(poll_loop(Arc::downgrade(&shared)));
        tokio::spawn(prune_loop(Arc::downgrade(&shared)));
        Ok(Some(Ledger { shared, queue: Some(queue) }))
    }

    /// The URL, without a password.
    pub fn url(&self) -> &str {
        &self.shared.url
    }

    /// The configured durability.
    pub fn durability(&self) -> Durability {
        self.shared.durability
    }

    /// Queues `event` without waiting. When the queue is full it is dropped and counted.
    pub fn record(&self, event: Event) {
        self.record_with(event, None);
    }

    fn record_with(&self, event: Event, change: Option<Change>) {
        let Some(queue) = &self.queue else { return };
        // Anyone can send a token that fails validation: while the queue is more than half full,
        // such events make way for those of callers who were validated (and for strict tokens).
        let crowded = queue.capacity() < queue.max_capacity() / 2;
        if crowded && event.outcome == Outcome::Refused {
            let dropped = self.shared.drop_one();
            if dropped.is_power_of_two() {
                tracing::warn!(
                    dropped,
                    "the ledger's queue is crowded: a refused request's event was dropped"
                );
            }
            return;
        }
        self.shared.queued.fetch_add(1, Ordering::Relaxed);
        let record = Record { event, change };
        if let Err(refused) = queue.try_send(Pending { record: Some(record), committed: None }) {
            self.shared.queued.fetch_sub(1, Ordering::Relaxed);
            let dropped = self.shared.drop_one();
            if dropped.is_power_of_two() {
                let event = match &refused {
                    mpsc::error::TrySendError::Full(p) | mpsc::error::TrySendError::Closed(p) => {
                        p.record.as_ref().map(|r| r.event.id.clone())
                    }
                };
                tracing::warn!(
                    dropped,
                    event = event.unwrap_or_default(),
                    "the ledger's queue is full: an event was dropped"
                );
            }
        }
    }

    /// Queues `event` and waits until it is committed (strict durability).
    pub async fn commit(&self, event: Event) -> Result<(), Unavailable> {
        self.barrier(Some(Record { event, change: None }), COMMIT_TIMEOUT).await
    }

    /// Waits (at most `timeout`) until every event queued so far is committed: at shutdown.
    pub async fn flush(&self, timeout: Duration) -> Result<(), Unavailable> {
        self.barrier(None, timeout).await
    }

    async fn barrier(&self, record: Option<Record>, timeout: Duration) -> Result<(), Unavailable> {
        let Some(queue) = &self.queue else {
            return Err(Unavailable::new("the ledger is not serving"));
        };
        if record.is_some() {
            return self.enqueue(record, timeout)?.wait().await;
        }
        // A barrier waits for room: it must come after everything queued. Room and the commit
        // share the one `timeout` (a shutdown promises at most that long).
        let deadline = tokio::time::Instant::now() + timeout;
        let (committed, done) = oneshot::channel();
        self.shared.queued.fetch_add(1, Ordering::Relaxed);
        let pending = Pending { record: None, committed: Some(committed) };
        let sent = tokio::time::timeout_at(deadline, queue.send(pending)).await;
        if !matches!(sent, Ok(Ok(()))) {
            self.shared.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(Unavailable::new("its queue is full"));
        }
        self.shared.awaited_queued.notify_one();
        Committing { done, timeout }.wait_until(deadline).await
    }

    /// Queues `record` for the writer's next commit and returns what to wait on, at once.
    fn enqueue(&self, record: Option<Record>, timeout: Duration) -> Result<Committing, Unavailable> {
        let Some(queue) = &self.queue else {
            return Err(Unavailable::new("the ledger is not serving"));
        };
        let (committed, done) = oneshot::channel();
        self.try_queue(queue, Pending { record, committed: Some(committed) })
            .map_err(|_| Unavailable::new("its queue is full"))?;
        self.shared.awaited_queued.notify_one();
        Ok(Committing { done, timeout })
    }

    /// Puts `pending` on the writer's `queue`, counted; gives it back when the queue is full.
    fn try_queue(&self, queue: &mpsc::Sender<Pending>, pending: Pending) -> Result<(), Box<Pending>> {
        self.shared.queued.fetch_add(1, Ordering::Relaxed);
        queue.try_send(pending).map_err(|full| {
            self.shared.queued.fetch_sub(1, Ordering::Relaxed);
            Box::new(full.into_inner())
        })
    }

    /// Queues `event` (with `change`) to be committed, without waiting: the caller does its own
    /// work meanwhile (signs the token the event records) and then [`Committing::wait`]s, so that
    /// the commit overlaps the work instead of following it.
    pub fn submit(&self, event: Event, change: Option<Change>) -> Result<Committing, Unavailable> {
        self.enqueue(Some(Record { event, change }), COMMIT_TIMEOUT)
    }
    /// Records `event`: committed before returning when `strict` and it is an `issued` event.
    pub async fn keep(&self, event: Event) -> Result<(), Unavailable> {
        self.keep_with(event, None).await
    }

    /// Records `event` and makes `change` in the same transaction. Waits for the commit when
    /// `strict` and the event is `issued`, and always when a refresh token is issued: a refresh
    /// token is handed out only once the ledger can recognise it.
    pub async fn keep_with(&self, event: Event, change: Option<Change>) -> Result<(), Unavailable> {
        let strict = self.shared.durability == Durability::Strict && event.outcome == Outcome::Issued;
        let issues_token = matches!(change, Some(Change::RefreshTokenIssued { .. }));
        if strict || issues_token {
            return self.barrier(Some(Record { event, change }), COMMIT_TIMEOUT).await;
        }
        self.record_with(event, change);
        Ok(())
    }

    /// Queues the event of an answer whose token's own `issued` event is committed already (a
    /// reused token), with `change`, without waiting for its commit: it is kept like a denial's
    /// (through an outage too, up to `queue_events`). Never dropped instead: while a strict ledger
    /// cannot be written or its queue is full, `Err` — the answer is refused like a new token's —
    /// with the event back, for the caller to record what became of the exchange.
    pub fn keep_queued(&self, event: Event, change: Option<Change>) -> Result<(), (Unavailable, Box<Event>)> {
        let Some(queue) = &self.queue else {
            return Err((Unavailable::new("the ledger is not serving"), Box::new(event)));
        };
        if !self.can_issue() {
            return Err((Unavailable::new("it cannot be written"), Box::new(event)));
        }
        self.try_queue(queue, Pending { record: Some(Record { event, change }), committed: None }).map_err(
            |pending| {
                let event = pending.record.map_or_else(|| Event::new(Outcome::Fault), |record| record.event);
                (Unavailable::new("its queue is full"), Box::new(event))
            },
        )
    }

    /// The revocation in force that refuses `caller` (who presented `tokens`) at `now`.
    pub fn revoked(&self, caller: &Caller, tokens: Presented<'_>, now: Millis) -> Option<Revocation> {
        self.shared.revocations.load().check(caller, tokens, now).cloned()
    }

    /// Transactions the writer has committed since start: events ÷ commits is how many requests
    /// shared each (the benchmark's ledger stage).
    pub fn commits(&self) -> u64 {
        self.shared.commits.load(Ordering::Relaxed)
    }

    /// The revision of the revocations in force: it changes whenever they do (here or, after the
    /// next poll, on any replica).
    pub fn revocations_revision(&self) -> u64 {
        self.shared.revision.load(Ordering::Acquire)
    }

    /// The refresh token whose text is `presented`, if this ledger issued it. Read from the
    /// database on every use, so a token issued or revoked on another replica is seen at once.
    pub async fn find_refresh_token(&self, presented: &str) -> Result<Option<RefreshToken>, StoreError> {
        match refresh::token_hash(presented) {
            Some(hash) => self.shared.store.refresh_token_by_hash(&hash).await,
            None => Ok(None),
        }
    }

    /// The refresh token `id`.
    pub async fn refresh_token(&self, id: &str) -> Result<Option<RefreshToken>, StoreError> {
        self.shared.store.refresh_token(id).await
    }

    /// A refresh token as the admin API and `ledger refresh-tokens` show it: never its text; its
    /// `state` at `now` (`active`, `revoked`, `expired` or `idle`) and, if revoked, why.
    pub fn refresh_token_view(&self, token: &RefreshToken, now: Millis) -> serde_json::Value {
        let presented =
            Presented { caller_jti: token.caller_jti.as_deref(), refresh_token: Some(token.id.as_str()) };
        let revoked = self.revoked(&token.caller, presented, now);
        let state = match &revoked {
            Some(_) => "revoked",
            None if now >= token.expires_at => "expired",
            None if token.idle_expires_at().is_some_and(|idle| now >= idle) => "idle",
            None => "active",
        };
        let mut view = serde_json::to_value(token).unwrap_or_default();
        view["idle_expires_at"] = serde_json::json!(token.idle_expires_at());
        view["state"] = serde_json::json!(state);
        view["revoked"] = serde_json::json!(revoked.map(|r| r.message()));
        view
    }

    /// Refresh tokens matching `filter`, newest first.
    pub async fn refresh_tokens(&self, filter: &RefreshTokenFilter) -> Result<Vec<RefreshToken>, StoreError> {
        self.shared.store.refresh_tokens(filter).await
    }

    /// Revocations in force at `now`, by kind (for metrics).
    pub fn active_revocations(&self, now: Millis) -> Vec<(&'static str, usize)> {
        self.shared.revocations.load().active_by_kind(now)
    }

    /// The ledger's state now.
    pub fn health(&self) -> Health {
        let shared = &self.shared;
        let writable = shared.writable.load(Ordering::Relaxed);
        Health {
            backend: shared.store.backend(),
            durability: match shared.durability {
                Durability::Strict => "strict",
                Durability::Relaxed => "relaxed",
            },
            writable,
            queued: shared.queued.load(Ordering::Relaxed) + shared.kept.load(Ordering::Relaxed),
            dropped: shared.dropped.load(Ordering::Relaxed),
            revocations: shared.revocations.load().active(Millis::now()),
            error: if writable { None } else { shared.last_error.lock().ok().and_then(|e| e.clone()) },
        }
    }

    /// Whether the service can issue: a strict ledger must be writable.
    pub fn can_issue(&self) -> bool {
        self.shared.durability == Durability::Relaxed || self.shared.writable.load(Ordering::Relaxed)
    }

    /// Events matching `filter`, newest first.
    pub async fn events(&self, filter: &EventFilter) -> Result<Vec<Event>, StoreError> {
        self.shared.store.events(filter).await
    }

    /// What an export of the events at or after `since` and before `until` covers: the ids the
    /// window holds now, first to last (an event committed later with an id in between is read if
    /// its page has not been: not a snapshot); `None` when it has none.
    pub async fn export_window(
        &self,
        since: Option<Millis>,
        until: Option<Millis>,
    ) -> Result<Option<ExportWindow>, StoreError> {
        self.shared.store.export_window(since, until).await
    }

    /// One page of an export of `window`, in id order (which is time order), after `after_id`;
    /// at most `limit`.
    pub async fn export_page(
        &self,
        window: &ExportWindow,
        after_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        self.shared.store.export_page(window, after_id, limit).await
    }

    /// The event `id`.
    pub async fn event(&self, id: &str) -> Result<Option<Event>, StoreError> {
        self.shared.store.event(id).await
    }

    /// Every revocation, in the order made (expired ones until pruned).
    pub async fn revocations(&self) -> Result<Vec<Revocation>, StoreError> {
        self.shared.store.revocations().await
    }

    /// Stores `revocation` with its audit event, committed, and applies it on this replica at
    /// once (the others see it at their next poll).
    pub async fn revoke(&self, revocation: &Revocation, audit: Event) -> Result<(), StoreError> {
        let params = store::revocation_params(revocation);
        self.shared.store.change_revocations(store::INSERT_REVOCATION, params, audit).await?;
        // Committed: a failure to read it back is not an error to answer (a retry would revoke
        // twice), and this replica applies it now rather than at a later poll, as promised.
        if let Err(error) = refresh_revocations(&self.shared).await {
            tracing::warn!(%error, "revocation committed and applied here; the ledger is read again at the next poll");
            self.shared.revocations.rcu(|set| set.and(revocation.clone()));
        }
        Ok(())
    }

    /// The highest bundle revision applied from `source`, if one was recorded.
    pub async fn applied_bundle(&self, source: &str) -> Result<Option<AppliedBundle>, StoreError> {
        Ok(self.shared.store.applied_bundles(Some(source)).await?.into_iter().next())
    }

    /// Every source's highest applied bundle revision.
    pub async fn applied_bundles(&self) -> Result<Vec<AppliedBundle>, StoreError> {
        self.shared.store.applied_bundles(None).await
    }

    /// Records `bundle` as applied from its source, committed, if its revision is higher than
    /// the one recorded (a record is never lowered); whether it raised the record.
    pub async fn record_applied_bundle(&self, bundle: &AppliedBundle) -> Result<bool, StoreError> {
        let params = store::applied_bundle_params(bundle);
        Ok(self.shared.store.execute(store::RAISE_BUNDLE, params).await? > 0)
    }

    /// Forgets `source`'s record, so that its next bundle may have any revision; whether there
    /// was one.
    pub async fn forget_applied_bundle(&self, source: &str) -> Result<bool, StoreError> {
        let params = vec![Param::Text(Some(source.to_owned()))];
        Ok(self.shared.store.execute(store::FORGET_BUNDLE, params).await? > 0)
    }

    /// Lifts revocation `id` with its audit event; `false` if there is none.
    pub async fn unrevoke(&self, id: &str, audit: Event) -> Result<bool, StoreError> {
        let params = vec![Param::Text(Some(id.to_owned()))];
        let lifted = self.shared.store.change_revocations(store::DELETE_REVOCATION, params, audit).await?;
        if let Err(error) = refresh_revocations(&self.shared).await {
            tracing::warn!(%error, "revocation lifted here; the ledger is read again at the next poll");
            self.shared.revocations.rcu(|set| set.without(id));
        }
        Ok(lifted)
    }
}

/// Reloads the revocations when their revision changed.
async fn refresh_revocations(shared: &Shared) -> Result<(), StoreError> {
    let _one_at_a_time = shared.refreshing.lock().await;
    #[cfg(test)]
    if shared.revocations_unreadable.load(Ordering::Relaxed) {
        return Err(StoreError::Unreachable("the test made the revocations unreadable".into()));
    }
    let revision = shared.store.revision().await?;
    let revision = u64::try_from(revision).unwrap_or_default();
    if shared.revision.load(Ordering::Acquire) == revision {
        return Ok(());
    }
    let revocations = shared.store.revocations().await?;
    let count = revocations.len();
    shared.revocations.store(Arc::new(RevocationSet::new(revocations)));
    let previous = shared.revision.swap(revision, Ordering::AcqRel);
    if previous != u64::MAX {
        tracing::info!(revision, revocations = count, "revocations changed");
    }
    Ok(())
}

async fn poll_loop(shared: std::sync::Weak<Shared>) {
    let mut failing = false;
    let mut interval = tokio::time::interval(POLL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(shared) = shared.upgrade() else { return };
        match refresh_revocations(&shared).await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("revocations can be read again");
            }
            Ok(()) => {}
            Err(error) => {
                if !failing {
                    failing = true;
                    tracing::error!(%error, "cannot read the revocations; the last ones read stay in force");
                }
                // A replica with nothing to write learns here, not at its next request, that its
                // ledger cannot be written, and `/readyz` says so at once. Only a write that fails
                // counts (the probe commits one): a read may fail for less.
                if shared.writable.load(Ordering::Relaxed)
                    && let Err(probe) = shared.store.ping().await
                {
                    mark_failing(&shared, &probe);
                }
            }
        }
        // The bulk of the log is copied here, beside the commits. When it was all copied and
        // nothing committed meanwhile, the next commit starts the log again by itself; otherwise
        // the writer copies what was left between two commits, and its next commit starts it.
        // After a long round (the log had grown, say while a long query held this connection) a
        // second one copies most of what the first left, so the writer's pause stays short.
        for round in 1..=CHECKPOINT_ROUNDS {
            let started = Instant::now();
            match checkpoint(&shared, Checkpointer::Reader).await {
                Some(found) if found.left_behind() => {
                    if started.elapsed() <= QUICK_CHECKPOINT || round == CHECKPOINT_ROUNDS {
                        shared.tail_due.store(true, Ordering::Release);
                        break;
                    }
                }
                _ => break,
            }
        }
        // While the ledger is failing, see whether it is back even with no traffic to write. With
        // events held, the writer's own retries of them tell (a probe's one row may fit where
        // they do not: a full file still rewrites a page it has).
        if !shared.writable.load(Ordering::Relaxed)
            && shared.queued.load(Ordering::Relaxed) == 0
            && shared.kept.load(Ordering::Relaxed) == 0
            && shared.store.ping().await.is_ok()
        {
            mark_writable(&shared);
        }
    }
}

async fn prune_loop(shared: std::sync::Weak<Shared>) {
    loop {
        let Some(strong) = shared.upgrade() else { return };
        let before = Millis(
            Millis::now().0.saturating_sub(i64::try_from(strong.retention.as_millis()).unwrap_or(i64::MAX)),
        );
        match strong.store.prune(before).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, before = %before, "pruned ledger events past retention"),
            Err(error) => tracing::warn!(%error, "cannot prune the ledger"),
        }
        drop(strong);
        tokio::time::sleep(PRUNE_EVERY).await;
    }
}

/// One step of SQLite's checkpoint (see `sqlite::Store::checkpoint`): the poller's, then the
/// writer's between two commits. A failure is logged (once, until one succeeds again) and left
/// to the next round: the log only grows meanwhile.
async fn checkpoint(shared: &Shared, by: Checkpointer) -> Option<sqlite::Checkpoint> {
    let started = Instant::now();
    match shared.store.checkpoint(by).await {
        Ok(found) => {
            if shared.checkpoint_failing.swap(false, Ordering::AcqRel) {
                tracing::info!(by = ?by, "ledger checkpoints succeed again");
            }
            if let Some(found) = found {
                tracing::debug!(
                    by = ?by,
                    frames = found.frames,
                    copied = found.copied,
                    appended = found.appended,
                    took_us = started.elapsed().as_micros() as u64,
                    "ledger checkpoint"
                );
            }
            found
        }
        Err(error) if !shared.checkpoint_failing.swap(true, Ordering::AcqRel) => {
            tracing::warn!(%error, by = ?by, "ledger checkpoint failed; the log grows until one succeeds");
            None
        }
        Err(error) => {
            tracing::debug!(%error, by = ?by, "ledger checkpoint failed again");
            None
        }
    }
}

fn mark_writable(shared: &Shared) {
    if !shared.writable.swap(true, Ordering::AcqRel) {
        tracing::info!(ledger = %shared.url, "the ledger is writable again");
    }
}

fn mark_failing(shared: &Shared, error: &StoreError) {
    if let Ok(mut last) = shared.last_error.lock() {
        *last = Some(error.to_string());
    }
    if shared.writable.swap(false, Ordering::AcqRel) {
        tracing::error!(ledger = %shared.url, %error, "the ledger cannot be written");
    }
}

/// The one writer: takes whatever has queued, commits it in one transaction, answers the strict
/// requests waiting on it. On failure the strict requests are refused at once (their tokens are
/// never returned), and the other events are kept — at most `capacity` of them — and retried.
async fn write_loop(shared: Arc<Shared>, mut queue: mpsc::Receiver<Pending>, capacity: usize) {
    let mut kept: Vec<Record> = Vec::new();
    let mut backoff = Duration::from_millis(50);
    loop {
        let mut batch: Vec<Pending> = Vec::new();
        if kept.is_empty() {
            match queue.recv().await {
                Some(pending) => batch.push(pending),
                None => return,
            }
        }
        // A commit costs about the same for one event as for dozens (the pages it writes): a
        // relaxed commit, which nobody waits for, gathers for a moment so that each carries more.
        // A strict one does not: its requests wait, and with the sync each commit takes, the
        // requests arriving meanwhile already share the next one (measured: gathering even 1 ms
        // more lowered throughput, docs/BENCHMARKS.md).
        // A strict batch of events nobody waits for (reused answers, denials) does gather, like a
        // relaxed one, but only until an event that is waited for arrives.
        let gather = match shared.durability {
            Durability::Relaxed => RELAXED_GATHER,
            Durability::Strict => QUEUED_GATHER,
        };
        // Gathering sleeps rather than waking at each event (a wake-up per event, on a busy
        // server, cost about as much CPU as the event's insert).
        let until = tokio::time::Instant::now() + gather;
        let mut awaited = batch.iter().any(Pending::awaited);
        loop {
            while batch.len() < MAX_BATCH {
                let Ok(pending) = queue.try_recv() else { break };
                awaited |= pending.awaited();
                batch.push(pending);
            }
            let now = tokio::time::Instant::now();
            let strict_waits = awaited && shared.durability == Durability::Strict;
            if batch.len() >= MAX_BATCH || strict_waits || now >= until {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep_until(until) => {}
                () = shared.awaited_queued.notified() => {}
            }
        }

        shared.queued.fetch_sub(batch.len(), Ordering::Relaxed);
        let mut waiting = Vec::new();
        let retried = kept.len();
        let mut events = std::mem::take(&mut kept);
        let mut barriers: Vec<oneshot::Sender<Result<(), String>>> = Vec::new();
        for pending in batch {
            match pending.record {
                Some(record) => {
                    events.push(record);
                    waiting.push(pending.committed);
                }
                None => barriers.extend(pending.committed),
            }
        }
        if events.is_empty() {
            for barrier in barriers {
                let _ = barrier.send(Ok(()));
            }
            continue;
        }
        let started = Instant::now();
        let count = events.len();
        let waiting: Vec<Waiter> = std::iter::repeat_with(|| None).take(retried).chain(waiting).collect();
        let mut written = shared.store.write(events).await;
        if let Err((error, events)) = written {
            // When the database answers, the batch failed on the way (a connection a restart
            // broke, a pool that timed out while the database came back) or for something in it.
            // Once more whole tells which; writing thousands of kept events one by one after an
            // outage took seconds, and a transient error in one of them dropped it.
            written = if shared.store.ping().await.is_ok() {
                tracing::debug!(%error, "a ledger batch failed while the database answers; writing it once more");
                shared.store.write(events).await
            } else {
                Err((error, events))
            };
        }
        let outage = match written {
            Ok(()) => {
                for committed in waiting.into_iter().flatten().chain(barriers.drain(..)) {
                    let _ = committed.send(Ok(()));
                }
                committed(&shared, count, started).await;
                None
            }
            Err((error, events)) if !error.is_unreachable() && shared.store.ping().await.is_ok() => {
                // Refused twice while the database answers: something in this batch is refused.
                // Each event alone, so that one bad event cannot hold up every later one.
                tracing::warn!(%error, events = events.len(), "a ledger batch was refused; writing its events one by one");
                let mut records = events.into_iter().zip(waiting);
                let mut outage = None;
                while let Some((record, committed)) = records.next() {
                    let id = record.event.id.clone();
                    match shared.store.write(vec![record]).await {
                        Ok(()) => answer(committed, Ok(())),
                        Err((error, mut alone))
                            if error.is_unreachable() || shared.store.ping().await.is_err() =>
                        {
                            // Not this event: the database went away. It and the rest are held.
                            let held: Vec<(Record, Waiter)> = alone
                                .pop()
                                .map(|record| (record, committed))
                                .into_iter()
                                .chain(records)
                                .collect();
                            outage = Some((error, held));
                            break;
                        }
                        Err((error, _)) => {
                            shared.drop_one();
                            tracing::error!(%error, event = id, "the ledger refused an event; it is dropped");
                            answer(committed, Err(error.to_string()));
                        }
                    }
                }
                if outage.is_none() {
                    for barrier in barriers.drain(..) {
                        let _ = barrier.send(Ok(()));
                    }
                    shared.kept.store(0, Ordering::Relaxed);
                    mark_writable(&shared);
                }
                outage
            }
            Err((error, events)) => Some((error, events.into_iter().zip(waiting).collect())),
        };
        if let Some((error, held)) = outage {
            mark_failing(&shared, &error);
            // The events of strict requests go: those requests answer 503 without a token. The
            // others are kept, at most `capacity`, and retried.
            let message = error.to_string();
            for barrier in barriers.drain(..) {
                let _ = barrier.send(Err(message.clone()));
            }
            for (record, committed) in held {
                match committed {
                    Some(committed) => {
                        let _ = committed.send(Err(message.clone()));
                    }
                    None if kept.len() < capacity => kept.push(record),
                    None => {
                        let dropped = shared.drop_one();
                        if dropped.is_power_of_two() {
                            tracing::warn!(
                                dropped,
                                "the ledger is down and its retry buffer is full: an event was dropped"
                            );
                        }
                    }
                }
            }
            shared.kept.store(kept.len(), Ordering::Relaxed);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        } else {
            backoff = Duration::from_millis(50);
        }
    }
}

/// Who waits for a record's commit (a strict request), if anyone.
type Waiter = Option<oneshot::Sender<Result<(), String>>>;

fn answer(waiter: Waiter, result: Result<(), String>) {
    if let Some(waiter) = waiter {
        let _ = waiter.send(result);
    }
}

/// After a commit of `count` events that `started` then: the ledger is writable, its kept events
/// are written, and the log's tail is copied when the poller left one.
async fn committed(shared: &Shared, count: usize, started: Instant) {
    mark_writable(shared);
    shared.kept.store(0, Ordering::Relaxed);
    shared.commits.fetch_add(1, Ordering::Relaxed);
    crate::metrics::metrics().ledger_commit(started.elapsed().as_secs_f64());
    tracing::trace!(events = count, took_us = started.elapsed().as_micros() as u64, "ledger commit");
    if shared.tail_due.swap(false, Ordering::AcqRel) {
        checkpoint(shared, Checkpointer::Writer).await;
        #[cfg(test)]
        shared.writer_checkpoints.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A serving SQLite ledger in `dir`, of the default configuration.
    async fn sqlite_ledger(dir: &std::path::Path) -> Ledger {
        let config =
            LedgerConfig { url: LedgerUrl::Sqlite(dir.join("ledger.db")), ..LedgerConfig::default() };
        Ledger::open(&config, true).await.unwrap().unwrap()
    }

    /// A caller with nothing but a subject.
    fn alice() -> crate::access::Caller {
        crate::access::Caller {
            subject: "alice".into(),
            client_id: None,
            tenant: None,
            plan: None,
            license: None,
            scopes: Vec::new(),
            claims_json: "{}".into(),
        }
    }

    /// A revocation committed and then not read back (the database failed in between) refuses its
    /// caller on this replica at once, as the admin API's 201 promises; a lift likewise.
    #[tokio::test]
    async fn a_revocation_applies_here_even_when_it_cannot_be_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = sqlite_ledger(dir.path()).await;
        let alice = alice();
        let now = Millis::now();
        let revocation = Revocation {
            id: "0192f1c4-0000-7000-8000-000000000001".into(),
            kind: RevocationKind::Subject,
            value: "alice".into(),
            tenant: None,
            reason: "left".into(),
            created_at: now,
            expires_at: None,
            created_by: "test".into(),
            created_by_tenant: None,
        };
        ledger.shared.revocations_unreadable.store(true, Ordering::Relaxed);
        let audit = Event::revocation_audit(Outcome::RevocationCreated, &revocation, "test");
        ledger.revoke(&revocation, audit).await.unwrap();
        let refused = ledger.revoked(&alice, Presented::default(), now);
        assert_eq!(refused.map(|r| r.id), Some(revocation.id.clone()), "applied at once");
        let audit = Event::revocation_audit(Outcome::RevocationLifted, &revocation, "test");
        assert!(ledger.unrevoke(&revocation.id, audit).await.unwrap());
        assert_eq!(ledger.revoked(&alice, Presented::default(), now), None, "lifted at once");
        // Readable again: the poll reads the ledger as it is (lifted).
        ledger.shared.revocations_unreadable.store(false, Ordering::Relaxed);
        refresh_revocations(&ledger.shared).await.unwrap();
        assert_eq!(ledger.revoked(&alice, Presented::default(), now), None);
    }

    /// A flush (at shutdown) waits at most its timeout in all: the wait for room in a full queue
    /// and the wait for the commit share it. (Paused time: the writer makes room after 3 s and
    /// then never commits; the flush gives up at 5 s, not 3 + 5.)
    #[tokio::test(start_paused = true)]
    async fn a_flush_waits_at_most_its_timeout_in_all() {
        let dir = tempfile::tempdir().unwrap();
        let config =
            LedgerConfig { url: LedgerUrl::Sqlite(dir.path().join("ledger.db")), ..LedgerConfig::default() };
        let opened = Ledger::open(&config, false).await.unwrap().unwrap();
        let (queue, mut receiver) = mpsc::channel(1);
        queue.try_send(Pending { record: None, committed: None }).unwrap();
        let ledger = Ledger { shared: Arc::clone(&opened.shared), queue: Some(queue) };
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            let _first = receiver.recv().await;
            let _barrier = receiver.recv().await;
            std::future::pending::<()>().await;
        });
        let started = tokio::time::Instant::now();
        let flushed = ledger.flush(Duration::from_secs(5)).await;
        assert!(flushed.is_err(), "{flushed:?}");
        assert_eq!(started.elapsed(), Duration::from_secs(5), "{flushed:?}");
    }

    /// A batch the database committed but whose answer was lost (a connection broken after its
    /// COMMIT) is written once more whole: its refresh token is not a duplicate that fails the
    /// batch (a 503 for a login that succeeded, and an event counted as dropped), and it is
    /// stored once.
    #[tokio::test]
    async fn a_batch_written_twice_stores_its_refresh_token_once() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = sqlite_ledger(dir.path()).await;
        let caller = alice();
        let binding = refresh::Binding { service: "registry.test", client_id: Some("docker") };
        let lifetime = refresh::Lifetime { absolute_seconds: 86_400, idle_seconds: None };
        let (token, secret) =
            RefreshToken::issue(&caller, "https://authority.test", None, binding, Millis::now(), lifetime)
                .unwrap();
        let mut event = Event::new(Outcome::Issued);
        event.refresh_token_id = Some(token.id.clone());
        let change = Change::RefreshTokenIssued {
            token: Box::new(token.clone()),
            token_hash: refresh::token_hash(&secret).unwrap(),
        };
        let batch = vec![Record { event: event.clone(), change: Some(change) }];
        ledger.shared.store.write(batch.clone()).await.map_err(|(error, _)| error).unwrap();
        ledger.shared.store.write(batch).await.map_err(|(error, _)| error).unwrap();
        let found = ledger.find_refresh_token(&secret).await.unwrap().unwrap();
        assert_eq!(found.id, token.id);
        let listed = ledger
            .refresh_tokens(&RefreshTokenFilter { limit: 10, ..RefreshTokenFilter::default() })
            .await
            .unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(ledger.event(&event.id).await.unwrap().map(|e| e.id), Some(event.id));
    }

    /// Under a load that never pauses, the writer's checkpoints start SQLite's write-ahead log
    /// again and again (its header counts the restarts), so the file stays the size of a quarter
    /// second of commits instead of growing for as long as the load lasts; every event committed
    /// meanwhile is in the database.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_write_ahead_log_starts_again_under_a_load_that_never_pauses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        let config = LedgerConfig { url: LedgerUrl::Sqlite(path.clone()), ..LedgerConfig::default() };
        let ledger = Ledger::open(&config, true).await.unwrap().unwrap();
        let until = Instant::now() + 6 * POLL;
        let writers: Vec<_> = (0..8)
            .map(|_| {
                let ledger = ledger.clone();
                tokio::spawn(async move {
                    let mut committed = 0_i64;
                    while Instant::now() < until {
                        ledger.commit(Event::new(Outcome::Issued)).await.unwrap();
                        committed += 1;
                    }
                    committed
                })
            })
            .collect();
        let mut committed = 0;
        for writer in writers {
            committed += writer.await.unwrap();
        }
        // Read while the ledger is open: when its last connection closes, SQLite removes the log.
        let log = std::fs::read(dir.path().join("ledger.db-wal")).unwrap();
        let restarts = u32::from_be_bytes(log[12..16].try_into().unwrap());
        assert!(restarts >= 2, "the log started again {restarts} times in {committed} commits");
        let reader = rusqlite::Connection::open(&path).unwrap();
        let stored: i64 = reader.query_row("SELECT COUNT(*) FROM events", [], |row| row.get(0)).unwrap();
        assert_eq!(stored, committed);
        assert!(ledger.shared.writer_checkpoints.load(Ordering::Relaxed) >= 2);
    }

    /// A source's record only rises (replicas may apply revisions in any order), is kept per
    /// source, survives reopening the file, and is gone once forgotten.
    #[tokio::test]
    async fn a_bundle_record_only_rises_and_is_forgotten_on_request() {
        let dir = tempfile::tempdir().unwrap();
        let config =
            LedgerConfig { url: LedgerUrl::Sqlite(dir.path().join("ledger.db")), ..LedgerConfig::default() };
        let applied = |source: &str, revision: u64, content: &str| AppliedBundle {
            source: source.into(),
            revision,
            content_sha256: content.into(),
            applied_at: Millis(1_000 * i64::from(u8::try_from(revision).unwrap_or(u8::MAX))),
        };
        let largest = u64::try_from(i64::MAX).unwrap();
        {
            let ledger = Ledger::open(&config, false).await.unwrap().unwrap();
            assert_eq!(ledger.applied_bundle("a.tar.gz").await.unwrap(), None);
            assert!(ledger.record_applied_bundle(&applied("a.tar.gz", 3, "sha256:3")).await.unwrap());
            assert!(!ledger.record_applied_bundle(&applied("a.tar.gz", 2, "sha256:2")).await.unwrap());
            assert!(!ledger.record_applied_bundle(&applied("a.tar.gz", 3, "sha256:other")).await.unwrap());
            assert!(ledger.record_applied_bundle(&applied("oci://r/p:live", 1, "sha256:1")).await.unwrap());
            assert!(ledger.record_applied_bundle(&applied("a.tar.gz", largest, "sha256:max")).await.unwrap());
        }
        let ledger = Ledger::open(&config, false).await.unwrap().unwrap();
        let all = ledger.applied_bundles().await.unwrap();
        assert_eq!(
            all.iter()
                .map(|a| (a.source.as_str(), a.revision, a.content_sha256.as_str()))
                .collect::<Vec<_>>(),
            [("a.tar.gz", largest, "sha256:max"), ("oci://r/p:live", 1, "sha256:1")]
        );
        assert!(ledger.forget_applied_bundle("a.tar.gz").await.unwrap());
        assert!(!ledger.forget_applied_bundle("a.tar.gz").await.unwrap());
        assert_eq!(ledger.applied_bundle("a.tar.gz").await.unwrap(), None);
        assert!(ledger.record_applied_bundle(&applied("a.tar.gz", 1, "sha256:1")).await.unwrap());
        assert_eq!(ledger.applied_bundle("a.tar.gz").await.unwrap().unwrap().revision, 1);
    }

    /// A file that cannot grow (a full disk; here SQLite's own cap on its pages) is an outage,
    /// not a refused event: a strict commit fails (no token), `/readyz` says the ledger is not
    /// writable for as long as the events it holds cannot be written, and none of them is dropped:
    /// they land once the file can grow again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_file_holds_events_and_refuses_strict_commits_until_it_can_grow_again() {
        let dir = tempfile::tempdir().unwrap();
        let config =
            LedgerConfig { url: LedgerUrl::Sqlite(dir.path().join("ledger.db")), ..LedgerConfig::default() };
        let ledger = Ledger::open(&config, true).await.unwrap().unwrap();
        let Store::Sqlite(store) = &ledger.shared.store else { unreachable!("a SQLite ledger") };
        let cap = |pages: i64| {
            move |connection: &mut rusqlite::Connection| {
                connection
                    .query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))
                    .map_err(store::database)
            }
        };
        let event = |outcome| {
            let mut event = Event::new(outcome);
            event.message = Some("x".repeat(2000));
            event
        };
        ledger.commit(event(Outcome::Issued)).await.unwrap();
        // The file may keep its size (its pages) but not grow: the next commits soon need a page.
        store.on_writer(cap(1)).await.unwrap();
        let mut refused = None;
        for _ in 0..1000 {
            if let Err(unavailable) = ledger.commit(event(Outcome::Issued)).await {
                refused = Some(unavailable);
                break;
            }
        }
        let refused = refused.expect("a commit into a file that cannot grow succeeded 1000 times");
        assert!(refused.to_string().contains("full"), "{refused}");
        let health = ledger.health();
        assert!(!health.writable, "{health:?}");
        assert!(
            health.error.as_deref().is_some_and(|e| e.contains("database or disk is full")),
            "{health:?}"
        );
        assert!(!ledger.can_issue());

        // A denial meanwhile is held, through the writer's retries, and the ledger stays failing.
        let denied = event(Outcome::Denied);
        let id = denied.id.clone();
        ledger.record(denied);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let health = ledger.health();
        assert!(!health.writable && health.queued >= 1 && health.dropped == 0, "{health:?}");
        assert!(ledger.commit(event(Outcome::Issued)).await.is_err(), "a strict commit while still full");
        assert!(ledger.event(&id).await.unwrap().is_none(), "written while the file was full");

        // Room again: the held denial lands, nothing was dropped, and strict commits succeed.
        store.on_writer(cap(1 << 30)).await.unwrap();
        let since = Instant::now();
        while ledger.event(&id).await.unwrap().is_none() {
            assert!(
                since.elapsed() < Duration::from_secs(10),
                "the held denial never landed: {:?}",
                ledger.health()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ledger.commit(event(Outcome::Issued)).await.unwrap();
        let health = ledger.health();
        assert!(health.writable && health.dropped == 0, "{health:?}");
    }

    /// Under light traffic the poller copies the whole log between two commits and the next
    /// commit starts it again by itself: the writer spends no checkpoint (and its syncs) of its
    /// own, and the log still starts again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn under_light_traffic_the_writer_spends_no_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        let config = LedgerConfig { url: LedgerUrl::Sqlite(path.clone()), ..LedgerConfig::default() };
        let ledger = Ledger::open(&config, true).await.unwrap().unwrap();
        // The poller ticks from the moment the ledger opens: each commit lands half-way between
        // two of its rounds (a commit during a round would rightly leave the writer a tail), with
        // two whole rounds before the next.
        let opened = tokio::time::Instant::now();
        let commits = 5;
        for n in 0..commits {
            tokio::time::sleep_until(opened + POLL / 2 + 3 * POLL * n).await;
            ledger.commit(Event::new(Outcome::Issued)).await.unwrap();
        }
        tokio::time::sleep(2 * POLL).await;
        let log = std::fs::read(dir.path().join("ledger.db-wal")).unwrap();
        let restarts = u32::from_be_bytes(log[12..16].try_into().unwrap());
        assert!(restarts >= commits - 1, "the log started again {restarts} times in {commits} commits");
        let writer = ledger.shared.writer_checkpoints.load(Ordering::Relaxed);
        assert_eq!(writer, 0, "the writer checkpointed {writer} times beside an idle poller");
    }

    /// What a relaxed ledger drops while its database cannot take events (the queue full) is
    /// counted in `/readyz` and in the metrics alike, so it can be alerted on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropped_events_are_counted_in_the_metrics_too() {
        let scraped = || {
            let snapshot = crate::metrics::Snapshot {
                ledger_queue: 0,
                revocations: Vec::new(),
                signing_keys: &[],
                policy: None,
                bundle_revision: None,
            };
            let exposition = crate::metrics::metrics().render(&snapshot);
            let line = exposition
                .lines()
                .find_map(|line| line.strip_prefix("registry_token_ledger_events_dropped_total "))
                .map(str::to_owned);
            line.unwrap_or_else(|| panic!("no dropped-events counter in\n{exposition}"))
                .parse::<u64>()
                .unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let config = LedgerConfig {
            url: LedgerUrl::Sqlite(dir.path().join("ledger.db")),
            durability: Durability::Relaxed,
            queue_events: 4,
            ..LedgerConfig::default()
        };
        let ledger = Ledger::open(&config, true).await.unwrap().unwrap();
        let Store::Sqlite(store) = &ledger.shared.store else { unreachable!("a SQLite ledger") };
        let big = |outcome| {
            let mut event = Event::new(outcome);
            event.message = Some("x".repeat(4000));
            event
        };
        ledger.record(big(Outcome::Issued));
        ledger.flush(Duration::from_secs(5)).await.unwrap();
        store
            .on_writer(|connection| {
                connection.query_row("PRAGMA max_page_count = 1", [], |_| Ok(())).map_err(store::database)
            })
            .await
            .unwrap();
        let before = scraped();
        for _ in 0..200 {
            ledger.record(big(Outcome::Denied));
        }
        let dropped = ledger.health().dropped;
        assert!(dropped > 0, "{:?}", ledger.health());
        // Other tests of this process may drop events too: at least these were counted.
        assert!(scraped() - before >= dropped, "{dropped} dropped, counted {}", scraped() - before);
    }
}
