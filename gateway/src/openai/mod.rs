//! OpenAI wire types, errors and the JSON extractor.

pub mod error;
pub mod json;
pub mod logprobs;
pub mod request;
pub mod response;

pub use error::ApiError;
pub use json::OpenAiJson;
