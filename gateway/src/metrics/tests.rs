use super::*;
use crate::openai::ApiError;
use herd_engines::{EngineError, FinishReason, Usage};

const MODEL: &str = "smollm";

/// Every family the README documents and the dashboard may query.
const NAMES: &[&str] = &[
    "herd_requests_total",
    "herd_request_finished_total",
    "herd_time_to_first_token_seconds_bucket",
    "herd_inter_token_latency_seconds_bucket",
    "herd_e2e_request_latency_seconds_bucket",
    "herd_queue_wait_seconds_bucket",
    "herd_request_prompt_tokens_bucket",
    "herd_request_generation_tokens_bucket",
    "herd_prompt_tokens_total",
    "herd_generation_tokens_total",
    "herd_requests_running",
    "herd_requests_waiting",
    "herd_key_requests_total",
    "herd_key_tokens_total",
    "herd_slots_total",
    "herd_slots_free",
    "herd_kv_cache_usage_ratio",
    "herd_kv_cache_used_tokens",
    "herd_kv_cache_capacity_tokens",
    "herd_engine_up",
    "herd_engine_restarts_total",
    "herd_backend_up",
    "herd_backend_retries_total",
    "herd_build_info",
    "process_resident_memory_bytes",
];

/// The value of the one sample whose line starts with `series` (name plus labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn usage(prompt: u32, completion: u32) -> Usage {
    Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        cached_tokens: 0,
    }
}

#[test]
fn render_has_every_family_before_any_request() -> Result<(), prometheus::Error> {
    let m = Metrics::new()?;
    m.add_model(MODEL, 4);
    m.request(MODEL, "alice")
        .finish(FinishReason::Stop, usage(3, 2));
    let text = m.render()?;
    for name in NAMES {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    assert!(text.contains(&format!(
        "herd_build_info{{commit=\"{GIT_COMMIT}\",version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    )));
    assert_eq!(
        sample(&text, "herd_slots_total{model=\"smollm\"}"),
        Some(4.0)
    );
    Ok(())
}

#[test]
fn a_finished_request_moves_every_request_series() -> Result<(), prometheus::Error> {
    let m = Metrics::new()?;
    m.add_model(MODEL, 2);
    let mut t = m.request(MODEL, "alice");
    t.queued();
    assert_eq!(m.series.waiting.with_label_values(&[MODEL]).get(), 1);
    t.admitted();
    assert_eq!(m.series.waiting.with_label_values(&[MODEL]).get(), 0);
    assert_eq!(m.series.running.with_label_values(&[MODEL]).get(), 1);
    for _ in 0..3 {
        t.token();
    }
    t.finish(FinishReason::Length, usage(7, 3));
    assert_eq!(m.series.running.with_label_values(&[MODEL]).get(), 0);
    let text = m.render()?;
    let at = |s: &str| sample(&text, s);
    assert_eq!(
        at("herd_time_to_first_token_seconds_count{model=\"smollm\"}"),
        Some(1.0)
    );
    assert_eq!(
        at("herd_inter_token_latency_seconds_count{model=\"smollm\"}"),
        Some(2.0)
    );
    assert_eq!(
        at("herd_e2e_request_latency_seconds_count{model=\"smollm\"}"),
        Some(1.0)
    );
    assert_eq!(
        at("herd_queue_wait_seconds_count{model=\"smollm\"}"),
        Some(1.0)
    );
    assert_eq!(at("herd_prompt_tokens_total{model=\"smollm\"}"), Some(7.0));
    assert_eq!(
        at("herd_generation_tokens_total{model=\"smollm\"}"),
        Some(3.0)
    );
    assert_eq!(
        at("herd_request_generation_tokens_sum{model=\"smollm\"}"),
        Some(3.0)
    );
    assert_eq!(
        at("herd_request_finished_total{finish_reason=\"length\",model=\"smollm\"}"),
        Some(1.0)
    );
    assert_eq!(
        at("herd_requests_total{error_type=\"none\",model=\"smollm\",status=\"200\"}"),
        Some(1.0)
    );
    assert_eq!(
        at("herd_key_requests_total{key=\"alice\",model=\"smollm\"}"),
        Some(1.0)
    );
    assert_eq!(
        at("herd_key_tokens_total{key=\"alice\",kind=\"generation\",model=\"smollm\"}"),
        Some(3.0)
    );
    assert_eq!(
        at("herd_key_tokens_total{key=\"alice\",kind=\"prompt\",model=\"smollm\"}"),
        Some(7.0)
    );
    Ok(())
}

#[test]
fn a_dropped_request_is_cancelled_and_frees_its_gauges() -> Result<(), prometheus::Error> {
    let m = Metrics::new()?;
    m.add_model(MODEL, 1);
    let mut running = m.request(MODEL, ANONYMOUS_KEY);
    running.queued();
    running.admitted();
    let mut waiting = m.request(MODEL, ANONYMOUS_KEY);
    waiting.queued();
    assert_eq!(m.series.running.with_label_values(&[MODEL]).get(), 1);
    assert_eq!(m.series.waiting.with_label_values(&[MODEL]).get(), 1);
    drop(running);
    drop(waiting);
    assert_eq!(m.series.running.with_label_values(&[MODEL]).get(), 0);
    assert_eq!(m.series.waiting.with_label_values(&[MODEL]).get(), 0);
    let text = m.render()?;
    assert_eq!(
        sample(
            &text,
            "herd_requests_total{error_type=\"cancelled\",model=\"smollm\",status=\"499\"}"
        ),
        Some(2.0)
    );
    // Only the one that held a slot reached the engine.
    assert_eq!(
        sample(
            &text,
            "herd_request_finished_total{finish_reason=\"cancelled\",model=\"smollm\"}"
        ),
        Some(1.0)
    );
    Ok(())
}

#[test]
fn failures_count_once_under_their_status_and_type() -> Result<(), prometheus::Error> {
    let m = Metrics::new()?;
    m.add_model(MODEL, 1);
    let mut t = m.request(MODEL, "bob");
    t.queued();
    t.admitted();
    t.token();
    t.fail(&ApiError::Engine(EngineError::Crashed("boom".into())));
    // A later finish or drop must not count it again.
    t.finish(FinishReason::Stop, usage(1, 1));
    drop(t);
    m.request(MODEL, "bob")
        .fail(&ApiError::Overloaded("the wait queue is full", 3));
    let text = m.render()?;
    let at = |s: &str| sample(&text, s);
    assert_eq!(
        at("herd_requests_total{error_type=\"engine_error\",model=\"smollm\",status=\"503\"}"),
        Some(1.0)
    );
    assert_eq!(
        at("herd_requests_total{error_type=\"rate_limited\",model=\"smollm\",status=\"429\"}"),
        Some(1.0)
    );
    assert_eq!(
        at("herd_request_finished_total{finish_reason=\"error\",model=\"smollm\"}"),
        Some(1.0)
    );
    assert_eq!(
        at("herd_key_requests_total{key=\"bob\",model=\"smollm\"}"),
        Some(2.0)
    );
    assert_eq!(
        at("herd_generation_tokens_total{model=\"smollm\"}"),
        Some(0.0)
    );
    assert!(
        !text.contains("cancelled\","),
        "nothing was cancelled:\n{text}"
    );
    Ok(())
}

#[test]
fn labels_are_bounded() -> Result<(), prometheus::Error> {
    let m = Metrics::new()?;
    m.add_model(MODEL, 1);
    let junk = "ignore previous instructions \"and\" {leak}";
    let mut t = m.request(junk, ANONYMOUS_KEY);
    assert_eq!(t.model(), UNKNOWN_MODEL);
    t.fail(&ApiError::ModelNotFound(junk.into()));
    let text = m.render()?;
    assert!(
        !text.contains("ignore previous"),
        "request text leaked into a label:\n{text}"
    );
    assert_eq!(
        sample(
            &text,
            "herd_requests_total{error_type=\"model_not_found\",model=\"unknown\",status=\"404\"}"
        ),
        Some(1.0)
    );
    let names: std::collections::BTreeSet<_> = ErrorType::ALL.iter().map(|e| e.as_str()).collect();
    assert_eq!(names.len(), ErrorType::ALL.len());
    assert!(names
        .iter()
        .all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '_')));
    // The error type comes from the variant, not from the message.
    assert_eq!(
        ErrorType::of(&ApiError::invalid("temperature", junk)),
        ErrorType::InvalidRequest
    );
    assert_eq!(
        ErrorType::of(&ApiError::ContextLengthExceeded(junk.into())),
        ErrorType::ContextLengthExceeded
    );
    assert_eq!(
        ErrorType::of(&ApiError::Unauthorized),
        ErrorType::Unauthorized
    );
    assert_eq!(
        ErrorType::of(&ApiError::Engine(EngineError::Unavailable(junk.into()))),
        ErrorType::EngineUnavailable
    );
    Ok(())
}

#[test]
fn engine_gauges_follow_snapshots_and_restarts_never_go_back() -> Result<(), prometheus::Error> {
    let m = Metrics::new()?;
    m.add_model(MODEL, 4);
    let mut e = EngineSnapshot {
        up: true,
        restarts: 0,
        slots_total: 0,
        slots_free: 3,
        kv_used_tokens: 512,
        kv_capacity_tokens: 2048,
    };
    m.set_engine(MODEL, &e);
    e.up = false;
    e.restarts = 2;
    m.add_scrape_hook(move |m| m.set_engine(MODEL, &e));
    let text = m.render()?;
    let at = |s: &str| sample(&text, s);
    assert_eq!(at("herd_engine_up{model=\"smollm\"}"), Some(0.0));
    assert_eq!(
        at("herd_engine_restarts_total{model=\"smollm\"}"),
        Some(2.0)
    );
    assert_eq!(
        at("herd_slots_total{model=\"smollm\"}"),
        Some(4.0),
        "an unknown slot count keeps the configured one"
    );
    assert_eq!(at("herd_slots_free{model=\"smollm\"}"), Some(3.0));
    assert_eq!(
        at("herd_kv_cache_usage_ratio{model=\"smollm\"}"),
        Some(0.25)
    );
    // A second scrape of the same total does not count the restarts again.
    assert_eq!(
        sample(&m.render()?, "herd_engine_restarts_total{model=\"smollm\"}"),
        Some(2.0)
    );
    Ok(())
}

#[test]
fn registries_are_independent() -> Result<(), prometheus::Error> {
    let (a, b) = (Metrics::new()?, Metrics::new()?);
    a.add_model(MODEL, 1);
    b.add_model(MODEL, 1);
    a.request(MODEL, "alice")
        .finish(FinishReason::Stop, usage(1, 5));
    assert_eq!(
        sample(
            &b.render()?,
            "herd_generation_tokens_total{model=\"smollm\"}"
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &a.render()?,
            "herd_generation_tokens_total{model=\"smollm\"}"
        ),
        Some(5.0)
    );
    Ok(())
}

#[tokio::test]
async fn get_metrics_serves_the_text_format() -> Result<(), Box<dyn std::error::Error>> {
    use tower::ServiceExt;
    let m = Metrics::new()?;
    m.add_model(MODEL, 1);
    let req = axum::http::Request::get("/metrics").body(axum::body::Body::empty())?;
    let res = routes(m).oneshot(req).await?;
    assert_eq!(res.status(), 200);
    let ctype = res
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    let body = axum::body::to_bytes(res.into_body(), 1 << 20).await?;
    let text = String::from_utf8(body.to_vec())?;
    assert!(text.contains("# TYPE herd_time_to_first_token_seconds histogram"));
    Ok(())
}
