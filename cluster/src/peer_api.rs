//! Node-to-node endpoints that live outside the cluster crate (placement
//! plans, forwarded requests, model copies) use the same authentication as
//! heartbeats: [`Agent::verify_peer`] checks a request's MAC, freshness,
//! nonce, destination and version; [`Agent::signed`] answers with a MAC bound
//! to that request's nonce; a streamed answer carries a MAC over its status
//! only (its bytes are then checked by what they carry: a sha256, an SSE
//! stream). Their callers always know which node they address, so these
//! endpoints refuse a message that names none.

use crate::agent::Agent;
use crate::auth::{unix_ms, AuthError, H_MAC};
use crate::client::{describe, CallError, PeerClient};
use crate::node::NodeId;
use crate::version::check_compatible;
use crate::wire::Refusal;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use std::net::SocketAddr;

/// A request whose sender proved the cluster secret, just now.
#[derive(Debug, Clone)]
pub struct VerifiedPeer {
    pub node: NodeId,
    pub version: String,
    pub(crate) nonce: String,
    /// False for a probe that names no destination: it may be a copy of one
    /// sent to another node, so it earns an answer and nothing else.
    pub(crate) addressed: bool,
}

impl Agent {
    /// Checks a node-to-node request addressed to this node. `Err` is the
    /// answer to send as is: an empty 401 for anyone without the secret, a
    /// signed 401 for a message addressed to another node (or to none), a
    /// signed 409 for another version.
    #[expect(
        clippy::result_large_err,
        reason = "the error is the HTTP answer itself, sent as is"
    )]
    pub fn verify_peer(
        &self,
        method: &str,
        path: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<VerifiedPeer, Response<Bytes>> {
        let peer = self.verify_signed(method, path, headers, body)?;
        if !peer.addressed {
            return Err(self.refusal(
                &peer,
                StatusCode::UNAUTHORIZED,
                format!("{method} {path} must be addressed to this node"),
            ));
        }
        Ok(peer)
    }

    /// [`Agent::verify_peer`], but a probe that names no node passes too
    /// (with `addressed: false`).
    #[expect(
        clippy::result_large_err,
        reason = "the error is the HTTP answer itself, sent as is"
    )]
    pub(crate) fn verify_signed(
        &self,
        method: &str,
        path: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<VerifiedPeer, Response<Bytes>> {
        let inner = &self.inner;
        let Some(verifier) = &inner.verifier else {
            return Err(empty(StatusCode::UNAUTHORIZED));
        };
        let auth = match verifier.verify_request(method, path, headers, body, unix_ms()) {
            Ok(a) => a,
            Err(AuthError::NonceCacheFull) => return Err(empty(StatusCode::SERVICE_UNAVAILABLE)),
            Err(AuthError::Misaddressed(auth)) => {
                // Signed, so an honest sender learns who answers at the
                // address now; a replayer learns an id that mDNS shows anyway.
                let peer = VerifiedPeer {
                    node: NodeId(auth.node),
                    version: auth.version,
                    nonce: auth.nonce,
                    addressed: false,
                };
                tracing::debug!(peer = %peer.node, to = auth.to, "refused a message for another node");
                return Err(self.refusal(
                    &peer,
                    StatusCode::UNAUTHORIZED,
                    "the message is addressed to another node".into(),
                ));
            }
            Err(e @ (AuthError::Stale { .. } | AuthError::Replay)) => {
                // The MAC was valid, so the sender id is genuine.
                let node = headers
                    .get(crate::auth::H_NODE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("?");
                self.warn_once(&format!("auth:{node}"), || {
                    tracing::warn!(peer = node, "refused a signed message: {e}")
                });
                return Err(empty(StatusCode::UNAUTHORIZED));
            }
            Err(e) => {
                tracing::debug!(path, "refused an unauthenticated request: {e}");
                return Err(empty(StatusCode::UNAUTHORIZED));
            }
        };
        let peer = VerifiedPeer {
            addressed: !auth.to.is_empty(),
            node: NodeId(auth.node),
            version: auth.version,
            nonce: auth.nonce,
        };
        if let Err(message) = check_compatible(&inner.version, &peer.version) {
            self.warn_once(&format!("version:{}", peer.node), || {
                tracing::error!(peer = %peer.node, "refused a node: {message}");
            });
            return Err(self.refusal(&peer, StatusCode::CONFLICT, message));
        }
        Ok(peer)
    }

    /// A complete answer, MACed over its status and body.
    pub fn signed(
        &self,
        peer: &VerifiedPeer,
        status: StatusCode,
        body: Vec<u8>,
    ) -> Response<Bytes> {
        let mut resp = Response::new(Bytes::new());
        *resp.status_mut() = status;
        self.sign_into(peer, status, &body, resp.headers_mut());
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        *resp.body_mut() = Bytes::from(body);
        resp
    }

    /// A signed `{"error": ...}` answer.
    pub fn refusal(
        &self,
        peer: &VerifiedPeer,
        status: StatusCode,
        error: String,
    ) -> Response<Bytes> {
        let body = serde_json::to_vec(&Refusal { error }).unwrap_or_else(|e| {
            tracing::error!("cannot encode a refusal: {e}");
            br#"{"error":"the node could not encode its refusal"}"#.to_vec()
        });
        self.signed(peer, status, body)
    }

    /// Headers for a streamed answer: the MAC covers the status (and the
    /// request's nonce), not the body, which is not known yet.
    pub fn sign_head(&self, peer: &VerifiedPeer, status: StatusCode, headers: &mut HeaderMap) {
        self.sign_into(peer, status, b"", headers);
    }

    fn sign_into(
        &self,
        peer: &VerifiedPeer,
        status: StatusCode,
        body: &[u8],
        headers: &mut HeaderMap,
    ) {
        let Some(verifier) = &self.inner.verifier else {
            return;
        };
        let a = verifier.credentials().sign_response(
            &peer.nonce,
            status.as_u16(),
            &self.inner.me_id.0,
            &self.inner.version,
            body,
        );
        for (name, value) in a.headers() {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        }
    }

    /// A client that signs as this node, or `None` for a lone node.
    pub fn peer_client(&self) -> Option<PeerClient> {
        self.inner.client.clone()
    }
}

impl PeerClient {
    /// A signed call to the node `dest` at `addr`, whose whole answer (≤ 1
    /// MiB, MAC-checked) is returned; a signed non-200 answer becomes
    /// `CallError::Refused` with its message.
    pub async fn call_peer(
        &self,
        addr: SocketAddr,
        dest: &NodeId,
        method: reqwest::Method,
        path: &str,
        body: Bytes,
    ) -> Result<Bytes, CallError> {
        self.call(method, &format!("http://{addr}"), path, Some(dest), body)
            .await
    }

    /// Starts a signed request to the node `dest` at `addr` whose answer is
    /// streamed: returns the response once its status is MAC-checked (the
    /// caller reads the body).
    pub async fn open_stream(
        &self,
        addr: SocketAddr,
        dest: &NodeId,
        method: reqwest::Method,
        path: &str,
        body: Bytes,
        extra: &[(&str, String)],
    ) -> Result<reqwest::Response, CallError> {
        let auth = self.creds.sign_request(
            method.as_str(),
            path,
            Some(dest),
            &self.node,
            &self.version,
            &body,
        );
        let mut req = self
            .stream_http
            .request(method, format!("http://{addr}{path}"))
            .body(body);
        for (name, value) in auth.headers() {
            req = req.header(name, value);
        }
        for (name, value) in extra {
            req = req.header(*name, value);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| CallError::Unreachable(describe(&e)))?;
        let status = resp.status().as_u16();
        if status == 401 && !resp.headers().contains_key(H_MAC) {
            return Err(CallError::Rejected);
        }
        let signed = self
            .creds
            .verify_response(&auth.nonce, status, resp.headers(), b"")
            .map_err(|_| CallError::Unsigned)?;
        if status == 401 {
            return Err(CallError::Misaddressed {
                answered: NodeId(signed.node),
            });
        }
        Ok(resp)
    }
}

fn empty(status: StatusCode) -> Response<Bytes> {
    let mut resp = Response::new(Bytes::new());
    *resp.status_mut() = status;
    resp
}

/// A node the deployment layer may use: this one or a member not yet dead.
#[derive(Debug, Clone)]
pub struct LiveNode {
    pub info: crate::node::NodeInfo,
    pub state: crate::node::MemberState,
    /// Where to reach it (the address it answered on).
    pub contact: SocketAddr,
}

impl Agent {
    /// This node and every member that is alive or suspect (not dead).
    pub fn live_nodes(&self) -> Vec<LiveNode> {
        let m = self.inner.snapshot.borrow().clone();
        let me = m.me().clone();
        let mut out = vec![LiveNode {
            contact: me.addr,
            info: me,
            state: crate::node::MemberState::Alive,
        }];
        out.extend(
            m.members()
                .filter(|x| x.state != crate::node::MemberState::Dead)
                .map(|x| LiveNode {
                    info: x.info.clone(),
                    state: x.state,
                    contact: x.contact,
                }),
        );
        out
    }

    /// The tunnel keys for this cluster, or `None` for a lone node.
    pub fn tunnel_keys(&self) -> Option<crate::tunnel::TunnelKeys> {
        self.inner
            .verifier
            .as_ref()
            .map(|v| crate::tunnel::TunnelKeys::new(v.credentials()))
    }
}

impl Agent {
    /// Updates what heartbeats say about this node's store and heads.
    /// Updates what heartbeats say about this node: its store, the engines
    /// it heads, and its `[[models]]` (with facts).
    pub fn set_local(
        &self,
        models: Vec<String>,
        heads: Vec<crate::node::HeadStatus>,
        specs: Vec<crate::spec::DeploySpec>,
    ) {
        let _ = self.inner.tx.try_send(crate::agent::Command::SetLocal {
            models,
            heads,
            specs,
        });
    }
}
