//! The gateway's one error type. Every error leaves in OpenAI's shape
//! `{"error": {"message", "type", "param", "code"}}`, and its status comes
//! from one exhaustive match.

use crate::upstream::UpstreamError;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use herd_engines::EngineError;
use serde::Serialize;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidJson(String),
    #[error("the request body is larger than the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<&'static str>,
    },
    #[error("the model `{0}` does not exist")]
    ModelNotFound(String),
    #[error("no stored response with id `{0}` (it was not stored, was deleted or evicted, or is stored by another node)")]
    ResponseNotFound(String),
    #[error("{0}")]
    ContextLengthExceeded(String),
    #[error("incorrect or missing API key; pass it as `Authorization: Bearer KEY`")]
    Unauthorized,
    #[error("the server is busy ({0}); retry after {1} s")]
    Overloaded(&'static str, u64),
    #[error("{0}")]
    Engine(EngineError),
    #[error("{0}")]
    Upstream(UpstreamError),
    #[error("no route for {0}")]
    RouteNotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error(
        "rate limit reached for key `{key}` on {limit} ({detail}); retry after {retry_after} s"
    )]
    KeyLimit {
        key: String,
        limit: &'static str,
        detail: String,
        retry_after: u64,
    },
    #[error("this API key may not {0}; use a key created with `--role admin`")]
    Forbidden(&'static str),
    #[error("a key named `{0}` already exists (rotate it, or revoke it first)")]
    KeyExists(String),
    #[error("no key named `{0}`")]
    KeyNotFound(String),
    #[error("the key store failed: {0}")]
    KeyStore(String),
    #[error("no response within {} s (the server's request_timeout_secs); for long generations send \"stream\": true", .0.as_secs())]
    RequestTimeout(std::time::Duration),
}

/// The `error` object OpenAI clients parse.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
}

#[derive(Debug, Serialize)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

/// What a client gets in place of a body herd could not encode (the reason
/// goes to the log). Never expected: herd's bodies are strings, numbers and
/// options, and the tests encode every one of them.
pub const ENCODING_FAILED: &str = r#"{"error":{"message":"the server could not encode its answer; its log has the reason","type":"server_error","param":null,"code":"internal_error"}}"#;

impl ApiError {
    pub fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidRequest {
            message: message.into(),
            param: Some(param),
        }
    }

    /// Status, OpenAI error type, code, and Retry-After seconds.
    pub fn parts(&self) -> (StatusCode, &'static str, Option<&'static str>, Option<u64>) {
        const INVALID: &str = "invalid_request_error";
        match self {
            Self::InvalidJson(_) => (StatusCode::BAD_REQUEST, INVALID, Some("invalid_json"), None),
            Self::BodyTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                INVALID,
                Some("request_too_large"),
                None,
            ),
            Self::InvalidRequest { .. } => (
                StatusCode::BAD_REQUEST,
                INVALID,
                Some("invalid_value"),
                None,
            ),
            Self::ModelNotFound(_) => (
                StatusCode::NOT_FOUND,
                INVALID,
                Some("model_not_found"),
                None,
            ),
            Self::ResponseNotFound(_) => (StatusCode::NOT_FOUND, INVALID, Some("not_found"), None),
            Self::ContextLengthExceeded(_) => (
                StatusCode::BAD_REQUEST,
                INVALID,
                Some("context_length_exceeded"),
                None,
            ),
            Self::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                INVALID,
                Some("invalid_api_key"),
                None,
            ),
            Self::Overloaded(_, secs) => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                Some("rate_limit_exceeded"),
                Some(*secs),
            ),
            Self::Engine(e) => match e {
                EngineError::NoChatTemplate => (
                    StatusCode::BAD_REQUEST,
                    INVALID,
                    Some("chat_template_missing"),
                    None,
                ),
                EngineError::Template(_) => (
                    StatusCode::BAD_REQUEST,
                    INVALID,
                    Some("chat_template_error"),
                    None,
                ),
                EngineError::Unavailable(_) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    Some("engine_unavailable"),
                    Some(2),
                ),
                EngineError::Crashed(_) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    Some("engine_crashed"),
                    Some(2),
                ),
                EngineError::Internal(_) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    Some("engine_error"),
                    None,
                ),
                EngineError::PromptTooLong { .. } => (
                    StatusCode::BAD_REQUEST,
                    INVALID,
                    Some("context_length_exceeded"),
                    None,
                ),
                // The server stopped waiting for the client to read (only ever seen mid-stream).
                EngineError::ClientTooSlow { .. } => (
                    StatusCode::REQUEST_TIMEOUT,
                    INVALID,
                    Some("client_too_slow"),
                    None,
                ),
                EngineError::InputTooLong { .. } => (
                    StatusCode::BAD_REQUEST,
                    INVALID,
                    Some("context_length_exceeded"),
                    None,
                ),
                EngineError::InvalidInput(_) => (
                    StatusCode::BAD_REQUEST,
                    INVALID,
                    Some("invalid_value"),
                    None,
                ),
                EngineError::NotServed(_) => (
                    StatusCode::BAD_REQUEST,
                    INVALID,
                    Some("model_not_supported"),
                    None,
                ),
            },
            Self::Upstream(u) => {
                const SERVER: &str = "server_error";
                match u {
                    UpstreamError::Connect { .. } => (
                        StatusCode::BAD_GATEWAY,
                        SERVER,
                        Some("upstream_unreachable"),
                        None,
                    ),
                    UpstreamError::Timeout { .. } => (
                        StatusCode::GATEWAY_TIMEOUT,
                        SERVER,
                        Some("upstream_timeout"),
                        None,
                    ),
                    UpstreamError::Answered {
                        status,
                        retry_after,
                        ..
                    } => (
                        StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY),
                        match status {
                            429 => "rate_limit_error",
                            400..=499 => INVALID,
                            _ => SERVER,
                        },
                        Some("upstream_error"),
                        *retry_after,
                    ),
                    UpstreamError::BadAnswer { .. } => (
                        StatusCode::BAD_GATEWAY,
                        SERVER,
                        Some("upstream_bad_response"),
                        None,
                    ),
                    UpstreamError::BrokeOff { .. } => (
                        StatusCode::BAD_GATEWAY,
                        SERVER,
                        Some("upstream_stream_broken"),
                        None,
                    ),
                    UpstreamError::CircuitOpen { retry_after, .. } => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        SERVER,
                        Some("upstream_unavailable"),
                        Some(*retry_after),
                    ),
                }
            }
            Self::RouteNotFound(_) => (StatusCode::NOT_FOUND, INVALID, Some("unknown_url"), None),
            Self::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                INVALID,
                Some("method_not_allowed"),
                None,
            ),
            Self::RequestTimeout(_) => (
                StatusCode::GATEWAY_TIMEOUT,
                "server_error",
                Some("request_timeout"),
                None,
            ),
            Self::KeyLimit { retry_after, .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                Some("rate_limit_exceeded"),
                Some(*retry_after),
            ),
            Self::Forbidden(_) => (
                StatusCode::FORBIDDEN,
                INVALID,
                Some("insufficient_permissions"),
                None,
            ),
            Self::KeyExists(_) => (StatusCode::CONFLICT, INVALID, Some("key_exists"), None),
            Self::KeyNotFound(_) => (StatusCode::NOT_FOUND, INVALID, Some("key_not_found"), None),
            Self::KeyStore(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                Some("key_store_error"),
                None,
            ),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.parts().0
    }

    /// A bounded label for metrics and logs (the variant, never message text).
    pub fn kind(&self) -> &'static str {
        self.parts().2.unwrap_or("error")
    }

    pub fn envelope(&self) -> ErrorEnvelope {
        let (_, kind, code, _) = self.parts();
        let param = match self {
            Self::InvalidRequest { param, .. } => *param,
            Self::ModelNotFound(_) => Some("model"),
            Self::ContextLengthExceeded(_) | Self::Engine(EngineError::PromptTooLong { .. }) => {
                Some("messages")
            }
            Self::Engine(EngineError::InputTooLong { .. } | EngineError::InvalidInput(_)) => {
                Some("input")
            }
            Self::Engine(EngineError::NotServed(_)) => Some("model"),
            _ => None,
        };
        ErrorEnvelope {
            error: ErrorBody {
                message: self.to_string(),
                kind,
                param,
                code,
            },
        }
    }
}

impl ApiError {
    /// The envelope as JSON text, for an SSE `data:` line.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.envelope()).unwrap_or_else(|e| {
            tracing::error!("cannot encode an error ({e}): {self}");
            ENCODING_FAILED.to_string()
        })
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        Self::Engine(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, _, _, retry_after) = self.parts();
        let mut response = match self {
            // The upstream's own OpenAI-shaped error, byte for byte.
            Self::Upstream(UpstreamError::Answered {
                body: Some(body), ..
            }) => (
                status,
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                body,
            )
                .into_response(),
            other => (status, axum::Json(other.envelope())).into_response(),
        };
        if let Some(secs) = retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}

#[cfg(test)]
mod tests;
