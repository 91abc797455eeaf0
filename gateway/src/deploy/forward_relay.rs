//! The head's answer, streamed back to the client chunk by chunk; a broken
//! stream ends with an OpenAI error event and `[DONE]`. For a key with a
//! tokens-per-minute limit the answer is also metered here, at the node that
//! checked the key: each streamed chunk charges a token as it passes, and the
//! answer's `usage` settles the total (the head is asked for the usage chunk
//! of a stream, which is dropped again if the client did not ask for it).

use crate::keys::limits::TokenMeter;
use crate::openai::ApiError;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use futures::StreamExt;
use herd_engines::EngineError;
use serde::Deserialize;

/// A non-streamed answer is read for its usage up to this size.
const MAX_READ: usize = 4 << 20;

/// Charges the answer's tokens to the key; `strip_usage`: the client did not
/// ask for the stream's usage chunk (herd asked the head for it).
pub struct Metering {
    pub meter: TokenMeter,
    pub strip_usage: bool,
}

/// Whether a body asks for a stream, and for its usage chunk.
pub fn stream_flags(body: &[u8]) -> (bool, bool) {
    #[derive(Deserialize, Default)]
    struct Options {
        #[serde(default)]
        include_usage: Option<bool>,
    }
    #[derive(Deserialize, Default)]
    struct Flags {
        #[serde(default)]
        stream: Option<bool>,
        #[serde(default)]
        stream_options: Option<Options>,
    }
    let f: Flags = serde_json::from_slice(body).unwrap_or_default();
    let usage = f
        .stream_options
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    (f.stream.unwrap_or(false), usage)
}

#[derive(Deserialize)]
struct Seen {
    #[serde(default)]
    choices: Option<Vec<serde::de::IgnoredAny>>,
    #[serde(default)]
    usage: Option<UsageSeen>,
}

#[derive(Deserialize)]
struct UsageSeen {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

impl Metering {
    /// One SSE event's payload: charge it; false if it is to be dropped.
    fn event(&mut self, data: &[u8]) -> bool {
        let Ok(seen) = serde_json::from_slice::<Seen>(data) else {
            return true;
        };
        let has_choices = seen.choices.as_ref().is_some_and(|c| !c.is_empty());
        if has_choices {
            self.meter.token();
        }
        if let Some(u) = seen.usage {
            self.meter
                .settle(u.prompt_tokens.saturating_add(u.completion_tokens));
            return has_choices || !self.strip_usage;
        }
        true
    }

    /// A whole JSON answer.
    fn body(&mut self, body: &[u8]) {
        if let Ok(Seen { usage: Some(u), .. }) = serde_json::from_slice::<Seen>(body) {
            self.meter
                .settle(u.prompt_tokens.saturating_add(u.completion_tokens));
        }
    }
}

/// The `data:` payload of one SSE event block, if it has one.
fn data_of(block: &[u8]) -> Option<&[u8]> {
    block
        .split(|b| *b == b'\n')
        .find_map(|line| line.strip_prefix(b"data: "))
}

/// The head's answer, streamed; `held` lives as long as the answer.
pub fn relay<H: Send + 'static>(
    resp: reqwest::Response,
    held: H,
    mut metering: Option<Metering>,
) -> Response {
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut headers = HeaderMap::new();
    for name in ["content-type", "retry-after", "cache-control"] {
        if let Some(v) = resp
            .headers()
            .get(name)
            .and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok())
        {
            headers.insert(name, v);
        }
    }
    let sse = headers
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let mut upstream = resp.bytes_stream();
    let body = async_stream::stream! {
        let _held = held;
        // Metered streams are passed on event by event; a JSON answer is kept to read its usage.
        let mut pending: Vec<u8> = Vec::new();
        while let Some(chunk) = upstream.next().await {
            let c = match chunk {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("the head's stream broke: {e}");
                    if sse {
                        let err = ApiError::Engine(EngineError::Crashed(
                            "the node serving this deployment stopped answering".into(),
                        ));
                        let json = err.to_json();
                        yield Ok(Bytes::from(format!("data: {json}\n\ndata: [DONE]\n\n")));
                    } else {
                        yield Err(std::io::Error::other("the head's answer broke off"));
                    }
                    return;
                }
            };
            let Some(m) = metering.as_mut() else {
                yield Ok::<Bytes, std::io::Error>(c);
                continue;
            };
            if !sse {
                if pending.len() + c.len() <= MAX_READ {
                    pending.extend_from_slice(&c);
                }
                yield Ok(c);
                continue;
            }
            pending.extend_from_slice(&c);
            let mut out = Vec::with_capacity(pending.len());
            let mut start = 0;
            while let Some(end) = pending[start..].windows(2).position(|w| w == b"\n\n") {
                let block = &pending[start..start + end + 2];
                if data_of(block).is_none_or(|d| d == b"[DONE]" || m.event(d)) {
                    out.extend_from_slice(block);
                }
                start += end + 2;
            }
            pending.drain(..start);
            if !out.is_empty() {
                yield Ok(Bytes::from(out));
            }
        }
        if let Some(m) = metering.as_mut() {
            if sse {
                if !pending.is_empty() {
                    yield Ok(Bytes::from(std::mem::take(&mut pending)));
                }
            } else {
                m.body(&pending);
            }
        }
    };
    let mut out = Response::new(Body::from_stream(body));
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    out
}
