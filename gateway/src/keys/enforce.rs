//! The per-key checks on the generation routes, after auth and before
//! forwarding: the model allow-list (another model answers 404 as if it
//! did not exist), then rpm / tpm / concurrency. An admitted request
//! carries a [`TokenMeter`] (its `RequestTimer` charges tokens as they
//! stream) and its answer carries the key's concurrency hold in its body,
//! so the hold ends when the last byte is sent or the client leaves.

use super::limits::{InFlight, TokenMeter};
use super::KeyEntry;
use crate::metrics::{Metrics, UNKNOWN_MODEL};
use crate::openai::json::BodyLimit;
use crate::openai::ApiError;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body::Frame;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// Refusals here never reach a handler: they are counted in `metrics`
/// (`herd_requests_total`, `herd_key_requests_total`) under model `unknown`.
pub async fn enforce(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let Some(entry) = req.extensions().get::<Arc<KeyEntry>>().cloned() else {
        return next.run(req).await;
    };
    let mut req = match allowed(&entry, req).await {
        Ok(r) => r,
        Err(e) => return refuse(&metrics, &entry, e),
    };
    let Some(limiter) = entry.limiter.clone() else {
        return next.run(req).await;
    };
    let (hold, snapshot) = match limiter.admit() {
        Ok(admitted) => admitted,
        Err(over) => {
            tracing::info!(key = %entry.name, limit = over.limit, "over its limit");
            let error = ApiError::KeyLimit {
                key: entry.name.to_string(),
                limit: over.limit,
                detail: over.detail,
                retry_after: over.retry_after,
            };
            let mut resp = refuse(&metrics, &entry, error);
            over.snapshot.write(resp.headers_mut());
            return resp;
        }
    };
    if limiter.quota().tpm.is_some() {
        req.extensions_mut()
            .insert(TokenMeter::new(limiter.clone()));
    }
    let mut resp = next.run(req).await;
    snapshot.write(resp.headers_mut());
    resp.map(|body| {
        Body::new(Held {
            inner: body,
            _hold: hold,
        })
    })
}

fn refuse(metrics: &Arc<Metrics>, entry: &KeyEntry, error: ApiError) -> Response {
    metrics.request(UNKNOWN_MODEL, &entry.name).fail(&error);
    error.into_response()
}

/// Refuses a model outside the key's allow-list as if it did not exist.
async fn allowed(entry: &KeyEntry, req: Request) -> Result<Request, ApiError> {
    if entry.limits.models.is_none() {
        return Ok(req);
    }
    let limit = req.extensions().get::<BodyLimit>().map_or(4 << 20, |l| l.0);
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::BodyTooLarge { limit })?;
    #[derive(serde::Deserialize)]
    struct ModelOnly {
        model: String,
    }
    // A body without a model is the handler's to refuse (400, naming the field).
    if let Ok(m) = serde_json::from_slice::<ModelOnly>(&bytes) {
        if !entry.limits.allows_model(&m.model) {
            return Err(ApiError::ModelNotFound(m.model));
        }
    }
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

/// A response body that holds the key's concurrency slot until it is done.
struct Held {
    inner: Body,
    _hold: InFlight,
}

impl http_body::Body for Held {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
