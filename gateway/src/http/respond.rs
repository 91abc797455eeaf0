//! Turns a running [`Generation`] into OpenAI's JSON body or SSE stream.
//! In a stream, an engine failure becomes an error event followed by `[DONE]`.
//! Stream events are typed payloads until one encoder turns them into JSON.
//! An upstream's answer is relayed instead (`relay.rs`).

use crate::generate::{Answer, Generation};
use crate::metrics::RequestTimer;
use crate::openai::error::{ErrorEnvelope, ENCODING_FAILED};
use crate::openai::response::{
    unix_now, AssistantMessage, ChatChoice, ChatChunk, ChatChunkChoice, ChatCompletion, Completion,
    CompletionChoice, Delta, UsageBody, FINGERPRINT,
};
use crate::openai::tool_stream::{self, Piece, ToolCallParser};
use crate::openai::ApiError;
use crate::validate::Endpoint;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::{Stream, StreamExt};
use herd_engines::{EngineError, FinishReason, TokenEvent, Usage};
use serde::Serialize;
use std::convert::Infallible;

/// `timer` records the request's metrics; it lives as long as the response.
pub async fn respond(answer: Answer, timer: RequestTimer) -> Response {
    match answer {
        Answer::Local(gen) => local(gen, timer).await,
        Answer::Upstream(opened) => super::relay::relay(opened, timer),
        Answer::Forwarded(response) => {
            let mut timer = timer;
            timer.handed_off(response.status().as_u16());
            response
        }
    }
}

async fn local(gen: Generation, timer: RequestTimer) -> Response {
    if gen.stream {
        stream(gen, timer).into_response()
    } else {
        collect(gen, timer).await
    }
}

fn request_id(endpoint: Endpoint) -> String {
    let prefix = match endpoint {
        Endpoint::Chat => "chatcmpl",
        Endpoint::Completions => "cmpl",
    };
    format!(
        "{prefix}-{:016x}{:08x}",
        rand::random::<u64>(),
        rand::random::<u32>()
    )
}

/// Engine events until the end; an ended stream without `Finished` is a crash.
pub(crate) fn ended_early() -> ApiError {
    ApiError::Engine(EngineError::Crashed(
        "the engine stopped without finishing the request".into(),
    ))
}

async fn collect(mut gen: Generation, mut timer: RequestTimer) -> Response {
    let mut text = String::new();
    let (reason, usage) = loop {
        let failure = match gen.next().await {
            Some(TokenEvent::Delta(t)) => {
                timer.token();
                text.push_str(&t);
                continue;
            }
            Some(TokenEvent::Finished { reason, usage }) => break (reason, usage),
            Some(TokenEvent::Failed(e)) => ApiError::from(e),
            None => ended_early(),
        };
        timer.fail(&failure);
        return failure.into_response();
    };
    timer.finish(reason, usage);
    let id = request_id(gen.endpoint);
    let model = gen.deployment.id.clone();
    let usage = UsageBody::from(usage);
    let (content, tool_calls) = if gen.tool_calls {
        let (content, calls) = tool_stream::split(&text);
        (content, (!calls.is_empty()).then_some(calls))
    } else {
        (Some(text.clone()), None)
    };
    let finish_reason = finish_reason(reason, tool_calls.is_some());
    match gen.endpoint {
        Endpoint::Chat => Json(ChatCompletion {
            id,
            object: "chat.completion",
            created: unix_now(),
            model,
            choices: vec![ChatChoice {
                index: 0,
                message: AssistantMessage {
                    role: "assistant",
                    content,
                    tool_calls,
                },
                finish_reason,
                logprobs: None,
            }],
            usage,
            system_fingerprint: FINGERPRINT,
        })
        .into_response(),
        Endpoint::Completions => Json(Completion {
            id,
            object: "text_completion",
            created: unix_now(),
            model,
            choices: vec![CompletionChoice {
                index: 0,
                text,
                finish_reason: Some(reason.as_str()),
                logprobs: None,
            }],
            usage: Some(usage),
            system_fingerprint: FINGERPRINT,
        })
        .into_response(),
    }
}

/// One stream event's JSON, before encoding.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(crate) enum Payload {
    Chat(ChatChunk),
    Text(Completion),
    Error(ErrorEnvelope),
}

/// Builds each chunk of one stream with the same id, model and timestamp.
pub(crate) struct Chunker {
    id: String,
    model: String,
    created: u64,
    endpoint: Endpoint,
}

impl Chunker {
    pub(crate) fn new(endpoint: Endpoint, model: String) -> Self {
        Self {
            id: request_id(endpoint),
            model,
            created: unix_now(),
            endpoint,
        }
    }

    pub(crate) fn event(
        &self,
        content: Option<String>,
        role: bool,
        finish: Option<FinishReason>,
        usage: Option<Usage>,
    ) -> Payload {
        let usage = usage.map(UsageBody::from);
        let finish_reason = finish.map(FinishReason::as_str);
        // The usage chunk has no choices, as OpenAI sends it.
        let with_choice = usage.is_none();
        match self.endpoint {
            Endpoint::Chat => Payload::Chat(ChatChunk {
                id: self.id.clone(),
                object: "chat.completion.chunk",
                created: self.created,
                model: self.model.clone(),
                choices: if with_choice {
                    vec![ChatChunkChoice {
                        index: 0,
                        delta: Delta {
                            role: role.then_some("assistant"),
                            content,
                            tool_calls: None,
                        },
                        finish_reason,
                        logprobs: None,
                    }]
                } else {
                    Vec::new()
                },
                usage,
                system_fingerprint: FINGERPRINT,
            }),
            Endpoint::Completions => Payload::Text(Completion {
                id: self.id.clone(),
                object: "text_completion",
                created: self.created,
                model: self.model.clone(),
                choices: if with_choice {
                    vec![CompletionChoice {
                        index: 0,
                        text: content.unwrap_or_default(),
                        finish_reason,
                        logprobs: None,
                    }]
                } else {
                    Vec::new()
                },
                usage,
                system_fingerprint: FINGERPRINT,
            }),
        }
    }
}

/// `tool_calls` when the answer called tools and was not cut short.
fn finish_reason(reason: FinishReason, called: bool) -> &'static str {
    match reason {
        FinishReason::Stop if called => "tool_calls",
        other => other.as_str(),
    }
}

/// The chunks for what the tool-call parser read: content, or a call's part.
fn tool_chunks(chunker: &Chunker, pieces: Vec<Piece>) -> Vec<Payload> {
    pieces
        .into_iter()
        .map(|piece| {
            let call = match tool_stream::delta(piece) {
                Ok(call) => call,
                Err(content) => return chunker.event(Some(content), false, None, None),
            };
            let mut payload = chunker.event(None, false, None, None);
            if let Payload::Chat(chunk) = &mut payload {
                for choice in &mut chunk.choices {
                    choice.delta.tool_calls = Some(vec![call.clone()]);
                }
            }
            payload
        })
        .collect()
}

/// Encodes each payload as an SSE event, then `[DONE]`. herd's payloads are
/// strings, numbers and options, which always encode; if one ever did not,
/// the stream ends with a logged error event instead of an empty one.
pub(crate) fn encode<T: Serialize>(payloads: impl Stream<Item = T>) -> impl Stream<Item = Event> {
    async_stream::stream! {
        let mut payloads = std::pin::pin!(payloads);
        while let Some(payload) = payloads.next().await {
            match Event::default().json_data(&payload) {
                Ok(event) => yield event,
                Err(e) => {
                    tracing::error!("cannot encode a stream event ({e}); ending the stream with an error");
                    yield Event::default().data(ENCODING_FAILED);
                    break;
                }
            }
        }
        yield Event::default().data("[DONE]");
    }
}

fn stream(gen: Generation, timer: RequestTimer) -> impl IntoResponse {
    let chunker = Chunker::new(gen.endpoint, gen.deployment.id.clone());
    let events = async_stream::stream! {
        // `gen` (the engine stream: dropping it cancels the work) lives exactly as long as this stream.
        let mut gen = gen;
        // Dropped with the stream: a client that leaves mid-stream counts as cancelled.
        let mut timer = timer;
        if chunker.endpoint == Endpoint::Chat {
            yield chunker.event(Some(String::new()), true, None, None);
        }
        let mut calls = gen.tool_calls.then(ToolCallParser::default);
        loop {
            match gen.next().await {
                Some(TokenEvent::Delta(t)) => {
                    timer.token();
                    match calls.as_mut() {
                        Some(parser) => for chunk in tool_chunks(&chunker, parser.push(&t)) {
                            yield chunk;
                        },
                        None => yield chunker.event(Some(t), false, None, None),
                    }
                }
                Some(TokenEvent::Finished { reason, usage }) => {
                    timer.finish(reason, usage);
                    let empty = (chunker.endpoint == Endpoint::Completions).then(String::new);
                    let mut last = chunker.event(empty, false, Some(reason), None);
                    if let Some(parser) = calls.as_mut() {
                        for chunk in tool_chunks(&chunker, parser.finish()) {
                            yield chunk;
                        }
                        if let Payload::Chat(chunk) = &mut last {
                            for choice in &mut chunk.choices {
                                choice.finish_reason = Some(finish_reason(reason, parser.called()));
                            }
                        }
                    }
                    yield last;
                    if gen.include_usage {
                        yield chunker.event(None, false, None, Some(usage));
                    }
                    break;
                }
                Some(TokenEvent::Failed(e)) => {
                    let e = ApiError::from(e);
                    timer.fail(&e);
                    yield Payload::Error(e.envelope());
                    break;
                }
                None => {
                    let e = ended_early();
                    timer.fail(&e);
                    yield Payload::Error(e.envelope());
                    break;
                }
            }
        }
    };
    Sse::new(encode(events).map(Ok::<_, Infallible>)).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests;
