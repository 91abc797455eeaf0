//! The OpenAI endpoints. Handlers only extract, call the core, and respond.

use super::respond::respond;
use super::AppState;
use crate::auth::KeyName;
use crate::generate;
use crate::metrics::{RequestTimer, ANONYMOUS_KEY};
use crate::openai::request::{ChatCompletionRequest, CompletionRequest};
use crate::openai::response::{ModelCard, ModelList};
use crate::openai::{ApiError, OpenAiJson};
use crate::validate::{self, ValidRequest};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::Extension;
use axum::Json;

// The body is taken as a `Result` so that a body that fails to parse is
// still counted in the metrics (under model `unknown`).
pub async fn chat_completions(
    State(state): State<AppState>,
    key: Option<Extension<KeyName>>,
    body: Result<OpenAiJson<ChatCompletionRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let timer = timer(
        &state,
        key,
        body.as_ref().map_or("", |b| b.value.model.as_str()),
    );
    let req = body.and_then(|b| Ok((validate::chat(b.value)?, b.raw)));
    complete(&state, timer, req).await
}

pub async fn completions(
    State(state): State<AppState>,
    key: Option<Extension<KeyName>>,
    body: Result<OpenAiJson<CompletionRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let timer = timer(
        &state,
        key,
        body.as_ref().map_or("", |b| b.value.model.as_str()),
    );
    let req = body.and_then(|b| Ok((validate::completion(b.value)?, b.raw)));
    complete(&state, timer, req).await
}

pub(super) fn timer(
    state: &AppState,
    key: Option<Extension<KeyName>>,
    model: &str,
) -> RequestTimer {
    let key = key.as_ref().map_or(ANONYMOUS_KEY, |Extension(k)| &k.0);
    state.metrics.request(model, key)
}

/// `req` is the validated request and the client's body as sent.
async fn complete(
    state: &AppState,
    mut timer: RequestTimer,
    req: Result<(ValidRequest, Bytes), ApiError>,
) -> Result<Response, ApiError> {
    match req {
        Ok((req, raw)) => run(state, timer, req, &raw).await,
        Err(e) => {
            timer.fail(&e);
            Err(e)
        }
    }
}

/// Runs a validated request through routing and its backends to an answer.
pub(super) async fn run(
    state: &AppState,
    mut timer: RequestTimer,
    req: ValidRequest,
    raw: &[u8],
) -> Result<Response, ApiError> {
    match generate::start(&state.router, req, raw, &mut timer).await {
        Ok(answer) => Ok(respond(answer, timer).await),
        Err(e) => {
            timer.fail(&e);
            Err(e)
        }
    }
}

pub async fn list_models(State(state): State<AppState>) -> Json<ModelList> {
    let table = state.router.current();
    let data = table
        .names()
        .map(|(id, created)| card(id, created))
        .collect();
    Json(ModelList {
        object: "list",
        data,
    })
}

pub async fn get_model(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ModelCard>, ApiError> {
    let table = state.router.current();
    let (id, created) = table
        .names()
        .find(|(known, _)| *known == id)
        .ok_or(ApiError::ModelNotFound(id.clone()))?;
    Ok(Json(card(id, created)))
}

fn card(id: &str, created: u64) -> ModelCard {
    ModelCard {
        id: id.to_string(),
        object: "model",
        created,
        owned_by: "herd",
    }
}
