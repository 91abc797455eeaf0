//! The llama.cpp engine. The model runs in a child process (the engine host,
//! `herd engine-host`) because llama.cpp aborts the whole process on several
//! errors (RPC peer loss among them); the gateway side ([`LlamaEngine`])
//! spawns, supervises and restarts it and multiplexes requests over one socket.

mod batch;
mod choices;
mod embed;
pub mod grammar;
pub mod host;
mod llama_log;
pub mod prepare;
mod prepare_pool;
pub mod protocol;
pub mod rpc;
pub mod sampler;
mod slot;
mod supervisor;
pub mod worker;

pub use supervisor::{LlamaEngine, LlamaEngineConfig};
