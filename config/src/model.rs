//! One `[[models]]` entry: a deployment of a GGUF, served by a llama.cpp
//! engine host on its head node, its layers split across `nodes`; or, with
//! `engine = "upstream"`, another OpenAI-compatible server (`upstream.rs`).

use crate::upstream::ValidUpstream;
use crate::ConfigError;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Name clients use in `"model"`; defaults to a readable name from the file.
    pub id: Option<String>,
    /// Path to the GGUF file (this node's own file; for a cluster prefer `model`).
    pub path: Option<PathBuf>,
    /// A GGUF file name in each node's model store (`[cluster] model_dir`):
    /// any node can head the deployment and fetch the file from a peer.
    pub model: Option<String>,
    /// The engine: `"llama"` (llama.cpp; the default) or `"upstream"`
    /// (another OpenAI-compatible server; see the upstream fields below).
    pub engine: Option<String>,
    /// Where it runs: a number of nodes (`2`: any two), or node names
    /// (`["studio-1", "studio-2"]`: exactly those, the first is the head). Default 1.
    pub nodes: Option<NodesWanted>,
    /// CPU threads for the engine.
    pub threads: Option<u32>,
    /// Parallel sequences decoded in one batch (= concurrent requests).
    pub slots: Option<u32>,
    /// Context length available to each request, in tokens.
    pub ctx_size: Option<u32>,
    /// Requests allowed to wait for a slot before new ones get 429.
    pub max_queue: Option<u32>,
    /// Longest a request waits for a slot before it gets 429.
    pub max_queue_wait_ms: Option<u64>,
    /// Upper bound on `max_tokens` (and the default when a request sets none).
    pub max_tokens_limit: Option<u32>,
    /// Most choices (`n`) one request may ask for; each takes a slot. Default 8.
    pub max_n: Option<u32>,
    /// An engine with requests in flight that produces nothing for this long
    /// is killed and restarted (a wedged llama.cpp, a silent RPC peer).
    pub progress_timeout_secs: Option<u64>,
    /// Map the GGUF file instead of reading it into memory. Reading it (the
    /// default) puts the weights in transparent huge pages where the kernel
    /// offers them, which decodes faster (docs/benchmarks.md); mapping starts
    /// faster and shares the pages with the OS file cache. A model larger than
    /// the available memory is mapped whatever this says.
    pub mmap: Option<bool>,
    /// Let llama.cpp repack Q4_0/Q4_K/IQ4_NL weights for its faster CPU kernels
    /// (default true). A split deployment never does (its RPC workers cannot),
    /// so `false` here gives a one-node deployment the same arithmetic, and the
    /// same greedy output, as the model split across nodes.
    pub cpu_repack: Option<bool>,
    /// An embedding model (e.g. all-MiniLM-L6-v2): the deployment serves
    /// `/v1/embeddings` and refuses chat and completions; any other
    /// deployment refuses embeddings. Runs on one node.
    pub embeddings: Option<bool>,
    /// Deployments tried in order when this one cannot answer (connect
    /// error, 429, 5xx, first-byte timeout) before the first byte reached
    /// the client. Any engine.
    pub fallbacks: Option<Vec<String>>,

    // engine = "upstream" only.
    /// The upstream's OpenAI API root, e.g. `https://api.openai.com/v1`.
    pub base_url: Option<String>,
    /// The model name the upstream knows (default: `id`).
    pub upstream_model: Option<String>,
    /// Environment variable holding the upstream's API key.
    pub api_key_env: Option<String>,
    /// File holding the upstream's API key (its first line).
    pub api_key_file: Option<PathBuf>,
    /// Extra headers sent to the upstream (not for secrets: they travel to
    /// the cluster's other nodes with the deployment).
    pub headers: Option<BTreeMap<String, String>>,
    /// Requests sent to the upstream at once; more wait (`max_queue`), then 429.
    pub max_concurrency: Option<u32>,
    pub connect_timeout_ms: Option<u64>,
    /// From sending the request to the upstream's first byte of body.
    pub first_byte_timeout_ms: Option<u64>,
    /// Longest gap between two stream events.
    pub idle_timeout_ms: Option<u64>,
    /// Longest a whole upstream answer may take.
    pub total_timeout_ms: Option<u64>,
    /// More attempts after the first (each walks the fallbacks again), with
    /// jittered backoff, within `total_timeout_ms`.
    pub retries: Option<u32>,
    /// Active health check: `GET base_url + probe_path` (default `/models`; `""` turns it off).
    pub probe_path: Option<String>,
    pub probe_interval_ms: Option<u64>,
    /// Consecutive failures (or half of the last 10 requests) that open the circuit.
    pub failure_threshold: Option<u32>,
    /// How long an open circuit rests before one trial request.
    pub cooldown_ms: Option<u64>,
}

/// A validated `[[models]]` entry: a local (llama.cpp) deployment or an upstream.
#[derive(Debug, Clone, PartialEq)]
pub enum ValidEntry {
    Local(ValidModel),
    Upstream(ValidUpstream),
}

/// `nodes = 2` or `nodes = ["a", "b"]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum NodesWanted {
    Count(u32),
    Names(Vec<String>),
}

/// Which engine serves a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    Llama,
}

/// A validated model entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidModel {
    pub id: String,
    /// The GGUF: a path on this node, whose file name is its name in the model store.
    pub path: PathBuf,
    /// The file's name in every node's model store.
    pub model: String,
    pub engine: EngineKind,
    pub nodes: NodesWanted,
    pub threads: u32,
    pub slots: u32,
    pub ctx_size: u32,
    pub max_queue: u32,
    pub max_queue_wait: Duration,
    pub max_tokens_limit: u32,
    pub max_n: u32,
    pub progress_timeout: Duration,
    pub mmap: bool,
    pub cpu_repack: bool,
    pub embeddings: bool,
}

fn default_threads() -> u32 {
    std::thread::available_parallelism().map_or(4, |n| u32::try_from(n.get()).unwrap_or(4))
}

impl ModelConfig {
    /// Validates the entry; also returns its `fallbacks`.
    pub(crate) fn validate(self, index: usize) -> Result<(ValidEntry, Vec<String>), ConfigError> {
        let fallbacks = self.fallbacks.clone().unwrap_or_default();
        let entry = if self.engine.as_deref() == Some("upstream") {
            ValidEntry::Upstream(crate::upstream::validate(self, index)?)
        } else {
            ValidEntry::Local(self.validate_local(index)?)
        };
        Ok((entry, fallbacks))
    }

    fn validate_local(self, index: usize) -> Result<ValidModel, ConfigError> {
        let field = |name: &str| format!("models[{index}].{name}");
        for (name, set) in self.upstream_fields() {
            if set {
                return Err(ConfigError::invalid(
                    field(name),
                    "is only for `engine = \"upstream\"` entries",
                ));
            }
        }
        let (path, model) = match (self.path, self.model) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::invalid(
                    field("model"),
                    "and `path` are both set; use one (`model` names a file in the model store)",
                ))
            }
            (None, None) => return Err(ConfigError::invalid(
                field("path"),
                "is required (the GGUF file to serve), or `model` (a file name in the model store)",
            )),
            (Some(path), None) => {
                let path = expand_home(path);
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                (path.clone(), name.to_string())
            }
            (None, Some(name)) => {
                if !is_file_name(&name) {
                    return Err(ConfigError::invalid(
                        field("model"),
                        format!("must be a file name in the model store (no `/`), got {name:?}"),
                    ));
                }
                (PathBuf::from(&name), name)
            }
        };
        let engine = match self.engine.as_deref() {
            None | Some("llama") => EngineKind::Llama,
            Some(other) => {
                return Err(ConfigError::invalid(
                    field("engine"),
                    format!("must be \"llama\" or \"upstream\", got {other:?}"),
                ))
            }
        };
        let nodes = match self.nodes {
            None => NodesWanted::Count(1),
            Some(NodesWanted::Count(n)) if !(1..=16).contains(&n) => {
                return Err(ConfigError::invalid(
                    field("nodes"),
                    format!("must be between 1 and 16 (llama.cpp's RPC device limit), got {n}"),
                ))
            }
            Some(NodesWanted::Names(names)) => {
                if names.is_empty() || names.len() > 16 {
                    return Err(ConfigError::invalid(
                        field("nodes"),
                        format!("must list 1 to 16 node names, got {}", names.len()),
                    ));
                }
                if let Some(dup) = names
                    .iter()
                    .enumerate()
                    .find_map(|(i, n)| names[..i].contains(n).then_some(n))
                {
                    return Err(ConfigError::invalid(
                        field("nodes"),
                        format!("names {dup:?} twice"),
                    ));
                }
                NodesWanted::Names(names)
            }
            Some(n) => n,
        };
        // Heartbeats carry the path as JSON text, which only UTF-8 can be.
        if path.to_str().is_none() {
            return Err(ConfigError::invalid(
                field("path"),
                format!("must be valid UTF-8, got {}", path.display()),
            ));
        }
        let id = match self.id {
            Some(id) => id,
            None => model_id_from_path(&path),
        };
        check_name(&field("id"), &id)?;
        let in_range = |name: &str, v: u32, lo: u32, hi: u32| -> Result<u32, ConfigError> {
            if (lo..=hi).contains(&v) {
                Ok(v)
            } else {
                Err(ConfigError::invalid(
                    field(name),
                    format!("must be between {lo} and {hi}, got {v}"),
                ))
            }
        };
        let threads = in_range(
            "threads",
            self.threads.unwrap_or_else(default_threads),
            1,
            512,
        )?;
        let slots = in_range("slots", self.slots.unwrap_or(4), 1, 256)?;
        let ctx_size = in_range("ctx_size", self.ctx_size.unwrap_or(4096), 64, 1 << 20)?;
        let max_queue = in_range("max_queue", self.max_queue.unwrap_or(64), 0, 1_000_000)?;
        let max_tokens_limit = in_range(
            "max_tokens_limit",
            self.max_tokens_limit.unwrap_or(ctx_size),
            1,
            ctx_size,
        )?;
        let max_n = in_range("max_n", self.max_n.unwrap_or(8), 1, 128)?;
        let wait_ms = self.max_queue_wait_ms.unwrap_or(30_000);
        if wait_ms > 3_600_000 {
            return Err(ConfigError::invalid(
                field("max_queue_wait_ms"),
                format!("must be at most 3600000 (one hour), got {wait_ms}"),
            ));
        }
        let progress = self.progress_timeout_secs.unwrap_or(120);
        if !(1..=86_400).contains(&progress) {
            return Err(ConfigError::invalid(
                field("progress_timeout_secs"),
                format!("must be between 1 and 86400, got {progress}"),
            ));
        }
        let embeddings = self.embeddings.unwrap_or(false);
        if embeddings && nodes != NodesWanted::Count(1) {
            return Err(ConfigError::invalid(
                field("embeddings"),
                "an embedding deployment runs on one node; remove `nodes`",
            ));
        }
        Ok(ValidModel {
            id,
            path,
            model,
            engine,
            nodes,
            threads,
            slots,
            ctx_size,
            max_queue,
            max_queue_wait: Duration::from_millis(wait_ms),
            max_tokens_limit,
            max_n,
            progress_timeout: Duration::from_secs(progress),
            mmap: self.mmap.unwrap_or(false),
            cpu_repack: self.cpu_repack.unwrap_or(true),
            embeddings,
        })
    }
}

impl ModelConfig {
    /// The upstream-only fields, and whether each is set.
    fn upstream_fields(&self) -> [(&'static str, bool); 15] {
        [
            ("base_url", self.base_url.is_some()),
            ("upstream_model", self.upstream_model.is_some()),
            ("api_key_env", self.api_key_env.is_some()),
            ("api_key_file", self.api_key_file.is_some()),
            ("headers", self.headers.is_some()),
            ("max_concurrency", self.max_concurrency.is_some()),
            ("connect_timeout_ms", self.connect_timeout_ms.is_some()),
            (
                "first_byte_timeout_ms",
                self.first_byte_timeout_ms.is_some(),
            ),
            ("idle_timeout_ms", self.idle_timeout_ms.is_some()),
            ("total_timeout_ms", self.total_timeout_ms.is_some()),
            ("retries", self.retries.is_some()),
            ("probe_path", self.probe_path.is_some()),
            ("probe_interval_ms", self.probe_interval_ms.is_some()),
            ("failure_threshold", self.failure_threshold.is_some()),
            ("cooldown_ms", self.cooldown_ms.is_some()),
        ]
    }

    /// The llama-only fields, and whether each is set.
    pub(crate) fn local_fields(&self) -> [(&'static str, bool); 11] {
        [
            ("max_n", self.max_n.is_some()),
            ("path", self.path.is_some()),
            ("model", self.model.is_some()),
            ("nodes", self.nodes.is_some()),
            ("threads", self.threads.is_some()),
            ("slots", self.slots.is_some()),
            ("ctx_size", self.ctx_size.is_some()),
            (
                "progress_timeout_secs",
                self.progress_timeout_secs.is_some(),
            ),
            ("mmap", self.mmap.is_some()),
            ("cpu_repack", self.cpu_repack.is_some()),
            ("embeddings", self.embeddings.is_some()),
        ]
    }
}

/// A model id or alias name: what clients put in `"model"`.
pub(crate) fn check_name(field: &str, id: &str) -> Result<(), ConfigError> {
    if id.is_empty() || id.len() > 128 || id.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(ConfigError::invalid(
            field,
            format!("must be 1-128 characters without spaces, got {id:?}"),
        ));
    }
    Ok(())
}

/// `SmolLM2-135M-Instruct.Q4_1.gguf` → `smollm2-135m-instruct`: the file stem,
/// lower-cased, with a trailing quantization tag (`.Q4_1`, `-q4_k_m`, `.f16`) removed.
pub fn model_id_from_path(path: &Path) -> String {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("model")
        .to_lowercase();
    let is_quant = |tag: &str| {
        let t = tag.trim_start_matches(['.', '-', '_']);
        (t.starts_with('q') || t.starts_with("iq")) && t.chars().any(|c| c.is_ascii_digit())
            || matches!(t, "f16" | "f32" | "bf16")
    };
    let cut = stem
        .rfind(['.', '-'])
        .filter(|&i| i > 0 && is_quant(&stem[i..]))
        .unwrap_or(stem.len());
    let mut id: String = stem[..cut]
        .chars()
        .map(|c| if c.is_whitespace() { '-' } else { c })
        .collect();
    if id.is_empty() {
        id = "model".to_string();
    }
    id
}

fn is_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.contains(['/', '\\', '\0'])
        && name != "."
        && name != ".."
}

/// `~/x` → `$HOME/x`, so example configs can point into the model cache.
pub(crate) fn expand_home(path: PathBuf) -> PathBuf {
    match (path.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => path,
    }
}
