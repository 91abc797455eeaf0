//! The cluster-wide plan: which deployments exist (the leader's `[[models]]`)
//! and where each runs. Exactly one node decides it at a time, the leader:
//! the oldest live node (earliest start, then smallest id). Every node
//! accepts a plan only from the node it believes is the leader, so while
//! views disagree no second head is started for a deployment.

use herd_cluster::gguf::ModelFacts;
use herd_cluster::peer_api::LiveNode;
use herd_cluster::placement::{self, DeploymentSpec, NodeCap, NodeWant, Placement};
use herd_cluster::NodeId;
use herd_config::{NodesWanted, ValidModel};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Where the leader sends plans.
pub const PLAN_PATH: &str = "/_herd/v1/plan";

/// One `[[models]]` entry as the cluster runs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploySpec {
    pub id: String,
    /// File name in the model store.
    pub model: String,
    /// The leader's own path for it (used where that file exists).
    pub path: Option<PathBuf>,
    pub nodes: Wanted,
    pub threads: u32,
    pub slots: u32,
    pub ctx_size: u32,
    pub max_queue: u32,
    pub max_queue_wait_ms: u64,
    pub max_tokens_limit: u32,
    pub progress_timeout_ms: u64,
    pub mmap: bool,
    pub cpu_repack: bool,
    /// Read from the GGUF header (by the leader or a peer that has the file).
    pub facts: Option<ModelFacts>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Wanted {
    Count(u32),
    Names(Vec<String>),
}

impl DeploySpec {
    pub fn from_config(m: &ValidModel) -> Self {
        Self {
            id: m.id.clone(),
            model: m.model.clone(),
            path: m.path.is_absolute().then(|| m.path.clone()),
            nodes: match &m.nodes {
                NodesWanted::Count(n) => Wanted::Count(*n),
                NodesWanted::Names(v) => Wanted::Names(v.clone()),
            },
            threads: m.threads,
            slots: m.slots,
            ctx_size: m.ctx_size,
            max_queue: m.max_queue,
            max_queue_wait_ms: u64::try_from(m.max_queue_wait.as_millis()).unwrap_or(u64::MAX),
            max_tokens_limit: m.max_tokens_limit,
            progress_timeout_ms: u64::try_from(m.progress_timeout.as_millis()).unwrap_or(u64::MAX),
            mmap: m.mmap,
            cpu_repack: m.cpu_repack,
            facts: None,
        }
    }

    /// The placement input, once the model's facts are known.
    pub fn placement_spec(&self) -> Option<DeploymentSpec> {
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
}

/// What the leader sends to every node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub leader: NodeId,
    pub leader_name: String,
    pub leader_started_ms: u64,
    /// Grows with every change the leader makes.
    pub epoch: u64,
    pub specs: Vec<DeploySpec>,
    pub placement: Placement,
    /// sha256 of each model file, as the leader's store has it: a copy from
    /// a peer is checked against it.
    #[serde(default)]
    pub checksums: std::collections::BTreeMap<String, String>,
}

impl Plan {
    pub fn spec(&self, id: &str) -> Option<&DeploySpec> {
        self.specs.iter().find(|s| s.id == id)
    }

    /// Whether `other` comes from the same leader run and is not older.
    pub fn is_superseded_by(&self, other: &Plan) -> bool {
        other.leader != self.leader
            || other.leader_started_ms != self.leader_started_ms
            || other.epoch > self.epoch
    }
}

/// The oldest live node: earliest start, then smallest id.
pub fn leader(nodes: &[LiveNode]) -> Option<&LiveNode> {
    nodes
        .iter()
        .min_by(|a, b| (a.info.started_at_ms, &a.info.id).cmp(&(b.info.started_at_ms, &b.info.id)))
}

/// Places the specs whose facts are known on the live nodes, keeping what
/// `current` already placed wherever it still fits. Specs without facts
/// are refused with the reason.
pub fn decide(specs: &[DeploySpec], nodes: &[LiveNode], current: &Placement) -> Placement {
    let caps: Vec<NodeCap> = nodes
        .iter()
        .map(|n| NodeCap {
            id: n.info.id.clone(),
            name: n.info.name.clone(),
            budget: n.info.memory_budget,
        })
        .collect();
    let known: Vec<DeploymentSpec> = specs
        .iter()
        .filter_map(DeploySpec::placement_spec)
        .collect();
    let mut placement = placement::place(&known, &caps, current);
    for s in specs.iter().filter(|s| s.facts.is_none()) {
        placement.deployments.insert(
            s.id.clone(),
            placement::Decision::Refused {
                reason: format!(
                    "no live node has the model file {:?} in its model store",
                    s.model
                ),
                shortfall: Vec::new(),
            },
        );
    }
    placement
}
