//! Prometheus metrics: what an SRE needs to watch a shared AI server, named
//! `herd_*` and covering what vLLM exports (see grafana/README.md for the table).
//!
//! [`Metrics`] owns its own [`Registry`] (not the process-global one), so tests
//! can build several. Every label is bounded: `model` is a configured model id
//! (anything else is counted as `unknown`), `key` is an API key *name* from the
//! key file (or `anonymous`), `status` is an HTTP status code, `error_type` and
//! `finish_reason` come from enums. No request text or request id is a label.
//!
//! How the request path calls it (and where it does today):
//! 1. At startup (`cli::serve`): `Metrics::new()?`, then `add_model(id, slots)` for
//!    every deployment (this creates its series at 0, so dashboards show lines
//!    before traffic), and `add_scrape_hook` with a closure that calls
//!    `observe_router`, so engine gauges (up, restarts, slots, KV cache) are read
//!    fresh at each scrape. `routes(metrics)` joins the unauthenticated routes, and
//!    [`count_unauthorized`] wraps API-key auth (a refused key never reaches a handler).
//! 2. In the handler (`http::openai_api`), first thing, even when the body did not
//!    parse: `let mut t = metrics.request(model, key_name)`.
//! 3. Around admission (`generate::start`): `t.queued()` before waiting for a slot,
//!    `t.admitted()` once it is held. The running gauge stays up until `t` ends or drops.
//! 4. For each text delta from the engine (`http::respond`): `t.token()` (the first
//!    is TTFT, later ones ITL).
//! 5. At the end, one of `t.finish(reason, usage)` or `t.fail(&api_error)`; a
//!    refusal before generation is `fail`ed by the handler. A timer dropped without
//!    either (the client went away) counts as cancelled (status 499, nginx's code
//!    for "client closed request").
//!
//! `respond` moves the timer into the response stream, so its life is the
//! request's life as the client sees it (the slot may be free earlier).

mod backend;
mod request;
#[cfg(test)]
mod tests;

pub use request::{ErrorType, RequestTimer};

use crate::router::{Deployment, Router as ModelRouter};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use herd_engines::EngineState;
use prometheus::{
    exponential_buckets, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, RwLock};

/// The `model` label for requests naming a model herd does not serve.
pub const UNKNOWN_MODEL: &str = "unknown";
/// The `key` label when API keys are off.
pub const ANONYMOUS_KEY: &str = "anonymous";
/// The `key` label of requests refused for a missing or wrong key.
pub const UNAUTHENTICATED_KEY: &str = "unauthenticated";

/// The commit herd was built from (set by build.rs; "unknown" without git).
pub const GIT_COMMIT: &str = env!("HERD_GIT_COMMIT");

type ScrapeHook = Box<dyn Fn(&Metrics) + Send + Sync>;

/// Engine facts read at scrape time.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EngineSnapshot {
    pub up: bool,
    pub restarts: u64,
    /// Streams stopped because the client read too slowly (running total).
    pub slow_clients: u64,
    /// 0 when not known yet.
    pub slots_total: u64,
    pub slots_free: u64,
    pub kv_used_tokens: u64,
    pub kv_capacity_tokens: u64,
}

pub struct Metrics {
    registry: Registry,
    models: RwLock<BTreeSet<String>>,
    scrape_hooks: Mutex<Vec<ScrapeHook>>,
    pub(crate) series: Series,
}

/// Every metric family herd exports.
pub(crate) struct Series {
    pub requests: IntCounterVec,
    pub finished: IntCounterVec,
    pub ttft: HistogramVec,
    pub itl: HistogramVec,
    pub e2e: HistogramVec,
    pub queue_wait: HistogramVec,
    pub prompt_tokens_hist: HistogramVec,
    pub generation_tokens_hist: HistogramVec,
    pub prompt_tokens: IntCounterVec,
    pub generation_tokens: IntCounterVec,
    pub embedding_requests: IntCounterVec,
    pub embedding_inputs: IntCounterVec,
    pub embedding_tokens: IntCounterVec,
    pub running: IntGaugeVec,
    pub waiting: IntGaugeVec,
    pub key_requests: IntCounterVec,
    pub key_tokens: IntCounterVec,
    pub slots_total: IntGaugeVec,
    pub slots_free: IntGaugeVec,
    pub kv_usage: GaugeVec,
    pub kv_used_tokens: IntGaugeVec,
    pub kv_capacity_tokens: IntGaugeVec,
    pub engine_up: IntGaugeVec,
    pub engine_restarts: IntCounterVec,
    pub slow_clients: IntCounterVec,
    pub backend: backend::BackendSeries,
}

const SECONDS_TTFT: &[f64] = &[
    0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
const SECONDS_ITL: &[f64] = &[
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5,
    1.0, 2.5,
];
const SECONDS_E2E: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 240.0,
    480.0,
];
const SECONDS_QUEUE: &[f64] = &[
    0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

fn counter(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    buckets: Vec<f64>,
) -> prometheus::Result<HistogramVec> {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), &["model"])?;
    r.register(Box::new(h.clone()))?;
    Ok(h)
}

impl Series {
    fn register(r: &Registry) -> prometheus::Result<Self> {
        // Token counts: 1 .. ~130k in powers of two.
        let tokens = exponential_buckets(1.0, 2.0, 18)?;
        let m = &["model"];
        Ok(Self {
            requests: counter(
                r,
                "herd_requests_total",
                "Requests answered, by model, HTTP status and error type (`none` when successful)",
                &["model", "status", "error_type"],
            )?,
            finished: counter(
                r,
                "herd_request_finished_total",
                "Requests that reached an engine slot, by how generation ended (stop, length, error, cancelled)",
                &["model", "finish_reason"],
            )?,
            ttft: histogram(r, "herd_time_to_first_token_seconds", "From request arrival to the first generated text", SECONDS_TTFT.to_vec())?,
            itl: histogram(r, "herd_inter_token_latency_seconds", "Gap between consecutive generated text deltas", SECONDS_ITL.to_vec())?,
            e2e: histogram(r, "herd_e2e_request_latency_seconds", "From request arrival to the end of a finished generation", SECONDS_E2E.to_vec())?,
            queue_wait: histogram(r, "herd_queue_wait_seconds", "Time a request waited for an engine slot", SECONDS_QUEUE.to_vec())?,
            prompt_tokens_hist: histogram(r, "herd_request_prompt_tokens", "Prompt length of finished requests, in tokens", tokens.clone())?,
            generation_tokens_hist: histogram(r, "herd_request_generation_tokens", "Generated tokens per finished request", tokens)?,
            prompt_tokens: counter(r, "herd_prompt_tokens_total", "Prompt tokens processed (finished requests)", m)?,
            generation_tokens: counter(r, "herd_generation_tokens_total", "Tokens generated (finished requests)", m)?,
            embedding_requests: counter(r, "herd_embedding_requests_total", "Embedding requests answered", m)?,
            embedding_inputs: counter(r, "herd_embedding_inputs_total", "Inputs embedded (one vector each)", m)?,
            embedding_tokens: counter(r, "herd_embedding_tokens_total", "Tokens embedded (special tokens included)", m)?,
            running: gauge(r, "herd_requests_running", "Requests holding an engine slot", m)?,
            waiting: gauge(r, "herd_requests_waiting", "Requests waiting for an engine slot", m)?,
            key_requests: counter(r, "herd_key_requests_total", "Requests by API key name (never the key) and model", &["key", "model"])?,
            key_tokens: counter(
                r,
                "herd_key_tokens_total",
                "Tokens by API key name, model and kind (prompt or generation)",
                &["key", "model", "kind"],
            )?,
            slots_total: gauge(r, "herd_slots_total", "Engine slots (concurrent requests) configured", m)?,
            slots_free: gauge(r, "herd_slots_free", "Engine slots free right now", m)?,
            kv_usage: {
                let g = GaugeVec::new(Opts::new("herd_kv_cache_usage_ratio", "Fraction of the KV cache in use (0..1)"), m)?;
                r.register(Box::new(g.clone()))?;
                g
            },
            kv_used_tokens: gauge(r, "herd_kv_cache_used_tokens", "KV cache cells in use, in tokens", m)?,
            kv_capacity_tokens: gauge(r, "herd_kv_cache_capacity_tokens", "KV cache size, in tokens", m)?,
            engine_up: gauge(r, "herd_engine_up", "1 when the model's engine host is ready, else 0", m)?,
            engine_restarts: counter(r, "herd_engine_restarts_total", "Times the model's engine host was restarted", m)?,
            slow_clients: counter(r, "herd_slow_client_disconnects_total", "Streams whose generation was stopped because the client fell a whole buffer behind", m)?,
            backend: backend::BackendSeries::register(r)?,
        })
    }
}

impl Metrics {
    pub fn new() -> prometheus::Result<Arc<Self>> {
        let registry = Registry::new();
        let series = Series::register(&registry)?;
        let build = IntGaugeVec::new(
            Opts::new(
                "herd_build_info",
                "Always 1; the labels say which herd is running",
            ),
            &["version", "commit"],
        )?;
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION"), GIT_COMMIT])
            .set(1);
        registry.register(Box::new(build))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Arc::new(Self {
            registry,
            models: RwLock::new(BTreeSet::new()),
            scrape_hooks: Mutex::new(Vec::new()),
            series,
        }))
    }

    /// Declares a served model: its id becomes a valid label, and its series
    /// start at 0 so every panel has a line before the first request.
    pub fn add_model(&self, model: &str, slots: u64) {
        if let Ok(mut models) = self.models.write() {
            models.insert(model.to_string());
        }
        let s = &self.series;
        let l = &[model];
        for h in [
            &s.ttft,
            &s.itl,
            &s.e2e,
            &s.queue_wait,
            &s.prompt_tokens_hist,
            &s.generation_tokens_hist,
        ] {
            h.with_label_values(l);
        }
        for c in [
            &s.prompt_tokens,
            &s.generation_tokens,
            &s.embedding_requests,
            &s.embedding_inputs,
            &s.embedding_tokens,
            &s.engine_restarts,
            &s.slow_clients,
        ] {
            c.with_label_values(l);
        }
        for g in [
            &s.running,
            &s.waiting,
            &s.slots_free,
            &s.kv_used_tokens,
            &s.kv_capacity_tokens,
            &s.engine_up,
            &s.backend.up,
        ] {
            g.with_label_values(l);
        }
        s.backend.retries.with_label_values(l);
        s.slots_total
            .with_label_values(l)
            .set(i64::try_from(slots).unwrap_or(i64::MAX));
        s.kv_usage.with_label_values(l);
        s.requests
            .with_label_values(&[model, "200", ErrorType::None.as_str()]);
        for reason in ["stop", "length"] {
            s.finished.with_label_values(&[model, reason]);
        }
    }

    /// The registry, for families other modules own (usage accounting).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The bounded `model` label for a requested model name.
    pub fn model_label(&self, requested: &str) -> String {
        match self.models.read() {
            Ok(models) if models.contains(requested) => requested.to_string(),
            _ => UNKNOWN_MODEL.to_string(),
        }
    }

    /// Starts recording one request. `key` is the API key's name, never the key.
    pub fn request(self: &Arc<Self>, model: &str, key: &str) -> RequestTimer {
        RequestTimer::new(self.clone(), self.model_label(model), key)
    }

    /// Runs before each scrape, to read state that lives elsewhere (engines).
    pub fn add_scrape_hook(&self, hook: impl Fn(&Metrics) + Send + Sync + 'static) {
        if let Ok(mut hooks) = self.scrape_hooks.lock() {
            hooks.push(Box::new(hook));
        }
    }

    /// Sets one model's engine gauges; `restarts` is the engine's running total.
    pub fn set_engine(&self, model: &str, e: &EngineSnapshot) {
        let s = &self.series;
        let l = &[model];
        let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        s.engine_up.with_label_values(l).set(i64::from(e.up));
        // 0 means "not known yet" (engine still loading): keep what add_model said.
        if e.slots_total > 0 {
            s.slots_total.with_label_values(l).set(int(e.slots_total));
        }
        s.slots_free.with_label_values(l).set(int(e.slots_free));
        s.kv_used_tokens
            .with_label_values(l)
            .set(int(e.kv_used_tokens));
        s.kv_capacity_tokens
            .with_label_values(l)
            .set(int(e.kv_capacity_tokens));
        let ratio = if e.kv_capacity_tokens == 0 {
            0.0
        } else {
            e.kv_used_tokens as f64 / e.kv_capacity_tokens as f64
        };
        s.kv_usage.with_label_values(l).set(ratio);
        // The engine reports totals; the counters follow them (scrapes are serialised by `render`).
        for (counter, total) in [
            (&s.engine_restarts, e.restarts),
            (&s.slow_clients, e.slow_clients),
        ] {
            let counter = counter.with_label_values(l);
            if total > counter.get() {
                counter.inc_by(total - counter.get());
            }
        }
    }

    /// Reads every deployment's engine, and every upstream's circuit: the usual scrape hook.
    pub fn observe_router(&self, router: &ModelRouter) {
        let table = router.current();
        for d in table.local() {
            let snap = snapshot(d);
            self.set_backend_up(&d.id, snap.up);
            self.set_engine(&d.id, &snap);
        }
        for u in table.upstreams() {
            self.set_backend_up(&u.id, u.is_up());
        }
    }

    /// The Prometheus text exposition of every metric, after running the scrape hooks.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        // Holding the hooks' lock serialises scrapes, so counters set from totals never double count.
        let hooks = self
            .scrape_hooks
            .lock()
            .map_err(|_| prometheus::Error::Msg("a scrape hook panicked".into()))?;
        for hook in hooks.iter() {
            hook(self);
        }
        TextEncoder::new().encode_to_string(&self.registry.gather())
    }
}

fn snapshot(d: &Deployment) -> EngineSnapshot {
    let stats = d.engine.stats();
    let slots_total = d.engine.info().map_or(0, |i| u64::from(i.slots));
    EngineSnapshot {
        up: d.engine.state() == EngineState::Ready,
        restarts: stats.restarts,
        slow_clients: stats.slow_clients,
        slots_total,
        slots_free: d.admission.free_slots() as u64,
        kv_used_tokens: stats.kv_used_tokens,
        kv_capacity_tokens: stats.kv_capacity_tokens,
    }
}

/// Counts API requests refused by API-key auth, which never reach a handler.
/// Layer it outside `require_key`.
pub async fn count_unauthorized(
    axum::extract::State(metrics): axum::extract::State<Arc<Metrics>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let response = next.run(req).await;
    if response.status() == axum::http::StatusCode::UNAUTHORIZED {
        metrics
            .request(UNKNOWN_MODEL, UNAUTHENTICATED_KEY)
            .fail(&crate::openai::ApiError::Unauthorized);
    }
    response
}

/// `GET /metrics`. Mount it outside API-key auth: it holds key names, never keys.
pub fn routes(metrics: Arc<Metrics>) -> axum::Router {
    axum::Router::new()
        .route("/metrics", get(scrape))
        .with_state(metrics)
}

async fn scrape(axum::extract::State(metrics): axum::extract::State<Arc<Metrics>>) -> Response {
    match metrics.render() {
        Ok(text) => ([(CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot render metrics");
            crate::openai::ApiError::Engine(herd_engines::EngineError::Internal(format!(
                "cannot render metrics: {e}"
            )))
            .into_response()
        }
    }
}
