//! The receiving side of `/_herd/v1/...`: authenticate, check the version,
//! hand the heartbeat to the actor, answer with our own, MACed.
//!
//! Anyone without a valid MAC gets `401` with an empty body and no herd
//! headers: it learns nothing, not even the cluster's name or our node id.
//! A signed message that names no destination (a probe of an address whose
//! node the sender does not know) may be a copy of one sent to another node:
//! it is answered with our description, so the prober learns who we are, but
//! it never makes or keeps its sender a member, and the answer lists no one.

use crate::agent::Agent;
use crate::membership::{Event, Source};
use crate::peer_api::VerifiedPeer;
use crate::wire::Gossip;
use crate::{GOSSIP_PATH, PROBE_PATH, VIEW_PATH};
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
        let peer = match self.verify_signed(method, path, headers, body) {
            Ok(p) => p,
            Err(answer) => return answer,
        };
        match (method, path) {
            ("POST", GOSSIP_PATH) if peer.addressed => self.heartbeat(&peer, body),
            ("POST", GOSSIP_PATH | PROBE_PATH) => self.answer_probe(&peer),
            ("GET", VIEW_PATH) => self.signed_json(&peer, &self.view()),
            _ => self.refusal(
                &peer,
                StatusCode::NOT_FOUND,
                format!("no such peer endpoint: {method} {path}"),
            ),
        }
    }

    /// A member's heartbeat, addressed to us: it is heard, and hears us back.
    fn heartbeat(&self, peer: &VerifiedPeer, body: &[u8]) -> Response<Bytes> {
        let gossip: Gossip = match serde_json::from_slice(body) {
            Ok(g) => g,
            Err(e) => {
                return self.refusal(peer, StatusCode::BAD_REQUEST, format!("bad heartbeat: {e}"))
            }
        };
        if gossip.from.id != peer.node || gossip.from.version != peer.version {
            return self.refusal(
                peer,
                StatusCode::BAD_REQUEST,
                "heartbeat body does not match its signed sender".into(),
            );
        }
        let events = if gossip.leaving {
            vec![Event::Left { id: gossip.from.id }]
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
            let _ = self.inner.events.try_send(event);
        }
        let answer = Gossip {
            from: self.me(),
            members: self.view().peer_refs(),
            leaving: false,
        };
        self.signed_json(peer, &answer)
    }

    /// Who we are, and nothing else.
    fn answer_probe(&self, peer: &VerifiedPeer) -> Response<Bytes> {
        let answer = Gossip {
            from: self.me(),
            members: Vec::new(),
            leaving: false,
        };
        self.signed_json(peer, &answer)
    }

    /// A signed `200` with `value` as JSON. The wire types are strings,
    /// numbers and lists, which always encode (see wire.rs's tests); if one
    /// ever did not, the peer gets a `500` that says so, never an empty body.
    fn signed_json(&self, peer: &VerifiedPeer, value: &impl serde::Serialize) -> Response<Bytes> {
        match serde_json::to_vec(value) {
            Ok(body) => self.signed(peer, StatusCode::OK, body),
            Err(e) => {
                tracing::error!("cannot encode an answer to a peer: {e}");
                self.refusal(
                    peer,
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("the node could not encode its answer: {e}"),
                )
            }
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
