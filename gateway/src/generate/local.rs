//! A completion on an engine of this node: prepare (template + tokenize) →
//! check the context → admission → engine. Everything that can be refused
//! is refused here, before a slot is taken or a byte is streamed. The slot's
//! permit goes into the engine with the request and is released when the
//! engine is done with it (not when a slow client has read it all).

use crate::metrics::RequestTimer;
use crate::openai::ApiError;
use crate::router::Deployment;
use crate::validate::{Endpoint, ValidRequest};
use herd_engines::{EngineError, EngineState, GenerateRequest, SlotHold, TokenEvent, TokenStream};
use std::sync::Arc;

/// A running generation. Dropping it cancels the work (which frees the slot).
pub struct Generation {
    tokens: TokenStream,
    /// The first event, when it was awaited before answering.
    first: Option<TokenEvent>,
    pub deployment: Arc<Deployment>,
    pub endpoint: Endpoint,
    pub stream: bool,
    pub include_usage: bool,
    /// The answer's `<tool_call>` blocks are returned as `tool_calls`.
    pub tool_calls: bool,
    pub prompt_tokens: u32,
}

impl Generation {
    pub async fn next(&mut self) -> Option<TokenEvent> {
        match self.first.take() {
            Some(event) => Some(event),
            None => self.tokens.next().await,
        }
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
    let prepared = engine.prepare(req.input.clone()).await?;
    let n_prompt = u32::try_from(prepared.tokens.len()).unwrap_or(u32::MAX);
    let max_tokens = completion_budget(
        n_prompt,
        req.max_tokens,
        info.ctx_size,
        deployment.max_tokens_limit,
    )?;
    timer.queued();
    let permit = deployment.admission.admit().await?;
    timer.admitted();
    let mut sampling = req.sampling.clone();
    sampling.max_tokens = max_tokens;
    let mut tokens = engine.generate(GenerateRequest {
        prompt: prepared,
        params: sampling,
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
        deployment: deployment.clone(),
        endpoint: req.endpoint,
        stream: req.stream,
        include_usage: req.include_usage,
        tool_calls: req.tool_calls,
        prompt_tokens: n_prompt,
    })
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
