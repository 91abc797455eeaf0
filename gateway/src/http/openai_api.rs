//! The OpenAI endpoints. Handlers only extract, call the core, and respond.

use super::respond::respond;
use super::AppState;
use crate::generate;
use crate::openai::request::{ChatCompletionRequest, CompletionRequest};
use crate::openai::response::{ModelCard, ModelList};
use crate::openai::{ApiError, OpenAiJson};
use crate::validate;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::Json;

pub async fn chat_completions(
    State(state): State<AppState>,
    OpenAiJson(body): OpenAiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let generation = generate::start(&state.router, validate::chat(body)?).await?;
    Ok(respond(generation).await)
}

pub async fn completions(
    State(state): State<AppState>,
    OpenAiJson(body): OpenAiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let generation = generate::start(&state.router, validate::completion(body)?).await?;
    Ok(respond(generation).await)
}

pub async fn list_models(State(state): State<AppState>) -> Json<ModelList> {
    let data = state.router.all().map(|d| card(&d.id, d.created)).collect();
    Json(ModelList {
        object: "list",
        data,
    })
}

pub async fn get_model(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ModelCard>, ApiError> {
    let d = state.router.route(&id)?;
    Ok(Json(card(&d.id, d.created)))
}

fn card(id: &str, created: u64) -> ModelCard {
    ModelCard {
        id: id.to_string(),
        object: "model",
        created,
        owned_by: "herd",
    }
}
