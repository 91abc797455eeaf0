//! The receiving side of `/_herd/v1/...`: authenticate, check the version,
//! hand the heartbeat to the actor, answer with our own, MACed.
//!
//! Anyone without a valid MAC gets `401` with an empty body and no herd
//! headers: it learns nothing, not even the cluster's name or our node id.

use crate::agent::{Agent, Command};
use crate::auth::{unix_ms, AuthError};
use crate::membership::{Event, Source};
use crate::version::check_compatible;
use crate::wire::{Gossip, Refusal};
use crate::{GOSSIP_PATH, VIEW_PATH};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use std::time::{Duration, Instant};

const WARN_EVERY: Duration = Duration::from_secs(60);

impl Agent {
    /// Answers one node-to-node request. The HTTP layer passes the method,
    /// the path, the headers and the whole body, and sends back what it gets.
    pub async fn handle_peer(
        &self,
        method: &str,
        path: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Response<Bytes> {
        let inner = &self.inner;
        let Some(verifier) = &inner.verifier else {
            return empty(StatusCode::UNAUTHORIZED);
        };
        let auth = match verifier.verify_request(method, path, headers, body, unix_ms()) {
            Ok(a) => a,
            Err(AuthError::NonceCacheFull) => return empty(StatusCode::SERVICE_UNAVAILABLE),
            Err(e @ (AuthError::Stale { .. } | AuthError::Replay)) => {
                // The MAC was valid, so the sender id is genuine.
                let node = headers
                    .get(crate::auth::H_NODE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("?");
                self.warn_once(&format!("auth:{node}"), || {
                    tracing::warn!(peer = node, "refused a signed message: {e}")
                });
                return empty(StatusCode::UNAUTHORIZED);
            }
            Err(e) => {
                tracing::debug!(path, "refused an unauthenticated request: {e}");
                return empty(StatusCode::UNAUTHORIZED);
            }
        };
        let sign = |status: StatusCode, body: Vec<u8>| {
            let a = verifier.credentials().sign_response(
                &auth.nonce,
                status.as_u16(),
                &inner.me_id.0,
                &inner.version,
                &body,
            );
            let mut resp = Response::new(Bytes::from(body));
            *resp.status_mut() = status;
            for (name, value) in a.headers() {
                if let Ok(v) = HeaderValue::from_str(&value) {
                    resp.headers_mut().insert(name, v);
                }
            }
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        };
        let refuse = |status: StatusCode, error: String| {
            sign(
                status,
                serde_json::to_vec(&Refusal { error }).unwrap_or_default(),
            )
        };
        if let Err(message) = check_compatible(&inner.version, &auth.version) {
            self.warn_once(&format!("version:{}", auth.node), || {
                tracing::error!(peer = %auth.node, "refused a node: {message}");
            });
            return refuse(StatusCode::CONFLICT, message);
        }
        match (method, path) {
            ("POST", GOSSIP_PATH) => {
                let gossip: Gossip = match serde_json::from_slice(body) {
                    Ok(g) => g,
                    Err(e) => {
                        return refuse(StatusCode::BAD_REQUEST, format!("bad heartbeat: {e}"))
                    }
                };
                if gossip.from.id.0 != auth.node || gossip.from.version != auth.version {
                    return refuse(
                        StatusCode::BAD_REQUEST,
                        "heartbeat body does not match its signed sender".into(),
                    );
                }
                let from = gossip.from.id.clone();
                let events = if gossip.leaving {
                    vec![Event::Left { id: from }]
                } else {
                    let refs = gossip
                        .members
                        .into_iter()
                        .map(|r| (r.addr, Some(r.id)))
                        .collect();
                    vec![
                        Event::Heard {
                            info: gossip.from,
                            via: None,
                        },
                        Event::Mentioned {
                            addrs: refs,
                            source: Source::Gossip,
                        },
                    ]
                };
                for event in events {
                    // Never block a handler on the actor: a heartbeat dropped under load is resent next interval.
                    let _ = inner.tx.try_send(Command::Event(event));
                }
                let view = self.view();
                let answer = Gossip {
                    from: self.me(),
                    members: view.peer_refs(),
                    leaving: false,
                };
                sign(
                    StatusCode::OK,
                    serde_json::to_vec(&answer).unwrap_or_default(),
                )
            }
            ("GET", VIEW_PATH) => sign(
                StatusCode::OK,
                serde_json::to_vec(&self.view()).unwrap_or_default(),
            ),
            _ => refuse(
                StatusCode::NOT_FOUND,
                format!("no such peer endpoint: {method} {path}"),
            ),
        }
    }

    fn warn_once(&self, key: &str, log: impl FnOnce()) {
        let mut warned = self.inner.warned.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if warned
            .get(key)
            .is_some_and(|at| now.duration_since(*at) < WARN_EVERY)
        {
            return;
        }
        if warned.len() > 1024 {
            warned.clear();
        }
        warned.insert(key.to_string(), now);
        log();
    }
}

fn empty(status: StatusCode) -> Response<Bytes> {
    let mut resp = Response::new(Bytes::new());
    *resp.status_mut() = status;
    resp
}
