//! Agents in one process for the integration tests, each behind its own HTTP
//! server on 127.0.0.1:0 that records every request it receives (so a test
//! can look at what a peer was sent, or replay it somewhere else).

#![allow(dead_code, reason = "each test binary uses a part of these helpers")]

use bytes::Bytes;
use herd_cluster::auth::Credentials;
use herd_cluster::{Agent, AgentConfig, MemberState, Role, Secret};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;
pub type Fallible<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

pub const SECRET: &str = "test-secret-0123456789abcdef";

/// Requests a node's server kept (the most recent ones).
const RECORD_AT_MOST: usize = 4096;

/// One request exactly as it arrived.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

pub struct Node {
    pub agent: Agent,
    pub addr: SocketAddr,
    pub state: std::path::PathBuf,
    _state_dir: Option<tempfile::TempDir>,
    /// When false the server hangs every request, like a machine asleep.
    pub up: Arc<AtomicBool>,
    pub received: Arc<Mutex<Vec<Recorded>>>,
    server: tokio::task::JoinHandle<()>,
}

impl std::ops::Deref for Node {
    type Target = Agent;
    fn deref(&self) -> &Agent {
        &self.agent
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Node {
    /// What this node's server has received so far.
    pub fn received(&self) -> Vec<Recorded> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

pub async fn node(
    name: &str,
    secret: Option<&str>,
    peers: &[SocketAddr],
    version: &str,
) -> Fallible<Node> {
    let dir = tempfile::tempdir()?;
    let mut n = node_in(name, secret, peers, version, dir.path().to_path_buf()).await?;
    n._state_dir = Some(dir);
    Ok(n)
}

pub async fn node_in(
    name: &str,
    secret: Option<&str>,
    peers: &[SocketAddr],
    version: &str,
    state: std::path::PathBuf,
) -> Fallible<Node> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut config = AgentConfig::new(name, addr, state.clone(), Role::Node);
    config.cluster = "test".into();
    config.secret = secret.map(|s| Secret::from_text(s, "test")).transpose()?;
    config.peers = peers.iter().map(ToString::to_string).collect();
    config.discovery = false;
    config.version = version.into();
    let agent = Agent::start(config).await?;
    let up = Arc::new(AtomicBool::new(true));
    let received = Arc::new(Mutex::new(Vec::new()));
    let (handler_agent, handler_up, record) = (agent.clone(), up.clone(), received.clone());
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let (agent, up, record) = (handler_agent.clone(), handler_up.clone(), record.clone());
        async move {
            if !up.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            let (parts, body) = req.into_parts();
            let body = axum::body::to_bytes(body, 1 << 20)
                .await
                .unwrap_or_default();
            if let Ok(mut r) = record.lock() {
                if r.len() >= RECORD_AT_MOST {
                    r.remove(0);
                }
                r.push(Recorded {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_string(),
                    headers: parts.headers.clone(),
                    body: body.clone(),
                });
            }
            let resp = agent
                .handle_peer(
                    parts.method.as_str(),
                    parts.uri.path(),
                    &parts.headers,
                    &body,
                )
                .await;
            resp.map(axum::body::Body::from)
        }
    });
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(Node {
        agent,
        addr,
        state,
        _state_dir: None,
        up,
        received,
        server,
    })
}

pub fn names(agent: &Agent) -> Vec<(String, MemberState)> {
    agent
        .view()
        .nodes
        .into_iter()
        .map(|n| (n.name, n.state))
        .collect()
}

pub async fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> TestResult {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("timed out waiting for {what}").into())
}

pub fn creds(secret: &str) -> Fallible<Credentials> {
    Ok(Credentials::new(Secret::from_text(secret, "test")?, "test"))
}

/// Sends a recorded request again, byte for byte, to another address.
pub async fn replay(req: &Recorded, to: SocketAddr) -> Fallible<reqwest::Response> {
    let http = reqwest::Client::builder().no_proxy().build()?;
    let mut out = http
        .request(req.method.parse()?, format!("http://{to}{}", req.path))
        .body(req.body.clone());
    for (name, value) in &req.headers {
        if name.as_str().starts_with("x-herd") || name == http::header::CONTENT_TYPE {
            out = out.header(name, value);
        }
    }
    Ok(out.send().await?)
}
