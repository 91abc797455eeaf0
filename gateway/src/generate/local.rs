//! A completion on an engine of this node: render a chat in the model's tool
//! format → prepare (template + tokenize) → check the context → admission →
//! engine. Everything that can be refused is refused here, before a slot is
//! taken or a byte is streamed. The slot's permit goes into the engine with
//! the request and is released when the engine is done with it (not when a
//! slow client has read it all).

use crate::metrics::RequestTimer;
use crate::openai::ApiError;
use crate::router::Deployment;
use crate::validate::{Endpoint, Input, ValidRequest};
use herd_engines::{
    EngineError, EngineState, FinishReason, GenerateRequest, ModelInfo, PreparedPrompt,
    PromptInput, SamplingParams, SlotHold, TokenEvent, TokenStream, ToolFormat, Usage,
};
use std::collections::VecDeque;
use std::sync::Arc;

/// A running generation. Dropping it cancels the work (which frees the slot).
/// The prompts of an array `prompt` run one after another, each with its
/// `n` choices, numbered on; one `Finished` ends them all.
pub struct Generation {
    tokens: TokenStream,
    /// The first event, when it was awaited before answering.
    first: Option<TokenEvent>,
    /// Prompts still to run, each with its completion budget.
    rest: VecDeque<(PreparedPrompt, u32)>,
    sampling: SamplingParams,
    /// The API key's name: the later prompts queue under it too.
    key: String,
    /// Index of the current prompt's first choice.
    offset: u32,
    reasons: Vec<FinishReason>,
    usage: Usage,
    pub deployment: Arc<Deployment>,
    pub endpoint: Endpoint,
    pub stream: bool,
    pub include_usage: bool,
    /// Alternatives per token, if logprobs were asked for.
    pub logprobs: Option<u32>,
    /// Choices in all: `n` per prompt.
    pub choices: u32,
    /// The answer's calls, written in this format, are returned as `tool_calls`.
    pub tool_format: Option<ToolFormat>,
    pub prompt_tokens: u32,
}

impl Generation {
    pub async fn next(&mut self) -> Option<TokenEvent> {
        loop {
            let event = match self.first.take() {
                Some(event) => Some(event),
                None => self.tokens.next().await,
            };
            match event {
                Some(TokenEvent::Delta(mut delta)) => {
                    delta.index += self.offset;
                    return Some(TokenEvent::Delta(delta));
                }
                Some(TokenEvent::Finished { reasons, usage }) => {
                    self.offset += reasons.len() as u32;
                    self.reasons.extend(reasons);
                    self.usage = sum(self.usage, usage);
                    let Some((prompt, max_tokens)) = self.rest.pop_front() else {
                        return Some(TokenEvent::Finished {
                            reasons: std::mem::take(&mut self.reasons),
                            usage: self.usage,
                        });
                    };
                    if let Err(e) = self.next_prompt(prompt, max_tokens).await {
                        return Some(TokenEvent::Failed(e));
                    }
                }
                other => return other,
            }
        }
    }

    async fn next_prompt(
        &mut self,
        prompt: PreparedPrompt,
        max_tokens: u32,
    ) -> Result<(), EngineError> {
        let permit = self
            .deployment
            .admission
            .admit_many(&self.key, self.sampling.n as usize)
            .await
            .map_err(|e| EngineError::Unavailable(e.to_string()))?;
        let mut sampling = self.sampling.clone();
        sampling.max_tokens = max_tokens;
        self.tokens = self.deployment.engine.generate(GenerateRequest {
            prompt,
            params: sampling,
            slot: SlotHold::new(permit),
        })?;
        Ok(())
    }
}

fn sum(a: Usage, b: Usage) -> Usage {
    Usage {
        prompt_tokens: a.prompt_tokens.saturating_add(b.prompt_tokens),
        completion_tokens: a.completion_tokens.saturating_add(b.completion_tokens),
        cached_tokens: a.cached_tokens.saturating_add(b.cached_tokens),
    }
}

/// `timer` sees the wait for a slot; the caller records how the request
/// ends. With `await_first` (another deployment could still take the
/// request), the first event is awaited here, so an engine that fails
/// before producing anything is a failed attempt, not a broken answer.
pub async fn start(
    deployment: &Arc<Deployment>,
    req: &ValidRequest,
    timer: &mut RequestTimer,
    await_first: bool,
) -> Result<Generation, ApiError> {
    let engine = &deployment.engine;
    let info = engine.info().ok_or_else(|| not_started(engine.state()))?;
    if info.embedding.is_some() {
        return Err(ApiError::Engine(EngineError::NotServed(format!(
            "model `{}` is an embedding model; it serves /v1/embeddings only",
            deployment.id
        ))));
    }
    let n = check_sampling(&req.sampling, deployment, &info)?;
    let mut sampling = req.sampling.clone();
    let (inputs, tool_format) = match &req.input {
        Input::Chat(chat) => {
            let rendered = chat.render(info.tool_format);
            sampling.grammar = rendered.grammar.or(sampling.grammar);
            let format = chat.tools.is_some().then_some(info.tool_format);
            (vec![PromptInput::Chat(rendered.messages)], format)
        }
        Input::Prompts { first, more } => {
            (std::iter::once(first).chain(more).cloned().collect(), None)
        }
    };
    let choices = n.saturating_mul(inputs.len() as u32);
    // Every prompt is prepared and checked before any of them runs.
    let mut prompts = VecDeque::new();
    for input in inputs {
        check_ids(&input, &info)?;
        let prepared = engine.prepare(input).await?;
        let n_prompt = u32::try_from(prepared.tokens.len()).unwrap_or(u32::MAX);
        let max_tokens = completion_budget(
            n_prompt,
            req.max_tokens,
            info.ctx_size,
            deployment.max_tokens_limit,
        )?;
        prompts.push_back((prepared, max_tokens));
    }
    let Some((prepared, max_tokens)) = prompts.pop_front() else {
        return Err(ApiError::invalid("prompt", "`prompt` must not be empty"));
    };
    let n_prompt = u32::try_from(prepared.tokens.len()).unwrap_or(u32::MAX);
    timer.queued();
    let permit = deployment
        .admission
        .admit_many(timer.key(), n as usize)
        .await?;
    timer.admitted();
    let mut tokens = engine.generate(GenerateRequest {
        prompt: prepared,
        params: SamplingParams {
            max_tokens,
            ..sampling.clone()
        },
        slot: SlotHold::new(permit),
    })?;
    let first = if await_first {
        match tokens.next().await {
            Some(TokenEvent::Failed(e)) => return Err(ApiError::Engine(e)),
            None => {
                return Err(ApiError::Engine(EngineError::Crashed(
                    "the engine stopped before the first token".into(),
                )))
            }
            event => event,
        }
    } else {
        None
    };
    Ok(Generation {
        tokens,
        first,
        rest: prompts,
        key: timer.key().to_string(),
        sampling,
        offset: 0,
        reasons: Vec::new(),
        usage: Usage::default(),
        deployment: deployment.clone(),
        endpoint: req.endpoint,
        stream: req.stream,
        include_usage: req.include_usage,
        logprobs: req.sampling.logprobs,
        choices,
        tool_format,
        prompt_tokens: n_prompt,
    })
}

/// What needs the model to check: `n` against the slots (each choice takes
/// one) and the configured limit, `logit_bias` ids against the vocabulary.
fn check_sampling(
    sampling: &SamplingParams,
    deployment: &Deployment,
    info: &ModelInfo,
) -> Result<u32, ApiError> {
    let n = sampling.n.max(1);
    let slots = u32::try_from(deployment.admission.capacity()).unwrap_or(u32::MAX);
    let limit = deployment.max_n.min(slots);
    if n > limit {
        let why = if limit == slots && slots < deployment.max_n {
            format!("each choice takes one of this model's {slots} slots")
        } else {
            "the configured `max_n`".to_string()
        };
        return Err(ApiError::invalid(
            "n",
            format!("`n` must be at most {limit} for this model ({why}), got {n}"),
        ));
    }
    if let Some(&(id, _)) = sampling
        .logit_bias
        .iter()
        .find(|&&(id, _)| id < 0 || id as u32 >= info.n_vocab)
    {
        return Err(ApiError::invalid(
            "logit_bias",
            format!(
                "`logit_bias` token id {id} is not in this model's vocabulary (0..{})",
                info.n_vocab
            ),
        ));
    }
    Ok(n)
}

/// A prompt of token ids must use this model's vocabulary.
fn check_ids(input: &PromptInput, info: &ModelInfo) -> Result<(), ApiError> {
    let PromptInput::Tokens(ids) = input else {
        return Ok(());
    };
    match ids.iter().find(|&&id| id < 0 || id as u32 >= info.n_vocab) {
        Some(id) => Err(ApiError::invalid(
            "prompt",
            format!(
                "`prompt` token id {id} is not in this model's vocabulary (0..{})",
                info.n_vocab
            ),
        )),
        None => Ok(()),
    }
}

/// Why an engine that has not started yet takes no request: still loading,
/// or its host keeps failing to start (a broken model file), and why.
fn not_started(state: EngineState) -> ApiError {
    let why = match state {
        EngineState::Restarting { last_error, .. } => {
            format!("the engine failed to start: {last_error}")
        }
        EngineState::Starting | EngineState::Ready => "the model is still loading".into(),
    };
    ApiError::Engine(EngineError::Unavailable(why))
}

/// How many tokens may be generated: what was asked, if it fits; else what fits.
fn completion_budget(
    n_prompt: u32,
    asked: Option<u32>,
    ctx: u32,
    limit: u32,
) -> Result<u32, ApiError> {
    if n_prompt >= ctx {
        return Err(ApiError::ContextLengthExceeded(format!(
            "this model's maximum context length is {ctx} tokens, but the prompt has {n_prompt} tokens; shorten the messages"
        )));
    }
    match asked {
        Some(m) if m > limit => {
            Err(ApiError::invalid("max_tokens", format!("`max_tokens` must be at most {limit} for this model, got {m}")))
        }
        Some(m) if u64::from(n_prompt) + u64::from(m) > u64::from(ctx) => {
            Err(ApiError::ContextLengthExceeded(format!(
                "this model's maximum context length is {ctx} tokens, but {} were requested ({n_prompt} in the prompt, {m} for the completion); reduce the prompt or max_tokens",
                u64::from(n_prompt) + u64::from(m)
            )))
        }
        Some(m) => Ok(m),
        None => Ok(limit.min(ctx - n_prompt)),
    }
}

#[cfg(test)]
mod tests {
    use super::completion_budget;

    #[test]
    fn budget_respects_context_and_limit() {
        assert_eq!(completion_budget(10, None, 100, 50).ok(), Some(50));
        assert_eq!(completion_budget(90, None, 100, 50).ok(), Some(10));
        assert_eq!(completion_budget(10, Some(20), 100, 50).ok(), Some(20));
        let code = |r: Result<u32, crate::openai::ApiError>| r.err().map(|e| e.kind());
        assert_eq!(
            code(completion_budget(100, None, 100, 50)),
            Some("context_length_exceeded")
        );
        assert_eq!(
            code(completion_budget(90, Some(20), 100, 100)),
            Some("context_length_exceeded")
        );
        assert_eq!(
            code(completion_budget(10, Some(60), 100, 50)),
            Some("invalid_value")
        );
    }
}
