//! The HTTP surface, built in one function so the middleware order is visible.

pub mod cluster;
mod conn_room;
mod conn_watch;
mod context;
mod embeddings;
mod health;
mod openai_api;
pub mod openapi;
mod relay;
pub(crate) mod respond;
mod responses;
pub mod server;

use crate::auth::require_key;
use crate::keys::KeyStore;
use crate::metrics::{count_unauthorized, Metrics};
use crate::openai::json::BodyLimit;
use crate::openai::ApiError;
use crate::router::Router as ModelRouter;
use axum::extract::{DefaultBodyLimit, Request};
use axum::routing::{get, post};
use axum::{middleware, Extension, Router};
use std::sync::Arc;

#[derive(Clone)]
pub struct AppState {
    pub router: ModelRouter,
    pub keys: KeyStore,
    pub max_body_bytes: usize,
    pub metrics: Arc<Metrics>,
    /// Stored Responses API answers (`previous_response_id`, `GET`).
    pub responses: crate::openai::responses::store::ResponseStore,
    /// Usage accounting's request-path handle; `None` when it is off.
    pub usage: Option<crate::usage::UsageHandle>,
}

/// Extra routes other parts of herd contribute.
#[derive(Default)]
pub struct ExtraRoutes {
    /// Behind API-key auth, like the OpenAI endpoints.
    pub protected: Router,
    /// Outside API-key auth (they authenticate themselves, or are public by design).
    pub open: Router,
    /// Runs before the generation handlers (after auth): sends requests for
    /// deployments headed on another node there.
    pub forward: Option<crate::deploy::forward::ForwardState>,
}

/// The OpenAI endpoints alone, without auth: what a head runs forwarded
/// requests through (the forwarding node already checked the key).
pub fn openai_routes(state: AppState) -> Router {
    let max_body = state.max_body_bytes;
    Router::new()
        .route("/v1/chat/completions", post(openai_api::chat_completions))
        .route("/v1/completions", post(openai_api::completions))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/models", get(openai_api::list_models))
        .route("/v1/models/{id}", get(openai_api::get_model))
        .with_state(state)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(Extension(BodyLimit(max_body)))
}

pub fn app(state: AppState, extra: ExtraRoutes) -> Router {
    let max_body = state.max_body_bytes;
    let mut generation = Router::new()
        .route("/v1/chat/completions", post(openai_api::chat_completions))
        .route("/v1/completions", post(openai_api::completions))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .with_state(state.clone());
    if let Some(forward) = extra.forward {
        generation = generation.route_layer(middleware::from_fn_with_state(
            forward,
            crate::deploy::forward::forward_remote,
        ));
    }
    // After auth, before forwarding: the key's model allow-list and limits.
    let enforce =
        middleware::from_fn_with_state(state.metrics.clone(), crate::keys::enforce::enforce);
    generation = generation.route_layer(enforce.clone());
    // Not behind the forwarding layer: a deployment headed elsewhere is a
    // `Remote` backend of the chat request a Responses request becomes.
    let responses = Router::new()
        .route("/v1/responses", post(responses::create))
        .with_state(state.clone())
        .route_layer(enforce);
    // Inner to outer: auth runs only on matched API routes (so unknown paths
    // are a plain 404), after the body limit and before any handler work.
    let api = Router::new()
        .route("/v1/models", get(openai_api::list_models))
        .route("/v1/models/{id}", get(openai_api::get_model))
        .route(
            "/v1/responses/{id}",
            get(responses::get).delete(responses::delete),
        )
        .with_state(state.clone())
        .merge(generation)
        .merge(responses)
        .merge(extra.protected)
        // Inside auth, outside everything else: a refusal no handler recorded gets its usage row.
        .route_layer(middleware::from_fn_with_state(
            state.usage.clone(),
            crate::usage::refusals::record_refusals,
        ))
        .route_layer(middleware::from_fn_with_state(
            state.keys.clone(),
            require_key,
        ))
        // Outside auth: a refused key never reaches a handler, but still counts.
        .route_layer(middleware::from_fn_with_state(
            state.metrics.clone(),
            count_unauthorized,
        ));
    Router::new()
        .route("/health", get(health::health))
        .route("/openapi.json", get(openapi::document))
        .with_state(state)
        .merge(api)
        .merge(extra.open)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(Extension(BodyLimit(max_body)))
}

async fn not_found(req: Request) -> ApiError {
    ApiError::RouteNotFound(format!("{} {}", req.method(), req.uri().path()))
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
