//! Request bodies: raw bytes → OpenAI request → [`ValidRequest`], as the
//! `OpenAiJson` extractor and the handlers do it. Every refusal must be a 4xx
//! in OpenAI's shape; every accepted request must hold validation's promises
//! and, sent again as the body a client would write for it, validate to the
//! same request (validation is a normal form).

use super::assert_client_error;
use crate::chat::{Chat, Role};
use crate::deploy::plan::Plan;
use crate::grammar::tools::Choice;
use crate::openai::json::parse_body;
use crate::openai::request::{ChatCompletionRequest, CompletionRequest};
use crate::openai::ApiError;
use crate::validate::{self, Endpoint, Input, ValidRequest, MAX_MESSAGES, MAX_STOP_SEQUENCES};
use herd_engines::{PromptInput, ToolFormat};
use serde_json::{json, Map, Value};

fn chat(body: &[u8]) -> Result<ValidRequest, ApiError> {
    parse_body::<ChatCompletionRequest>(body).and_then(validate::chat)
}

fn completion(body: &[u8]) -> Result<ValidRequest, ApiError> {
    parse_body::<CompletionRequest>(body).and_then(validate::completion)
}

/// `POST /v1/chat/completions` with `data` as the body.
pub fn chat_request(data: &[u8]) {
    check(chat(data), chat);
}

/// `POST /v1/completions` with `data` as the body.
pub fn completion_request(data: &[u8]) {
    check(completion(data), completion);
}

fn check(
    first: Result<ValidRequest, ApiError>,
    again: fn(&[u8]) -> Result<ValidRequest, ApiError>,
) {
    let valid = match first {
        Ok(v) => v,
        Err(e) => return assert_client_error(&e),
    };
    assert_valid(&valid);
    let body = serde_json::to_vec(&as_body(&valid)).unwrap_or_default();
    let second = again(&body)
        .map(|s| format!("{s:?}"))
        .map_err(|e| e.to_string());
    let sent = String::from_utf8_lossy(&body);
    assert_eq!(second, Ok(format!("{valid:?}")), "re-sent as {sent}");
}

/// What validation promises the engine.
fn assert_valid(v: &ValidRequest) {
    let s = &v.sampling;
    assert!(!v.model.is_empty());
    assert!((0.0..=2.0).contains(&s.temperature), "{v:?}");
    assert!(s.top_p > 0.0 && s.top_p <= 1.0, "{v:?}");
    assert!((-2.0..=2.0).contains(&s.presence_penalty), "{v:?}");
    assert!((-2.0..=2.0).contains(&s.frequency_penalty), "{v:?}");
    assert!(s.stop.len() <= MAX_STOP_SEQUENCES, "{v:?}");
    assert!(v.max_tokens != Some(0), "{v:?}");
    assert!(v.stream || !v.include_usage, "{v:?}");
    assert!(s.n >= 1 && s.min_p >= 0.0 && s.min_p <= 1.0, "{v:?}");
    assert!(
        s.repetition_penalty > 0.0 && s.repetition_penalty <= 2.0,
        "{v:?}"
    );
    assert!(
        s.logit_bias
            .iter()
            .all(|&(id, b)| id >= 0 && b.abs() <= 100.0),
        "{v:?}"
    );
    match &v.input {
        Input::Chat(chat) => assert_chat(v, chat),
        Input::Prompts { first, more } => {
            for input in std::iter::once(first).chain(more) {
                assert_prompt(v, input);
            }
        }
    }
}

fn assert_chat(v: &ValidRequest, chat: &Chat) {
    assert_eq!(v.endpoint, Endpoint::Chat);
    assert!(!chat.turns.is_empty() && chat.turns.len() <= MAX_MESSAGES);
    assert!(
        chat.tools.is_none() || v.sampling.grammar.is_none(),
        "{v:?}"
    );
    for format in [ToolFormat::Hermes, ToolFormat::Llama3] {
        let rendered = chat.render(format);
        assert_eq!(rendered.grammar.is_some(), chat.tools.is_some());
        for m in rendered.messages {
            assert!(!m.content.contains('\0'), "{v:?}");
        }
    }
}

/// A completion's prompt: text or token ids, never empty (a chat is `Input::Chat`).
fn assert_prompt(v: &ValidRequest, input: &PromptInput) {
    assert_eq!(v.endpoint, Endpoint::Completions);
    let ok = match input {
        PromptInput::Text(text) => !text.is_empty(),
        PromptInput::Tokens(ids) => !ids.is_empty() && ids.iter().all(|&id| id >= 0),
        PromptInput::Chat(_) => false,
    };
    assert!(ok, "{v:?}");
}

/// The body a client would send for `v`.
fn as_body(v: &ValidRequest) -> Value {
    let s = &v.sampling;
    let mut body = Map::new();
    body.insert("model".into(), json!(v.model));
    match &v.input {
        Input::Chat(chat) => chat_body(chat, &mut body),
        Input::Prompts { first, more } => {
            let prompt = |p: &PromptInput| match p {
                PromptInput::Text(t) => json!(t),
                PromptInput::Tokens(ids) => json!(ids),
                PromptInput::Chat(_) => Value::Null,
            };
            let prompt = if more.is_empty() {
                prompt(first)
            } else {
                let all = std::iter::once(first).chain(more);
                Value::Array(all.map(prompt).collect())
            };
            body.insert("prompt".into(), prompt);
        }
    }
    let bias: Map<String, Value> = s
        .logit_bias
        .iter()
        .map(|(id, b)| (id.to_string(), json!(b)))
        .collect();
    let logprobs = match (v.endpoint, s.logprobs) {
        (_, None) => Value::Null,
        (Endpoint::Chat, Some(k)) => {
            body.insert("top_logprobs".into(), json!(k));
            json!(true)
        }
        (Endpoint::Completions, Some(k)) => json!(k),
    };
    for (key, value) in [
        ("temperature", json!(s.temperature)),
        ("top_p", json!(s.top_p)),
        ("presence_penalty", json!(s.presence_penalty)),
        ("frequency_penalty", json!(s.frequency_penalty)),
        ("stop", json!(s.stop)),
        ("seed", json!(s.seed)),
        ("max_tokens", json!(v.max_tokens)),
        ("stream", json!(v.stream)),
        ("n", json!(s.n)),
        ("top_k", json!(s.top_k)),
        ("min_p", json!(s.min_p)),
        ("repetition_penalty", json!(s.repetition_penalty)),
        ("logit_bias", Value::Object(bias)),
        ("logprobs", logprobs),
        ("stream_options", json!({"include_usage": v.include_usage})),
    ] {
        body.insert(key.into(), value);
    }
    Value::Object(body)
}

/// A chat's messages and tools as a client writes them.
fn chat_body(chat: &Chat, body: &mut Map<String, Value>) {
    let messages: Vec<Value> = chat
        .turns
        .iter()
        .map(|t| {
            let role = match t.role {
                Role::System => "system",
                Role::User => "user",
                Role::Assistant => "assistant",
                Role::Tool => "tool",
            };
            let mut m = json!({"role": role, "content": t.content});
            if !t.calls.is_empty() {
                let calls: Vec<Value> = t
                    .calls
                    .iter()
                    .map(|c| json!({"type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
                    .collect();
                m["tool_calls"] = Value::Array(calls);
            }
            m
        })
        .collect();
    body.insert("messages".into(), Value::Array(messages));
    let Some(tools) = &chat.tools else {
        return;
    };
    let defs: Vec<Value> = tools
        .defs
        .iter()
        .map(|d| json!({"type": "function", "function": {"name": d.name, "description": d.description, "parameters": d.parameters}}))
        .collect();
    body.insert("tools".into(), Value::Array(defs));
    let choice = match tools.grammar.choice() {
        Choice::Auto => json!("auto"),
        Choice::Required => json!("required"),
        Choice::Named(name) => json!({"type": "function", "function": {"name": name}}),
    };
    body.insert("tool_choice".into(), choice);
    body.insert(
        "parallel_tool_calls".into(),
        json!(tools.grammar.parallel()),
    );
}

/// `POST /_herd/v1/plan` with `data` as the (already authenticated) body:
/// whatever decodes must encode back to the same plan.
pub fn plan_body(data: &[u8]) {
    if let Ok(plan) = serde_json::from_slice::<Plan>(data) {
        let again = serde_json::to_vec(&plan)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Plan>(&bytes).ok());
        assert_eq!(again.as_ref(), Some(&plan));
    }
}
