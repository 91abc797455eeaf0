//! Key records travel between nodes over the authenticated cluster channel:
//! every node sends its whole set of records (names, hashes, limits,
//! revocations, versions; never a secret) to every live peer at once when
//! it changes and again every second, signed with the cluster secret
//! (`POST /_herd/v1/keys`). A receiver keeps, per name, the record with the
//! latest version (last writer wins), so a key created or revoked on any
//! node works or stops on every node within about a second.

use super::{KeyRecord, KeyStore};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use herd_cluster::Agent;
use std::time::Duration;

pub const KEYS_PATH: &str = "/_herd/v1/keys";
const RESEND: Duration = Duration::from_secs(1);

/// The peer route that receives other nodes' records.
pub fn routes(agent: Agent, store: KeyStore) -> axum::Router {
    axum::Router::new()
        .route(KEYS_PATH, axum::routing::post(receive))
        .with_state((agent, store))
}

/// Sends this node's records to its peers until the agent is gone.
pub fn spawn(agent: Agent, store: KeyStore) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut records = store.records();
        let mut tick = tokio::time::interval(RESEND);
        loop {
            tokio::select! {
                changed = records.changed() => if changed.is_err() { return },
                _ = tick.tick() => {}
            }
            let current = records.borrow_and_update().clone();
            if current.is_empty() {
                continue;
            }
            send(&agent, &current);
        }
    })
}

fn send(agent: &Agent, records: &[KeyRecord]) {
    let Some(client) = agent.peer_client() else {
        return;
    };
    let Ok(body) = serde_json::to_vec(records) else {
        return;
    };
    let body = Bytes::from(body);
    let me = agent.node_id().clone();
    for node in agent.live_nodes().into_iter().filter(|n| n.info.id != me) {
        let (client, body) = (client.clone(), body.clone());
        tokio::spawn(async move {
            let sent = client
                .call_peer(
                    node.contact,
                    &node.info.id,
                    reqwest::Method::POST,
                    KEYS_PATH,
                    body,
                )
                .await;
            if let Err(e) = sent {
                tracing::debug!(peer = %node.info.id, "keys not delivered: {e}");
            }
        });
    }
}

async fn receive(State((agent, store)): State<(Agent, KeyStore)>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 8 << 20).await else {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    let peer = match agent.verify_peer(parts.method.as_str(), KEYS_PATH, &parts.headers, &bytes) {
        Ok(p) => p,
        Err(answer) => return answer.map(Body::from),
    };
    match serde_json::from_slice::<Vec<KeyRecord>>(&bytes) {
        Ok(records) => {
            store.merge_remote(records);
            agent
                .signed(&peer, StatusCode::OK, b"{}".to_vec())
                .map(Body::from)
        }
        Err(e) => agent
            .refusal(
                &peer,
                StatusCode::BAD_REQUEST,
                format!("bad key records: {e}"),
            )
            .map(Body::from),
    }
}
