//! The admin API on the operator listener: the ledger's events, and revocations that take effect
//! at once. Callers are administrators: an Authority token (Bearer) validated like any caller's,
//! carrying `admin.required_scope`.
//!
//! Tenant-aware: an administrator whose token carries `stellaops:tenant` sees only that tenant's
//! events and revocations, and revokes only within it; only one without the claim acts globally
//! (a null or empty one is refused).
//! Anything else is a 403 and writes nothing. Bad input is a 400 that writes nothing.

use super::AppState;
use super::extract::{ClientAddr, Params};
use super::line;
use crate::access::Caller;
use crate::ledger::{
    Event, EventFilter, Ledger, Millis, Outcome, Presented, RefreshTokenFilter, Revocation, RevocationKind,
    StoreError, check_window,
};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use data_encoding::BASE64URL_NOPAD;
use serde::Deserialize;
use serde_json::json;

/// Largest admin request body.
pub const MAX_ADMIN_BODY: usize = 16 * 1024;
/// Most events in one page.
pub const MAX_PAGE: usize = 1000;
const DEFAULT_PAGE: usize = 100;
const MAX_VALUE: usize = 256;
const MAX_REASON: usize = 500;

/// Why an admin request failed; answered as `{"error": CODE, "message": TEXT}`.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No or an invalid administrator token (401).
    #[error("{0}")]
    Unauthenticated(String),
    /// Not allowed for this administrator (403).
    #[error("{0}")]
    Forbidden(String),
    /// Malformed input (400).
    #[error("{0}")]
    BadRequest(String),
    /// No such event or revocation (404).
    #[error("{0}")]
    NotFound(String),
    /// What is asked cannot be done here (409): a revocation the policy bundle carries.
    #[error("{0}")]
    Conflict(String),
    /// `ledger.url: none` (503).
    #[error("the ledger is off (ledger.url: none): there are no events or revocations")]
    LedgerOff,
    /// The ledger failed (503); the cause goes to the log.
    #[error("the ledger is unavailable; try again later")]
    Ledger(#[from] StoreError),
    /// The Authority's keys cannot be had (503): the token may be fine; retry.
    #[error(
        "the Authority's keys are unavailable, so no administrator's token can be checked; try again later"
    )]
    KeysUnavailable,
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            AdminError::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            AdminError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            AdminError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            AdminError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            AdminError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            AdminError::LedgerOff => (StatusCode::SERVICE_UNAVAILABLE, "ledger_off"),
            AdminError::Ledger(_) | AdminError::KeysUnavailable => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
        };
        let message = self.to_string();
        match &self {
            AdminError::Ledger(error) => tracing::error!(%error, "an admin request failed in the ledger"),
            _ => {
                line::note(|line| line.refused = Some(message.clone()));
            }
        }
        (status, Json(json!({ "error": code, "message": message }))).into_response()
    }
}

/// A validated administrator.
#[derive(Debug)]
pub struct Admin {
    caller: Caller,
    jti: Option<String>,
    issuer: String,
}

impl Admin {
    /// `Some(tenant)` confines this administrator to it.
    fn tenant(&self) -> Option<&str> {
        self.caller.tenant.as_deref()
    }

    fn may_see(&self, tenant: Option<&str>) -> bool {
        self.tenant().is_none_or(|own| tenant == Some(own))
    }

    /// An audit event of this administrator's action.
    fn audit(&self, outcome: Outcome, revocation: &Revocation, client_addr: Option<String>) -> Event {
        let mut event = Event::revocation_audit(outcome, revocation, &self.caller.subject);
        event.set_caller(&self.caller, &self.issuer, self.jti.as_deref());
        // The tenant the action applies in, not the administrator's own (`set_caller` set that).
        event.tenant.clone_from(&revocation.tenant);
        event.client_addr = client_addr;
        event
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, AdminError> {
        let missing = || {
            AdminError::Unauthenticated(
                "an administrator's Authority access token is required: Authorization: Bearer TOKEN".into(),
            )
        };
        let header = parts.headers.get(AUTHORIZATION).ok_or_else(missing)?;
        let header = header.to_str().map_err(|_| missing())?;
        let (scheme, token) = header.split_once(' ').ok_or_else(missing)?;
        let token = token.trim();
        if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
            return Err(missing());
        }
        let live = app.live();
        let validated =
            live.admin_validator.validate(token, (app.clock)()).await.map_err(|error| match error {
                crate::authority::AuthError::MissingScope(scope) => AdminError::Forbidden(format!(
                    "the token lacks the scope {scope}: it is not an administrator's"
                )),
                crate::authority::AuthError::KeysUnavailable => AdminError::KeysUnavailable,
                error => AdminError::Unauthenticated(error.to_string()),
            })?;
        line::note(|line| line.sub = Some(validated.caller.subject.clone()));
        // A revoked administrator is no administrator: a leaked admin token revoked by its `jti`
        // (or its subject, client or tenant) cannot lift its own revocation. The ledger's
        // revocations and the policy bundle's, as for callers.
        let now = Millis::from_seconds((app.clock)());
        let presented = Presented::caller_token(validated.jti.as_deref());
        let revoked = app
            .ledger
            .as_ref()
            .and_then(|ledger| ledger.revoked(&validated.caller, presented, now))
            .or_else(|| live.bundle_revocation(&validated.caller, presented, now).cloned());
        if let Some(revocation) = revoked {
            return Err(AdminError::Forbidden(revocation.message()));
        }
        // Only a token without the claim is a global administrator's: a null or empty tenant
        // (an Authority's way of writing "none" for a tenant's administrator, perhaps) is refused,
        // never read as "every tenant".
        if validated.caller.tenant.as_deref() == Some("") || has_null_tenant(&validated.caller.claims_json) {
            return Err(AdminError::Forbidden(
                "the token's stellaops:tenant is null or empty: an administrator's token names its \
                 tenant, or has no stellaops:tenant claim at all (a global administrator)"
                    .into(),
            ));
        }
        Ok(Admin {
            caller: validated.caller.clone(),
            jti: validated.jti.clone(),
            issuer: live.config.authority.issuer.clone(),
        })
    }
}

/// Whether the claims (as validated, so one JSON object) hold `"stellaops:tenant": null`.
fn has_null_tenant(claims_json: &str) -> bool {
    serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(claims_json)
        .map_or(true, |claims| claims.get("stellaops:tenant").is_some_and(serde_json::Value::is_null))
}

/// The query's parameters, each given at most once, under either spelling (`licence`, `license`):
/// a repeated filter is refused, not half-applied.
fn once_each(params: &Params) -> Result<Vec<(&str, &str)>, AdminError> {
    let filter = |name: &str| if name == "license" { "licence" } else { name }.to_owned();
    let mut seen: Vec<(&str, &str)> = Vec::new();
    for (name, value) in params.iter() {
        if let Some((before, _)) = seen.iter().find(|(before, _)| filter(before) == filter(name)) {
            let spelled = if *before == name { String::new() } else { format!(" (as {before} and {name})") };
            return Err(AdminError::BadRequest(format!("{} is given more than once{spelled}", filter(name))));
        }
        seen.push((name, value));
    }
    Ok(seen)
}

fn ledger(app: &AppState) -> Result<&Ledger, AdminError> {
    app.ledger.as_ref().ok_or(AdminError::LedgerOff)
}

/// A value that names something (a subject, licence, tenant, client, jti, or a filter of one):
/// letters, digits and `. _ : @ / + = | - ~`, at most 256 bytes. Quotes, spaces, NULs and the
/// like are refused, so a value is always safe to show and to compare.
pub(crate) fn identifier(name: &str, value: &str) -> Result<String, AdminError> {
    if value.is_empty() {
        return Err(AdminError::BadRequest(format!("{name} is empty")));
    }
    if value.len() > MAX_VALUE {
        return Err(AdminError::BadRequest(format!("{name} is longer than {MAX_VALUE} bytes")));
    }
    if let Some(bad) = value.chars().find(|c| !(c.is_alphanumeric() || "._:@/+=|-~".contains(*c))) {
        return Err(AdminError::BadRequest(format!(
            "{name} contains {bad:?}; allowed are letters, digits and . _ : @ / + = | - ~"
        )));
    }
    Ok(value.to_owned())
}

/// `GET /admin/v1/events?sub=&licence=&tenant=&outcome=&jti=&since=&until=&limit=&cursor=`
pub(super) async fn list_events(
    State(app): State<AppState>,
    admin: Admin,
    uri: Uri,
) -> Result<Response, AdminError> {
    let ledger = ledger(&app)?;
    let params = Params::parse(uri.query().unwrap_or("").as_bytes())
        .map_err(|error| AdminError::BadRequest(error.to_string()))?;
    let mut filter = EventFilter { limit: DEFAULT_PAGE, ..EventFilter::default() };
    let mut cursor = None;
    for (name, value) in once_each(&params)? {
        match name {
            "sub" => filter.sub = Some(identifier(name, value)?),
            "licence" | "license" => filter.licence = Some(identifier(name, value)?),
            "tenant" => filter.tenant = Some(identifier(name, value)?),
            "jti" => filter.jti = Some(identifier(name, value)?),
            "outcome" => {
                filter.outcome = Some(Outcome::parse(value).map_err(AdminError::BadRequest)?);
            }
            "since" => {
                filter.since =
                    Some(Millis::parse(value).map_err(|e| AdminError::BadRequest(format!("since: {e}")))?)
            }
            "until" => {
                filter.until =
                    Some(Millis::parse(value).map_err(|e| AdminError::BadRequest(format!("until: {e}")))?)
            }
            "limit" => filter.limit = page_limit(value)?,
            "cursor" => cursor = Some(value.to_owned()),
            other => {
                return Err(AdminError::BadRequest(format!(
                    "unknown parameter {:?}; filters are sub, licence, tenant, outcome, jti, since, until, limit, cursor",
                    crate::authority::shorten(other)
                )));
            }
        }
    }
    check_window(filter.since, filter.until).map_err(AdminError::BadRequest)?;
    own_tenant(&admin, &mut filter.tenant, "events")?;
    if let Some(cursor) = cursor {
        filter.before_id = Some(resolve_cursor(ledger, &admin, &cursor).await?);
    }
    let limit = filter.limit;
    filter.limit = limit + 1;
    let mut events = ledger.events(&filter).await?;
    let next_cursor = next_cursor(&mut events, limit, |event| &event.id);
    Ok(Json(json!({ "events": events, "next_cursor": next_cursor })).into_response())
}

/// Of a page read with one row more than `limit`: that row dropped, and the cursor to the page
/// after (the id of the page's last row), or `None` when there is no row after.
fn next_cursor<T>(rows: &mut Vec<T>, limit: usize, id: impl Fn(&T) -> &str) -> Option<String> {
    if rows.len() <= limit {
        return None;
    }
    rows.truncate(limit);
    rows.last().map(|row| BASE64URL_NOPAD.encode(id(row).as_bytes()))
}

/// A tenant administrator reads its own tenant only: an asked-for tenant must be its own, and
/// none asked for means its own.
fn own_tenant(admin: &Admin, asked: &mut Option<String>, what: &str) -> Result<(), AdminError> {
    let Some(own) = admin.tenant() else { return Ok(()) };
    match asked {
        Some(asked) if asked != own => Err(AdminError::Forbidden(format!(
            "this administrator acts for tenant {own} and cannot read tenant {asked}'s {what}"
        ))),
        _ => {
            *asked = Some(own.to_owned());
            Ok(())
        }
    }
}

fn page_limit(value: &str) -> Result<usize, AdminError> {
    value
        .parse::<usize>()
        .ok()
        .filter(|limit| (1..=MAX_PAGE).contains(limit))
        .ok_or_else(|| AdminError::BadRequest(format!("limit must be between 1 and {MAX_PAGE}")))
}

/// A cursor is the id of the last event of the page before, as this API issued it: it must
/// decode to an event this administrator may see.
async fn resolve_cursor(ledger: &Ledger, admin: &Admin, cursor: &str) -> Result<String, AdminError> {
    let id = cursor_id(cursor)?;
    match ledger.event(&id).await? {
        Some(event) if admin.may_see(event.tenant.as_deref()) => Ok(id),
        _ => Err(cursor_not_issued()),
    }
}

/// The id a cursor holds (which the caller still checks names a row the administrator may see).
fn cursor_id(cursor: &str) -> Result<String, AdminError> {
    BASE64URL_NOPAD
        .decode(cursor.as_bytes())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .filter(|id| uuid::Uuid::try_parse(id).is_ok())
        .ok_or_else(cursor_not_issued)
}

fn cursor_not_issued() -> AdminError {
    AdminError::BadRequest("the cursor was not issued by this API; use next_cursor as given".into())
}

/// `GET /admin/v1/events/{id}`: 404 also for another tenant's event (its existence is not told).
pub(super) async fn get_event(
    State(app): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> Result<Response, AdminError> {
    let ledger = ledger(&app)?;
    if uuid::Uuid::try_parse(&id).is_err() {
        return Err(AdminError::BadRequest("an event id is a UUID".into()));
    }
    match ledger.event(&id).await? {
        Some(event) if admin.may_see(event.tenant.as_deref()) => Ok(Json(event).into_response()),
        _ => Err(AdminError::NotFound(format!("no event {id}"))),
    }
}

/// `GET /admin/v1/revocations`: those this administrator may see, the ledger's oldest first, then
/// the policy bundle's (enforced the same way); each says which (`source`: `ledger` or `bundle`).
pub(super) async fn list_revocations(
    State(app): State<AppState>,
    admin: Admin,
) -> Result<Response, AdminError> {
    /// A revocation as listed: its fields and where it is kept.
    #[derive(serde::Serialize)]
    struct Listed<'a> {
        #[serde(flatten)]
        revocation: &'a Revocation,
        source: &'static str,
    }
    let ledger = ledger(&app)?;
    let live = app.live();
    let carried = live.bundle.as_ref().map(|b| b.bundle.revocations()).unwrap_or_default();
    let kept = ledger.revocations().await?;
    let revocations: Vec<Listed<'_>> = kept
        .iter()
        .map(|revocation| Listed { revocation, source: "ledger" })
        .chain(carried.iter().map(|revocation| Listed { revocation, source: "bundle" }))
        .filter(|listed| admin.may_see(listed.revocation.tenant.as_deref()))
        .collect();
    Ok(Json(json!({ "revocations": revocations })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRevocation {
    kind: String,
    value: String,
    reason: String,
    /// RFC 3339 text, or Unix seconds as a number or as text.
    #[serde(default)]
    expires_at: Option<serde_json::Value>,
    /// For a global administrator: confine the revocation to this tenant's callers.
    #[serde(default)]
    tenant: Option<String>,
}

/// What a revocation request asks, checked. Shared with `registry-token ledger revoke`.
#[derive(Debug)]
pub struct RevocationRequest {
    /// What it names.
    pub kind: RevocationKind,
    /// The value.
    pub value: String,
    /// Why.
    pub reason: String,
    /// Until when.
    pub expires_at: Option<Millis>,
    /// Confined to this tenant's callers.
    pub tenant: Option<String>,
}

impl RevocationRequest {
    /// Checks each field; the message says which is wrong.
    pub fn new(
        kind: &str,
        value: &str,
        reason: &str,
        expires_at: Option<&str>,
        tenant: Option<&str>,
        now: Millis,
    ) -> Result<RevocationRequest, String> {
        let bad = |error: AdminError| error.to_string();
        let kind = RevocationKind::from_name(kind).ok_or_else(|| {
            let known: Vec<&str> = RevocationKind::ALL.iter().map(|k| k.as_str()).collect();
            format!("kind {:?} is not one of {}", crate::authority::shorten(kind), known.join(", "))
        })?;
        let value = identifier("value", value).map_err(bad)?;
        let tenant = tenant.map(|t| identifier("tenant", t)).transpose().map_err(bad)?;
        if kind == RevocationKind::Tenant
            && let Some(tenant) = tenant.as_deref().filter(|tenant| *tenant != value)
        {
            // It could never apply: a tenant revocation is of the tenant its value names.
            return Err(format!(
                "a tenant revocation of {value:?} cannot be scoped to tenant {tenant:?}: leave tenant out"
            ));
        }
        if reason.trim().is_empty() {
            return Err("reason is empty: say why (it is shown to the refused caller)".into());
        }
        if reason.chars().count() > MAX_REASON {
            return Err(format!("reason is longer than {MAX_REASON} characters"));
        }
        if reason.chars().any(char::is_control) {
            return Err("reason contains control characters (a NUL, a newline, ...)".into());
        }
        let expires_at = match expires_at {
            None => None,
            Some(text) => {
                let at = Millis::parse(text).map_err(|e| format!("expires_at: {e}"))?;
                if at <= now {
                    return Err(format!("expires_at {at} is not in the future"));
                }
                Some(at)
            }
        };
        Ok(RevocationRequest { kind, value, reason: reason.to_owned(), expires_at, tenant })
    }

    /// The revocation, made now by `created_by`.
    pub fn into_revocation(
        self,
        created_by: &str,
        created_by_tenant: Option<&str>,
        now: Millis,
    ) -> Revocation {
        Revocation {
            id: uuid::Uuid::now_v7().to_string(),
            kind: self.kind,
            value: self.value,
            tenant: self.tenant,
            reason: self.reason,
            created_at: now,
            expires_at: self.expires_at,
            created_by: created_by.to_owned(),
            created_by_tenant: created_by_tenant.map(str::to_owned),
        }
    }
}

/// `POST /admin/v1/revocations` with `{"kind", "value", "reason", "expires_at"?, "tenant"?}`: 201
/// and the revocation, in force on this replica before the answer is sent.
pub(super) async fn create_revocation(
    State(app): State<AppState>,
    admin: Admin,
    ClientAddr(client_addr): ClientAddr,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, AdminError> {
    let ledger = ledger(&app)?;
    // Over the listener's limit (http.max_body_bytes) or unreadable: a 400 like any bad body.
    let body = body.map_err(|rejection| {
        AdminError::BadRequest(format!("the body cannot be read: {}", rejection.body_text()))
    })?;
    if body.len() > MAX_ADMIN_BODY {
        return Err(AdminError::BadRequest(format!("the body is larger than {MAX_ADMIN_BODY} bytes")));
    }
    let asked: NewRevocation = serde_json::from_slice(&body)
        .map_err(|e| AdminError::BadRequest(format!("the body is not a revocation as JSON: {e}")))?;
    // A tenant administrator reaching outside its tenant is refused first, however else the
    // request is malformed.
    if let Some(own) = admin.tenant() {
        if asked.tenant.as_deref().is_some_and(|t| t != own) {
            return Err(AdminError::Forbidden(format!(
                "this administrator acts for tenant {own} and cannot revoke in another tenant"
            )));
        }
        if asked.kind == RevocationKind::Tenant.as_str() && asked.value != own {
            return Err(AdminError::Forbidden(format!(
                "this administrator acts for tenant {own} and can revoke no other tenant"
            )));
        }
    }
    let now = Millis::now();
    let expires_at = match &asked.expires_at {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(text)) => Some(text.clone()),
        Some(serde_json::Value::Number(seconds)) if seconds.is_i64() => Some(seconds.to_string()),
        Some(_) => {
            return Err(AdminError::BadRequest(
                "expires_at is RFC 3339 text (2026-12-31T00:00:00Z) or Unix seconds".into(),
            ));
        }
    };
    let mut request = RevocationRequest::new(
        &asked.kind,
        &asked.value,
        &asked.reason,
        expires_at.as_deref(),
        asked.tenant.as_deref(),
        now,
    )
    .map_err(AdminError::BadRequest)?;
    if let Some(own) = admin.tenant() {
        // Whatever it names, it applies to this tenant's callers only.
        request.tenant = Some(own.to_owned());
    }
    if request.kind == RevocationKind::RefreshToken {
        // A refresh token this administrator may see (another tenant's is not found, as with
        // DELETE /admin/v1/refresh-tokens/ID), and one the revocation's tenant can apply to: a
        // revocation that could never apply would read as done while the token keeps working.
        let token = ledger
            .refresh_token(&request.value)
            .await?
            .filter(|token| admin.may_see(token.tenant.as_deref()))
            .ok_or_else(|| AdminError::NotFound(format!("no refresh token {}", request.value)))?;
        if let Some(beyond) = token.beyond(request.tenant.as_deref()) {
            return Err(AdminError::BadRequest(beyond));
        }
    }
    let revocation = request.into_revocation(&admin.caller.subject, admin.tenant(), now);
    let audit = admin.audit(Outcome::RevocationCreated, &revocation, client_addr);
    ledger.revoke(&revocation, audit).await?;
    tracing::info!(
        id = revocation.id,
        kind = revocation.kind.as_str(),
        value = revocation.value,
        tenant = revocation.tenant,
        by = admin.caller.subject,
        "revoked"
    );
    Ok((StatusCode::CREATED, Json(revocation)).into_response())
}

/// `DELETE /admin/v1/revocations/{id}`: 204 once lifted.
pub(super) async fn delete_revocation(
    State(app): State<AppState>,
    admin: Admin,
    ClientAddr(client_addr): ClientAddr,
    Path(id): Path<String>,
) -> Result<Response, AdminError> {
    let ledger = ledger(&app)?;
    if uuid::Uuid::try_parse(&id).is_err() {
        return Err(AdminError::BadRequest("a revocation id is a UUID".into()));
    }
    // Lifting the ledger's copy of what the bundle carries would answer 204 and change nothing.
    let live = app.live();
    if let Some(live_bundle) = &live.bundle
        && let Some(carried) = live_bundle.bundle.revocations().iter().find(|r| r.id == id)
        && admin.may_see(carried.tenant.as_deref())
    {
        return Err(AdminError::Conflict(format!(
            "revocation {id} is carried by the policy bundle (revision {} from {}): it is lifted by a \
             revision built without it",
            live_bundle.bundle.manifest().revision,
            live_bundle.source
        )));
    }
    let Some(revocation) = ledger.revocations().await?.into_iter().find(|r| r.id == id) else {
        return Err(AdminError::NotFound(format!("no revocation {id}")));
    };
    // A tenant administrator lifts only what its own tenant's administrators made: a global
    // administrator's revocation aimed at its tenant is not its to undo.
    if let Some(own) = admin.tenant()
        && revocation.created_by_tenant.as_deref() != Some(own)
    {
        return Err(AdminError::Forbidden(format!(
            "revocation {id} was not made by an administrator of tenant {own}; it is not its to lift"
        )));
    }
    let audit = admin.audit(Outcome::RevocationLifted, &revocation, client_addr);
    if !ledger.unrevoke(&id, audit).await? {
        return Err(AdminError::NotFound(format!("no revocation {id}")));
    }
    tracing::info!(id, by = admin.caller.subject, "revocation lifted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /admin/v1/refresh-tokens?sub=&tenant=&limit=&cursor=`: newest first, a page at a time
/// like the events, never a token's text.
pub(super) async fn list_refresh_tokens(
    State(app): State<AppState>,
    admin: Admin,
    uri: Uri,
) -> Result<Response, AdminError> {
    let ledger = ledger(&app)?;
    let params = Params::parse(uri.query().unwrap_or("").as_bytes())
        .map_err(|error| AdminError::BadRequest(error.to_string()))?;
    let mut filter = RefreshTokenFilter { limit: DEFAULT_PAGE, ..RefreshTokenFilter::default() };
    let mut cursor = None;
    for (name, value) in once_each(&params)? {
        match name {
            "sub" => filter.sub = Some(identifier(name, value)?),
            "tenant" => filter.tenant = Some(identifier(name, value)?),
            "limit" => filter.limit = page_limit(value)?,
            "cursor" => cursor = Some(value.to_owned()),
            other => {
                return Err(AdminError::BadRequest(format!(
                    "unknown parameter {:?}; filters are sub, tenant, limit, cursor",
                    crate::authority::shorten(other)
                )));
            }
        }
    }
    own_tenant(&admin, &mut filter.tenant, "refresh tokens")?;
    if let Some(cursor) = cursor {
        let id = cursor_id(&cursor)?;
        match ledger.refresh_token(&id).await? {
            Some(token) if admin.may_see(token.tenant.as_deref()) => filter.before_id = Some(id),
            _ => return Err(cursor_not_issued()),
        }
    }
    let limit = filter.limit;
    filter.limit = limit + 1;
    let mut tokens = ledger.refresh_tokens(&filter).await?;
    let next_cursor = next_cursor(&mut tokens, limit, |token| &token.id);
    let now = Millis::from_seconds((app.clock)());
    let views: Vec<serde_json::Value> = tokens.iter().map(|t| ledger.refresh_token_view(t, now)).collect();
    Ok(Json(json!({ "refresh_tokens": views, "next_cursor": next_cursor })).into_response())
}

/// `DELETE /admin/v1/refresh-tokens/{id}[?reason=]`: 204 once revoked (a `refresh_token`
/// revocation, in force on every replica within a second); 404 for a token this administrator
/// may not see.
pub(super) async fn delete_refresh_token(
    State(app): State<AppState>,
    admin: Admin,
    ClientAddr(client_addr): ClientAddr,
    Path(id): Path<String>,
    uri: Uri,
) -> Result<Response, AdminError> {
    let ledger = ledger(&app)?;
    if uuid::Uuid::try_parse(&id).is_err() {
        return Err(AdminError::BadRequest("a refresh token id is a UUID".into()));
    }
    let params = Params::parse(uri.query().unwrap_or("").as_bytes())
        .map_err(|error| AdminError::BadRequest(error.to_string()))?;
    let mut reason = "revoked through the admin API";
    for (name, value) in once_each(&params)? {
        match name {
            "reason" => reason = value,
            other => {
                return Err(AdminError::BadRequest(format!(
                    "unknown parameter {:?}; the only one is reason",
                    crate::authority::shorten(other)
                )));
            }
        }
    }
    let now = Millis::now();
    // Checked before anything is looked up: a bad reason is a 400 whether or not it is needed.
    let mut request = RevocationRequest::new("refresh_token", &id, reason, None, None, now)
        .map_err(AdminError::BadRequest)?;
    let Some(token) = ledger.refresh_token(&id).await?.filter(|t| admin.may_see(t.tenant.as_deref())) else {
        return Err(AdminError::NotFound(format!("no refresh token {id}")));
    };
    // Already stopped for good: a refresh_token revocation in force (the request path's own test;
    // one confined to another tenant does not stop it) that does not lapse and that no
    // administrator with less reach than this one may lift (a tenant administrator may lift its
    // tenant's own). Anything less, and this administrator's revocation is written.
    let presented = Presented { caller_jti: None, refresh_token: Some(token.id.as_str()) };
    let already = ledger.revocations().await?.into_iter().any(|r| {
        r.kind == RevocationKind::RefreshToken
            && r.applies_to(&token.caller, presented, now)
            && r.expires_at.is_none()
            && (r.created_by_tenant.is_none() || r.created_by_tenant.as_deref() == admin.tenant())
    });
    if !already {
        // The administrator's own tenant, as its token says (not an input to check).
        request.tenant = admin.tenant().map(str::to_owned);
        let revocation = request.into_revocation(&admin.caller.subject, admin.tenant(), now);
        let audit = admin.audit(Outcome::RevocationCreated, &revocation, client_addr);
        ledger.revoke(&revocation, audit).await?;
        tracing::info!(id, sub = token.sub, by = admin.caller.subject, "refresh token revoked");
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /metrics`: the Prometheus exposition (with `admin.metrics_require_auth`, for
/// administrators only; with `admin.metrics: false`, 404).
pub(super) async fn scrape(
    State(app): State<AppState>,
    request: axum::extract::Request,
) -> Result<Response, AdminError> {
    let live = app.live();
    if !crate::metrics::metrics().enabled() {
        return Err(AdminError::NotFound("metrics are off (admin.metrics: false)".into()));
    }
    if live.config.admin.metrics_require_auth {
        let (mut parts, _) = request.into_parts();
        Admin::from_request_parts(&mut parts, &app).await?;
    }
    let keys = live.keys.summary((app.clock)());
    let snapshot = crate::metrics::Snapshot {
        ledger_queue: app.ledger.as_ref().map_or(0, |ledger| ledger.health().queued),
        revocations: revocations_in_force(&app, &live, Millis::now()),
        signing_keys: &keys,
        policy: Some((live.policy.digest(), live.policy.settings_version())),
        bundle_revision: live.bundle.as_ref().map(|bundle| bundle.bundle.manifest().revision),
    };
    let body = crate::metrics::metrics().render(&snapshot);
    Ok(([(axum::http::header::CONTENT_TYPE, crate::metrics::Metrics::CONTENT_TYPE)], body).into_response())
}

/// The revocations this replica enforces, by kind: the ledger's and the policy bundle's (an
/// offline site may have only the latter).
fn revocations_in_force(
    app: &crate::app::App,
    live: &crate::app::Live,
    now: Millis,
) -> Vec<(&'static str, usize)> {
    let ledger = app.ledger.as_ref().map(|ledger| ledger.active_revocations(now));
    let bundle = live.bundle.as_ref().map(|bundle| bundle.revocations.active_by_kind(now));
    match (ledger, bundle) {
        (Some(ledger), Some(bundle)) => ledger
            .into_iter()
            .zip(bundle)
            .map(|((kind, from_ledger), (_, from_bundle))| (kind, from_ledger + from_bundle))
            .collect(),
        (one, other) => one.or(other).unwrap_or_default(),
    }
}
