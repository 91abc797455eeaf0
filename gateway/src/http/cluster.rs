//! Cluster endpoints: `GET /cluster` (behind API-key auth, mounted by the
//! caller) and the node-to-node routes under `/_herd/v1/`, which every node
//! serves outside API-key auth because each message proves itself with the
//! cluster secret (see herd_cluster::auth).

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use herd_cluster::{Agent, ClusterView};

/// `GET /cluster`: this node's view of the membership and of every
/// deployment, as JSON.
pub fn public_routes(agent: Agent) -> Router {
    Router::new()
        .route("/cluster", get(cluster_view))
        .with_state(agent)
}

/// `/_herd/v1/*`: heartbeats and the signed view; unauthenticated callers get an empty 401.
pub fn peer_routes(agent: Agent) -> Router {
    Router::new()
        .route("/_herd/v1/{*rest}", any(peer))
        .with_state(agent)
}

async fn cluster_view(State(agent): State<Agent>) -> Json<ClusterView> {
    Json(agent.view())
}

async fn peer(
    State(agent): State<Agent>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    agent
        .handle_peer(method.as_str(), uri.path(), &headers, &body)
        .await
        .map(Body::from)
        .into_response()
}
