//! Turns a running [`Generation`] into OpenAI's JSON body or SSE stream.
//! In a stream, an engine failure becomes an error event followed by `[DONE]`.
//! Stream events are typed payloads until one encoder turns them into JSON.
//! An upstream's answer is relayed instead (`relay.rs`).

use crate::generate::{Answer, Generation};
use crate::metrics::RequestTimer;
use crate::openai::chunk::{
    finish_reason, request_id, tool_chunks, ChunkLogprobs, Chunker, Payload,
};
use crate::openai::error::ENCODING_FAILED;
use crate::openai::logprobs::{ChatLogprobs, CompletionLogprobs};
use crate::openai::response::{
    unix_now, AssistantMessage, ChatChoice, ChatCompletion, Completion, CompletionChoice,
    UsageBody, FINGERPRINT,
};
use crate::openai::tool_stream::{self, ToolCallParser};
use crate::openai::ApiError;
use crate::validate::Endpoint;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::{Stream, StreamExt};
use herd_engines::{Delta, EngineError, FinishReason, TokenEvent};
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

/// Engine events until the end; an ended stream without `Finished` is a crash.
pub(crate) fn ended_early() -> ApiError {
    ApiError::Engine(EngineError::Crashed(
        "the engine stopped without finishing the request".into(),
    ))
}

/// What the choices of a non-streamed answer gather, by index.
#[derive(Default)]
struct Gathered {
    texts: Vec<String>,
    /// Characters in each text so far (completions' `text_offset`).
    chars: Vec<usize>,
    chat: Vec<ChatLogprobs>,
    text: Vec<CompletionLogprobs>,
}

impl Gathered {
    /// Room for `n` choices (one that sent nothing still has its place).
    fn ensure(&mut self, n: usize) {
        if self.texts.len() < n {
            self.texts.resize(n, String::new());
            self.chars.resize(n, 0);
            self.chat.resize(n, ChatLogprobs::default());
            self.text.resize(n, CompletionLogprobs::default());
        }
    }

    fn push(&mut self, d: Delta, endpoint: Endpoint, logprobs: bool) {
        let i = d.index as usize;
        self.ensure(i + 1);
        if logprobs {
            match endpoint {
                Endpoint::Chat => self.chat[i].extend(&d.logprobs),
                Endpoint::Completions => self.text[i].extend(&d.logprobs, self.chars[i], &d.text),
            }
        }
        self.chars[i] += d.text.chars().count();
        self.texts[i].push_str(&d.text);
    }
}

async fn collect(mut gen: Generation, mut timer: RequestTimer) -> Response {
    let mut got = Gathered::default();
    let logprobs = gen.logprobs.is_some();
    let (reasons, usage) = loop {
        let failure = match gen.next().await {
            Some(TokenEvent::Delta(d)) => {
                timer.token();
                got.push(d, gen.endpoint, logprobs);
                continue;
            }
            Some(TokenEvent::Finished { reasons, usage }) => break (reasons, usage),
            Some(TokenEvent::Failed(e)) => ApiError::from(e),
            None => ended_early(),
        };
        timer.fail(&failure);
        return failure.into_response();
    };
    timer.finish(
        reasons.first().copied().unwrap_or(FinishReason::Stop),
        usage,
    );
    let id = request_id(gen.endpoint);
    let model = gen.deployment.id.clone();
    let usage = UsageBody::from(usage);
    got.ensure(reasons.len());
    let choices = reasons.into_iter().zip(got.texts).enumerate();
    match gen.endpoint {
        Endpoint::Chat => Json(ChatCompletion {
            id,
            object: "chat.completion",
            created: unix_now(),
            model,
            choices: choices
                .zip(got.chat)
                .map(|((i, (reason, text)), lp)| {
                    let (content, tool_calls) = match gen.tool_format {
                        Some(format) => {
                            let (content, calls) = tool_stream::split(&text, format);
                            (content, (!calls.is_empty()).then_some(calls))
                        }
                        None => (Some(text), None),
                    };
                    ChatChoice {
                        index: i as u32,
                        finish_reason: finish_reason(reason, tool_calls.is_some()),
                        message: AssistantMessage {
                            role: "assistant",
                            content,
                            tool_calls,
                        },
                        logprobs: logprobs.then_some(lp),
                    }
                })
                .collect(),
            usage,
            system_fingerprint: FINGERPRINT,
        })
        .into_response(),
        Endpoint::Completions => Json(Completion {
            id,
            object: "text_completion",
            created: unix_now(),
            model,
            choices: choices
                .zip(got.text)
                .map(|((i, (reason, text)), lp)| CompletionChoice {
                    index: i as u32,
                    text,
                    finish_reason: Some(reason.as_str()),
                    logprobs: logprobs.then_some(lp),
                })
                .collect(),
            usage: Some(usage),
            system_fingerprint: FINGERPRINT,
        })
        .into_response(),
    }
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
        let chat = chunker.endpoint() == Endpoint::Chat;
        if chat {
            for index in 0..gen.choices {
                yield chunker.choice_event(index, Some(String::new()), ChunkLogprobs::None, true, None, None);
            }
        }
        // Characters sent per choice (completions' `text_offset`).
        let mut sent: Vec<usize> = Vec::new();
        // Each choice's tool-call parser, when the request has tools.
        let mut calls: Vec<ToolCallParser> = Vec::new();
        loop {
            match gen.next().await {
                Some(TokenEvent::Delta(d)) => {
                    timer.token();
                    let i = d.index as usize;
                    if sent.len() <= i {
                        sent.resize(i + 1, 0);
                    }
                    if let Some(format) = gen.tool_format {
                        // (logprobs with tools are refused at the edge)
                        if calls.len() <= i {
                            calls.resize_with(i + 1, || ToolCallParser::new(format));
                        }
                        for chunk in tool_chunks(&chunker, d.index, calls[i].push(&d.text)) {
                            yield chunk;
                        }
                        continue;
                    }
                    let logprobs = match (gen.logprobs, chat) {
                        (None, _) => ChunkLogprobs::None,
                        (Some(_), true) => ChunkLogprobs::Chat(ChatLogprobs::of(&d.logprobs)),
                        (Some(_), false) => {
                            let mut l = CompletionLogprobs::default();
                            l.extend(&d.logprobs, sent[i], &d.text);
                            ChunkLogprobs::Text(l)
                        }
                    };
                    sent[i] += d.text.chars().count();
                    yield chunker.choice_event(d.index, Some(d.text), logprobs, false, None, None);
                }
                Some(TokenEvent::Finished { reasons, usage }) => {
                    timer.finish(reasons.first().copied().unwrap_or(FinishReason::Stop), usage);
                    for (index, reason) in reasons.into_iter().enumerate() {
                        let empty = (!chat).then(String::new);
                        let mut last = chunker.choice_event(index as u32, empty, ChunkLogprobs::None, false, Some(reason), None);
                        if let Some(parser) = calls.get_mut(index) {
                            for chunk in tool_chunks(&chunker, index as u32, parser.finish()) {
                                yield chunk;
                            }
                            if let Payload::Chat(chunk) = &mut last {
                                for choice in &mut chunk.choices {
                                    choice.finish_reason = Some(finish_reason(reason, parser.called()));
                                }
                            }
                        }
                        yield last;
                    }
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
