//! `herd bench` command-line options.

use clap::{Args, ValueEnum};
use std::path::PathBuf;

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// OpenAI-compatible base URL, as OpenAI SDKs take it (ending in /v1).
    #[arg(long, default_value = "http://127.0.0.1:8080/v1")]
    pub base_url: String,
    /// Model id to request (default: the first id the server lists at /models).
    #[arg(long)]
    pub model: Option<String>,
    /// Bearer API key (never printed).
    #[arg(long, env = "HERD_BENCH_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Which API call each request makes.
    #[arg(long, value_enum, default_value_t = Endpoint::Chat)]
    pub endpoint: Endpoint,
    /// Requests in flight at once (closed loop), or the cap on them with --rate.
    #[arg(long, short = 'c', default_value_t = 1)]
    pub concurrency: usize,
    /// Requests to complete (ignored when --duration is given).
    #[arg(long, short = 'n', default_value_t = 16)]
    pub requests: u64,
    /// Run for this many seconds instead of a request count.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Open loop: start requests at this fixed rate (per second) instead of as
    /// soon as one finishes; latency then includes no client-side queueing.
    #[arg(long)]
    pub rate: Option<f64>,
    /// After an answer with Retry-After (429, 503), a closed-loop worker waits
    /// that long before its next request, as OpenAI's SDKs do; without it, it
    /// sends again at once.
    #[arg(long)]
    pub honor_retry_after: bool,
    /// Requests sent (one at a time) before measuring, to load caches and connections.
    #[arg(long, default_value_t = 0)]
    pub warmup: u64,
    /// Synthetic prompt length in words (about one token each for English BPE
    /// vocabularies; the report gives the server's own count).
    #[arg(long, default_value_t = 32)]
    pub prompt_tokens: usize,
    /// Take the prompt from this file instead of a synthetic one.
    #[arg(long)]
    pub prompt_file: Option<PathBuf>,
    /// Give every request the same prompt text up front, so a server with a
    /// prompt cache can reuse it (each prompt still ends with a unique line).
    /// Without it, each prompt starts with a unique line, which defeats caching.
    #[arg(long)]
    pub shared_prefix: bool,
    /// max_tokens of each request.
    #[arg(long, default_value_t = 64)]
    pub max_tokens: u32,
    /// Sampling temperature (0 = greedy, the same output on every run).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Ask servers that support it (llama-server) to ignore end-of-sequence,
    /// so every request generates exactly max_tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Stream responses (SSE); TTFT and inter-token latency need it.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub stream: bool,
    /// Per-request deadline in seconds (connect to last byte).
    #[arg(long, default_value_t = 300.0)]
    pub timeout: f64,
    /// Print the report as JSON on stdout (for scripts) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// No progress bar on stderr.
    #[arg(long)]
    pub no_progress: bool,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// POST /chat/completions
    Chat,
    /// POST /completions
    Completions,
    /// GET /models: the cheapest call a gateway answers (no model runs).
    Models,
}

impl Endpoint {
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat",
            Endpoint::Completions => "completions",
            Endpoint::Models => "models",
        }
    }
}
