use super::*;
use crate::upstream::{Phase, UpstreamError};
use std::time::Duration;

/// One of every variant, so a new one cannot skip these checks.
fn every_error() -> Vec<ApiError> {
    let all = vec![
        ApiError::InvalidJson("x".into()),
        ApiError::BodyTooLarge { limit: 1024 },
        ApiError::invalid("temperature", "too hot"),
        ApiError::ModelNotFound("m".into()),
        ApiError::ResponseNotFound("resp_1".into()),
        ApiError::ContextLengthExceeded("long".into()),
        ApiError::Unauthorized,
        ApiError::Overloaded("queue full", 1),
        ApiError::Engine(EngineError::NoChatTemplate),
        ApiError::Engine(EngineError::Template("t".into())),
        ApiError::Engine(EngineError::Unavailable("u".into())),
        ApiError::Engine(EngineError::Crashed("c".into())),
        ApiError::Engine(EngineError::Internal("i".into())),
        ApiError::RouteNotFound("GET /x".into()),
        ApiError::MethodNotAllowed,
        ApiError::RequestTimeout(Duration::from_secs(5)),
        ApiError::KeyLimit {
            key: "k".into(),
            limit: "rpm",
            detail: "1 requests per minute".into(),
            retry_after: 60,
        },
        ApiError::Forbidden("manage keys"),
        ApiError::KeyExists("k".into()),
        ApiError::KeyNotFound("k".into()),
        ApiError::KeyStore("disk full".into()),
        ApiError::Engine(EngineError::PromptTooLong {
            ctx: 8,
            at_least: 9,
        }),
        ApiError::Engine(EngineError::ClientTooSlow { behind: 1023 }),
    ];
    let id = || "u".to_string();
    let why = || "w".to_string();
    let all = all
        .into_iter()
        .chain(
            [
                UpstreamError::Connect {
                    id: id(),
                    why: why(),
                },
                UpstreamError::Timeout {
                    id: id(),
                    phase: Phase::FirstByte,
                },
                UpstreamError::Answered {
                    id: id(),
                    status: 500,
                    message: "m".into(),
                    body: None,
                    retry_after: None,
                },
                UpstreamError::BadAnswer {
                    id: id(),
                    why: why(),
                },
                UpstreamError::BrokeOff {
                    id: id(),
                    why: why(),
                },
                UpstreamError::CircuitOpen {
                    id: id(),
                    retry_after: 3,
                },
            ]
            .map(ApiError::Upstream),
        )
        .collect::<Vec<_>>();
    for e in &all {
        // A new variant breaks this match: add it to the list above as well.
        match e {
            ApiError::InvalidJson(_)
            | ApiError::BodyTooLarge { .. }
            | ApiError::InvalidRequest { .. }
            | ApiError::ModelNotFound(_)
            | ApiError::ResponseNotFound(_)
            | ApiError::ContextLengthExceeded(_)
            | ApiError::Unauthorized
            | ApiError::Overloaded(..)
            | ApiError::Engine(_)
            | ApiError::RouteNotFound(_)
            | ApiError::MethodNotAllowed
            | ApiError::RequestTimeout(_)
            | ApiError::KeyLimit { .. }
            | ApiError::Forbidden(_)
            | ApiError::KeyExists(_)
            | ApiError::KeyNotFound(_)
            | ApiError::KeyStore(_)
            | ApiError::Upstream(_) => {}
        }
    }
    all
}

#[test]
fn every_error_encodes_in_openai_shape() -> Result<(), serde_json::Error> {
    for e in every_error() {
        let text = serde_json::to_string(&e.envelope())?;
        assert_eq!(e.to_json(), text);
        let v: serde_json::Value = serde_json::from_str(&text)?;
        assert_eq!(v["error"]["message"], e.to_string(), "{text}");
        assert!(v["error"]["type"].is_string(), "{text}");
        assert!(v["error"]["code"].is_string(), "{text}");
    }
    let fallback: serde_json::Value = serde_json::from_str(ENCODING_FAILED)?;
    assert_eq!(fallback["error"]["code"], "internal_error");
    assert_eq!(fallback["error"]["type"], "server_error");
    Ok(())
}
