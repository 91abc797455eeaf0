//! Requests refused before a handler saw them (by a layer between API-key
//! auth and the OpenAI handlers: limits, forwarding to a head that cannot be
//! reached) still get a usage row. The layer puts a [`UsageSeen`] flag in the
//! request; the handler (or the forwarder, whose head records the request)
//! raises it, and an answer ≥ 400 that nobody recorded is recorded here.
//! A missing or wrong key (401) is not recorded: it names no one, and
//! counting it would let anyone fill the disk.

use super::{end_user, UsageHandle, UsageRecord};
use crate::caller::Caller;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Raised once a request's usage is taken care of.
#[derive(Clone, Default)]
pub struct UsageSeen(Arc<AtomicBool>);

impl UsageSeen {
    pub fn raise(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The generation endpoints and their `endpoint` column.
fn endpoint(path: &str) -> Option<&'static str> {
    match path {
        "/v1/chat/completions" => Some("chat.completions"),
        "/v1/completions" => Some("completions"),
        _ => None,
    }
}

/// Middleware (inside API-key auth) recording refusals no handler recorded.
pub async fn record_refusals(
    State(usage): State<Option<UsageHandle>>,
    mut req: Request,
    next: Next,
) -> Response {
    let (Some(usage), Some(endpoint)) = (usage, endpoint(req.uri().path())) else {
        return next.run(req).await;
    };
    let seen = UsageSeen::default();
    req.extensions_mut().insert(seen.clone());
    let key_name = req
        .extensions()
        .get::<Caller>()
        .and_then(|c| c.key_name.clone());
    let user = end_user(None, req.headers());
    let (at_ms, started) = (super::now_ms(), Instant::now());
    let response = next.run(req).await;
    let status = response.status().as_u16();
    if status >= 400 && status != 401 && !seen.0.load(Ordering::Relaxed) {
        usage.recorder.record(UsageRecord {
            at_ms,
            key_name,
            end_user: user,
            model: String::new(),
            endpoint,
            status,
            prompt_tokens: 0,
            cached_tokens: 0,
            completion_tokens: 0,
            ttft_ms: None,
            duration_ms: started.elapsed().as_secs_f64() * 1000.0,
        });
    }
    response
}
