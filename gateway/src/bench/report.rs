//! The report: JSON for scripts (`--json`), or a table for people.

use super::stats::{Collector, ErrorBucket, Summary};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

#[derive(Debug, Serialize)]
pub struct Report {
    pub base_url: String,
    pub endpoint: String,
    pub model: String,
    pub stream: bool,
    pub concurrency: usize,
    /// The open-loop arrival rate asked for (`--rate`), if any.
    pub offered_rate: Option<f64>,
    pub max_tokens: u32,
    pub requests: Requests,
    pub duration_s: f64,
    pub requests_per_s: f64,
    pub tokens: Tokens,
    pub output_tok_s: Throughput,
    pub ttft_ms: Option<Summary>,
    pub itl_ms: Option<Summary>,
    pub e2e_ms: Option<Summary>,
}

#[derive(Debug, Serialize)]
pub struct Requests {
    pub completed: u64,
    /// Completed on a second send after the connection closed under the first.
    pub retried: u64,
    pub failed: u64,
    /// By HTTP status ("429") or by cause ("connect", "timeout", "stream_error").
    pub errors: BTreeMap<String, ErrorBucket>,
}

#[derive(Debug, Serialize)]
pub struct Tokens {
    pub prompt_total: u64,
    pub output_total: u64,
    pub output_per_request: f64,
}

#[derive(Debug, Serialize)]
pub struct Throughput {
    /// All output tokens ÷ wall time.
    pub aggregate: f64,
    /// Each stream's decode rate (tokens after the first ÷ time after the first), tokens/s.
    pub per_stream: Option<Summary>,
}

/// What the run was, besides what it measured.
pub struct RunInfo {
    pub base_url: String,
    pub endpoint: String,
    pub model: String,
    pub stream: bool,
    pub concurrency: usize,
    pub offered_rate: Option<f64>,
    pub max_tokens: u32,
}

impl Report {
    pub fn new(info: RunInfo, c: &Collector, wall: Duration) -> Self {
        let secs = wall.as_secs_f64();
        let per_sec = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        Report {
            base_url: info.base_url,
            endpoint: info.endpoint,
            model: info.model,
            stream: info.stream,
            concurrency: info.concurrency,
            offered_rate: info.offered_rate,
            max_tokens: info.max_tokens,
            requests: Requests {
                completed: c.completed,
                retried: c.retried,
                failed: c.failed(),
                errors: c.errors.clone(),
            },
            duration_s: secs,
            requests_per_s: per_sec(c.completed),
            tokens: Tokens {
                prompt_total: c.prompt_tokens,
                output_total: c.output_tokens,
                output_per_request: if c.completed > 0 {
                    c.output_tokens as f64 / c.completed as f64
                } else {
                    0.0
                },
            },
            output_tok_s: Throughput {
                aggregate: per_sec(c.output_tokens),
                per_stream: c.stream_rate(),
            },
            ttft_ms: c.ttft(),
            itl_ms: c.itl(),
            e2e_ms: c.e2e(),
        }
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        let rate = self
            .offered_rate
            .map_or(String::new(), |r| format!(", offered {r:.1} req/s"));
        let _ = writeln!(
            out,
            "herd bench: {} {} (model {}, concurrency {}{rate}, max_tokens {}, stream {})",
            self.base_url,
            self.endpoint,
            self.model,
            self.concurrency,
            self.max_tokens,
            self.stream
        );
        let _ = writeln!(
            out,
            "requests     {} ok ({} resent once), {} failed in {:.2} s = {:.2} req/s",
            self.requests.completed,
            self.requests.retried,
            self.requests.failed,
            self.duration_s,
            self.requests_per_s
        );
        for (key, bucket) in &self.requests.errors {
            let _ = writeln!(
                out,
                "  error {key:<12} x{:<6} ({} with Retry-After) e.g. {}",
                bucket.count, bucket.with_retry_after, bucket.example
            );
        }
        let _ = writeln!(
            out,
            "tokens       {} prompt, {} output ({:.1} per request)",
            self.tokens.prompt_total, self.tokens.output_total, self.tokens.output_per_request
        );
        let _ = writeln!(
            out,
            "output tok/s {:.1} aggregate",
            self.output_tok_s.aggregate
        );
        let _ = writeln!(
            out,
            "{:<22}{:>10}{:>10}{:>10}{:>10}{:>10}",
            "", "p50", "p90", "p99", "mean", "max"
        );
        let rows = [
            ("TTFT (ms)", self.ttft_ms),
            ("inter-token (ms)", self.itl_ms),
            ("end-to-end (ms)", self.e2e_ms),
            ("tok/s per stream", self.output_tok_s.per_stream),
        ];
        for (name, summary) in rows {
            match summary {
                Some(s) => {
                    let _ = writeln!(
                        out,
                        "{name:<22}{:>10.2}{:>10.2}{:>10.2}{:>10.2}{:>10.2}",
                        s.p50, s.p90, s.p99, s.mean, s.max
                    );
                }
                None => {
                    let _ = writeln!(out, "{name:<22}{:>10}", "-");
                }
            }
        }
        out
    }
}
