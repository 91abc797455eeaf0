//! `/admin/keys`: the key operations of `herd keys` over HTTP, for callers
//! whose key has the `admin` role (others get 403). Handlers extract, run
//! the operation off the async threads, tell the store to reload, answer.

use super::ops::{self, Created, KeyView};
use super::{parse_duration_ms, KeySpec, KeyStore, Limits};
use crate::caller::{Caller, Role};
use crate::openai::{ApiError, OpenAiJson};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

pub fn routes(store: KeyStore) -> axum::Router {
    axum::Router::new()
        .route("/admin/keys", get(list).post(create))
        .route("/admin/keys/{name}", axum::routing::delete(revoke))
        .route("/admin/keys/{name}/rotate", post(rotate))
        .with_state(store)
}

/// `POST /admin/keys`: the flags of `herd keys create` as JSON.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    pub name: String,
    #[serde(default)]
    pub role: Role,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub max_concurrency: Option<u64>,
    pub models: Option<Vec<String>>,
    /// Lifetime, like `30d`, `12h`.
    pub expires: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct KeyList {
    object: &'static str,
    data: Vec<KeyView>,
}

fn admin(caller: Option<Extension<Caller>>) -> Result<(), ApiError> {
    match caller {
        Some(Extension(Caller {
            role: Role::Admin, ..
        })) => Ok(()),
        _ => Err(ApiError::Forbidden("manage keys")),
    }
}

async fn run<T: Send + 'static>(
    store: &KeyStore,
    op: impl FnOnce(&super::file::KeyFile) -> Result<T, ops::KeyOpError> + Send + 'static,
) -> Result<T, ApiError> {
    let file = store
        .file()
        .cloned()
        .ok_or_else(|| ApiError::KeyStore("this process keeps no key store".into()))?;
    let out = tokio::task::spawn_blocking(move || op(&file))
        .await
        .map_err(|e| ApiError::KeyStore(e.to_string()))??;
    store.reload();
    Ok(out)
}

async fn list(
    State(store): State<KeyStore>,
    caller: Option<Extension<Caller>>,
) -> Result<Json<KeyList>, ApiError> {
    admin(caller)?;
    let data = run(&store, ops::list).await?;
    Ok(Json(KeyList {
        object: "list",
        data,
    }))
}

async fn create(
    State(store): State<KeyStore>,
    caller: Option<Extension<Caller>>,
    body: Result<OpenAiJson<CreateKey>, ApiError>,
) -> Result<(StatusCode, Json<Created>), ApiError> {
    admin(caller)?;
    let b = body?.value;
    let spec = KeySpec {
        role: b.role,
        limits: Limits {
            rpm: b.rpm,
            tpm: b.tpm,
            max_concurrency: b.max_concurrency,
            models: b.models,
        },
        expires_in_ms: b
            .expires
            .as_deref()
            .map(parse_duration_ms)
            .transpose()
            .map_err(|m| ApiError::invalid("expires", m))?,
    };
    let name = b.name;
    let created = run(&store, move |f| ops::create(f, &name, &spec)).await?;
    tracing::info!(key = %created.view.name, "key created over HTTP");
    Ok((StatusCode::CREATED, Json(created)))
}

async fn revoke(
    State(store): State<KeyStore>,
    caller: Option<Extension<Caller>>,
    Path(name): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    admin(caller)?;
    let view = run(&store, move |f| ops::revoke(f, &name)).await?;
    tracing::info!(key = %view.name, "key revoked over HTTP");
    Ok(Json(view))
}

async fn rotate(
    State(store): State<KeyStore>,
    caller: Option<Extension<Caller>>,
    Path(name): Path<String>,
) -> Result<Json<Created>, ApiError> {
    admin(caller)?;
    let created = run(&store, move |f| ops::rotate(f, &name)).await?;
    tracing::info!(key = %created.view.name, "key rotated over HTTP");
    Ok(Json(created))
}
