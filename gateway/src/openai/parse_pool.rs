//! Where big request bodies are parsed: two threads of their own at a lower
//! CPU priority (nice +10), taking jobs from a bounded queue.
//!
//! Megabytes of JSON take milliseconds of CPU each. On the async runtime's
//! workers that time is owed to every other connection; on tokio's blocking
//! pool a flood of big bodies would start hundreds of threads. Here they wait
//! their turn, and when the machine is short of CPU they yield it to token
//! streams, small requests and the engines, which keep their priority. A full
//! queue is a 429 with Retry-After.

use super::error::ApiError;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use tokio::sync::oneshot;

const THREADS: usize = 2;
/// Bodies waiting to be parsed (each is at most the body limit, already in memory).
const QUEUE: usize = 64;
/// How much the parsing threads' nice value is raised (Linux nice values are per thread).
const NICENESS: i32 = 10;

type Job = Box<dyn FnOnce() + Send>;

fn queue() -> Option<&'static SyncSender<Job>> {
    static QUEUE_TX: OnceLock<Option<SyncSender<Job>>> = OnceLock::new();
    QUEUE_TX
        .get_or_init(|| {
            let (tx, rx) = sync_channel::<Job>(QUEUE);
            let rx = Arc::new(Mutex::new(rx));
            let mut started = 0;
            for i in 0..THREADS {
                let rx = rx.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("herd-parse-{i}"))
                    .spawn(move || work(&rx));
                match spawned {
                    Ok(_) => started += 1,
                    Err(e) => tracing::warn!("cannot start a body-parsing thread: {e}"),
                }
            }
            (started > 0).then_some(tx)
        })
        .as_ref()
}

fn work(jobs: &Mutex<Receiver<Job>>) {
    lower_priority();
    loop {
        let job = jobs.lock().unwrap_or_else(PoisonError::into_inner).recv();
        match job {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}

#[cfg(target_os = "linux")]
fn lower_priority() {
    // SAFETY: a plain syscall; on Linux it changes the calling thread's nice value only.
    let _ = unsafe { libc::nice(NICENESS) };
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

/// Runs `parse` on a parsing thread; a 429 when too many bodies wait.
pub async fn run<T: Send + 'static>(
    parse: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let busy = || ApiError::Overloaded("too many large request bodies wait to be parsed", 1);
    let queue = queue().ok_or_else(busy)?;
    let (tx, rx) = oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(parse());
    });
    match queue.try_send(job) {
        Ok(()) => {}
        Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => return Err(busy()),
    }
    rx.await.map_err(|_| {
        ApiError::InvalidJson("the request body could not be parsed (the parser stopped)".into())
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_on_a_lower_priority_thread_and_return_their_result() {
        let (name, nice) = run(|| {
            let name = std::thread::current().name().map(str::to_owned);
            // SAFETY: reads this thread's nice value.
            let nice =
                unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) };
            Ok((name, nice))
        })
        .await
        .map_err(|e| e.to_string())
        .unwrap_or_default();
        assert!(name.is_some_and(|n| n.starts_with("herd-parse-")));
        assert!(nice >= NICENESS, "nice {nice}");
        let refused = run::<()>(|| Err(ApiError::InvalidJson("bad".into()))).await;
        assert!(matches!(refused, Err(ApiError::InvalidJson(_))));
    }
}
