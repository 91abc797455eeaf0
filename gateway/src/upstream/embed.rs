//! `/v1/embeddings` sent on to an upstream: admission, circuit, the
//! client's body (with `model` renamed) to `{base_url}/embeddings`, and the
//! whole JSON answer back, relayed as it came.

use super::health::Admit;
use super::open::{read_body, send};
use super::{Upstream, UpstreamError};
use crate::metrics::RequestTimer;
use crate::openai::ApiError;
use bytes::Bytes;
use std::sync::Arc;
use tokio::time::Instant;

/// Largest answer taken (2,048 vectors of 4,096 floats as JSON fit).
const MAX_ANSWER: usize = 256 << 20;

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
    let url = reqwest::Url::parse(&format!("{}/embeddings", up.base_url)).map_err(|e| {
        ApiError::Upstream(UpstreamError::Connect {
            id: up.id.clone(),
            why: format!("bad URL: {e}"),
        })
    })?;
    let resp = send(up, url, body, first_byte_by, deadline).await?;
    let fail = |e: UpstreamError| {
        up.failed(&e);
        ApiError::Upstream(e)
    };
    let answer = read_body(up, resp, MAX_ANSWER, deadline)
        .await
        .map_err(fail)?;
    up.succeeded();
    Ok(answer)
}
