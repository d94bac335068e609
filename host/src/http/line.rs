//! The request's one log line. Handlers note what they learn (who asked, for what, what was
//! granted, why it was refused) with [`note`]; the edge writes it all as one `served` event when
//! the response is ready.
//!
//! The notes are a task-local record, not fields of a tracing span: a span per request, with
//! fields recorded on it, cost about 10 µs per request in the formatting subscriber — a quarter of
//! a reused token's answer (docs/BENCHMARKS.md). What the span gave besides was a prefix on the
//! lines logged during the request; those that need it name the ledger event themselves, and the
//! request's own line follows them with all of its fields.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use std::cell::RefCell;
use std::time::Instant;

tokio::task_local! {
    static LINE: RefCell<Line>;
}

/// What a handler learned about its request, for the log line. Never a token or a key.
#[derive(Debug, Default)]
pub(crate) struct Line {
    pub sub: Option<String>,
    pub service: Option<String>,
    /// The scopes granted, as in the token.
    pub granted: Option<String>,
    /// The policy's note on why less than asked was granted.
    pub note: Option<String>,
    /// A policy's lifetime, as asked and as issued.
    pub lifetime: Option<String>,
    /// Why the request was refused.
    pub refused: Option<String>,
    /// The ledger event's id.
    pub event: Option<String>,
}

/// Runs `work` in a task of its own, tracked by `tracker`, which goes on to its end if the request
/// is dropped; the request's line goes with it and comes back with what it noted. A panic in it is
/// the caller's again; the error is the task's cancellation (the runtime stopping).
pub(crate) async fn detached<T: Send + 'static>(
    tracker: &tokio_util::task::TaskTracker,
    work: impl Future<Output = T> + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    let line = LINE.try_with(RefCell::take).unwrap_or_default();
    let task = tracker.spawn(LINE.scope(RefCell::new(line), async move {
        let out = work.await;
        (out, LINE.with(RefCell::take))
    }));
    match task.await {
        Ok((out, line)) => {
            let _ = LINE.try_with(|current| current.replace(line));
            Ok(out)
        }
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(error) => Err(error),
    }
}

/// Notes something about the current request for its log line; outside a request, nothing.
pub(crate) fn note(write: impl FnOnce(&mut Line)) {
    let _ = LINE.try_with(|line| write(&mut line.borrow_mut()));
}

/// The middleware around every listener's routes: runs the request with an empty [`Line`] and
/// logs it, with the status and the time to the response, at `info`.
pub(super) async fn log_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    // Only the path: the query is long and may carry secrets.
    let path = request.uri().path().to_owned();
    let (response, line) = LINE
        .scope(RefCell::new(Line::default()), async move {
            let response = next.run(request).await;
            (response, LINE.with(RefCell::take))
        })
        .await;
    tracing::info!(
        target: "registry_token::http",
        method = %method,
        path,
        sub = line.sub.as_deref(),
        service = line.service.as_deref(),
        granted = line.granted.as_deref(),
        note = line.note.as_deref(),
        lifetime = line.lifetime.as_deref(),
        refused = line.refused.as_deref(),
        event = line.event.as_deref(),
        status = response.status().as_u16(),
        latency_us = started.elapsed().as_micros() as u64,
        "served"
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn notes_reach_the_line_of_their_own_request_only() {
        let seen = LINE
            .scope(RefCell::new(Line::default()), async {
                note(|line| line.sub = Some("alice".into()));
                tokio::task::yield_now().await;
                note(|line| line.refused = Some("policy denied: plan".into()));
                LINE.with(RefCell::take)
            })
            .await;
        assert_eq!(seen.sub.as_deref(), Some("alice"));
        assert_eq!(seen.refused.as_deref(), Some("policy denied: plan"));
        // Outside a request a note goes nowhere, and does not panic.
        note(|line| line.sub = Some("nobody".into()));
        assert!(LINE.try_with(|_| ()).is_err());
    }
}
