//! Every node's gateway serves every deployment. A request for one headed
//! elsewhere is forwarded to its head over the cluster channel (a request
//! signed with the cluster secret, to `/_herd/v1/forward/KEY-NAME/v1/...`)
//! and its answer is streamed back chunk by chunk, status and errors intact.
//! The head runs it through its own OpenAI handlers (admission, metrics);
//! its answer's status is MACed, and if the head dies mid-stream the client
//! gets an OpenAI error event and `[DONE]`, never a silent cut.

use super::forward_relay::{relay, stream_flags, Metering};
use super::plan::{Plan, PLAN_PATH};
use super::Deployer;
use crate::auth::KeyName;
use crate::caller::{Caller, Role};
use crate::keys::limits::TokenMeter;
use crate::openai::ApiError;
use crate::router::{Route, Router};
use crate::routing::Remote;
use crate::upstream::{error_message, UpstreamError};
use crate::usage::refusals::UsageSeen;
use crate::usage::{OPENWEBUI_USER_EMAIL, OPENWEBUI_USER_ID};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use herd_cluster::Agent;
use herd_engines::EngineError;
use std::sync::Arc;
use tower::ServiceExt;

/// Marks a request that arrived forwarded: it is never forwarded again.
#[derive(Clone, Copy)]
pub struct Forwarded;

const FORWARD_PREFIX: &str = "/_herd/v1/forward/";

#[derive(Clone)]
pub struct ForwardState {
    pub router: Router,
    pub agent: Agent,
    pub max_body: usize,
}

/// Middleware on the generation routes: local deployments pass through,
/// remote ones are forwarded to their head.
pub async fn forward_remote(
    State(state): State<ForwardState>,
    req: Request,
    next: Next,
) -> Response {
    if req.extensions().get::<Forwarded>().is_some() {
        return next.run(req).await;
    }
    let (mut parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, state.max_body).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::BodyTooLarge {
                limit: state.max_body,
            }
            .into_response()
        }
    };
    #[derive(serde::Deserialize)]
    struct ModelOnly {
        model: String,
    }
    let asked = serde_json::from_slice::<ModelOnly>(&bytes).ok();
    let remote = asked
        .as_ref()
        .and_then(|m| match state.router.current().get(&m.model) {
            Some(Route::Remote(r)) => Some(r.clone()),
            _ => None,
        });
    let Some(remote) = remote else {
        return next
            .run(Request::from_parts(parts, Body::from(bytes)))
            .await;
    };
    // A key with a tpm limit is charged here, from the answer (its stream's usage chunk asked for).
    let (bytes, metering) = match parts.extensions.remove::<TokenMeter>() {
        Some(meter) => {
            let model = asked.map(|m| m.model).unwrap_or_default();
            metered(bytes, &model, meter)
        }
        None => (bytes, None),
    };
    // The head records this request's usage (a refusal here is recorded by the layer that set this).
    let seen = parts.extensions.get::<UsageSeen>().cloned();
    let key = parts
        .extensions
        .get::<KeyName>()
        .map_or_else(|| "-".to_string(), |k| k.0.to_string());
    let Some(client) = state.agent.peer_client() else {
        return unavailable("this node is not in a cluster").into_response();
    };
    let path = format!("{FORWARD_PREFIX}{}{}", encode_key(&key), parts.uri.path());
    let content_type = parts
        .headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    // The head records the request's usage: it needs the end user too.
    let mut headers = vec![("content-type", content_type)];
    for name in [OPENWEBUI_USER_ID, OPENWEBUI_USER_EMAIL] {
        if let Some(v) = parts.headers.get(name).and_then(|v| v.to_str().ok()) {
            headers.push((name, v.to_string()));
        }
    }
    let resp = match client
        .open_stream(
            remote.addr,
            &remote.head,
            reqwest::Method::POST,
            &path,
            bytes,
            &headers,
        )
        .await
    {
        Ok(r) => {
            if let Some(seen) = seen {
                seen.raise();
            }
            r
        }
        Err(e) => {
            tracing::warn!(head = %remote.head_name, "cannot forward to the deployment's head: {e}");
            return unavailable(&format!(
                "the deployment's head ({}) is not reachable",
                remote.head_name
            ))
            .into_response();
        }
    };
    relay(resp, (), metering)
}

/// The body to forward for a metered request, and how to meter its answer:
/// a stream asks the head for its usage chunk, dropped again on the way back
/// if the client did not ask for it.
fn metered(body: Bytes, model: &str, meter: TokenMeter) -> (Bytes, Option<Metering>) {
    let (stream, asked) = stream_flags(&body);
    let strip_usage = stream && !asked;
    let body = if strip_usage {
        crate::upstream::with_model_and_usage(&body, model).map_or(body, Bytes::from)
    } else {
        body
    };
    (body, Some(Metering { meter, strip_usage }))
}

fn unavailable(why: &str) -> ApiError {
    ApiError::Engine(EngineError::Unavailable(why.to_string()))
}

/// Key names travel in the path (which the MAC covers); keep them path-safe.
fn encode_key(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Counts a forwarded answer as in flight until it is dropped.
struct InFlight(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// One attempt of the router (`generate.rs`) at a deployment headed on
/// another node: the client's body, `model` set to the deployment's id, to
/// the head. An unreachable head, a 429 or a 5xx may still fall back;
/// anything else is the answer, streamed back.
pub async fn attempt(
    remote: &Remote,
    path: &str,
    raw: &[u8],
    key: &str,
    end_user: Option<&str>,
    meter: Option<TokenMeter>,
) -> Result<Response, ApiError> {
    let body = crate::upstream::with_model(raw, &remote.id).map_err(|e| {
        ApiError::InvalidJson(format!("the request body is not a JSON object: {e}"))
    })?;
    let (body, metering) = match meter {
        Some(meter) => metered(Bytes::from(body), &remote.id, meter),
        None => (Bytes::from(body), None),
    };
    remote
        .in_flight
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let held = InFlight(remote.in_flight.clone());
    let r = &remote.route;
    let mut headers = vec![("content-type", "application/json".to_string())];
    // The head records the request's usage; a name that cannot be a header value stays behind.
    if let Some(user) = end_user.filter(|u| u.bytes().all(|b| (0x20..0x7f).contains(&b))) {
        headers.push((OPENWEBUI_USER_ID, user.to_string()));
    }
    let resp = remote
        .client
        .open_stream(
            r.addr,
            &r.head,
            reqwest::Method::POST,
            &format!("{FORWARD_PREFIX}{}{path}", encode_key(key)),
            body,
            &headers,
        )
        .await
        .map_err(|e| {
            ApiError::Upstream(UpstreamError::Connect {
                id: remote.id.clone(),
                why: format!("its head ({}) is not reachable: {e}", r.head_name),
            })
        })?;
    let status = resp.status().as_u16();
    if status == 429 || status >= 500 {
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()?.trim().parse().ok());
        let body = resp.bytes().await.unwrap_or_default();
        let (message, openai_shaped) = error_message(&body);
        return Err(ApiError::Upstream(UpstreamError::Answered {
            id: remote.id.clone(),
            status,
            message,
            body: openai_shaped.then_some(body),
            retry_after,
        }));
    }
    Ok(relay(resp, held, metering))
}

/// The head's side: `/_herd/v1/forward/{key}/{*path}`, run through `api`
/// (the OpenAI routes without API-key auth: the sender is a cluster node
/// that already checked the client's key).
pub async fn serve_forwarded(
    State((agent, api)): State<(Agent, axum::Router)>,
    req: Request,
) -> Response {
    let (mut parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 << 20).await else {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    let full_path = parts.uri.path().to_string();
    let peer = match agent.verify_peer(parts.method.as_str(), &full_path, &parts.headers, &bytes) {
        Ok(p) => p,
        Err(answer) => return answer.map(Body::from),
    };
    let rest = full_path.strip_prefix(FORWARD_PREFIX).unwrap_or("");
    let Some((key, path)) = rest.split_once('/') else {
        return agent
            .refusal(&peer, StatusCode::NOT_FOUND, "bad forward path".into())
            .map(Body::from);
    };
    let Ok(uri) = format!("/{path}").parse() else {
        return agent
            .refusal(&peer, StatusCode::NOT_FOUND, "bad forward path".into())
            .map(Body::from);
    };
    parts.uri = uri;
    parts.extensions.insert(Forwarded);
    parts.extensions.insert(KeyName(Arc::from(key)));
    // The sending node checked the key; here it only names the caller for usage.
    parts.extensions.insert(Caller {
        key_name: (key != "-" && key != crate::metrics::ANONYMOUS_KEY).then(|| key.to_string()),
        role: Role::User,
    });
    let answer = match api
        .oneshot(Request::from_parts(parts, Body::from(bytes)))
        .await
    {
        Ok(a) => a,
        Err(never) => match never {},
    };
    let (mut head, body) = answer.into_parts();
    agent.sign_head(&peer, head.status, &mut head.headers);
    Response::from_parts(head, body)
}

/// `POST /_herd/v1/plan`: the leader's placement.
pub async fn receive_plan(
    State((agent, deployer)): State<(Agent, Deployer)>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 4 << 20).await else {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    let peer = match agent.verify_peer(parts.method.as_str(), PLAN_PATH, &parts.headers, &bytes) {
        Ok(p) => p,
        Err(answer) => return answer.map(Body::from),
    };
    match serde_json::from_slice::<Plan>(&bytes) {
        Ok(plan) => {
            deployer.offer(plan, peer.clone());
            agent
                .signed(&peer, StatusCode::OK, b"{}".to_vec())
                .map(Body::from)
        }
        Err(e) => agent
            .refusal(&peer, StatusCode::BAD_REQUEST, format!("bad plan: {e}"))
            .map(Body::from),
    }
}
