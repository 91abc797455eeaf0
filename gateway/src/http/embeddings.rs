//! `POST /v1/embeddings`: extract, validate, call the core, respond.

use super::openai_api::{tag_usage, timer, Who};
use super::AppState;
use crate::auth::KeyName;
use crate::caller::Caller;
use crate::embed::{self, EmbedAnswer};
use crate::keys::limits::TokenMeter;
use crate::openai::embeddings::{validate, EmbeddingRequest};
use crate::openai::{ApiError, OpenAiJson};
use crate::usage::refusals::UsageSeen;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

pub async fn embeddings(
    State(state): State<AppState>,
    key: Option<Extension<KeyName>>,
    meter: Option<Extension<TokenMeter>>,
    caller: Option<Extension<Caller>>,
    seen: Option<Extension<UsageSeen>>,
    headers: HeaderMap,
    body: Result<OpenAiJson<EmbeddingRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let asked = body.as_ref().ok().map(|b| &b.value);
    let model = asked.map_or("", |r| r.model.as_str());
    let mut timer = timer(&state, key, meter, model);
    let who = Who {
        caller,
        seen,
        headers: &headers,
    };
    let user = asked.and_then(|r| r.user.as_deref());
    tag_usage(&state, &mut timer, who, (model, user), "embeddings");
    let answered = match body.and_then(|b| Ok((validate(b.value)?, b.raw))) {
        Ok((req, raw)) => embed::run(&state.router, &req, &raw, &mut timer).await,
        Err(e) => Err(e),
    };
    match answered {
        Ok(EmbedAnswer::Local(list)) => {
            timer.embedded(list.data.len(), list.usage.prompt_tokens);
            Ok(Json(list).into_response())
        }
        Ok(EmbedAnswer::Relayed(bytes)) => {
            let (inputs, tokens) = counts(&bytes);
            timer.embedded(inputs, tokens);
            let json = HeaderValue::from_static("application/json");
            Ok((StatusCode::OK, [(header::CONTENT_TYPE, json)], bytes).into_response())
        }
        Ok(EmbedAnswer::Forwarded(response)) => {
            timer.handed_off(response.status().as_u16());
            Ok(response)
        }
        Err(e) => {
            timer.fail(&e);
            Err(e)
        }
    }
}

/// Vectors and prompt tokens in an upstream's answer, for the metrics.
fn counts(body: &[u8]) -> (usize, u32) {
    #[derive(serde::Deserialize)]
    struct Usage {
        prompt_tokens: Option<u32>,
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(default)]
        data: Vec<serde::de::IgnoredAny>,
        usage: Option<Usage>,
    }
    serde_json::from_slice::<Answer>(body).map_or((0, 0), |a| {
        (
            a.data.len(),
            a.usage.and_then(|u| u.prompt_tokens).unwrap_or(0),
        )
    })
}
