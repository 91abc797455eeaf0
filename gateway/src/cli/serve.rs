//! `herd serve`: config (file, then `HERD_*` variables and flags on top) →
//! the node runtime (agent, deployer, tunnel) → live router → HTTP, with
//! graceful shutdown.

use super::runtime::{self, RuntimeParts};
use crate::auth::ApiKeys;
use crate::deploy::forward::ForwardState;
use crate::http::cluster;
use crate::http::{app, AppState, ExtraRoutes};
use crate::router::Router;
use anyhow::Context;
use clap::Args;
use herd_cluster::{Agent, Role};
use herd_config::{Config, HttpLimits, ModelConfig, RawConfig};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// TOML config file (see config/examples/).
    #[arg(long, env = "HERD_CONFIG")]
    pub config: Option<PathBuf>,
    /// GGUF model to serve (replaces the config file's first model path).
    #[arg(long, env = "HERD_MODEL")]
    pub model: Option<PathBuf>,
    /// Model id clients use (default: derived from the file name).
    #[arg(long, env = "HERD_MODEL_ID")]
    pub model_id: Option<String>,
    /// Address to listen on, e.g. 0.0.0.0:8080 (port 0 picks a free port).
    #[arg(long, env = "HERD_LISTEN")]
    pub listen: Option<String>,
    /// CPU threads per engine.
    #[arg(long, env = "HERD_THREADS")]
    pub threads: Option<u32>,
    /// Parallel sequences per model (concurrent requests).
    #[arg(long, env = "HERD_SLOTS")]
    pub slots: Option<u32>,
    /// Context per request, in tokens.
    #[arg(long, env = "HERD_CTX_SIZE")]
    pub ctx_size: Option<u32>,
    /// Requests that may wait for a slot before 429.
    #[arg(long, env = "HERD_MAX_QUEUE")]
    pub max_queue: Option<u32>,
    /// Longest wait for a slot, in milliseconds, before 429.
    #[arg(long, env = "HERD_MAX_QUEUE_WAIT_MS")]
    pub max_queue_wait_ms: Option<u64>,
    /// Map the model file (true) or read it into huge-page memory (false, the default; faster decode).
    #[arg(long, env = "HERD_MMAP", action = clap::ArgAction::Set)]
    pub mmap: Option<bool>,
    /// File of API keys (`name:key` per line); when set, every API call needs one.
    #[arg(long, env = "HERD_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Largest request body in bytes.
    #[arg(long, env = "HERD_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    #[command(flatten)]
    pub http: super::http_args::HttpArgs,
    #[command(flatten)]
    pub cluster: super::cluster_args::ClusterArgs,
}

impl ServeArgs {
    /// The file, with flags (and `HERD_*` variables, which clap folds into them) on top.
    pub fn into_config(&self) -> anyhow::Result<Config> {
        let mut raw = match &self.config {
            Some(path) => RawConfig::from_file(path)?,
            None => RawConfig::default(),
        };
        if let Some(v) = &self.listen {
            raw.listen = Some(v.clone());
        }
        if let Some(v) = &self.api_key_file {
            raw.api_key_file = Some(v.clone());
        }
        if let Some(v) = self.max_body_bytes {
            raw.max_body_bytes = Some(v);
        }
        self.http.apply(&mut raw);
        let is_upstream = |m: &ModelConfig| m.engine.as_deref() == Some("upstream");
        if let Some(path) = &self.model {
            // The file's first local model gives way to this one; upstreams stay.
            let (upstreams, local): (Vec<_>, Vec<_>) =
                raw.models.drain(..).partition(|m| is_upstream(m));
            let first = local.into_iter().next().unwrap_or_default();
            raw.models = vec![ModelConfig {
                path: Some(path.clone()),
                ..first
            }];
            raw.models.extend(upstreams);
        }
        // Engine flags are for local models; an upstream runs its own.
        for m in raw.models.iter_mut().filter(|m| !is_upstream(m)) {
            m.id = self.model_id.clone().or(m.id.take());
            m.threads = self.threads.or(m.threads);
            m.slots = self.slots.or(m.slots);
            m.ctx_size = self.ctx_size.or(m.ctx_size);
            m.max_queue = self.max_queue.or(m.max_queue);
            m.max_queue_wait_ms = self.max_queue_wait_ms.or(m.max_queue_wait_ms);
            m.mmap = self.mmap.or(m.mmap);
        }
        let config = raw.validate()?;
        if config.models.is_empty() && config.upstreams.is_empty() {
            anyhow::bail!("no model to serve: pass --model PATH.gguf or add a [[models]] entry to the config file");
        }
        Ok(config)
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.into_config()?;
    let keys = match &config.api_key_file {
        Some(path) => ApiKeys::load(path)?,
        None => ApiKeys::default(),
    };
    for m in &config.models {
        // A path names this node's own file: missing is a mistake to report now.
        // A store name may be fetched from a peer, so it is checked when placed.
        if m.path.is_absolute() && !m.path.is_file() {
            let problem = match std::fs::metadata(&m.path) {
                Ok(_) => "is not a regular file".to_string(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => "does not exist".to_string(),
                Err(e) => format!("cannot be read: {e}"),
            };
            anyhow::bail!(
                "model file {} {problem} (models[].path / --model)",
                m.path.display()
            );
        }
    }
    for u in &config.upstreams {
        // This node's own upstreams must be reachable with a key it has.
        crate::upstream::check_key(u)
            .map_err(|why| anyhow::anyhow!("upstream `{}`: {why}", u.id))?;
    }
    let metrics = crate::metrics::Metrics::new().context("cannot create the metrics registry")?;
    for alias in &config.routing.aliases {
        metrics.add_alias(&alias.name);
    }
    let router = Router::default();
    // Engine gauges (up, restarts, slots, KV cache) are read fresh at each scrape.
    let scraped = router.clone();
    metrics.add_scrape_hook(move |m| m.observe_router(&scraped));
    let state = AppState {
        router: router.clone(),
        keys: Arc::new(keys),
        max_body_bytes: config.max_body_bytes,
        metrics: metrics.clone(),
        responses: Default::default(),
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    // The agent advertises the address actually bound (port 0 works).
    let runtime = runtime::start(RuntimeParts {
        args: &args.cluster,
        file: &config.cluster,
        models: &config.models,
        upstreams: &config.upstreams,
        routing: &config.routing,
        addr,
        role: Role::Gateway,
        router: router.clone(),
        metrics: metrics.clone(),
        openai: crate::http::openai_routes(state.clone()),
    })
    .await?;
    let agent = runtime.agent.clone();
    let app = gateway_app(state, agent.clone(), runtime.peer_routes.clone());
    tracing::info!("herd listening on http://{addr}");
    let served = serve_until_signal(listener, app, config.http, config.shutdown_grace).await;
    agent.shutdown().await;
    drop(runtime);
    served
}

/// Everything `herd serve` answers: the OpenAI API and `/cluster` (behind
/// API keys), `/health`, `/metrics`, `/openapi.json`, and the node-to-node
/// routes (`peer_routes` and the agent's), which sign every message themselves.
pub fn gateway_app(state: AppState, agent: Agent, peer_routes: axum::Router) -> axum::Router {
    let extra = ExtraRoutes {
        open: crate::metrics::routes(state.metrics.clone())
            .merge(peer_routes)
            .merge(cluster::peer_routes(agent.clone())),
        protected: cluster::public_routes(agent.clone()),
        forward: Some(ForwardState {
            router: state.router.clone(),
            agent,
            max_body: state.max_body_bytes,
        }),
    };
    app(state, extra).layer(axum::middleware::from_fn(crate::access_log::access_log))
}

/// Serves until SIGINT/SIGTERM, then stops accepting and lets in-flight
/// streams finish, for at most `grace`.
pub async fn serve_until_signal(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    limits: HttpLimits,
    grace: Duration,
) -> anyhow::Result<()> {
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let mut server = tokio::spawn(crate::http::server::serve(
        listener,
        app,
        limits,
        async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        },
    ));
    tokio::select! {
        result = &mut server => return Ok(result?),
        _ = shutdown_signal() => {}
    }
    tracing::info!("shutting down: draining in-flight requests for up to {grace:?}");
    let _ = stop_tx.send(true);
    match tokio::time::timeout(grace, &mut server).await {
        Ok(result) => Ok(result?),
        Err(_) => {
            tracing::warn!("shutdown deadline passed; closing the remaining streams");
            server.abort();
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
