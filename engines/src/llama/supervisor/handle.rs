//! The handle the gateway holds: implements [`Engine`] by sending commands to
//! the supervisor actor.

use super::{
    unavailable, ActorCmd, LlamaEngineConfig, Shared, Supervisor, COMMAND_QUEUE, EVENTS_PER_REQUEST,
};
use crate::llama::prepare::PromptLimit;
use crate::llama::protocol::RequestId;
use crate::{
    EmbedRequest, Embeddings, Engine, EngineError, EngineState, EngineStats, GenerateRequest,
    ModelInfo, PreparedPrompt, PromptInput, TokenStream,
};
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// Handle to a supervised llama.cpp engine host. Cheap to clone.
#[derive(Clone)]
pub struct LlamaEngine {
    cmds: mpsc::Sender<ActorCmd>,
    shared: Arc<Shared>,
    next_id: Arc<AtomicU64>,
    prepare_timeout: Duration,
}

impl LlamaEngine {
    /// Starts the supervisor; the host is spawned in the background.
    pub fn start(config: LlamaEngineConfig) -> Self {
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        let (state_tx, state_rx) = watch::channel(EngineState::Starting);
        let shared = Arc::new(Shared {
            info: Mutex::new(None),
            stats: Mutex::new(EngineStats::default()),
            state: state_rx,
        });
        let prepare_timeout = config.prepare_timeout;
        let actor = Supervisor {
            config,
            shared: shared.clone(),
            state: state_tx,
            pending: HashMap::new(),
            child: None,
            restarts: 0,
            slow_clients: 0,
        };
        tokio::spawn(actor.run(cmd_rx));
        Self {
            cmds: cmd_tx,
            shared,
            next_id: Arc::new(AtomicU64::new(1)),
            prepare_timeout,
        }
    }

    /// Stops the engine for good (kills the host); requests in flight end
    /// with `reason`. Used when a deployment moves or is removed.
    pub fn shutdown(&self, reason: &str) {
        let _ = self.cmds.try_send(ActorCmd::Shutdown {
            reason: reason.to_string(),
        });
    }

    fn unavailable(&self) -> EngineError {
        unavailable(&self.state())
    }
}

/// Cancels its request when the stream that owns it is dropped.
struct CancelOnDrop {
    id: RequestId,
    cmds: mpsc::Sender<ActorCmd>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        // Best effort: a full queue means the actor will notice the closed channel on the next token.
        let _ = self.cmds.try_send(ActorCmd::Cancel { id: self.id });
    }
}

impl Engine for LlamaEngine {
    fn info(&self) -> Option<ModelInfo> {
        self.shared.info.lock().ok().and_then(|i| i.clone())
    }

    fn state(&self) -> EngineState {
        self.shared.state.borrow().clone()
    }

    fn stats(&self) -> EngineStats {
        self.shared
            .stats
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    fn prepare(
        &self,
        input: PromptInput,
    ) -> BoxFuture<'static, Result<PreparedPrompt, EngineError>> {
        // What cannot fit is refused here, on the request's own task: its
        // megabytes are not copied to the engine host only to be refused there.
        if let Some(info) = self.info() {
            let per_token = info.max_token_bytes.and_then(|n| usize::try_from(n).ok());
            if let Err(e) = PromptLimit::new(info.ctx_size, per_token).check_input(&input) {
                return Box::pin(std::future::ready(Err(e)));
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let cmds = self.cmds.clone();
        let timeout = self.prepare_timeout;
        let unavailable = self.unavailable();
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            cmds.try_send(ActorCmd::Prepare { id, input, reply })
                .map_err(|_| unavailable.clone())?;
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(unavailable),
                Err(_) => Err(EngineError::Unavailable(
                    "the engine did not answer in time".into(),
                )),
            }
        })
    }

    fn generate(&self, request: GenerateRequest) -> Result<TokenStream, EngineError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (events, rx) = mpsc::channel(EVENTS_PER_REQUEST);
        self.cmds
            .try_send(ActorCmd::Generate {
                id,
                request,
                events,
            })
            .map_err(|_| self.unavailable())?;
        let guard = CancelOnDrop {
            id,
            cmds: self.cmds.clone(),
        };
        Ok(TokenStream::new(rx, Some(Box::new(guard))))
    }

    fn embed(&self, request: EmbedRequest) -> BoxFuture<'static, Result<Embeddings, EngineError>> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let cmds = self.cmds.clone();
        let unavailable = self.unavailable();
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            cmds.try_send(ActorCmd::Embed { id, request, reply })
                .map_err(|_| unavailable.clone())?;
            // Dropped before the answer (client gone, timeout): the host drops
            // the work. After it, the cancel finds nothing pending and is ignored.
            let _guard = CancelOnDrop { id, cmds };
            rx.await.map_err(|_| unavailable)?
        })
    }
}
