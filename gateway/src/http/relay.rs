//! Relays an upstream's answer to the client. A JSON completion goes out as
//! the upstream wrote it; a stream goes out event by event, each `data:`
//! payload unchanged, one event buffered at most. The usage chunk herd
//! asked for is dropped when the client did not ask for it. A stream that
//! breaks off, goes quiet past `idle_timeout_ms` or runs past
//! `total_timeout_ms` ends with an OpenAI error event and `[DONE]`, never a
//! silent cut. Usage and finish reason are read from the answer for metrics.

use crate::metrics::RequestTimer;
use crate::openai::error::ENCODING_FAILED;
use crate::openai::ApiError;
use crate::upstream::{Opened, Peek, Phase, Reply, UpstreamError};
use axum::body::{Body, Bytes};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::HeaderValue;
use axum::response::Response;
use futures::StreamExt;
use herd_engines::{FinishReason, Usage};
use std::convert::Infallible;
use tokio::time::{timeout_at, Instant};

pub fn relay(opened: Opened, timer: RequestTimer) -> Response {
    let (body, content_type) = match opened.reply {
        Reply::Json(ref bytes) => {
            let bytes = bytes.clone();
            json(&bytes, timer);
            (Body::from(bytes), "application/json")
        }
        Reply::Stream { .. } => (
            Body::from_stream(stream(opened, timer)),
            "text/event-stream",
        ),
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn json(bytes: &[u8], mut timer: RequestTimer) {
    let text = std::str::from_utf8(bytes).unwrap_or("");
    let peek = Peek::parse(text).unwrap_or_default();
    timer.token();
    timer.finish(
        peek.finish().unwrap_or(FinishReason::Stop),
        peek.usage().unwrap_or_default(),
    );
}

/// `data: ...` lines for one event's payload (multi-line payloads stay multi-line).
fn frame(data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + 8);
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

const DONE: &[u8] = b"data: [DONE]\n\n";

fn stream(
    opened: Opened,
    timer: RequestTimer,
) -> impl futures::Stream<Item = Result<Bytes, Infallible>> {
    async_stream::stream! {
        // The permit and the upstream connection live exactly as long as this stream.
        let mut opened = opened;
        let mut timer = timer;
        let up = opened.upstream.clone();
        let (mut next, mut rest) = match std::mem::replace(&mut opened.reply, Reply::Json(Bytes::new())) {
            Reply::Stream { first, rest } => (Some(first), rest),
            Reply::Json(_) => return,
        };
        let mut usage: Option<Usage> = None;
        let mut finish: Option<FinishReason> = None;
        let mut outputs = 0u32;
        loop {
            let event = match next.take() {
                Some(e) => Ok(e),
                None => {
                    let by = (Instant::now() + up.timeouts.idle).min(opened.deadline);
                    match timeout_at(by, rest.next()).await {
                        Err(_) => Err(UpstreamError::Timeout {
                            id: up.id.clone(),
                            phase: if by >= opened.deadline { Phase::Total } else { Phase::Idle },
                        }),
                        Ok(Some(Ok(e))) => Ok(e),
                        Ok(Some(Err(e))) => Err(UpstreamError::BrokeOff { id: up.id.clone(), why: e.to_string() }),
                        // Some servers end without [DONE]: a finished answer is still whole.
                        Ok(None) if finish.is_some() => {
                            yield Ok(Bytes::from_static(DONE));
                            break;
                        }
                        Ok(None) => Err(UpstreamError::BrokeOff {
                            id: up.id.clone(),
                            why: "the stream ended before the answer finished".into(),
                        }),
                    }
                }
            };
            let event = match event {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(deployment = %up.id, "upstream stream failed: {e}");
                    up.failed(&e);
                    let e = ApiError::Upstream(e);
                    timer.fail(&e);
                    yield Ok(frame(&serde_json::to_string(&e.envelope()).unwrap_or_else(|err| {
                        tracing::error!("cannot encode an error event ({err})");
                        ENCODING_FAILED.to_string()
                    })));
                    yield Ok(Bytes::from_static(DONE));
                    break;
                }
            };
            if event.data == "[DONE]" {
                let usage = usage.unwrap_or(Usage { completion_tokens: outputs, ..Usage::default() });
                timer.finish(finish.unwrap_or(FinishReason::Stop), usage);
                yield Ok(Bytes::from_static(DONE));
                break;
            }
            if let Some(peek) = Peek::parse(&event.data) {
                if peek.is_error() {
                    let e = UpstreamError::BrokeOff { id: up.id.clone(), why: "it sent an error event".into() };
                    up.failed(&e);
                    timer.fail(&ApiError::Upstream(e));
                }
                if peek.has_output() {
                    outputs += 1;
                    timer.token();
                }
                finish = peek.finish().or(finish);
                if let Some(u) = peek.usage() {
                    usage = Some(u);
                    if peek.is_usage_only() && !opened.include_usage {
                        continue;
                    }
                }
            }
            yield Ok(frame(&event.data));
        }
    }
}
