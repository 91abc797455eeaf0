//! The deployment layer, between config/cluster/engines and HTTP. One actor
//! per node ([`actor`]) watches the membership; on the leader it decides the
//! cluster's placement ([`plan`]) and sends it to every node; on every node
//! it starts and stops what the plan gives this node (engines it heads,
//! shard workers it hosts: [`local`]) and publishes the route table the
//! handlers read ([`crate::router`]). Requests for deployments headed
//! elsewhere are forwarded there ([`forward`]).

mod actor;
pub mod copy;
pub mod forward;
mod forward_relay;
mod local;
pub mod plan;
mod upstreams;
mod views;

use crate::metrics::Metrics;
use crate::router::Router;
use arc_swap::ArcSwap;
use herd_cluster::spec::DeploySpec;
use herd_cluster::store::ModelStore;
use herd_cluster::{Agent, VerifiedPeer};
use plan::Plan;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

pub struct DeploySettings {
    /// The `herd` executable (engine hosts and shard workers are children).
    pub exe: PathBuf,
    pub store: ModelStore,
    /// This node's `[[models]]`; the leader's list is the cluster's.
    pub specs: Vec<DeploySpec>,
    /// This node's aliases and fallbacks.
    pub policy: Arc<crate::routing::RoutingPolicy>,
    /// Threads for a shard worker here.
    pub worker_threads: u32,
    /// How long a node must see itself as the leader before it decides (so a
    /// node joining a cluster, or waking with a stale view, adopts the
    /// cluster's plan instead of deciding one alone).
    pub settle: Duration,
}

/// Shard workers running here, by deployment id: what the tunnel serves.
pub type WorkerAddrs = Arc<ArcSwap<BTreeMap<String, SocketAddr>>>;

/// The handle: receives plans from the HTTP side, tells the tunnel where
/// this node's shard workers listen.
#[derive(Clone)]
pub struct Deployer {
    plans: mpsc::Sender<(Plan, VerifiedPeer)>,
    workers: WorkerAddrs,
}

impl Deployer {
    pub fn start(
        settings: DeploySettings,
        agent: Agent,
        router: Router,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (plans, rx) = mpsc::channel(64);
        // Until the first plan, this node's own deployments are known but down:
        // a 503 and an unhealthy /health, never a 404 or a vacuous 200.
        let mut table = crate::router::RouteTable::with_policy(settings.policy.clone());
        let now = crate::openai::response::unix_now();
        for spec in &settings.specs {
            let why = "the deployment is waiting for the cluster's placement".to_string();
            table.insert(spec.id.clone(), crate::router::Route::Down(why), now);
        }
        router.publish(table);
        let workers: WorkerAddrs = Arc::default();
        let actor = actor::Actor::new(settings, agent, router, metrics, workers.clone());
        tokio::spawn(actor.run(rx));
        Self { plans, workers }
    }

    /// A plan from a peer (already authenticated); dropped if the actor is busy
    /// (the leader resends every second).
    pub fn offer(&self, plan: Plan, from: VerifiedPeer) {
        let _ = self.plans.try_send((plan, from));
    }

    /// The loopback address of this node's shard worker for a deployment.
    pub fn worker(&self, deployment: &str) -> Option<SocketAddr> {
        self.workers.load().get(deployment).copied()
    }
}
