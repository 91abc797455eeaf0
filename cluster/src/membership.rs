//! Membership as a pure state machine: `apply(event, now)` returns what
//! changed, so every transition is unit-testable without clocks or sockets.
//!
//! A peer is a member only after an authenticated exchange with it (an
//! inbound heartbeat, or an answer to ours). Addresses learned any other way
//! (static peers, mDNS, other members' gossip) are *candidates* that get
//! probed (`candidates.rs`); a candidate that never answers never shows up. A
//! member that goes silent turns suspect, then dead, then is removed; its
//! address stays a candidate, so it rejoins as soon as it answers again.

use crate::config::Timeouts;
use crate::node::{NodeId, NodeInfo};
use crate::wire::{ClusterView, NodeView};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

mod candidates;

pub use crate::node::MemberState;
use candidates::Candidate;
pub use candidates::{Target, FORGET_AFTER, MAX_CANDIDATES};

/// Where we learned an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// `--peer` / `peers = [...]`: probed forever.
    Static,
    /// mDNS/DNS-SD.
    Discovery,
    /// Another member's list.
    Gossip,
    /// A member that was removed: probed so it rejoins when it is back.
    FormerMember,
}

#[derive(Debug, Clone)]
pub struct Member {
    pub info: NodeInfo,
    /// Where we send its heartbeats: the address it last answered us on (a
    /// Thunderbolt bridge peer answers on the bridge), else its advertised one.
    pub contact: SocketAddr,
    pub state: MemberState,
    pub last_heard: Instant,
}

#[derive(Debug, Clone)]
pub enum Event {
    /// An authenticated message from `info.id`; `via` is the address we
    /// reached it on when it answered our heartbeat.
    Heard {
        info: NodeInfo,
        via: Option<SocketAddr>,
    },
    /// The node says it is shutting down.
    Left { id: NodeId },
    /// Addresses worth probing (with the node id when the source knows it).
    Mentioned {
        addrs: Vec<(SocketAddr, Option<NodeId>)>,
        source: Source,
    },
    /// A heartbeat to this address got no valid answer.
    ContactFailed { addr: SocketAddr },
    /// The secret holder `answered` refused a message we addressed to
    /// another node at `addr`: probe it there under its own id.
    Misaddressed { addr: SocketAddr, answered: NodeId },
    /// Our own description changed (free memory).
    Local(NodeInfo),
    /// Time passed: apply the timeouts.
    Tick,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoveReason {
    /// Dead for `remove_after`.
    Timeout,
    /// It said it was leaving.
    Left,
    /// Another node id now answers at its address.
    Replaced,
}

/// What an event changed, for the log and for subscribers (placement).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Joined {
        id: NodeId,
        name: String,
        addr: SocketAddr,
    },
    StateChanged {
        id: NodeId,
        name: String,
        from: MemberState,
        to: MemberState,
        silent_ms: u64,
    },
    Restarted {
        id: NodeId,
        name: String,
    },
    Moved {
        id: NodeId,
        name: String,
        from: SocketAddr,
        to: SocketAddr,
    },
    Removed {
        id: NodeId,
        name: String,
        reason: RemoveReason,
    },
    /// Another process answers with our own node id (a copied state dir).
    IdClash {
        addr: SocketAddr,
    },
}

#[derive(Debug, Clone)]
pub struct Membership {
    me: NodeInfo,
    timeouts: Timeouts,
    members: BTreeMap<NodeId, Member>,
    candidates: BTreeMap<SocketAddr, Candidate>,
    self_addrs: BTreeSet<SocketAddr>,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Membership {
    pub fn new(me: NodeInfo, timeouts: Timeouts) -> Self {
        let mut self_addrs: BTreeSet<SocketAddr> = me.addrs.iter().copied().collect();
        self_addrs.insert(me.addr);
        Self {
            me,
            timeouts,
            members: BTreeMap::new(),
            candidates: BTreeMap::new(),
            self_addrs,
        }
    }

    pub fn me(&self) -> &NodeInfo {
        &self.me
    }

    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    pub fn apply(&mut self, event: Event, now: Instant) -> Vec<Change> {
        match event {
            Event::Heard { info, via } => self.heard(info, via, now),
            Event::Left { id } => self
                .remove(&id, RemoveReason::Left, now)
                .into_iter()
                .collect(),
            Event::Mentioned { addrs, source } => {
                for (addr, id) in addrs {
                    self.mention(addr, id, source, now);
                }
                Vec::new()
            }
            Event::ContactFailed { addr } => {
                self.contact_failed(addr, now);
                Vec::new()
            }
            Event::Misaddressed { addr, answered } => {
                self.misaddressed(addr, answered, now);
                Vec::new()
            }
            Event::Local(info) => {
                if info.id == self.me.id {
                    self.me = info;
                }
                Vec::new()
            }
            Event::Tick => self.tick(now),
        }
    }

    fn heard(&mut self, info: NodeInfo, via: Option<SocketAddr>, now: Instant) -> Vec<Change> {
        let mut changes = Vec::new();
        if info.id == self.me.id {
            if info.started_at_ms != self.me.started_at_ms {
                changes.push(Change::IdClash {
                    addr: via.unwrap_or(info.addr),
                });
            } else if let Some(addr) = via {
                // We reached ourselves through another of our addresses.
                self.self_addrs.insert(addr);
                self.candidates.remove(&addr);
            }
            return changes;
        }
        for addr in via.iter().chain([&info.addr]) {
            self.answered(*addr, &info.id, now);
        }
        let replaced: Vec<NodeId> = self
            .members
            .values()
            .filter(|m| m.info.addr == info.addr && m.info.id != info.id)
            .map(|m| m.info.id.clone())
            .collect();
        for id in replaced {
            changes.extend(self.remove(&id, RemoveReason::Replaced, now));
        }
        match self.members.get_mut(&info.id) {
            Some(m) => {
                let (id, name) = (info.id.clone(), info.name.clone());
                if m.info.started_at_ms != info.started_at_ms {
                    changes.push(Change::Restarted {
                        id: id.clone(),
                        name: name.clone(),
                    });
                }
                if m.info.addr != info.addr {
                    changes.push(Change::Moved {
                        id: id.clone(),
                        name: name.clone(),
                        from: m.info.addr,
                        to: info.addr,
                    });
                }
                if m.state != MemberState::Alive {
                    let silent_ms = ms(now.saturating_duration_since(m.last_heard));
                    changes.push(Change::StateChanged {
                        id,
                        name,
                        from: m.state,
                        to: MemberState::Alive,
                        silent_ms,
                    });
                }
                if let Some(addr) = via {
                    m.contact = addr;
                } else if m.info.addr != info.addr {
                    m.contact = info.addr;
                }
                m.info = info;
                m.state = MemberState::Alive;
                m.last_heard = now;
            }
            None => {
                changes.push(Change::Joined {
                    id: info.id.clone(),
                    name: info.name.clone(),
                    addr: info.addr,
                });
                let contact = via.unwrap_or(info.addr);
                self.members.insert(
                    info.id.clone(),
                    Member {
                        info,
                        contact,
                        state: MemberState::Alive,
                        last_heard: now,
                    },
                );
            }
        }
        changes
    }

    fn remove(&mut self, id: &NodeId, reason: RemoveReason, now: Instant) -> Option<Change> {
        let m = self.members.remove(id)?;
        // Keep probing where it was, so it rejoins when it answers again.
        let next_probe = match reason {
            RemoveReason::Left => now + candidates::MAX_PROBE_BACKOFF,
            RemoveReason::Timeout | RemoveReason::Replaced => now,
        };
        for addr in [m.contact, m.info.addr] {
            self.keep_probing(addr, &m.info.id, next_probe, now);
        }
        Some(Change::Removed {
            id: m.info.id,
            name: m.info.name,
            reason,
        })
    }

    fn tick(&mut self, now: Instant) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut expired = Vec::new();
        let remove_at = self.timeouts.dead_after + self.timeouts.remove_after;
        for m in self.members.values_mut() {
            let silent = now.saturating_duration_since(m.last_heard);
            let state = classify(&self.timeouts, silent);
            if state > m.state {
                changes.push(Change::StateChanged {
                    id: m.info.id.clone(),
                    name: m.info.name.clone(),
                    from: m.state,
                    to: state,
                    silent_ms: ms(silent),
                });
                m.state = state;
            }
            if silent >= remove_at {
                expired.push(m.info.id.clone());
            }
        }
        for id in expired {
            changes.extend(self.remove(&id, RemoveReason::Timeout, now));
        }
        self.forget_candidates(now);
        changes
    }

    /// This node first, then the others by name.
    pub fn view(&self, cluster: &str, clustered: bool, now: Instant) -> ClusterView {
        let mut nodes = vec![NodeView::new(&self.me, MemberState::Alive, 0, true)];
        let mut others: Vec<&Member> = self.members.values().collect();
        others.sort_by(|a, b| (&a.info.name, &a.info.id).cmp(&(&b.info.name, &b.info.id)));
        nodes.extend(others.into_iter().map(|m| {
            NodeView::new(
                &m.info,
                m.state,
                ms(now.saturating_duration_since(m.last_heard)),
                false,
            )
        }));
        ClusterView {
            cluster: cluster.to_string(),
            self_id: self.me.id.clone(),
            clustered,
            nodes,
            deployments: Vec::new(),
        }
    }
}

/// The state a silence of this length deserves.
pub fn classify(t: &Timeouts, silent: Duration) -> MemberState {
    if silent >= t.dead_after {
        MemberState::Dead
    } else if silent >= t.suspect_after {
        MemberState::Suspect
    } else {
        MemberState::Alive
    }
}

#[cfg(test)]
mod tests;
