//! Command-line entry points: each subcommand turns flags into config and
//! calls one core function.

pub mod cluster_args;
pub mod http_args;
pub mod keys;
pub mod node;
pub mod runtime;
pub mod serve;
pub mod status;
pub mod tunnel_tools;
pub mod usage;
pub mod usage_bench;

use std::future::Future;

/// Logs go to stderr; `RUST_LOG` / `HERD_LOG` pick the level (default `info`).
pub fn init_tracing() {
    let filter = std::env::var("HERD_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_string());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

pub fn block_on<F: Future<Output = anyhow::Result<()>>>(fut: F) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(fut)
}
