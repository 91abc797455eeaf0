//! One attempt against an upstream, up to the first byte: admission, the
//! request, the answer's head, and a stream's first event. Until that first
//! event nothing has reached the client, so every failure here may still be
//! taken by another deployment (the caller decides, `generate.rs`).

use super::body::{error_message, rewrite, Peek};
use super::health::Admit;
use super::{Upstream, UpstreamError};
use crate::metrics::RequestTimer;
use crate::openai::ApiError;
use crate::scheduler::Permit;
use crate::validate::Endpoint;
use bytes::{Bytes, BytesMut};
use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures::stream::BoxStream;
use futures::StreamExt;
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use std::sync::Arc;
use tokio::time::{timeout_at, Instant};

/// Largest answer read whole: an error body, or a non-streamed completion.
const MAX_ANSWER: usize = 64 << 20;
const MAX_ERROR_BODY: usize = 64 << 10;

/// What one attempt sends.
pub struct Call<'a> {
    pub endpoint: Endpoint,
    /// The client's body, as received.
    pub raw: &'a [u8],
    pub stream: bool,
    pub max_tokens: Option<u32>,
}

pub type Events = BoxStream<'static, Result<Event, EventStreamError<reqwest::Error>>>;

/// The upstream's answer, not yet sent to the client.
pub enum Reply {
    /// A whole JSON completion (status 200).
    Json(Bytes),
    /// An SSE stream whose first event has arrived.
    Stream { first: Event, rest: Events },
}

/// An opened upstream answer. Holds the concurrency permit until dropped.
pub struct Opened {
    pub upstream: Arc<Upstream>,
    pub reply: Reply,
    /// The attempt's `total_timeout_ms` runs out here.
    pub deadline: Instant,
    pub endpoint: Endpoint,
    pub include_usage: bool,
    _permit: Permit,
}

/// Sends `call` to `up` and waits for the first byte of its answer.
pub async fn open(
    up: &Arc<Upstream>,
    call: &Call<'_>,
    include_usage: bool,
    timer: &mut RequestTimer,
) -> Result<Opened, ApiError> {
    if let (Some(limit), Some(asked)) = (up.max_tokens_limit, call.max_tokens) {
        if asked > limit {
            return Err(ApiError::invalid(
                "max_tokens",
                format!("`max_tokens` must be at most {limit} for this model, got {asked}"),
            ));
        }
    }
    let resting = |retry_after| {
        ApiError::Upstream(UpstreamError::CircuitOpen {
            id: up.id.clone(),
            retry_after,
        })
    };
    let body = rewrite(call.raw, &up.model, call.stream).map_err(|e| {
        ApiError::InvalidJson(format!("the request body is not a JSON object: {e}"))
    })?;
    // A cheap look first, so requests do not queue for an upstream that is resting.
    if let Some(retry_after) = up.breaker.resting() {
        return Err(resting(retry_after));
    }
    timer.queued();
    let permit = up.admission.admit(timer.key()).await?;
    timer.admitted();
    if let Admit::No { retry_after } = up.breaker.admit() {
        return Err(resting(retry_after));
    }
    let started = Instant::now();
    let deadline = started + up.timeouts.total;
    let first_byte_by = (started + up.timeouts.first_byte).min(deadline);
    let resp = send(
        up,
        up.url(call.endpoint).clone(),
        body,
        first_byte_by,
        deadline,
    )
    .await?;
    let fail = |e: UpstreamError| {
        up.failed(&e);
        ApiError::Upstream(e)
    };
    let id = || up.id.clone();
    let reply = if call.stream {
        let is_sse = resp
            .headers()
            .get(CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        if !is_sse {
            return Err(fail(UpstreamError::BadAnswer {
                id: id(),
                why: "a streamed request was not answered with text/event-stream".into(),
            }));
        }
        let mut rest: Events = resp.bytes_stream().eventsource().boxed();
        let first = match timeout_at(first_byte_by, rest.next()).await {
            Err(_) => Err(UpstreamError::Timeout {
                id: id(),
                phase: super::Phase::FirstByte,
            }),
            Ok(None) => Err(UpstreamError::BrokeOff {
                id: id(),
                why: "the stream ended before its first event".into(),
            }),
            Ok(Some(Err(e))) => Err(UpstreamError::BrokeOff {
                id: id(),
                why: e.to_string(),
            }),
            Ok(Some(Ok(event))) if Peek::parse(&event.data).is_some_and(|p| p.is_error()) => {
                Err(UpstreamError::BadAnswer {
                    id: id(),
                    why: format!(
                        "the stream began with an error: {}",
                        error_message(event.data.as_bytes()).0
                    ),
                })
            }
            Ok(Some(Ok(event))) => Ok(event),
        };
        Reply::Stream {
            first: first.map_err(fail)?,
            rest,
        }
    } else {
        Reply::Json(
            read_body(up, resp, MAX_ANSWER, deadline)
                .await
                .map_err(fail)?,
        )
    };
    up.succeeded();
    Ok(Opened {
        upstream: up.clone(),
        reply,
        deadline,
        endpoint: call.endpoint,
        include_usage,
        _permit: permit,
    })
}

/// Posts `body` to `url` and waits for the answer's head until
/// `first_byte_by`: a connect error, that timeout or a non-2xx answer (its
/// OpenAI error and Retry-After kept) is a failure counted against `up`.
pub(super) async fn send(
    up: &Upstream,
    url: reqwest::Url,
    body: Vec<u8>,
    first_byte_by: Instant,
    deadline: Instant,
) -> Result<reqwest::Response, ApiError> {
    let fail = |e: UpstreamError| {
        up.failed(&e);
        ApiError::Upstream(e)
    };
    let id = || up.id.clone();
    let sent = up
        .client
        .post(url)
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
    Ok(resp)
}

/// A whole body, at most `limit` bytes, by `deadline`.
pub(super) async fn read_body(
    up: &Upstream,
    resp: reqwest::Response,
    limit: usize,
    deadline: Instant,
) -> Result<Bytes, UpstreamError> {
    let mut chunks = resp.bytes_stream();
    let mut first: Option<Bytes> = None;
    let mut more = BytesMut::new();
    loop {
        match timeout_at(deadline, chunks.next()).await {
            Err(_) => {
                return Err(UpstreamError::Timeout {
                    id: up.id.clone(),
                    phase: super::Phase::Total,
                })
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(UpstreamError::BrokeOff {
                    id: up.id.clone(),
                    why: e.to_string(),
                })
            }
            Ok(Some(Ok(chunk))) => {
                let held = if more.is_empty() {
                    first.as_ref().map_or(0, Bytes::len)
                } else {
                    more.len()
                };
                let len = held + chunk.len();
                if len > limit {
                    return Err(UpstreamError::BadAnswer {
                        id: up.id.clone(),
                        why: format!("the answer is larger than {limit} bytes"),
                    });
                }
                match &first {
                    None => first = Some(chunk),
                    Some(f) => {
                        if more.is_empty() {
                            more.extend_from_slice(f);
                        }
                        more.extend_from_slice(&chunk);
                    }
                }
            }
        }
    }
    Ok(if more.is_empty() {
        first.unwrap_or_default()
    } else {
        more.freeze()
    })
}
