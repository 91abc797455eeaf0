//! Signed calls to a peer's `/_herd/v1/...` endpoints: heartbeats between
//! nodes, and the view that `herd status --secret-file` reads.

use crate::auth::{Credentials, ResponseAuth, H_MAC};
use crate::config::ClusterError;
use crate::node::NodeId;
use crate::version::check_compatible;
use crate::wire::{ClusterView, Gossip, Refusal};
use crate::{GOSSIP_PATH, PROBE_PATH, VIEW_PATH};
use bytes::Bytes;
use std::net::SocketAddr;
use std::time::Duration;

/// Largest answer read from a peer.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// 401 without a valid MAC: the peer does not accept our secret (or cluster name, or clock).
    #[error(
        "it rejected our credentials: it has a different cluster secret or cluster name, \
         or the clocks differ by more than a minute"
    )]
    Rejected,
    /// The answer's MAC does not verify: not a member of our cluster.
    #[error("its answer is not signed with our cluster secret")]
    Unsigned,
    /// A signed refusal (an incompatible version), in the peer's words.
    #[error("{0}")]
    Refused(String),
    /// A secret holder answers at the address, but not the node we addressed:
    /// that node moved, or this one took its place.
    #[error("another node answers at this address: {answered}")]
    Misaddressed { answered: NodeId },
    #[error("unexpected answer: {0}")]
    Unexpected(String),
}

/// Signs requests as `node` running `version`.
#[derive(Debug, Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    /// For streamed answers (forwarded generations, model copies): no total
    /// timeout, only a connect timeout.
    pub(crate) stream_http: reqwest::Client,
    pub(crate) creds: Credentials,
    pub(crate) node: String,
    pub(crate) version: String,
}

impl PeerClient {
    pub fn new(
        creds: Credentials,
        node: impl Into<String>,
        version: impl Into<String>,
        timeout: Duration,
    ) -> Result<Self, ClusterError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .no_proxy()
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| ClusterError::Client(e.to_string()))?;
        let stream_http = reqwest::Client::builder()
            .connect_timeout(timeout)
            .no_proxy()
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| ClusterError::Client(e.to_string()))?;
        Ok(Self {
            http,
            stream_http,
            creds,
            node: node.into(),
            version: version.into(),
        })
    }

    pub fn credentials(&self) -> &Credentials {
        &self.creds
    }

    /// Sends a heartbeat (already serialized) to the member `to` and returns its own.
    pub async fn gossip(
        &self,
        addr: SocketAddr,
        to: &NodeId,
        body: Bytes,
    ) -> Result<Gossip, CallError> {
        self.exchange(addr, GOSSIP_PATH, Some(to), body).await
    }

    /// Asks whoever answers at `addr` (the node `to`, when we know which one
    /// should) who it is, telling it nothing but our id: the address has not
    /// proved the secret yet. The answer lists no members.
    pub async fn probe(&self, addr: SocketAddr, to: Option<&NodeId>) -> Result<Gossip, CallError> {
        self.exchange(addr, PROBE_PATH, to, Bytes::new()).await
    }

    async fn exchange(
        &self,
        addr: SocketAddr,
        path: &str,
        to: Option<&NodeId>,
        body: Bytes,
    ) -> Result<Gossip, CallError> {
        let base = format!("http://{addr}");
        let (signed, answer) = self
            .call_signed(reqwest::Method::POST, &base, path, to, body)
            .await?;
        let gossip: Gossip =
            serde_json::from_slice(&answer).map_err(|e| CallError::Unexpected(e.to_string()))?;
        // The body's description must be the signer's own, and the one we addressed.
        if gossip.from.id.0 != signed.node || to.is_some_and(|id| *id != gossip.from.id) {
            return Err(CallError::Unexpected(format!(
                "the answer describes node {}, is signed by {}, and was meant to come from {}",
                gossip.from.id,
                signed.node,
                to.map_or("whoever answers", |id| id.0.as_str())
            )));
        }
        check_compatible(&self.version, &gossip.from.version).map_err(CallError::Refused)?;
        Ok(gossip)
    }

    /// The peer's view of the cluster. `base_url` is like `http://10.0.0.2:8080`;
    /// which node answers there is not known, so the request names none.
    pub async fn view(&self, base_url: &str) -> Result<ClusterView, CallError> {
        let answer = self
            .call(
                reqwest::Method::GET,
                base_url.trim_end_matches('/'),
                VIEW_PATH,
                None,
                Bytes::new(),
            )
            .await?;
        serde_json::from_slice(&answer).map_err(|e| CallError::Unexpected(e.to_string()))
    }

    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        base: &str,
        path: &str,
        to: Option<&NodeId>,
        body: Bytes,
    ) -> Result<Bytes, CallError> {
        let (_, answer) = self.call_signed(method, base, path, to, body).await?;
        Ok(answer)
    }

    /// A signed call and its whole answer, with the answer's signature.
    async fn call_signed(
        &self,
        method: reqwest::Method,
        base: &str,
        path: &str,
        to: Option<&NodeId>,
        body: Bytes,
    ) -> Result<(ResponseAuth, Bytes), CallError> {
        let auth =
            self.creds
                .sign_request(method.as_str(), path, to, &self.node, &self.version, &body);
        let mut req = self
            .http
            .request(method, format!("{base}{path}"))
            .body(body);
        for (name, value) in auth.headers() {
            req = req.header(name, value);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| CallError::Unreachable(describe(&e)))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let answer = read_capped(resp).await?;
        if status == 401 && !headers.contains_key(H_MAC) {
            return Err(CallError::Rejected);
        }
        let signed = self
            .creds
            .verify_response(&auth.nonce, status, &headers, &answer)
            .map_err(|_| CallError::Unsigned)?;
        match status {
            200 => Ok((signed, answer)),
            401 => Err(CallError::Misaddressed {
                answered: NodeId(signed.node),
            }),
            409 => {
                let refusal: Option<Refusal> = serde_json::from_slice(&answer).ok();
                let message = refusal.map_or_else(
                    || {
                        format!(
                            "incompatible herd versions: we run herd {}, the peer runs herd {}",
                            self.version, signed.version
                        )
                    },
                    |r| r.error,
                );
                Err(CallError::Refused(message))
            }
            other => Err(CallError::Unexpected(format!(
                "status {other}: {}",
                String::from_utf8_lossy(&answer)
                    .chars()
                    .take(200)
                    .collect::<String>()
            ))),
        }
    }
}

async fn read_capped(mut resp: reqwest::Response) -> Result<Bytes, CallError> {
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
    {
        return Err(CallError::Unexpected("answer too large".into()));
    }
    let mut buf = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| CallError::Unreachable(describe(&e)))?
    {
        if buf.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(CallError::Unexpected("answer too large".into()));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

/// reqwest's top-level message hides the cause ("error sending request"): show the chain.
pub(crate) fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "no answer in time".to_string();
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}
