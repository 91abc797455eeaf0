//! Room under the connection cap: the connections being served, so that when
//! all `max_connections` places are taken and another client connects, the
//! connection that has gone longest without a request in flight (one still
//! owing its request head, or a kept-alive one sitting idle) is closed to make
//! room. A connection with a request in flight is never closed for this.
//!
//! Without it, connections that hold a place while doing nothing (a slowloris
//! client, a pool of idle keep-alives) keep every newcomer waiting in the
//! kernel's listen backlog until the header or idle timeout frees a place:
//! seconds for everyone else, and indefinitely if the attacker reconnects.
//! The newest connection is the last to go, so a client that connects and
//! sends its request at once is served.

use super::conn_watch::Activity;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long to wait for an evicted connection's place before evicting another
/// (it may have started a request just before it was told to go).
const EVICTION_WAIT: Duration = Duration::from_millis(100);
/// How often to look again when every connection is busy.
const ALL_BUSY_RECHECK: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct Connections {
    next: AtomicU64,
    live: Mutex<HashMap<u64, Arc<Activity>>>,
}

/// A connection's entry; dropping it (with the connection) removes it.
pub struct Registered {
    id: u64,
    all: Arc<Connections>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.all.live().remove(&self.id);
    }
}

impl Connections {
    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Activity>>> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn register(self: &Arc<Self>, activity: Arc<Activity>) -> Registered {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.live().insert(id, activity);
        Registered {
            id,
            all: self.clone(),
        }
    }

    /// Asks the connection that has gone longest without a request in flight
    /// to close; false if every connection is busy.
    fn evict_longest_waiting(&self) -> bool {
        let live = self.live();
        let mut waiting: Vec<_> = live
            .values()
            .filter_map(|a| Some((a.waiting_since()?, a)))
            .collect();
        waiting.sort_by_key(|&(since, _)| since);
        // One that turned busy since it was looked at refuses; the next one is asked.
        waiting.into_iter().any(|(_, a)| a.evict())
    }

    /// A place for a connection just accepted: a free one, or one made by
    /// closing the connection that has waited longest with nothing in
    /// flight; while every connection is busy, the next one to close.
    pub async fn place(&self, permits: &Arc<Semaphore>) -> Option<OwnedSemaphorePermit> {
        loop {
            if let Ok(permit) = permits.clone().try_acquire_owned() {
                return Some(permit);
            }
            let wait = if self.evict_longest_waiting() {
                EVICTION_WAIT
            } else {
                ALL_BUSY_RECHECK
            };
            match tokio::time::timeout(wait, permits.clone().acquire_owned()).await {
                Ok(Ok(permit)) => return Some(permit),
                Ok(Err(_)) => return None, // closed: never, in practice
                Err(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_longest_waiting_connection_makes_room_and_a_busy_one_never_does() {
        let all = Arc::new(Connections::default());
        let permits = Arc::new(Semaphore::new(3));
        let (busy, old, new) = (Activity::new(), Activity::new(), Activity::new());
        let _request = busy.request();
        tokio::time::advance(Duration::from_secs(1)).await;
        let _ = old.request(); // served, then idle since now
        tokio::time::advance(Duration::from_secs(1)).await;
        drop(new.request()); // idle since now: waited less than `old`
        let mut held = Vec::new();
        for a in [&busy, &old, &new] {
            held.push((all.register(a.clone()), permits.clone().try_acquire_owned()));
        }

        // The connection task of `old` would now close and free its place.
        let placing = tokio::spawn({
            let (all, permits) = (all.clone(), permits.clone());
            async move { all.place(&permits).await.is_some() }
        });
        tokio::task::yield_now().await;
        assert!(
            old.waiting_since().is_none(),
            "the longest idle was not asked to go"
        );
        assert!(
            new.waiting_since().is_some(),
            "the newer one was asked to go"
        );
        assert!(busy.waiting_since().is_none() && !busy.evict());
        drop(held.remove(1));
        assert!(matches!(placing.await, Ok(true)));
    }

    #[tokio::test(start_paused = true)]
    async fn with_every_connection_busy_a_newcomer_waits_for_one_to_end() {
        let all = Arc::new(Connections::default());
        let permits = Arc::new(Semaphore::new(1));
        let busy = Activity::new();
        let request = busy.request();
        let entry = all.register(busy.clone());
        let permit = permits.clone().try_acquire_owned();
        let placing = tokio::spawn({
            let (all, permits) = (all.clone(), permits.clone());
            async move { all.place(&permits).await.is_some() }
        });
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!placing.is_finished());
        drop((request, entry, permit));
        assert!(matches!(placing.await, Ok(true)));
    }
}
