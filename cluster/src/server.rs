//! The receiving side of `/_herd/v1/...`: authenticate, check the version,
//! hand the heartbeat to the actor, answer with our own, MACed.
//!
//! Anyone without a valid MAC gets `401` with an empty body and no herd
//! headers: it learns nothing, not even the cluster's name or our node id.

use crate::agent::{Agent, Command};
use crate::membership::{Event, Source};
use crate::wire::Gossip;
use crate::{GOSSIP_PATH, VIEW_PATH};
use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
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
        let peer = match self.verify_peer(method, path, headers, body) {
            Ok(p) => p,
            Err(answer) => return answer,
        };
        let sign = |status: StatusCode, body: Vec<u8>| self.signed(&peer, status, body);
        let refuse = |status: StatusCode, error: String| self.refusal(&peer, status, error);
        let auth = &peer;
        match (method, path) {
            ("POST", GOSSIP_PATH) => {
                let gossip: Gossip = match serde_json::from_slice(body) {
                    Ok(g) => g,
                    Err(e) => {
                        return refuse(StatusCode::BAD_REQUEST, format!("bad heartbeat: {e}"))
                    }
                };
                if gossip.from.id != auth.node || gossip.from.version != auth.version {
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

    pub(crate) fn warn_once(&self, key: &str, log: impl FnOnce()) {
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
