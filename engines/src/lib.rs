//! Engines turn a validated generation request into a bounded stream of token
//! events. Scheduling is not async: [`Engine::generate`] enqueues and hands
//! back a [`TokenStream`]; dropping the stream cancels the request and frees
//! its slot within one token.

mod embed;
#[doc(hidden)]
pub mod fuzz_targets;
pub mod llama;
pub mod text;
mod tool_format;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

pub use embed::{EmbedInput, EmbedRequest, EmbeddingInfo, Embeddings};
pub use tool_format::ToolFormat;

/// What the model is asked to continue: chat messages (templated by the
/// engine with the model's own chat template) or raw text.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum PromptInput {
    Chat(Vec<ChatMessage>),
    Text(String),
    /// Token ids, used as they are (checked against the vocabulary).
    Tokens(Vec<i32>),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// A prompt after templating and tokenization, ready to be scheduled.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PreparedPrompt {
    pub tokens: Vec<i32>,
}

/// Per-request sampling, already validated at the HTTP edge.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    pub top_p: f32,
    pub max_tokens: u32,
    pub stop: Vec<String>,
    pub seed: Option<u32>,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// Keep only the `top_k` most likely tokens (0: all).
    #[serde(default)]
    pub top_k: u32,
    /// Drop tokens less likely than `min_p` × the most likely one's probability (0: off).
    #[serde(default)]
    pub min_p: f32,
    /// Divides positive logits (multiplies negative ones) of every token already in the
    /// prompt or the output, llama.cpp's and vLLM's repetition penalty (1: off).
    #[serde(default = "no_repetition_penalty")]
    pub repetition_penalty: f32,
    /// Added to a token's logit before sampling, from -100 (bans it: the
    /// sampler adds -inf) to 100 (in practice forces it).
    #[serde(default)]
    pub logit_bias: Vec<(i32, f32)>,
    /// Report each sampled token's log-probability and this many alternatives.
    #[serde(default)]
    pub logprobs: Option<u32>,
    /// Independent choices sampled from the one prompt (its KV is decoded once and copied).
    #[serde(default = "one_choice")]
    pub n: u32,
    /// Output constraint (structured output, tool calls); `None` samples freely.
    #[serde(default)]
    pub grammar: Option<Grammar>,
}

/// A GBNF grammar (llama.cpp's grammar format) the output must match, built
/// and checked at the HTTP edge. Its root rule is `root`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Grammar {
    pub gbnf: String,
}

fn no_repetition_penalty() -> f32 {
    1.0
}

fn one_choice() -> u32 {
    1
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            max_tokens: 256,
            stop: Vec::new(),
            seed: None,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            top_k: 0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            logit_bias: Vec::new(),
            logprobs: None,
            n: 1,
            grammar: None,
        }
    }
}

#[derive(Debug)]
pub struct GenerateRequest {
    pub prompt: PreparedPrompt,
    pub params: SamplingParams,
    /// The caller's claim on a slot (its admission permit), kept by the engine
    /// while it works on the request.
    pub slot: SlotHold,
}

/// Held by the engine while a request is in it and dropped the moment the
/// request leaves (finished, failed or cancelled): a slot counts as busy for
/// as long as the engine is busy with it, not for as long as a slow client
/// takes to read what was already generated.
pub struct SlotHold(#[expect(dead_code, reason = "held only to be dropped")] Box<dyn Send + Sync>);

impl SlotHold {
    pub fn new(hold: impl Send + Sync + 'static) -> Self {
        Self(Box::new(hold))
    }
}

impl std::fmt::Debug for SlotHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SlotHold")
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Stop,
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// Prompt tokens whose KV came from the prompt cache.
    pub cached_tokens: u32,
}

/// A sampled token's log-probability under the model's raw distribution
/// (log-softmax of the logits, before bias, penalties and temperature).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenLogprob {
    /// The token's bytes (a piece of a multi-byte character is not valid UTF-8 alone).
    pub bytes: Vec<u8>,
    pub logprob: f32,
    /// The most likely tokens at this position, most likely first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top: Vec<TopLogprob>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TopLogprob {
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

/// New output of one choice.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Delta {
    /// Which of the `n` choices this belongs to.
    #[serde(default)]
    pub index: u32,
    /// Whole UTF-8 characters only, never part of a stop sequence (may be empty when only
    /// `logprobs` are new).
    pub text: String,
    /// One entry per token whose text is in `text` (only when logprobs were asked for).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logprobs: Vec<TokenLogprob>,
}

/// One event of a generation.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenEvent {
    Delta(Delta),
    /// Every choice has ended: why each one did (by index), and the usage of
    /// all of them (the prompt counted once).
    Finished {
        reasons: Vec<FinishReason>,
        usage: Usage,
    },
    Failed(EngineError),
}

/// What the engine reports about itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelInfo {
    /// Context length one request may use (prompt + completion).
    pub ctx_size: u32,
    pub slots: u32,
    pub has_chat_template: bool,
    pub n_params: u64,
    /// Tokens in the vocabulary (ids are `0..n_vocab`).
    #[serde(default)]
    pub n_vocab: u32,
    /// Which device holds which layers, as llama.cpp reported while loading
    /// (`CPU` here; `RPC0[127.0.0.1:PORT]`, … for shards on other nodes).
    #[serde(default)]
    pub layout: Vec<LayerDevice>,
    /// Set for an embedding deployment (it serves `/v1/embeddings` only).
    #[serde(default)]
    pub embedding: Option<EmbeddingInfo>,
    /// How the model writes tool calls, from its chat template (Hermes's when
    /// it has none, or an older engine host did not say).
    #[serde(default)]
    pub tool_format: ToolFormat,
    /// The most bytes (whitespace left out) one token stands for, when the
    /// tokenizer gives such a bound: a prompt with more than `ctx_size` times
    /// as many cannot fit, and is refused before it reaches the engine.
    #[serde(default)]
    pub max_token_bytes: Option<u32>,
}

/// A contiguous run of layers on one device.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerDevice {
    pub device: String,
    pub layers: std::ops::Range<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EngineState {
    Starting,
    Ready,
    /// The engine host died; it is being restarted.
    Restarting {
        restarts: u64,
        last_error: String,
    },
}

/// Live numbers for health and metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineStats {
    pub slots_busy: u32,
    pub kv_used_tokens: u64,
    pub kv_capacity_tokens: u64,
    pub restarts: u64,
    /// Streams stopped because their client read too slowly (a running total).
    #[serde(default)]
    pub slow_clients: u64,
}

/// Errors an engine reports; the gateway maps each variant to a status.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
pub enum EngineError {
    #[error("this model has no usable chat template; use /v1/completions with a raw prompt")]
    NoChatTemplate,
    #[error("the chat template could not be applied: {0}")]
    Template(String),
    #[error("the engine is not ready: {0}")]
    Unavailable(String),
    #[error("the engine process stopped during the request: {0}")]
    Crashed(String),
    #[error("generation failed: {0}")]
    Internal(String),
    /// Refused before tokenizing: its length alone proves it cannot fit.
    #[error("this model's maximum context length is {ctx} tokens, but the prompt has at least {at_least} tokens; shorten the messages")]
    PromptTooLong { ctx: u32, at_least: u64 },
    /// The client fell so far behind the stream that generation was stopped.
    #[error("the client read the stream too slowly: it fell {behind} events behind, so generation was stopped; read the stream as it arrives")]
    ClientTooSlow { behind: usize },
    /// An embedding input longer than the model takes.
    #[error("input[{index}] has {tokens} tokens, but this model embeds at most {max} tokens per input; shorten it")]
    InputTooLong {
        index: usize,
        tokens: usize,
        max: u32,
    },
    /// An embedding input the model cannot take (no tokens, a token id
    /// outside the vocabulary).
    #[error("{0}")]
    InvalidInput(String),
    /// Asked for what this deployment does not serve (chat of an embedding
    /// model, embeddings of a chat model).
    #[error("{0}")]
    NotServed(String),
}

/// A request in flight. Dropping it cancels the request.
pub struct TokenStream {
    rx: mpsc::Receiver<TokenEvent>,
    _cancel: Option<Box<dyn Send + Sync>>,
}

impl TokenStream {
    /// `cancel` is any value whose Drop cancels the work (kept alive as long as the stream).
    pub fn new(rx: mpsc::Receiver<TokenEvent>, cancel: Option<Box<dyn Send + Sync>>) -> Self {
        Self {
            rx,
            _cancel: cancel,
        }
    }

    pub async fn next(&mut self) -> Option<TokenEvent> {
        self.rx.recv().await
    }
}

impl futures::Stream for TokenStream {
    type Item = TokenEvent;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<TokenEvent>> {
        self.rx.poll_recv(cx)
    }
}

/// An inference engine serving one model.
pub trait Engine: Send + Sync {
    /// Static facts about the loaded model; `None` until the engine has started once.
    fn info(&self) -> Option<ModelInfo>;
    fn state(&self) -> EngineState;
    fn stats(&self) -> EngineStats;
    /// Template and tokenize a prompt (not queued behind generation).
    fn prepare(
        &self,
        input: PromptInput,
    ) -> BoxFuture<'static, Result<PreparedPrompt, EngineError>>;
    /// Enqueue a generation; the caller holds an admission permit for one slot.
    fn generate(&self, request: GenerateRequest) -> Result<TokenStream, EngineError>;
    /// Embed every input (an embedding deployment only: see [`ModelInfo::embedding`]).
    /// Dropping the future abandons the work.
    fn embed(&self, request: EmbedRequest) -> BoxFuture<'static, Result<Embeddings, EngineError>>;
}
