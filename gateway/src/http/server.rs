//! The HTTP listener behind `herd serve` and `herd node`: hyper connections
//! (HTTP/1.1, and HTTP/2 with prior knowledge) with the limits `axum::serve`
//! does not set, so that no client can hold a socket or memory for ever.
//!
//! - **Connection cap** (`max_connections`): each connection holds one of
//!   that many places. Over the cap, the connection that has gone longest
//!   without a request in flight (owing its request head, or idle) is closed
//!   to make room for the new one (`conn_room.rs`), so clients that hold a
//!   place doing nothing cannot keep others out; while every connection has
//!   a request in flight, newcomers wait in the kernel's listen backlog and
//!   are served, in order, as others close. Nobody is refused.
//! - **Header read timeout** (`header_read_timeout`): a connection must
//!   deliver a complete request head this long after it opens, or after the
//!   first byte of its next request; otherwise it is closed.
//! - **Idle timeout** (`idle_timeout`): a kept-alive connection with nothing
//!   in flight that sends nothing for this long is closed.
//! - **Request timeout** (`request_timeout`): the time until a response
//!   starts. That is the whole of a non-streaming request (body read,
//!   queue, generation), answered with a 504 in OpenAI's shape when it
//!   passes; a stream only has to start in time and then runs to its end.
//!
//! Graceful shutdown: stop accepting, ask every connection to finish its
//! requests and close, wait for them (the caller bounds the wait and drops
//! this future, which drops every connection).

use super::conn_room::{Connections, Registered};
use super::conn_watch::{Activity, Guarded, Tracked};
use crate::openai::ApiError;
use axum::body::Body;
use axum::response::IntoResponse;
use herd_config::HttpLimits;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tower::ServiceExt;

/// Serves `app` on `listener` until `stop` resolves, then drains.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: HttpLimits,
    stop: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections as usize));
    let live = Arc::new(Connections::default());
    // Accepting (which may wait for a place) runs apart, so that nothing here
    // cancels it halfway and drops a connection it has just taken.
    let (accepted_tx, mut accepted) = mpsc::channel(1);
    let acceptor = tokio::spawn(accept_loop(listener, permits, live.clone(), accepted_tx));
    let (drain_tx, drain_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            Some((tcp, permit)) = accepted.recv() => {
                let activity = Activity::new();
                let place = Place { _permit: permit, _entry: live.register(activity.clone()) };
                connections.spawn(connection(tcp, place, activity, app.clone(), limits, drain_rx.clone()));
            }
        }
    }
    // Stop accepting: the listener closes with the acceptor.
    acceptor.abort();
    let _ = acceptor.await;
    let _ = drain_tx.send(true);
    while connections.join_next().await.is_some() {}
}

/// Accepts connections, each with its place under the cap (made by closing
/// one with nothing in flight if need be), until the server stops.
async fn accept_loop(
    listener: TcpListener,
    permits: Arc<Semaphore>,
    live: Arc<Connections>,
    accepted: mpsc::Sender<(TcpStream, OwnedSemaphorePermit)>,
) {
    loop {
        // The newcomer first, then its place: nothing is closed to make room
        // before someone is there to take it.
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            // That one connection went away before we took it.
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of file descriptors (or memory): wait for some to close.
                tracing::warn!("cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // The semaphore is never closed; if it were, accept nothing more.
        let Some(permit) = live.place(&permits).await else {
            return;
        };
        if accepted.send((tcp, permit)).await.is_err() {
            return;
        }
    }
}

/// What a connection holds while it is served.
struct Place {
    _permit: OwnedSemaphorePermit,
    _entry: Registered,
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

async fn connection(
    tcp: TcpStream,
    _place: Place,
    activity: Arc<Activity>,
    app: axum::Router,
    limits: HttpLimits,
    mut drain: watch::Receiver<bool>,
) {
    let io = TokioIo::new(Tracked::new(tcp, activity.clone()));
    let watched = activity.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let request = watched.request();
        let app = app.clone();
        let deadline = limits.request_timeout;
        async move {
            let response = respond_within(app, req.map(Body::new), deadline).await;
            Ok::<_, Infallible>(response.map(|body| Guarded::new(body, request)))
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The watch below times request heads; hyper's timer would also cut quiet keep-alives.
    builder.http1().header_read_timeout(None);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!("connection ended: {e}");
                }
                return;
            }
            _ = drain.wait_for(|d| *d), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            why = activity.expired(limits.header_read_timeout, limits.idle_timeout) => {
                // Nothing is in flight, so dropping the connection loses no answer.
                tracing::debug!("closing a connection: {}", why.as_str());
                return;
            }
        }
    }
}

/// The router's answer, or a 504 once `deadline` passes before it starts.
async fn respond_within(
    app: axum::Router,
    req: axum::extract::Request,
    deadline: Duration,
) -> axum::response::Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    match tokio::time::timeout(deadline, app.oneshot(req)).await {
        Ok(Ok(response)) => response,
        Ok(Err(never)) => match never {},
        Err(_) => {
            tracing::warn!(%method, %path, "no response within {deadline:?} (request_timeout_secs): 504");
            ApiError::RequestTimeout(deadline).into_response()
        }
    }
}
