//! `/v1/responses`: a Responses request is translated into a chat completion
//! (openai/responses/request.rs), served by the same path as chat (routing,
//! fallbacks, admission, any backend), and its answer — a JSON body or a
//! chat stream — is turned into a Response object or Responses events.
//! Errors before the answer starts leave exactly as chat's do.

use super::context::RequestContext;
use super::openai_api::run;
use super::AppState;
use crate::openai::error::ENCODING_FAILED;
use crate::openai::json::parse_body;
use crate::openai::responses::events::Converter;
use crate::openai::responses::object::ResponseObject;
use crate::openai::responses::request::{translate, ResponsesRequest};
use crate::openai::responses::store::ResponseStore;
use crate::openai::{ApiError, OpenAiJson};
use crate::validate;
use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;
use std::convert::Infallible;

/// A whole chat answer is read into memory to be re-shaped; it is bounded.
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

pub async fn create(
    State(state): State<AppState>,
    ctx: RequestContext,
    body: Result<OpenAiJson<ResponsesRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let asked = body.as_ref().ok().map(|b| &b.value);
    let model = asked.map_or("", |r| r.model.as_str());
    let user = asked.and_then(|r| r.user.as_deref());
    let mut timer = ctx.timer(&state, model, user, "responses");
    let prepared = body.and_then(|b| {
        let previous = match &b.value.previous_response_id {
            None => Vec::new(),
            Some(id) => state
                .responses
                .get(id)
                .ok_or_else(|| {
                    ApiError::invalid(
                        "previous_response_id",
                        format!("previous response with id `{id}` not found (it was not stored, was deleted, or was stored by another node)"),
                    )
                })?
                .conversation
                .to_vec(),
        };
        let translated = translate(&b.value, previous)?;
        let raw = serde_json::to_vec(&translated.chat)
            .map_err(|e| ApiError::InvalidJson(format!("the request could not be re-encoded: {e}")))?;
        let chat = validate::chat(parse_body(&raw)?)?;
        Ok((b.value, translated, chat, raw))
    });
    let (req, translated, chat, raw) = match prepared {
        Ok(p) => p,
        Err(e) => {
            timer.fail(&e);
            return Err(e);
        }
    };
    let answer = run(&state, timer, chat, &raw).await?;
    if !answer.status().is_success() {
        return Ok(answer);
    }
    let object = ResponseObject::start(&req, translated.store);
    let store = translated.store.then(|| state.responses.clone());
    if translated.stream {
        Ok(stream(answer, object, translated.history, store))
    } else {
        collect(answer, object, translated.history, store).await
    }
}

async fn collect(
    answer: Response,
    mut object: ResponseObject,
    history: Vec<Value>,
    store: Option<ResponseStore>,
) -> Result<Response, ApiError> {
    let bytes = axum::body::to_bytes(answer.into_body(), MAX_ANSWER_BYTES)
        .await
        .map_err(|e| {
            ApiError::Engine(herd_engines::EngineError::Internal(format!(
                "the answer could not be read: {e}"
            )))
        })?;
    let chat: Value = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::Engine(herd_engines::EngineError::Internal(format!(
            "the answer was not JSON: {e}"
        )))
    })?;
    object.complete_from_chat(&chat);
    save(store.as_ref(), &object, history);
    Ok(Json(object).into_response())
}

fn save(store: Option<&ResponseStore>, object: &ResponseObject, mut history: Vec<Value>) {
    if let Some(store) = store {
        history.extend(object.as_chat_messages());
        store.insert(object.clone(), history);
    }
}

fn stream(
    answer: Response,
    object: ResponseObject,
    history: Vec<Value>,
    store: Option<ResponseStore>,
) -> Response {
    let mut conv = Converter::new(object);
    let mut chunks = answer.into_body().into_data_stream().eventsource();
    let events = async_stream::stream! {
        for e in conv.start() {
            yield e;
        }
        let (last, object) = loop {
            let Some(next) = chunks.next().await else {
                break conv.fail("engine_crashed", "the answer ended before it was complete");
            };
            let data = match next {
                Ok(ev) => ev.data,
                Err(e) => break conv.fail("internal_error", &format!("the answer broke off: {e}")),
            };
            if data == "[DONE]" {
                break conv.finish();
            }
            match serde_json::from_str::<Value>(&data) {
                Ok(v) if v.get("error").is_some() => {
                    let s = |p: &str| v.pointer(p).and_then(Value::as_str).unwrap_or("").to_string();
                    let code = s("/error/code");
                    let code = if code.is_empty() { "server_error".to_string() } else { code };
                    break conv.fail(&code, &s("/error/message"));
                }
                Ok(v) => {
                    for e in conv.chunk(&v) {
                        yield e;
                    }
                }
                Err(e) => break conv.fail("internal_error", &format!("an answer event was not JSON: {e}")),
            }
        };
        save(store.as_ref(), &object, history);
        for e in last {
            yield e;
        }
    };
    let sse = events.map(|e| {
        Ok::<_, Infallible>(
            Event::default()
                .event(e.name())
                .json_data(&e)
                .unwrap_or_else(|err| {
                    tracing::error!(error = %err, "a Responses event could not be encoded");
                    Event::default().event("error").data(ENCODING_FAILED)
                }),
        )
    });
    Sse::new(sse)
        .keep_alive(KeepAlive::default())
        .into_response()
}

pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ResponseObject>, ApiError> {
    let stored = state
        .responses
        .get(&id)
        .ok_or(ApiError::ResponseNotFound(id))?;
    Ok(Json((*stored.response).clone()))
}

#[derive(Serialize)]
pub struct Deleted {
    id: String,
    object: &'static str,
    deleted: bool,
}

pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Deleted>, ApiError> {
    if !state.responses.remove(&id) {
        return Err(ApiError::ResponseNotFound(id));
    }
    Ok(Json(Deleted {
        id,
        object: "response",
        deleted: true,
    }))
}
