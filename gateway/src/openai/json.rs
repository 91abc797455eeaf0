//! A JSON extractor whose every rejection (too large, unreadable, malformed,
//! wrong types) is an OpenAI-shaped error instead of axum's plain text.
//! A big body is parsed on a parsing thread of lower priority
//! (`parse_pool.rs`): megabytes of JSON take milliseconds of CPU that the
//! async runtime's few workers (one per core) owe to every other connection.

use super::error::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

/// Bodies up to this size are parsed where they are read.
const PARSE_INLINE_MAX: usize = 64 << 10;

/// Set by the app from config so the 413 message can name the limit.
#[derive(Clone, Copy)]
pub struct BodyLimit(pub usize);

/// The parsed body, and its bytes (sent on as they are to upstreams).
pub struct OpenAiJson<T> {
    pub value: T,
    pub raw: Bytes,
}

impl<S, T> FromRequest<S> for OpenAiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send + 'static,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = req.extensions().get::<BodyLimit>().map_or(0, |l| l.0);
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::BodyTooLarge { limit }
            } else {
                ApiError::InvalidJson(format!("could not read the request body: {rejection}"))
            }
        })?;
        let value = if bytes.len() <= PARSE_INLINE_MAX {
            parse_body(&bytes)?
        } else {
            let body = bytes.clone();
            super::parse_pool::run(move || parse_body(&body)).await?
        };
        Ok(OpenAiJson { value, raw: bytes })
    }
}

/// A whole request body as `T`, or the 400 that says why not.
pub fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::InvalidJson(
            "the request body is empty; send a JSON object".into(),
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::InvalidJson(format!(
            "the request body is not valid JSON for this endpoint: {e}"
        ))
    })
}
