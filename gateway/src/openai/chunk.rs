//! Chat and text completion stream chunks: what one stream's events carry
//! (typed payloads, encoded as JSON by the SSE encoder in `http/respond.rs`),
//! built by one [`Chunker`] per stream so every chunk has the same id, model
//! and timestamp; tool calls parsed from the text become `delta.tool_calls`.

use super::error::ErrorEnvelope;
use super::logprobs::{ChatLogprobs, CompletionLogprobs};
use super::response::{
    unix_now, ChatChunk, ChatChunkChoice, Completion, CompletionChoice, Delta as ChunkDelta,
    UsageBody, FINGERPRINT,
};
use super::tool_stream::{self, Piece};
use crate::validate::Endpoint;
use herd_engines::{FinishReason, Usage};
use serde::Serialize;

/// A fresh response id for `endpoint` (`chatcmpl-…`, `cmpl-…`).
pub(crate) fn request_id(endpoint: Endpoint) -> String {
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

/// One stream event's JSON, before encoding.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(crate) enum Payload {
    Chat(ChatChunk),
    Text(Completion),
    Error(ErrorEnvelope),
}

/// The logprobs one chunk carries, in its endpoint's shape.
pub(crate) enum ChunkLogprobs {
    None,
    Chat(ChatLogprobs),
    Text(CompletionLogprobs),
}

/// Builds each chunk of one stream with the same id, model and timestamp.
pub(crate) struct Chunker {
    id: String,
    model: String,
    created: u64,
    endpoint: Endpoint,
}

impl Chunker {
    pub(crate) fn endpoint(&self) -> Endpoint {
        self.endpoint
    }

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
        self.choice_event(0, content, ChunkLogprobs::None, role, finish, usage)
    }

    /// A chunk of choice `index`, with the logprobs of its tokens in it.
    pub(crate) fn choice_event(
        &self,
        index: u32,
        content: Option<String>,
        logprobs: ChunkLogprobs,
        role: bool,
        finish: Option<FinishReason>,
        usage: Option<Usage>,
    ) -> Payload {
        let (chat_logprobs, text_logprobs) = match logprobs {
            ChunkLogprobs::None => (None, None),
            ChunkLogprobs::Chat(l) => (Some(l), None),
            ChunkLogprobs::Text(l) => (None, Some(l)),
        };
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
                        index,
                        delta: ChunkDelta {
                            role: role.then_some("assistant"),
                            content,
                            tool_calls: None,
                        },
                        finish_reason,
                        logprobs: chat_logprobs,
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
                        index,
                        text: content.unwrap_or_default(),
                        finish_reason,
                        logprobs: text_logprobs,
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
pub(crate) fn finish_reason(reason: FinishReason, called: bool) -> &'static str {
    match reason {
        FinishReason::Stop if called => "tool_calls",
        other => other.as_str(),
    }
}

/// The chunks for what the tool-call parser read: content, or a call's part.
pub(crate) fn tool_chunks(chunker: &Chunker, index: u32, pieces: Vec<Piece>) -> Vec<Payload> {
    pieces
        .into_iter()
        .map(|piece| {
            let event = |content| {
                chunker.choice_event(index, content, ChunkLogprobs::None, false, None, None)
            };
            let call = match tool_stream::delta(piece) {
                Ok(call) => call,
                Err(content) => return event(Some(content)),
            };
            let mut payload = event(None);
            if let Payload::Chat(chunk) = &mut payload {
                for choice in &mut chunk.choices {
                    choice.delta.tool_calls = Some(vec![call.clone()]);
                }
            }
            payload
        })
        .collect()
}
