//! `herd rpc-worker`: one shard of a split deployment, a ggml RPC server in
//! its own process (llama.cpp code that a peer can crash must not take the
//! node agent down). It listens on loopback only: peers reach it through
//! herd's authenticated tunnel, never directly. It dies with its parent.

use super::rpc;
use llama_cpp_2::llama_backend::LlamaBackend;
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct WorkerArgs {
    /// Loopback port to serve on (the address is always 127.0.0.1).
    #[arg(long)]
    pub port: u16,
    /// Where weight tensors received from the head are cached, so a reload sends only what is missing.
    #[arg(long)]
    pub cache_dir: PathBuf,
    #[arg(long, default_value_t = 1)]
    pub threads: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("llama.cpp backend: {0}")]
    Backend(String),
    #[error("cannot create the tensor cache {0}: {1}")]
    Cache(PathBuf, std::io::Error),
    #[error(transparent)]
    Rpc(#[from] rpc::RpcError),
}

pub fn run(args: WorkerArgs) -> Result<(), WorkerError> {
    die_with_parent();
    std::fs::create_dir_all(&args.cache_dir)
        .map_err(|e| WorkerError::Cache(args.cache_dir.clone(), e))?;
    let backend = LlamaBackend::init().map_err(|e| WorkerError::Backend(e.to_string()))?;
    super::llama_log::capture(std::env::var_os("HERD_LLAMA_LOG").is_some());
    let endpoint = format!("127.0.0.1:{}", args.port);
    rpc::serve(&backend, &endpoint, &args.cache_dir, args.threads)?;
    Ok(())
}

/// The name of the device a worker on this machine serves (for `/cluster`).
pub fn device_name() -> String {
    rpc::worker_device().map_or_else(|| "none".to_string(), |(_, name)| name)
}

/// The agent that started us may be SIGKILLed: the kernel then kills us too,
/// so no orphan keeps serving (or holding a port) after its node is gone.
#[cfg(target_os = "linux")]
fn die_with_parent() {
    // SAFETY: prctl with PR_SET_PDEATHSIG only sets a flag on this process.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        // The parent may already be gone (we were reparented before the call).
        if libc::getppid() == 1 {
            libc::_exit(0);
        }
    }
}

/// macOS has no parent-death signal; the agent kills its workers on exit and
/// the tunnel closes, which is what a peer sees either way.
#[cfg(not(target_os = "linux"))]
fn die_with_parent() {}
