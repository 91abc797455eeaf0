//! One request's life, recorded: queue → slot → tokens → end. Every request
//! ends exactly once, and a timer dropped before its end (the client left)
//! still counts, as cancelled.

use super::Metrics;
use crate::openai::ApiError;
use crate::upstream::UpstreamError;
use herd_engines::{EngineError, FinishReason, Usage};
use prometheus::{Histogram, IntGauge};
use std::sync::Arc;
use std::time::Instant;

/// The bounded `error_type` label: which kind of answer a request got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    None,
    InvalidRequest,
    ModelNotFound,
    ContextLengthExceeded,
    RateLimited,
    Unauthorized,
    /// The engine is loading or restarting (503, retry later).
    EngineUnavailable,
    /// The engine crashed mid-request or failed internally.
    EngineError,
    /// The client read its stream too slowly; the engine stopped generating.
    ClientTooSlow,
    /// An upstream server could not be reached, failed, or broke off.
    UpstreamError,
    /// An upstream server did not answer in time.
    UpstreamTimeout,
    Cancelled,
}

impl ErrorType {
    pub const ALL: [Self; 12] = [
        Self::None,
        Self::InvalidRequest,
        Self::ModelNotFound,
        Self::ContextLengthExceeded,
        Self::RateLimited,
        Self::Unauthorized,
        Self::EngineUnavailable,
        Self::EngineError,
        Self::ClientTooSlow,
        Self::UpstreamError,
        Self::UpstreamTimeout,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::InvalidRequest => "invalid_request",
            Self::ModelNotFound => "model_not_found",
            Self::ContextLengthExceeded => "context_length_exceeded",
            Self::RateLimited => "rate_limited",
            Self::Unauthorized => "unauthorized",
            Self::EngineUnavailable => "engine_unavailable",
            Self::EngineError => "engine_error",
            Self::ClientTooSlow => "client_too_slow",
            Self::UpstreamError => "upstream_error",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::Cancelled => "cancelled",
        }
    }

    /// From the error's variant, never its message.
    pub fn of(e: &ApiError) -> Self {
        match e {
            ApiError::InvalidJson(_)
            | ApiError::BodyTooLarge { .. }
            | ApiError::InvalidRequest { .. }
            | ApiError::RouteNotFound(_)
            | ApiError::ResponseNotFound(_)
            | ApiError::MethodNotAllowed
            | ApiError::KeyExists(_)
            | ApiError::KeyNotFound(_) => Self::InvalidRequest,
            ApiError::ModelNotFound(_) => Self::ModelNotFound,
            ApiError::ContextLengthExceeded(_) => Self::ContextLengthExceeded,
            ApiError::Unauthorized | ApiError::Forbidden(_) => Self::Unauthorized,
            ApiError::Overloaded(..) | ApiError::KeyLimit { .. } => Self::RateLimited,
            ApiError::KeyStore(_) => Self::EngineError,
            // The listener drops a timed-out request, whose dropped timer records it as cancelled.
            ApiError::RequestTimeout(_) => Self::Cancelled,
            ApiError::Engine(engine) => match engine {
                EngineError::NoChatTemplate
                | EngineError::Template(_)
                | EngineError::InvalidInput(_)
                | EngineError::NotServed(_) => Self::InvalidRequest,
                EngineError::Unavailable(_) => Self::EngineUnavailable,
                EngineError::Crashed(_) | EngineError::Internal(_) => Self::EngineError,
                EngineError::ClientTooSlow { .. } => Self::ClientTooSlow,
                EngineError::PromptTooLong { .. } | EngineError::InputTooLong { .. } => {
                    Self::ContextLengthExceeded
                }
            },
            ApiError::Upstream(u) => match u {
                UpstreamError::Timeout { .. } => Self::UpstreamTimeout,
                UpstreamError::Answered { status: 429, .. } => Self::RateLimited,
                UpstreamError::Answered { status, .. } if *status < 500 => Self::InvalidRequest,
                UpstreamError::Answered { .. }
                | UpstreamError::Connect { .. }
                | UpstreamError::BadAnswer { .. }
                | UpstreamError::BrokeOff { .. }
                | UpstreamError::CircuitOpen { .. } => Self::UpstreamError,
            },
        }
    }
}

/// Holds a gauge one higher for as long as it lives, however the request ends.
struct GaugeGuard(IntGauge);

impl GaugeGuard {
    fn raise(gauge: IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Records one request. Create with [`Metrics::request`]; see the module doc of
/// `metrics` for the order of calls.
pub struct RequestTimer {
    metrics: Arc<Metrics>,
    model: String,
    key: String,
    arrived: Instant,
    queued_at: Option<Instant>,
    waiting: Option<GaugeGuard>,
    running: Option<GaugeGuard>,
    ttft: Histogram,
    itl: Histogram,
    last_token: Option<Instant>,
    /// Text deltas sent: the completion count of a request that did not finish.
    deltas: u64,
    first_token: Option<Instant>,
    arrived_ms: i64,
    /// Where the request's usage row goes, with who asked for what.
    usage: Option<crate::usage::UsageTag>,
    ended: bool,
    /// Charges tokens to the key's tpm limit as they stream.
    meter: Option<crate::keys::limits::TokenMeter>,
}

impl RequestTimer {
    pub(super) fn new(metrics: Arc<Metrics>, model: String, key: &str) -> Self {
        let ttft = metrics.series.ttft.with_label_values(&[&model]);
        let itl = metrics.series.itl.with_label_values(&[&model]);
        Self {
            metrics,
            model,
            key: key.to_string(),
            arrived: Instant::now(),
            queued_at: None,
            waiting: None,
            running: None,
            ttft,
            itl,
            last_token: None,
            deltas: 0,
            first_token: None,
            arrived_ms: crate::usage::now_ms(),
            usage: None,
            ended: false,
            meter: None,
        }
    }

    /// Records this request's usage row when it ends (see `crate::usage`).
    pub fn tag_usage(&mut self, tag: crate::usage::UsageTag) {
        self.usage = Some(tag);
    }

    /// The bounded label this request is counted under.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The router starts another round over the request's deployments.
    pub fn retried(&self) {
        self.metrics
            .series
            .backend
            .retries
            .with_label_values(&[&self.model])
            .inc();
    }

    /// The request moves on to deployment `to` after a failure.
    pub fn fell_back(&self, to: &str) {
        self.metrics
            .series
            .backend
            .fallbacks
            .with_label_values(&[self.model.as_str(), to])
            .inc();
    }

    /// An attempt against deployment `deployment` failed for `reason`.
    pub fn backend_failed(&self, deployment: &str, reason: &'static str) {
        self.metrics.backend_failure(deployment, reason);
    }

    /// The end user its usage is recorded under, if known.
    pub fn end_user(&self) -> Option<&str> {
        self.usage.as_ref().and_then(|u| u.end_user.as_deref())
    }

    /// The API key's name this request is counted under.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Charge this request's tokens to its key's tpm limit.
    pub fn charge_to(&mut self, meter: crate::keys::limits::TokenMeter) {
        self.meter = Some(meter);
    }

    /// The meter charging this request's tokens to its key, if any.
    pub fn meter(&self) -> Option<&crate::keys::limits::TokenMeter> {
        self.meter.as_ref()
    }

    /// Hands the charging over (to a relayed answer that meters itself).
    pub fn take_meter(&mut self) -> Option<crate::keys::limits::TokenMeter> {
        self.meter.take()
    }

    /// The request went to another node, which records its generation;
    /// here it counts as answered with `status`.
    pub fn handed_off(&mut self, status: u16) {
        if self.ended {
            return;
        }
        // The head records the request's usage.
        self.usage = None;
        let error = if (200..300).contains(&status) {
            ErrorType::None
        } else {
            ErrorType::UpstreamError
        };
        self.end(status, error, Usage::default());
    }

    /// The request starts waiting for a slot.
    pub fn queued(&mut self) {
        self.queued_at = Some(Instant::now());
        self.waiting = Some(GaugeGuard::raise(
            self.metrics
                .series
                .waiting
                .with_label_values(&[&self.model]),
        ));
    }

    /// The request holds a slot: it counts as running until it ends.
    pub fn admitted(&mut self) {
        self.waiting = None;
        let waited = self.queued_at.map_or(0.0, |t| t.elapsed().as_secs_f64());
        self.metrics
            .series
            .queue_wait
            .with_label_values(&[&self.model])
            .observe(waited);
        self.running = Some(GaugeGuard::raise(
            self.metrics
                .series
                .running
                .with_label_values(&[&self.model]),
        ));
    }

    /// Generated text reached the response: the first is the time to first
    /// token, each later one an inter-token gap (as the client sees them).
    pub fn token(&mut self) {
        let now = Instant::now();
        self.deltas += 1;
        self.first_token.get_or_insert(now);
        match self.last_token {
            None => self
                .ttft
                .observe(now.duration_since(self.arrived).as_secs_f64()),
            Some(prev) => self.itl.observe(now.duration_since(prev).as_secs_f64()),
        }
        self.last_token = Some(now);
        if let Some(m) = &mut self.meter {
            m.token();
        }
    }

    /// Generation ended normally.
    pub fn finish(&mut self, reason: FinishReason, usage: Usage) {
        if self.ended {
            return;
        }
        let s = &self.metrics.series;
        let l = &[self.model.as_str()];
        s.e2e
            .with_label_values(l)
            .observe(self.arrived.elapsed().as_secs_f64());
        let (prompt, generated) = (
            u64::from(usage.prompt_tokens),
            u64::from(usage.completion_tokens),
        );
        s.prompt_tokens_hist
            .with_label_values(l)
            .observe(prompt as f64);
        s.generation_tokens_hist
            .with_label_values(l)
            .observe(generated as f64);
        if let Some(m) = &mut self.meter {
            m.settle(prompt + generated);
        }
        s.prompt_tokens.with_label_values(l).inc_by(prompt);
        s.generation_tokens.with_label_values(l).inc_by(generated);
        let key = self.key.as_str();
        s.key_tokens
            .with_label_values(&[key, &self.model, "prompt"])
            .inc_by(prompt);
        s.key_tokens
            .with_label_values(&[key, &self.model, "generation"])
            .inc_by(generated);
        s.finished
            .with_label_values(&[self.model.as_str(), reason.as_str()])
            .inc();
        self.end(200, ErrorType::None, usage);
    }

    /// Embeddings were answered: `inputs` vectors over `tokens` tokens.
    pub fn embedded(&mut self, inputs: usize, tokens: u32) {
        if self.ended {
            return;
        }
        let s = &self.metrics.series;
        let l = &[self.model.as_str()];
        s.e2e
            .with_label_values(l)
            .observe(self.arrived.elapsed().as_secs_f64());
        s.embedding_requests.with_label_values(l).inc();
        s.embedding_inputs
            .with_label_values(l)
            .inc_by(u64::try_from(inputs).unwrap_or(u64::MAX));
        s.embedding_tokens
            .with_label_values(l)
            .inc_by(u64::from(tokens));
        s.key_tokens
            .with_label_values(&[self.key.as_str(), &self.model, "embedding"])
            .inc_by(u64::from(tokens));
        if let Some(m) = &mut self.meter {
            m.settle(u64::from(tokens));
        }
        let usage = Usage {
            prompt_tokens: tokens,
            completion_tokens: 0,
            cached_tokens: 0,
        };
        self.end(200, ErrorType::None, usage);
    }

    /// The request failed: refused before generation, or an engine error mid-stream
    /// (counted under the error's own status, which is what the client reads).
    pub fn fail(&mut self, error: &ApiError) {
        if self.ended {
            return;
        }
        if self.running.is_some() {
            self.metrics
                .series
                .finished
                .with_label_values(&[self.model.as_str(), "error"])
                .inc();
        }
        let partial = self.partial_usage();
        self.end(error.status().as_u16(), ErrorType::of(error), partial);
    }

    /// What a request that did not finish used, as far as herd saw: the
    /// text deltas it streamed (one per token for a local engine).
    fn partial_usage(&self) -> Usage {
        Usage {
            prompt_tokens: 0,
            completion_tokens: u32::try_from(self.deltas).unwrap_or(u32::MAX),
            cached_tokens: 0,
        }
    }

    fn end(&mut self, status: u16, error_type: ErrorType, usage: Usage) {
        self.ended = true;
        self.waiting = None;
        self.running = None;
        if let Some(tag) = self.usage.take() {
            let ms = |i: Instant| i.duration_since(self.arrived).as_secs_f64() * 1000.0;
            tag.recorder.record(crate::usage::UsageRecord {
                at_ms: self.arrived_ms,
                key_name: tag.key_name,
                end_user: tag.end_user,
                model: tag.model,
                endpoint: tag.endpoint,
                status,
                prompt_tokens: u64::from(usage.prompt_tokens),
                cached_tokens: u64::from(usage.cached_tokens),
                completion_tokens: u64::from(usage.completion_tokens),
                ttft_ms: self.first_token.map(ms),
                duration_ms: self.arrived.elapsed().as_secs_f64() * 1000.0,
            });
        }
        let s = &self.metrics.series;
        s.requests
            .with_label_values(&[
                self.model.as_str(),
                &status.to_string(),
                error_type.as_str(),
            ])
            .inc();
        s.key_requests
            .with_label_values(&[self.key.as_str(), self.model.as_str()])
            .inc();
    }
}

impl Drop for RequestTimer {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        if self.running.is_some() {
            self.metrics
                .series
                .finished
                .with_label_values(&[self.model.as_str(), "cancelled"])
                .inc();
        }
        // 499: nginx's "client closed request"; the client stopped reading.
        let partial = self.partial_usage();
        self.end(499, ErrorType::Cancelled, partial);
    }
}
