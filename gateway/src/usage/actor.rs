//! The recorder actor: the one task that writes the usage store. It takes
//! records from a bounded channel, writes them in one transaction per batch
//! (`flush_rows` records, or whatever arrived within `flush_ms`), and every
//! `rollup_interval` moves raw rows past the retention horizon into daily
//! totals. On shutdown it drains the channel and writes what is left.
//! A store that cannot be opened at start (PostgreSQL down, a full disk) does
//! not stop herd: the actor retries (1 s, doubling to 30 s) while records
//! wait in the channel, and reports answer 503 until it is open.

use super::store::{Location, Store, StoreCell, DAY_MS};
use super::{now_ms, Recorder, UsageRecord, UserMetrics};
use herd_config::UsageSettings;
use prometheus::IntCounter;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// The accounting: the request path's [`Recorder`], the store for reports
/// (once open), and the actor, which [`UsageService::run`] starts and
/// [`UsageService::shutdown`] stops (and flushes).
pub struct UsageService {
    pub recorder: Recorder,
    pub store: StoreCell,
    /// The actor until `run` spawns it.
    actor: Option<(Actor, Timing)>,
    stop: Option<oneshot::Sender<()>>,
    stop_rx: Option<oneshot::Receiver<()>>,
    task: Option<JoinHandle<()>>,
}

struct Timing {
    flush_every: Duration,
    rollup_every: Duration,
}

/// The accounting for the store at `location`: records queue from now on;
/// nothing is opened or written until [`UsageService::run`].
pub fn start(
    location: Location,
    settings: &UsageSettings,
    dropped: IntCounter,
    users: UserMetrics,
) -> UsageService {
    let cell = StoreCell::default();
    let (tx, rx) = mpsc::channel(settings.queue);
    let (stop_tx, stop_rx) = oneshot::channel();
    let recorder = Recorder::new(tx, dropped, users);
    let actor = Actor {
        store: None,
        location,
        cell: cell.clone(),
        rx,
        batch: Vec::with_capacity(settings.flush_rows),
        flush_rows: settings.flush_rows,
        max_pending: settings.queue.max(settings.flush_rows),
        retention_ms: i64::from(settings.retention_days) * DAY_MS,
        recorder: recorder.clone(),
    };
    let timing = Timing {
        flush_every: Duration::from_millis(settings.flush_ms),
        rollup_every: settings.rollup_interval,
    };
    UsageService {
        recorder,
        store: cell,
        actor: Some((actor, timing)),
        stop: Some(stop_tx),
        stop_rx: Some(stop_rx),
        task: None,
    }
}

impl UsageService {
    /// What the HTTP layer holds.
    pub fn handle(&self) -> super::UsageHandle {
        super::UsageHandle {
            recorder: self.recorder.clone(),
            store: self.store.clone(),
        }
    }

    /// Spawns the actor: it opens the store (retrying until it can) and writes.
    /// `herd serve` calls this once the node's own state (its id) is on disk,
    /// so that on a nearly full disk the id gets the room first.
    pub fn run(&mut self) {
        if let (Some((actor, timing)), Some(stop)) = (self.actor.take(), self.stop_rx.take()) {
            self.task = Some(tokio::spawn(actor.run(
                timing.flush_every,
                timing.rollup_every,
                stop,
            )));
        }
    }

    /// Writes every record queued so far and stops the actor.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                tracing::error!("the usage writer failed: {e}");
            }
        }
        if let Some(store) = self.store.get() {
            store.close().await;
        }
    }
}

struct Actor {
    /// `None` until `location` opens.
    store: Option<Store>,
    location: Location,
    cell: StoreCell,
    rx: mpsc::Receiver<UsageRecord>,
    batch: Vec<UsageRecord>,
    flush_rows: usize,
    /// Records kept for a retry while the database fails; more are dropped (counted).
    max_pending: usize,
    retention_ms: i64,
    /// For counting records this actor has to drop.
    recorder: Recorder,
}

impl Actor {
    async fn run(
        mut self,
        flush_every: Duration,
        rollup_every: Duration,
        mut stop: oneshot::Receiver<()>,
    ) {
        if !self.open(&mut stop).await {
            let waiting = self.rx.len();
            self.rx.close();
            if waiting > 0 {
                self.recorder.dropped(
                    u64::try_from(waiting).unwrap_or(u64::MAX),
                    "herd stopped before the usage database could be opened",
                );
            }
            return;
        }
        let mut flush_tick = tokio::time::interval(flush_every);
        flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first roll-up runs at start.
        let mut rollup_tick = tokio::time::interval(rollup_every);
        rollup_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                got = self.rx.recv() => match got {
                    Some(record) => {
                        self.batch.push(record);
                        if self.batch.len() >= self.flush_rows {
                            self.flush().await;
                        }
                    }
                    None => break,
                },
                _ = flush_tick.tick() => self.flush().await,
                _ = rollup_tick.tick() => self.roll_up().await,
                _ = &mut stop => break,
            }
        }
        // Shutting down: what is queued now is all there will be.
        self.rx.close();
        while let Some(record) = self.rx.recv().await {
            self.batch.push(record);
        }
        let n = self.batch.len();
        self.flush().await;
        if self.batch.is_empty() {
            tracing::info!(rows = n, "usage records written on shutdown");
        }
    }

    /// Opens the store, retrying until it opens (true) or herd stops (false).
    async fn open(&mut self, stop: &mut oneshot::Receiver<()>) -> bool {
        let mut backoff = Duration::from_secs(1);
        let mut attempt = 0_u32;
        loop {
            attempt += 1;
            tokio::select! {
                opened = self.location.open() => match opened {
                    Ok(store) => {
                        if attempt > 1 {
                            tracing::info!("usage database open after {attempt} attempts: recording resumes");
                        }
                        self.cell.set(store.clone());
                        self.store = Some(store);
                        return true;
                    }
                    Err(e) => tracing::error!(
                        queued = self.rx.len(),
                        "cannot open the usage database ({}), retrying in {backoff:?}; \
                         requests' usage waits in the queue (past it: dropped and counted): {e}",
                        self.location
                    ),
                },
                _ = &mut *stop => return false,
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = &mut *stop => return false,
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    async fn flush(&mut self) {
        let Some(store) = &self.store else {
            return;
        };
        if self.batch.is_empty() {
            return;
        }
        match store.insert(&self.batch).await {
            Ok(()) => self.batch.clear(),
            Err(e) => {
                tracing::error!(
                    rows = self.batch.len(),
                    "cannot write usage records (kept for a retry): {e}"
                );
                if self.batch.len() > self.max_pending {
                    let excess = self.batch.len() - self.max_pending;
                    self.batch.drain(..excess);
                    self.recorder.dropped(
                        u64::try_from(excess).unwrap_or(u64::MAX),
                        "the usage database keeps failing",
                    );
                }
            }
        }
    }

    async fn roll_up(&mut self) {
        // Whole days only, so a day is either raw or rolled up.
        let Some(store) = &self.store else {
            return;
        };
        let cutoff = (now_ms() - self.retention_ms).div_euclid(DAY_MS) * DAY_MS;
        match store.roll_up(cutoff).await {
            Ok(0) => {}
            Ok(moved) => tracing::info!(
                rows = moved,
                "usage rows past the retention horizon rolled up into daily totals"
            ),
            Err(e) => tracing::error!("cannot roll up old usage rows: {e}"),
        }
    }
}
