//! Serving a router on a listener, with the limits a service facing clients directly needs and
//! `axum::serve` does not set: a request's head must arrive within `http.read_timeout_seconds`
//! (hyper's header timeout, which needs a timer axum does not give it) and its body within as
//! long again (a body still arriving then fails to read: the handler answers 400), and at most
//! `http.max_connections` connections are open at once, so that clients which open connections
//! and send nothing cannot take every file descriptor. Each request carries the peer's
//! [`ConnectInfo`], as with `into_make_service_with_connect_info`.

use axum::Router;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

/// What [`serve`] bounds.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The time a client has to send a request's head.
    pub read_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
}

/// Serves `router` on `listener` until `stopped` completes; then accepts nothing more, lets each
/// connection finish the request it is serving (closing it once idle), and returns when all
/// are closed.
pub async fn serve(listener: TcpListener, router: Router, limits: Limits, stopped: impl Future<Output = ()>) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    // Closed (its sender dropped) when the stop begins; each connection holds a receiver of
    // `open`, so its sender's `closed()` is when the last of them has ended.
    let (stop_tx, stop_rx) = watch::channel(());
    let (open_tx, open_rx) = watch::channel(());
    tokio::pin!(stopped);
    let mut full_since: Option<tokio::time::Instant> = None;
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => permit,
            () = &mut stopped => break,
        };
        let Ok(permit) = permit else { break };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, say: the pending connection stays in the backlog.
                    tracing::error!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut stopped => break,
        };
        // Said once a minute at most: a flood must not flood the log too.
        if permits.available_permits() == 0
            && full_since.is_none_or(|since| since.elapsed() >= Duration::from_secs(60))
        {
            tracing::warn!(
                max_connections = limits.max_connections,
                "http.max_connections connections are open: new ones wait"
            );
            full_since = Some(tokio::time::Instant::now());
        }
        let _ = stream.set_nodelay(true);
        let service = router.clone().map_request(move |request: axum::http::Request<Incoming>| {
            let mut request = request.map(|body| DeadlineBody::new(body, limits.read_timeout));
            request.extensions_mut().insert(ConnectInfo(peer));
            request
        });
        let (mut stop_rx, open_rx) = (stop_rx.clone(), open_rx.clone());
        tokio::spawn(async move {
            let _held = (permit, open_rx);
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(limits.read_timeout);
            let connection =
                builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
            tokio::pin!(connection);
            tokio::select! {
                served = connection.as_mut() => {
                    if let Err(error) = served {
                        tracing::debug!(%error, %peer, "connection ended with an error");
                    }
                }
                _ = stop_rx.changed() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    drop(listener);
    drop(stop_tx);
    drop(stop_rx);
    drop(open_rx);
    open_tx.closed().await;
}

/// A request body that must have arrived within its `timeout` of the request's head: a client
/// trickling its body a byte at a time holds a handler, and a connection, no longer than that.
/// Its clock runs only once a handler reads it (a `GET`'s empty body never starts one).
struct DeadlineBody {
    inner: Incoming,
    timeout: Duration,
    deadline: tokio::time::Instant,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl DeadlineBody {
    fn new(inner: Incoming, timeout: Duration) -> DeadlineBody {
        DeadlineBody { inner, timeout, deadline: tokio::time::Instant::now() + timeout, sleep: None }
    }
}

impl Body for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.as_mut().poll(cx).is_ready() {
            let timeout = this.timeout;
            return Poll::Ready(Some(Err(format!(
                "the request body did not arrive within {timeout:?} (http.read_timeout_seconds)"
            )
            .into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
