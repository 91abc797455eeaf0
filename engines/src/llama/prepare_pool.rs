//! The engine host's prepare workers: prompts are templated and tokenized
//! here, off the reader thread, so a huge prompt never holds up another
//! request's Generate or Cancel.
//!
//! Two workers share one bounded queue ordered by size, smallest first. One of
//! them only takes small prompts: a small prompt waits for other small ones at
//! most, never behind a big prompt's tokenization, while big prompts are
//! prepared one at a time (the CPU they take is the batch loop's too). A big
//! prompt that fits the context costs at most `ctx_size × longest token` bytes
//! of tokenizing; one that cannot fit is refused before tokenizing
//! ([`PromptLimit`]).

use super::prepare::{prepare_within, PromptLimit};
use super::protocol::{FromHost, RequestId};
use crate::{EngineError, PromptInput};
use llama_cpp_2::model::{LlamaChatTemplate, LlamaModel};
use std::collections::BTreeMap;
use std::sync::mpsc::SyncSender;
use std::sync::{Condvar, Mutex, PoisonError};

/// A prompt up to this size is "small": the small-prompt worker takes it.
pub const SMALL_PROMPT_BYTES: usize = 64 * 1024;
/// Bounds on what waits to be prepared (beyond that: 503, retry later).
const MAX_JOBS: usize = 256;
const MAX_BYTES: usize = 64 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Takes the smallest prompt waiting, whatever its size.
    Any,
    /// Takes only prompts up to [`SMALL_PROMPT_BYTES`].
    Small,
}

#[derive(Debug)]
pub struct Job {
    pub id: RequestId,
    pub input: PromptInput,
}

#[derive(Default)]
struct Waiting {
    /// By (size, arrival): the first entry is the smallest, oldest first among equals.
    jobs: BTreeMap<(usize, u64), Job>,
    bytes: usize,
    arrivals: u64,
    closed: bool,
}

#[derive(Default)]
pub struct PrepareQueue {
    waiting: Mutex<Waiting>,
    changed: Condvar,
}

/// A prompt's size for ordering and bounds: the text the client sent.
pub fn prompt_bytes(input: &PromptInput) -> usize {
    match input {
        PromptInput::Text(text) => text.len(),
        PromptInput::Chat(messages) => messages
            .iter()
            .map(|m| m.role.len() + m.content.len())
            .sum(),
        PromptInput::Tokens(ids) => ids.len() * 4,
    }
}

impl PrepareQueue {
    /// Queues a prompt, or hands it back with the reason it was refused.
    pub fn push(&self, job: Job) -> Result<(), (Job, EngineError)> {
        let bytes = prompt_bytes(&job.input);
        let mut w = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        // One prompt larger than the byte bound is still taken when nothing else waits.
        let full = w.jobs.len() >= MAX_JOBS || (!w.jobs.is_empty() && w.bytes + bytes > MAX_BYTES);
        if w.closed || full {
            let reason = "the engine has too many prompts waiting to be tokenized";
            return Err((job, EngineError::Unavailable(reason.into())));
        }
        w.arrivals += 1;
        let key = (bytes, w.arrivals);
        w.jobs.insert(key, job);
        w.bytes += bytes;
        drop(w);
        self.changed.notify_all();
        Ok(())
    }

    /// The next prompt for `lane`, waiting for one; `None` once closed.
    pub fn pop(&self, lane: Lane) -> Option<Job> {
        let mut w = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if w.closed {
                return None;
            }
            let fits =
                |&(bytes, _): &(usize, u64)| lane == Lane::Any || bytes <= SMALL_PROMPT_BYTES;
            if let Some(key) = w.jobs.keys().next().copied().filter(fits) {
                w.bytes -= key.0;
                return w.jobs.remove(&key);
            }
            w = self.changed.wait(w).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Wakes the workers for good (the gateway is gone).
    pub fn close(&self) {
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed = true;
        self.changed.notify_all();
    }
}

/// What a prepare worker needs, shared by all of them.
pub struct Preparer<'m> {
    pub model: &'m LlamaModel,
    pub template: Option<&'m LlamaChatTemplate>,
    pub limit: PromptLimit,
}

impl Preparer<'_> {
    /// One worker: prepares `lane`'s prompts until the queue closes.
    pub fn work(&self, queue: &PrepareQueue, lane: Lane, events: &SyncSender<FromHost>) {
        while let Some(Job { id, input }) = queue.pop(lane) {
            let result = prepare_within(self.model, self.template, &self.limit, &input);
            if events.send(FromHost::Prepared { id, result }).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn job(id: RequestId, bytes: usize) -> Job {
        Job {
            id,
            input: PromptInput::Text("x".repeat(bytes)),
        }
    }

    #[test]
    fn smallest_first_and_the_small_lane_never_takes_a_big_prompt() {
        let q = PrepareQueue::default();
        for (id, bytes) in [(1, 5_000_000), (2, 10), (3, 100_000), (4, 10), (5, 20)] {
            assert!(q.push(job(id, bytes)).is_ok());
        }
        let ids = |lane, n| {
            (0..n)
                .filter_map(|_| q.pop(lane))
                .map(|j| j.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            ids(Lane::Small, 3),
            vec![2, 4, 5],
            "small ones, oldest first among equals"
        );
        assert_eq!(ids(Lane::Any, 2), vec![3, 1]);
    }

    #[test]
    fn the_small_lane_waits_while_only_big_prompts_wait() {
        let q = Arc::new(PrepareQueue::default());
        assert!(q.push(job(1, SMALL_PROMPT_BYTES + 1)).is_ok());
        let q2 = q.clone();
        let small = std::thread::spawn(move || q2.pop(Lane::Small).map(|j| j.id));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!small.is_finished(), "took a big prompt");
        assert!(q.push(job(2, SMALL_PROMPT_BYTES)).is_ok());
        assert_eq!(small.join().ok().flatten(), Some(2));
        assert_eq!(q.pop(Lane::Any).map(|j| j.id), Some(1));
        q.close();
        assert!(q.pop(Lane::Any).is_none());
    }

    #[test]
    fn the_queue_is_bounded_in_jobs_and_bytes() {
        let q = PrepareQueue::default();
        assert!(
            q.push(job(0, MAX_BYTES + 1)).is_ok(),
            "alone, even a huge one is taken"
        );
        assert!(matches!(
            q.push(job(1, 1)),
            Err((_, EngineError::Unavailable(_)))
        ));
        assert!(q.pop(Lane::Any).is_some());
        for id in 0..MAX_JOBS {
            assert!(q.push(job(id as RequestId, 1)).is_ok());
        }
        assert!(q.push(job(9999, 1)).is_err());
    }
}
