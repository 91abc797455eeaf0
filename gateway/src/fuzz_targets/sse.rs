//! The SSE encoder: any engine output (any text, any error message, any
//! usage) becomes events a client reads back exactly. Every event is one
//! `data: ` line (a raw newline in a chunk would split it into a broken
//! event), the text and usage survive the trip, errors are OpenAI-shaped and
//! the stream ends with `[DONE]`.
//!
//! The payloads are built with the server's own [`Chunker`], in the order
//! `respond::stream` sends them, encoded by its [`encode`] and rendered by
//! axum's `Sse` body; a real SSE client parser reads them back.

use super::assert_error_shape;
use crate::http::respond::{encode, ended_early};
use crate::openai::chunk::{Chunker, Payload};
use crate::openai::ApiError;
use crate::validate::Endpoint;
use arbitrary::{Result, Unstructured};
use axum::response::sse::Sse;
use axum::response::IntoResponse;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use herd_engines::{EngineError, FinishReason, Usage};
use serde_json::Value;
use std::convert::Infallible;

/// One stream as the engine could produce it.
#[derive(Debug)]
struct Script {
    endpoint: Endpoint,
    model: String,
    deltas: Vec<String>,
    end: End,
    include_usage: bool,
}

#[derive(Debug)]
enum End {
    Finished(FinishReason, Usage),
    Failed(EngineError),
    /// The engine stream ended without a word (the engine host died).
    Cut,
}

impl Script {
    fn new(u: &mut Unstructured) -> Result<Self> {
        let endpoint = if u.arbitrary()? {
            Endpoint::Chat
        } else {
            Endpoint::Completions
        };
        let model = u.arbitrary()?;
        let include_usage = u.arbitrary()?;
        let end = match u.int_in_range(0..=2)? {
            0 => End::Cut,
            1 => End::Failed(herd_engines::fuzz_targets::engine_error(u)?),
            _ => End::Finished(
                if u.arbitrary()? {
                    FinishReason::Stop
                } else {
                    FinishReason::Length
                },
                Usage {
                    prompt_tokens: u.arbitrary()?,
                    completion_tokens: u.arbitrary()?,
                    cached_tokens: u.arbitrary()?,
                },
            ),
        };
        let deltas = u.arbitrary()?;
        Ok(Self {
            endpoint,
            model,
            deltas,
            end,
            include_usage,
        })
    }

    /// The payloads `respond::stream` sends for this script.
    fn payloads(&self) -> Vec<Payload> {
        let chunker = Chunker::new(self.endpoint, self.model.clone());
        let mut events = Vec::new();
        if self.endpoint == Endpoint::Chat {
            events.push(chunker.event(Some(String::new()), true, None, None));
        }
        for d in &self.deltas {
            events.push(chunker.event(Some(d.clone()), false, None, None));
        }
        match &self.end {
            End::Finished(reason, usage) => {
                let empty = (self.endpoint == Endpoint::Completions).then(String::new);
                events.push(chunker.event(empty, false, Some(*reason), None));
                if self.include_usage {
                    events.push(chunker.event(None, false, None, Some(*usage)));
                }
            }
            End::Failed(e) => events.push(Payload::Error(ApiError::from(e.clone()).envelope())),
            End::Cut => events.push(Payload::Error(ended_early().envelope())),
        }
        events
    }
}

pub fn sse_stream(data: &[u8]) {
    let Ok(script) = Script::new(&mut Unstructured::new(data)) else {
        return;
    };
    let payloads = script.payloads();
    // Each payload, then `[DONE]`.
    let sent = payloads.len() + 1;
    let events = encode(futures::stream::iter(payloads));
    let body = Sse::new(events.map(Ok::<_, Infallible>))
        .into_response()
        .into_body();
    let bytes = futures::executor::block_on(axum::body::to_bytes(body, usize::MAX));
    let bytes = bytes.unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let lines = data_lines(&text);
    assert_eq!(lines.len(), sent, "{text:?}");
    let parsed = client_view(bytes);
    assert_eq!(
        parsed, lines,
        "a client parser reads other data than was sent"
    );
    check_content(&script, &lines);
}

/// Each event's data, checking that every event is exactly one `data: ` line.
fn data_lines(text: &str) -> Vec<String> {
    let Some(events) = text.strip_suffix("\n\n") else {
        assert!(
            text.is_empty(),
            "the stream does not end an event: {text:?}"
        );
        return Vec::new();
    };
    events
        .split("\n\n")
        .map(|event| {
            assert!(
                !event.contains(['\n', '\r']),
                "an event of several lines: {event:?}"
            );
            let data = event.strip_prefix("data: ");
            assert!(data.is_some(), "not a data line: {event:?}");
            data.unwrap_or_default().to_string()
        })
        .collect()
}

/// The data of each event, as an SSE client library parses the bytes.
fn client_view(bytes: axum::body::Bytes) -> Vec<String> {
    let chunks = futures::stream::iter([Ok::<_, Infallible>(bytes)]);
    let events = futures::executor::block_on(chunks.eventsource().collect::<Vec<_>>());
    events
        .into_iter()
        .map(|e| {
            e.map(|e| e.data)
                .unwrap_or_else(|e| format!("parse error: {e}"))
        })
        .collect()
}

fn check_content(script: &Script, lines: &[String]) {
    assert!(!lines.is_empty(), "no events");
    let Some((done, chunks)) = lines.split_last() else {
        return;
    };
    assert_eq!(done, "[DONE]");
    let json: Vec<Value> = chunks
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or(Value::Null))
        .collect();
    let (last, body) = match &script.end {
        End::Finished(..) => (None, &json[..]),
        End::Failed(_) | End::Cut => {
            let (error, body) = json.split_last().unwrap_or((&Value::Null, &[]));
            (Some(error), body)
        }
    };
    if let Some(error) = last {
        assert_error_shape(error);
    }
    let chat = script.endpoint == Endpoint::Chat;
    let mut chunks = body.iter();
    if chat {
        let first = chunks.next().map(|c| &c["choices"][0]["delta"]);
        assert_eq!(
            first,
            Some(&serde_json::json!({"role": "assistant", "content": ""}))
        );
    }
    let text_of = |c: &Value| {
        let choice = &c["choices"][0];
        let text = if chat {
            &choice["delta"]["content"]
        } else {
            &choice["text"]
        };
        text.clone()
    };
    for (d, c) in script.deltas.iter().zip(chunks.by_ref()) {
        assert_eq!(text_of(c), Value::from(d.as_str()));
        assert_eq!(c["model"], Value::from(script.model.as_str()));
        assert_eq!(c["id"], body[0]["id"]);
    }
    if let End::Finished(reason, usage) = &script.end {
        let fin = chunks
            .next()
            .map(|c| c["choices"][0]["finish_reason"].clone());
        assert_eq!(fin, Some(Value::from(reason.as_str())));
        if script.include_usage {
            let u = chunks.next().cloned().unwrap_or_default();
            assert_eq!(u["choices"], serde_json::json!([]));
            let total = u64::from(usage.prompt_tokens) + u64::from(usage.completion_tokens);
            assert_eq!(u["usage"]["total_tokens"], Value::from(total), "{u}");
        }
    }
    assert!(chunks.next().is_none());
}
