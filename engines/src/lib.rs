//! Engines turn a validated generation request into a bounded stream of token
//! events. Scheduling is not async: [`Engine::generate`] enqueues and hands
//! back a [`TokenStream`]; dropping the stream cancels the request and frees
//! its slot within one token.

#[doc(hidden)]
pub mod fuzz_targets;
pub mod llama;
pub mod text;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// What the model is asked to continue: chat messages (templated by the
/// engine with the model's own chat template) or raw text.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum PromptInput {
    Chat(Vec<ChatMessage>),
    Text(String),
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

/// One event of a generation.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenEvent {
    /// Newly generated text (always whole UTF-8 characters, never part of a stop sequence).
    Delta(String),
    Finished {
        reason: FinishReason,
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
    /// Which device holds which layers, as llama.cpp reported while loading
    /// (`CPU` here; `RPC0[127.0.0.1:PORT]`, … for shards on other nodes).
    #[serde(default)]
    pub layout: Vec<LayerDevice>,
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
}
