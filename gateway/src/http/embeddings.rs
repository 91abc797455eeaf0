//! `POST /v1/embeddings`: extract, validate, call the core, respond.

use super::context::RequestContext;
use super::AppState;
use crate::embed::{self, EmbedAnswer};
use crate::openai::embeddings::{validate, EmbeddingRequest};
use crate::openai::{ApiError, OpenAiJson};
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

pub async fn embeddings(
    State(state): State<AppState>,
    ctx: RequestContext,
    body: Result<OpenAiJson<EmbeddingRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let asked = body.as_ref().ok().map(|b| &b.value);
    let model = asked.map_or("", |r| r.model.as_str());
    let user = asked.and_then(|r| r.user.as_deref());
    let mut timer = ctx.timer(&state, model, user, "embeddings");
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
