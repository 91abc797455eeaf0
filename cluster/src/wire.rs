//! What travels between nodes (`/_herd/v1/...`) and what `GET /cluster` shows.

use crate::node::{MemberState, NodeId, NodeInfo};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// A heartbeat: sent to every member each interval, answered with the
/// member's own. It is also the answer to a probe, then without members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gossip {
    pub from: NodeInfo,
    /// Peers the sender currently hears from: how one seed teaches the whole
    /// membership. Empty in the answer to a probe: a prober has not shown
    /// which node it meant to reach, so it learns who answers and no more.
    pub members: Vec<PeerRef>,
    /// The sender is shutting down: drop it now instead of waiting for the timeout.
    #[serde(default)]
    pub leaving: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRef {
    pub id: NodeId,
    pub addr: SocketAddr,
}

/// A refusal a peer explains (MACed, so it is only ever shown to secret holders).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub error: String,
}

/// One node's view of the cluster, as `GET /cluster` and `herd status` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    pub cluster: String,
    /// The node that produced this view.
    pub self_id: NodeId,
    /// False when the node has no cluster secret and runs alone.
    pub clustered: bool,
    /// This node first, then the others by name.
    pub nodes: Vec<NodeView>,
    /// Every deployment of the cluster, as this node knows the plan.
    #[serde(default)]
    pub deployments: Vec<DeploymentView>,
}

/// One deployment in `GET /cluster` and `herd status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentView {
    pub id: String,
    /// The model file (a name in each node's model store).
    pub model: String,
    /// `loading`, `ready`, `failed` or `refused`.
    pub state: String,
    /// Why it is not ready (refusal with the shortfall, the engine's last error).
    pub reason: Option<String>,
    pub head: Option<String>,
    pub shards: Vec<ShardView>,
    /// Set when nodes define this id differently (the oldest node's
    /// definition is the one running).
    #[serde(default)]
    pub conflict: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardView {
    pub node: String,
    pub node_id: NodeId,
    /// Half-open layer range `[start, end)`.
    pub layers: std::ops::Range<u32>,
    /// `CPU`/`MTL0` on the head, the worker's device on other nodes.
    pub device: String,
    /// The layers llama.cpp actually put on this shard's device, as the
    /// head's engine reported while loading (absent until it has loaded).
    pub loaded: Option<std::ops::Range<u32>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub name: String,
    pub id: NodeId,
    pub state: MemberState,
    pub addr: SocketAddr,
    pub addrs: Vec<SocketAddr>,
    pub role: crate::config::Role,
    pub version: String,
    pub memory_total: u64,
    pub memory_free: u64,
    pub memory_budget: u64,
    pub cores: u32,
    pub engines: Vec<String>,
    /// The node's tunnel port (0: none), on the host of `addr`.
    #[serde(default)]
    pub tunnel_port: u16,
    #[serde(default)]
    pub shard_device: String,
    #[serde(default)]
    pub models: Vec<String>,
    /// Milliseconds since this node last heard from it (0 for itself).
    pub last_seen_ms: u64,
    /// True for the node that produced the view.
    #[serde(rename = "self")]
    pub is_self: bool,
}

impl NodeView {
    pub fn new(info: &NodeInfo, state: MemberState, last_seen_ms: u64, is_self: bool) -> Self {
        Self {
            name: info.name.clone(),
            id: info.id.clone(),
            state,
            addr: info.addr,
            addrs: info.addrs.clone(),
            role: info.role,
            version: info.version.clone(),
            memory_total: info.memory_total,
            memory_free: info.memory_free,
            memory_budget: info.memory_budget,
            cores: info.cores,
            engines: info.engines.clone(),
            tunnel_port: info.tunnel_port,
            shard_device: info.shard_device.clone(),
            models: info.models.clone(),
            last_seen_ms,
            is_self,
        }
    }
}

impl ClusterView {
    /// The peers this view hears from, for gossip.
    pub fn peer_refs(&self) -> Vec<PeerRef> {
        self.nodes
            .iter()
            .filter(|n| !n.is_self && n.state == MemberState::Alive)
            .map(|n| PeerRef {
                id: n.id.clone(),
                addr: n.addr,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
