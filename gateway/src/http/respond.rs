//! Turns a running [`Generation`] into OpenAI's JSON body or SSE stream.
//! In a stream, an engine failure becomes an error event followed by `[DONE]`.
//! An upstream's answer is relayed instead (`relay.rs`).

use crate::generate::{Answer, Generation};
use crate::metrics::RequestTimer;
use crate::openai::response::{
    unix_now, AssistantMessage, ChatChoice, ChatChunk, ChatChunkChoice, ChatCompletion, Completion,
    CompletionChoice, Delta, UsageBody, FINGERPRINT,
};
use crate::openai::ApiError;
use crate::validate::Endpoint;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use herd_engines::{EngineError, FinishReason, TokenEvent, Usage};
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
fn ended_early() -> ApiError {
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
                    content: text,
                },
                finish_reason: reason.as_str(),
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

/// Builds each chunk of one stream with the same id, model and timestamp.
struct Chunker {
    id: String,
    model: String,
    created: u64,
    endpoint: Endpoint,
}

impl Chunker {
    fn event(
        &self,
        content: Option<String>,
        role: bool,
        finish: Option<FinishReason>,
        usage: Option<Usage>,
    ) -> Event {
        let usage = usage.map(UsageBody::from);
        let finish_reason = finish.map(FinishReason::as_str);
        // The usage chunk has no choices, as OpenAI sends it.
        let with_choice = usage.is_none();
        let json = match self.endpoint {
            Endpoint::Chat => serde_json::to_string(&ChatChunk {
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
            Endpoint::Completions => serde_json::to_string(&Completion {
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
        };
        Event::default().data(json.unwrap_or_default())
    }
}

pub(super) fn error_event(e: &ApiError) -> Event {
    Event::default().data(serde_json::to_string(&e.envelope()).unwrap_or_default())
}

fn stream(gen: Generation, timer: RequestTimer) -> impl IntoResponse {
    let chunker = Chunker {
        id: request_id(gen.endpoint),
        model: gen.deployment.id.clone(),
        created: unix_now(),
        endpoint: gen.endpoint,
    };
    let events = async_stream::stream! {
        // `gen` (the engine stream and the slot permit) lives exactly as long as this stream.
        let mut gen = gen;
        // Dropped with the stream: a client that leaves mid-stream counts as cancelled.
        let mut timer = timer;
        if chunker.endpoint == Endpoint::Chat {
            yield chunker.event(Some(String::new()), true, None, None);
        }
        loop {
            match gen.next().await {
                Some(TokenEvent::Delta(t)) => {
                    timer.token();
                    yield chunker.event(Some(t), false, None, None);
                }
                Some(TokenEvent::Finished { reason, usage }) => {
                    timer.finish(reason, usage);
                    let empty = (chunker.endpoint == Endpoint::Completions).then(String::new);
                    yield chunker.event(empty, false, Some(reason), None);
                    if gen.include_usage {
                        yield chunker.event(None, false, None, Some(usage));
                    }
                    break;
                }
                Some(TokenEvent::Failed(e)) => {
                    let e = ApiError::from(e);
                    timer.fail(&e);
                    yield error_event(&e);
                    break;
                }
                None => {
                    let e = ended_early();
                    timer.fail(&e);
                    yield error_event(&e);
                    break;
                }
            }
        }
        yield Event::default().data("[DONE]");
    };
    Sse::new(events.map(Ok::<_, Infallible>)).keep_alive(KeepAlive::default())
}
