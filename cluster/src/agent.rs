//! The agent: one actor task owns the [`Membership`]; [`Agent`] is the cheap
//! handle everyone else holds (HTTP handlers, `herd serve`, later placement).

use crate::addrs::{advertised_addrs, resolve_peers};
use crate::auth::Verifier;
use crate::client::{CallError, PeerClient};
use crate::config::{validate_name, AgentConfig, ClusterError};
use crate::discovery::Discovery;
use crate::membership::{Change, Event, MemberState, Membership, RemoveReason, Source};
use crate::node::{self, NodeId, NodeInfo};
use crate::wire::{ClusterView, Gossip};
use crate::Credentials;
use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

/// How often free memory is re-read.
const MEMORY_REFRESH: Duration = Duration::from_secs(5);
/// The same problem with the same peer is logged at most this often.
const REPEAT_PROBLEM_AFTER: Duration = Duration::from_secs(60);

pub(crate) enum Command {
    Event(Event),
    Exchanged {
        addr: SocketAddr,
        outcome: Result<Gossip, CallError>,
    },
    Shutdown {
        announce: bool,
        done: oneshot::Sender<()>,
    },
    /// What the deployment layer tells peers about this node.
    SetLocal {
        models: Vec<String>,
        heads: Vec<crate::node::HeadStatus>,
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
    pub(crate) snapshot: watch::Receiver<Arc<Membership>>,
    changes: broadcast::Sender<Change>,
    /// Per peer, when a refusal was last logged.
    pub(crate) warned: Mutex<HashMap<String, Instant>>,
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
        let (snapshot_tx, snapshot) = watch::channel(Arc::new(membership.clone()));
        let (changes, _) = broadcast::channel(256);

        let discovery_wanted = creds.is_some() && config.discovery;
        let discovery = if discovery_wanted && addr.ip().is_loopback() {
            tracing::warn!(%addr, "mDNS discovery is off: this node listens on loopback only, so other machines cannot reach it (listen on 0.0.0.0 or a LAN address)");
            None
        } else if discovery_wanted {
            Some(Discovery::start(&me, &config.cluster, tx.clone())?)
        } else {
            None
        };
        if client.is_some() {
            if !config.peers.is_empty() {
                tokio::spawn(resolve_peers(config.peers.clone(), addr.port(), tx.clone()));
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
        tokio::spawn(actor.run(rx, timeouts.heartbeat));
        Ok(Self {
            inner: Arc::new(Inner {
                cluster: config.cluster,
                me_id: id,
                version: config.version,
                verifier: creds.map(Verifier::new),
                client,
                tx,
                snapshot,
                changes,
                warned: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// This node's view of the cluster, as of now.
    pub fn view(&self) -> ClusterView {
        let m = self.inner.snapshot.borrow().clone();
        m.view(&self.inner.cluster, self.is_clustered(), Instant::now())
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

struct Actor {
    membership: Membership,
    cluster: String,
    client: Option<PeerClient>,
    discovery: Option<Discovery>,
    in_flight: HashSet<SocketAddr>,
    tx: mpsc::Sender<Command>,
    snapshot: watch::Sender<Arc<Membership>>,
    changes: broadcast::Sender<Change>,
    /// The last problem logged per address, and when.
    problems: HashMap<SocketAddr, (String, Instant)>,
    memory_read_at: Instant,
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>, heartbeat: Duration) {
        let mut tick = tokio::time::interval(heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(Command::Event(event)) => self.apply(event),
                    Some(Command::Exchanged { addr, outcome }) => self.exchanged(addr, outcome),
                    Some(Command::SetLocal { models, heads }) => {
                        let mut me = self.membership.me().clone();
                        if me.models != models || me.heads != heads {
                            me.models = models;
                            me.heads = heads;
                            self.apply(Event::Local(me));
                        }
                    }
                    Some(Command::Shutdown { announce, done }) => {
                        self.leave(announce).await;
                        let _ = done.send(());
                        return;
                    }
                    None => return,
                },
                _ = tick.tick() => {
                    self.refresh_memory();
                    self.apply(Event::Tick);
                    self.send_heartbeats(false);
                }
            }
        }
    }

    fn apply(&mut self, event: Event) {
        for change in self.membership.apply(event, Instant::now()) {
            log_change(&change);
            let _ = self.changes.send(change);
        }
        self.snapshot
            .send_replace(Arc::new(self.membership.clone()));
    }

    fn refresh_memory(&mut self) {
        if self.memory_read_at.elapsed() < MEMORY_REFRESH {
            return;
        }
        self.memory_read_at = Instant::now();
        let memory = node::memory();
        let mut me = self.membership.me().clone();
        if me.memory_free != memory.free {
            me.memory_free = memory.free;
            self.apply(Event::Local(me));
        }
    }

    fn gossip_body(&self, leaving: bool) -> Bytes {
        let view = self.membership.view(&self.cluster, true, Instant::now());
        let msg = Gossip {
            from: self.membership.me().clone(),
            members: view.peer_refs(),
            leaving,
        };
        Bytes::from(serde_json::to_vec(&msg).unwrap_or_default())
    }

    fn send_heartbeats(&mut self, leaving: bool) {
        let Some(client) = &self.client else { return };
        let targets = self.membership.targets(Instant::now());
        if targets.is_empty() {
            return;
        }
        let body = self.gossip_body(leaving);
        for addr in targets {
            if !self.in_flight.insert(addr) {
                continue;
            }
            let (client, body, tx) = (client.clone(), body.clone(), self.tx.clone());
            tokio::spawn(async move {
                let outcome = client.gossip(addr, body).await;
                let _ = tx.send(Command::Exchanged { addr, outcome }).await;
            });
        }
    }

    fn exchanged(&mut self, addr: SocketAddr, outcome: Result<Gossip, CallError>) {
        self.in_flight.remove(&addr);
        match outcome {
            Ok(gossip) => {
                if let Some((problem, _)) = self.problems.remove(&addr) {
                    tracing::info!(%addr, was = %problem, "peer reachable again");
                }
                let refs = gossip
                    .members
                    .into_iter()
                    .map(|r| (r.addr, Some(r.id)))
                    .collect();
                self.apply(Event::Heard {
                    info: gossip.from,
                    via: Some(addr),
                });
                self.apply(Event::Mentioned {
                    addrs: refs,
                    source: Source::Gossip,
                });
            }
            Err(e) => {
                match &e {
                    // Plain unreachability is what the membership timeouts report.
                    CallError::Unreachable(_) => {
                        tracing::debug!(%addr, error = %e, "heartbeat failed")
                    }
                    _ => self.problem(addr, e.to_string()),
                }
                self.apply(Event::ContactFailed { addr });
            }
        }
    }

    fn problem(&mut self, addr: SocketAddr, text: String) {
        let now = Instant::now();
        let repeat = self.problems.get(&addr).is_some_and(|(last, at)| {
            *last == text && now.duration_since(*at) < REPEAT_PROBLEM_AFTER
        });
        if !repeat {
            tracing::warn!(%addr, "peer refused: {text}");
            self.problems.insert(addr, (text, now));
        }
    }

    /// Best effort: tell every member we are going, then stop mDNS.
    async fn leave(&mut self, announce: bool) {
        if let (Some(client), true) = (&self.client, announce) {
            let body = self.gossip_body(true);
            let sends = self.membership.members().map(|m| {
                let (client, body, addr) = (client.clone(), body.clone(), m.info.addr);
                async move { client.gossip(addr, body).await }
            });
            let _ = tokio::time::timeout(Duration::from_secs(1), futures_join_all(sends.collect()))
                .await;
            tracing::info!("left the cluster");
        }
        if let Some(d) = self.discovery.take() {
            let _ = tokio::task::spawn_blocking(move || d.stop()).await;
        }
    }
}

/// Runs the futures concurrently (tokio has no join_all without an extra crate).
async fn futures_join_all<F: std::future::Future + Send + 'static>(futures: Vec<F>)
where
    F::Output: Send,
{
    let mut set = tokio::task::JoinSet::new();
    for f in futures {
        set.spawn(async move {
            let _ = f.await;
        });
    }
    while set.join_next().await.is_some() {}
}

fn log_change(change: &Change) {
    match change {
        Change::Joined { id, name, addr } => {
            tracing::info!(node = %name, id = %id.short(), %addr, "node joined")
        }
        Change::StateChanged {
            id,
            name,
            from,
            to,
            silent_ms,
        } => match to {
            MemberState::Alive => {
                tracing::info!(node = %name, id = %id.short(), was = %from, silent_ms, "node is alive again")
            }
            MemberState::Suspect => {
                tracing::warn!(node = %name, id = %id.short(), silent_ms, "node suspect: no heartbeat")
            }
            MemberState::Dead => {
                tracing::warn!(node = %name, id = %id.short(), silent_ms, "node dead")
            }
        },
        Change::Restarted { id, name } => {
            tracing::info!(node = %name, id = %id.short(), "node restarted")
        }
        Change::Moved { id, name, from, to } => {
            tracing::info!(node = %name, id = %id.short(), %from, %to, "node moved")
        }
        Change::Removed { id, name, reason } => {
            let why = match reason {
                RemoveReason::Timeout => "dead too long",
                RemoveReason::Left => "it left",
                RemoveReason::Replaced => "another node answers at its address",
            };
            tracing::info!(node = %name, id = %id.short(), reason = why, "node removed");
        }
        Change::IdClash { addr } => tracing::error!(
            %addr,
            "another process answers there with this node's id; give each node its own state dir (--state-dir)"
        ),
    }
}
