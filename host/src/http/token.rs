//! `GET /token` (the Docker token exchange) and `POST /token` (its OAuth2 form): validate the
//! caller, let the policy decide, mint. What the request's log line says is noted with `line::note`.

use super::AppState;
use super::error::{ApiError, OAuth};
use super::extract::{ClientAddr, Credential, Form, Params, Query, credential_of};
use super::line;
use crate::access::{Resource, scope_string};
use crate::app::Live;
use crate::authority::{self, AuthError, Validated};
use crate::config::Durability;
use crate::ledger::refresh::{self, Binding, Lifetime};
use crate::ledger::{
    Change, Committing, Event, IssuedToken, Ledger, LifetimeRecord, Millis, Outcome, Presented, RefreshError,
    RefreshToken, Unavailable,
};
use crate::metrics::CacheName;
use crate::metrics::metrics;
use crate::mint::{Decided, Grant, LifetimeDecision, Lookup, Minted, Reusable, ReuseKey, SignError, Slot};
use crate::policy::Decision;
use crate::scope;
use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, PRAGMA};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;
use zeroize::Zeroizing;

#[derive(Serialize)]
struct GetResponse<'a> {
    token: &'a str,
    access_token: &'a str,
    expires_in: u64,
    issued_at: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<&'a str>,
}

#[derive(Serialize)]
struct PostResponse<'a> {
    access_token: &'a str,
    scope: String,
    expires_in: u64,
    issued_at: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<&'a str>,
}

/// What both forms ask: a token for `service` granting (some of) `requested`, from the client
/// named `client_id` (a refresh token is bound to it).
struct Exchange {
    service: String,
    requested: Vec<Resource>,
    client_id: Option<String>,
}

/// Longest `client_id` accepted (Docker sends `docker`, containerd `containerd-client`).
const MAX_CLIENT_ID_BYTES: usize = 256;

impl Exchange {
    /// Checks `service` against the configuration and parses the `scope` values.
    fn new(live: &Live, params: &Params) -> Result<Exchange, ApiError> {
        let service = match params.first("service") {
            None | Some("") => return Err(ApiError::BadRequest("service is required".into())),
            Some(service) if live.config.services.iter().any(|s| s == service) => service.to_owned(),
            Some(service) => {
                return Err(ApiError::BadRequest(format!(
                    "service {:?} is not one this token service issues for",
                    authority::shorten(service)
                )));
            }
        };
        let requested = scope::parse_scopes(params.all("scope"))?;
        // Stored with a refresh token and quoted in its errors: RFC 6749's characters only (a NUL
        // would fail a PostgreSQL ledger's whole batch of events).
        let client_id = params.first("client_id");
        if let Some(client_id) = client_id
            && (client_id.len() > MAX_CLIENT_ID_BYTES
                || !client_id.bytes().all(|b| (0x20..=0x7e).contains(&b)))
        {
            return Err(ApiError::BadRequest(format!(
                "client_id must be printable ASCII of at most {MAX_CLIENT_ID_BYTES} bytes"
            )));
        }
        line::note(|line| line.service = Some(service.clone()));
        Ok(Exchange { service, requested, client_id: client_id.map(str::to_owned) })
    }
}

/// What a caller asks of the token endpoint, whichever form it uses.
struct Ask<'a> {
    params: &'a Params,
    /// The Authority token, or one of our refresh tokens.
    credential: &'a str,
    /// Whether the answer should carry a refresh token: a new one for an Authority token (when
    /// refresh tokens are on), the same one for a refresh token (never rotated).
    offline: bool,
    /// The request carries another credential beside this one (refused, and recorded).
    conflicting: bool,
}

/// A successful exchange.
struct Issued {
    minted: Minted,
    granted: Vec<Resource>,
    /// The refresh token to hand back, if any.
    refresh_token: Option<Zeroizing<String>>,
}

/// `GET /token?service=..&scope=..[&scope=..][&offline_token=true&client_id=..]` with the Authority
/// token (or a refresh token) as a Bearer token or as the Basic password.
pub(super) async fn get_token(
    State(app): State<AppState>,
    ClientAddr(client_addr): ClientAddr,
    Query(params): Query,
    Credential(credential): Credential,
) -> Result<Response, ApiError> {
    let offline = params.first("offline_token").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let issued = exchange_to_the_end(&app, params, credential, offline, false, client_addr).await?;
    let body = get_response_body(&issued.minted, issued.refresh_token.as_deref().map(String::as_str));
    Ok(no_store(([(CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()))
}

/// The JSON body of a successful `GET /token`. Public for the benchmark of the hot path.
#[doc(hidden)]
pub fn get_response_body(minted: &Minted, refresh_token: Option<&str>) -> Vec<u8> {
    let body = GetResponse {
        token: &minted.token,
        access_token: &minted.token,
        expires_in: minted.expires_in,
        issued_at: &minted.issued_at,
        refresh_token,
    };
    // Strings and integers only: serializing into memory has no way to fail.
    #[allow(clippy::expect_used)]
    serde_json::to_vec(&body).expect("a struct of strings and integers serializes")
}

/// `POST /token`, form-encoded: `grant_type=refresh_token` (a refresh token of ours, or an
/// Authority token as clients that stored one before refresh tokens existed send it) or
/// `grant_type=password` (the Authority token, or a refresh token, as `password`).
pub(super) async fn post_token(
    State(app): State<AppState>,
    ClientAddr(client_addr): ClientAddr,
    headers: HeaderMap,
    Form(params): Form,
) -> Result<Response, OAuth> {
    let (credential, offline) = match params.first("grant_type") {
        None => return Err(ApiError::BadRequest("grant_type is required".into()).into()),
        // Only our own refresh token comes back: an Authority token is never handed out as one.
        Some("refresh_token") => {
            let token = params.required("refresh_token")?;
            (token, refresh::is_refresh_token(token))
        }
        Some("password") => (params.required("password")?, params.first("access_type") == Some("offline")),
        Some(other) => return Err(ApiError::UnsupportedGrant(other.to_owned()).into()),
    };
    // A client sends its credential once; a different one beside it (a Basic password that is
    // another caller's token) is not a second chance to be believed.
    let conflicting = credential_of(&headers)?.is_some_and(|header| header != credential);
    let credential = credential.to_owned();
    let issued = exchange_to_the_end(&app, params, credential, offline, conflicting, client_addr).await?;
    let body = PostResponse {
        access_token: &issued.minted.token,
        scope: scope_string(&issued.granted),
        expires_in: issued.minted.expires_in,
        issued_at: &issued.minted.issued_at,
        refresh_token: issued.refresh_token.as_deref().map(String::as_str),
    };
    Ok(no_store(axum::Json(body).into_response()))
}

/// [`exchange`] in a task of its own, which runs to its end even when the client hangs up: hyper
/// then drops the handler, and the exchange's event (queued once its outcome is known) would go
/// with it. The service's stop waits for these tasks (`App::exchanges`).
async fn exchange_to_the_end(
    app: &AppState,
    params: Params,
    credential: String,
    offline: bool,
    conflicting: bool,
    client_addr: Option<String>,
) -> Result<Issued, ApiError> {
    let shared = Arc::clone(app);
    let exchanged = line::detached(&app.exchanges, async move {
        let live = shared.live();
        let ask = Ask { params: &params, credential: &credential, offline, conflicting };
        exchange(&shared, &live, ask, client_addr).await
    });
    exchanged.await.unwrap_or_else(|error| {
        tracing::error!(%error, "an exchange's task was cancelled (the service is stopping)");
        Err(ApiError::Signing)
    })
}

/// Both forms, once the credential is read: authenticate, decide, mint — and record the exchange
/// in the ledger, one event whatever the outcome. With strict durability an issued token is
/// returned only once its event is committed; if it cannot be, the token is dropped and the answer
/// is 503. A new refresh token is always committed before it is handed out.
async fn exchange(
    app: &AppState,
    live: &Live,
    ask: Ask<'_>,
    client_addr: Option<String>,
) -> Result<Issued, ApiError> {
    let Some(ledger) = &app.ledger else {
        let exchange = Exchange::new(live, ask.params)?;
        let (issued, offer) = issue(app, live, &ask, &exchange, None).await?;
        if let Some((slot, reusable)) = offer {
            slot.fill(reusable);
        }
        count_issued(live, &exchange.service, &ask);
        return Ok(issued);
    };
    // With strict durability an issued token waits for its event's commit: when nothing else is
    // to be written with it (no new refresh token), the event is sent before the token is signed
    // and committed while it is (the signature is most of a token's CPU, the commit most of its
    // wait).
    let new_refresh_token = ask.offline && !refresh::is_refresh_token(ask.credential);
    let pipeline = ledger.durability() == Durability::Strict && !new_refresh_token;
    let mut record =
        Recorded { event: Event::new(Outcome::Issued), change: None, pipeline, committing: None };
    record.event.client_addr = client_addr;
    line::note(|line| line.event = Some(record.event.id.clone()));
    let result = match Exchange::new(live, ask.params) {
        Ok(exchange) => {
            record.event.service = Some(exchange.service.clone());
            record.event.requested = exchange.requested.iter().map(Resource::to_string).collect();
            issue(app, live, &ask, &exchange, Some(&mut record)).await
        }
        Err(error) => Err(error),
    };
    let committed = match (record.committing.take(), &result) {
        (Some(committing), Ok(_)) => {
            let committed = committing.wait().await;
            note_if_not_returned(ledger, &record.event, &committed);
            committed
        }
        (Some(committing), Err(error)) => {
            // Recorded as issued, then not returned (its signature failed): the record says so.
            ledger.record(not_returned(&record.event, error, error));
            let _ = committing.wait().await;
            return result.map(|(issued, _)| issued);
        }
        (None, Ok((issued, _))) => {
            let minted = &issued.minted;
            note_issued(
                &mut record.event,
                live,
                &issued.granted,
                &minted.jti,
                minted.expires_at,
                minted.lifetime,
            );
            match ledger.durability() {
                Durability::Relaxed if !new_refresh_token => {
                    ledger.keep_with(record.event, record.change).await
                }
                // A reused token's `issued` event was committed before it was first returned:
                // the repeat is queued (never dropped: refused while the ledger cannot take it),
                // as a denial is, and does not wait for a commit of its own.
                Durability::Strict if record.event.reused && !new_refresh_token => {
                    ledger.keep_queued(record.event, record.change).map_err(|(unavailable, event)| {
                        note_if_not_returned(ledger, &event, &Err(unavailable.clone()));
                        unavailable
                    })
                }
                // Waits for its commit: a strict token, and a new refresh token in either
                // durability (handed out only once the ledger can recognise it).
                Durability::Strict | Durability::Relaxed => {
                    let committed = ledger.keep_with(record.event.clone(), record.change).await;
                    note_if_not_returned(ledger, &record.event, &committed);
                    committed
                }
            }
        }
        (None, Err(error)) => {
            describe_failure(&mut record.event, error);
            ledger.keep_with(record.event, record.change).await
        }
    };
    if let Err(unavailable) = committed {
        // A new token's slot goes unfilled: the next identical request mints its own. Why goes on
        // the request's own line: through an outage, a line of its own per refused request
        // doubled the log (the ledger logs its failure once, when it starts).
        line::note(|line| {
            line.refused = Some(format!("no token: its ledger event could not be committed ({unavailable})"));
        });
        return Err(ApiError::LedgerUnavailable);
    }
    let (issued, offer) = result?;
    // Recorded: identical requests may have it now.
    if let Some((slot, reusable)) = offer {
        slot.fill(reusable);
    }
    // `Exchange::new` checked it: one of the configured services.
    count_issued(live, ask.params.first("service").unwrap_or_default(), &ask);
    Ok(issued)
}

/// A new token's reuse slot and what to fill it with, once the exchange is complete.
type Offer<'l> = (Slot<'l>, Reusable);

/// The ledger's record of one exchange: its event, and the refresh token it issued or used.
struct Recorded {
    event: Event,
    change: Option<Change>,
    /// Whether an issued event may go to the ledger before its token is signed.
    pipeline: bool,
    /// The issued event, sent before the signature, on its way to a commit.
    committing: Option<Committing>,
}

/// What an `issued` event says of its token: what it grants, its `jti`, `exp` and signing `kid`,
/// and the lifetime a policy asked for.
fn note_issued(
    event: &mut Event,
    live: &Live,
    granted: &[Resource],
    jti: &str,
    expires_at: u64,
    lifetime: Option<LifetimeDecision>,
) {
    event.granted = granted.iter().map(Resource::to_string).collect();
    event.token = Some(IssuedToken {
        jti: jti.to_owned(),
        exp: i64::try_from(expires_at).unwrap_or(i64::MAX),
        kid: live.keys.minter().kid().to_owned(),
    });
    event.lifetime = lifetime.map(|lifetime| LifetimeRecord {
        requested: lifetime.requested,
        granted: lifetime.granted,
        limited_by: lifetime.limited_by.map(|limit| limit.as_str().to_owned()),
    });
}

/// A token is counted once it is returned (after its ledger commit): never one the caller did
/// not get.
fn count_issued(live: &Live, service: &str, ask: &Ask<'_>) {
    let via = if refresh::is_refresh_token(ask.credential) { "refresh_token" } else { "credential" };
    metrics().issued(service, live.keys.minter().signer().algorithm().name(), via);
}

/// A commit of `issued` waited for (strict, or with a new refresh token) that failed: a `fault`
/// event says its token was not returned. It is the exchange's only record when the ledger
/// refused `issued` (an outage: it is kept, like a denial, until the ledger can be written), and
/// follows it when a commit that timed out lands after all.
fn note_if_not_returned(ledger: &Ledger, issued: &Event, committed: &Result<(), Unavailable>) {
    if let Err(unavailable) = committed {
        ledger.record(not_returned(issued, &ApiError::LedgerUnavailable, unavailable));
    }
}

/// The `fault` event of a token whose `issued` event went to the ledger but which was not
/// returned: its signature failed, or its commit did not come in time (and may yet land).
fn not_returned(issued: &Event, error: &ApiError, why: &dyn std::fmt::Display) -> Event {
    let mut fault = issued.clone();
    fault.id = Event::new(Outcome::Fault).id;
    fault.token = None;
    fault.reused = false;
    describe_failure(&mut fault, error);
    fault.message = Some(format!("{why}; the token event {} records was not returned", issued.id));
    fault
}

/// The outcome and reason of a failed exchange, for its event.
fn describe_failure(event: &mut Event, error: &ApiError) {
    let (outcome, reason) = match error {
        ApiError::Auth(error) => (Outcome::Refused, error.kind().to_owned()),
        ApiError::Refresh(error) => (Outcome::Refused, error.kind().to_owned()),
        ApiError::Denied { reason, .. } => (Outcome::Denied, reason.clone()),
        ApiError::KeysUnavailable => (Outcome::Fault, "keys_unavailable".to_owned()),
        ApiError::Policy(fault) => (Outcome::Fault, fault.kind().to_owned()),
        ApiError::Signing => (Outcome::Fault, "signing".to_owned()),
        ApiError::SignerUnavailable => (Outcome::Fault, "signer_unavailable".to_owned()),
        ApiError::LedgerUnavailable => (Outcome::Fault, "ledger".to_owned()),
        ApiError::Credential(_) => (Outcome::Refused, "credential".to_owned()),
        _ => (Outcome::Refused, "bad_request".to_owned()),
    };
    event.outcome = outcome;
    event.reason = Some(reason);
    event.message = Some(error.to_string());
}

/// Who the caller is, and how they proved it.
struct Authenticated {
    validated: Arc<Validated>,
    /// The refresh token they presented, if that is how.
    refresh: Option<RefreshToken>,
}

/// Validates the credential: an Authority token against the Authority's keys, or a refresh token
/// against the ledger (exists, unexpired, bound to this service and client). A refresh token
/// stands for the caller it was issued to, whose Authority token may long have expired.
async fn authenticate(
    app: &AppState,
    live: &Live,
    ask: &Ask<'_>,
    exchange: &Exchange,
    now: u64,
    record: Option<&mut Recorded>,
) -> Result<Authenticated, ApiError> {
    if ask.conflicting {
        metrics().refusal("credential");
        return Err(ApiError::Credential(
            "the request carries two different credentials (the form's and the Authorization header's)",
        ));
    }
    if !refresh::is_refresh_token(ask.credential) {
        if let Some(record) = record {
            record.event.via = Some("credential".to_owned());
        }
        let validated = live.validator.validate(ask.credential, now).await.inspect_err(|error| {
            if *error != AuthError::KeysUnavailable {
                metrics().refusal(error.kind());
            }
        })?;
        return Ok(Authenticated { validated, refresh: None });
    }
    let refused = |error: RefreshError| {
        metrics().refusal(error.kind());
        ApiError::Refresh(error)
    };
    // Refresh tokens live in the ledger: without one, none was ever issued here.
    let (Some(ledger), Some(record)) = (&app.ledger, record) else {
        return Err(refused(RefreshError::Unknown));
    };
    record.event.via = Some("refresh_token".to_owned());
    // Turned off stops those already issued too: an operator who turns them off wants no
    // login to outlive its Authority token any more.
    if !live.config.refresh_tokens_enabled() {
        return Err(refused(RefreshError::Disabled));
    }
    let token = match ledger.find_refresh_token(ask.credential).await {
        Ok(Some(token)) => token,
        Ok(None) => return Err(refused(RefreshError::Unknown)),
        Err(error) => {
            tracing::error!(%error, event = record.event.id, "cannot read refresh tokens from the ledger");
            return Err(ApiError::LedgerUnavailable);
        }
    };
    record.event.refresh_token_id = Some(token.id.clone());
    let issuer = token.caller_iss.as_deref().unwrap_or(&live.config.authority.issuer);
    record.event.set_caller(&token.caller, issuer, token.caller_jti.as_deref());
    token.check(&exchange.service, Millis::from_seconds(now)).map_err(refused)?;
    // A login stands for an Authority token that today's configuration would still accept: an
    // operator who moves to another Authority, or requires another scope, means every caller.
    let authority = &live.config.authority;
    if issuer != authority.issuer {
        return Err(refused(RefreshError::Superseded(format!(
            "its caller was validated by {issuer}, and authority.issuer is now {}",
            authority.issuer
        ))));
    }
    if !token.caller.scopes.contains(&authority.required_scope) {
        return Err(refused(RefreshError::Superseded(format!(
            "its caller's token lacks the scope {}",
            authority.required_scope
        ))));
    }
    let validated = Validated {
        caller: token.caller.clone(),
        // A registry token minted with it never outlives it.
        expires_at: u64::try_from(token.expires_at.0 / 1000).unwrap_or_default(),
        jti: token.caller_jti.clone(),
    };
    Ok(Authenticated { validated: Arc::new(validated), refresh: Some(token) })
}

/// Authenticate, check revocations, decide, mint, noting on the ledger's `record` (when there is
/// a ledger) who asked, what decided, and the refresh token issued or used. A newly minted token
/// comes with its reuse slot, to be filled once the exchange is recorded.
async fn issue<'l>(
    app: &AppState,
    live: &'l Live,
    ask: &Ask<'_>,
    exchange: &Exchange,
    mut record: Option<&mut Recorded>,
) -> Result<(Issued, Option<Offer<'l>>), ApiError> {
    let now = (app.clock)();
    let Authenticated { validated, refresh } =
        authenticate(app, live, ask, exchange, now, record.as_deref_mut()).await?;
    let caller = &validated.caller;
    line::note(|line| line.sub = Some(caller.subject.clone()));
    let at = Millis::from_seconds(now);
    if let Some(record) = record.as_deref_mut()
        && refresh.is_none()
    {
        record.event.set_caller(caller, &live.config.authority.issuer, validated.jti.as_deref());
    }
    // The host's own check, before any policy is asked: no policy can grant to a revoked caller.
    // The ledger's revocations, and the policy bundle's (an offline site's snapshot of a ledger's).
    let presented = Presented {
        caller_jti: validated.jti.as_deref(),
        refresh_token: refresh.as_ref().map(|r| r.id.as_str()),
    };
    let revoked = app
        .ledger
        .as_ref()
        .and_then(|ledger| ledger.revoked(caller, presented, at))
        .or_else(|| live.bundle_revocation(caller, presented, at).cloned());
    if let Some(revocation) = revoked {
        metrics().decision("revoked");
        // A refresh token that no longer authenticates is a 401, like an expired one.
        if refresh.is_some() {
            return Err(ApiError::Refresh(RefreshError::Revoked(revocation.message())));
        }
        return Err(ApiError::Denied {
            reason: "revoked".to_owned(),
            message: revocation.message(),
            status: live.config.http.denial_status,
        });
    }
    if let Some(record) = record.as_deref_mut() {
        record.event.policy_digest = Some(live.policy.digest().to_owned());
        record.event.settings_version = Some(live.policy.settings_version().to_owned());
        if let Some(token) = &refresh {
            // Any exchange it authenticated counts as a use, whatever the policy answers.
            record.change = Some(Change::RefreshTokenUsed { id: token.id.clone(), at });
        }
    }

    // The policy decides every request, one answered with a reused token too: a policy that reads
    // the time may have changed its mind since (its decision cache answers the repeats).
    let (granted, lifetime_seconds) = decide(live, &validated, exchange, now, record.as_deref_mut()).await?;
    let decided = Decided { granted: &granted, lifetime_seconds };
    // An identical request moments ago (a rollout pulling one image everywhere), decided the same:
    // its token again, when nothing else that decided it has changed since.
    let revision = app.ledger.as_ref().map_or(0, |ledger| ledger.revocations_revision());
    let reuse = live
        .reuse
        .as_ref()
        .map(|cache| (cache, ReuseKey::new(ask.credential, &exchange.service, &exchange.requested)));
    let lookup = match &reuse {
        Some((cache, key)) => Some(cache.lookup(key, decided, revision, &*app.clock).await),
        None => None,
    };
    let (minted, slot) = match lookup {
        Some(Lookup::Reuse(reused)) => {
            metrics().cache(CacheName::Tokens, true);
            if let Some(record) = record.as_deref_mut() {
                record.event.reused = true;
            }
            (reused.answer((app.clock)()), None)
        }
        lookup => {
            let slot = match lookup {
                Some(Lookup::Mint(slot)) => {
                    metrics().cache(CacheName::Tokens, false);
                    slot
                }
                _ => None,
            };
            let minted =
                mint(app, live, &validated, exchange, decided, refresh.is_some(), now, record.as_deref_mut())
                    .await?;
            (minted, slot)
        }
    };
    line::note(|line| line.granted = Some(scope_string(&granted)));
    if let Some(lifetime) = &minted.lifetime {
        // A policy's lifetime, as asked and as issued: `3600s as asked`, or
        // `86400s asked, 900s issued (signing.max_lifetime_seconds)`.
        let said = match lifetime.limited_by {
            None => format!("{}s as asked", lifetime.granted),
            Some(limit) => {
                format!("{}s asked, {}s issued ({})", lifetime.requested, lifetime.granted, limit.as_str())
            }
        };
        line::note(|line| line.lifetime = Some(said));
    }
    // Offered to identical requests once the exchange is complete (its event committed).
    let offer = slot.map(|slot| (slot, Reusable::new(minted.clone(), decided, revision)));
    let refresh_token = match (ask.offline, refresh) {
        (false, _) => None,
        // Never rotated: the Docker engine keeps the refresh token it has.
        (true, Some(_)) => Some(Zeroizing::new(ask.credential.to_owned())),
        (true, None) => issue_refresh_token(live, exchange, &validated, now, record)?,
    };
    Ok((Issued { minted, granted, refresh_token }, offer))
}

/// Asks the policy about `exchange` for the validated caller: what it grants and the lifetime it
/// asks for, noting its annotations on the ledger's `record`; a denial or a fault is an error.
async fn decide(
    live: &Live,
    validated: &Validated,
    exchange: &Exchange,
    now: u64,
    record: Option<&mut Recorded>,
) -> Result<(Vec<Resource>, Option<u32>), ApiError> {
    let caller = &validated.caller;
    let started = Instant::now();
    let decision = live.policy.evaluate(caller, &exchange.service, &exchange.requested, now).await;
    metrics().evaluation(started.elapsed().as_secs_f64());
    let decision = decision.inspect_err(|fault| {
        metrics().fault(fault.kind());
        metrics().decision("fault");
        tracing::error!(
            fault = fault.kind(),
            detail = %fault,
            policy = live.policy.source(),
            digest = live.policy.digest(),
            "policy fault; no token issued"
        );
    })?;
    if let Some(record) = record {
        record.event.annotations.clone_from(decision.annotations());
    }
    match decision {
        Decision::Deny { reason, message, .. } => {
            metrics().decision("deny");
            Err(ApiError::Denied { reason, message, status: live.config.http.denial_status })
        }
        Decision::Grant { resources, note, lifetime_seconds, .. } => {
            // Why less than asked was granted: for the operator's log line.
            if let Some(note) = &note {
                line::note(|line| line.note = Some(note.clone()));
            }
            let actions = |resources: &[Resource]| resources.iter().map(|r| r.actions.len()).sum::<usize>();
            metrics().decision(match actions(&resources) {
                0 => "empty",
                n if n >= actions(&exchange.requested) => "grant",
                _ => "partial",
            });
            Ok((resources, lifetime_seconds))
        }
    }
}

/// Mints the token `decided` grants, its ledger event sent to be committed while it is signed.
#[allow(clippy::too_many_arguments)]
async fn mint(
    app: &AppState,
    live: &Live,
    validated: &Validated,
    exchange: &Exchange,
    decided: Decided<'_>,
    refreshed: bool,
    now: u64,
    record: Option<&mut Recorded>,
) -> Result<Minted, ApiError> {
    let caller = &validated.caller;
    // A file key's signature (≈ 0.2–0.45 ms of CPU for RS256) runs here, on the worker: it is the
    // request's own work with no I/O to overlap, the runtime has one worker per core, and a hand-off
    // to the blocking pool would add a thread wake-up per token. Other connections wait at most one
    // signature for this worker. An HSM's signature waits on the device: it goes to the blocking
    // pool, under a deadline, and its failure is a 503.
    // Validation accepted the caller token up to `leeway` past its `exp`; the registry token ends
    // there at the latest, so it outlives its credential by no more than the tolerated skew. (A
    // refresh token's own expiry stands in for the caller token's.)
    let leeway = if refreshed { 0 } else { live.config.authority.leeway_seconds };
    let not_after = validated.expires_at.saturating_add(leeway);
    let grant = Grant {
        subject: &caller.subject,
        audience: &exchange.service,
        access: decided.granted,
        now,
        not_after,
        requested_lifetime: decided.lifetime_seconds,
        max_lifetime: live.config.signing.max_lifetime_seconds,
    };
    let minter = live.keys.minter();
    let prepared = minter.prepare(&grant).map_err(signing_failed)?;
    // The event goes to the ledger now and is committed while the token is signed. Not for an HSM,
    // whose signature may fail for want of the device: its event waits for the signature.
    if let Some(record) = record
        && record.pipeline
        && minter.signer().signs_in_memory()
        && let Some(ledger) = &app.ledger
    {
        note_issued(
            &mut record.event,
            live,
            decided.granted,
            prepared.jti(),
            prepared.expires_at(),
            prepared.lifetime(),
        );
        let committing =
            ledger.submit(record.event.clone(), record.change.take()).map_err(|unavailable| {
                line::note(|line| {
                    line.refused =
                        Some(format!("no token: its ledger event cannot be queued ({unavailable})"));
                });
                ApiError::LedgerUnavailable
            })?;
        record.committing = Some(committing);
    }
    minter.sign(prepared).await.map_err(signing_failed)
}

/// A signature that failed: a 500 for the local crypto library, a 503 for an HSM.
fn signing_failed(error: SignError) -> ApiError {
    match error {
        SignError::Crypto => ApiError::Signing,
        SignError::Hsm(error) => {
            tracing::error!(%error, "the HSM did not sign; no token issued");
            ApiError::SignerUnavailable
        }
    }
}

/// A new refresh token for the caller of an Authority token, bound to this service and client,
/// to be stored with the exchange's event; `None` when refresh tokens are off (or there is no
/// ledger to keep them).
fn issue_refresh_token(
    live: &Live,
    exchange: &Exchange,
    validated: &Validated,
    now: u64,
    record: Option<&mut Recorded>,
) -> Result<Option<Zeroizing<String>>, ApiError> {
    let Some(record) = record.filter(|_| live.config.refresh_tokens_enabled()) else {
        return Ok(None);
    };
    let settings = &live.config.refresh_tokens;
    let lifetime = Lifetime {
        absolute_seconds: u64::from(settings.lifetime_days) * 86_400,
        idle_seconds: (settings.idle_days > 0).then(|| u64::from(settings.idle_days) * 86_400),
    };
    let binding = Binding { service: &exchange.service, client_id: exchange.client_id.as_deref() };
    let (token, secret) = RefreshToken::issue(
        &validated.caller,
        &live.config.authority.issuer,
        validated.jti.as_deref(),
        binding,
        Millis::from_seconds(now),
        lifetime,
    )
    .map_err(|error| {
        tracing::error!(%error, "the operating system's random source failed; no refresh token");
        ApiError::Signing
    })?;
    let token_hash = refresh::token_hash(&secret).ok_or(ApiError::Signing)?;
    record.event.refresh_token_id = Some(token.id.clone());
    record.change = Some(Change::RefreshTokenIssued { token: Box::new(token), token_hash });
    Ok(Some(secret))
}

/// RFC 6749 §5.1: token responses must not be cached.
fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
    response
}
