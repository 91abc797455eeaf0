//! The circuit breaker of one upstream: closed → open (for a cooldown) →
//! half-open (one trial) → closed again, or open again. Decisions are the
//! pure [`Health::apply`] and [`Health::admit`]; [`Breaker`] holds the state
//! behind a mutex held for a few instructions (no await inside).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Outcomes that move the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// A request was answered.
    Success,
    /// The active health probe was answered: closes a circuit whose
    /// cooldown has passed (it is the trial), changes nothing otherwise.
    ProbeOk,
    /// A request or probe failed in a way that says the upstream is unwell.
    Failure(&'static str),
    /// The upstream said 429 with Retry-After: send nothing before then.
    HoldOff(Duration),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Circuit {
    Closed,
    /// No requests until `until`; then one trial.
    Open {
        until: Instant,
    },
    /// One trial request is allowed; `trial` says since when it is out
    /// (a trial whose outcome never came, its client gone, is replaced
    /// after a cooldown).
    HalfOpen {
        trial: Option<Instant>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub failure_threshold: u32,
    pub cooldown: Duration,
}

/// Whether a request may be sent now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// The half-open trial: its outcome decides the circuit.
    Trial,
    /// Not before this many seconds (at least 1).
    No {
        retry_after: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub circuit: Circuit,
    /// Failures since the last success.
    pub consecutive: u32,
    /// The last 10 outcomes, newest in bit 0 (1 = failure), and how many are known.
    window: u16,
    known: u8,
    /// Rate limited by the upstream until then.
    pub hold_until: Option<Instant>,
    /// The last failure's reason (a bounded label), for `/health` and `/cluster`.
    pub last_failure: Option<&'static str>,
}

const WINDOW: u8 = 10;

impl Default for Health {
    fn default() -> Self {
        Self {
            circuit: Circuit::Closed,
            consecutive: 0,
            window: 0,
            known: 0,
            hold_until: None,
            last_failure: None,
        }
    }
}

fn secs_until(t: Instant, now: Instant) -> u64 {
    t.saturating_duration_since(now)
        .as_secs_f64()
        .ceil()
        .max(1.0) as u64
}

impl Health {
    /// The state after `signal` at `now`.
    pub fn apply(mut self, signal: Signal, now: Instant, policy: Policy) -> Self {
        match signal {
            Signal::HoldOff(d) => {
                self.hold_until = Some(now + d);
                self.last_failure = Some("rate_limited");
                return self;
            }
            Signal::ProbeOk => {
                let rested = match self.circuit {
                    Circuit::Open { until } => now >= until,
                    Circuit::HalfOpen { .. } => true,
                    Circuit::Closed => false,
                };
                if rested {
                    self.circuit = Circuit::Closed;
                    self.consecutive = 0;
                }
            }
            Signal::Success => {
                self.consecutive = 0;
                self.push(false);
                if !matches!(self.circuit, Circuit::Open { until } if now < until) {
                    self.circuit = Circuit::Closed;
                }
            }
            Signal::Failure(reason) => {
                self.consecutive = self.consecutive.saturating_add(1);
                self.push(true);
                self.last_failure = Some(reason);
                let failing = match self.circuit {
                    Circuit::Closed => {
                        self.consecutive >= policy.failure_threshold
                            || (self.known >= WINDOW
                                && self.window.count_ones() * 2 >= u32::from(WINDOW))
                    }
                    Circuit::HalfOpen { .. } => true,
                    Circuit::Open { until } => now >= until,
                };
                if failing {
                    self.circuit = Circuit::Open {
                        until: now + policy.cooldown,
                    };
                    self.window = 0;
                    self.known = 0;
                }
            }
        }
        self
    }

    fn push(&mut self, failed: bool) {
        self.window = ((self.window << 1) | u16::from(failed)) & ((1 << WINDOW) - 1);
        self.known = (self.known + 1).min(WINDOW);
    }

    /// Whether a request may go now, and the state after it goes.
    pub fn admit(mut self, now: Instant, policy: Policy) -> (Admit, Self) {
        if let Some(hold) = self.hold_until {
            if now < hold {
                return (
                    Admit::No {
                        retry_after: secs_until(hold, now),
                    },
                    self,
                );
            }
            self.hold_until = None;
        }
        match self.circuit {
            Circuit::Closed => (Admit::Yes, self),
            Circuit::Open { until } if now < until => (
                Admit::No {
                    retry_after: secs_until(until, now),
                },
                self,
            ),
            // The trial is out: wait for its outcome.
            Circuit::HalfOpen { trial: Some(since) } if now < since + policy.cooldown => {
                (Admit::No { retry_after: 1 }, self)
            }
            Circuit::Open { .. } | Circuit::HalfOpen { .. } => {
                self.circuit = Circuit::HalfOpen { trial: Some(now) };
                (Admit::Trial, self)
            }
        }
    }

    /// `closed`, `open` or `half_open`, as `/health` and `/cluster` show it.
    pub fn label(&self, now: Instant) -> &'static str {
        match self.circuit {
            Circuit::Closed if self.hold_until.is_some_and(|h| now < h) => "rate_limited",
            Circuit::Closed => "closed",
            Circuit::Open { until } if now < until => "open",
            Circuit::Open { .. } | Circuit::HalfOpen { .. } => "half_open",
        }
    }

    /// Whether requests are being sent (for `herd_backend_up`).
    pub fn is_up(&self, now: Instant) -> bool {
        matches!(self.label(now), "closed" | "half_open")
    }
}

/// The shared breaker of one upstream deployment.
#[derive(Debug)]
pub struct Breaker {
    state: Mutex<Health>,
    policy: Policy,
}

impl Breaker {
    pub fn new(policy: Policy) -> Self {
        Self {
            state: Mutex::new(Health::default()),
            policy,
        }
    }

    pub fn signal(&self, signal: Signal) {
        if let Ok(mut s) = self.state.lock() {
            *s = s.clone().apply(signal, Instant::now(), self.policy);
        }
    }

    pub fn admit(&self) -> Admit {
        match self.state.lock() {
            Ok(mut s) => {
                let (admit, next) = s.clone().admit(Instant::now(), self.policy);
                *s = next;
                admit
            }
            Err(_) => Admit::Yes,
        }
    }

    /// Whether a request would be refused now, without taking the trial.
    pub fn resting(&self) -> Option<u64> {
        match self.snapshot().admit(Instant::now(), self.policy).0 {
            Admit::No { retry_after } => Some(retry_after),
            Admit::Yes | Admit::Trial => None,
        }
    }

    pub fn snapshot(&self) -> Health {
        self.state.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Policy = Policy {
        failure_threshold: 3,
        cooldown: Duration::from_secs(10),
    };

    #[test]
    fn consecutive_failures_open_then_one_trial_closes() {
        let t0 = Instant::now();
        let mut h = Health::default();
        for _ in 0..2 {
            h = h.apply(Signal::Failure("status_5xx"), t0, P);
        }
        assert_eq!(h.circuit, Circuit::Closed);
        h = h.apply(Signal::Failure("connect"), t0, P);
        assert_eq!(h.label(t0), "open");
        let (admit, h2) = h.clone().admit(t0 + Duration::from_secs(3), P);
        assert_eq!(admit, Admit::No { retry_after: 7 });
        let later = t0 + Duration::from_secs(11);
        let (admit, h2) = h2.admit(later, P);
        assert_eq!(admit, Admit::Trial);
        let (second, h2) = h2.admit(later, P);
        assert!(matches!(second, Admit::No { .. }), "one trial at a time");
        let lost = h2.clone().admit(later + P.cooldown, P).0;
        assert_eq!(lost, Admit::Trial, "a trial never reported is replaced");
        let closed = h2.clone().apply(Signal::Success, later, P);
        assert_eq!(closed.label(later), "closed");
        let reopened = h2.apply(Signal::Failure("connect"), later, P);
        assert_eq!(
            reopened.circuit,
            Circuit::Open {
                until: later + P.cooldown
            }
        );
    }

    #[test]
    fn a_probe_closes_only_after_the_cooldown() {
        let t0 = Instant::now();
        let mut h = Health::default();
        for _ in 0..3 {
            h = h.apply(Signal::Failure("connect"), t0, P);
        }
        let early = h
            .clone()
            .apply(Signal::ProbeOk, t0 + Duration::from_secs(1), P);
        assert_eq!(early.label(t0 + Duration::from_secs(1)), "open");
        let late = t0 + Duration::from_secs(10);
        assert_eq!(h.apply(Signal::ProbeOk, late, P).label(late), "closed");
    }

    #[test]
    fn half_of_the_last_ten_failing_opens_even_with_successes_between() {
        let t0 = Instant::now();
        let mut h = Health::default();
        for i in 0..10 {
            let s = if i % 2 == 1 {
                Signal::Failure("status_5xx")
            } else {
                Signal::Success
            };
            h = h.apply(s, t0, P);
        }
        assert_eq!(h.label(t0), "open");
    }

    #[test]
    fn retry_after_holds_requests_without_opening() {
        let t0 = Instant::now();
        let h = Health::default().apply(Signal::HoldOff(Duration::from_secs(2)), t0, P);
        assert_eq!(h.label(t0), "rate_limited");
        assert_eq!(h.clone().admit(t0, P).0, Admit::No { retry_after: 2 });
        let (admit, h) = h.admit(t0 + Duration::from_secs(2), P);
        assert_eq!(admit, Admit::Yes);
        assert_eq!(h.circuit, Circuit::Closed);
    }

    #[test]
    fn a_success_during_the_cooldown_does_not_close_early() {
        let t0 = Instant::now();
        let mut h = Health::default();
        for _ in 0..3 {
            h = h.apply(Signal::Failure("connect"), t0, P);
        }
        h = h.apply(Signal::Success, t0 + Duration::from_secs(1), P);
        assert_eq!(h.label(t0 + Duration::from_secs(1)), "open");
    }
}
