//! A deployment as the cluster runs it: one `[[models]]` entry, with the
//! model's facts (read from its GGUF header by the node that declares it)
//! and, once hashed, its file's sha256. Every node advertises the specs of
//! its own config in its heartbeats; the leader merges them into the plan.

use crate::gguf::ModelFacts;
use crate::placement::{DeploymentSpec, NodeWant};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploySpec {
    pub id: String,
    /// File name in the model store.
    pub model: String,
    /// The declaring node's own path for it (used wherever that file exists).
    pub path: Option<PathBuf>,
    pub nodes: Wanted,
    pub threads: u32,
    pub slots: u32,
    pub ctx_size: u32,
    pub max_queue: u32,
    pub max_queue_wait_ms: u64,
    pub max_tokens_limit: u32,
    /// Most choices one request may ask for (older peers do not send it).
    #[serde(default = "default_max_n")]
    pub max_n: u32,
    pub progress_timeout_ms: u64,
    pub mmap: bool,
    pub cpu_repack: bool,
    /// An embedding deployment (serves `/v1/embeddings` only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub embeddings: bool,
    /// Read from the GGUF header by a node that has the file.
    pub facts: Option<ModelFacts>,
    /// Why a node that has the file could not read its header (unreadable,
    /// truncated, not a GGUF), so the refusal says so. Absent from older peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facts_error: Option<String>,
    /// The file's sha256, once the declaring node has hashed it: a copy
    /// made from a peer is checked against it.
    pub sha256: Option<String>,
    /// Set when another OpenAI-compatible server answers for this deployment
    /// (`engine = "upstream"`): it is not placed, every node sends its
    /// requests there directly, and only the admission fields above apply
    /// (`slots` is its concurrency; `model` the name the upstream knows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamSpec>,
}

/// An upstream server, as every node needs it to send requests there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamSpec {
    pub base_url: String,
    /// Where each node reads the API key: never the key itself.
    pub api_key: Option<KeyRef>,
    pub headers: Vec<(String, String)>,
    pub connect_timeout_ms: u64,
    pub first_byte_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub total_timeout_ms: u64,
    pub retries: u32,
    pub probe_path: Option<String>,
    pub probe_interval_ms: u64,
    pub failure_threshold: u32,
    pub cooldown_ms: u64,
    /// Cap on `max_tokens`, when the config sets one.
    pub max_tokens_limit: Option<u32>,
}

fn default_max_n() -> u32 {
    8
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyRef {
    Env(String),
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Wanted {
    Count(u32),
    Names(Vec<String>),
}

impl DeploySpec {
    /// The placement input, once the model's facts are known (never for an upstream).
    pub fn placement_spec(&self) -> Option<DeploymentSpec> {
        if self.upstream.is_some() {
            return None;
        }
        Some(DeploymentSpec {
            id: self.id.clone(),
            model: self.model.clone(),
            want: match &self.nodes {
                Wanted::Count(n) => NodeWant::Count(*n),
                Wanted::Names(v) => NodeWant::Pinned(v.clone()),
            },
            slots: self.slots,
            ctx_size: self.ctx_size,
            facts: self.facts.clone()?,
        })
    }

    /// What running it depends on: everything but what is learned about the
    /// file (facts, checksum), so learning those never restarts an engine.
    pub fn runtime(&self) -> Self {
        Self {
            facts: None,
            facts_error: None,
            sha256: None,
            ..self.clone()
        }
    }
}
