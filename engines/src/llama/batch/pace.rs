//! How many tokens one decode step may take: as many as the last steps show
//! fit in [`STEP_TARGET`] on the clock.
//!
//! A step's cost grows with its tokens (on a CPU nearly in proportion), and a
//! request that arrives during a step waits for it to end, so the budget keeps
//! steps short while leaving them as full as that allows: on a GPU, where a
//! step costs about the same whatever its size, it grows to the batch's
//! capacity. Steps are timed by the wall clock, the time a request waiting
//! for them sees: when other work shares the CPU (a gateway parsing floods of
//! big bodies, other processes), each token takes longer and the budget
//! shrinks with it, so waits stay short. That costs a little prefill
//! throughput on a busy machine only (small steps use llama.cpp's CPU kernels
//! less well); on an idle one the wall clock is the step's own time.
//! [`StepClock`] also reports the step's own time (the wall time less this
//! thread's wait for a CPU) for the trace log, which tells the two apart.

use std::time::{Duration, Instant};

/// How long a step should take, on the clock, when more work waits than fits in one.
pub const STEP_TARGET: Duration = Duration::from_millis(80);
/// Tokens per step, at least: two, so prompts and decoding sequences both move.
pub const MIN_TOKENS: usize = 2;
/// Tokens per step before any step was timed.
const START_TOKENS: usize = 16;

/// Tokens per step, learnt from how long steps take.
#[derive(Debug, Clone)]
pub struct Pace {
    tokens: f64,
    max: usize,
}

impl Pace {
    /// `max`: the batch's capacity.
    pub fn new(max: usize) -> Self {
        let max = max.max(MIN_TOKENS);
        Self {
            tokens: START_TOKENS.min(max) as f64,
            max,
        }
    }

    pub fn budget(&self) -> usize {
        (self.tokens as usize).clamp(MIN_TOKENS, self.max)
    }

    /// A step fed `fed` tokens of a `budget` and took `took`.
    /// A full step, or one over the target, says how many tokens fit in the
    /// target; a small quick step only says "at least this many" (its fixed
    /// cost is spread over few tokens), so it may raise the pace, never lower it.
    pub fn observe(&mut self, fed: usize, budget: usize, took: Duration) {
        if fed == 0 {
            return;
        }
        let took = took.as_secs_f64().max(1e-6);
        let target = STEP_TARGET.as_secs_f64();
        let fits = fed as f64 * target / took;
        if fed >= budget || took > target || fits > self.tokens {
            // Halfway each time: one odd step does not swing it.
            self.tokens = ((self.tokens + fits) / 2.0).clamp(MIN_TOKENS as f64, self.max as f64);
        }
    }
}

/// Times one step: its wall time, and that less this thread's wait for a CPU.
pub struct StepClock {
    started: Instant,
    waited: Option<Duration>,
}

impl StepClock {
    /// The CPU wait is read (a file in /proc) only when the trace log that
    /// reports it is on: pacing uses the wall time alone.
    pub fn start() -> Self {
        Self {
            started: Instant::now(),
            waited: tracing::enabled!(tracing::Level::TRACE)
                .then(cpu_wait)
                .flatten(),
        }
    }

    /// The step's wall time so far.
    pub fn wall_time(&self) -> Duration {
        self.started.elapsed()
    }

    /// The step's own time so far.
    pub fn own_time(&self) -> Duration {
        let wall = self.started.elapsed();
        match (self.waited, cpu_wait()) {
            (Some(before), Some(now)) => wall.saturating_sub(now.saturating_sub(before)),
            _ => wall,
        }
    }
}

/// How long this thread has waited, runnable, for a CPU since it started
/// (the second field of `/proc/thread-self/schedstat`); `None` where the
/// kernel does not say.
#[cfg(target_os = "linux")]
fn cpu_wait() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns = text.split_whitespace().nth(1)?.parse::<u64>().ok()?;
    Some(Duration::from_nanos(ns))
}

#[cfg(not(target_os = "linux"))]
fn cpu_wait() -> Option<Duration> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pace_settles_where_a_step_takes_the_target() {
        // A step costs 4 ms plus 6.5 ms a token (one thread of this project's VM).
        let cost = |n: usize| Duration::from_micros(4_000 + 6_500 * n as u64);
        let mut pace = Pace::new(512);
        for _ in 0..30 {
            let b = pace.budget();
            pace.observe(b, b, cost(b));
        }
        let b = pace.budget();
        assert!((10..=12).contains(&b), "{b}");
        // A small quick step (one probe) does not lower it.
        pace.observe(1, b, cost(1));
        assert_eq!(pace.budget(), b);
        // A fast machine (a GPU: 2 ms a step, whatever its size) grows to the batch's capacity.
        let mut fast = Pace::new(512);
        for _ in 0..30 {
            let b = fast.budget();
            fast.observe(b, b, Duration::from_millis(2));
        }
        assert_eq!(fast.budget(), 512);
    }

    #[test]
    fn a_step_s_own_time_leaves_out_the_wait_for_a_cpu() {
        let clock = StepClock::start();
        std::thread::sleep(Duration::from_millis(20));
        let own = clock.own_time();
        // Sleeping is not waiting for a CPU: it counts (a GPU step blocks the same way).
        assert!(own >= Duration::from_millis(20), "{own:?}");
        if cfg!(target_os = "linux") {
            assert!(cpu_wait().is_some(), "no /proc/thread-self/schedstat");
        }
    }
}
