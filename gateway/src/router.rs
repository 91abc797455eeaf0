//! Model id → deployment. A deployment is one served model: its engine and
//! its admission control.

use crate::openai::ApiError;
use crate::scheduler::Admission;
use herd_engines::Engine;
use std::collections::BTreeMap;
use std::sync::Arc;

pub struct Deployment {
    pub id: String,
    pub engine: Arc<dyn Engine>,
    pub admission: Admission,
    pub max_tokens_limit: u32,
    pub created: u64,
}

#[derive(Default)]
pub struct Router {
    deployments: BTreeMap<String, Arc<Deployment>>,
}

impl Router {
    pub fn new(deployments: Vec<Deployment>) -> Self {
        Self {
            deployments: deployments
                .into_iter()
                .map(|d| (d.id.clone(), Arc::new(d)))
                .collect(),
        }
    }

    pub fn route(&self, model: &str) -> Result<Arc<Deployment>, ApiError> {
        self.deployments
            .get(model)
            .cloned()
            .ok_or_else(|| ApiError::ModelNotFound(model.to_string()))
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<Deployment>> {
        self.deployments.values()
    }
}
