//! `/v1/embeddings` sent on to an upstream: admission, circuit, the
//! client's body (with `model` renamed) to `{base_url}/embeddings`, and the
//! whole JSON answer back, relayed as it came.

use super::health::Admit;
use super::open::read_body;
use super::{error_message, Upstream, UpstreamError};
use crate::metrics::RequestTimer;
use crate::openai::ApiError;
use bytes::Bytes;
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use std::sync::Arc;
use tokio::time::{timeout_at, Instant};

/// Largest answer taken (2,048 vectors of 4,096 floats as JSON fit).
const MAX_ANSWER: usize = 256 << 20;
const MAX_ERROR_BODY: usize = 64 << 10;

pub async fn embed(
    up: &Arc<Upstream>,
    raw: &[u8],
    timer: &mut RequestTimer,
) -> Result<Bytes, ApiError> {
    let body = super::with_model(raw, &up.model).map_err(|e| {
        ApiError::InvalidJson(format!("the request body is not a JSON object: {e}"))
    })?;
    let resting = |retry_after| {
        ApiError::Upstream(UpstreamError::CircuitOpen {
            id: up.id.clone(),
            retry_after,
        })
    };
    if let Some(retry_after) = up.breaker.resting() {
        return Err(resting(retry_after));
    }
    timer.queued();
    let _permit = up.admission.admit(timer.key()).await?;
    timer.admitted();
    if let Admit::No { retry_after } = up.breaker.admit() {
        return Err(resting(retry_after));
    }
    let started = Instant::now();
    let deadline = started + up.timeouts.total;
    let first_byte_by = (started + up.timeouts.first_byte).min(deadline);
    let fail = |e: UpstreamError| {
        up.failed(&e);
        ApiError::Upstream(e)
    };
    let id = || up.id.clone();
    let sent = up
        .client
        .post(format!("{}/embeddings", up.base_url))
        .header(CONTENT_TYPE, "application/json")
        .body(body)
        .send();
    let resp = match timeout_at(first_byte_by, sent).await {
        Err(_) => {
            return Err(fail(UpstreamError::Timeout {
                id: id(),
                phase: super::Phase::FirstByte,
            }))
        }
        Ok(Err(e)) => {
            return Err(fail(UpstreamError::Connect {
                id: id(),
                why: e.to_string(),
            }))
        }
        Ok(Ok(r)) => r,
    };
    let status = resp.status().as_u16();
    if !resp.status().is_success() {
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| s.min(3600));
        let body = read_body(up, resp, MAX_ERROR_BODY, deadline)
            .await
            .unwrap_or_default();
        let (message, openai_shaped) = error_message(&body);
        return Err(fail(UpstreamError::Answered {
            id: id(),
            status,
            message,
            body: openai_shaped.then_some(body),
            retry_after,
        }));
    }
    let answer = read_body(up, resp, MAX_ANSWER, deadline)
        .await
        .map_err(fail)?;
    up.succeeded();
    Ok(answer)
}
