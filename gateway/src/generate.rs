//! The core of a completion: the route table names the deployments that
//! may answer (`routing.rs`), and they are tried in order until one opens
//! an answer: a local engine (`local.rs`: prepare, context check,
//! admission, generate) or an upstream (`upstream::open`: admission,
//! request, first byte). Everything that can be refused is refused before
//! a byte reaches the client, so a failed attempt (connect error, 429, 5xx,
//! first-byte timeout, an engine down) moves on to the next deployment;
//! after all failed, another round follows, `retries` times, after a
//! jittered backoff (at least the upstream's Retry-After), within the first
//! deployment's total timeout.

mod local;

pub use local::Generation;

use crate::metrics::RequestTimer;
use crate::openai::ApiError;
use crate::router::Router;
use crate::routing::Backend;
use crate::upstream::{self, Call, Opened};
use crate::validate::ValidRequest;
use herd_engines::EngineError;
use std::time::Duration;
use tokio::time::Instant;

/// An answer that has started, from a local engine, an upstream, or the
/// head of a deployment on another node.
pub enum Answer {
    Local(Generation),
    Upstream(Opened),
    Forwarded(axum::response::Response),
}

/// `raw` is the client's body (sent on to upstreams). `timer` sees each
/// attempt's wait for a slot; the caller records how the request ends.
pub async fn start(
    router: &Router,
    req: ValidRequest,
    raw: &[u8],
    timer: &mut RequestTimer,
) -> Result<Answer, ApiError> {
    let route = router.current().resolve(&req.model)?;
    let deadline = route.budget.map(|b| Instant::now() + b);
    let call = Call {
        endpoint: req.endpoint,
        raw,
        stream: req.stream,
        max_tokens: req.max_tokens,
    };
    let mut last: Option<ApiError> = None;
    for round in 0..=route.retries {
        if round > 0 {
            let wait = backoff(round, last.as_ref().and_then(retry_after), rand::random());
            if deadline.is_some_and(|d| Instant::now() + wait >= d) {
                break;
            }
            timer.retried();
            tokio::time::sleep(wait).await;
        }
        for (i, backend) in route.chain.iter().enumerate() {
            if i > 0 {
                timer.fell_back(backend.id());
            }
            let attempt = match backend {
                Backend::Local(d) => {
                    let more = i + 1 < route.chain.len() || round < route.retries;
                    local::start(d, &req, timer, more).await.map(Answer::Local)
                }
                Backend::Upstream(u) => upstream::open(u, &call, req.include_usage, timer)
                    .await
                    .map(Answer::Upstream),
                Backend::Remote(r) => {
                    let opened = crate::deploy::forward::attempt(
                        r,
                        req.endpoint.path(),
                        raw,
                        timer.key(),
                        timer.end_user(),
                        timer.meter().cloned(),
                    )
                    .await;
                    if opened.is_ok() {
                        // The relayed answer charges the key's tokens from here on.
                        timer.take_meter();
                    }
                    opened.map(Answer::Forwarded)
                }
            };
            let error = match attempt {
                Ok(answer) => return Ok(answer),
                Err(e) if allows_fallback(&e) => e,
                Err(e) => return Err(e),
            };
            match (backend, &error) {
                // An upstream records its own failures (and its circuit learns).
                (Backend::Upstream(_), _) => {}
                (Backend::Remote(r), ApiError::Upstream(u)) => {
                    timer.backend_failed(&r.id, u.reason())
                }
                (Backend::Local(_) | Backend::Remote(_), e) => {
                    timer.backend_failed(backend.id(), local_reason(e))
                }
            }
            tracing::debug!(deployment = backend.id(), "attempt failed: {error}");
            last = Some(error);
        }
    }
    Err(last.unwrap_or_else(|| {
        ApiError::Engine(EngineError::Unavailable(format!(
            "no deployment of `{}` answered",
            req.model
        )))
    }))
}

/// Whether another deployment may still take a request that failed so,
/// before any byte reached the client.
pub(crate) fn allows_fallback(e: &ApiError) -> bool {
    match e {
        ApiError::Overloaded(..) => true,
        ApiError::Engine(engine) => match engine {
            EngineError::Unavailable(_) | EngineError::Crashed(_) => true,
            EngineError::NoChatTemplate
            | EngineError::Template(_)
            | EngineError::Internal(_)
            | EngineError::PromptTooLong { .. }
            | EngineError::ClientTooSlow { .. }
            | EngineError::InputTooLong { .. }
            | EngineError::InvalidInput(_)
            | EngineError::NotServed(_) => false,
        },
        ApiError::Upstream(u) => u.allows_fallback(),
        ApiError::InvalidJson(_)
        | ApiError::BodyTooLarge { .. }
        | ApiError::InvalidRequest { .. }
        | ApiError::ModelNotFound(_)
        | ApiError::ResponseNotFound(_)
        | ApiError::ContextLengthExceeded(_)
        | ApiError::Unauthorized
        | ApiError::RouteNotFound(_)
        | ApiError::MethodNotAllowed
        | ApiError::RequestTimeout(_)
        | ApiError::KeyLimit { .. }
        | ApiError::Forbidden(_)
        | ApiError::KeyExists(_)
        | ApiError::KeyNotFound(_)
        | ApiError::KeyStore(_) => false,
    }
}

/// The failure label of a local engine's refusal.
fn local_reason(e: &ApiError) -> &'static str {
    match e {
        ApiError::Overloaded(..) => "overloaded",
        _ => "unavailable",
    }
}

fn retry_after(e: &ApiError) -> Option<u64> {
    e.parts().3
}

/// Before round `round` (≥ 1): 100 ms doubling per round up to 2 s, scaled
/// by a jitter in [0.5, 1) from `jitter`, and never less than the Retry-After.
fn backoff(round: u32, retry_after: Option<u64>, jitter: u32) -> Duration {
    let base = Duration::from_millis(100 << (round - 1).min(5)).min(Duration::from_secs(2));
    let scale = 0.5 + f64::from(jitter) / f64::from(u32::MAX) / 2.0;
    base.mul_f64(scale)
        .max(Duration::from_secs(retry_after.unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn backoff_doubles_with_jitter_and_honours_retry_after() {
        assert_eq!(backoff(1, None, 0), Duration::from_millis(50));
        assert!(backoff(1, None, u32::MAX) <= Duration::from_millis(100));
        assert_eq!(backoff(3, None, 0), Duration::from_millis(200));
        assert!(backoff(9, None, u32::MAX) <= Duration::from_secs(2));
        assert_eq!(backoff(1, Some(3), 0), Duration::from_secs(3));
    }
}
