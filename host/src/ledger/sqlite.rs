//! The embedded ledger: one SQLite file in WAL mode, written by one connection (the writer task's
//! batches and the admin changes), read by two others: one for what the service reads to serve
//! tokens (refresh tokens, revocations, the WAL checkpoint) and one for the audit trail's listings
//! and exports, so that a long listing never holds up a token. Every call runs on tokio's
//! blocking pool, so nothing blocks an async worker.

use super::event::{Event, Millis};
use super::store::{self, Migrate, Param, Reader, Record, Row, StoreError, database};
use crate::config::SqliteSync;
use rusqlite::types::{ToSql, ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The size the write-ahead log's file is cut back to when the log starts again (bytes).
const WAL_SIZE_LIMIT: i64 = 64 << 20;

/// Which connection checkpoints ([`Store::checkpoint`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Checkpointer {
    Reader,
    Writer,
}

/// What one checkpoint found: the frames in the log, how many of them are now in the database
/// file, and whether another connection committed while it ran.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Checkpoint {
    pub frames: i64,
    pub copied: i64,
    pub appended: bool,
}

impl Checkpoint {
    /// Frames are left in the log (appended meanwhile, or held by a reader): the next commit will
    /// not start the log again by itself.
    pub(crate) fn left_behind(&self) -> bool {
        self.appended || self.copied < self.frames
    }
}

pub(crate) struct Store {
    writer: Arc<Mutex<Connection>>,
    reader: Arc<Mutex<Connection>>,
    audit: Arc<Mutex<Connection>>,
}

impl ToSql for Param {
    /// Borrowed: SQLite copies what it binds, so no column is cloned on its way there.
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Param::Text(Some(text)) => ValueRef::Text(text.as_bytes()),
            Param::Int(Some(int)) => ValueRef::Integer(*int),
            Param::Text(None) | Param::Int(None) => ValueRef::Null,
        }))
    }
}

impl Row for rusqlite::Row<'_> {
    fn text(&self, index: usize) -> Result<Option<String>, StoreError> {
        self.get(index).map_err(database)
    }

    fn int(&self, index: usize) -> Result<Option<i64>, StoreError> {
        self.get(index).map_err(database)
    }
}

/// `$1` → `?1`: the statements are written once, in PostgreSQL's syntax.
fn sql(statement: &str) -> String {
    statement.replace('$', "?")
}

impl Store {
    /// Opens (creating it and its directory if needed) the file at `path`, and migrates it or
    /// requires it to be of this binary's version (`migrate`).
    pub(crate) async fn open(path: &Path, sync: SqliteSync, migrate: Migrate) -> Result<Store, StoreError> {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || Store::open_blocking(path, sync, migrate))
            .await
            .map_err(database)?
    }

    fn open_blocking(path: PathBuf, sync: SqliteSync, migrate: Migrate) -> Result<Store, StoreError> {
        let fail = |what: &str, error: &dyn std::fmt::Display| {
            StoreError::Database(format!("the ledger {}: {what}: {error}", path.display()))
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| fail("cannot create its directory", &e))?;
        }
        // The audit trail is its owner's to read, whatever the umask: a new file is made 0600, and
        // SQLite gives its write-ahead log and the log's index the database's mode. (An existing
        // file keeps the mode its operator gave it.)
        match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path) {
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err(fail("cannot create it", &error)),
        }
        let open = || {
            let connection = Connection::open_with_flags(
                &path,
                OpenFlags::SQLITE_OPEN_READ_WRITE
                    | OpenFlags::SQLITE_OPEN_CREATE
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(|e| fail("cannot open it", &e))?;
            // FULL: a commit is on disk before it returns (the WAL is synced on every commit);
            // NORMAL: it survives a crash of this process, not of the machine.
            let synchronous = sync.pragma();
            connection
                .execute_batch(&format!(
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous}; PRAGMA busy_timeout = 5000; \
                     PRAGMA wal_autocheckpoint = 0; PRAGMA journal_size_limit = {WAL_SIZE_LIMIT};"
                ))
                .map_err(|e| fail("cannot configure it", &e))?;
            Ok::<_, StoreError>(connection)
        };
        let mut writer = open()?;
        match migrate {
            Migrate::Apply | Migrate::IfEmpty => apply_migrations(&mut writer, &path, migrate)?,
            Migrate::Never => require_current(&writer, &path)?,
        }
        let [reader, audit] = [open()?, open()?].map(|connection| Arc::new(Mutex::new(connection)));
        Ok(Store { writer: Arc::new(Mutex::new(writer)), reader, audit })
    }

    async fn on<T: Send + 'static>(
        connection: &Arc<Mutex<Connection>>,
        work: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let connection = Arc::clone(connection);
        tokio::task::spawn_blocking(move || {
            let mut connection = connection
                .lock()
                .map_err(|_| StoreError::Database("a ledger connection was poisoned".into()))?;
            work(&mut connection)
        })
        .await
        .map_err(database)?
    }

    pub(crate) async fn write(&self, records: Vec<Record>) -> Result<(), (StoreError, Vec<Record>)> {
        let writer = Arc::clone(&self.writer);
        let handed = tokio::task::spawn_blocking(move || {
            let Ok(mut connection) = writer.lock() else {
                return Err((StoreError::Database("the ledger writer was poisoned".into()), records));
            };
            match write_records(&mut connection, &records) {
                Ok(()) => Ok(()),
                Err(error) => Err((described(error), records)),
            }
        })
        .await;
        match handed {
            Ok(result) => result,
            Err(error) => Err((database(error), Vec::new())),
        }
    }

    /// Copies the write-ahead log back into the database file (`PASSIVE`: never waits for a lock).
    ///
    /// Beside a writer that never pauses, no checkpoint catches up: frames are appended while it
    /// copies, the log is never all copied when a commit begins, so it never starts again and grows
    /// for as long as the load lasts (≈ 75 MB/s at 3,700 tokens/s on the benchmark host). Hence
    /// two steps: the poller copies the bulk on the reader's connection while commits go on
    /// ([`Checkpointer::Reader`], ≈ 5–10 ms under that load), then the writer, between two of its
    /// commits, copies the few frames appended meanwhile ([`Checkpointer::Writer`]) and its next
    /// commit writes the log from its start. When nothing was committed while the reader's
    /// checkpoint ran and it copied everything, the next commit starts the log again by itself.
    pub(crate) async fn checkpoint(&self, by: Checkpointer) -> Result<Checkpoint, StoreError> {
        let connection = match by {
            Checkpointer::Reader => &self.reader,
            Checkpointer::Writer => &self.writer,
        };
        Store::on(connection, |connection| {
            // Changes when any other connection (this process's writer, the CLI) commits.
            let version = |connection: &Connection| {
                connection.query_row("PRAGMA data_version", [], |row| row.get::<_, i64>(0))
            };
            let before = version(connection).map_err(database)?;
            let (frames, copied) = connection
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| Ok((row.get(1)?, row.get(2)?)))
                .map_err(database)?;
            let appended = version(connection).map_err(database)? != before;
            Ok(Checkpoint { frames, copied, appended })
        })
        .await
    }

    /// Commits a write of its own (see [`store::PROBE`]): fails while the file cannot be written.
    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        Store::on(&self.writer, |connection| connection.execute_batch(store::PROBE).map_err(described)).await
    }

    /// Runs `work` on the writer's connection (tests: `PRAGMA max_page_count` fills the file).
    #[cfg(test)]
    pub(crate) async fn on_writer<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        Store::on(&self.writer, work).await
    }

    pub(crate) async fn select<T: Send + 'static>(
        &self,
        on: Reader,
        statement: String,
        params: Vec<Param>,
        read: fn(&dyn Row) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let connection = match on {
            Reader::Service => &self.reader,
            Reader::Audit => &self.audit,
        };
        Store::on(connection, move |connection| {
            let mut prepared = connection.prepare_cached(&sql(&statement)).map_err(database)?;
            let mut rows = prepared.query(rusqlite::params_from_iter(params.iter())).map_err(database)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(database)? {
                out.push(read(row)?);
            }
            Ok(out)
        })
        .await
    }

    pub(crate) async fn execute(
        &self,
        statement: &'static str,
        params: Vec<Param>,
    ) -> Result<u64, StoreError> {
        Store::on(&self.writer, move |connection| {
            let changed = connection
                .execute(&sql(statement), rusqlite::params_from_iter(params.iter()))
                .map_err(database)?;
            Ok(changed as u64)
        })
        .await
    }

    pub(crate) async fn change_revocations(
        &self,
        statement: &'static str,
        params: Vec<Param>,
        audit: Event,
    ) -> Result<bool, StoreError> {
        Store::on(&self.writer, move |connection| {
            let transaction =
                connection.transaction_with_behavior(TransactionBehavior::Immediate).map_err(database)?;
            let changed = transaction
                .execute(&sql(statement), rusqlite::params_from_iter(params.iter()))
                .map_err(database)?;
            if changed == 0 {
                return Ok(false);
            }
            transaction.execute(store::BUMP_REVISION, []).map_err(database)?;
            transaction
                .execute(
                    &sql(store::INSERT_EVENT),
                    rusqlite::params_from_iter(store::event_params(&audit).iter()),
                )
                .map_err(database)?;
            transaction.commit().map_err(database)?;
            Ok(true)
        })
        .await
    }

    pub(crate) async fn prune(&self, before: Millis) -> Result<u64, StoreError> {
        // In chunks, each its own transaction: the writer waits at most one chunk.
        let mut events = 0;
        loop {
            let chunk = Store::on(&self.writer, move |connection| {
                connection
                    .execute(&sql(store::PRUNE_EVENTS), [before.0, store::PRUNE_CHUNK])
                    .map_err(database)
            })
            .await?;
            events += chunk as u64;
            if i64::try_from(chunk).unwrap_or(i64::MAX) < store::PRUNE_CHUNK {
                break;
            }
        }
        Store::on(&self.writer, move |connection| {
            let transaction =
                connection.transaction_with_behavior(TransactionBehavior::Immediate).map_err(database)?;
            transaction.execute(&sql(store::PRUNE_REFRESH_TOKENS), [before.0]).map_err(database)?;
            let revocations =
                transaction.execute(&sql(store::PRUNE_REVOCATIONS), [before.0]).map_err(database)?;
            if revocations > 0 {
                transaction.execute(store::BUMP_REVISION, []).map_err(database)?;
            }
            transaction.commit().map_err(database)?;
            Ok(events)
        })
        .await
    }
}

/// A write's error as a [`StoreError`]: when the file cannot take writes (the disk or the file is
/// full, read-only, locked past the busy timeout, an I/O error, a corrupt or vanished file) it is
/// [`StoreError::Unreachable`], like a PostgreSQL outage: the batch's events are held and retried
/// and a strict ledger refuses to issue, rather than each event being written alone and dropped as
/// if it were refused for what it holds. Anything else is about what was written.
fn described(error: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode::{
        CannotOpen, DatabaseBusy, DatabaseCorrupt, DatabaseLocked, DiskFull, FileLockingProtocolFailed,
        NoLargeFileSupport, NotADatabase, OutOfMemory, PermissionDenied, ReadOnly, SystemIoFailure,
    };
    match error.sqlite_error_code() {
        Some(
            CannotOpen
            | DatabaseBusy
            | DatabaseCorrupt
            | DatabaseLocked
            | DiskFull
            | FileLockingProtocolFailed
            | NoLargeFileSupport
            | NotADatabase
            | OutOfMemory
            | PermissionDenied
            | ReadOnly
            | SystemIoFailure,
        ) => StoreError::Unreachable(format!("the ledger file cannot be written: {error}")),
        _ => database(error),
    }
}

fn write_records(connection: &mut Connection, records: &[Record]) -> rusqlite::Result<()> {
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut insert = transaction.prepare_cached(&sql(store::INSERT_EVENT))?;
        for record in records {
            if let Some(change) = &record.change {
                let (statement, params) = change.statement();
                transaction
                    .prepare_cached(&sql(statement))?
                    .execute(rusqlite::params_from_iter(params.iter()))?;
            }
            insert.execute(rusqlite::params_from_iter(store::event_params(&record.event).iter()))?;
        }
    }
    transaction.commit()
}

/// The file's schema is this binary's, or an error (it is not changed).
fn require_current(connection: &Connection, path: &Path) -> Result<(), StoreError> {
    let versioned: bool = connection
        .query_row("SELECT count(*) > 0 FROM sqlite_master WHERE name = 'schema_migrations'", [], |row| {
            row.get(0)
        })
        .map_err(database)?;
    let version: i64 = match versioned {
        true => connection
            .query_row("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", [], |row| row.get(0))
            .map_err(database)?,
        false => 0,
    };
    store::require_version(version, &format!("sqlite://{}", path.display()))
}

/// Applies the migrations this file lacks, each in its own transaction, under SQLite's write lock
/// (so two processes starting on one file do not both apply one); with [`Migrate::IfEmpty`], only
/// to a file with no schema yet.
fn apply_migrations(connection: &mut Connection, path: &Path, migrate: Migrate) -> Result<(), StoreError> {
    let url = format!("sqlite://{}", path.display());
    connection.execute(store::MIGRATIONS_TABLE, []).map_err(database)?;
    let mut first = true;
    loop {
        let transaction =
            connection.transaction_with_behavior(TransactionBehavior::Immediate).map_err(database)?;
        let version: i64 = transaction
            .query_row("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", [], |row| row.get(0))
            .map_err(database)?;
        if std::mem::take(&mut first) && migrate == Migrate::IfEmpty && version != 0 {
            return store::require_version(version, &url);
        }
        store::check_version(version, &url)?;
        let Some(migration) = usize::try_from(version).ok().and_then(|v| store::MIGRATIONS.get(v)) else {
            return Ok(());
        };
        transaction.execute_batch(migration).map_err(database)?;
        transaction
            .execute(
                "INSERT INTO schema_migrations (version, applied_at_ms) VALUES (?1, ?2)",
                [version + 1, Millis::now().0],
            )
            .map_err(database)?;
        transaction.commit().map_err(database)?;
        tracing::info!(ledger = %url, version = version + 1, "ledger schema migrated");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Outcome;

    /// A ledger written by the first release (schema 1) is migrated in place at start: its events
    /// keep every field, and the new columns read as absent.
    #[tokio::test]
    async fn a_first_release_ledger_is_migrated_and_keeps_its_events() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        {
            let mut connection = Connection::open(&path).unwrap();
            connection.execute(store::MIGRATIONS_TABLE, []).unwrap();
            let transaction = connection.transaction().unwrap();
            transaction.execute_batch(store::MIGRATIONS[0]).unwrap();
            transaction
                .execute("INSERT INTO schema_migrations (version, applied_at_ms) VALUES (1, 0)", [])
                .unwrap();
            transaction
                .execute(
                    "INSERT INTO events (id, time_ms, outcome, sub, requested, granted, token_jti, token_exp, \
                     signing_kid) VALUES ('0190b6a4-0000-7000-8000-000000000001', 5, 'issued', 'alice', \
                     'repository:team/app:pull', 'repository:team/app:pull', 'j', 9, 'k')",
                    [],
                )
                .unwrap();
            transaction.commit().unwrap();
        }
        let store = Store::open(&path, SqliteSync::Full, Migrate::Apply).await.unwrap();
        let version: i64 = store
            .reader
            .lock()
            .unwrap()
            .query_row("SELECT MAX(version) FROM schema_migrations", [], |row| row.get(0))
            .unwrap();
        assert_eq!(version, store::known_version());
        let sql = format!("SELECT {} FROM events", store::EVENT_COLUMNS);
        let events = store.select(Reader::Service, sql, Vec::new(), store::event_from).await.unwrap();
        assert_eq!(events.len(), 1);
        let event = &events[0];
        assert_eq!((event.outcome, event.sub.as_deref()), (Outcome::Issued, Some("alice")));
        assert_eq!(event.token.as_ref().map(|t| (t.jti.as_str(), t.exp)), Some(("j", 9)));
        assert_eq!((event.via.as_deref(), event.refresh_token_id.as_deref()), (None, None));
    }

    /// `ledger.sqlite_sync` reaches both connections: `full` (2) by default for strict, `normal` (1)
    /// when asked for.
    #[tokio::test]
    async fn the_sync_setting_is_the_one_configured() {
        let dir = tempfile::tempdir().unwrap();
        for (sync, expected) in [(SqliteSync::Full, 2), (SqliteSync::Normal, 1)] {
            let store =
                Store::open(&dir.path().join(format!("{expected}.db")), sync, Migrate::Apply).await.unwrap();
            for connection in [&store.writer, &store.reader, &store.audit] {
                let found: i64 =
                    connection.lock().unwrap().query_row("PRAGMA synchronous", [], |row| row.get(0)).unwrap();
                assert_eq!(found, expected, "{sync:?}");
            }
        }
    }

    /// The audit trail's listings run on a connection of their own: while one is under way (its
    /// connection held here, as a listing that scans a large ledger holds it), the lookups that
    /// serve tokens (a refresh token, the revocations) still answer.
    #[tokio::test]
    #[allow(clippy::await_holding_lock, reason = "the held connection is what the test is about")]
    async fn a_long_audit_listing_does_not_hold_up_token_lookups() {
        let dir = tempfile::tempdir().unwrap();
        let sqlite =
            Store::open(&dir.path().join("ledger.db"), SqliteSync::Full, Migrate::Apply).await.unwrap();
        let audit = Arc::clone(&sqlite.audit);
        let store = store::Store::Sqlite(sqlite);
        let listing = store::EventFilter { limit: 10, ..Default::default() };
        let patience = std::time::Duration::from_secs(30);

        let held = audit.lock().unwrap();
        let found = tokio::time::timeout(patience, store.refresh_token_by_hash(&"0".repeat(64))).await;
        assert!(matches!(found, Ok(Ok(None))), "{found:?}");
        let revocations = tokio::time::timeout(patience, store.revocations()).await;
        assert!(matches!(revocations, Ok(Ok(ref found)) if found.is_empty()), "{revocations:?}");
        // Nor the lookups of one refresh token or one event by id (revoking a refresh token).
        let id = "0192f1c4-0000-7000-8000-000000000000";
        let found = tokio::time::timeout(patience, store.refresh_token(id)).await;
        assert!(matches!(found, Ok(Ok(None))), "{found:?}");
        let found = tokio::time::timeout(patience, store.event(id)).await;
        assert!(matches!(found, Ok(Ok(None))), "{found:?}");
        // The listing itself waits for its connection, which proves it is the one held.
        let waiting =
            tokio::time::timeout(std::time::Duration::from_millis(200), store.events(&listing)).await;
        assert!(waiting.is_err(), "a listing ran while its connection was held: {waiting:?}");
        drop(held);
        let listed = tokio::time::timeout(patience, store.events(&listing)).await;
        assert!(matches!(listed, Ok(Ok(ref events)) if events.is_empty()), "{listed:?}");
    }

    /// The steps of SQLite's plan for `statement`.
    fn plan(store: &Store, statement: &str, params: &[Param]) -> Vec<String> {
        let connection = store.reader.lock().unwrap();
        let mut plan = connection.prepare(&format!("EXPLAIN QUERY PLAN {}", sql(statement))).unwrap();
        plan.query_map(rusqlite::params_from_iter(params.iter()), |row| row.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// Every listing the admin API offers without a time window reads its page in index order,
    /// newest first, and stops there: none sorts all the events it matches (SQLite's plan would say
    /// `USE TEMP B-TREE FOR ORDER BY`), which on a large ledger took seconds a page. (A `jti`
    /// matches one caller token's exchanges or one registry token's: those few are sorted.)
    #[tokio::test]
    async fn listings_without_a_window_read_an_index_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Store::open(&dir.path().join("ledger.db"), SqliteSync::Full, Migrate::Apply).await.unwrap();
        let text = |value: &str| Some(value.to_owned());
        let base = store::EventFilter { limit: 100, ..Default::default() };
        let filters = [
            store::EventFilter { tenant: text("acme"), ..base.clone() },
            store::EventFilter { tenant: text("acme"), outcome: Some(Outcome::Denied), ..base.clone() },
            store::EventFilter { tenant: text("acme"), sub: text("alice"), ..base.clone() },
            store::EventFilter { tenant: text("acme"), licence: text("LIC-1"), ..base.clone() },
            store::EventFilter { sub: text("alice"), ..base.clone() },
            store::EventFilter { licence: text("LIC-1"), ..base.clone() },
            store::EventFilter { outcome: Some(Outcome::Fault), ..base.clone() },
            base.clone(),
        ];
        for filter in filters {
            for before_id in [None, text("019a0000-0000-7000-8000-000000000000")] {
                let filter = store::EventFilter { before_id, ..filter.clone() };
                let (statement, params) = store::events_query(&filter);
                let steps = plan(&store, &statement, &params);
                assert!(!steps.iter().any(|step| step.contains("TEMP B-TREE")), "{filter:?}: {steps:?}");
            }
        }
    }

    /// An export walks its window in id order a page at a time: every event of the window once
    /// and none outside it, whatever the page size, an event whose id was made after its time (a
    /// clock stepped back) included; and no page sorts the rest of the window, as each used to.
    #[tokio::test]
    async fn an_export_pages_through_its_window_in_id_order() {
        let dir = tempfile::tempdir().unwrap();
        let sqlite =
            Store::open(&dir.path().join("ledger.db"), SqliteSync::Full, Migrate::Apply).await.unwrap();
        let store = store::Store::Sqlite(sqlite);
        let event = |id_ms: u64, time: i64| {
            let mut event = Event::new(Outcome::Issued);
            let unique = [(id_ms % 251) as u8, (time % 251) as u8, 0, 0, 0, 0, 0, 0, 0, 0];
            event.id = uuid::Builder::from_unix_timestamp_millis(id_ms, &unique).into_uuid().to_string();
            event.time = Millis(time);
            event
        };
        let base = 1_760_000_000_000;
        let mut events: Vec<Event> = (0..30).map(|n| event(base as u64 + n, base + n as i64)).collect();
        events.push(event(base as u64 + 25, base + 5)); // made at +25 for +5: before the window
        events.push(event(base as u64 + 40, base + 15)); // made at +40 for +15: in it, the last id
        store
            .write(events.iter().map(|e| Record { event: e.clone(), change: None }).collect())
            .await
            .unwrap();

        let export = async |since: Option<i64>, until: Option<i64>, page: usize| {
            let Some(window) = store.export_window(since.map(Millis), until.map(Millis)).await.unwrap()
            else {
                return Vec::new();
            };
            let (mut ids, mut after) = (Vec::new(), None::<String>);
            loop {
                let found = store.export_page(&window, after.as_deref(), page).await.unwrap();
                ids.extend(found.iter().map(|e| e.id.clone()));
                match found.last() {
                    Some(last) if found.len() == page => after = Some(last.id.clone()),
                    _ => return ids,
                }
            }
        };
        let expected = |since: Option<i64>, until: Option<i64>| {
            let mut ids: Vec<String> = events
                .iter()
                .filter(|e| since.is_none_or(|s| e.time.0 >= s) && until.is_none_or(|u| e.time.0 < u))
                .map(|e| e.id.clone())
                .collect();
            ids.sort();
            ids
        };
        let windows = [
            (Some(base + 10), Some(base + 20)),
            (None, Some(base + 20)),
            (Some(base + 10), None),
            (None, None),
            (Some(base + 100), None),
        ];
        for (since, until) in windows {
            let wanted = expected(since, until);
            for page in [1, 2, 3, 1000] {
                assert_eq!(export(since, until, page).await, wanted, "{since:?}..{until:?} by {page}");
            }
        }
        assert_eq!(expected(Some(base + 10), Some(base + 20)).len(), 11);

        let store::Store::Sqlite(sqlite) = &store else { unreachable!() };
        let window =
            store.export_window(Some(Millis(base)), Some(Millis(base + 100))).await.unwrap().unwrap();
        let (statement, params) = store::export_query(&window, Some(&events[3].id), 1000);
        let steps = plan(sqlite, &statement, &params);
        assert!(!steps.iter().any(|step| step.contains("TEMP B-TREE")), "{steps:?}");
    }
}
