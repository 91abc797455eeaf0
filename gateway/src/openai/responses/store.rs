//! Stored responses (`store: true`, the default): what `GET` returns and
//! what `previous_response_id` continues. Bounded by count and bytes; the
//! oldest go first. Kept in this node's memory only: a restart forgets them,
//! and another node of a cluster does not know them.

use super::object::ResponseObject;
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

pub const DEFAULT_MAX_ENTRIES: usize = 10_000;
pub const DEFAULT_MAX_BYTES: usize = 256 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct Stored {
    pub response: Arc<ResponseObject>,
    /// The whole conversation as chat messages, this response's output included.
    pub conversation: Arc<Vec<Value>>,
    bytes: usize,
}

#[derive(Debug, Default)]
struct Inner {
    by_id: HashMap<String, Stored>,
    order: VecDeque<String>,
    bytes: usize,
}

/// Cheap to clone; every clone is the same store.
#[derive(Debug, Clone)]
pub struct ResponseStore {
    inner: Arc<Mutex<Inner>>,
    max_entries: usize,
    max_bytes: usize,
}

impl Default for ResponseStore {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_ENTRIES, DEFAULT_MAX_BYTES)
    }
}

impl ResponseStore {
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        Self {
            inner: Arc::default(),
            max_entries: max_entries.max(1),
            max_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means another request panicked mid-update of
        // plain maps; the data is still usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn get(&self, id: &str) -> Option<Stored> {
        self.lock().by_id.get(id).cloned()
    }

    pub fn insert(&self, response: ResponseObject, conversation: Vec<Value>) {
        let bytes = serde_json::to_vec(&response).map_or(0, |v| v.len())
            + serde_json::to_vec(&conversation).map_or(0, |v| v.len());
        if bytes > self.max_bytes {
            return;
        }
        let id = response.id.clone();
        let stored = Stored {
            response: Arc::new(response),
            conversation: Arc::new(conversation),
            bytes,
        };
        let mut inner = self.lock();
        if let Some(old) = inner.by_id.insert(id.clone(), stored) {
            inner.bytes -= old.bytes;
            inner.order.retain(|k| k != &id);
        }
        inner.bytes += bytes;
        inner.order.push_back(id);
        while inner.order.len() > self.max_entries || inner.bytes > self.max_bytes {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            if let Some(old) = inner.by_id.remove(&oldest) {
                inner.bytes -= old.bytes;
            }
        }
    }

    pub fn remove(&self, id: &str) -> bool {
        let mut inner = self.lock();
        match inner.by_id.remove(id) {
            Some(old) => {
                inner.bytes -= old.bytes;
                inner.order.retain(|k| k != id);
                true
            }
            None => false,
        }
    }

    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
