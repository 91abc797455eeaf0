//! Request bodies as OpenAI clients send them. Fields herd does not use are
//! not declared, so serde ignores them: Open WebUI, Xcode and SDKs send many
//! (`user`, `metadata`, `store`, …). A field that would change the answer is
//! declared, so that it is honored or refused, never silently ignored.

use super::tools::{ResponseFormat, Tool, ToolCallIn, ToolChoice};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Deserialize)]
pub struct ChatCompletionRequest {
    pub model: String,
    pub messages: Vec<Message>,
    /// Chat: whether to return each output token's log-probability.
    pub logprobs: Option<bool>,
    /// Chat: alternatives per token (needs `logprobs: true`).
    pub top_logprobs: Option<i64>,
    /// Output modalities: only `["text"]` is served.
    pub modalities: Option<Vec<String>>,
    /// Audio output and predicted outputs are not served: refused if set.
    pub audio: Option<serde_json::Value>,
    pub prediction: Option<serde_json::Value>,
    /// Web search is not served: refused if set.
    pub web_search_options: Option<serde_json::Value>,
    #[serde(default)]
    pub tools: Option<Vec<Tool>>,
    #[serde(default)]
    pub tool_choice: Option<ToolChoice>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    #[serde(default)]
    pub response_format: Option<ResponseFormat>,
    #[serde(flatten)]
    pub common: CommonParams,
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: Prompt,
    /// Completions: the log-probability of each token and of this many alternatives.
    pub logprobs: Option<i64>,
    /// Echoing the prompt and `best_of` > `n` are not served; `suffix` neither.
    pub echo: Option<bool>,
    pub best_of: Option<i64>,
    pub suffix: Option<String>,
    #[serde(flatten)]
    pub common: CommonParams,
}

/// Parameters shared by chat and text completions.
#[derive(Debug, Default, Deserialize)]
pub struct CommonParams {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub stop: Option<Stop>,
    pub seed: Option<i64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub n: Option<i64>,
    /// Token id (as a string, as JSON keys are) → bias in [-100, 100].
    pub logit_bias: Option<BTreeMap<String, f64>>,
    /// Extensions llama-server and vLLM take.
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub repetition_penalty: Option<f64>,
    #[serde(default)]
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    /// The end user, for usage accounting (OpenAI's `user`).
    pub user: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<i64>),
    TokenLists(Vec<Vec<i64>>),
}

#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
    /// An assistant turn's calls.
    #[serde(default)]
    pub tool_calls: Option<Vec<ToolCallIn>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}
