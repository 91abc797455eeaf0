//! What the plan asks of this node: an engine host for every deployment it
//! heads (with tunnel ends for the shards on other nodes) and a shard worker
//! for every deployment it holds layers of. Started when the plan gives
//! them, stopped (in-flight requests end with an error) when it takes them
//! away or changes their layout.

use super::plan::Plan;
use super::{DeploySettings, WorkerAddrs};
use crate::metrics::Metrics;
use crate::router::{Deployment, Router};
use crate::scheduler::Admission;
use herd_cluster::peer_api::LiveNode;
use herd_cluster::placement::{Assignment, Decision, Shard};
use herd_cluster::spec::DeploySpec;
use herd_cluster::store::ModelStore;
use herd_cluster::worker::{ShardWorker, WorkerSpec};
use herd_cluster::{tunnel, Agent, NodeId};
use herd_engines::llama::{LlamaEngine, LlamaEngineConfig};
use herd_engines::Engine;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// What a running head was started from: a change means restart it.
#[derive(Debug, Clone, PartialEq)]
struct HeadKey {
    spec: DeploySpec,
    shards: Vec<Shard>,
    /// Where each remote shard's tunnel is reached.
    tunnels: Vec<SocketAddr>,
}

pub(super) struct HeadRun {
    key: HeadKey,
    pub(super) engine: LlamaEngine,
    pub(super) deployment: Arc<Deployment>,
    forwards: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for HeadRun {
    fn drop(&mut self) {
        self.engine
            .shutdown("the deployment was re-placed or removed");
        for f in &self.forwards {
            f.abort();
        }
    }
}

/// Why a deployment this node heads has no engine.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum NotRunning {
    /// Its model file is being copied here from a peer (progress).
    Copying(String),
    Failed(String),
}

pub(super) struct Local {
    pub(super) agent: Agent,
    me: NodeId,
    exe: PathBuf,
    pub(super) store: ModelStore,
    worker_threads: u32,
    pub(super) router: Router,
    pub(super) metrics: Arc<Metrics>,
    pub(super) heads: BTreeMap<String, HeadRun>,
    /// Why a head this node should run is not running (yet).
    pub(super) head_errors: BTreeMap<String, NotRunning>,
    workers: BTreeMap<String, ShardWorker>,
    worker_addrs: WorkerAddrs,
    pub(super) created: BTreeMap<String, u64>,
    /// Model files being copied here from a peer, by file name.
    pub(super) copies: BTreeMap<String, (super::copy::Copy, std::time::Instant)>,
    /// Upstream deployments this node sends requests to (`upstreams.rs`).
    pub(super) upstreams: BTreeMap<String, super::upstreams::UpstreamRun>,
    /// Why an upstream cannot be served here (its API key is missing).
    pub(super) upstream_errors: BTreeMap<String, String>,
    /// Aliases and fallbacks, shared by every route table published.
    pub(super) policy: Arc<crate::routing::RoutingPolicy>,
}

impl Local {
    pub fn new(
        settings: &DeploySettings,
        agent: Agent,
        router: Router,
        metrics: Arc<Metrics>,
        worker_addrs: WorkerAddrs,
    ) -> Self {
        Self {
            me: agent.node_id().clone(),
            agent,
            exe: settings.exe.clone(),
            store: settings.store.clone(),
            worker_threads: settings.worker_threads,
            router,
            metrics,
            heads: BTreeMap::new(),
            head_errors: BTreeMap::new(),
            workers: BTreeMap::new(),
            worker_addrs,
            created: BTreeMap::new(),
            copies: BTreeMap::new(),
            upstreams: BTreeMap::new(),
            upstream_errors: BTreeMap::new(),
            policy: settings.policy.clone(),
        }
    }

    pub fn reconcile(&mut self, plan: &Plan, nodes: &[LiveNode]) {
        let mut want_heads = BTreeMap::new();
        let mut want_workers = Vec::new();
        for (id, decision) in &plan.placement.deployments {
            let (Decision::Placed(a), Some(spec)) = (decision, plan.spec(id)) else {
                continue;
            };
            if a.head == self.me {
                want_heads.insert(id.clone(), self.head_key(spec, a, nodes));
            } else if a.shards.iter().skip(1).any(|s| s.node == self.me) {
                want_workers.push(id.clone());
            }
        }
        self.heads.retain(|id, run| {
            let keep = want_heads
                .get(id)
                .is_some_and(|k| k.as_ref().ok() == Some(&run.key));
            if !keep {
                tracing::info!(deployment = %id, "stopping the engine this node headed");
            }
            keep
        });
        self.head_errors.retain(|id, _| want_heads.contains_key(id));
        for (id, key) in want_heads {
            if self.heads.contains_key(&id) {
                continue;
            }
            let started = key
                .map_err(NotRunning::Failed)
                .and_then(|k| self.ensure_file(&k.spec, plan, nodes).map(|()| k))
                .and_then(|k| self.start_head(&id, k).map_err(NotRunning::Failed));
            match started {
                Ok(run) => {
                    self.head_errors.remove(&id);
                    self.heads.insert(id, run);
                }
                Err(why) => {
                    if let NotRunning::Failed(reason) = &why {
                        if self.head_errors.get(&id) != Some(&why) {
                            tracing::warn!(deployment = %id, "cannot head the deployment: {reason}");
                        }
                    }
                    self.head_errors.insert(id, why);
                }
            }
        }
        let before = self.workers.len();
        self.workers.retain(|id, _| want_workers.contains(id));
        for id in want_workers {
            if self.workers.contains_key(&id) {
                continue;
            }
            let spec = WorkerSpec {
                exe: self.exe.clone(),
                cache_dir: self.store.dir().join(".rpc-cache"),
                threads: self.worker_threads,
                deployment: id.clone(),
            };
            match ShardWorker::start(spec) {
                Ok(w) => {
                    self.workers.insert(id, w);
                }
                Err(e) => tracing::warn!(deployment = %id, "cannot start a shard worker: {e}"),
            }
        }
        if before != self.workers.len() || self.worker_addrs.load().len() != self.workers.len() {
            let addrs = self
                .workers
                .iter()
                .map(|(id, w)| (id.clone(), w.addr()))
                .collect();
            self.worker_addrs.store(Arc::new(addrs));
        }
    }

    /// Ok when the model file is here; else starts (or reports) a copy from a peer.
    fn ensure_file(
        &mut self,
        spec: &DeploySpec,
        plan: &Plan,
        nodes: &[LiveNode],
    ) -> Result<(), NotRunning> {
        if spec.path.as_ref().is_some_and(|p| p.is_file()) || self.store.path(&spec.model).is_some()
        {
            self.copies.remove(&spec.model);
            return Ok(());
        }
        if let Some((copy, since)) = self.copies.get(&spec.model) {
            if !copy.finished() {
                return Err(NotRunning::Copying(copy.status()));
            }
            // A failed copy is retried (and resumes) after a pause.
            if since.elapsed() < Duration::from_secs(3) {
                return Err(NotRunning::Failed(copy.status()));
            }
        }
        let sha = plan.spec(&spec.id).and_then(|s| s.sha256.clone());
        let copy = super::copy::Copy::start(&self.agent, &self.store, &spec.model, sha, nodes)
            .map_err(NotRunning::Failed)?;
        let status = copy.status();
        self.copies
            .insert(spec.model.clone(), (copy, std::time::Instant::now()));
        Err(NotRunning::Copying(status))
    }

    fn head_key(
        &self,
        spec: &DeploySpec,
        a: &Assignment,
        nodes: &[LiveNode],
    ) -> Result<HeadKey, String> {
        let mut tunnels = Vec::new();
        for shard in a.shards.iter().skip(1) {
            let node = nodes
                .iter()
                .find(|n| n.info.id == shard.node)
                .ok_or_else(|| format!("shard node {} is not reachable", shard.name))?;
            if node.info.tunnel_port == 0 {
                return Err(format!("shard node {} has no tunnel", shard.name));
            }
            tunnels.push(SocketAddr::new(node.contact.ip(), node.info.tunnel_port));
        }
        Ok(HeadKey {
            spec: spec.runtime(),
            shards: a.shards.clone(),
            tunnels,
        })
    }

    fn start_head(&self, id: &str, key: HeadKey) -> Result<HeadRun, String> {
        let spec = &key.spec;
        let path = spec
            .path
            .clone()
            .filter(|p| p.is_file())
            .or_else(|| self.store.path(&spec.model))
            .ok_or_else(|| {
                format!(
                    "the model file {:?} is not in this node's store ({})",
                    spec.model,
                    self.store.dir().display()
                )
            })?;
        let mut endpoints = Vec::new();
        let mut forwards = Vec::new();
        if key.shards.len() > 1 {
            let keys = self
                .agent
                .tunnel_keys()
                .ok_or("a split deployment needs a cluster secret")?;
            for (shard, addr) in key.shards.iter().skip(1).zip(&key.tunnels) {
                let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                    .and_then(|l| l.set_nonblocking(true).map(|()| l))
                    .and_then(tokio::net::TcpListener::from_std)
                    .map_err(|e| format!("cannot open a tunnel end: {e}"))?;
                let port = listener.local_addr().map_err(|e| e.to_string())?.port();
                endpoints.push(format!("127.0.0.1:{port}"));
                forwards.push(tokio::spawn(tunnel::forward(
                    listener,
                    *addr,
                    keys.clone(),
                    self.me.clone(),
                    shard.node.clone(),
                    format!("rpc/{id}"),
                )));
            }
        }
        let split = if key.shards.len() > 1 {
            key.shards
                .iter()
                .map(|s| s.layers.end - s.layers.start)
                .collect()
        } else {
            Vec::new()
        };
        let engine = LlamaEngine::start(LlamaEngineConfig {
            model: path,
            threads: spec.threads,
            slots: spec.slots,
            ctx_size: spec.ctx_size,
            exe: self.exe.clone(),
            startup_timeout: Duration::from_secs(600),
            prepare_timeout: Duration::from_secs(30),
            progress_timeout: Duration::from_millis(spec.progress_timeout_ms),
            mmap: spec.mmap,
            rpc: endpoints,
            split,
            cpu_repack: spec.cpu_repack,
            embeddings: spec.embeddings,
        });
        tracing::info!(deployment = %id, model = %spec.model, shards = key.shards.len(), "starting the engine (this node is the head)");
        self.metrics.add_model(id, u64::from(spec.slots));
        let created = self
            .created
            .get(id)
            .copied()
            .unwrap_or_else(crate::openai::response::unix_now);
        let deployment = Arc::new(Deployment {
            id: id.to_string(),
            engine: Arc::new(engine.clone()) as Arc<dyn Engine>,
            admission: Admission::new(
                spec.slots as usize,
                spec.max_queue as usize,
                Duration::from_millis(spec.max_queue_wait_ms),
            ),
            max_tokens_limit: spec.max_tokens_limit,
            max_n: spec.max_n,
            created,
        });
        Ok(HeadRun {
            key,
            engine,
            deployment,
            forwards,
        })
    }
}
