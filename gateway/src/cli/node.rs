//! `herd node`: a cluster member without a public API. It runs the agent,
//! hosts shards (and heads) of the cluster's deployments, serves the
//! node-to-node routes (and `GET /cluster` to holders of an API key, when a
//! key file is given), never the OpenAI API.

use super::cluster_args::{read_config, ClusterArgs};
use super::runtime::{self, RuntimeParts};
use crate::auth::{require_key, ApiKeys};
use crate::http::cluster::{peer_routes, public_routes};
use crate::http::{openai_routes, AppState};
use crate::router::Router;
use anyhow::Context;
use clap::Args;
use herd_cluster::Role;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Where a node listens when nothing says otherwise: every interface, so peers can reach it.
pub const DEFAULT_NODE_LISTEN: &str = "0.0.0.0:8080";

#[derive(Args, Debug)]
pub struct NodeArgs {
    /// TOML config file; `herd node` uses its `listen` and `[cluster]` section.
    #[arg(long, env = "HERD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address other nodes and clients use to reach this node (default 0.0.0.0:8080; port 0 picks one).
    #[arg(long, env = "HERD_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// File of API keys (`name:key` per line): when set, `GET /cluster` is served to their holders.
    #[arg(long, env = "HERD_API_KEY_FILE", value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,
    #[command(flatten)]
    pub http: super::http_args::HttpArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

pub async fn run(args: NodeArgs) -> anyhow::Result<()> {
    let mut raw = read_config(args.config.as_ref())?;
    args.http.apply(&mut raw);
    let limits = raw.http_limits()?;
    let listen_text = args
        .listen
        .clone()
        .or(raw.listen.clone())
        .unwrap_or_else(|| DEFAULT_NODE_LISTEN.to_string());
    let listen: SocketAddr = listen_text.parse().map_err(|_| {
        anyhow::anyhow!("`--listen` must be an address like 0.0.0.0:8080, got {listen_text:?}")
    })?;
    let key_file = args.api_key_file.clone().or(raw.api_key_file.clone());
    let keys = key_file.as_deref().map(ApiKeys::load).transpose()?;
    // The same file may be copied to every node: its [[models]] are this
    // node's proposal of the cluster's deployments (the leader's list wins).
    let deployments = herd_config::RawConfig {
        models: raw.models.clone(),
        aliases: raw.aliases.clone(),
        ..herd_config::RawConfig::default()
    }
    .validate()?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let metrics = crate::metrics::Metrics::new().context("cannot create the metrics registry")?;
    let router = Router::default();
    // A node may head deployments: it runs forwarded requests through the
    // OpenAI handlers, but serves no OpenAI API of its own.
    let state = AppState {
        router: router.clone(),
        keys: Arc::new(ApiKeys::default()),
        max_body_bytes: raw.max_body_bytes.unwrap_or(4 << 20),
        metrics: metrics.clone(),
        responses: Default::default(),
    };
    let runtime = runtime::start(RuntimeParts {
        args: &args.cluster,
        file: &raw.cluster,
        models: &deployments.models,
        upstreams: &deployments.upstreams,
        routing: &deployments.routing,
        addr,
        role: Role::Node,
        router,
        metrics,
        openai: openai_routes(state),
    })
    .await?;
    let agent = runtime.agent.clone();
    let mut app = runtime
        .peer_routes
        .clone()
        .merge(peer_routes(agent.clone()));
    if let Some(keys) = keys {
        let protected = public_routes(agent.clone()).route_layer(
            axum::middleware::from_fn_with_state(Arc::new(keys), require_key),
        );
        app = app.merge(protected);
    }
    tracing::info!("herd node listening on http://{addr}");
    let served =
        super::serve::serve_until_signal(listener, app, limits, Duration::from_secs(2)).await;
    agent.shutdown().await;
    drop(runtime);
    served
}
