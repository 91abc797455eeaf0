//! One round of messages: a full heartbeat (our description and the members
//! we hear) to every member, addressed to it; a probe that says nothing about
//! the cluster to each due candidate, since a candidate has not proved the
//! secret yet. What comes back becomes membership events.

use super::actor::Actor;
use super::Command;
use crate::client::CallError;
use crate::membership::{Event, Source, Target};
use crate::wire::Gossip;
use bytes::Bytes;
use std::time::Instant;

impl Actor {
    /// Our heartbeat: only ever sent to members. `None` (logged) if it cannot
    /// be encoded, which the wire types rule out (see wire.rs's tests): an
    /// empty heartbeat would only earn a refusal.
    pub(super) fn gossip_body(&self, leaving: bool) -> Option<Bytes> {
        let view = self.membership.view(&self.cluster, true, Instant::now());
        let msg = Gossip {
            from: self.membership.me().clone(),
            members: view.peer_refs(),
            leaving,
        };
        match serde_json::to_vec(&msg) {
            Ok(body) => Some(Bytes::from(body)),
            Err(e) => {
                tracing::error!("cannot encode our heartbeat: {e}");
                None
            }
        }
    }

    pub(super) fn send_heartbeats(&mut self) {
        let Some(client) = self.client.clone() else {
            return;
        };
        let targets = self.membership.targets(Instant::now());
        let to_members = targets.iter().any(|t| matches!(t, Target::Member { .. }));
        let body = if to_members {
            match self.gossip_body(false) {
                Some(body) => body,
                None => return,
            }
        } else {
            Bytes::new()
        };
        for target in targets {
            if !self.in_flight.insert(target.clone()) {
                continue;
            }
            let (client, body, tx) = (client.clone(), body.clone(), self.tx.clone());
            tokio::spawn(async move {
                let outcome = match &target {
                    Target::Member { addr, id } => client.gossip(*addr, id, body).await,
                    Target::Candidate { addr, id } => client.probe(*addr, id.as_ref()).await,
                };
                let outcome = outcome.map(Box::new);
                let _ = tx.send(Command::Exchanged { target, outcome }).await;
            });
        }
    }

    pub(super) fn exchanged(&mut self, target: Target, outcome: Result<Box<Gossip>, CallError>) {
        self.in_flight.remove(&target);
        let addr = target.addr();
        match outcome {
            Ok(gossip) => {
                let gossip = *gossip;
                if let Some((problem, _)) = self.problems.remove(&addr) {
                    tracing::info!(%addr, was = %problem, "peer reachable again");
                }
                let refs: Vec<_> = gossip
                    .members
                    .into_iter()
                    .map(|r| (r.addr, Some(r.id)))
                    .collect();
                self.apply(Event::Heard {
                    info: gossip.from,
                    via: Some(addr),
                });
                if !refs.is_empty() {
                    self.apply(Event::Mentioned {
                        addrs: refs,
                        source: Source::Gossip,
                    });
                }
            }
            Err(CallError::Misaddressed { answered }) => {
                tracing::debug!(%addr, expected = ?target.id(), %answered, "another node answers there");
                self.apply(Event::Misaddressed { addr, answered });
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
}
