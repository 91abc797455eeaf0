//! Admission control per deployment: `slots` requests run, at most
//! `max_queue` wait (each at most `max_wait`), everyone else gets 429 with
//! Retry-After. Waiters queue per API key, and a freed slot goes to the
//! next key in round-robin order (each key's own requests in FIFO order),
//! so one key flooding the queue delays another key by at most one turn.
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

/// Free slots and the waiters, per key. Invariant: a slot is free only
/// when no live waiter is queued (a released slot goes to a waiter first).
#[derive(Debug, Default)]
struct Slots {
    free: usize,
    queues: HashMap<Arc<str>, VecDeque<oneshot::Sender<Permit>>>,
    /// Keys with waiters, in the order their next turn comes.
    turns: VecDeque<Arc<str>>,
}

/// Holding this is holding a slot; dropping it hands the slot to the next waiter.
#[derive(Debug)]
pub struct Permit {
    shared: Option<Arc<Shared>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            Shared::release(shared);
        }
    }
}

impl Shared {
    fn release(shared: Arc<Self>) {
        loop {
            let next = {
                let Ok(mut s) = shared.slots.lock() else {
                    return;
                };
                match s.next_waiter() {
                    Some(tx) => tx,
                    None => {
                        s.free += 1;
                        return;
                    }
                }
            };
            // Sent outside the lock: a waiter that already left hands it back.
            match next.send(Permit {
                shared: Some(shared.clone()),
            }) {
                Ok(()) => return,
                Err(mut back) => {
                    back.shared = None;
                }
            }
        }
    }
}

impl Slots {
    fn next_waiter(&mut self) -> Option<oneshot::Sender<Permit>> {
        while let Some(key) = self.turns.pop_front() {
            let Some(queue) = self.queues.get_mut(&key) else {
                continue;
            };
            let tx = queue.pop_front();
            if queue.is_empty() {
                self.queues.remove(&key);
            } else {
                self.turns.push_back(key);
            }
            if let Some(tx) = tx.filter(|t| !t.is_closed()) {
                return Some(tx);
            }
        }
        None
    }

    fn enqueue(&mut self, key: &str, tx: oneshot::Sender<Permit>) {
        if let Some(queue) = self.queues.get_mut(key) {
            queue.retain(|t| !t.is_closed());
            queue.push_back(tx);
            return;
        }
        let key: Arc<str> = Arc::from(key);
        self.queues.insert(key.clone(), VecDeque::from([tx]));
        self.turns.push_back(key);
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
            if s.free > 0 {
                s.free -= 1;
                return Ok(Permit {
                    shared: Some(self.shared.clone()),
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
            s.enqueue(key, tx);
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
