//! From a requested model name to the deployments that may answer it, in
//! the order they are tried. A deployment id is tried first, then its
//! `fallbacks`; an alias picks one of its targets by its policy (least
//! requests in flight per unit of weight, or weighted round robin), then
//! that target's fallbacks, then the alias's other targets. Deployments that
//! are down are left out; one whose circuit is open stays in the list and
//! is refused at once when its turn comes (the caller counts a fallback).
//! A deployment headed on another node is forwarded there (`deploy/forward.rs`).
//! The ordering is the pure [`order`]; the rest reads the route table.

use crate::openai::ApiError;
use crate::router::{Deployment, RemoteRoute, Route, RouteTable};
use crate::upstream::Upstream;
use herd_cluster::client::PeerClient;
use herd_config::{Policy, Routing};
use herd_engines::{EngineError, EngineState};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Aliases and fallbacks, built once from the config; every route-table
/// snapshot shares it (the round-robin turns live here).
#[derive(Debug, Default)]
pub struct RoutingPolicy {
    aliases: BTreeMap<String, AliasRoute>,
    fallbacks: BTreeMap<String, Vec<String>>,
    created: u64,
    /// Requests this node has forwarded to each remote deployment and
    /// whose answers are still open (least-in-flight needs a number).
    forwarded: Mutex<BTreeMap<String, Arc<AtomicUsize>>>,
}

#[derive(Debug)]
struct AliasRoute {
    policy: Policy,
    targets: Vec<(String, u32)>,
    turn: AtomicU64,
}

impl RoutingPolicy {
    pub fn new(routing: &Routing, created: u64) -> Self {
        Self {
            aliases: routing
                .aliases
                .iter()
                .map(|a| {
                    let route = AliasRoute {
                        policy: a.policy,
                        targets: a.targets.clone(),
                        turn: AtomicU64::new(0),
                    };
                    (a.name.clone(), route)
                })
                .collect(),
            fallbacks: routing.fallbacks.clone(),
            created,
            forwarded: Mutex::default(),
        }
    }

    fn forwarded(&self, id: &str) -> Arc<AtomicUsize> {
        match self.forwarded.lock() {
            Ok(mut m) => m.entry(id.to_string()).or_default().clone(),
            Err(_) => Arc::default(),
        }
    }

    pub fn aliases(&self) -> impl Iterator<Item = (&str, u64)> {
        self.aliases.keys().map(|n| (n.as_str(), self.created))
    }
}

/// A deployment that can take a request from this node.
#[derive(Clone)]
pub enum Backend {
    Local(Arc<Deployment>),
    Upstream(Arc<Upstream>),
    /// Headed on another node: the request is forwarded to its head.
    Remote(Arc<Remote>),
}

pub struct Remote {
    pub id: String,
    pub route: RemoteRoute,
    pub client: PeerClient,
    /// Raised while a forwarded answer is open.
    pub in_flight: Arc<AtomicUsize>,
}

impl Backend {
    pub fn id(&self) -> &str {
        match self {
            Self::Local(d) => &d.id,
            Self::Upstream(u) => &u.id,
            Self::Remote(r) => &r.id,
        }
    }

    fn in_flight(&self) -> usize {
        match self {
            Self::Local(d) => d.admission.in_flight(),
            Self::Upstream(u) => u.admission.in_flight(),
            Self::Remote(r) => r.in_flight.load(Ordering::Relaxed),
        }
    }

    fn available(&self) -> bool {
        match self {
            Self::Local(d) => d.engine.state() == EngineState::Ready,
            Self::Upstream(u) => u.breaker.resting().is_none(),
            Self::Remote(_) => true,
        }
    }
}

/// The deployments to try for one request, and how hard to try.
pub struct Resolved {
    pub chain: Vec<Backend>,
    /// Extra rounds over `chain` after all failed (the first deployment's `retries`).
    pub retries: u32,
    /// The time all rounds together may take (the first deployment's `total_timeout_ms`).
    pub budget: Option<Duration>,
}

/// One alias target as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub in_flight: usize,
    pub weight: u32,
    pub available: bool,
}

/// The order to try an alias's targets for the request numbered `turn`.
/// Unavailable targets go last; ties go round in turn.
pub fn order(policy: Policy, targets: &[Candidate], turn: u64) -> Vec<usize> {
    let n = targets.len();
    if n == 0 {
        return Vec::new();
    }
    let rotation = |i: usize| (i + n - (turn % n as u64) as usize) % n;
    let mut idx: Vec<usize> = (0..n).collect();
    match policy {
        Policy::LeastInflight => idx.sort_by_key(|&i| {
            let t = targets[i];
            // in_flight / weight, compared without division.
            let load = (t.in_flight as u128) * 1_000_000 / u128::from(t.weight.max(1));
            (!t.available, load, rotation(i))
        }),
        Policy::WeightedRoundRobin => {
            let total: u64 = targets.iter().map(|t| u64::from(t.weight.max(1))).sum();
            let mut slot = turn % total.max(1);
            let mut first = 0;
            for (i, t) in targets.iter().enumerate() {
                let w = u64::from(t.weight.max(1));
                if slot < w {
                    first = i;
                    break;
                }
                slot -= w;
            }
            idx.sort_by_key(|&i| (!targets[i].available, (i + n - first) % n));
        }
    }
    idx
}

impl RouteTable {
    /// The deployments that may answer `model`, in the order to try them.
    pub fn resolve(&self, model: &str) -> Result<Resolved, ApiError> {
        let firsts: Vec<&str> = if let Some(alias) = self.policy.aliases.get(model) {
            let candidates: Vec<Candidate> = alias
                .targets
                .iter()
                .map(|(id, weight)| {
                    let b = self.backend(id);
                    Candidate {
                        in_flight: b.as_ref().map_or(0, Backend::in_flight),
                        weight: *weight,
                        available: b.as_ref().is_some_and(Backend::available),
                    }
                })
                .collect();
            let turn = alias.turn.fetch_add(1, Ordering::Relaxed);
            order(alias.policy, &candidates, turn)
                .into_iter()
                .map(|i| alias.targets[i].0.as_str())
                .collect()
        } else if self.get(model).is_some() {
            vec![model]
        } else {
            return Err(ApiError::ModelNotFound(model.to_string()));
        };
        // Each in turn, followed by its own fallbacks; each deployment once.
        let mut ids: Vec<&str> = Vec::new();
        for id in firsts {
            let fallbacks = self.policy.fallbacks.get(id).into_iter().flatten();
            for id in std::iter::once(id).chain(fallbacks.map(String::as_str)) {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
        let chain: Vec<Backend> = ids.iter().filter_map(|id| self.backend(id)).collect();
        let Some(first) = chain.first() else {
            return Err(self.why_down(ids.first().copied().unwrap_or(model)));
        };
        let (retries, budget) = match first {
            Backend::Upstream(u) => (u.retries, Some(u.timeouts.total)),
            Backend::Local(_) | Backend::Remote(_) => (0, None),
        };
        Ok(Resolved {
            chain,
            retries,
            budget,
        })
    }

    fn backend(&self, id: &str) -> Option<Backend> {
        match self.get(id)? {
            Route::Local(d) => Some(Backend::Local(d.clone())),
            Route::Upstream(u) => Some(Backend::Upstream(u.clone())),
            Route::Remote(route) => Some(Backend::Remote(Arc::new(Remote {
                id: id.to_string(),
                route: route.clone(),
                client: self.peers.clone()?,
                in_flight: self.policy.forwarded(id),
            }))),
            Route::Down(_) => None,
        }
    }

    /// A deployment that is down (or, after a race with a re-placement, now
    /// headed elsewhere) is a 503.
    fn why_down(&self, id: &str) -> ApiError {
        let why = match self.get(id) {
            Some(Route::Remote(r)) => {
                format!("the deployment moved to node {}; retry", r.head_name)
            }
            Some(Route::Down(reason)) => reason.clone(),
            Some(Route::Local(_) | Route::Upstream(_)) | None => {
                format!("no deployment can serve `{id}` on this node right now")
            }
        };
        ApiError::Engine(EngineError::Unavailable(why))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(in_flight: usize, weight: u32, available: bool) -> Candidate {
        Candidate {
            in_flight,
            weight,
            available,
        }
    }

    #[test]
    fn weighted_round_robin_gives_each_its_weight_per_round() {
        let targets = [c(0, 3, true), c(0, 1, true), c(0, 2, true)];
        let mut firsts = [0; 3];
        for turn in 0..60 {
            let o = order(Policy::WeightedRoundRobin, &targets, turn);
            assert_eq!(o.len(), 3);
            firsts[o[0]] += 1;
        }
        assert_eq!(firsts, [30, 10, 20]);
        let down = [c(0, 3, false), c(0, 1, true)];
        assert_eq!(order(Policy::WeightedRoundRobin, &down, 0), vec![1, 0]);
    }

    #[test]
    fn least_inflight_weighs_load_and_rotates_ties() {
        let targets = [c(4, 1, true), c(2, 1, true), c(5, 4, true)];
        assert_eq!(order(Policy::LeastInflight, &targets, 0)[0], 2, "5/4 < 2/1");
        let idle = [c(0, 1, true), c(0, 1, true)];
        let firsts: Vec<usize> = (0..4)
            .map(|t| order(Policy::LeastInflight, &idle, t)[0])
            .collect();
        assert_eq!(firsts, vec![0, 1, 0, 1]);
        let down = [c(0, 1, false), c(9, 1, true)];
        assert_eq!(order(Policy::LeastInflight, &down, 0), vec![1, 0]);
    }
}
