//! Candidates: addresses worth probing (static peers, mDNS finds, members'
//! gossip, former members), and which addresses get a message each round.
//!
//! mDNS is unauthenticated, so anyone on the LAN can announce addresses: the
//! table is capped, and a full table evicts the least recently mentioned mDNS
//! or gossip candidate. Static peers and former members are never evicted
//! (the config and the authenticated membership bound their number). A candidate is
//! probed with nothing about the cluster in the message; only members, which
//! have proved the secret, are sent our description and member list.

use super::{Membership, Source};
use crate::node::NodeId;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A candidate nobody mentioned for this long is forgotten (static peers never are).
pub const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Most candidates kept at once (static peers and former members aside).
pub const MAX_CANDIDATES: usize = 256;
/// Longest wait between probes of an unreachable candidate.
pub(super) const MAX_PROBE_BACKOFF: Duration = Duration::from_secs(4);

#[derive(Debug, Clone)]
pub(super) struct Candidate {
    pub(super) source: Source,
    pub(super) last_mentioned: Instant,
    pub(super) next_probe: Instant,
    pub(super) failures: u32,
    /// Who should answer there: the probe is addressed to it. Taken from the
    /// source (mDNS's claim, a member's gossip) or from a signed answer.
    pub(super) known_id: Option<NodeId>,
}

impl Candidate {
    fn evictable(&self) -> bool {
        matches!(self.source, Source::Discovery | Source::Gossip)
    }
}

/// Where one message goes this round, and what it may carry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// A member proved the secret: it gets a full heartbeat, addressed to it.
    Member { addr: SocketAddr, id: NodeId },
    /// A candidate gets a probe that tells it nothing, addressed to the node
    /// we expect there, if we know which.
    Candidate {
        addr: SocketAddr,
        id: Option<NodeId>,
    },
}

impl Target {
    pub fn addr(&self) -> SocketAddr {
        match self {
            Self::Member { addr, .. } | Self::Candidate { addr, .. } => *addr,
        }
    }

    pub fn id(&self) -> Option<&NodeId> {
        match self {
            Self::Member { id, .. } => Some(id),
            Self::Candidate { id, .. } => id.as_ref(),
        }
    }
}

impl Membership {
    pub(super) fn mention(
        &mut self,
        addr: SocketAddr,
        id: Option<NodeId>,
        source: Source,
        now: Instant,
    ) {
        if self.self_addrs.contains(&addr) || id.as_ref() == Some(&self.me.id) {
            return;
        }
        if !self.candidates.contains_key(&addr) && !self.make_room(source) {
            return;
        }
        let c = self.candidates.entry(addr).or_insert_with(|| Candidate {
            source,
            last_mentioned: now,
            next_probe: now,
            failures: 0,
            known_id: None,
        });
        c.source = c.source.min(source);
        c.last_mentioned = now;
        if id.is_some() {
            c.known_id = id;
        }
    }

    /// Whether a new candidate from `source` may be added: a full table
    /// evicts its least recently mentioned mDNS or gossip candidate; with
    /// none to evict, only a static peer or a former member gets in (over the
    /// cap, which config and authenticated membership bound).
    fn make_room(&mut self, source: Source) -> bool {
        if self.candidates.len() < MAX_CANDIDATES {
            return true;
        }
        let oldest = self
            .candidates
            .iter()
            .filter(|(_, c)| c.evictable())
            .min_by_key(|(_, c)| c.last_mentioned)
            .map(|(addr, _)| *addr);
        match oldest {
            Some(addr) => {
                self.candidates.remove(&addr);
                true
            }
            None => matches!(source, Source::Static | Source::FormerMember),
        }
    }

    /// `id` answered a message with a valid MAC at `addr`.
    pub(super) fn answered(&mut self, addr: SocketAddr, id: &NodeId, now: Instant) {
        if let Some(c) = self.candidates.get_mut(&addr) {
            c.failures = 0;
            c.known_id = Some(id.clone());
            c.last_mentioned = now;
        }
    }

    /// Probe a removed member's address again from `next_probe` on, so it
    /// rejoins when it answers.
    pub(super) fn keep_probing(
        &mut self,
        addr: SocketAddr,
        id: &NodeId,
        next_probe: Instant,
        now: Instant,
    ) {
        self.mention(addr, Some(id.clone()), Source::FormerMember, now);
        if let Some(c) = self.candidates.get_mut(&addr) {
            c.failures = 0;
            c.next_probe = next_probe;
        }
    }

    pub(super) fn contact_failed(&mut self, addr: SocketAddr, now: Instant) {
        if let Some(c) = self.candidates.get_mut(&addr) {
            c.failures = c.failures.saturating_add(1);
            let backoff = self
                .timeouts
                .heartbeat
                .saturating_mul(1 << c.failures.min(4));
            c.next_probe = now + backoff.min(MAX_PROBE_BACKOFF);
        }
    }

    pub(super) fn misaddressed(&mut self, addr: SocketAddr, answered: NodeId, now: Instant) {
        if answered == self.me.id {
            // One of our own addresses: an unaddressed probe's answer will show it.
            if let Some(c) = self.candidates.get_mut(&addr) {
                c.known_id = None;
                c.next_probe = now;
            }
            return;
        }
        // A secret holder signed this, so the id is as good as gossip.
        self.mention(addr, Some(answered), Source::Gossip, now);
        if let Some(c) = self.candidates.get_mut(&addr) {
            c.failures = 0;
            c.next_probe = now;
        }
    }

    pub(super) fn forget_candidates(&mut self, now: Instant) {
        self.candidates.retain(|_, c| {
            c.source == Source::Static
                || now.saturating_duration_since(c.last_mentioned) < FORGET_AFTER
        });
    }

    /// Where to send a message now: every member, plus the candidates that
    /// are due and not known as a member.
    pub fn targets(&mut self, now: Instant) -> Vec<Target> {
        let mut out: Vec<Target> = self
            .members
            .values()
            .map(|m| Target::Member {
                addr: m.contact,
                id: m.info.id.clone(),
            })
            .collect();
        let member_addrs: std::collections::BTreeSet<SocketAddr> = self
            .members
            .values()
            .flat_map(|m| [m.contact, m.info.addr])
            .collect();
        for (addr, c) in &mut self.candidates {
            let heard_already = match &c.known_id {
                Some(id) => self.members.contains_key(id),
                // Someone answers there already; a new node at a member's
                // address is found by the refusal of our heartbeat to it.
                None => member_addrs.contains(addr),
            };
            if heard_already || self.self_addrs.contains(addr) || c.next_probe > now {
                continue;
            }
            c.next_probe = now + self.timeouts.heartbeat;
            out.push(Target::Candidate {
                addr: *addr,
                id: c.known_id.clone(),
            });
        }
        out
    }
}
