//! The HTTP listener behind `herd serve` and `herd node`: hyper connections
//! (HTTP/1.1, and HTTP/2 with prior knowledge) with the limits `axum::serve`
//! does not set, so that no client can hold a socket or memory for ever.
//!
//! - **Connection cap** (`max_connections`): the accept loop takes a permit
//!   before it accepts, so over the cap new connections wait in the kernel's
//!   listen backlog and are served, in order, as others close. Nobody is
//!   refused; the two timeouts below bound how long anyone holds a place.
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
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
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
    let (drain_tx, drain_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            (tcp, permit) = accept(&listener, &permits) => {
                connections.spawn(connection(tcp, permit, app.clone(), limits, drain_rx.clone()));
            }
        }
    }
    drop(listener);
    let _ = drain_tx.send(true);
    while connections.join_next().await.is_some() {}
}

/// The next connection, once the cap allows one more.
async fn accept(
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
) -> (TcpStream, OwnedSemaphorePermit) {
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            // The semaphore is never closed; if it were, accept nothing more.
            return std::future::pending().await;
        };
        match listener.accept().await {
            Ok((tcp, _)) => return (tcp, permit),
            // That one connection went away before we took it.
            Err(e) if is_connection_error(&e) => {}
            Err(e) => {
                // Out of file descriptors (or memory): wait for some to close.
                tracing::warn!("cannot accept a connection: {e}");
                drop(permit);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
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
    _permit: OwnedSemaphorePermit,
    app: axum::Router,
    limits: HttpLimits,
    mut drain: watch::Receiver<bool>,
) {
    let activity = Activity::new();
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
