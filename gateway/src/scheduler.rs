//! Admission control per deployment: `slots` requests run, at most
//! `max_queue` wait (each at most `max_wait`), everyone else gets 429 with
//! Retry-After. The permit travels with the request into the engine, so a
//! slot is held until generation ends (finished, failed or cancelled), not
//! until headers are sent, nor until a slow client has read the last token.

use crate::openai::ApiError;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug)]
pub struct Admission {
    slots: Arc<Semaphore>,
    capacity: usize,
    waiting: AtomicUsize,
    max_queue: usize,
    max_wait: Duration,
}

/// Holding this is holding a slot.
#[derive(Debug)]
pub struct Permit {
    _permit: OwnedSemaphorePermit,
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
        Self {
            slots: Arc::new(Semaphore::new(slots)),
            capacity: slots,
            waiting: AtomicUsize::new(0),
            max_queue,
            max_wait,
        }
    }

    pub async fn admit(&self) -> Result<Permit, ApiError> {
        self.admit_many(1).await
    }

    /// `n` slots for one request (its `n` choices). Waiters are served in
    /// order, each until it has all it asked for, so two groups cannot
    /// starve each other; the caller keeps `n` within the slots there are.
    pub async fn admit_many(&self, n: u32) -> Result<Permit, ApiError> {
        if let Ok(p) = self.slots.clone().try_acquire_many_owned(n) {
            return Ok(Permit { _permit: p });
        }
        let queued = self.waiting.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(&self.waiting);
        if queued >= self.max_queue {
            return Err(ApiError::Overloaded(
                "the wait queue is full",
                self.retry_after(),
            ));
        }
        match tokio::time::timeout(self.max_wait, self.slots.clone().acquire_many_owned(n)).await {
            Ok(Ok(p)) => Ok(Permit { _permit: p }),
            Ok(Err(_)) => Err(ApiError::Overloaded("the model is shutting down", 5)),
            Err(_) => Err(ApiError::Overloaded(
                "no slot became free in time",
                self.retry_after(),
            )),
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
        self.slots.available_permits()
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
mod tests {
    use super::*;

    #[tokio::test]
    async fn queue_overflow_is_429_with_retry_after() {
        let a = Arc::new(Admission::new(1, 1, Duration::from_secs(5)));
        let held = a.admit().await;
        assert!(held.is_ok());
        let a2 = a.clone();
        let waiter = tokio::spawn(async move { a2.admit().await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(a.waiting(), 1);
        let third = a.admit().await;
        match third {
            Err(e) => {
                assert_eq!(e.status().as_u16(), 429);
                assert!(e.parts().3.is_some());
            }
            Ok(_) => unreachable!("a full queue must refuse"),
        }
        drop(held);
        assert!(matches!(waiter.await, Ok(Ok(()))));
        assert_eq!(a.waiting(), 0);
    }

    #[tokio::test]
    async fn a_group_takes_all_its_slots_at_once() {
        let a = Arc::new(Admission::new(3, 4, Duration::from_secs(5)));
        let one = a.admit().await;
        assert!(one.is_ok());
        let a2 = a.clone();
        let group = tokio::spawn(async move { a2.admit_many(3).await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!group.is_finished(), "three slots are not free yet");
        drop(one);
        assert!(matches!(group.await, Ok(Ok(()))));
        assert_eq!(a.free_slots(), 3);
    }

    #[tokio::test]
    async fn wait_times_out_into_429() {
        let a = Admission::new(1, 4, Duration::from_millis(50));
        let _held = a.admit().await;
        let r = a.admit().await;
        assert_eq!(r.err().map(|e| e.status().as_u16()), Some(429));
        assert_eq!(a.waiting(), 0);
    }
}
