//! Admission control per deployment: `slots` requests run, at most
//! `max_queue` wait (each at most `max_wait`), everyone else gets 429 with
//! Retry-After. Waiters queue per API key (each key's own in FIFO order),
//! and a freed slot goes to the waiting key with the fewest requests
//! running, of those the one served longest ago: one key flooding the
//! queue delays another key's request by at most the one running ahead.
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

/// Free slots, and per key its running requests and waiters. Invariant: a
/// slot is free only when no live waiter is queued (a released slot goes
/// to a waiter first).
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
    waiters: VecDeque<oneshot::Sender<Permit>>,
}

/// Holding this is holding a slot; dropping it hands the slot to the next waiter.
#[derive(Debug)]
pub struct Permit {
    shared: Arc<Shared>,
    key: Arc<str>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let next = {
            let Ok(mut s) = self.shared.slots.lock() else {
                return;
            };
            s.finished(&self.key);
            match s.next_waiter() {
                Some(next) => next,
                None => {
                    s.free += 1;
                    return;
                }
            }
        };
        // Sent outside the lock. A waiter that left just now drops it,
        // which hands the slot on again.
        let (key, tx) = next;
        let _ = tx.send(Permit {
            shared: self.shared.clone(),
            key,
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
    /// those the one served longest ago; it counts as admitted.
    fn next_waiter(&mut self) -> Option<(Arc<str>, oneshot::Sender<Permit>)> {
        loop {
            let key = self
                .keys
                .iter()
                .filter(|(_, k)| !k.waiters.is_empty())
                .min_by_key(|(_, k)| (k.running, k.last_admitted))
                .map(|(key, _)| key.clone())?;
            let tx = self.keys.get_mut(&key).and_then(|k| k.waiters.pop_front());
            match tx {
                Some(tx) if !tx.is_closed() => {
                    self.admit(&key);
                    return Some((key, tx));
                }
                _ => self.finished_waiting(&key),
            }
        }
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

    fn enqueue(&mut self, key: &Arc<str>, tx: oneshot::Sender<Permit>) {
        let k = self.keys.entry(key.clone()).or_default();
        k.waiters.retain(|t| !t.is_closed());
        k.waiters.push_back(tx);
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
        let (mut rx, _waiting) = {
            let Ok(mut s) = self.shared.slots.lock() else {
                return Err(ApiError::Overloaded("the model is shutting down", 5));
            };
            let key: Arc<str> = Arc::from(key);
            if s.free > 0 {
                s.free -= 1;
                s.admit(&key);
                return Ok(Permit {
                    shared: self.shared.clone(),
                    key,
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
            s.enqueue(&key, tx);
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
                    Err(_) => Err(ApiError::Overloaded(
                        "no slot became free in time",
                        self.retry_after(),
                    )),
                }
            }
        }
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
