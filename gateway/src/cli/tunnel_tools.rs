//! `herd tunnel-serve` and `herd tunnel-forward`: herd's node-to-node tunnel
//! on its own, without an agent or a deployment, so that measurement tools
//! can run through it. Hidden from `--help`; bench/shard.py uses them to put
//! llama.cpp's own RPC client (`llama-bench --rpc`) in front of a shard
//! worker through the tunnel (P6 in docs/benchmarks.md).
//!
//! ```text
//! llama-bench --rpc 127.0.0.1:P ─▶ tunnel-forward ══ Noise ══▶ tunnel-serve ─▶ rpc-worker on 127.0.0.1:W
//! ```

use anyhow::Context;
use clap::Args;
use futures::FutureExt;
use herd_cluster::tunnel::{self, TunnelKeys};
use herd_cluster::{Credentials, NodeId, Secret};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// What both ends need: the cluster's secret and name, and this end's node id.
#[derive(Args, Debug)]
pub struct TunnelIdentity {
    /// The cluster secret (the same file `herd serve --secret-file` reads).
    #[arg(long, value_name = "FILE")]
    pub secret_file: PathBuf,
    /// Cluster name (it is bound into every handshake).
    #[arg(long, default_value = herd_cluster::config::DEFAULT_CLUSTER)]
    pub cluster: String,
    /// This end's node id (ASCII letters, digits, '-', '_', '.').
    #[arg(long, value_name = "ID")]
    pub node_id: String,
}

impl TunnelIdentity {
    fn keys(&self) -> anyhow::Result<TunnelKeys> {
        let secret = Secret::from_file(&self.secret_file)?;
        Ok(TunnelKeys::new(&Credentials::new(secret, &self.cluster)))
    }
}

#[derive(Args, Debug)]
pub struct TunnelServeArgs {
    #[command(flatten)]
    pub identity: TunnelIdentity,
    /// Address the tunnel responder listens on.
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// A service the tunnel leads to, on loopback (repeat for several).
    #[arg(long = "service", value_name = "NAME=127.0.0.1:PORT", required = true,
          value_parser = parse_service)]
    pub services: Vec<(String, SocketAddr)>,
}

#[derive(Args, Debug)]
pub struct TunnelForwardArgs {
    #[command(flatten)]
    pub identity: TunnelIdentity,
    /// The far end's tunnel address (its `tunnel-serve --listen`).
    #[arg(long, value_name = "ADDR")]
    pub to: SocketAddr,
    /// The far end's node id (its `tunnel-serve --node-id`).
    #[arg(long, value_name = "ID")]
    pub dest: String,
    /// The service to reach there.
    #[arg(long, value_name = "NAME")]
    pub service: String,
    /// Loopback address whose connections are carried through the tunnel.
    #[arg(long, value_name = "127.0.0.1:PORT", value_parser = parse_loopback)]
    pub listen: SocketAddr,
}

/// `NAME=127.0.0.1:PORT`; the responder refuses non-loopback targets anyway,
/// so say it here, where the flag is.
fn parse_service(text: &str) -> Result<(String, SocketAddr), String> {
    let (name, addr) = text
        .split_once('=')
        .ok_or_else(|| format!("`--service` must be NAME=127.0.0.1:PORT, got {text:?}"))?;
    Ok((name.to_string(), parse_loopback(addr)?))
}

/// The forwarder's listener and a service are unauthenticated: loopback only.
fn parse_loopback(text: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = text
        .parse()
        .map_err(|_| format!("expected an address like 127.0.0.1:50052, got {text:?}"))?;
    if addr.ip().is_loopback() {
        Ok(addr)
    } else {
        Err(format!(
            "{addr} is not a loopback address: a tunnel end or service must not be reachable from other hosts"
        ))
    }
}

pub async fn serve(args: TunnelServeArgs) -> anyhow::Result<()> {
    let keys = args.identity.keys()?;
    let services: Arc<HashMap<String, SocketAddr>> = Arc::new(args.services.into_iter().collect());
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(
        "tunnel responder for node {} listening on {}",
        args.identity.node_id,
        listener.local_addr()?
    );
    let resolve: tunnel::Resolver = Arc::new(move |service: &str| {
        let addr = services.get(service).copied();
        async move { addr }.boxed()
    });
    let me = NodeId(args.identity.node_id);
    tokio::select! {
        () = tunnel::serve(listener, keys, me, resolve) => {}
        () = stop_signal() => {}
    }
    Ok(())
}

pub async fn forward(args: TunnelForwardArgs) -> anyhow::Result<()> {
    let keys = args.identity.keys()?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(
        "forwarding {} to {} on node {} at {}",
        listener.local_addr()?,
        args.service,
        args.dest,
        args.to
    );
    let me = NodeId(args.identity.node_id);
    let forwarding = tunnel::forward(listener, args.to, keys, me, NodeId(args.dest), args.service);
    tokio::select! {
        () = forwarding => {}
        () = stop_signal() => {}
    }
    Ok(())
}

/// SIGINT or SIGTERM: returning drops the open tunnels, which logs their traffic.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_and_listeners_must_be_loopback() {
        assert_eq!(
            parse_service("rpc/x=127.0.0.1:50052"),
            Ok((
                "rpc/x".to_string(),
                SocketAddr::from(([127, 0, 0, 1], 50052))
            ))
        );
        assert!(parse_service("rpc/x").is_err());
        assert!(parse_service("rpc/x=10.0.0.2:50052").is_err_and(|e| e.contains("not a loopback")));
        assert!(parse_loopback("0.0.0.0:1").is_err());
        assert!(parse_loopback("[::1]:1").is_ok());
    }
}
