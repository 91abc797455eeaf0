//! The deployer actor: one task per node that owns the plan in force, the
//! engines this node heads and the shard workers it hosts. Every tick it
//! (1) on the leader, re-decides the placement and sends the plan to every
//! node, (2) makes local processes match the plan, (3) publishes the route
//! table and the views.

use super::local::Local;
use super::plan::{decide, leader, merge_specs, Plan, PLAN_PATH};
use super::{DeploySettings, WorkerAddrs};
use crate::metrics::Metrics;
use crate::router::Router;
use bytes::Bytes;
use herd_cluster::gguf::{read_facts, ModelFacts};
use herd_cluster::peer_api::LiveNode;
use herd_cluster::spec::DeploySpec;
use herd_cluster::{Agent, NodeId, VerifiedPeer};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const TICK: Duration = Duration::from_millis(250);
/// A header that could not be read is read again after this long, so a file
/// fixed in place (its permissions, a finished copy) is served without a restart.
const HEADER_RETRY: Duration = Duration::from_secs(5);
/// The leader resends the plan this often, so late joiners converge.
const RESEND: Duration = Duration::from_secs(1);

/// What reading one model file's header gave, and when.
struct HeaderRead {
    facts: Result<ModelFacts, String>,
    at: Instant,
}

pub struct Actor {
    settings: DeploySettings,
    agent: Agent,
    me: NodeId,
    /// Since when this node has seen itself as the leader, without a break.
    leading_since: Option<Instant>,
    plan: Option<Plan>,
    epoch: u64,
    last_sent: Option<Instant>,
    /// Facts read from GGUF headers in this node's store, by file name.
    facts: BTreeMap<String, HeaderRead>,
    local: Local,
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
        workers: WorkerAddrs,
    ) -> Self {
        let me = agent.node_id().clone();
        let local = Local::new(&settings, agent.clone(), router, metrics, workers);
        Self {
            settings,
            me,
            agent,
            leading_since: None,
            plan: None,
            epoch: 0,
            last_sent: None,
            facts: BTreeMap::new(),
            local,
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
            let mine = self.own_specs();
            self.lead(&nodes, &mine);
            if let Some(plan) = &self.plan {
                self.local.reconcile(plan, &nodes);
            }
            let specs = self.plan.as_ref().map_or(&mine, |p| &p.specs);
            self.local.reconcile_upstreams(specs);
            let views = self.local.publish(self.plan.as_ref(), &nodes, &mine);
            self.agent.set_deployments(views);
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
    fn lead(&mut self, nodes: &[LiveNode], mine: &[DeploySpec]) {
        let Some(lead) = leader(nodes) else { return };
        if lead.info.id != self.me {
            self.leading_since = None;
            return;
        }
        // Lead only after seeing ourselves as leader for a while: a node just
        // started, or just woken from SIGSTOP with a stale view, first hears
        // the older nodes instead of deciding a plan alone.
        let since = *self.leading_since.get_or_insert_with(Instant::now);
        if self.agent.is_clustered() && since.elapsed() < self.settings.settle {
            return;
        }
        let (mut specs, conflicts) = merge_specs(&self.me, mine, nodes);
        // What no live node can tell (a file only a departed node had) is
        // kept from the plan in force, so a failover does not lose it.
        if let Some(plan) = &self.plan {
            for spec in &mut specs {
                if let Some(old) = plan.spec(&spec.id).filter(|o| o.model == spec.model) {
                    if spec.facts.is_none() {
                        spec.facts.clone_from(&old.facts);
                    }
                    if spec.sha256.is_none() {
                        spec.sha256.clone_from(&old.sha256);
                    }
                }
            }
        }
        let current = self
            .plan
            .as_ref()
            .map(|p| p.placement.clone())
            .unwrap_or_default();
        let placement = decide(&specs, nodes, &current);
        let changed = self.plan.as_ref().is_none_or(|p| {
            p.leader != self.me
                || p.placement != placement
                || p.specs != specs
                || p.conflicts != conflicts
        });
        if changed {
            self.epoch += 1;
            let me = &lead.info;
            for (id, why) in &conflicts {
                tracing::warn!(deployment = %id, "{why}");
            }
            let plan = Plan {
                leader: self.me.clone(),
                leader_name: me.name.clone(),
                leader_started_ms: me.started_at_ms,
                epoch: self.epoch,
                specs,
                placement,
                conflicts,
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

    /// This node's own specs, with what its store tells: the facts from
    /// each file's header, and its sha256 once hashed (in the background:
    /// a large file takes minutes).
    fn own_specs(&mut self) -> Vec<DeploySpec> {
        let mut specs = self.settings.specs.clone();
        for spec in specs.iter_mut().filter(|s| s.upstream.is_none()) {
            let Some(path) = spec
                .path
                .clone()
                .filter(|p| p.is_file())
                .or_else(|| self.settings.store.path(&spec.model))
            else {
                continue;
            };
            let known = self.facts.get(&spec.model);
            if known.is_none_or(|r| r.facts.is_err() && r.at.elapsed() >= HEADER_RETRY) {
                let facts = read_facts(&path).map_err(|e| e.to_string());
                if let Err(e) = &facts {
                    // Once per distinct problem, not once per retry.
                    if known.is_none_or(|r| r.facts.as_ref().err() != Some(e)) {
                        tracing::warn!(model = %spec.model, "cannot read the model's header: {e}");
                    }
                }
                let read = HeaderRead {
                    facts,
                    at: Instant::now(),
                };
                self.facts.insert(spec.model.clone(), read);
            }
            match self.facts.get(&spec.model).map(|r| &r.facts) {
                Some(Ok(facts)) => spec.facts = Some(facts.clone()),
                Some(Err(why)) => spec.facts_error = Some(why.clone()),
                None => {}
            }
            if self.hashing.insert(spec.model.clone()) {
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
            spec.sha256 = self
                .checksums
                .lock()
                .ok()
                .and_then(|s| s.get(&spec.model).cloned());
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
