//! The ledger's tables, its versioned migrations, and the SQL both backends share. Statements are
//! written once with `$n` placeholders (PostgreSQL's); SQLite reads them as `?n`.

use super::event::{AppliedBundle, Event, IssuedToken, Millis, Outcome, Revocation, RevocationKind};
use super::postgres;
use super::refresh::RefreshToken;
use super::sqlite;
use crate::access::Caller;

/// What kind of read a `SELECT` is: SQLite runs each kind on a connection of its own; PostgreSQL
/// lets only a few audit reads hold its pool's connections at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reader {
    /// What serving tokens reads, and every lookup of one row by its key (an administrator
    /// stopping a refresh token must not wait behind a listing).
    Service,
    /// Listings and exports of the audit trail, which may scan many events.
    Audit,
}

/// The schema, one entry per version, applied in order and never edited once released (a change
/// is a new entry). The version a database is at is the number of entries applied.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: events, revocations, and the counter replicas poll to see revocations change.
    "CREATE TABLE events (
        id TEXT PRIMARY KEY,
        time_ms BIGINT NOT NULL,
        outcome TEXT NOT NULL,
        reason TEXT,
        message TEXT,
        sub TEXT,
        client_id TEXT,
        tenant TEXT,
        plan TEXT,
        licence TEXT,
        iss TEXT,
        jti TEXT,
        client_addr TEXT,
        service TEXT,
        requested TEXT NOT NULL,
        granted TEXT NOT NULL,
        policy_digest TEXT,
        settings_version TEXT,
        token_jti TEXT,
        token_exp BIGINT,
        signing_kid TEXT
    );
    CREATE INDEX events_time ON events (time_ms);
    CREATE INDEX events_sub ON events (sub, id);
    CREATE INDEX events_tenant ON events (tenant, outcome, id);
    CREATE INDEX events_licence ON events (licence, id);
    CREATE INDEX events_jti ON events (jti);
    CREATE INDEX events_token_jti ON events (token_jti);
    CREATE TABLE revocations (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        value TEXT NOT NULL,
        tenant TEXT,
        reason TEXT NOT NULL,
        created_at_ms BIGINT NOT NULL,
        expires_at_ms BIGINT,
        created_by TEXT NOT NULL,
        created_by_tenant TEXT
    );
    CREATE TABLE ledger_state (name TEXT PRIMARY KEY, value BIGINT NOT NULL);
    INSERT INTO ledger_state (name, value) VALUES ('revocations_revision', 0);",
    // 2: refresh tokens (as hashes, with the caller they were issued to); which credential an
    // exchange came with and whether its token was reused; a policy's annotations (a JSON array of
    // [key, value] pairs) and the token lifetime it asked for (JSON: requested, granted,
    // limited_by).
    "CREATE TABLE refresh_tokens (
        id TEXT PRIMARY KEY,
        token_hash TEXT NOT NULL UNIQUE,
        sub TEXT NOT NULL,
        client_id TEXT,
        service TEXT NOT NULL,
        tenant TEXT,
        plan TEXT,
        licence TEXT,
        scopes TEXT NOT NULL,
        claims_json TEXT NOT NULL,
        caller_client_id TEXT,
        caller_iss TEXT,
        caller_jti TEXT,
        issued_at_ms BIGINT NOT NULL,
        last_used_ms BIGINT NOT NULL,
        expires_at_ms BIGINT NOT NULL,
        idle_seconds BIGINT
    );
    CREATE INDEX refresh_tokens_sub ON refresh_tokens (sub, id);
    CREATE INDEX refresh_tokens_tenant ON refresh_tokens (tenant, id);
    ALTER TABLE events ADD COLUMN via TEXT;
    ALTER TABLE events ADD COLUMN refresh_token_id TEXT;
    ALTER TABLE events ADD COLUMN reused BIGINT;
    ALTER TABLE events ADD COLUMN annotations TEXT;
    ALTER TABLE events ADD COLUMN lifetime TEXT;",
    // 3: the highest policy bundle revision applied from each source, so that a restart refuses a
    // rollback as a running service does.
    "CREATE TABLE bundle_revisions (
        source TEXT PRIMARY KEY,
        revision BIGINT NOT NULL,
        content_sha256 TEXT NOT NULL,
        applied_at_ms BIGINT NOT NULL
    );",
    // 4: a tenant's events, newest first, read in index order: the index of version 1 put the
    // outcome before the id, so every page of a tenant's listing sorted all of its events.
    "DROP INDEX events_tenant;
    CREATE INDEX events_tenant_id ON events (tenant, id);",
];

/// The schema version this binary writes.
pub(super) fn known_version() -> i64 {
    MIGRATIONS.len() as i64
}

/// Created before any migration; one row per applied version.
pub(super) const MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at_ms BIGINT NOT NULL)";

/// A database from a newer binary is refused rather than half-understood.
pub(super) fn check_version(found: i64, url: &str) -> Result<(), StoreError> {
    if found > known_version() {
        return Err(StoreError::NewerSchema { url: url.to_owned(), found, known: known_version() });
    }
    Ok(())
}

/// Whether opening a ledger applies the migrations it lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Migrate {
    /// The service: migrate.
    Apply,
    /// A command that sets a ledger up (`ledger revoke --create`): a database with no schema at
    /// all is given this binary's; one with a schema is treated as [`Migrate::Never`] (checked
    /// under the migration lock, so a service migrating meanwhile is not overtaken).
    IfEmpty,
    /// A command on a ledger a service runs on: never change its schema (a newer binary on an
    /// auditor's machine must not migrate a ledger older replicas still use); one of another
    /// version is refused.
    Never,
}

/// `found` (a command's view of the schema, [`Migrate::Never`]): exactly this binary's version.
pub(super) fn require_version(found: i64, url: &str) -> Result<(), StoreError> {
    check_version(found, url)?;
    if found == 0 {
        return Err(StoreError::NoSchema { url: url.to_owned() });
    }
    if found < known_version() {
        return Err(StoreError::OlderSchema { url: url.to_owned(), found, known: known_version() });
    }
    Ok(())
}

pub(super) const EVENT_COLUMNS: &str = "id, time_ms, outcome, reason, message, sub, client_id, tenant, plan, \
     licence, iss, jti, client_addr, service, requested, granted, policy_digest, settings_version, token_jti, \
     token_exp, signing_kid, via, refresh_token_id, reused, annotations, lifetime";

pub(super) const INSERT_EVENT: &str = "INSERT INTO events (id, time_ms, outcome, reason, message, sub, \
     client_id, tenant, plan, licence, iss, jti, client_addr, service, requested, granted, policy_digest, \
     settings_version, token_jti, token_exp, signing_kid, via, refresh_token_id, reused, annotations, lifetime) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, \
     $22, $23, $24, $25, $26) ON CONFLICT (id) DO NOTHING";

pub(super) const REFRESH_COLUMNS: &str = "id, sub, client_id, service, tenant, plan, licence, scopes, \
     claims_json, caller_iss, caller_jti, issued_at_ms, last_used_ms, expires_at_ms, idle_seconds, \
     caller_client_id";

/// Idempotent like [`INSERT_EVENT`]: a batch retried whole after a commit whose answer was lost
/// finds its token there (the same id); a clash of `token_hash` is still an error.
pub(super) const INSERT_REFRESH_TOKEN: &str = "INSERT INTO refresh_tokens (id, sub, client_id, service, \
     tenant, plan, licence, scopes, claims_json, caller_iss, caller_jti, issued_at_ms, last_used_ms, \
     expires_at_ms, idle_seconds, caller_client_id, token_hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
     $10, $11, $12, $13, $14, $15, $16, $17) ON CONFLICT (id) DO NOTHING";

/// A use moves "last used" forward, never back (uses may be committed out of order).
pub(super) const TOUCH_REFRESH_TOKEN: &str =
    "UPDATE refresh_tokens SET last_used_ms = $2 WHERE id = $1 AND last_used_ms < $2";

pub(super) const REVOCATION_COLUMNS: &str =
    "id, kind, value, tenant, reason, created_at_ms, expires_at_ms, created_by, created_by_tenant";

pub(super) const INSERT_REVOCATION: &str = "INSERT INTO revocations (id, kind, value, tenant, reason, \
     created_at_ms, expires_at_ms, created_by, created_by_tenant) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

pub(super) const BUMP_REVISION: &str =
    "UPDATE ledger_state SET value = value + 1 WHERE name = 'revocations_revision'";

pub(super) const REVISION: &str = "SELECT value FROM ledger_state WHERE name = 'revocations_revision'";
/// A write that commits, to tell whether the database takes writes (`Store::ping`): a read, or a
/// transaction rolled back, succeeds on a full disk or a read-only file too. One row, rewritten.
pub(super) const PROBE: &str = "INSERT INTO ledger_state (name, value) VALUES ('write_probe', 0) \
     ON CONFLICT (name) DO UPDATE SET value = ledger_state.value + 1";

pub(super) const BUNDLE_COLUMNS: &str = "source, revision, content_sha256, applied_at_ms";

/// Raises a source's record, never lowers it: replicas sharing the ledger may apply revisions in
/// any order.
pub(super) const RAISE_BUNDLE: &str = "INSERT INTO bundle_revisions (source, revision, content_sha256, \
     applied_at_ms) VALUES ($1, $2, $3, $4) ON CONFLICT (source) DO UPDATE SET revision = excluded.revision, \
     content_sha256 = excluded.content_sha256, applied_at_ms = excluded.applied_at_ms \
     WHERE excluded.revision > bundle_revisions.revision";

pub(super) const FORGET_BUNDLE: &str = "DELETE FROM bundle_revisions WHERE source = $1";

/// A bound parameter: the ledger stores only text and integers.
#[derive(Clone, Debug)]
pub(super) enum Param {
    Text(Option<String>),
    Int(Option<i64>),
}

fn text(value: &Option<String>) -> Param {
    Param::Text(value.clone())
}

/// An event's columns, in [`EVENT_COLUMNS`] order.
pub(super) fn event_params(event: &Event) -> Vec<Param> {
    let token = event.token.as_ref();
    vec![
        Param::Text(Some(event.id.clone())),
        Param::Int(Some(event.time.0)),
        Param::Text(Some(event.outcome.as_str().to_owned())),
        text(&event.reason),
        text(&event.message),
        text(&event.sub),
        text(&event.client_id),
        text(&event.tenant),
        text(&event.plan),
        text(&event.licence),
        text(&event.iss),
        text(&event.jti),
        text(&event.client_addr),
        text(&event.service),
        Param::Text(Some(event.requested.join(" "))),
        Param::Text(Some(event.granted.join(" "))),
        text(&event.policy_digest),
        text(&event.settings_version),
        Param::Text(token.map(|t| t.jti.clone())),
        Param::Int(token.map(|t| t.exp)),
        Param::Text(token.map(|t| t.kid.clone())),
        text(&event.via),
        text(&event.refresh_token_id),
        Param::Int(event.reused.then_some(1)),
        Param::Text((!event.annotations.is_empty()).then(|| json(&event.annotations))),
        Param::Text(event.lifetime.as_ref().map(json)),
    ]
}

/// A value of strings and integers as JSON (cannot fail: no maps with non-string keys).
fn json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// A refresh token's columns, in [`INSERT_REFRESH_TOKEN`] order: [`REFRESH_COLUMNS`], then the
/// hash of its text.
pub(super) fn refresh_params(token: &RefreshToken, token_hash: &str) -> Vec<Param> {
    let caller = &token.caller;
    vec![
        Param::Text(Some(token.id.clone())),
        Param::Text(Some(token.sub.clone())),
        text(&token.client_id),
        Param::Text(Some(token.service.clone())),
        text(&token.tenant),
        text(&caller.plan),
        text(&caller.license),
        Param::Text(Some(caller.scopes.join(" "))),
        Param::Text(Some(caller.claims_json.clone())),
        text(&token.caller_iss),
        text(&token.caller_jti),
        Param::Int(Some(token.issued_at.0)),
        Param::Int(Some(token.last_used_at.0)),
        Param::Int(Some(token.expires_at.0)),
        Param::Int(token.idle_seconds.map(|s| i64::try_from(s).unwrap_or(i64::MAX))),
        text(&caller.client_id),
        Param::Text(Some(token_hash.to_owned())),
    ]
}

/// A change the writer makes in the same transaction as the events it came with.
#[derive(Clone, Debug)]
pub enum Change {
    /// A refresh token was issued: stored (by the hash of its text) before it is handed out.
    RefreshTokenIssued {
        /// The token as kept.
        token: Box<RefreshToken>,
        /// The SHA-256 of its text.
        token_hash: String,
    },
    /// A refresh token authenticated an exchange at `at`: its "last used" moves.
    RefreshTokenUsed {
        /// Its id.
        id: String,
        /// When.
        at: Millis,
    },
}

impl Change {
    /// The statement and its parameters.
    pub(super) fn statement(&self) -> (&'static str, Vec<Param>) {
        match self {
            Change::RefreshTokenIssued { token, token_hash } => {
                (INSERT_REFRESH_TOKEN, refresh_params(token, token_hash))
            }
            Change::RefreshTokenUsed { id, at } => {
                (TOUCH_REFRESH_TOKEN, vec![Param::Text(Some(id.clone())), Param::Int(Some(at.0))])
            }
        }
    }
}

/// What the writer commits: an event, and the change that comes with it.
#[derive(Clone, Debug)]
pub(super) struct Record {
    pub event: Event,
    pub change: Option<Change>,
}

/// A revocation's columns, in [`REVOCATION_COLUMNS`] order.
pub(super) fn revocation_params(revocation: &Revocation) -> Vec<Param> {
    vec![
        Param::Text(Some(revocation.id.clone())),
        Param::Text(Some(revocation.kind.as_str().to_owned())),
        Param::Text(Some(revocation.value.clone())),
        text(&revocation.tenant),
        Param::Text(Some(revocation.reason.clone())),
        Param::Int(Some(revocation.created_at.0)),
        Param::Int(revocation.expires_at.map(|t| t.0)),
        Param::Text(Some(revocation.created_by.clone())),
        text(&revocation.created_by_tenant),
    ]
}

/// A result row of either backend.
pub(super) trait Row {
    fn text(&self, index: usize) -> Result<Option<String>, StoreError>;
    fn int(&self, index: usize) -> Result<Option<i64>, StoreError>;

    fn required_text(&self, index: usize) -> Result<String, StoreError> {
        self.text(index)?.ok_or_else(|| StoreError::Corrupt(format!("column {index} is NULL")))
    }
}

fn words(text: Option<String>) -> Vec<String> {
    text.map(|t| t.split(' ').filter(|s| !s.is_empty()).map(str::to_owned).collect()).unwrap_or_default()
}

/// An event from a row of `SELECT {EVENT_COLUMNS}`.
pub(super) fn event_from(row: &dyn Row) -> Result<Event, StoreError> {
    let outcome_name = row.required_text(2)?;
    let outcome = Outcome::from_name(&outcome_name)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown outcome {outcome_name:?}")))?;
    let token = match (row.text(18)?, row.int(19)?, row.text(20)?) {
        (Some(jti), Some(exp), Some(kid)) => Some(IssuedToken { jti, exp, kid }),
        _ => None,
    };
    Ok(Event {
        id: row.required_text(0)?,
        time: Millis(row.int(1)?.unwrap_or_default()),
        outcome,
        reason: row.text(3)?,
        message: row.text(4)?,
        sub: row.text(5)?,
        client_id: row.text(6)?,
        tenant: row.text(7)?,
        plan: row.text(8)?,
        licence: row.text(9)?,
        iss: row.text(10)?,
        jti: row.text(11)?,
        client_addr: row.text(12)?,
        service: row.text(13)?,
        requested: words(row.text(14)?),
        granted: words(row.text(15)?),
        policy_digest: row.text(16)?,
        settings_version: row.text(17)?,
        token,
        via: row.text(21)?,
        refresh_token_id: row.text(22)?,
        reused: row.int(23)?.is_some_and(|reused| reused != 0),
        annotations: match row.text(24)? {
            Some(text) => serde_json::from_str(&text)
                .map_err(|e| StoreError::Corrupt(format!("annotations {text:?}: {e}")))?,
            None => Vec::new(),
        },
        lifetime: match row.text(25)? {
            Some(text) => Some(
                serde_json::from_str(&text)
                    .map_err(|e| StoreError::Corrupt(format!("lifetime {text:?}: {e}")))?,
            ),
            None => None,
        },
    })
}

fn int_or_zero(row: &dyn Row, index: usize) -> Result<Millis, StoreError> {
    Ok(Millis(row.int(index)?.unwrap_or_default()))
}

/// A refresh token from a row of `SELECT {REFRESH_COLUMNS}`.
pub(super) fn refresh_from(row: &dyn Row) -> Result<RefreshToken, StoreError> {
    let sub = row.required_text(1)?;
    let client_id = row.text(2)?;
    let tenant = row.text(4)?;
    let caller = Caller {
        subject: sub.clone(),
        client_id: row.text(15)?,
        tenant: tenant.clone(),
        plan: row.text(5)?,
        license: row.text(6)?,
        scopes: words(row.text(7)?),
        claims_json: row.required_text(8)?,
    };
    Ok(RefreshToken {
        id: row.required_text(0)?,
        sub,
        client_id,
        service: row.required_text(3)?,
        tenant,
        issued_at: int_or_zero(row, 11)?,
        last_used_at: int_or_zero(row, 12)?,
        expires_at: int_or_zero(row, 13)?,
        idle_seconds: row.int(14)?.and_then(|s| u64::try_from(s).ok()),
        caller,
        caller_iss: row.text(9)?,
        caller_jti: row.text(10)?,
    })
}

/// Which refresh tokens to list, newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RefreshTokenFilter {
    /// Issued to this subject.
    pub sub: Option<String>,
    /// Of this tenant's callers (how a tenant administrator is confined).
    pub tenant: Option<String>,
    /// Only those issued before this one (the page after a cursor).
    pub before_id: Option<String>,
    /// At most this many.
    pub limit: usize,
}

/// `SELECT` for `filter`, newest first, and its parameters.
pub(super) fn refresh_tokens_query(filter: &RefreshTokenFilter) -> (String, Vec<Param>) {
    let mut sql = format!("SELECT {REFRESH_COLUMNS} FROM refresh_tokens");
    let mut params = Vec::new();
    let mut conditions = Vec::new();
    for (condition, value) in
        [("sub =", &filter.sub), ("tenant =", &filter.tenant), ("id <", &filter.before_id)]
    {
        if value.is_some() {
            params.push(Param::Text(value.clone()));
            conditions.push(format!("{condition} ${}", params.len()));
        }
    }
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    params.push(Param::Int(Some(i64::try_from(filter.limit).unwrap_or(i64::MAX))));
    sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", params.len()));
    (sql, params)
}

/// A bundle record from a row of `SELECT {BUNDLE_COLUMNS}`.
pub(super) fn applied_bundle_from(row: &dyn Row) -> Result<AppliedBundle, StoreError> {
    Ok(AppliedBundle {
        source: row.required_text(0)?,
        revision: u64::try_from(row.int(1)?.unwrap_or_default()).unwrap_or_default(),
        content_sha256: row.required_text(2)?,
        applied_at: int_or_zero(row, 3)?,
    })
}

/// `bundle`'s columns, in [`BUNDLE_COLUMNS`] order. A bundle's revision is at most `i64::MAX`
/// (a larger one is refused when it is read).
pub(super) fn applied_bundle_params(bundle: &AppliedBundle) -> Vec<Param> {
    vec![
        Param::Text(Some(bundle.source.clone())),
        Param::Int(Some(i64::try_from(bundle.revision).unwrap_or(i64::MAX))),
        Param::Text(Some(bundle.content_sha256.clone())),
        Param::Int(Some(bundle.applied_at.0)),
    ]
}

/// A revocation from a row of `SELECT {REVOCATION_COLUMNS}`.
pub(super) fn revocation_from(row: &dyn Row) -> Result<Revocation, StoreError> {
    let kind_name = row.required_text(1)?;
    let kind = RevocationKind::from_name(&kind_name)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown revocation kind {kind_name:?}")))?;
    Ok(Revocation {
        id: row.required_text(0)?,
        kind,
        value: row.required_text(2)?,
        tenant: row.text(3)?,
        reason: row.required_text(4)?,
        created_at: Millis(row.int(5)?.unwrap_or_default()),
        expires_at: row.int(6)?.map(Millis),
        created_by: row.required_text(7)?,
        created_by_tenant: row.text(8)?,
    })
}

/// Which events to list: each field narrows; `tenant` is also how a tenant administrator is
/// confined to its own.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// The caller's (or administrator's) `sub`.
    pub sub: Option<String>,
    /// `stellaops:license`.
    pub licence: Option<String>,
    /// `stellaops:tenant`.
    pub tenant: Option<String>,
    /// The outcome.
    pub outcome: Option<Outcome>,
    /// The caller token's or the registry token's `jti`.
    pub jti: Option<String>,
    /// At or after.
    pub since: Option<Millis>,
    /// Before.
    pub until: Option<Millis>,
    /// Only events older than this one (the page after a cursor).
    pub before_id: Option<String>,
    /// At most this many.
    pub limit: usize,
}

/// `SELECT` for `filter`, newest first, and its parameters.
pub(super) fn events_query(filter: &EventFilter) -> (String, Vec<Param>) {
    let mut conditions = Vec::new();
    let mut params = Vec::new();
    let mut push = |condition: &str, values: Vec<Param>| {
        let mut condition = condition.to_owned();
        for value in values {
            params.push(value);
            condition = condition.replacen('#', &format!("${}", params.len()), 1);
        }
        conditions.push(condition);
    };
    let some = |value: &Option<String>| Param::Text(value.clone());
    if filter.sub.is_some() {
        push("sub = #", vec![some(&filter.sub)]);
    }
    if filter.licence.is_some() {
        push("licence = #", vec![some(&filter.licence)]);
    }
    if filter.tenant.is_some() {
        push("tenant = #", vec![some(&filter.tenant)]);
    }
    if let Some(outcome) = filter.outcome {
        push("outcome = #", vec![Param::Text(Some(outcome.as_str().to_owned()))]);
    }
    if filter.jti.is_some() {
        push("(jti = # OR token_jti = #)", vec![some(&filter.jti), some(&filter.jti)]);
    }
    if let Some(since) = filter.since {
        push("time_ms >= #", vec![Param::Int(Some(since.0))]);
    }
    if let Some(until) = filter.until {
        push("time_ms < #", vec![Param::Int(Some(until.0))]);
    }
    if filter.before_id.is_some() {
        push("id < #", vec![some(&filter.before_id)]);
    }
    let mut sql = format!("SELECT {EVENT_COLUMNS} FROM events");
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    params.push(Param::Int(Some(i64::try_from(filter.limit).unwrap_or(i64::MAX))));
    sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", params.len()));
    (sql, params)
}

/// What an export covers: events at or after `since` and before `until`, which all lie between
/// the ids `first` and `last` (both included; see [`export_window_query`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportWindow {
    pub since: Option<Millis>,
    pub until: Option<Millis>,
    pub first: String,
    pub last: String,
}

/// The time conditions of an export on `column`, numbered from `params.len() + 1`. A page writes
/// the column as `+time_ms`, which keeps SQLite from reading the window through the time index:
/// it then walks the ids in order and stops when full, instead of sorting the rest of the window
/// (every page of a large export did).
fn window_conditions(
    column: &str,
    since: Option<Millis>,
    until: Option<Millis>,
    params: &mut Vec<Param>,
) -> Vec<String> {
    let mut conditions = Vec::new();
    if let Some(since) = since {
        params.push(Param::Int(Some(since.0)));
        conditions.push(format!("{column} >= ${}", params.len()));
    }
    if let Some(until) = until {
        params.push(Param::Int(Some(until.0)));
        conditions.push(format!("{column} < ${}", params.len()));
    }
    conditions
}

/// `SELECT` of the first and last id of the events at or after `since` and before `until` (one
/// pass over the window, through the time index), and its parameters.
pub(super) fn export_window_query(since: Option<Millis>, until: Option<Millis>) -> (String, Vec<Param>) {
    let mut params = Vec::new();
    let conditions = window_conditions("time_ms", since, until, &mut params);
    let mut sql = "SELECT MIN(id), MAX(id) FROM events".to_owned();
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    (sql, params)
}

/// `SELECT` of one page of an export: the events of `window`, oldest id first, after `after_id`
/// (the last id of the previous page).
pub(super) fn export_query(
    window: &ExportWindow,
    after_id: Option<&str>,
    limit: usize,
) -> (String, Vec<Param>) {
    let mut params = vec![Param::Text(Some(window.last.clone()))];
    let mut conditions = vec!["id <= $1".to_owned()];
    match after_id {
        Some(after_id) => {
            params.push(Param::Text(Some(after_id.to_owned())));
            conditions.push(format!("id > ${}", params.len()));
        }
        None => {
            params.push(Param::Text(Some(window.first.clone())));
            conditions.push(format!("id >= ${}", params.len()));
        }
    }
    conditions.extend(window_conditions("+time_ms", window.since, window.until, &mut params));
    params.push(Param::Int(Some(i64::try_from(limit).unwrap_or(i64::MAX))));
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE {} ORDER BY id ASC LIMIT ${}",
        conditions.join(" AND "),
        params.len()
    );
    (sql, params)
}

/// Why the database could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database answered with an error.
    #[error("{0}")]
    Database(String),
    /// The database could not be reached, or dropped the connection (a restart, a shutdown): what
    /// was asked was not refused for what it holds.
    #[error("{0}")]
    Unreachable(String),
    /// The database's schema is newer than this binary.
    #[error(
        "the ledger {url} has schema version {found}, newer than this registry-token knows ({known}); \
         run a newer registry-token, or point ledger.url at another database"
    )]
    NewerSchema {
        /// The ledger.
        url: String,
        /// Its version.
        found: i64,
        /// This binary's.
        known: i64,
    },
    /// The database's schema is older than this binary's, and it was opened by a command, which
    /// never migrates (only the service does, at its start).
    #[error(
        "the ledger {url} has schema version {found}, older than this registry-token's ({known}); a \
         command does not migrate a ledger: start the service of this version on it once (it migrates \
         at start), or run the registry-token the service runs"
    )]
    OlderSchema {
        /// The ledger.
        url: String,
        /// Its version.
        found: i64,
        /// This binary's.
        known: i64,
    },
    /// The database has no ledger schema (no service has run on it), and it was opened by a
    /// command that does not set one up.
    #[error(
        "the ledger {url} has no schema yet: start the service on it once (it creates the schema at \
         start), or set it up with `ledger revoke --create`"
    )]
    NoSchema {
        /// The ledger.
        url: String,
    },
    /// A row that this binary did not write.
    #[error("the ledger holds a row this registry-token cannot read: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether the database was not there to answer (so a retry, not a smaller request, is due).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, StoreError::Unreachable(_))
    }
}

/// Any database error as a [`StoreError::Database`] (both backends' `map_err`).
pub(super) fn database(error: impl std::fmt::Display) -> StoreError {
    StoreError::Database(error.to_string())
}

/// One of the two databases.
pub(super) enum Store {
    Sqlite(sqlite::Store),
    Postgres(postgres::Store),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.backend())
    }
}

impl Store {
    pub(super) fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// Writes `records` (their events and changes) in one transaction: all or none.
    pub(super) async fn write(&self, records: Vec<Record>) -> Result<(), (StoreError, Vec<Record>)> {
        match self {
            Store::Sqlite(store) => store.write(records).await,
            Store::Postgres(store) => store.write(records).await,
        }
    }

    /// SQLite's WAL checkpoint (PostgreSQL does its own): see [`sqlite::Store::checkpoint`].
    pub(super) async fn checkpoint(
        &self,
        by: sqlite::Checkpointer,
    ) -> Result<Option<sqlite::Checkpoint>, StoreError> {
        match self {
            Store::Sqlite(store) => store.checkpoint(by).await.map(Some),
            Store::Postgres(_) => Ok(None),
        }
    }

    /// Whether a write succeeds now: a write of its own, committed ([`PROBE`]).
    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(store) => store.ping().await,
            Store::Postgres(store) => store.ping().await,
        }
    }

    pub(super) async fn events(&self, filter: &EventFilter) -> Result<Vec<Event>, StoreError> {
        let (sql, params) = events_query(filter);
        self.select(Reader::Audit, sql, params, event_from).await
    }

    /// The ids an export of `since..until` lies between; `None` when no event is in it.
    pub(super) async fn export_window(
        &self,
        since: Option<Millis>,
        until: Option<Millis>,
    ) -> Result<Option<ExportWindow>, StoreError> {
        let (sql, params) = export_window_query(since, until);
        let read = |row: &dyn Row| Ok((row.text(0)?, row.text(1)?));
        Ok(match self.first(Reader::Audit, sql, params, read).await? {
            Some((Some(first), Some(last))) => Some(ExportWindow { since, until, first, last }),
            _ => None,
        })
    }

    pub(super) async fn export_page(
        &self,
        window: &ExportWindow,
        after_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let (sql, params) = export_query(window, after_id, limit);
        self.select(Reader::Audit, sql, params, event_from).await
    }

    pub(super) async fn event(&self, id: &str) -> Result<Option<Event>, StoreError> {
        let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = $1");
        self.first(Reader::Service, sql, vec![Param::Text(Some(id.to_owned()))], event_from).await
    }

    /// The refresh token whose text hashes to `token_hash`.
    pub(super) async fn refresh_token_by_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<RefreshToken>, StoreError> {
        let sql = format!("SELECT {REFRESH_COLUMNS} FROM refresh_tokens WHERE token_hash = $1");
        self.first(Reader::Service, sql, vec![Param::Text(Some(token_hash.to_owned()))], refresh_from).await
    }

    /// The refresh token `id`.
    pub(super) async fn refresh_token(&self, id: &str) -> Result<Option<RefreshToken>, StoreError> {
        let sql = format!("SELECT {REFRESH_COLUMNS} FROM refresh_tokens WHERE id = $1");
        self.first(Reader::Service, sql, vec![Param::Text(Some(id.to_owned()))], refresh_from).await
    }

    pub(super) async fn refresh_tokens(
        &self,
        filter: &RefreshTokenFilter,
    ) -> Result<Vec<RefreshToken>, StoreError> {
        let (sql, params) = refresh_tokens_query(filter);
        self.select(Reader::Audit, sql, params, refresh_from).await
    }

    /// Runs `sql` on the `on` connection (SQLite; PostgreSQL's pool gives every query its own).
    async fn select<T: Send + 'static>(
        &self,
        on: Reader,
        sql: String,
        params: Vec<Param>,
        read: fn(&dyn Row) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        match self {
            Store::Sqlite(store) => store.select(on, sql, params, read).await,
            Store::Postgres(store) => store.select(on, &sql, params, read).await,
        }
    }

    async fn first<T: Send + 'static>(
        &self,
        on: Reader,
        sql: String,
        params: Vec<Param>,
        read: fn(&dyn Row) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        Ok(self.select(on, sql, params, read).await?.into_iter().next())
    }

    pub(super) async fn revocations(&self) -> Result<Vec<Revocation>, StoreError> {
        let sql = format!("SELECT {REVOCATION_COLUMNS} FROM revocations ORDER BY id");
        self.select(Reader::Service, sql, Vec::new(), revocation_from).await
    }

    /// The record of the bundles applied: of `source`, or of every source.
    pub(super) async fn applied_bundles(
        &self,
        source: Option<&str>,
    ) -> Result<Vec<AppliedBundle>, StoreError> {
        let (condition, params) = match source {
            Some(source) => (" WHERE source = $1", vec![Param::Text(Some(source.to_owned()))]),
            None => ("", Vec::new()),
        };
        let sql = format!("SELECT {BUNDLE_COLUMNS} FROM bundle_revisions{condition} ORDER BY source");
        self.select(Reader::Service, sql, params, applied_bundle_from).await
    }

    /// Runs one statement outside the event queue, committed; the rows it changed.
    pub(super) async fn execute(
        &self,
        statement: &'static str,
        params: Vec<Param>,
    ) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(store) => store.execute(statement, params).await,
            Store::Postgres(store) => store.execute(statement, params).await,
        }
    }

    pub(super) async fn revision(&self) -> Result<i64, StoreError> {
        let read = |row: &dyn Row| row.int(0).map(Option::unwrap_or_default);
        Ok(self.first(Reader::Service, REVISION.to_owned(), Vec::new(), read).await?.unwrap_or_default())
    }

    /// Runs `statements` and then writes `audit`, in one transaction, bumping the revocations'
    /// revision; `Ok(false)` (and nothing written) when the first statement changed no row.
    pub(super) async fn change_revocations(
        &self,
        statement: &'static str,
        params: Vec<Param>,
        audit: Event,
    ) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(store) => store.change_revocations(statement, params, audit).await,
            Store::Postgres(store) => store.change_revocations(statement, params, audit).await,
        }
    }

    /// Deletes events before `before` and revocations that expired before it.
    pub(super) async fn prune(&self, before: Millis) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(store) => store.prune(before).await,
            Store::Postgres(store) => store.prune(before).await,
        }
    }
}

/// At most this many rows per pruning transaction, so pruning never holds the writer for long.
pub(super) const PRUNE_CHUNK: i64 = 5000;
pub(super) const PRUNE_EVENTS: &str =
    "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE time_ms < $1 LIMIT $2)";
pub(super) const PRUNE_REVOCATIONS: &str = "DELETE FROM revocations WHERE expires_at_ms < $1";
/// Refresh tokens that stopped working (absolutely, or for want of use) before $1.
pub(super) const PRUNE_REFRESH_TOKENS: &str = "DELETE FROM refresh_tokens WHERE expires_at_ms < $1 \
     OR (idle_seconds IS NOT NULL AND last_used_ms + idle_seconds * 1000 < $1)";
pub(super) const DELETE_REVOCATION: &str = "DELETE FROM revocations WHERE id = $1";
