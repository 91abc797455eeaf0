//! The edge: OpenAI request bodies become [`ValidRequest`]s, or a 400 that
//! names the field and the value.

use crate::openai::request::{
    ChatCompletionRequest, CommonParams, CompletionRequest, Content, Message, Prompt, Stop,
};
use crate::openai::ApiError;
use herd_engines::{ChatMessage, PromptInput, SamplingParams};
use tools::{add_tools_prompt, render_calls, render_result, OutputFields};

mod tools;

pub const MAX_STOP_SEQUENCES: usize = 4;
pub const MAX_MESSAGES: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
}

impl Endpoint {
    /// Its path under the API root.
    pub fn path(self) -> &'static str {
        match self {
            Self::Chat => "/v1/chat/completions",
            Self::Completions => "/v1/completions",
        }
    }
}

#[derive(Debug)]
pub struct ValidRequest {
    pub endpoint: Endpoint,
    pub model: String,
    pub input: PromptInput,
    /// `max_tokens` here is a placeholder until the prompt length is known.
    pub sampling: SamplingParams,
    /// What the client asked for, if anything (checked against the context later).
    pub max_tokens: Option<u32>,
    pub stream: bool,
    pub include_usage: bool,
    /// The answer is read back for `<tool_call>` blocks (returned as `tool_calls`).
    pub tool_calls: bool,
}

pub fn chat(req: ChatCompletionRequest) -> Result<ValidRequest, ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "`messages` must contain at least one message",
        ));
    }
    if req.messages.len() > MAX_MESSAGES {
        return Err(ApiError::invalid(
            "messages",
            format!("`messages` may hold at most {MAX_MESSAGES} messages"),
        ));
    }
    let mut messages: Vec<ChatMessage> = req
        .messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| message(i, m))
        .collect::<Result<_, _>>()?;
    let output = tools::output(OutputFields {
        tools: req.tools,
        tool_choice: req.tool_choice,
        parallel_tool_calls: req.parallel_tool_calls,
        response_format: req.response_format,
    })?;
    if let Some(prompt) = output.tools_prompt {
        add_tools_prompt(&mut messages, prompt);
    }
    let mut valid = common(
        Endpoint::Chat,
        req.model,
        PromptInput::Chat(messages),
        req.common,
    )?;
    valid.sampling.grammar = output.grammar;
    valid.tool_calls = output.tool_calls;
    Ok(valid)
}

pub fn completion(req: CompletionRequest) -> Result<ValidRequest, ApiError> {
    let text = match req.prompt {
        Prompt::Text(t) => t,
        Prompt::Texts(mut ts) if ts.len() == 1 => ts.remove(0),
        Prompt::Texts(_) | Prompt::TokenLists(_) => {
            return Err(ApiError::invalid(
                "prompt",
                "`prompt` must be a single string (batched prompts are not supported)",
            ))
        }
        Prompt::Tokens(_) => {
            return Err(ApiError::invalid(
                "prompt",
                "`prompt` as token ids is not supported; send text",
            ))
        }
    };
    if text.is_empty() {
        return Err(ApiError::invalid("prompt", "`prompt` must not be empty"));
    }
    common(
        Endpoint::Completions,
        req.model,
        PromptInput::Text(text),
        req.common,
    )
}

fn message(index: usize, m: Message) -> Result<ChatMessage, ApiError> {
    let role = match m.role.as_str() {
        "system" | "developer" => "system",
        "user" => "user",
        "assistant" => "assistant",
        // Read by the model as Hermes/Qwen templates render it: a user turn.
        "tool" | "function" => "user",
        other => {
            return Err(ApiError::invalid(
                "messages",
                format!("`messages[{index}].role` must be system, developer, user, assistant or tool, got {other:?}"),
            ))
        }
    };
    let content = match m.content {
        None => String::new(),
        Some(Content::Text(t)) => t,
        Some(Content::Parts(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.into_iter().enumerate() {
                match (part.kind.as_str(), part.text) {
                    ("text", Some(t)) => text.push_str(&t),
                    (kind, _) => {
                        return Err(ApiError::invalid(
                            "messages",
                            format!("`messages[{index}].content[{j}]` of type {kind:?} is not supported by this model; send text parts"),
                        ))
                    }
                }
            }
            text
        }
    };
    let mut content = content;
    match (m.role.as_str(), m.tool_calls) {
        ("assistant", Some(calls)) => render_calls(&mut content, &calls),
        ("tool" | "function", _) => content = render_result(&content),
        (_, Some(_)) => {
            return Err(ApiError::invalid(
                "messages",
                format!("`messages[{index}].tool_calls` is only allowed on assistant messages"),
            ))
        }
        (_, None) => {}
    }
    if content.contains('\0') {
        return Err(ApiError::invalid(
            "messages",
            format!("`messages[{index}].content` contains a NUL character"),
        ));
    }
    Ok(ChatMessage {
        role: role.to_string(),
        content,
    })
}

fn range(
    param: &'static str,
    value: Option<f64>,
    lo: f64,
    hi: f64,
    default: f64,
) -> Result<f32, ApiError> {
    let v = value.unwrap_or(default);
    if !(lo..=hi).contains(&v) {
        return Err(ApiError::invalid(
            param,
            format!("`{param}` must be between {lo} and {hi}, got {v}"),
        ));
    }
    Ok(v as f32)
}

fn common(
    endpoint: Endpoint,
    model: String,
    input: PromptInput,
    p: CommonParams,
) -> Result<ValidRequest, ApiError> {
    if model.is_empty() {
        return Err(ApiError::invalid(
            "model",
            "`model` must name a model; GET /v1/models lists them",
        ));
    }
    let temperature = range("temperature", p.temperature, 0.0, 2.0, 1.0)?;
    let top_p = range("top_p", p.top_p, 0.0, 1.0, 1.0)?;
    if top_p == 0.0 {
        return Err(ApiError::invalid(
            "top_p",
            "`top_p` must be greater than 0, got 0",
        ));
    }
    let presence_penalty = range("presence_penalty", p.presence_penalty, -2.0, 2.0, 0.0)?;
    let frequency_penalty = range("frequency_penalty", p.frequency_penalty, -2.0, 2.0, 0.0)?;
    if let Some(n) = p.n {
        if n != 1 {
            return Err(ApiError::invalid(
                "n",
                format!("`n` must be 1 (one choice per request), got {n}"),
            ));
        }
    }
    let (param, requested) = match (p.max_completion_tokens, p.max_tokens) {
        (Some(v), _) => ("max_completion_tokens", Some(v)),
        (None, v) => ("max_tokens", v),
    };
    let max_tokens = match requested {
        None => None,
        Some(v) if v >= 1 && v <= i64::from(u32::MAX) => Some(v as u32),
        Some(v) => {
            return Err(ApiError::invalid(
                param,
                format!("`{param}` must be at least 1, got {v}"),
            ))
        }
    };
    let stop = match p.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    if stop.len() > MAX_STOP_SEQUENCES {
        return Err(ApiError::invalid(
            "stop",
            format!(
                "`stop` may hold at most {MAX_STOP_SEQUENCES} sequences, got {}",
                stop.len()
            ),
        ));
    }
    // OpenAI seeds are 64-bit; llama.cpp's are 32-bit: fold, so every distinct seed stays deterministic.
    let seed = p.seed.map(|s| (s as u64 ^ ((s as u64) >> 32)) as u32);
    let stream = p.stream.unwrap_or(false);
    let include_usage = stream
        && p.stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
    Ok(ValidRequest {
        endpoint,
        model,
        input,
        sampling: SamplingParams {
            temperature,
            top_p,
            max_tokens: 0,
            stop,
            seed,
            presence_penalty,
            frequency_penalty,
            grammar: None,
        },
        max_tokens,
        stream,
        include_usage,
        tool_calls: false,
    })
}

#[cfg(test)]
mod tests;
