//! Admission control per deployment: `slots` requests run, at most
//! `max_queue` wait (each at most `max_wait`), everyone else gets 429 with
//! Retry-After. Waiters queue per API key (each key's own in FIFO order),
//! and a freed slot goes to the waiting key with the fewest requests
//! running, of those the one served longest ago: one key flooding the
//! queue delays another key's request by at most the one running ahead.
//! A request for `n` choices takes `n` slots at once (a waiting group is
//! served when that many are free; later requests queue behind it rather
//! than starve it).
//! The permit travels with the request into the engine, so a slot is held
//! until generation ends (finished, failed or cancelled), not until
//! headers are sent, nor until a slow client has read the last token.

use crate::openai::ApiError;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

#[derive(Debug)]
pub struct Admission {
    shared: Arc<Shared>,
    capacity: usize,
    waiting: AtomicUsize,
    max_queue: usize,
    max_wait: Duration,
}

#[derive(Debug, Default)]
struct Shared {
    slots: Mutex<Slots>,
}

/// Free slots, and per key its running requests and waiters. Invariant:
/// while a live waiter is queued, fewer slots are free than the next one
/// served needs (a released slot goes to waiters first).
#[derive(Debug, Default)]
struct Slots {
    free: usize,
    keys: HashMap<Arc<str>, KeyState>,
    /// Admissions so far: orders keys by when they were last served.
    admitted: u64,
}

#[derive(Debug, Default)]
struct KeyState {
    running: usize,
    last_admitted: u64,
    /// Each waiter with the number of slots it needs.
    waiters: VecDeque<(usize, oneshot::Sender<Permit>)>,
}

/// Holding this is holding `n` slots; dropping it hands them to the next waiters.
#[derive(Debug)]
pub struct Permit {
    shared: Arc<Shared>,
    key: Arc<str>,
    n: usize,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Ok(mut s) = self.shared.slots.lock() {
            s.finished(&self.key);
            s.free += self.n;
        }
        dispatch(&self.shared);
    }
}

/// Hands free slots to the waiters they fit, in fair order.
fn dispatch(shared: &Arc<Shared>) {
    let served = {
        let Ok(mut s) = shared.slots.lock() else {
            return;
        };
        let mut served = Vec::new();
        while let Some(next) = s.next_waiter() {
            served.push(next);
        }
        served
    };
    // Sent outside the lock. A waiter that left just now drops its permit,
    // which hands the slots on again.
    for (key, n, tx) in served {
        let _ = tx.send(Permit {
            shared: shared.clone(),
            key,
            n,
        });
    }
}

impl Slots {
    fn admit(&mut self, key: &Arc<str>) {
        self.admitted += 1;
        let k = self.keys.entry(key.clone()).or_default();
        k.running += 1;
        k.last_admitted = self.admitted;
    }

    fn finished(&mut self, key: &str) {
        if let Some(k) = self.keys.get_mut(key) {
            k.running = k.running.saturating_sub(1);
            if k.running == 0 && k.waiters.is_empty() {
                self.keys.remove(key);
            }
        }
    }

    /// The next waiter of the key with the fewest requests running, and of
    /// those the one served longest ago, if enough slots are free for it; it
    /// counts as admitted and its slots are taken. A group that does not fit
    /// yet stays first, so smaller requests cannot starve it.
    fn next_waiter(&mut self) -> Option<(Arc<str>, usize, oneshot::Sender<Permit>)> {
        loop {
            let key = self
                .keys
                .iter()
                .filter(|(_, k)| !k.waiters.is_empty())
                .min_by_key(|(_, k)| (k.running, k.last_admitted))
                .map(|(key, _)| key.clone())?;
            let k = self.keys.get_mut(&key)?;
            match k.waiters.front() {
                Some((_, tx)) if tx.is_closed() => {
                    k.waiters.pop_front();
                    self.finished_waiting(&key);
                }
                Some((n, _)) if *n > self.free => return None,
                Some(_) => {
                    let (n, tx) = k.waiters.pop_front()?;
                    self.free -= n;
                    self.admit(&key);
                    return Some((key, n, tx));
                }
                None => self.finished_waiting(&key),
            }
        }
    }

    fn has_live_waiters(&self) -> bool {
        self.keys
            .values()
            .any(|k| k.waiters.iter().any(|(_, tx)| !tx.is_closed()))
    }

    fn finished_waiting(&mut self, key: &str) {
        if self
            .keys
            .get(key)
            .is_some_and(|k| k.running == 0 && k.waiters.is_empty())
        {
            self.keys.remove(key);
        }
    }

    fn enqueue(&mut self, key: &Arc<str>, n: usize, tx: oneshot::Sender<Permit>) {
        let k = self.keys.entry(key.clone()).or_default();
        k.waiters.retain(|(_, t)| !t.is_closed());
        k.waiters.push_back((n, tx));
    }
}

/// Decrements the waiting count however the wait ends (admitted, timed out, or the client left).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admission {
    pub fn new(slots: usize, max_queue: usize, max_wait: Duration) -> Self {
        let shared = Shared {
            slots: Mutex::new(Slots {
                free: slots,
                ..Slots::default()
            }),
        };
        Self {
            shared: Arc::new(shared),
            capacity: slots,
            waiting: AtomicUsize::new(0),
            max_queue,
            max_wait,
        }
    }

    /// A slot for a request made with the API key named `key`.
    pub async fn admit(&self, key: &str) -> Result<Permit, ApiError> {
        self.admit_many(key, 1).await
    }

    /// `n` slots at once for one request (its `n` choices); the caller keeps
    /// `n` within the slots there are.
    pub async fn admit_many(&self, key: &str, n: usize) -> Result<Permit, ApiError> {
        let n = n.clamp(1, self.capacity.max(1));
        let (mut rx, _waiting) = {
            let Ok(mut s) = self.shared.slots.lock() else {
                return Err(ApiError::Overloaded("the model is shutting down", 5));
            };
            let key: Arc<str> = Arc::from(key);
            if s.free >= n && !s.has_live_waiters() {
                s.free -= n;
                s.admit(&key);
                return Ok(Permit {
                    shared: self.shared.clone(),
                    key,
                    n,
                });
            }
            let queued = self.waiting.fetch_add(1, Ordering::AcqRel);
            let waiting = Waiting(&self.waiting);
            if queued >= self.max_queue {
                drop(s);
                return Err(ApiError::Overloaded(
                    "the wait queue is full",
                    self.retry_after(),
                ));
            }
            let (tx, rx) = oneshot::channel();
            s.enqueue(&key, n, tx);
            (rx, waiting)
        };
        match tokio::time::timeout(self.max_wait, &mut rx).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(ApiError::Overloaded("the model is shutting down", 5)),
            Err(_) => {
                // A slot sent just as the wait ended is still ours.
                rx.close();
                match rx.try_recv() {
                    Ok(p) => Ok(p),
                    Err(_) => {
                        // A group that gave up may have held back smaller waiters.
                        dispatch(&self.shared);
                        Err(ApiError::Overloaded(
                            "no slot became free in time",
                            self.retry_after(),
                        ))
                    }
                }
            }
        }
    }

    /// Slots in all.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    pub fn free_slots(&self) -> usize {
        self.shared.slots.lock().map_or(0, |s| s.free)
    }

    /// Requests holding a slot or waiting for one (least-in-flight routing).
    pub fn in_flight(&self) -> usize {
        self.capacity.saturating_sub(self.free_slots()) + self.waiting()
    }

    fn retry_after(&self) -> u64 {
        // Rough: one second per queued request per slot-equivalent, at least 1.
        (self.waiting() as u64 / 4).clamp(1, 60)
    }
}

#[cfg(test)]
mod tests;
