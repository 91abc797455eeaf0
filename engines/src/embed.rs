//! Embeddings: what an embedding deployment is asked for and answers. The
//! inputs of one request are embedded together (several sequences per
//! decode), each pooled by the model's own pooling (mean for
//! all-MiniLM-L6-v2) and L2-normalized.

use serde::{Deserialize, Serialize};

/// One input: text (tokenized by the engine, with the model's special
/// tokens) or token ids the client already has.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum EmbedInput {
    Text(String),
    Tokens(Vec<i32>),
}

/// The inputs of one request, in order.
#[derive(Debug)]
pub struct EmbedRequest {
    pub inputs: Vec<EmbedInput>,
    /// The caller's admission permit, held while the engine works on it.
    pub slot: crate::SlotHold,
}

/// One vector per input, in the inputs' order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Embeddings {
    pub vectors: Vec<Vec<f32>>,
    /// Tokens embedded, over all inputs (special tokens included).
    pub prompt_tokens: u32,
}

/// What an embedding deployment reports about its model.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct EmbeddingInfo {
    /// Length of each vector.
    pub dimensions: u32,
    /// Tokens one input may have (the model's trained context).
    pub max_input_tokens: u32,
}
