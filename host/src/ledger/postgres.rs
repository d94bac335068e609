//! The shared ledger: PostgreSQL, for replicas that must see one another's records and
//! revocations. A small connection pool (deadpool) replaces broken connections by itself, so the
//! service resumes when the database comes back, without a restart.

use super::event::{Event, Millis};
use super::store::{self, Migrate, Param, Reader, Record, Row, StoreError, database};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};
use std::time::Duration;
use tokio_postgres::NoTls;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

pub(crate) struct Store {
    pool: Pool,
    url: String,
    /// Listings and exports of the audit trail at once, at most [`AUDIT_READS`] of the pool's
    /// connections: however many an administrator starts, the writer, the revocation poll and
    /// refresh-token lookups keep the rest.
    audit_reads: tokio::sync::Semaphore,
    /// A serving store's bound on each call ([`CALL_DEADLINE`]); a command's calls are unbounded.
    deadline: Option<Duration>,
}

/// Of the pool's 8 connections, how many audit listings and exports may hold at once.
const AUDIT_READS: usize = 2;
/// How long an audit listing waits for its turn before it is refused.
const AUDIT_WAIT: Duration = Duration::from_secs(10);
/// A serving store's statements are cut off by the server after 5 s and wait at most 2 s for a
/// connection; a call that has not ended by then is talking to a server that stopped answering
/// without closing its connections (a partition, a frozen host), and fails as unreachable.
const CALL_DEADLINE: Duration = Duration::from_secs(8);
/// Data the server has not acknowledged for this long closes the connection (Linux's own limit is
/// some 15 minutes), so that the pool replaces it.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(20);

impl ToSql for Param {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            // PostgreSQL's text cannot hold a NUL: the statement, and with it the whole batch of
            // events, would fail. A NUL (only a caller's own claims can carry one) is stored as
            // U+FFFD, the replacement character, and everything else as it is.
            Param::Text(Some(text)) if text.contains('\0') => text.replace('\0', "\u{fffd}").to_sql(ty, out),
            Param::Text(text) => text.to_sql(ty, out),
            Param::Int(int) => int.to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        <String as ToSql>::accepts(ty) || <i64 as ToSql>::accepts(ty)
    }

    to_sql_checked!();
}

impl Row for tokio_postgres::Row {
    fn text(&self, index: usize) -> Result<Option<String>, StoreError> {
        self.try_get(index).map_err(database)
    }

    fn int(&self, index: usize) -> Result<Option<i64>, StoreError> {
        self.try_get(index).map_err(database)
    }
}

/// The error and its cause: tokio-postgres' own text is often just "db error". A lost connection,
/// and the server's refusals that are about itself rather than the request (SQLSTATE classes 08
/// connection exception, 53 insufficient resources, 57 operator intervention: a shutdown), are
/// [`StoreError::Unreachable`].
fn described(error: &tokio_postgres::Error) -> StoreError {
    match error.as_db_error() {
        Some(db) => {
            let code = db.code().code();
            let text = format!("{code}: {}", db.message());
            if ["08", "53", "57"].iter().any(|class| code.starts_with(class)) {
                StoreError::Unreachable(text)
            } else {
                StoreError::Database(text)
            }
        }
        None if error.is_closed()
            || std::error::Error::source(error).is_some_and(|source| source.is::<std::io::Error>()) =>
        {
            StoreError::Unreachable(error.to_string())
        }
        None => StoreError::Database(error.to_string()),
    }
}

/// Connections in the pool.
const POOL_SIZE: usize = 8;

/// How long the pool waits for a free connection, a new one, or a check of a pooled one.
const POOL_TIMEOUT: Duration = Duration::from_secs(2);

/// A pool error in the operator's terms (deadpool's own say "Timeout occurred while creating a
/// new object").
fn pool_error(error: deadpool_postgres::PoolError) -> StoreError {
    use deadpool_postgres::{PoolError, TimeoutType};
    let reason = match error {
        PoolError::Timeout(TimeoutType::Create) => {
            format!("PostgreSQL did not answer within {POOL_TIMEOUT:?} (connecting)")
        }
        PoolError::Timeout(TimeoutType::Recycle) => {
            format!("PostgreSQL did not answer within {POOL_TIMEOUT:?} (checking a pooled connection)")
        }
        PoolError::Timeout(TimeoutType::Wait) => format!(
            "no PostgreSQL connection came free within {POOL_TIMEOUT:?} (all {POOL_SIZE} are in calls that have not returned)"
        ),
        other => format!("cannot reach PostgreSQL: {other}"),
    };
    StoreError::Unreachable(reason)
}

/// Unrelated to any application lock: taken while migrating so replicas that start together
/// apply each migration once.
const MIGRATION_LOCK: i64 = 0x7265_6769_7374_7279; // "registry"

impl Store {
    /// Connects to `url` (a `postgres://` URL; `shown` is it without a password), and migrates
    /// the database or requires it to be of this binary's version (`migrate`). A `serving` store
    /// bounds its statements and calls; a command's (an export of a long window) may take longer.
    pub(crate) async fn open(
        url: &str,
        shown: &str,
        migrate: Migrate,
        serving: bool,
    ) -> Result<Store, StoreError> {
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|e| StoreError::Database(format!("{shown} is not a PostgreSQL URL: {e}")))?;
        // No statement may hold a pooled connection for long: a slow admin query must not starve
        // the writer or the revocation poll.
        if serving && config.get_options().is_none() {
            config.options("-c statement_timeout=5000");
        }
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(TCP_USER_TIMEOUT);
        }
        let manager =
            Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let timeout = Some(POOL_TIMEOUT);
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .timeouts(Timeouts { wait: timeout, create: timeout, recycle: timeout })
            .build()
            .map_err(database)?;
        let store = Store {
            pool,
            url: shown.to_owned(),
            audit_reads: tokio::sync::Semaphore::new(AUDIT_READS),
            deadline: serving.then_some(CALL_DEADLINE),
        };
        match migrate {
            Migrate::Apply => store.migrate(migrate).await?,
            // Read before anything is created: a role that may write rows but not create tables
            // can still revoke on a ledger that has its schema.
            Migrate::IfEmpty if store.schema_version().await? != 0 => store.require_current().await?,
            Migrate::IfEmpty => store.migrate(migrate).await?,
            Migrate::Never => store.require_current().await?,
        }
        Ok(store)
    }

    /// The database's schema is this binary's, or an error (it is not changed).
    async fn require_current(&self) -> Result<(), StoreError> {
        store::require_version(self.schema_version().await?, &self.url)
    }

    /// The schema's version (0: none), read without changing anything.
    async fn schema_version(&self) -> Result<i64, StoreError> {
        let client =
            self.pool.get().await.map_err(|e| {
                StoreError::Database(format!("cannot connect to the ledger {}: {e}", self.url))
            })?;
        let versioned: bool = client
            .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
            .await
            .map_err(|e| described(&e))?
            .get(0);
        let version: i64 = match versioned {
            true => client
                .query_one("SELECT COALESCE(MAX(version), 0)::BIGINT FROM schema_migrations", &[])
                .await
                .map_err(|e| described(&e))?
                .get(0),
            false => 0,
        };
        Ok(version)
    }

    /// Applies the migrations the database lacks (with [`Migrate::IfEmpty`], only to one with no
    /// schema yet).
    async fn migrate(&self, migrate: Migrate) -> Result<(), StoreError> {
        let mut client =
            self.pool.get().await.map_err(|e| {
                StoreError::Database(format!("cannot connect to the ledger {}: {e}", self.url))
            })?;
        // A migration may index a large table, and a replica starting meanwhile waits for the lock:
        // neither is held to the statement timeout of the service's queries (restored after).
        client.batch_execute("SET statement_timeout = 0").await.map_err(|e| described(&e))?;
        // Held for the whole migration, the table of versions included: replicas starting together
        // apply each migration once.
        client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).await.map_err(|e| described(&e))?;
        let migrated = self.migrate_locked(&mut client, migrate).await;
        let unlocked = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await;
        client.batch_execute("RESET statement_timeout").await.map_err(|e| described(&e))?;
        unlocked.map_err(|e| described(&e))?;
        migrated
    }

    async fn migrate_locked(
        &self,
        client: &mut deadpool_postgres::Client,
        migrate: Migrate,
    ) -> Result<(), StoreError> {
        client.batch_execute(store::MIGRATIONS_TABLE).await.map_err(|e| described(&e))?;
        let mut first = true;
        loop {
            let transaction = client.transaction().await.map_err(|e| described(&e))?;
            let version: i64 = transaction
                .query_one("SELECT COALESCE(MAX(version), 0)::BIGINT FROM schema_migrations", &[])
                .await
                .map_err(|e| described(&e))?
                .get(0);
            if std::mem::take(&mut first) && migrate == Migrate::IfEmpty && version != 0 {
                return store::require_version(version, &self.url);
            }
            store::check_version(version, &self.url)?;
            let Some(migration) = usize::try_from(version).ok().and_then(|v| store::MIGRATIONS.get(v)) else {
                return Ok(());
            };
            transaction.batch_execute(migration).await.map_err(|e| described(&e))?;
            transaction
                .execute(
                    "INSERT INTO schema_migrations (version, applied_at_ms) VALUES ($1, $2)",
                    &[&(version + 1), &Millis::now().0],
                )
                .await
                .map_err(|e| described(&e))?;
            transaction.commit().await.map_err(|e| described(&e))?;
            tracing::info!(ledger = %self.url, version = version + 1, "ledger schema migrated");
        }
    }

    /// `call`, failing as unreachable when a serving store's deadline passes first. (A commit
    /// cut off so may have landed: a batch is written again whole, and its inserts are
    /// idempotent.)
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let Some(deadline) = self.deadline else {
            return call.await;
        };
        tokio::time::timeout(deadline, call).await.unwrap_or_else(|_| {
            Err(StoreError::Unreachable(format!("PostgreSQL did not answer within {deadline:?}")))
        })
    }

    pub(crate) async fn write(&self, records: Vec<Record>) -> Result<(), (StoreError, Vec<Record>)> {
        match self.bounded(self.write_records(&records)).await {
            Ok(()) => Ok(()),
            Err(error) => Err((error, records)),
        }
    }

    async fn write_records(&self, records: &[Record]) -> Result<(), StoreError> {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let transaction = client.transaction().await.map_err(|e| described(&e))?;
        // The changes first (a refresh token before the event that names it), each statement
        // prepared once.
        let changes: Vec<(&str, Vec<Param>)> =
            records.iter().filter_map(|r| r.change.as_ref()).map(store::Change::statement).collect();
        for (statement, params) in &changes {
            let prepared = transaction.prepare_cached(statement).await.map_err(|e| described(&e))?;
            transaction.execute_raw(&prepared, params.iter()).await.map_err(|e| described(&e))?;
        }
        let insert = transaction.prepare_cached(store::INSERT_EVENT).await.map_err(|e| described(&e))?;
        let rows: Vec<Vec<Param>> = records.iter().map(|r| store::event_params(&r.event)).collect();
        // Pipelined: one round trip for the whole batch rather than one per event.
        let inserts = rows.iter().map(|params| transaction.execute_raw(&insert, params.iter()));
        futures_util::future::try_join_all(inserts).await.map_err(|e| described(&e))?;
        transaction.commit().await.map_err(|e| described(&e))
    }

    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        self.bounded(async {
            let client = self.pool.get().await.map_err(pool_error)?;
            client.simple_query(store::PROBE).await.map_err(|e| described(&e))?;
            Ok(())
        })
        .await
    }

    /// Runs `statement`; an [`Reader::Audit`] one waits for one of the audit readers' turns.
    pub(crate) async fn select<T>(
        &self,
        on: Reader,
        statement: &str,
        params: Vec<Param>,
        read: fn(&dyn Row) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let _turn = match on {
            Reader::Service => None,
            Reader::Audit => Some(
                tokio::time::timeout(AUDIT_WAIT, self.audit_reads.acquire())
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .ok_or_else(|| {
                        StoreError::Database(format!(
                            "{AUDIT_READS} audit listings or exports are running and none ended within \
                             {AUDIT_WAIT:?}; try again later"
                        ))
                    })?,
            ),
        };
        self.bounded(async {
            let client = self.pool.get().await.map_err(pool_error)?;
            let prepared = client.prepare_cached(statement).await.map_err(|e| described(&e))?;
            let rows = client.query_raw(&prepared, params.iter()).await.map_err(|e| described(&e))?;
            futures_util::pin_mut!(rows);
            let mut out = Vec::new();
            while let Some(row) =
                futures_util::TryStreamExt::try_next(&mut rows).await.map_err(|e| described(&e))?
            {
                out.push(read(&row)?);
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
        self.bounded(async {
            let client = self.pool.get().await.map_err(pool_error)?;
            let prepared = client.prepare_cached(statement).await.map_err(|e| described(&e))?;
            client.execute_raw(&prepared, params.iter()).await.map_err(|e| described(&e))
        })
        .await
    }

    pub(crate) async fn change_revocations(
        &self,
        statement: &'static str,
        params: Vec<Param>,
        audit: Event,
    ) -> Result<bool, StoreError> {
        self.bounded(self.change_revocations_unbounded(statement, params, audit)).await
    }

    async fn change_revocations_unbounded(
        &self,
        statement: &'static str,
        params: Vec<Param>,
        audit: Event,
    ) -> Result<bool, StoreError> {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let transaction = client.transaction().await.map_err(|e| described(&e))?;
        let prepared = transaction.prepare_cached(statement).await.map_err(|e| described(&e))?;
        let changed = transaction.execute_raw(&prepared, params.iter()).await.map_err(|e| described(&e))?;
        if changed == 0 {
            return Ok(false);
        }
        transaction.execute(store::BUMP_REVISION, &[]).await.map_err(|e| described(&e))?;
        let insert = transaction.prepare_cached(store::INSERT_EVENT).await.map_err(|e| described(&e))?;
        transaction
            .execute_raw(&insert, store::event_params(&audit).iter())
            .await
            .map_err(|e| described(&e))?;
        transaction.commit().await.map_err(|e| described(&e))?;
        Ok(true)
    }

    pub(crate) async fn prune(&self, before: Millis) -> Result<u64, StoreError> {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        // In chunks, each its own transaction: no long lock, no statement near the timeout.
        let mut events = 0;
        loop {
            let chunk = client
                .execute(store::PRUNE_EVENTS, &[&before.0, &store::PRUNE_CHUNK])
                .await
                .map_err(|e| described(&e))?;
            events += chunk;
            if i64::try_from(chunk).unwrap_or(i64::MAX) < store::PRUNE_CHUNK {
                break;
            }
        }
        let transaction = client.transaction().await.map_err(|e| described(&e))?;
        transaction.execute(store::PRUNE_REFRESH_TOKENS, &[&before.0]).await.map_err(|e| described(&e))?;
        let revocations =
            transaction.execute(store::PRUNE_REVOCATIONS, &[&before.0]).await.map_err(|e| described(&e))?;
        if revocations > 0 {
            transaction.execute(store::BUMP_REVISION, &[]).await.map_err(|e| described(&e))?;
        }
        transaction.commit().await.map_err(|e| described(&e))?;
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A NUL in a caller's claim is written as U+FFFD; other text, and no text, as they are.
    #[test]
    fn a_nul_is_written_as_the_replacement_character() {
        let encoded = |param: Param| {
            let mut out = bytes::BytesMut::new();
            let null = matches!(param.to_sql(&Type::TEXT, &mut out).unwrap(), IsNull::Yes);
            (null, String::from_utf8(out.to_vec()).unwrap())
        };
        assert_eq!(encoded(Param::Text(Some("ali\0ce\0".into()))), (false, "ali\u{fffd}ce\u{fffd}".into()));
        assert_eq!(encoded(Param::Text(Some("alice é".into()))), (false, "alice é".into()));
        assert_eq!(encoded(Param::Text(None)), (true, String::new()));
    }
}
