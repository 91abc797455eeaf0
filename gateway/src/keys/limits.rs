//! Per-key limits: requests per minute and tokens per minute as token
//! buckets (full at the start, refilled continuously, so `rpm = N` lets N
//! requests through at once and one more every 60/N s), and concurrent
//! requests as a count. Tokens are charged as they stream and may drive the
//! token bucket below zero: a request is admitted while any tokens remain,
//! and the next waits until the debt is paid back. The answer's
//! `x-ratelimit-*` headers are written as OpenAI writes them.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The numeric limits of one key (the model allow-list is checked elsewhere).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub max_concurrency: Option<u64>,
}

#[derive(Debug)]
struct Bucket {
    capacity: f64,
    level: f64,
}

impl Bucket {
    fn full(capacity: u64) -> Self {
        Self {
            capacity: capacity as f64,
            level: capacity as f64,
        }
    }

    fn per_sec(&self) -> f64 {
        self.capacity / 60.0
    }

    fn refill(&mut self, elapsed: Duration) {
        self.level = (self.level + elapsed.as_secs_f64() * self.per_sec()).min(self.capacity);
    }

    /// Time until the level reaches `target` (a minute for a bucket that never
    /// refills: a limit of 0, possible only in a hand-edited or foreign record).
    fn until(&self, target: f64) -> Duration {
        let gap = (target - self.level).max(0.0);
        Duration::try_from_secs_f64(gap / self.per_sec()).unwrap_or(Duration::from_secs(60))
    }
}

#[derive(Debug)]
struct State {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
    in_flight: u64,
    at: Instant,
}

/// One key's limiter, shared by every request made with it on this node.
#[derive(Debug)]
pub struct KeyLimiter {
    quota: Quota,
    state: Mutex<State>,
}

/// What the headers report, taken at admission.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    requests: Option<(u64, u64, Duration)>,
    tokens: Option<(u64, u64, Duration)>,
}

/// A refusal: which limit, and when to come back.
#[derive(Debug, Clone)]
pub struct OverLimit {
    pub limit: &'static str,
    pub detail: String,
    pub retry_after: u64,
    pub snapshot: Snapshot,
}

/// Holding this is holding one of the key's concurrent requests.
#[derive(Debug)]
pub struct InFlight(Arc<KeyLimiter>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut s) = self.0.state.lock() {
            s.in_flight = s.in_flight.saturating_sub(1);
        }
    }
}

impl KeyLimiter {
    pub fn new(quota: Quota) -> Self {
        Self {
            quota,
            state: Mutex::new(State {
                requests: quota.rpm.map(Bucket::full),
                tokens: quota.tpm.map(Bucket::full),
                in_flight: 0,
                at: Instant::now(),
            }),
        }
    }

    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// Admits one request (counting it against rpm and concurrency) or says which limit it is over.
    pub fn admit(self: &Arc<Self>) -> Result<(InFlight, Snapshot), OverLimit> {
        let Ok(mut s) = self.state.lock() else {
            return Err(self.refuse("concurrency", "the limiter is unavailable".into(), 1, None));
        };
        s.refresh(Instant::now());
        if let Some(max) = self.quota.max_concurrency {
            if s.in_flight >= max {
                let detail = format!("{max} concurrent requests");
                return Err(self.refuse("concurrency", detail, 1, Some(&s)));
            }
        }
        if let Some(b) = &s.requests {
            if b.level < 1.0 {
                let (detail, wait) = (format!("{} requests per minute", b.capacity), b.until(1.0));
                return Err(self.refuse("rpm", detail, ceil_secs(wait), Some(&s)));
            }
        }
        if let Some(b) = &s.tokens {
            if b.level <= 0.0 {
                let detail = format!("{} tokens per minute", b.capacity);
                let wait = b.until(1.0);
                return Err(self.refuse("tpm", detail, ceil_secs(wait), Some(&s)));
            }
        }
        if let Some(b) = &mut s.requests {
            b.level -= 1.0;
        }
        s.in_flight += 1;
        Ok((InFlight(self.clone()), s.snapshot()))
    }

    /// Charges tokens that streamed (prompt and completion).
    pub fn charge(&self, tokens: u64) {
        if let Ok(mut s) = self.state.lock() {
            s.refresh(Instant::now());
            if let Some(b) = &mut s.tokens {
                b.level -= tokens as f64;
            }
        }
    }

    fn refuse(
        &self,
        limit: &'static str,
        detail: String,
        retry_after: u64,
        state: Option<&State>,
    ) -> OverLimit {
        OverLimit {
            limit,
            detail,
            retry_after: retry_after.max(1),
            snapshot: state.map(State::snapshot).unwrap_or_default(),
        }
    }
}

impl State {
    fn refresh(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at);
        self.at = now;
        for b in [&mut self.requests, &mut self.tokens].into_iter().flatten() {
            b.refill(elapsed);
        }
    }

    fn snapshot(&self) -> Snapshot {
        let report = |b: &Bucket| {
            let remaining = b.level.max(0.0).floor() as u64;
            (b.capacity as u64, remaining, b.until(b.capacity))
        };
        Snapshot {
            requests: self.requests.as_ref().map(report),
            tokens: self.tokens.as_ref().map(report),
        }
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs_f64().ceil() as u64
}

const LIMIT_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
const REMAINING_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-requests");
const RESET_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-reset-requests");
const LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
const REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");
const RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");

impl Snapshot {
    /// The `x-ratelimit-*` headers for the limits the key has.
    pub fn write(&self, headers: &mut HeaderMap) {
        let mut put = |name: HeaderName, value: String| {
            if let Ok(v) = HeaderValue::try_from(value) {
                headers.insert(name, v);
            }
        };
        if let Some((limit, remaining, reset)) = self.requests {
            put(LIMIT_REQUESTS, limit.to_string());
            put(REMAINING_REQUESTS, remaining.to_string());
            put(RESET_REQUESTS, openai_duration(reset));
        }
        if let Some((limit, remaining, reset)) = self.tokens {
            put(LIMIT_TOKENS, limit.to_string());
            put(REMAINING_TOKENS, remaining.to_string());
            put(RESET_TOKENS, openai_duration(reset));
        }
    }
}

/// OpenAI's reset format: `20ms`, `1.5s`, `6m0s`.
pub fn openai_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = |ms: u128| {
        let text = format!("{}.{:03}", ms / 1000, ms % 1000);
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    };
    if ms < 60_000 {
        format!("{}s", secs(ms))
    } else {
        format!("{}m{}s", ms / 60_000, secs(ms % 60_000))
    }
}

/// Charges a request's tokens to its key as they stream; travels in the
/// request's `RequestTimer`.
#[derive(Debug, Clone)]
pub struct TokenMeter {
    limiter: Arc<KeyLimiter>,
    charged: u64,
}

impl TokenMeter {
    pub fn new(limiter: Arc<KeyLimiter>) -> Self {
        Self {
            limiter,
            charged: 0,
        }
    }

    /// One more generated token reached the client.
    pub fn token(&mut self) {
        self.charged += 1;
        self.limiter.charge(1);
    }

    /// The request ended with these totals (prompt + completion): charge what is left.
    pub fn settle(&mut self, total: u64) {
        if total > self.charged {
            self.limiter.charge(total - self.charged);
            self.charged = total;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(rpm: Option<u64>, tpm: Option<u64>, c: Option<u64>) -> Arc<KeyLimiter> {
        Arc::new(KeyLimiter::new(Quota {
            rpm,
            tpm,
            max_concurrency: c,
        }))
    }

    #[test]
    fn rpm_lets_exactly_n_through() {
        let l = quota(Some(3), None, None);
        let held: Vec<_> = (0..3).filter_map(|_| l.admit().ok()).collect();
        assert_eq!(held.len(), 3);
        match l.admit() {
            Err(e) => {
                assert_eq!(e.limit, "rpm");
                assert!((19..=20).contains(&e.retry_after), "{}", e.retry_after);
            }
            Ok(_) => unreachable!("the fourth request must be refused"),
        }
    }

    #[test]
    fn tpm_debt_blocks_until_paid_and_concurrency_counts() {
        let l = quota(None, Some(100), Some(1));
        let first = l.admit();
        assert!(first.is_ok());
        assert_eq!(l.admit().err().map(|e| e.limit), Some("concurrency"));
        let mut meter = TokenMeter::new(l.clone());
        meter.token();
        meter.settle(130);
        drop(first);
        let refused = l.admit().err();
        assert_eq!(refused.as_ref().map(|e| e.limit), Some("tpm"));
        assert!(refused.is_some_and(|e| e.retry_after >= 18));
    }

    #[test]
    fn a_zero_limit_refuses_without_panicking() {
        let l = quota(Some(0), Some(0), Some(0));
        let refused = l.admit().err();
        assert_eq!(refused.map(|e| e.retry_after), Some(1));
        let l = quota(Some(0), None, None);
        assert_eq!(l.admit().err().map(|e| e.retry_after), Some(60));
    }

    #[test]
    fn headers_in_openai_format() {
        assert_eq!(openai_duration(Duration::from_millis(20)), "20ms");
        assert_eq!(openai_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(openai_duration(Duration::from_secs(360)), "6m0s");
        let l = quota(Some(60), Some(1000), None);
        let (_held, snap) = l
            .admit()
            .map_err(|e| e.detail)
            .unwrap_or_else(|_| unreachable!());
        let mut h = HeaderMap::new();
        snap.write(&mut h);
        assert_eq!(h["x-ratelimit-limit-requests"], "60");
        assert_eq!(h["x-ratelimit-remaining-requests"], "59");
        assert_eq!(h["x-ratelimit-reset-requests"], "1s");
        assert_eq!(h["x-ratelimit-remaining-tokens"], "1000");
        assert_eq!(h["x-ratelimit-reset-tokens"], "0ms");
    }
}
