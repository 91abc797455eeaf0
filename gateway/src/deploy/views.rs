//! Publishing: the route table the handlers read, the head statuses this
//! node's heartbeats carry, and the per-deployment views of `/cluster`.

use super::local::{Local, NotRunning};
use super::plan::Plan;
use crate::router::{RemoteRoute, Route, RouteTable};
use herd_cluster::node::HeadStatus;
use herd_cluster::peer_api::LiveNode;
use herd_cluster::placement::Decision;
use herd_cluster::spec::DeploySpec;
use herd_cluster::{DeploymentView, ShardView, UpstreamView};
use herd_engines::{Engine, EngineState};

impl Local {
    pub fn publish(
        &mut self,
        plan: Option<&Plan>,
        nodes: &[LiveNode],
        mine: &[DeploySpec],
    ) -> Vec<DeploymentView> {
        let now = crate::openai::response::unix_now();
        let mut table = RouteTable::with_policy(self.policy.clone());
        table.set_peers(self.agent.peer_client());
        let mut views = Vec::new();
        let mut heads = Vec::new();
        let specs = plan.map_or(mine, |p| &p.specs);
        let ids: Vec<(String, String, bool)> = specs
            .iter()
            .map(|s| (s.id.clone(), s.model.clone(), s.upstream.is_some()))
            .collect();
        for (id, model, is_upstream) in ids {
            let created = *self.created.entry(id.clone()).or_insert(now);
            if is_upstream {
                let (route, mut view) = self.upstream_view(&id, model);
                view.conflict = plan.and_then(|p| p.conflicts.get(&id).cloned());
                table.insert(id, route, created);
                views.push(view);
                continue;
            }
            let decision = plan.and_then(|p| p.placement.deployments.get(&id));
            let mut view = DeploymentView {
                id: id.clone(),
                model,
                state: "loading".into(),
                reason: None,
                head: None,
                shards: Vec::new(),
                conflict: plan.and_then(|p| p.conflicts.get(&id).cloned()),
                upstream: None,
            };
            let route = match decision {
                None => {
                    view.reason = Some("waiting for the cluster's placement".into());
                    Route::Down("the deployment is waiting for the cluster's placement".into())
                }
                Some(Decision::Refused { reason, .. }) => {
                    view.state = "refused".into();
                    view.reason = Some(reason.clone());
                    Route::Down(format!("the deployment was refused: {reason}"))
                }
                Some(Decision::Placed(a)) => {
                    let head = nodes.iter().find(|n| n.info.id == a.head);
                    view.head =
                        Some(head.map_or_else(|| a.head.0.clone(), |n| n.info.name.clone()));
                    let status = if a.head == *self.agent.node_id() {
                        let status = self.head_status(&id);
                        heads.push(status.clone());
                        Some(status)
                    } else {
                        head.and_then(|n| n.info.heads.iter().find(|h| h.id == id).cloned())
                    };
                    if let Some(s) = &status {
                        view.state = s.state.clone();
                        view.reason = s.reason.clone();
                    }
                    view.shards = a
                        .shards
                        .iter()
                        .enumerate()
                        .map(|(i, s)| ShardView {
                            node: s.name.clone(),
                            node_id: s.node.clone(),
                            layers: s.layers.clone(),
                            loaded: status
                                .as_ref()
                                .and_then(|st| st.layout.get(i).map(|(_, r)| r.clone())),
                            // The head names its own device; a shard's is what its worker serves.
                            device: match (i, &status) {
                                (0, Some(st)) if !st.layout.is_empty() => st.layout[0].0.clone(),
                                _ => nodes
                                    .iter()
                                    .find(|n| n.info.id == s.node)
                                    .map_or_else(String::new, |n| n.info.shard_device.clone()),
                            },
                        })
                        .collect();
                    match (self.heads.get(&id), head) {
                        (Some(run), _) => Route::Local(run.deployment.clone()),
                        (None, Some(h)) if a.head != *self.agent.node_id() => {
                            Route::Remote(RemoteRoute {
                                head: a.head.clone(),
                                head_name: h.info.name.clone(),
                                addr: h.contact,
                            })
                        }
                        _ => Route::Down(
                            view.reason
                                .clone()
                                .unwrap_or_else(|| "the deployment's head is not reachable".into()),
                        ),
                    }
                }
            };
            table.insert(id, route, created);
            views.push(view);
        }
        self.router.publish(table);
        self.agent
            .set_local(self.store.list(), heads, mine.to_vec());
        views
    }

    /// An upstream's route and view: served directly from this node, or
    /// down with the reason (its API key is missing here).
    fn upstream_view(&self, id: &str, model: String) -> (Route, DeploymentView) {
        let mut view = DeploymentView {
            id: id.to_string(),
            model,
            state: "failed".into(),
            reason: None,
            head: None,
            shards: Vec::new(),
            conflict: None,
            upstream: None,
        };
        let Some(run) = self.upstreams.get(id) else {
            let why = self
                .upstream_errors
                .get(id)
                .cloned()
                .unwrap_or_else(|| "the upstream is not set up yet".into());
            view.reason = Some(why.clone());
            return (Route::Down(why), view);
        };
        let up = &run.upstream;
        let status = up.status();
        view.state = if up.is_up() { "ready" } else { "unhealthy" }.into();
        if !up.is_up() {
            view.reason = Some(format!(
                "circuit {} after {} failures (last: {})",
                status.circuit,
                status.consecutive_failures,
                status.last_failure.unwrap_or("-")
            ));
        }
        view.upstream = Some(UpstreamView {
            base_url: up.base_url.clone(),
            circuit: status.circuit.into(),
            in_flight: status.in_flight as u64,
            consecutive_failures: status.consecutive_failures,
            last_failure: status.last_failure.map(str::to_string),
        });
        (Route::Upstream(up.clone()), view)
    }

    fn head_status(&self, id: &str) -> HeadStatus {
        let Some(run) = self.heads.get(id) else {
            let (state, reason) = match self.head_errors.get(id) {
                Some(NotRunning::Copying(progress)) => ("loading", Some(progress.clone())),
                Some(NotRunning::Failed(why)) => ("failed", Some(why.clone())),
                None => ("loading", None),
            };
            return HeadStatus {
                id: id.to_string(),
                state: state.into(),
                reason,
                layout: Vec::new(),
            };
        };
        let (state, reason) = match run.engine.state() {
            EngineState::Ready => ("ready", None),
            EngineState::Starting => ("loading", None),
            EngineState::Restarting { last_error, .. } => ("failed", Some(last_error)),
        };
        let layout = run
            .engine
            .info()
            .map(|i| i.layout.into_iter().map(|l| (l.device, l.layers)).collect())
            .unwrap_or_default();
        HeadStatus {
            id: id.to_string(),
            state: state.into(),
            reason,
            layout,
        }
    }
}
