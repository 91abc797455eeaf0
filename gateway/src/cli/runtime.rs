//! What `herd serve` and `herd node` share: the cluster agent, the tunnel
//! that carries shard traffic, the model store and the deployer that keeps
//! this node's part of the cluster's plan running and publishes the routes.

use super::cluster_args::{agent_config, ClusterArgs};
use crate::deploy::copy::serve_model;
use crate::deploy::forward::{receive_plan, serve_forwarded};
use crate::deploy::plan::{spec_from_config, spec_from_upstream, PLAN_PATH};
use crate::deploy::{DeploySettings, Deployer};
use crate::metrics::Metrics;
use crate::router::Router;
use anyhow::Context;
use axum::routing::{any, get, post};
use futures::FutureExt;
use herd_cluster::store::ModelStore;
use herd_cluster::{tunnel, Agent, Role};
use herd_config::{ClusterConfig, Routing, ValidModel, ValidUpstream};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub struct Runtime {
    pub agent: Agent,
    pub deployer: Deployer,
    /// Node-to-node routes (plans, forwarded requests) beside the agent's own.
    pub peer_routes: axum::Router,
    _tunnel: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(t) = &self._tunnel {
            t.abort();
        }
    }
}

pub struct RuntimeParts<'a> {
    pub args: &'a ClusterArgs,
    pub file: &'a ClusterConfig,
    pub models: &'a [ValidModel],
    pub upstreams: &'a [ValidUpstream],
    /// Aliases and fallbacks.
    pub routing: &'a Routing,
    /// The HTTP address actually bound.
    pub addr: SocketAddr,
    pub role: Role,
    pub router: Router,
    pub metrics: Arc<Metrics>,
    /// The OpenAI routes without auth, for requests forwarded to this node.
    pub openai: axum::Router,
}

pub async fn start(p: RuntimeParts<'_>) -> anyhow::Result<Runtime> {
    let mut config = agent_config(p.args, p.file, p.addr, p.role)?;
    let store = ModelStore::new(
        match p.args.model_dir.as_ref().or(p.file.model_dir.as_ref()) {
            Some(dir) => herd_cluster::config::expand_home(dir),
            None => ModelStore::default_dir(),
        },
    );
    // The tunnel listens beside the HTTP server, on a port of its own.
    let tunnel_listener = if config.secret.is_some() {
        let l = tokio::net::TcpListener::bind(SocketAddr::new(p.addr.ip(), 0))
            .await
            .context("cannot open the tunnel port")?;
        config.tunnel_port = l.local_addr()?.port();
        Some(l)
    } else {
        None
    };
    config.shard_device = herd_engines::llama::worker::device_name();
    config.models = store.list();
    let agent = Agent::start(config).await?;
    let exe =
        std::env::current_exe().context("cannot find the herd executable to start engines")?;
    let settings = DeploySettings {
        exe,
        store,
        specs: p
            .models
            .iter()
            .map(spec_from_config)
            .chain(p.upstreams.iter().map(spec_from_upstream))
            .collect(),
        policy: Arc::new(crate::routing::RoutingPolicy::new(
            p.routing,
            crate::openai::response::unix_now(),
        )),
        worker_threads: p.models.iter().map(|m| m.threads).max().unwrap_or(1),
        settle: Duration::from_secs(2),
    };
    let store_for_peers = settings.store.clone();
    let deployer = Deployer::start(settings, agent.clone(), p.router, p.metrics);
    let tunnel = match (tunnel_listener, agent.tunnel_keys()) {
        (Some(listener), Some(keys)) => {
            let d = deployer.clone();
            let resolve: tunnel::Resolver = Arc::new(move |service: &str| {
                let d = d.clone();
                let service = service.to_string();
                async move { resolve_worker(&d, &service).await }.boxed()
            });
            Some(tokio::spawn(tunnel::serve(
                listener,
                keys,
                agent.node_id().clone(),
                resolve,
            )))
        }
        _ => None,
    };
    let peer_routes = axum::Router::new()
        .route(PLAN_PATH, post(receive_plan))
        .with_state((agent.clone(), deployer.clone()))
        .merge(
            axum::Router::new()
                .route("/_herd/v1/forward/{*rest}", any(serve_forwarded))
                .with_state((agent.clone(), p.openai)),
        )
        .merge(
            axum::Router::new()
                .route("/_herd/v1/models/{*rest}", get(serve_model))
                .with_state((agent.clone(), store_for_peers)),
        );
    Ok(Runtime {
        agent,
        deployer,
        peer_routes,
        _tunnel: tunnel,
    })
}

/// `rpc/DEPLOYMENT` → this node's shard worker for it, once it listens
/// (a head may dial as soon as the plan lands, before the worker is up).
async fn resolve_worker(d: &Deployer, service: &str) -> Option<SocketAddr> {
    let id = service.strip_prefix("rpc/")?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while tokio::time::Instant::now() < deadline {
        if let Some(addr) = d.worker(id) {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Some(addr);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}
