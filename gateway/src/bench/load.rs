//! The load loop: a fixed number of requests or a fixed duration, either
//! closed-loop (N workers, each sends again as soon as its answer ends) or
//! open-loop at a fixed arrival rate (capped at N in flight).

use super::client::Target;
use super::prompt::Prompts;
use super::stats::Collector;
use indicatif::ProgressBar;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Semaphore};

pub struct Plan {
    pub concurrency: usize,
    pub requests: u64,
    pub duration: Option<Duration>,
    pub rate: Option<f64>,
    /// Closed loop: wait out a refusal's Retry-After before the next request.
    pub honor_retry_after: bool,
}

impl Plan {
    /// Whether request number `index`, about to start at `elapsed`, is still part of the run.
    fn wants(&self, index: u64, elapsed: Duration) -> bool {
        match self.duration {
            Some(limit) => elapsed < limit,
            None => index < self.requests,
        }
    }
}

type Outcome = Result<super::client::Done, super::client::Failure>;

/// Runs the plan; returns what was measured and the wall time from the first
/// start to the last answer.
pub async fn run(
    target: Arc<Target>,
    prompts: Arc<Prompts>,
    plan: Plan,
    progress: &ProgressBar,
) -> (Collector, Duration) {
    let plan = Arc::new(plan);
    // Bounded: a slow collector holds workers back rather than growing memory.
    let (tx, mut rx) = mpsc::channel::<Outcome>(plan.concurrency.max(1) * 2);
    let start = Instant::now();
    match plan.rate {
        Some(rate) => {
            tokio::spawn(open_loop(target, prompts, plan.clone(), rate, start, tx));
        }
        None => {
            let next = Arc::new(AtomicU64::new(0));
            for _ in 0..plan.concurrency.max(1) {
                let worker = closed_loop_worker(
                    target.clone(),
                    prompts.clone(),
                    plan.clone(),
                    next.clone(),
                    start,
                    tx.clone(),
                );
                tokio::spawn(worker);
            }
            drop(tx);
        }
    }
    let mut collector = Collector::default();
    let mut last_answer = start;
    while let Some(outcome) = rx.recv().await {
        last_answer = Instant::now();
        collector.add(outcome);
        match plan.duration {
            Some(limit) => progress.set_position(start.elapsed().min(limit).as_millis() as u64),
            None => progress.inc(1),
        }
        progress.set_message(format!(
            "{} ok, {} failed",
            collector.completed,
            collector.failed()
        ));
    }
    (collector, last_answer - start)
}

async fn closed_loop_worker(
    target: Arc<Target>,
    prompts: Arc<Prompts>,
    plan: Arc<Plan>,
    next: Arc<AtomicU64>,
    start: Instant,
    tx: mpsc::Sender<Outcome>,
) {
    loop {
        let index = next.fetch_add(1, Ordering::Relaxed);
        if !plan.wants(index, start.elapsed()) {
            return;
        }
        let outcome = target.send(&prompts.text(index)).await;
        let wait = match &outcome {
            Err(failure) if plan.honor_retry_after => failure.retry_after(),
            _ => None,
        };
        if tx.send(outcome).await.is_err() {
            return;
        }
        if let Some(secs) = wait {
            // herd caps Retry-After at 60 s; a stranger value must not stall the run.
            tokio::time::sleep(Duration::from_secs(secs.min(60))).await;
        }
    }
}

async fn open_loop(
    target: Arc<Target>,
    prompts: Arc<Prompts>,
    plan: Arc<Plan>,
    rate: f64,
    start: Instant,
    tx: mpsc::Sender<Outcome>,
) {
    let in_flight = Arc::new(Semaphore::new(plan.concurrency.max(1)));
    let period = Duration::from_secs_f64(1.0 / rate.max(1e-6));
    let mut index = 0u64;
    loop {
        let due = start + period.mul_f64(index as f64);
        tokio::time::sleep_until(due.into()).await;
        if !plan.wants(index, start.elapsed()) {
            return;
        }
        // When the cap is reached the schedule slips; the report's achieved
        // rate then shows the offered rate was not sustained.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let (target, tx, prompt) = (target.clone(), tx.clone(), prompts.text(index));
        tokio::spawn(async move {
            let outcome = target.send(&prompt).await;
            drop(permit);
            let _ = tx.send(outcome).await;
        });
        index += 1;
    }
}

/// Requests sent one after another before the clock starts (caches,
/// connections); their outcomes are not reported. Returns the last error when
/// every one of them failed.
pub async fn warm_up(target: &Target, prompts: &Prompts, count: u64) -> Option<String> {
    let mut last_error = None;
    let mut any_ok = false;
    for i in 0..count {
        match target.send(&prompts.text(u64::MAX - i)).await {
            Ok(_) => any_ok = true,
            Err(e) => last_error = Some(e.to_string()),
        }
    }
    if any_ok {
        None
    } else {
        last_error
    }
}
