//! The `herd` binary: one executable for every role (gateway, node agent,
//! engine host child, status client, load generator).

use clap::{Parser, Subcommand};
use herd_gateway::{bench, cli};
use std::process::ExitCode;

// Rust's allocations on the request path (headers, bodies, JSON) are many and
// small: mimalloc spends ~22 k fewer instructions per proxied request than
// glibc's malloc (bench/proxy-analysis.md). llama.cpp's own allocations stay
// with the C allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "herd",
    version,
    about = "One private, OpenAI-compatible AI server from a handful of machines"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the OpenAI API (gateway + node agent).
    Serve(cli::serve::ServeArgs),
    /// Run the node agent only: join a cluster and host shards for it.
    Node(cli::node::NodeArgs),
    /// Print the cluster's membership as a table.
    Status(cli::status::StatusArgs),
    /// Load-generate against any OpenAI-compatible base URL.
    Bench(bench::BenchArgs),
    /// Internal: the llama.cpp engine host child process (spawned by `serve`).
    #[command(hide = true)]
    EngineHost(herd_engines::llama::host::HostArgs),
    /// Internal: a shard worker, llama.cpp's RPC server on loopback (spawned by the node agent).
    #[command(hide = true)]
    RpcWorker(herd_engines::llama::worker::WorkerArgs),
    /// Measurement tool: a tunnel responder in front of loopback services.
    #[command(hide = true)]
    TunnelServe(cli::tunnel_tools::TunnelServeArgs),
    /// Measurement tool: a loopback listener whose connections go through a tunnel.
    #[command(hide = true)]
    TunnelForward(cli::tunnel_tools::TunnelForwardArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::init_tracing();
    let result = match cli.command {
        // The engine host is a plain thread program: no tokio runtime in the child.
        Command::EngineHost(args) => {
            herd_engines::llama::host::run(args).map_err(anyhow::Error::from)
        }
        Command::RpcWorker(args) => {
            herd_engines::llama::worker::run(args).map_err(anyhow::Error::from)
        }
        Command::Serve(args) => cli::block_on(cli::serve::run(args)),
        Command::Node(args) => cli::block_on(cli::node::run(args)),
        Command::Status(args) => cli::block_on(cli::status::run(args)),
        Command::Bench(args) => cli::block_on(bench::run(args)),
        Command::TunnelServe(args) => cli::block_on(cli::tunnel_tools::serve(args)),
        Command::TunnelForward(args) => cli::block_on(cli::tunnel_tools::forward(args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("herd: {err:#}");
            ExitCode::FAILURE
        }
    }
}
