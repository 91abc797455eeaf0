//! The OpenAI endpoints. Handlers only extract, call the core, and respond.

use super::context::RequestContext;
use super::respond::respond;
use super::AppState;
use crate::generate;
use crate::keys::KeyEntry;
use crate::metrics::RequestTimer;
use crate::openai::request::{ChatCompletionRequest, CommonParams, CompletionRequest};
use crate::openai::response::{ModelCard, ModelList};
use crate::openai::{ApiError, OpenAiJson};
use crate::validate::{self, ValidRequest};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::Extension;
use axum::Json;
use std::sync::Arc;

// The body is taken as a `Result` so that a body that fails to parse is
// still counted in the metrics (under model `unknown`).
pub async fn chat_completions(
    State(state): State<AppState>,
    ctx: RequestContext,
    body: Result<OpenAiJson<ChatCompletionRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let (model, user) = asked(
        body.as_ref()
            .ok()
            .map(|b| (&b.value.model, &b.value.common)),
    );
    let timer = ctx.timer(&state, model, user, "chat.completions");
    let req = body.and_then(|b| Ok((validate::chat(b.value)?, b.raw)));
    complete(&state, timer, req).await
}

pub async fn completions(
    State(state): State<AppState>,
    ctx: RequestContext,
    body: Result<OpenAiJson<CompletionRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let (model, user) = asked(
        body.as_ref()
            .ok()
            .map(|b| (&b.value.model, &b.value.common)),
    );
    let timer = ctx.timer(&state, model, user, "completions");
    let req = body.and_then(|b| Ok((validate::completion(b.value)?, b.raw)));
    complete(&state, timer, req).await
}

/// The model and end user a parsed body names.
fn asked<'a>(body: Option<(&'a String, &'a CommonParams)>) -> (&'a str, Option<&'a str>) {
    (
        body.map_or("", |(m, _)| m.as_str()),
        body.and_then(|(_, c)| c.user.as_deref()),
    )
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

/// A key with a model allow-list sees only those models.
fn visible(entry: &Option<Extension<Arc<KeyEntry>>>, id: &str) -> bool {
    entry
        .as_ref()
        .is_none_or(|Extension(e)| e.limits.allows_model(id))
}

pub async fn list_models(
    State(state): State<AppState>,
    entry: Option<Extension<Arc<KeyEntry>>>,
) -> Json<ModelList> {
    let table = state.router.current();
    let data = table
        .names()
        .filter(|(id, _)| visible(&entry, id))
        .map(|(id, created)| card(id, created))
        .collect();
    Json(ModelList {
        object: "list",
        data,
    })
}

pub async fn get_model(
    State(state): State<AppState>,
    entry: Option<Extension<Arc<KeyEntry>>>,
    Path(id): Path<String>,
) -> Result<Json<ModelCard>, ApiError> {
    let table = state.router.current();
    let (id, created) = table
        .names()
        .find(|(known, _)| *known == id && visible(&entry, known))
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
