//! The agent: one actor task owns the [`Membership`] (`agent/actor.rs`, its
//! heartbeats in `agent/heartbeat.rs`); [`Agent`] is the cheap handle
//! everyone else holds (HTTP handlers, `herd serve`, the deployment layer).

use crate::addrs::{advertised_addrs, resolve_peers};
use crate::auth::Verifier;
use crate::client::{CallError, PeerClient};
use crate::config::{validate_name, AgentConfig, ClusterError};
use crate::discovery::Discovery;
use crate::membership::{Change, Event, Membership, Target};
use crate::node::{self, NodeId, NodeInfo};
use crate::wire::{ClusterView, Gossip};
use crate::Credentials;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

mod actor;
mod heartbeat;

use actor::Actor;

/// What the actor is told besides membership events (which come on their own channel).
pub(crate) enum Command {
    Exchanged {
        target: Target,
        /// Boxed: a peer's description is large next to the other commands.
        outcome: Result<Box<Gossip>, CallError>,
    },
    Shutdown {
        announce: bool,
        done: oneshot::Sender<()>,
    },
    /// What the deployment layer tells peers about this node.
    SetLocal {
        models: Vec<String>,
        heads: Vec<crate::node::HeadStatus>,
        specs: Vec<crate::spec::DeploySpec>,
    },
}

/// A handle on the cluster agent. Clone it freely.
#[derive(Clone)]
pub struct Agent {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) cluster: String,
    pub(crate) me_id: NodeId,
    pub(crate) version: String,
    pub(crate) verifier: Option<Verifier>,
    pub(crate) client: Option<PeerClient>,
    pub(crate) tx: mpsc::Sender<Command>,
    /// Membership events from the HTTP handlers (heartbeats received).
    pub(crate) events: mpsc::Sender<Event>,
    pub(crate) snapshot: watch::Receiver<Arc<Membership>>,
    changes: broadcast::Sender<Change>,
    /// Per peer, when a refusal was last logged.
    pub(crate) warned: Mutex<HashMap<String, Instant>>,
    /// The cluster's deployments as this node knows them (set by the
    /// deployment layer), included in every view.
    pub(crate) deployments: Mutex<Vec<crate::wire::DeploymentView>>,
}

impl Agent {
    /// Starts the agent: loads (or creates) the node id, starts the actor,
    /// mDNS and the static peer resolver. Without a secret it is a lone node.
    pub async fn start(config: AgentConfig) -> Result<Self, ClusterError> {
        let timeouts = config.timeouts.validate()?;
        validate_name("cluster", &config.cluster)?;
        validate_name("node name", &config.node_name)?;
        if config.secret.is_none() && !config.peers.is_empty() {
            return Err(ClusterError::invalid(
                "peers",
                "need a cluster secret (--secret-file or [cluster] secret_file)",
            ));
        }
        let id = NodeId::load_or_create(&config.state_dir)?;
        let (addr, addrs) = advertised_addrs(config.advertise);
        let memory = node::memory();
        let budget = config
            .memory_budget
            .map_or(memory.total / 4 * 3, |b| b.resolve(memory.total));
        if budget > memory.total && memory.total > 0 {
            tracing::warn!(
                budget,
                total = memory.total,
                "memory_budget is more than this machine's memory"
            );
        }
        let me = NodeInfo {
            id: id.clone(),
            name: config.node_name.clone(),
            role: config.role,
            version: config.version.clone(),
            addr,
            addrs,
            memory_total: memory.total,
            memory_free: memory.free,
            memory_budget: budget,
            cores: node::cores(),
            engines: node::engines(),
            started_at_ms: crate::auth::unix_ms(),
            tunnel_port: config.tunnel_port,
            shard_device: config.shard_device.clone(),
            models: config.models.clone(),
            heads: Vec::new(),
            specs: Vec::new(),
        };
        let creds = config
            .secret
            .clone()
            .map(|s| Credentials::new(s, config.cluster.clone()));
        let client = match &creds {
            Some(c) => Some(PeerClient::new(
                c.clone(),
                id.0.clone(),
                config.version.clone(),
                timeouts.request_timeout(),
            )?),
            None => None,
        };
        let membership = Membership::new(me.clone(), timeouts);
        let (tx, rx) = mpsc::channel(1024);
        let (events, events_rx) = mpsc::channel(1024);
        let (snapshot_tx, snapshot) = watch::channel(Arc::new(membership.clone()));
        let (changes, _) = broadcast::channel(256);

        let discovery_wanted = creds.is_some() && config.discovery;
        let discovery = if discovery_wanted && addr.ip().is_loopback() {
            tracing::warn!(%addr, "mDNS discovery is off: this node listens on loopback only, so other machines cannot reach it (listen on 0.0.0.0 or a LAN address)");
            None
        } else if discovery_wanted {
            Some(Discovery::start(&me, &config.cluster, events.clone())?)
        } else {
            None
        };
        if client.is_some() {
            if !config.peers.is_empty() {
                tokio::spawn(resolve_peers(
                    config.peers.clone(),
                    addr.port(),
                    events.clone(),
                ));
            }
            tracing::info!(
                node = %me.name, id = %id, cluster = %config.cluster, %addr, discovery = discovery.is_some(),
                static_peers = config.peers.len(), version = %me.version, "cluster agent started"
            );
        } else {
            tracing::info!(node = %me.name, id = %id, "no cluster secret: running as a lone node (set --secret-file or [cluster] secret_file to join a cluster)");
        }

        let actor = Actor {
            membership,
            cluster: config.cluster.clone(),
            client: client.clone(),
            discovery,
            in_flight: HashSet::new(),
            tx: tx.clone(),
            snapshot: snapshot_tx,
            changes: changes.clone(),
            problems: HashMap::new(),
            memory_read_at: Instant::now(),
        };
        tokio::spawn(actor.run(rx, events_rx, timeouts.heartbeat));
        let verifier = creds.map(|c| Verifier::new(c, id.clone()));
        Ok(Self {
            inner: Arc::new(Inner {
                cluster: config.cluster,
                me_id: id,
                version: config.version,
                verifier,
                client,
                tx,
                events,
                snapshot,
                changes,
                warned: Mutex::new(HashMap::new()),
                deployments: Mutex::new(Vec::new()),
            }),
        })
    }

    /// This node's view of the cluster, as of now.
    pub fn view(&self) -> ClusterView {
        let m = self.inner.snapshot.borrow().clone();
        let mut view = m.view(&self.inner.cluster, self.is_clustered(), Instant::now());
        if let Ok(d) = self.inner.deployments.lock() {
            view.deployments = d.clone();
        }
        view
    }

    /// What views report under `deployments` from now on.
    pub fn set_deployments(&self, deployments: Vec<crate::wire::DeploymentView>) {
        if let Ok(mut d) = self.inner.deployments.lock() {
            *d = deployments;
        }
    }

    /// What this node announces about itself.
    pub fn me(&self) -> NodeInfo {
        self.inner.snapshot.borrow().me().clone()
    }

    pub fn node_id(&self) -> &NodeId {
        &self.inner.me_id
    }

    pub fn cluster(&self) -> &str {
        &self.inner.cluster
    }

    /// False when the agent has no secret and runs as a lone node.
    pub fn is_clustered(&self) -> bool {
        self.inner.verifier.is_some()
    }

    /// Membership changes as they happen (joins, state changes, removals).
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.inner.changes.subscribe()
    }

    /// Tells the peers we are leaving (so they drop us at once), says goodbye
    /// on mDNS, and stops the actor.
    pub async fn shutdown(&self) {
        self.stop(true).await;
    }

    /// Stops without a word to the peers, as a crash would: they find out by
    /// the timeouts. For tests of failure detection.
    pub async fn stop_silently(&self) {
        self.stop(false).await;
    }

    async fn stop(&self, announce: bool) {
        let (done_tx, done) = oneshot::channel();
        if self
            .inner
            .tx
            .send(Command::Shutdown {
                announce,
                done: done_tx,
            })
            .await
            .is_ok()
        {
            let _ = tokio::time::timeout(Duration::from_secs(3), done).await;
        }
    }
}
