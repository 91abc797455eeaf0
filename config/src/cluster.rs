//! The `[cluster]` section: how this machine joins a herd cluster.
//!
//! Every field is optional; `herd serve` / `herd node` flags and `HERD_*`
//! variables override it field by field, and the cluster crate validates the
//! merged result (see docs/cluster.md).

use serde::Deserialize;
use std::path::PathBuf;

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The cluster's name: nodes with another name are another cluster, even on one LAN (default "herd").
    #[serde(default)]
    pub name: Option<String>,
    /// This machine's name in `herd status` (default: the host name).
    #[serde(default)]
    pub node_name: Option<String>,
    /// File holding the cluster secret (at least 16 bytes; `openssl rand -hex 32`).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// The cluster secret itself, for configs that are already kept private. Prefer `secret_file`.
    #[serde(default)]
    pub secret: Option<String>,
    /// Static peers (`host:port`), for networks where multicast discovery does not reach.
    #[serde(default)]
    pub peers: Vec<String>,
    /// mDNS/DNS-SD discovery on the LAN (default true; needs a secret).
    #[serde(default)]
    pub discovery: Option<bool>,
    /// Memory this node offers for models: bytes, a size like "48GiB", or a share like "75%".
    #[serde(default)]
    pub memory_budget: Option<String>,
    /// This node's model store: GGUF files that `[[models]] model = "..."`
    /// names (default `$HERD_CACHE/models`, else `~/.cache/herd/models`).
    #[serde(default)]
    pub model_dir: Option<PathBuf>,
    /// Where the node's stable id is kept (default `~/.local/state/herd/<node name>`).
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Interval between heartbeats to each peer.
    #[serde(default)]
    pub heartbeat_ms: Option<u64>,
    /// Silence after which a peer is suspect.
    #[serde(default)]
    pub suspect_after_ms: Option<u64>,
    /// Silence after which a peer is dead.
    #[serde(default)]
    pub dead_after_ms: Option<u64>,
    /// How long a dead peer stays listed (as dead) before it is removed.
    #[serde(default)]
    pub remove_after_ms: Option<u64>,
}
