//! What one connection is doing, for the listener's two connection timeouts.
//!
//! A connection is always in one phase: waiting for a request head (since it
//! opened, or since the first byte of the next request arrived), idle (a
//! kept-alive connection with nothing in flight, since its last response
//! ended), or busy (requests in flight, however long they take: streams and
//! slow generations are bounded elsewhere). hyper's own `header_read_timeout`
//! starts its clock as soon as a connection is idle, so it cannot tell a slow
//! head from a quiet keep-alive; this watch can.
//!
//! The phase changes on three events: a read that brings bytes, a request
//! handed to the router, and that request's response body dropped (fully
//! sent, or abandoned). [`Activity::expired`] resolves when the phase's
//! deadline passes, or when the listener needs the connection's place for a
//! new one ([`Activity::evict`], see `conn_room.rs`) and nothing is in flight.

use axum::body::{Body, Bytes};
use http_body::{Frame, SizeHint};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A request head is due; bytes may have started to arrive.
    Head {
        since: Instant,
    },
    /// Nothing in flight and nothing sent since the last response.
    Idle {
        since: Instant,
    },
    Busy {
        requests: usize,
    },
}

/// Why a connection was closed by the watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    SlowHead,
    Idle,
    Evicted,
}

impl Expiry {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SlowHead => "no complete request head within header_read_timeout",
            Self::Idle => "idle for idle_timeout",
            Self::Evicted => "at max_connections, the longest without a request in flight",
        }
    }
}

pub struct Activity {
    phase: Mutex<Phase>,
    /// Asked to close as soon as nothing is in flight (set once, never cleared).
    evicted: AtomicBool,
    changed: Notify,
}

impl Activity {
    /// A new connection owes a request head from the moment it opens.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            phase: Mutex::new(Phase::Head {
                since: Instant::now(),
            }),
            evicted: AtomicBool::new(false),
            changed: Notify::new(),
        })
    }

    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Since when the connection has had nothing in flight (waiting for a
    /// head, or idle); `None` while busy or once evicted.
    pub fn waiting_since(&self) -> Option<Instant> {
        if self.evicted.load(Ordering::Relaxed) {
            return None;
        }
        match *self.phase() {
            Phase::Head { since } | Phase::Idle { since } => Some(since),
            Phase::Busy { .. } => None,
        }
    }

    /// Asks the connection to close, now if nothing is in flight, else when
    /// its requests end. False if it was busy (it is then left alone).
    pub fn evict(&self) -> bool {
        let phase = self.phase();
        if matches!(*phase, Phase::Busy { .. }) {
            return false;
        }
        self.evicted.store(true, Ordering::Relaxed);
        drop(phase);
        self.changed.notify_one();
        true
    }

    fn bytes_read(&self) {
        let mut phase = self.phase();
        if let Phase::Idle { .. } = *phase {
            *phase = Phase::Head {
                since: Instant::now(),
            };
            self.changed.notify_one();
        }
    }

    /// A request reached the router; the guard ends it when dropped.
    pub fn request(self: &Arc<Self>) -> RequestGuard {
        let mut phase = self.phase();
        *phase = match *phase {
            Phase::Busy { requests } => Phase::Busy {
                requests: requests + 1,
            },
            Phase::Head { .. } | Phase::Idle { .. } => Phase::Busy { requests: 1 },
        };
        self.changed.notify_one();
        RequestGuard(self.clone())
    }

    fn request_ended(&self) {
        let mut phase = self.phase();
        if let Phase::Busy { requests } = *phase {
            *phase = if requests > 1 {
                Phase::Busy {
                    requests: requests - 1,
                }
            } else {
                Phase::Idle {
                    since: Instant::now(),
                }
            };
            self.changed.notify_one();
        }
    }

    /// Resolves once the connection has spent too long without a request
    /// head (`head`) or without anything at all (`idle`), or was evicted;
    /// never while busy.
    pub async fn expired(&self, head: Duration, idle: Duration) -> Expiry {
        loop {
            let deadline = match *self.phase() {
                Phase::Busy { .. } => None,
                _ if self.evicted.load(Ordering::Relaxed) => return Expiry::Evicted,
                Phase::Head { since } => Some((since + head, Expiry::SlowHead)),
                Phase::Idle { since } => Some((since + idle, Expiry::Idle)),
            };
            match deadline {
                Some((at, why)) if Instant::now() >= at => return why,
                Some((at, _)) => tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    () = self.changed.notified() => {}
                },
                None => self.changed.notified().await,
            }
        }
    }
}

/// One request in flight on a connection.
pub struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

/// A response body that keeps its request in flight until hyper drops it.
pub struct Guarded {
    inner: Body,
    _request: RequestGuard,
}

impl Guarded {
    pub fn new(inner: Body, request: RequestGuard) -> Self {
        Self {
            inner,
            _request: request,
        }
    }
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, telling the watch when bytes arrive.
pub struct Tracked<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Tracked<T> {
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.bytes_read();
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: Duration = Duration::from_secs(10);
    const IDLE: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn a_new_connection_owes_a_head() {
        let a = Activity::new();
        let started = Instant::now();
        assert_eq!(a.expired(HEAD, IDLE).await, Expiry::SlowHead);
        assert_eq!(started.elapsed(), HEAD);
    }

    #[tokio::test(start_paused = true)]
    async fn busy_never_expires_and_idle_waits_for_its_own_timeout() {
        let a = Activity::new();
        let guard = a.request();
        let waited = tokio::time::timeout(10 * IDLE, a.expired(HEAD, IDLE)).await;
        assert!(waited.is_err(), "a busy connection expired");
        drop(guard);
        let idle_from = Instant::now();
        assert_eq!(a.expired(HEAD, IDLE).await, Expiry::Idle);
        assert_eq!(idle_from.elapsed(), IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_byte_of_the_next_request_starts_the_head_clock() {
        let a = Activity::new();
        drop(a.request());
        tokio::time::advance(IDLE / 2).await;
        a.bytes_read();
        let from = Instant::now();
        assert_eq!(a.expired(HEAD, IDLE).await, Expiry::SlowHead);
        assert_eq!(from.elapsed(), HEAD);
    }

    #[tokio::test(start_paused = true)]
    async fn an_evicted_connection_closes_at_once_unless_busy_then_when_it_is_done() {
        let a = Activity::new();
        assert!(a.waiting_since().is_some());
        assert!(a.evict());
        assert!(a.waiting_since().is_none(), "evicted twice");
        let from = Instant::now();
        assert_eq!(a.expired(HEAD, IDLE).await, Expiry::Evicted);
        assert_eq!(from.elapsed(), Duration::ZERO);

        let busy = Activity::new();
        let guard = busy.request();
        assert!(busy.waiting_since().is_none());
        assert!(!busy.evict(), "a busy connection was evicted");
        drop(guard);
        assert!(busy.waiting_since().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn two_requests_in_flight_end_one_at_a_time() {
        let a = Activity::new();
        let (one, two) = (a.request(), a.request());
        drop(one);
        assert_eq!(*a.phase(), Phase::Busy { requests: 1 });
        drop(two);
        assert!(matches!(*a.phase(), Phase::Idle { .. }));
    }
}
