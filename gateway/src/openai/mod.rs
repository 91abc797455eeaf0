//! OpenAI wire types, errors and the JSON extractor.

pub mod chunk;
pub mod embeddings;
pub mod error;
pub mod json;
pub mod logprobs;
mod parse_pool;
pub mod request;
pub mod response;
pub mod responses;
pub mod tool_stream;
pub mod tools;

pub use error::ApiError;
pub use json::OpenAiJson;
