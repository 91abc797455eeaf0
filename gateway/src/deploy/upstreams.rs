//! Upstream deployments on this node. They are not placed: every node that
//! knows an upstream spec (its own config, or the cluster's plan) builds a
//! client for it, with the API key from its own environment or file, and
//! sends requests there directly. Rebuilt when the spec changes; the active
//! health probe runs as long as the deployment does.

use super::local::Local;
use crate::upstream::Upstream;
use herd_cluster::spec::DeploySpec;
use std::collections::BTreeMap;
use std::sync::Arc;

pub(super) struct UpstreamRun {
    spec: DeploySpec,
    pub(super) upstream: Arc<Upstream>,
    probe: tokio::task::JoinHandle<()>,
}

impl Drop for UpstreamRun {
    fn drop(&mut self) {
        self.probe.abort();
    }
}

impl Local {
    /// Makes this node's upstream clients match `specs` (the plan's, or this
    /// node's own before there is one).
    pub(super) fn reconcile_upstreams(&mut self, specs: &[DeploySpec]) {
        let wanted: BTreeMap<&str, &DeploySpec> = specs
            .iter()
            .filter(|s| s.upstream.is_some())
            .map(|s| (s.id.as_str(), s))
            .collect();
        self.upstreams
            .retain(|id, run| wanted.get(id.as_str()).is_some_and(|s| **s == run.spec));
        self.upstream_errors
            .retain(|id, _| wanted.contains_key(id.as_str()));
        for (id, spec) in wanted {
            if self.upstreams.contains_key(id) {
                continue;
            }
            let created = *self
                .created
                .entry(id.to_string())
                .or_insert_with(crate::openai::response::unix_now);
            match Upstream::new(spec, self.metrics.clone(), created) {
                Ok(up) => {
                    let up = Arc::new(up);
                    tracing::info!(deployment = %id, upstream = %up.base_url, model = %up.model, "serving an upstream");
                    self.metrics.add_model(id, u64::from(spec.slots));
                    self.upstream_errors.remove(id);
                    let probe = tokio::spawn(up.clone().probe_forever());
                    self.upstreams.insert(
                        id.to_string(),
                        UpstreamRun {
                            spec: spec.clone(),
                            upstream: up,
                            probe,
                        },
                    );
                }
                Err(why) => {
                    if self.upstream_errors.get(id) != Some(&why) {
                        tracing::warn!(deployment = %id, "cannot serve the upstream: {why}");
                    }
                    self.upstream_errors.insert(id.to_string(), why);
                }
            }
        }
    }
}
