//! The deployer actor: one task per node that owns the plan in force, the
//! engines this node heads and the shard workers it hosts. Every tick it
//! (1) on the leader, re-decides the placement and sends the plan to every
//! node, (2) makes local processes match the plan, (3) publishes the route
//! table and the views.

use super::local::Local;
use super::plan::{decide, leader, DeploySpec, Plan, PLAN_PATH};
use super::{DeploySettings, WorkerAddrs};
use crate::metrics::Metrics;
use crate::router::Router;
use arc_swap::ArcSwap;
use bytes::Bytes;
use herd_cluster::gguf::{read_facts, ModelFacts};
use herd_cluster::peer_api::LiveNode;
use herd_cluster::{Agent, DeploymentView, NodeId, VerifiedPeer};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const TICK: Duration = Duration::from_millis(250);
/// The leader resends the plan this often, so late joiners converge.
const RESEND: Duration = Duration::from_secs(1);

pub struct Actor {
    settings: DeploySettings,
    agent: Agent,
    me: NodeId,
    started: Instant,
    plan: Option<Plan>,
    epoch: u64,
    last_sent: Option<Instant>,
    /// Facts read from GGUF headers in this node's store, by file name.
    facts: BTreeMap<String, Option<ModelFacts>>,
    local: Local,
    views: Arc<ArcSwap<Vec<DeploymentView>>>,
    /// Peers a plan is being sent to right now (one send in flight each).
    sending: Arc<Mutex<HashSet<NodeId>>>,
    /// sha256 of the model files in this node's store, computed in the
    /// background (a large file takes minutes), by file name.
    checksums: Arc<Mutex<BTreeMap<String, String>>>,
    hashing: HashSet<String>,
}

impl Actor {
    pub fn new(
        settings: DeploySettings,
        agent: Agent,
        router: Router,
        metrics: Arc<Metrics>,
        views: Arc<ArcSwap<Vec<DeploymentView>>>,
        workers: WorkerAddrs,
    ) -> Self {
        let me = agent.node_id().clone();
        let local = Local::new(&settings, agent.clone(), router, metrics, workers);
        Self {
            settings,
            me,
            agent,
            started: Instant::now(),
            plan: None,
            epoch: 0,
            last_sent: None,
            facts: BTreeMap::new(),
            local,
            views,
            sending: Arc::default(),
            checksums: Arc::default(),
            hashing: HashSet::new(),
        }
    }

    pub async fn run(mut self, mut plans: mpsc::Receiver<(Plan, VerifiedPeer)>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = plans.recv() => match msg {
                    Some((plan, from)) => self.receive(plan, &from.node),
                    None => return,
                },
                _ = tick.tick() => {}
            }
            let nodes = self.agent.live_nodes();
            self.lead(&nodes);
            if let Some(plan) = &self.plan {
                self.local.reconcile(plan, &nodes);
            }
            self.views.store(Arc::new(self.local.publish(
                self.plan.as_ref(),
                &nodes,
                &self.settings.specs,
            )));
        }
    }

    /// A plan from `from`: taken only if `from` is the leader in our view.
    fn receive(&mut self, plan: Plan, from: &NodeId) {
        let nodes = self.agent.live_nodes();
        let Some(lead) = leader(&nodes) else { return };
        if &lead.info.id != from || plan.leader != *from || lead.info.id == self.me {
            tracing::debug!(from = %from, leader = %lead.info.id, "ignored a plan from a node that is not our leader");
            return;
        }
        if self.plan.as_ref().is_none_or(|p| p.is_superseded_by(&plan)) {
            tracing::info!(leader = %plan.leader_name, epoch = plan.epoch, "placement plan received");
            self.plan = Some(plan);
        }
    }

    /// On the leader: decide, and send the plan to every other live node.
    fn lead(&mut self, nodes: &[LiveNode]) {
        let Some(lead) = leader(nodes) else { return };
        if lead.info.id != self.me {
            return;
        }
        if self.agent.is_clustered() && self.started.elapsed() < self.settings.settle {
            return;
        }
        let specs = self.specs_with_facts();
        let current = self
            .plan
            .as_ref()
            .map(|p| p.placement.clone())
            .unwrap_or_default();
        let placement = decide(&specs, nodes, &current);
        let checksums = self.checksums(&specs);
        let changed = self.plan.as_ref().is_none_or(|p| {
            p.leader != self.me
                || p.placement != placement
                || p.specs != specs
                || p.checksums != checksums
        });
        if changed {
            self.epoch += 1;
            let me = &lead.info;
            let plan = Plan {
                leader: self.me.clone(),
                leader_name: me.name.clone(),
                leader_started_ms: me.started_at_ms,
                epoch: self.epoch,
                specs,
                placement,
                checksums,
            };
            log_plan(&plan);
            self.plan = Some(plan);
        }
        let due = self.last_sent.is_none_or(|t| t.elapsed() >= RESEND);
        if changed || due {
            self.last_sent = Some(Instant::now());
            self.send(nodes);
        }
    }

    fn send(&self, nodes: &[LiveNode]) {
        let (Some(plan), Some(client)) = (&self.plan, self.agent.peer_client()) else {
            return;
        };
        let Ok(body) = serde_json::to_vec(plan) else {
            return;
        };
        let body = Bytes::from(body);
        for n in nodes.iter().filter(|n| n.info.id != self.me) {
            let id = n.info.id.clone();
            {
                let Ok(mut sending) = self.sending.lock() else {
                    return;
                };
                if !sending.insert(id.clone()) {
                    continue;
                }
            }
            let (client, body, sending, addr) = (
                client.clone(),
                body.clone(),
                self.sending.clone(),
                n.contact,
            );
            tokio::spawn(async move {
                let result = client
                    .call_peer(addr, &id, reqwest::Method::POST, PLAN_PATH, body)
                    .await;
                if let Err(e) = result {
                    tracing::debug!(peer = %id, "plan not delivered: {e}");
                }
                if let Ok(mut s) = sending.lock() {
                    s.remove(&id);
                }
            });
        }
    }

    /// The checksums known so far of the specs' files; starts hashing the rest.
    fn checksums(&mut self, specs: &[DeploySpec]) -> BTreeMap<String, String> {
        for spec in specs {
            if self.hashing.contains(&spec.model) {
                continue;
            }
            let Some(path) = self
                .settings
                .store
                .path(&spec.model)
                .or_else(|| spec.path.clone().filter(|p| p.is_file()))
            else {
                continue;
            };
            self.hashing.insert(spec.model.clone());
            let (sums, name) = (self.checksums.clone(), spec.model.clone());
            tokio::task::spawn_blocking(move || match super::copy::sha256_file(&path) {
                Ok(sum) => {
                    if let Ok(mut s) = sums.lock() {
                        s.insert(name, sum);
                    }
                }
                Err(e) => tracing::warn!(model = %name, "cannot hash the model file: {e}"),
            });
        }
        let mut sums = self.checksums.lock().map(|s| s.clone()).unwrap_or_default();
        // Files this node lacks keep the checksum the plan in force has for them.
        if let Some(plan) = &self.plan {
            for (name, sum) in &plan.checksums {
                if specs.iter().any(|s| &s.model == name) {
                    sums.entry(name.clone()).or_insert_with(|| sum.clone());
                }
            }
        }
        sums
    }

    /// This node's specs, with facts read from the model store's files.
    fn specs_with_facts(&mut self) -> Vec<DeploySpec> {
        let mut specs = self.settings.specs.clone();
        for spec in &mut specs {
            let path = spec
                .path
                .clone()
                .filter(|p| p.is_file())
                .or_else(|| self.settings.store.path(&spec.model));
            let cached = self.facts.get(&spec.model).cloned().flatten();
            spec.facts = match (cached, path) {
                (Some(f), _) => Some(f),
                (None, Some(path)) => {
                    let facts = read_facts(&path)
                        .map_err(|e| tracing::warn!(model = %spec.model, "cannot read the model's header: {e}"))
                        .ok();
                    self.facts.insert(spec.model.clone(), facts.clone());
                    facts
                }
                // Not in this node's store: the facts the previous leader put
                // in the plan in force (a new leader after a failover).
                (None, None) => self
                    .plan
                    .as_ref()
                    .and_then(|p| p.spec(&spec.id))
                    .filter(|s| s.model == spec.model)
                    .and_then(|s| s.facts.clone()),
            };
        }
        specs
    }
}

fn log_plan(plan: &Plan) {
    for (id, d) in &plan.placement.deployments {
        match d {
            herd_cluster::placement::Decision::Placed(a) => {
                let shards: Vec<String> = a
                    .shards
                    .iter()
                    .map(|s| format!("{}[{}..{})", s.name, s.layers.start, s.layers.end))
                    .collect();
                tracing::info!(deployment = %id, epoch = plan.epoch, shards = %shards.join(" "), "placed");
            }
            herd_cluster::placement::Decision::Refused { reason, .. } => {
                tracing::warn!(deployment = %id, epoch = plan.epoch, "refused: {reason}");
            }
        }
    }
}
