//! Upstream deployments: another OpenAI-compatible server (vLLM,
//! llama-server, another herd, a hosted API) answering for a herd model id.
//! No tokenizer here: herd validates and limits the request, sends the
//! client's own body on (`body.rs`), and relays the answer's bytes
//! (`http/relay.rs`). Each upstream has its own connection pool, admission
//! (`max_concurrency`), timeouts and circuit breaker (`health.rs`), fed by
//! every request's outcome and by an active probe.

mod body;
mod embed;
mod error;
pub mod health;
mod open;

pub use body::{error_message, Peek};

/// The client's body with `model` renamed (for a request forwarded to a head).
pub fn with_model(raw: &[u8], model: &str) -> Result<Vec<u8>, serde_json::Error> {
    body::rewrite(raw, model, false)
}

/// Like [`with_model`], asking a stream for its usage chunk too.
pub fn with_model_and_usage(raw: &[u8], model: &str) -> Result<Vec<u8>, serde_json::Error> {
    body::rewrite(raw, model, true)
}
pub use embed::embed;
pub use error::{Phase, UpstreamError};
pub use open::{open, Call, Opened, Reply};

use crate::metrics::Metrics;
use crate::scheduler::Admission;
use crate::validate::Endpoint;
use health::{Breaker, Signal};
use herd_cluster::spec::{DeploySpec, KeyRef};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub first_byte: Duration,
    pub idle: Duration,
    pub total: Duration,
}

pub struct Upstream {
    pub id: String,
    /// The name the upstream knows the model by.
    pub model: String,
    pub base_url: String,
    client: reqwest::Client,
    /// Parsed once: reqwest would parse a `&str` again on every request.
    chat_url: reqwest::Url,
    completions_url: reqwest::Url,
    probe: Option<(String, Duration)>,
    pub admission: Admission,
    pub breaker: Breaker,
    pub timeouts: Timeouts,
    /// More rounds over a request's deployments when this one is first.
    pub retries: u32,
    pub max_tokens_limit: Option<u32>,
    metrics: Arc<Metrics>,
    pub created: u64,
}

/// What `/health` and `/cluster` show about an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamStatus {
    /// `closed`, `open`, `half_open` or `rate_limited`.
    pub circuit: &'static str,
    pub in_flight: usize,
    pub consecutive_failures: u32,
    pub last_failure: Option<&'static str>,
}

impl Upstream {
    /// Builds the client for `spec` (an upstream spec); the API key is read
    /// here, from this node's environment or file. Errors name where the key
    /// was looked for, never the key.
    pub fn new(spec: &DeploySpec, metrics: Arc<Metrics>, created: u64) -> Result<Self, String> {
        let up = spec.upstream.as_ref().ok_or("not an upstream deployment")?;
        let mut headers = HeaderMap::new();
        for (name, value) in &up.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("header name {name:?} is not valid"))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| format!("the value of header {name} is not valid"))?;
            headers.insert(name, value);
        }
        if let Some(key) = &up.api_key {
            let key = read_key(key)?;
            let mut value = HeaderValue::from_str(&format!("Bearer {key}"))
                .map_err(|_| "the API key holds characters a header cannot carry".to_string())?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        let ms = Duration::from_millis;
        let client = reqwest::Client::builder()
            .connect_timeout(ms(up.connect_timeout_ms))
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(90))
            .default_headers(headers)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let base = up.base_url.trim_end_matches('/');
        Ok(Self {
            id: spec.id.clone(),
            model: spec.model.clone(),
            base_url: base.to_string(),
            client,
            chat_url: parse_url(&format!("{base}/chat/completions"))?,
            completions_url: parse_url(&format!("{base}/completions"))?,
            probe: up
                .probe_path
                .as_ref()
                .map(|p| (format!("{base}{p}"), ms(up.probe_interval_ms))),
            admission: Admission::new(
                spec.slots as usize,
                spec.max_queue as usize,
                ms(spec.max_queue_wait_ms),
            ),
            breaker: Breaker::new(health::Policy {
                failure_threshold: up.failure_threshold,
                cooldown: ms(up.cooldown_ms),
            }),
            timeouts: Timeouts {
                first_byte: ms(up.first_byte_timeout_ms),
                idle: ms(up.idle_timeout_ms),
                total: ms(up.total_timeout_ms),
            },
            retries: up.retries,
            max_tokens_limit: up.max_tokens_limit,
            metrics,
            created,
        })
    }

    fn url(&self, endpoint: Endpoint) -> &reqwest::Url {
        match endpoint {
            Endpoint::Chat => &self.chat_url,
            Endpoint::Completions => &self.completions_url,
        }
    }

    /// An attempt failed: the breaker and `herd_backend_failures_total` learn why.
    pub fn failed(&self, e: &UpstreamError) {
        if let UpstreamError::Answered {
            status: 429,
            retry_after: Some(secs),
            ..
        } = e
        {
            self.breaker
                .signal(Signal::HoldOff(Duration::from_secs(*secs)));
        }
        if e.is_unhealthy() {
            self.breaker.signal(Signal::Failure(e.reason()));
        } else if matches!(e, UpstreamError::Answered { .. }) {
            // It answered (a 4xx about the request): it is alive.
            self.breaker.signal(Signal::Success);
        }
        if !matches!(e, UpstreamError::CircuitOpen { .. }) {
            self.metrics.backend_failure(&self.id, e.reason());
        }
    }

    pub fn succeeded(&self) {
        self.breaker.signal(Signal::Success);
    }

    pub fn is_up(&self) -> bool {
        self.breaker.snapshot().is_up(Instant::now())
    }

    pub fn status(&self) -> UpstreamStatus {
        let h = self.breaker.snapshot();
        UpstreamStatus {
            circuit: h.label(Instant::now()),
            in_flight: self.admission.in_flight(),
            consecutive_failures: h.consecutive,
            last_failure: h.last_failure,
        }
    }

    /// The active health check, every `probe_interval_ms`, until the task is
    /// aborted (the deployer holds its handle).
    pub async fn probe_forever(self: Arc<Self>) {
        let Some((url, every)) = self.probe.clone() else {
            return;
        };
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let answer =
                tokio::time::timeout(self.timeouts.first_byte, self.client.get(&url).send()).await;
            match answer {
                Ok(Ok(r)) if r.status().is_success() => self.breaker.signal(Signal::ProbeOk),
                other => {
                    let why = match other {
                        Ok(Ok(r)) => format!("status {}", r.status()),
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => "no answer within first_byte_timeout_ms".into(),
                    };
                    tracing::debug!(deployment = %self.id, "health probe failed: {why}");
                    self.breaker.signal(Signal::Failure("probe"));
                    self.metrics.backend_failure(&self.id, "probe");
                }
            }
        }
    }
}

/// Whether this node can read `u`'s API key (checked at start for its own config).
pub fn check_key(u: &herd_config::ValidUpstream) -> Result<(), String> {
    let key = match &u.api_key {
        None => return Ok(()),
        Some(herd_config::KeySource::Env(var)) => KeyRef::Env(var.clone()),
        Some(herd_config::KeySource::File(path)) => KeyRef::File(path.clone()),
    };
    read_key(&key).map(drop)
}

fn read_key(key: &KeyRef) -> Result<String, String> {
    let key = match key {
        KeyRef::Env(var) => std::env::var(var).map_err(|_| {
            format!("the API key variable {var} (api_key_env) is not set on this node")
        })?,
        KeyRef::File(path) => std::fs::read_to_string(path)
            .map_err(|e| {
                format!(
                    "cannot read the API key file {} (api_key_file): {e}",
                    path.display()
                )
            })?
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or_default()
            .to_string(),
    };
    let key = key.trim().to_string();
    if key.is_empty() {
        return Err("the upstream's API key is empty".into());
    }
    Ok(key)
}

fn parse_url(url: &str) -> Result<reqwest::Url, String> {
    reqwest::Url::parse(url).map_err(|e| format!("`{url}` is not a valid URL: {e}"))
}
