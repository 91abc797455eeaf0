//! `GET /admin/usage` (admin keys only) and the node-to-node
//! `POST /_herd/v1/usage` it uses to answer for the whole cluster when each
//! gateway keeps its own SQLite file. With PostgreSQL every gateway writes the
//! same tables, so one query already covers them all.

use super::report::{self, Bucket, Filter, RawQuery, Report};
use super::{now_ms, Recorder, StoreCell, StoreKind};
use crate::caller::{Caller, Role};
use crate::openai::ApiError;
use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json};
use herd_cluster::Agent;
use std::time::Duration;

pub const PEER_USAGE_PATH: &str = "/_herd/v1/usage";

/// How long a peer has to answer for its share of a cluster report.
const PEER_TIMEOUT: Duration = Duration::from_secs(5);

/// Usage accounting as the HTTP layer sees it: the recorder for requests, the store for reports.
#[derive(Clone)]
pub struct UsageHandle {
    pub recorder: Recorder,
    pub store: StoreCell,
}

#[derive(Clone)]
struct AdminState {
    usage: Option<UsageHandle>,
    agent: Agent,
}

/// `GET /admin/usage`, to mount behind API-key auth.
pub fn admin_routes(usage: Option<UsageHandle>, agent: Agent) -> axum::Router {
    axum::Router::new()
        .route("/admin/usage", get(admin_usage))
        .with_state(AdminState { usage, agent })
}

/// `POST /_herd/v1/usage`, signed with the cluster secret like every peer route.
pub fn peer_routes(usage: Option<UsageHandle>, agent: Agent) -> axum::Router {
    axum::Router::new()
        .route(PEER_USAGE_PATH, post(peer_usage))
        .with_state(AdminState { usage, agent })
}

async fn admin_usage(
    State(s): State<AdminState>,
    caller: Option<Extension<Caller>>,
    query: Result<Query<RawQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Report>, ApiError> {
    // A caller without a key: API keys are off, and an open server's usage is open too.
    if caller.is_some_and(|Extension(c)| c.key_name.is_some() && c.role != Role::Admin) {
        return Err(ApiError::Forbidden("read usage"));
    }
    let Query(raw) = query.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let q = raw.validate(now_ms())?;
    let usage = s.usage.ok_or_else(|| {
        ApiError::invalid(
            "usage",
            "usage accounting is off on this server ([usage] enabled = false)",
        )
    })?;
    let store = usage.store.get().ok_or_else(|| {
        ApiError::Engine(herd_engines::EngineError::Unavailable(
            "the usage database is not open yet (see the server log)".into(),
        ))
    })?;
    let me = s.agent.me().name;
    let mut buckets = store.buckets(&q.filter).await.map_err(store_error)?;
    let mut nodes = vec![me];
    let mut missing_nodes = Vec::new();
    if q.cluster && store.kind() == StoreKind::Sqlite {
        for (name, answer) in ask_peers(&s.agent, &q.filter).await {
            match answer {
                Ok(mut theirs) => {
                    buckets.append(&mut theirs);
                    nodes.push(name);
                }
                Err(why) => {
                    tracing::warn!(node = %name, "no usage from a peer: {why}");
                    missing_nodes.push(name);
                }
            }
        }
    }
    Ok(Json(Report {
        object: "usage.report".into(),
        by: q.by,
        since_ms: q.filter.since_ms,
        scope: if q.cluster { "cluster" } else { "node" }.into(),
        nodes,
        missing_nodes,
        data: report::group(&buckets, q.by),
    }))
}

fn store_error(e: sqlx::Error) -> ApiError {
    tracing::error!("usage query failed: {e}");
    ApiError::Engine(herd_engines::EngineError::Internal(
        "the usage database could not be read; the server log has the reason".into(),
    ))
}

/// Every other live node's buckets, asked at once.
async fn ask_peers(agent: &Agent, filter: &Filter) -> Vec<(String, Result<Vec<Bucket>, String>)> {
    let Some(client) = agent.peer_client() else {
        return Vec::new();
    };
    let me = agent.node_id().clone();
    let body = match serde_json::to_vec(filter) {
        Ok(b) => Bytes::from(b),
        Err(e) => return vec![("(this node)".into(), Err(e.to_string()))],
    };
    let asks = agent
        .live_nodes()
        .into_iter()
        .filter(|n| n.info.id != me)
        .map(|n| {
            let (client, body) = (client.clone(), body.clone());
            async move {
                let call = client.call_peer(
                    n.contact,
                    &n.info.id,
                    reqwest::Method::POST,
                    PEER_USAGE_PATH,
                    body,
                );
                let answer = match tokio::time::timeout(PEER_TIMEOUT, call).await {
                    Ok(Ok(bytes)) => serde_json::from_slice::<Vec<Bucket>>(&bytes)
                        .map_err(|e| format!("bad answer: {e}")),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("no answer in time".into()),
                };
                (n.info.name, answer)
            }
        });
    futures::future::join_all(asks).await
}

async fn peer_usage(State(s): State<AdminState>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 << 10).await else {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    let peer = match s.agent.verify_peer(
        parts.method.as_str(),
        PEER_USAGE_PATH,
        &parts.headers,
        &bytes,
    ) {
        Ok(p) => p,
        Err(answer) => return answer.map(Body::from),
    };
    let answer = match (serde_json::from_slice::<Filter>(&bytes), &s.usage) {
        (Err(e), _) => Err((StatusCode::BAD_REQUEST, format!("bad usage filter: {e}"))),
        // A node without accounting has no usage to add.
        (Ok(_), None) => Ok(Vec::new()),
        (Ok(_), Some(u)) if u.store.get().is_none() => Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "the usage database is not open yet".to_string(),
        )),
        (Ok(filter), Some(u)) => match u.store.get() {
            Some(store) => store.buckets(&filter).await,
            None => Ok(Vec::new()),
        }
        .map_err(|e| {
            tracing::error!("usage query failed: {e}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the usage database could not be read".to_string(),
            )
        }),
    };
    let signed = match answer.and_then(|b| {
        serde_json::to_vec(&b).map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
    }) {
        Ok(body) => s.agent.signed(&peer, StatusCode::OK, body),
        Err((status, why)) => s.agent.refusal(&peer, status, why),
    };
    signed.map(Body::from)
}
