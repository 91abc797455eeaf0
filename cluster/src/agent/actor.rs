//! The task that owns the membership: it applies events, ticks the timeouts,
//! publishes each new state to the handles, and logs what changed.

use super::Command;
use crate::client::PeerClient;
use crate::discovery::Discovery;
use crate::membership::{Change, Event, MemberState, Membership, RemoveReason, Target};
use crate::node;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, watch};

/// How often free memory is re-read.
const MEMORY_REFRESH: Duration = Duration::from_secs(5);
/// The same problem with the same peer is logged at most this often.
const REPEAT_PROBLEM_AFTER: Duration = Duration::from_secs(60);

pub(super) struct Actor {
    pub(super) membership: Membership,
    pub(super) cluster: String,
    pub(super) client: Option<PeerClient>,
    pub(super) discovery: Option<Discovery>,
    /// Messages on their way: one at a time per address and node.
    pub(super) in_flight: HashSet<Target>,
    pub(super) tx: mpsc::Sender<Command>,
    pub(super) snapshot: watch::Sender<Arc<Membership>>,
    pub(super) changes: broadcast::Sender<Change>,
    /// The last problem logged per address, and when.
    pub(super) problems: HashMap<SocketAddr, (String, Instant)>,
    pub(super) memory_read_at: Instant,
}

impl Actor {
    pub(super) async fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        mut events: mpsc::Receiver<Event>,
        heartbeat: Duration,
    ) {
        let mut tick = tokio::time::interval(heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(Command::Exchanged { target, outcome }) => self.exchanged(target, outcome),
                    Some(Command::SetLocal { models, heads, specs }) => {
                        let mut me = self.membership.me().clone();
                        if me.models != models || me.heads != heads || me.specs != specs {
                            me.models = models;
                            me.heads = heads;
                            me.specs = specs;
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
                Some(event) = events.recv() => self.apply(event),
                _ = tick.tick() => {
                    self.refresh_memory();
                    self.apply(Event::Tick);
                    self.send_heartbeats();
                }
            }
        }
    }

    pub(super) fn apply(&mut self, event: Event) {
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

    pub(super) fn problem(&mut self, addr: SocketAddr, text: String) {
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
        let body = announce.then(|| self.gossip_body(true)).flatten();
        if let (Some(client), Some(body)) = (&self.client, body) {
            let mut sends = tokio::task::JoinSet::new();
            for m in self.membership.members() {
                let (client, body) = (client.clone(), body.clone());
                let (addr, id) = (m.contact, m.info.id.clone());
                sends.spawn(async move {
                    let _ = client.gossip(addr, &id, body).await;
                });
            }
            let all_sent = async { while sends.join_next().await.is_some() {} };
            let _ = tokio::time::timeout(Duration::from_secs(1), all_sent).await;
            tracing::info!("left the cluster");
        }
        if let Some(d) = self.discovery.take() {
            let _ = tokio::task::spawn_blocking(move || d.stop()).await;
        }
    }
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
