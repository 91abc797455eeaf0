//! Gateway side of the llama engine: an actor that owns the engine host child
//! process, multiplexes requests over its socket, and restarts it with
//! backoff when it dies. In-flight requests of a dead child end with a clean
//! [`EngineError::Crashed`]; requests while it is down get `Unavailable`.

use super::protocol::{FromHost, RequestId, ToHost};
use crate::{
    EmbedRequest, Embeddings, EngineError, EngineState, EngineStats, GenerateRequest, ModelInfo,
    PreparedPrompt, PromptInput, SlotHold, TokenEvent,
};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

mod child;
mod handle;
mod memory;

use child::{ChildConn, ChildEvent};
pub use handle::LlamaEngine;

#[derive(Debug, Clone)]
pub struct LlamaEngineConfig {
    pub model: PathBuf,
    pub threads: u32,
    pub slots: u32,
    pub ctx_size: u32,
    /// The `herd` executable that runs `herd engine-host`.
    pub exe: PathBuf,
    /// How long a starting host may take to load the model.
    pub startup_timeout: Duration,
    /// Longest a prepare (template + tokenize) may take.
    pub prepare_timeout: Duration,
    /// A host with requests in flight that sends nothing for this long is
    /// wedged (e.g. blocked on a silent RPC peer) and is killed.
    pub progress_timeout: Duration,
    /// Map the model file rather than read it into (huge-page) memory.
    pub mmap: bool,
    /// A split deployment: the RPC servers (local tunnel ends) holding the
    /// later layers, and the layer counts (this host first, then each server).
    pub rpc: Vec<String>,
    pub split: Vec<u32>,
    /// Allow llama.cpp's repacked CPU weight layouts (ignored for a split model).
    pub cpu_repack: bool,
    /// An embedding deployment: the host serves embeddings, not generation.
    pub embeddings: bool,
}

/// Events buffered per request; a client that lets them all pile up is too
/// slow and its generation is stopped (the last place is kept for saying so).
pub(super) const EVENTS_PER_REQUEST: usize = 1024;
pub(super) const COMMAND_QUEUE: usize = 1024;
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A host that stayed up this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(30);

pub(super) enum ActorCmd {
    Prepare {
        id: RequestId,
        input: PromptInput,
        reply: oneshot::Sender<Result<PreparedPrompt, EngineError>>,
    },
    Generate {
        id: RequestId,
        request: GenerateRequest,
        events: mpsc::Sender<TokenEvent>,
    },
    Cancel {
        id: RequestId,
    },
    Embed {
        id: RequestId,
        request: EmbedRequest,
        reply: oneshot::Sender<Result<Embeddings, EngineError>>,
    },
    /// Stop for good: in-flight requests end with this reason.
    Shutdown {
        reason: String,
    },
}

pub(super) struct Shared {
    info: Mutex<Option<ModelInfo>>,
    stats: Mutex<EngineStats>,
    state: watch::Receiver<EngineState>,
}

/// Why a request cannot be served right now, for the client.
fn unavailable(state: &EngineState) -> EngineError {
    match state {
        EngineState::Restarting { last_error, .. } => {
            EngineError::Unavailable(format!("the engine is restarting after: {last_error}"))
        }
        _ => EngineError::Unavailable("the engine is starting".into()),
    }
}

enum Pending {
    Prepare(oneshot::Sender<Result<PreparedPrompt, EngineError>>),
    /// The slot hold is dropped with the entry, when the request leaves the engine.
    Generate(
        mpsc::Sender<TokenEvent>,
        #[expect(dead_code, reason = "held only to be dropped")] SlotHold,
    ),
    Embed(
        oneshot::Sender<Result<Embeddings, EngineError>>,
        #[expect(dead_code, reason = "held only to be dropped")] SlotHold,
    ),
}

pub(super) struct Supervisor {
    config: LlamaEngineConfig,
    shared: Arc<Shared>,
    state: watch::Sender<EngineState>,
    pending: HashMap<RequestId, Pending>,
    child: Option<ChildConn>,
    restarts: u64,
    /// Streams stopped because their client fell too far behind (running total).
    slow_clients: u64,
}

impl Supervisor {
    async fn run(mut self, mut cmds: mpsc::Receiver<ActorCmd>) {
        let mut backoff = BACKOFF_MIN;
        let mut restart_at = Some(Instant::now());
        let (spawned_tx, mut spawned_rx) =
            mpsc::channel::<Result<(ChildConn, ModelInfo), String>>(1);
        let mut ready_since = Instant::now();
        let mut last_event = Instant::now();
        let mut watchdog = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = watchdog.tick() => {
                    // A prepare waits on the host too: a host stopped while idle is
                    // found by the next request, not only by a running generation.
                    let busy = !self.pending.is_empty();
                    if self.child.is_some() && busy && last_event.elapsed() >= self.config.progress_timeout {
                        // Dropping the connection kills the process.
                        self.child = None;
                        let message = format!("engine host made no progress for {:?}; killed it", self.config.progress_timeout);
                        restart_at = Some(self.died(message, &mut backoff));
                    }
                    if !busy {
                        last_event = Instant::now();
                    }
                }
                cmd = cmds.recv() => match cmd {
                    Some(ActorCmd::Shutdown { reason }) => {
                        for (_, pending) in self.pending.drain() {
                            fail_now(pending, EngineError::Crashed(reason.clone()));
                        }
                        self.state.send_replace(EngineState::Restarting { restarts: self.restarts, last_error: reason });
                        return; // dropping the child kills it
                    }
                    Some(cmd) => self.handle(cmd),
                    None => return, // every handle is gone: the child is killed on drop
                },
                _ = tokio::time::sleep_until(restart_at.unwrap_or_else(Instant::now)), if restart_at.is_some() => {
                    restart_at = None;
                    let config = self.config.clone();
                    let tx = spawned_tx.clone();
                    tokio::spawn(async move { let _ = tx.send(ChildConn::spawn(&config).await).await; });
                }
                spawned = spawned_rx.recv() => match spawned {
                    Some(Ok((conn, info))) => {
                        tracing::info!(model = %self.config.model.display(), "engine host ready");
                        if let Ok(mut slot) = self.shared.info.lock() { *slot = Some(info); }
                        self.child = Some(conn);
                        ready_since = Instant::now();
                        self.state.send_replace(EngineState::Ready);
                    }
                    Some(Err(message)) => {
                        restart_at = Some(self.died(message, &mut backoff));
                    }
                    None => return,
                },
                event = recv_child(&mut self.child) => match event {
                    ChildEvent::Message(msg) => {
                        last_event = Instant::now();
                        self.dispatch(msg);
                    }
                    ChildEvent::Exited(message) => {
                        self.child = None;
                        if ready_since.elapsed() >= STABLE_AFTER { backoff = BACKOFF_MIN; }
                        restart_at = Some(self.died(message, &mut backoff));
                    }
                },
            }
        }
    }

    /// Fails everything in flight and schedules the restart.
    fn died(&mut self, message: String, backoff: &mut Duration) -> Instant {
        tracing::error!(model = %self.config.model.display(), "engine host failed: {message}; restarting in {backoff:?}");
        for (_, pending) in self.pending.drain() {
            fail_now(pending, EngineError::Crashed(message.clone()));
        }
        self.restarts += 1;
        if let Ok(mut stats) = self.shared.stats.lock() {
            *stats = EngineStats {
                restarts: self.restarts,
                slow_clients: self.slow_clients,
                ..EngineStats::default()
            };
        }
        self.state.send_replace(EngineState::Restarting {
            restarts: self.restarts,
            last_error: message,
        });
        let at = Instant::now() + *backoff;
        *backoff = (*backoff * 2).min(BACKOFF_MAX);
        at
    }

    fn handle(&mut self, cmd: ActorCmd) {
        let Some(child) = self.child.as_ref() else {
            let error = EngineError::Unavailable(match &*self.state.borrow() {
                EngineState::Restarting { last_error, .. } => {
                    format!("the engine is restarting after: {last_error}")
                }
                _ => "the engine is starting".into(),
            });
            match cmd {
                ActorCmd::Prepare { reply, .. } => {
                    let _ = reply.send(Err(error));
                }
                ActorCmd::Generate { events, .. } => {
                    let _ = events.try_send(TokenEvent::Failed(error));
                }
                ActorCmd::Embed { reply, .. } => {
                    let _ = reply.send(Err(error));
                }
                ActorCmd::Cancel { .. } | ActorCmd::Shutdown { .. } => {}
            }
            return;
        };
        let (msg, pending) = match cmd {
            ActorCmd::Prepare { id, input, reply } => (
                ToHost::Prepare { id, input },
                Some((id, Pending::Prepare(reply))),
            ),
            ActorCmd::Generate {
                id,
                request,
                events,
            } => (
                ToHost::Generate {
                    id,
                    tokens: request.prompt.tokens,
                    params: request.params,
                },
                Some((id, Pending::Generate(events, request.slot))),
            ),
            ActorCmd::Embed { id, request, reply } => (
                ToHost::Embed {
                    id,
                    inputs: request.inputs,
                },
                Some((id, Pending::Embed(reply, request.slot))),
            ),
            ActorCmd::Cancel { id } => {
                if self.pending.remove(&id).is_none() {
                    return;
                }
                (ToHost::Cancel { id }, None)
            }
            ActorCmd::Shutdown { .. } => return,
        };
        if !child.send(msg) {
            if let Some((_, p)) = pending {
                fail_now(
                    p,
                    EngineError::Unavailable("the engine's command queue is full".into()),
                );
            }
            return;
        }
        if let Some((id, p)) = pending {
            self.pending.insert(id, p);
        }
    }

    fn dispatch(&mut self, msg: FromHost) {
        match msg {
            FromHost::Ready { .. } => {}
            FromHost::Stats {
                slots_busy,
                kv_used_tokens,
                kv_capacity_tokens,
            } => {
                if let Ok(mut stats) = self.shared.stats.lock() {
                    *stats = EngineStats {
                        slots_busy,
                        kv_used_tokens,
                        kv_capacity_tokens,
                        restarts: self.restarts,
                        slow_clients: self.slow_clients,
                    };
                }
            }
            FromHost::Prepared { id, result } => {
                if let Some(Pending::Prepare(reply)) = self.pending.remove(&id) {
                    let _ = reply.send(result);
                }
            }
            FromHost::Embedded { id, result } => {
                if let Some(Pending::Embed(reply, _)) = self.pending.remove(&id) {
                    let _ = reply.send(result);
                }
            }
            FromHost::Delta { id, delta } => self.forward(id, TokenEvent::Delta(delta), false),
            FromHost::Finished { id, reasons, usage } => {
                self.forward(id, TokenEvent::Finished { reasons, usage }, true)
            }
            FromHost::Failed { id, error } => self.forward(id, TokenEvent::Failed(error), true),
        }
    }

    /// Hands an event to its request. A closed stream cancels the request; so
    /// does a full one, whose client is told why in the place kept for it.
    fn forward(&mut self, id: RequestId, event: TokenEvent, last: bool) {
        let Some(Pending::Generate(events, _)) = self.pending.get(&id) else {
            return;
        };
        let behind = events.max_capacity() - events.capacity();
        let result = if last || events.capacity() > 1 {
            events.try_send(event)
        } else {
            Err(TrySendError::Full(event))
        };
        let stop = match result {
            Ok(()) => false,
            Err(TrySendError::Closed(_)) => true,
            Err(TrySendError::Full(_)) => {
                let _ = events.try_send(TokenEvent::Failed(EngineError::ClientTooSlow { behind }));
                self.slow_clients += 1;
                if let Ok(mut stats) = self.shared.stats.lock() {
                    stats.slow_clients = self.slow_clients;
                }
                tracing::warn!(model = %self.config.model.display(), behind, "a client read its stream too slowly; stopped its generation");
                true
            }
        };
        if last || stop {
            self.pending.remove(&id);
        }
        if stop && !last {
            if let Some(child) = self.child.as_ref() {
                child.send(ToHost::Cancel { id });
            }
        }
    }
}

fn fail_now(pending: Pending, error: EngineError) {
    match pending {
        Pending::Prepare(reply) => {
            let _ = reply.send(Err(error));
        }
        Pending::Generate(events, _) => {
            let _ = events.try_send(TokenEvent::Failed(error));
        }
        Pending::Embed(reply, _) => {
            let _ = reply.send(Err(error));
        }
    }
}

async fn recv_child(child: &mut Option<ChildConn>) -> ChildEvent {
    match child {
        Some(c) => c.recv().await,
        None => std::future::pending().await,
    }
}
