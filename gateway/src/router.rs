//! The live route table: model id → where it is served. One owner (the
//! deployer, `deploy/`) publishes a new immutable [`RouteTable`] whenever a
//! deployment appears, moves or goes down; handlers read the current one
//! with a lock-free load and never wait on the deployer. The table also
//! carries the routing policy (aliases, fallbacks; `routing.rs`), which
//! outlives every snapshot.

use crate::routing::RoutingPolicy;
use crate::scheduler::Admission;
use crate::upstream::Upstream;
use arc_swap::ArcSwap;
use herd_cluster::client::PeerClient;
use herd_cluster::NodeId;
use herd_engines::Engine;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// A deployment whose engine runs on this node (its head is here).
pub struct Deployment {
    pub id: String,
    pub engine: Arc<dyn Engine>,
    pub admission: Admission,
    pub max_tokens_limit: u32,
    /// Most choices (`n`) one request may ask for.
    pub max_n: u32,
    pub created: u64,
}

/// A deployment headed by another node: requests are forwarded there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRoute {
    pub head: NodeId,
    pub head_name: String,
    pub addr: SocketAddr,
}

pub enum Route {
    Local(Arc<Deployment>),
    /// Another OpenAI-compatible server; every node sends requests there directly.
    Upstream(Arc<Upstream>),
    Remote(RemoteRoute),
    /// Known to the cluster but not served right now (loading, refused, no plan yet).
    Down(String),
}

/// One immutable snapshot.
#[derive(Default)]
pub struct RouteTable {
    routes: BTreeMap<String, (Route, u64)>,
    pub(crate) policy: Arc<RoutingPolicy>,
    /// How this node reaches the heads of remote routes (in a cluster).
    pub(crate) peers: Option<PeerClient>,
}

impl RouteTable {
    /// An empty table that routes by `policy`.
    pub fn with_policy(policy: Arc<RoutingPolicy>) -> Self {
        Self {
            routes: BTreeMap::new(),
            policy,
            peers: None,
        }
    }

    /// The cluster client requests to remote heads go through.
    pub fn set_peers(&mut self, peers: Option<PeerClient>) {
        self.peers = peers;
    }

    /// `created` is the Unix time the deployment was first seen (for `/v1/models`).
    pub fn insert(&mut self, id: String, route: Route, created: u64) {
        self.routes.insert(id, (route, created));
    }

    pub fn get(&self, model: &str) -> Option<&Route> {
        self.routes.get(model).map(|(r, _)| r)
    }

    /// Every deployment id with its creation time.
    pub fn ids(&self) -> impl Iterator<Item = (&String, u64)> {
        self.routes.iter().map(|(id, (_, c))| (id, *c))
    }

    /// Every name clients may use: deployment ids, then aliases.
    pub fn names(&self) -> impl Iterator<Item = (&str, u64)> {
        self.ids()
            .map(|(id, c)| (id.as_str(), c))
            .chain(self.policy.aliases())
    }

    pub fn local(&self) -> impl Iterator<Item = &Arc<Deployment>> {
        self.routes.values().filter_map(|(r, _)| match r {
            Route::Local(d) => Some(d),
            _ => None,
        })
    }

    pub fn upstreams(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.routes.values().filter_map(|(r, _)| match r {
            Route::Upstream(u) => Some(u),
            _ => None,
        })
    }
}

/// The handle everyone holds. Cheap to clone.
#[derive(Clone, Default)]
pub struct Router {
    table: Arc<ArcSwap<RouteTable>>,
}

impl Router {
    /// A router serving exactly these local deployments (tests, fixed setups).
    pub fn new(deployments: Vec<Deployment>) -> Self {
        let mut table = RouteTable::default();
        for d in deployments {
            let created = d.created;
            table.insert(d.id.clone(), Route::Local(Arc::new(d)), created);
        }
        let router = Self::default();
        router.publish(table);
        router
    }

    pub fn publish(&self, table: RouteTable) {
        self.table.store(Arc::new(table));
    }

    pub fn current(&self) -> Arc<RouteTable> {
        self.table.load_full()
    }

    /// The deployments whose engines run here.
    pub fn all(&self) -> Vec<Arc<Deployment>> {
        self.current().local().cloned().collect()
    }
}
