//! Aggregation of request outcomes into the report's numbers: percentiles by
//! nearest rank over sorted vectors (runs are thousands of samples, not millions).

use super::client::{Done, Failure};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Percentiles of one quantity, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Summary {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
}

/// Nearest-rank percentile of a sorted, non-empty slice (q in [0, 1]).
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn summarize(mut values: Vec<f64>) -> Option<Summary> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    Some(Summary {
        p50: percentile(&values, 0.50),
        p90: percentile(&values, 0.90),
        p99: percentile(&values, 0.99),
        mean,
        min: values[0],
        max: values[values.len() - 1],
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One error bucket: how many, and the first message seen (to say why).
#[derive(Debug, Default, Clone, Serialize)]
pub struct ErrorBucket {
    pub count: u64,
    /// How many of them told the client when to retry (a Retry-After header).
    pub with_retry_after: u64,
    pub example: String,
}

/// Everything kept from the measured requests.
#[derive(Debug, Default)]
pub struct Collector {
    pub completed: u64,
    /// Completed after one resend (see `Target::exchange`).
    pub retried: u64,
    pub output_tokens: u64,
    pub prompt_tokens: u64,
    pub errors: BTreeMap<String, ErrorBucket>,
    ttft: Vec<f64>,
    itl: Vec<f64>,
    e2e: Vec<f64>,
    /// Decode rate of each stream: tokens after the first ÷ time after the first.
    stream_rate: Vec<f64>,
}

impl Collector {
    pub fn add(&mut self, outcome: Result<Done, Failure>) {
        match outcome {
            Ok(done) => self.add_done(done),
            Err(failure) => {
                let bucket = self.errors.entry(failure.key()).or_default();
                if bucket.count == 0 {
                    bucket.example = failure.to_string();
                }
                bucket.count += 1;
                bucket.with_retry_after += u64::from(failure.retry_after().is_some());
            }
        }
    }

    fn add_done(&mut self, done: Done) {
        self.completed += 1;
        self.retried += u64::from(done.retried);
        self.output_tokens += done.output_tokens;
        self.prompt_tokens += done.prompt_tokens.unwrap_or(0);
        self.e2e.push(ms(done.e2e));
        if let Some(ttft) = done.ttft {
            self.ttft.push(ms(ttft));
            let decode = done.e2e.saturating_sub(ttft).as_secs_f64();
            if done.output_tokens > 1 && decode > 0.0 {
                self.stream_rate
                    .push((done.output_tokens - 1) as f64 / decode);
            }
        }
        self.itl.extend(done.gaps.into_iter().map(ms));
    }

    pub fn failed(&self) -> u64 {
        self.errors.values().map(|b| b.count).sum()
    }

    pub fn ttft(&self) -> Option<Summary> {
        summarize(self.ttft.clone())
    }
    pub fn itl(&self) -> Option<Summary> {
        summarize(self.itl.clone())
    }
    pub fn e2e(&self) -> Option<Summary> {
        summarize(self.e2e.clone())
    }
    /// Per-stream decode rate in tokens/s (a rate, not milliseconds).
    pub fn stream_rate(&self) -> Option<Summary> {
        summarize(self.stream_rate.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s = summarize((1..=100).map(f64::from).collect()).unwrap_or_else(|| unreachable!());
        assert_eq!(
            (s.p50, s.p90, s.p99, s.min, s.max),
            (50.0, 90.0, 99.0, 1.0, 100.0)
        );
        assert!((s.mean - 50.5).abs() < 1e-9);
        let one = summarize(vec![7.0]).unwrap_or_else(|| unreachable!());
        assert_eq!((one.p50, one.p99), (7.0, 7.0));
        assert!(summarize(Vec::new()).is_none());
    }

    #[test]
    fn collector_counts_tokens_rates_and_errors_by_bucket() {
        let mut c = Collector::default();
        c.add(Ok(Done {
            ttft: Some(Duration::from_millis(100)),
            e2e: Duration::from_millis(1100),
            output_tokens: 11,
            prompt_tokens: Some(5),
            gaps: vec![Duration::from_millis(100); 10],
            retried: true,
        }));
        c.add(Err(Failure::Status {
            status: 429,
            message: "busy".into(),
            retry_after: Some(1),
        }));
        c.add(Err(Failure::Status {
            status: 429,
            message: "again".into(),
            retry_after: None,
        }));
        c.add(Err(Failure::Timeout));
        assert_eq!(
            (c.completed, c.output_tokens, c.prompt_tokens, c.failed()),
            (1, 11, 5, 3)
        );
        assert_eq!(c.retried, 1);
        assert_eq!(c.errors["429"].count, 2);
        assert_eq!(c.errors["429"].with_retry_after, 1);
        assert!(c.errors["429"].example.contains("busy"));
        assert_eq!(c.errors["timeout"].count, 1);
        let rate = c.stream_rate().unwrap_or_else(|| unreachable!());
        assert!(
            (rate.p50 - 10.0).abs() < 1e-6,
            "10 tokens in 1 s, got {}",
            rate.p50
        );
        assert!((c.itl().map_or(0.0, |s| s.p99) - 100.0).abs() < 1e-6);
    }
}
