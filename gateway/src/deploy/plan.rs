//! The cluster-wide plan: which deployments exist and where each runs.
//! Exactly one node decides it at a time, the leader: the oldest live node
//! (earliest start, then smallest id). Every node accepts a plan only from
//! the node it believes is the leader, so while views disagree no second
//! head is started for a deployment.
//!
//! Which deployments exist: every live node advertises its own `[[models]]`;
//! the cluster runs the union. Two nodes that define one id differently
//! disagree: the oldest node's definition wins, and the plan says so.

use herd_cluster::peer_api::LiveNode;
use herd_cluster::placement::{self, NodeCap, Placement};
use herd_cluster::spec::{DeploySpec, KeyRef, UpstreamSpec, Wanted};
use herd_cluster::NodeId;
use herd_config::{KeySource, NodesWanted, ValidModel, ValidUpstream};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where the leader sends plans.
pub const PLAN_PATH: &str = "/_herd/v1/plan";

/// A `[[models]]` entry of this node's config, as the cluster runs it.
pub fn spec_from_config(m: &ValidModel) -> DeploySpec {
    DeploySpec {
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
        max_n: m.max_n,
        progress_timeout_ms: u64::try_from(m.progress_timeout.as_millis()).unwrap_or(u64::MAX),
        mmap: m.mmap,
        cpu_repack: m.cpu_repack,
        embeddings: m.embeddings,
        facts: None,
        facts_error: None,
        sha256: None,
        upstream: None,
    }
}

/// An upstream entry of this node's config: not placed, served by every node.
pub fn spec_from_upstream(u: &ValidUpstream) -> DeploySpec {
    let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    DeploySpec {
        id: u.id.clone(),
        model: u.upstream_model.clone(),
        path: None,
        nodes: Wanted::Count(0),
        threads: 0,
        slots: u.max_concurrency,
        ctx_size: 0,
        max_queue: u.max_queue,
        max_queue_wait_ms: ms(u.max_queue_wait),
        max_tokens_limit: u.max_tokens_limit.unwrap_or(0),
        max_n: 1,
        progress_timeout_ms: ms(u.timeouts.idle),
        mmap: false,
        cpu_repack: false,
        embeddings: false,
        facts: None,
        facts_error: None,
        sha256: None,
        upstream: Some(UpstreamSpec {
            base_url: u.base_url.clone(),
            api_key: u.api_key.as_ref().map(|k| match k {
                KeySource::Env(v) => KeyRef::Env(v.clone()),
                KeySource::File(p) => KeyRef::File(p.clone()),
            }),
            headers: u.headers.clone(),
            connect_timeout_ms: ms(u.timeouts.connect),
            first_byte_timeout_ms: ms(u.timeouts.first_byte),
            idle_timeout_ms: ms(u.timeouts.idle),
            total_timeout_ms: ms(u.timeouts.total),
            retries: u.retries,
            probe_path: u.health.probe_path.clone(),
            probe_interval_ms: ms(u.health.probe_interval),
            failure_threshold: u.health.failure_threshold,
            cooldown_ms: ms(u.health.cooldown),
            max_tokens_limit: u.max_tokens_limit,
        }),
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
    /// Deployment id → how nodes disagree about its definition.
    #[serde(default)]
    pub conflicts: BTreeMap<String, String>,
}

impl Plan {
    pub fn spec(&self, id: &str) -> Option<&DeploySpec> {
        self.specs.iter().find(|s| s.id == id)
    }

    /// Whether `other` comes from another leader run or is newer.
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

/// The union of every live node's specs (`mine` for this node, whose
/// advertised ones may lag), oldest node first: the first definition of an
/// id wins; a different one later is a conflict, named in the result.
pub fn merge_specs(
    me: &NodeId,
    mine: &[DeploySpec],
    nodes: &[LiveNode],
) -> (Vec<DeploySpec>, BTreeMap<String, String>) {
    let mut order: Vec<&LiveNode> = nodes.iter().collect();
    order.sort_by(|a, b| {
        (a.info.started_at_ms, &a.info.id).cmp(&(b.info.started_at_ms, &b.info.id))
    });
    let mut merged: Vec<(DeploySpec, String)> = Vec::new();
    let mut conflicts = BTreeMap::new();
    for node in order {
        let specs = if &node.info.id == me {
            mine
        } else {
            &node.info.specs
        };
        for spec in specs {
            match merged.iter_mut().find(|(s, _)| s.id == spec.id) {
                None => merged.push((spec.clone(), node.info.name.clone())),
                Some((kept, from)) => {
                    if kept.runtime() != spec.runtime() || kept.model != spec.model {
                        conflicts.entry(spec.id.clone()).or_insert_with(|| {
                            format!(
                                "{} defines `{}` differently from {}; {}'s definition is used",
                                node.info.name, spec.id, from, from
                            )
                        });
                    } else {
                        // Same deployment: learn what the first one lacked.
                        if kept.facts.is_none() {
                            kept.facts.clone_from(&spec.facts);
                        }
                        if kept.facts_error.is_none() {
                            kept.facts_error.clone_from(&spec.facts_error);
                        }
                        if kept.sha256.is_none() {
                            kept.sha256.clone_from(&spec.sha256);
                        }
                    }
                }
            }
        }
    }
    (merged.into_iter().map(|(s, _)| s).collect(), conflicts)
}

/// Places the specs whose facts are known on the live nodes, keeping what
/// `current` already placed wherever it still fits. Specs without facts
/// are refused with the reason; upstreams are not placed at all.
pub fn decide(specs: &[DeploySpec], nodes: &[LiveNode], current: &Placement) -> Placement {
    let caps: Vec<NodeCap> = nodes
        .iter()
        .map(|n| NodeCap {
            id: n.info.id.clone(),
            name: n.info.name.clone(),
            budget: n.info.memory_budget,
        })
        .collect();
    let known: Vec<_> = specs
        .iter()
        .filter_map(DeploySpec::placement_spec)
        .collect();
    let mut placement = placement::place(&known, &caps, current);
    for s in specs
        .iter()
        .filter(|s| s.facts.is_none() && s.upstream.is_none())
    {
        placement.deployments.insert(
            s.id.clone(),
            placement::Decision::Refused {
                reason: match &s.facts_error {
                    Some(why) => format!("the model file {:?} cannot be used: {why}", s.model),
                    None => format!(
                        "no live node has the model file {:?} to read its header from",
                        s.model
                    ),
                },
                shortfall: Vec::new(),
            },
        );
    }
    placement
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_cluster::node::NodeInfo;
    use herd_cluster::{MemberState, Role};

    fn node(name: &str, started: u64, specs: Vec<DeploySpec>) -> LiveNode {
        let addr = std::net::SocketAddr::from(([10, 0, 0, 1], 8080));
        LiveNode {
            info: NodeInfo {
                id: NodeId(format!("{name:0>32}")),
                name: name.into(),
                role: Role::Node,
                version: "0.1.0".into(),
                addr,
                addrs: vec![addr],
                memory_total: 16 << 30,
                memory_free: 8 << 30,
                memory_budget: 12 << 30,
                cores: 8,
                engines: vec![],
                started_at_ms: started,
                tunnel_port: 1,
                shard_device: "CPU".into(),
                models: vec![],
                heads: vec![],
                specs,
            },
            state: MemberState::Alive,
            contact: addr,
        }
    }

    fn spec(id: &str, slots: u32) -> DeploySpec {
        DeploySpec {
            id: id.into(),
            model: format!("{id}.gguf"),
            path: None,
            nodes: Wanted::Count(1),
            threads: 1,
            slots,
            ctx_size: 512,
            max_queue: 8,
            max_queue_wait_ms: 1000,
            max_tokens_limit: 512,
            max_n: 8,
            progress_timeout_ms: 1000,
            mmap: false,
            cpu_repack: true,
            embeddings: false,
            facts: None,
            facts_error: None,
            sha256: None,
            upstream: None,
        }
    }

    #[test]
    fn the_oldest_node_leads() {
        let nodes = [
            node("b", 5, vec![]),
            node("a", 7, vec![]),
            node("c", 5, vec![]),
        ];
        assert_eq!(leader(&nodes).map(|n| n.info.name.as_str()), Some("b"));
    }

    #[test]
    fn specs_are_the_union_and_the_oldest_definition_wins() {
        let mut with_sum = spec("shared", 4);
        with_sum.sha256 = Some("abc".into());
        let nodes = [
            node(
                "young",
                9,
                vec![spec("mine-only", 1), spec("clash", 8), with_sum],
            ),
            node("old", 1, vec![spec("clash", 2), spec("shared", 4)]),
            node("blank", 5, vec![]),
        ];
        let me = NodeId(format!("{:0>32}", "blank"));
        let (specs, conflicts) = merge_specs(&me, &[], &nodes);
        let ids: Vec<&str> = specs.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["clash", "shared", "mine-only"]);
        assert_eq!(specs[0].slots, 2, "the oldest node's definition is used");
        assert_eq!(
            specs[1].sha256.as_deref(),
            Some("abc"),
            "what the first lacked is learned"
        );
        assert_eq!(conflicts.len(), 1);
        assert!(conflicts["clash"].contains("young defines `clash` differently from old"));
    }

    #[test]
    fn a_file_whose_header_cannot_be_read_is_refused_with_the_reason() {
        let mut broken = spec("broken", 1);
        broken.facts_error = Some("the file ends in the middle of the header".into());
        let placement = decide(&[broken, spec("absent", 1)], &[], &Placement::default());
        let reason = |id: &str| match placement.deployments.get(id) {
            Some(placement::Decision::Refused { reason, .. }) => reason.clone(),
            other => format!("not refused: {other:?}"),
        };
        assert_eq!(
            reason("broken"),
            "the model file \"broken.gguf\" cannot be used: the file ends in the middle of the header"
        );
        assert!(reason("absent").starts_with("no live node has the model file"));
    }
}
