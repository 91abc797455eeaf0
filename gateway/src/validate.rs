//! The edge: OpenAI request bodies become [`ValidRequest`]s, or a 400 that
//! names the field and the value.

use crate::chat::{Chat, Role, Turn};
use crate::openai::request::{
    ChatCompletionRequest, CommonParams, CompletionRequest, Content, Message, Prompt, Stop,
};
use crate::openai::ApiError;
use herd_engines::{PromptInput, SamplingParams};
use tools::OutputFields;

mod tools;

mod sampling;

pub const MAX_STOP_SEQUENCES: usize = 4;
pub const MAX_MESSAGES: usize = 10_000;
/// Prompts in one `/v1/completions` request (each gets its own `n` choices).
pub const MAX_PROMPTS: usize = 256;

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
    pub input: Input,
    /// `max_tokens` here is a placeholder until the prompt length is known;
    /// `grammar` is a JSON answer's (a tool call's comes with the chat's tools).
    pub sampling: SamplingParams,
    /// What the client asked for, if anything (checked against the context later).
    pub max_tokens: Option<u32>,
    pub stream: bool,
    pub include_usage: bool,
}

/// What the model is asked to continue.
#[derive(Debug)]
pub enum Input {
    /// Rendered once the answering model, and so its tool format, is known.
    Chat(Chat),
    /// Completions: the prompt, then any further ones of an array `prompt`,
    /// answered in order, their choices numbered on.
    Prompts {
        first: PromptInput,
        more: Vec<PromptInput>,
    },
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
    sampling::chat_unsupported(&req)?;
    let logprobs = sampling::chat_logprobs(&req)?;
    let turns: Vec<Turn> = req
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
    if output.tools.is_some() && logprobs.is_some() {
        return Err(ApiError::invalid(
            "logprobs",
            "`logprobs` together with `tools` is not supported by herd; ask for one or the other",
        ));
    }
    let chat = Chat {
        turns,
        tools: output.tools,
    };
    let mut valid = common(
        Endpoint::Chat,
        req.model,
        Input::Chat(chat),
        req.common,
        logprobs,
    )?;
    valid.sampling.grammar = output.grammar;
    Ok(valid)
}

pub fn completion(req: CompletionRequest) -> Result<ValidRequest, ApiError> {
    let logprobs = sampling::completion_fields(&req)?;
    let inputs: Vec<PromptInput> = match req.prompt {
        Prompt::Text(t) => vec![PromptInput::Text(t)],
        Prompt::Texts(ts) => ts.into_iter().map(PromptInput::Text).collect(),
        Prompt::Tokens(ids) => vec![token_ids(0, ids)?],
        Prompt::TokenLists(lists) => lists
            .into_iter()
            .enumerate()
            .map(|(i, ids)| token_ids(i, ids))
            .collect::<Result<_, _>>()?,
    };
    if inputs.is_empty() {
        return Err(ApiError::invalid("prompt", "`prompt` must not be empty"));
    }
    if inputs.len() > MAX_PROMPTS {
        return Err(ApiError::invalid(
            "prompt",
            format!(
                "`prompt` may hold at most {MAX_PROMPTS} prompts, got {}",
                inputs.len()
            ),
        ));
    }
    let empty = |p: &PromptInput| match p {
        PromptInput::Text(t) => t.is_empty(),
        PromptInput::Tokens(ids) => ids.is_empty(),
        PromptInput::Chat(_) => false,
    };
    if let Some(i) = inputs.iter().position(empty) {
        let at = if inputs.len() > 1 {
            format!("[{i}]")
        } else {
            String::new()
        };
        return Err(ApiError::invalid(
            "prompt",
            format!("`prompt{at}` must not be empty"),
        ));
    }
    let mut inputs = inputs.into_iter();
    let Some(first) = inputs.next() else {
        return Err(ApiError::invalid("prompt", "`prompt` must not be empty"));
    };
    let input = Input::Prompts {
        first,
        more: inputs.collect(),
    };
    common(
        Endpoint::Completions,
        req.model,
        input,
        req.common,
        logprobs,
    )
}

/// A prompt given as token ids (checked against the vocabulary once the model is known).
fn token_ids(index: usize, ids: Vec<i64>) -> Result<PromptInput, ApiError> {
    ids.into_iter()
        .map(|id| {
            i32::try_from(id).ok().filter(|&id| id >= 0).ok_or_else(|| {
                ApiError::invalid(
                    "prompt",
                    format!("`prompt` token ids must be non-negative token ids, got {id} (prompt {index})"),
                )
            })
        })
        .collect::<Result<_, _>>()
        .map(PromptInput::Tokens)
}

fn message(index: usize, m: Message) -> Result<Turn, ApiError> {
    let role = match m.role.as_str() {
        "system" | "developer" => Role::System,
        "user" => Role::User,
        "assistant" => Role::Assistant,
        "tool" | "function" => Role::Tool,
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
            // Text parts are joined by a newline, as vLLM and llama-server do.
            let mut texts = Vec::with_capacity(parts.len());
            for (j, part) in parts.into_iter().enumerate() {
                match (part.kind.as_str(), part.text) {
                    ("text", Some(t)) => texts.push(t),
                    (kind, _) => {
                        return Err(ApiError::invalid(
                            "messages",
                            format!("`messages[{index}].content[{j}]` of type {kind:?} is not supported by this model; send text parts"),
                        ))
                    }
                }
            }
            texts.join("\n")
        }
    };
    let calls = match (role, m.tool_calls) {
        (Role::Assistant, Some(calls)) => tools::calls(calls),
        (_, Some(_)) => {
            return Err(ApiError::invalid(
                "messages",
                format!("`messages[{index}].tool_calls` is only allowed on assistant messages"),
            ))
        }
        (_, None) => Vec::new(),
    };
    // (A call's name and arguments reach the prompt as JSON, where NUL is escaped.)
    if content.contains('\0') {
        return Err(ApiError::invalid(
            "messages",
            format!("`messages[{index}].content` contains a NUL character"),
        ));
    }
    Ok(Turn {
        role,
        content,
        calls,
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
    input: Input,
    p: CommonParams,
    logprobs: Option<u32>,
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
    let extras = sampling::extras(&p)?;
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
            top_k: extras.top_k,
            min_p: extras.min_p,
            repetition_penalty: extras.repetition_penalty,
            logit_bias: extras.logit_bias,
            logprobs,
            n: extras.n,
            grammar: None,
        },
        max_tokens,
        stream,
        include_usage,
    })
}

#[cfg(test)]
mod tests;
