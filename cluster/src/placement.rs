//! Placement of deployments on nodes: a pure function of (specs, alive nodes,
//! current placement) → placement, so every rule is testable without a cluster.
//!
//! # Memory model
//! A node holding layers `[s, e)` of a deployment needs
//! `sum(layer_bytes[s..e]) + kv_bytes_per_token_per_layer × slots × ctx_size × (e − s)`
//! plus a compute buffer. The head also holds `other_bytes` (token embeddings
//! and the output layer stay on the head) and its compute buffer is
//! 64 MiB + n_vocab × 4 × 512 (the logits of a full 512-token batch); any
//! other shard's is 32 MiB + n_embd × 4 × 512 × 8 (activations of a batch).
//! [`shard_bytes`] is this model; a node's total across deployments must stay
//! within its budget.
//!
//! # Rules
//! - Stability first: a deployment placed in `current` whose spec (model,
//!   layer count, node wish) is unchanged and whose nodes are all alive and
//!   still fit is kept exactly. Kept ones reserve memory first; the others are
//!   then placed in spec order against what is left. A node joining, or an
//!   unrelated deployment changing, never moves a healthy deployment.
//! - `Pinned(names)` uses exactly those nodes, the first as head. `Count(k)`
//!   takes the k nodes with the most memory left (ties by id), head first.
//! - Layers are split into contiguous ranges in node order, in proportion to
//!   each node's memory left after its fixed costs; every node gets a layer.
//! - A deployment that does not fit is refused with every short node named;
//!   a refused deployment uses no memory. A repeated id is ignored (the map is
//!   keyed by id, so the first spec with an id is the only one placed).

#[cfg(test)]
mod proptests;
mod split;
#[cfg(test)]
mod tests;

use crate::gguf::ModelFacts;
use crate::node::NodeId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

pub use split::shard_bytes;

/// Which nodes a deployment wants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeWant {
    /// Any `k` nodes; the placer picks those with the most memory left.
    Count(u32),
    /// Exactly these node names, in this order; the first is the head.
    Pinned(Vec<String>),
}

impl Default for NodeWant {
    fn default() -> Self {
        Self::Count(1)
    }
}

/// One deployment to place: a model, where it wants to run and what it costs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentSpec {
    pub id: String,
    /// The model file (a name in each node's model store).
    pub model: String,
    pub want: NodeWant,
    /// Concurrent sequences; each gets its own `ctx_size` of KV cache.
    pub slots: u32,
    pub ctx_size: u32,
    pub facts: ModelFacts,
}

/// An alive node and the memory it offers to deployments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCap {
    pub id: NodeId,
    pub name: String,
    pub budget: u64,
}

/// The layers `[start, end)` of one deployment on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub node: NodeId,
    pub name: String,
    pub layers: Range<u32>,
    /// [`shard_bytes`] of this shard.
    pub bytes: u64,
}

/// Where a placed deployment runs. `shards[0]` is on the head; the ranges are
/// contiguous, non-empty, and cover `[0, n_layers)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// The model it was placed for: a new model under the same id is re-placed.
    pub model: String,
    pub head: NodeId,
    pub shards: Vec<Shard>,
}

/// A node that lacks memory for its part of a refused deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeShortfall {
    pub node: String,
    pub needed: u64,
    pub offered: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Placed(Assignment),
    Refused {
        reason: String,
        shortfall: Vec<NodeShortfall>,
    },
}

/// Every deployment's decision, by deployment id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub deployments: BTreeMap<String, Decision>,
}

/// Places `specs` on the alive `nodes` (oldest first), keeping what `current`
/// placed wherever it is still valid.
pub fn place(specs: &[DeploymentSpec], nodes: &[NodeCap], current: &Placement) -> Placement {
    // One pass tries refused deployments before later ones take memory, so a
    // second pass (which reserves every kept one first) could word a refusal
    // differently or place it on other nodes. Repeating until nothing changes
    // makes the result its own fixed point: placing again changes nothing.
    // Each pass keeps everything the previous one placed, so the placed set
    // only grows and a fixed point comes within `specs.len() + 1` passes.
    let mut placement = place_once(specs, nodes, current);
    for _ in 0..=specs.len() {
        let next = place_once(specs, nodes, &placement);
        if next == placement {
            break;
        }
        placement = next;
    }
    placement
}

fn place_once(specs: &[DeploymentSpec], nodes: &[NodeCap], current: &Placement) -> Placement {
    let mut cluster = Cluster::new(nodes);
    let mut seen = BTreeSet::new();
    let unique: Vec<&DeploymentSpec> = specs
        .iter()
        .filter(|s| seen.insert(s.id.as_str()))
        .collect();

    let mut deployments = BTreeMap::new();
    let mut fresh = Vec::new();
    for spec in unique {
        let kept = match current.deployments.get(&spec.id) {
            Some(Decision::Placed(old)) => cluster.keep(spec, old),
            _ => None,
        };
        match kept {
            Some(assignment) => {
                deployments.insert(spec.id.clone(), Decision::Placed(assignment));
            }
            None => fresh.push(spec),
        }
    }
    for spec in fresh {
        deployments.insert(spec.id.clone(), cluster.place_fresh(spec));
    }
    Placement { deployments }
}

/// The alive nodes and the memory each has left in this pass.
struct Cluster<'a> {
    nodes: Vec<&'a NodeCap>,
    remaining: BTreeMap<&'a NodeId, u64>,
}

impl<'a> Cluster<'a> {
    fn new(nodes: &'a [NodeCap]) -> Self {
        let mut remaining = BTreeMap::new();
        // A node listed twice counts once (the first, oldest entry).
        let nodes = nodes
            .iter()
            .filter(|n| remaining.insert(&n.id, n.budget).is_none())
            .collect();
        Self { nodes, remaining }
    }

    fn left(&self, id: &NodeId) -> u64 {
        self.remaining.get(id).copied().unwrap_or(0)
    }

    fn node(&self, id: &NodeId) -> Option<&'a NodeCap> {
        self.nodes.iter().copied().find(|n| &n.id == id)
    }

    fn reserve(&mut self, shards: &[Shard]) {
        for shard in shards {
            if let Some(left) = self.remaining.get_mut(&shard.node) {
                *left = left.saturating_sub(shard.bytes);
            }
        }
    }

    /// `old` again, with bytes recomputed for `spec`, if it is still valid.
    fn keep(&mut self, spec: &DeploymentSpec, old: &Assignment) -> Option<Assignment> {
        if old.model != spec.model || check_facts(&spec.facts).is_err() {
            return None;
        }
        let nodes: Vec<&NodeCap> = old
            .shards
            .iter()
            .map(|s| self.node(&s.node))
            .collect::<Option<_>>()?;
        let ranges: Vec<Range<u32>> = old.shards.iter().map(|s| s.layers.clone()).collect();
        let wanted = match &spec.want {
            NodeWant::Count(k) => nodes.len() == *k as usize,
            NodeWant::Pinned(names) => nodes.iter().map(|n| &n.name).eq(names.iter()),
        };
        let shape_ok = old.shards.first().map(|s| &s.node) == Some(&old.head)
            && distinct(&nodes)
            && covers(&ranges, spec.facts.n_layers);
        if !wanted || !shape_ok {
            return None;
        }
        let shards = shards_for(spec, &nodes, ranges);
        if shards.iter().any(|s| s.bytes > self.left(&s.node)) {
            return None;
        }
        self.reserve(&shards);
        Some(Assignment {
            model: spec.model.clone(),
            head: old.head.clone(),
            shards,
        })
    }

    fn place_fresh(&mut self, spec: &DeploymentSpec) -> Decision {
        let refuse = |reason: String| Decision::Refused {
            reason,
            shortfall: Vec::new(),
        };
        if let Err(reason) = check_facts(&spec.facts) {
            return refuse(reason);
        }
        let nodes = match self.choose(&spec.want) {
            Ok(nodes) => nodes,
            Err(reason) => return refuse(reason),
        };
        let Some(head) = nodes.first().map(|n| n.id.clone()) else {
            return refuse("no nodes were chosen".into());
        };
        let n_layers = spec.facts.n_layers;
        if nodes.len() > n_layers as usize {
            return refuse(format!(
                "wants {} nodes but the model has {n_layers} layers (each node needs at least one)",
                nodes.len()
            ));
        }
        let avail: Vec<u64> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let fixed = shard_bytes(spec, 0..0, i == 0);
                self.left(&n.id).saturating_sub(fixed)
            })
            .collect();
        let shards = shards_for(spec, &nodes, split::split(spec, &avail));
        let shortfall: Vec<NodeShortfall> = shards
            .iter()
            .filter(|s| s.bytes > self.left(&s.node))
            .map(|s| NodeShortfall {
                node: s.name.clone(),
                needed: s.bytes,
                offered: self.left(&s.node),
            })
            .collect();
        if !shortfall.is_empty() {
            let short: Vec<String> = shortfall
                .iter()
                .map(|s| {
                    format!(
                        "{} needs {}, offers {}",
                        s.node,
                        split::human(s.needed),
                        split::human(s.offered)
                    )
                })
                .collect();
            return Decision::Refused {
                reason: format!("does not fit: {}", short.join("; ")),
                shortfall,
            };
        }
        self.reserve(&shards);
        Decision::Placed(Assignment {
            model: spec.model.clone(),
            head,
            shards,
        })
    }

    /// The nodes a deployment gets, head first.
    fn choose(&self, want: &NodeWant) -> Result<Vec<&'a NodeCap>, String> {
        match want {
            NodeWant::Pinned(names) => {
                if names.is_empty() {
                    return Err("pinned to an empty list of nodes".into());
                }
                let mut chosen: Vec<&NodeCap> = Vec::with_capacity(names.len());
                for name in names {
                    // Names are not unique ids; the oldest node with the name wins.
                    let node = self
                        .nodes
                        .iter()
                        .copied()
                        .find(|n| &n.name == name)
                        .ok_or_else(|| {
                            format!("pinned node {name} is not in the cluster (or not alive)")
                        })?;
                    if chosen.iter().any(|c| c.id == node.id) {
                        return Err(format!("pinned node {name} is listed twice"));
                    }
                    chosen.push(node);
                }
                Ok(chosen)
            }
            NodeWant::Count(0) => Err("wants 0 nodes (at least 1 is needed)".into()),
            NodeWant::Count(k) => {
                let k = *k as usize;
                if self.nodes.len() < k {
                    return Err(format!(
                        "wants {k} nodes but only {} {} alive",
                        self.nodes.len(),
                        if self.nodes.len() == 1 { "is" } else { "are" }
                    ));
                }
                let mut by_room = self.nodes.clone();
                by_room.sort_by(|a, b| {
                    self.left(&b.id)
                        .cmp(&self.left(&a.id))
                        .then_with(|| a.id.cmp(&b.id))
                });
                by_room.truncate(k);
                Ok(by_room)
            }
        }
    }
}

/// Why a spec's facts cannot be placed at all, if they cannot.
fn check_facts(facts: &ModelFacts) -> Result<(), String> {
    if facts.n_layers == 0 {
        return Err(format!("model ({}) has no layers", facts.arch));
    }
    if facts.layer_bytes.len() != facts.n_layers as usize {
        return Err(format!(
            "model facts list {} layer sizes for {} layers",
            facts.layer_bytes.len(),
            facts.n_layers
        ));
    }
    Ok(())
}

fn shards_for(spec: &DeploymentSpec, nodes: &[&NodeCap], ranges: Vec<Range<u32>>) -> Vec<Shard> {
    nodes
        .iter()
        .zip(ranges)
        .enumerate()
        .map(|(i, (node, layers))| Shard {
            node: node.id.clone(),
            name: node.name.clone(),
            bytes: shard_bytes(spec, layers.clone(), i == 0),
            layers,
        })
        .collect()
}

fn distinct(nodes: &[&NodeCap]) -> bool {
    let ids: BTreeSet<&NodeId> = nodes.iter().map(|n| &n.id).collect();
    ids.len() == nodes.len()
}

/// Whether `ranges` are non-empty and tile `[0, n_layers)` in order.
fn covers(ranges: &[Range<u32>], n_layers: u32) -> bool {
    let mut next = 0;
    for r in ranges {
        if r.start != next || r.end <= r.start {
            return false;
        }
        next = r.end;
    }
    !ranges.is_empty() && next == n_layers
}
