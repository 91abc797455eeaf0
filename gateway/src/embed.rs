//! The core of `/v1/embeddings`: the route table names the deployments that
//! may answer (as for chat, `routing.rs`), tried in order until one answers.
//! A local embedding deployment: admission (a slot per request, 429 when
//! the queue is full), then the engine embeds every input in batched
//! decodes. A local deployment that is not an embedding model refuses with
//! 400; an upstream gets the client's body; a deployment headed on another
//! node is forwarded there.

use crate::metrics::RequestTimer;
use crate::openai::embeddings::{answer, check_dimensions, EmbeddingList, ValidEmbedRequest};
use crate::openai::ApiError;
use crate::router::{Deployment, Router};
use crate::routing::Backend;
use bytes::Bytes;
use herd_engines::{EmbedRequest, EngineError, EngineState, SlotHold};
use std::sync::Arc;

pub const PATH: &str = "/v1/embeddings";

pub enum EmbedAnswer {
    Local(EmbeddingList),
    /// An upstream's JSON answer, as sent.
    Relayed(Bytes),
    /// The head's answer, for a deployment headed on another node.
    Forwarded(axum::response::Response),
}

/// `raw` is the client's body (sent on to upstreams and heads).
pub async fn run(
    router: &Router,
    req: &ValidEmbedRequest,
    raw: &[u8],
    timer: &mut RequestTimer,
) -> Result<EmbedAnswer, ApiError> {
    let route = router.current().resolve(&req.model)?;
    let mut last: Option<ApiError> = None;
    for (i, backend) in route.chain.iter().enumerate() {
        if i > 0 {
            timer.fell_back(backend.id());
        }
        let attempt = match backend {
            Backend::Local(d) => local(d, req, timer).await.map(EmbedAnswer::Local),
            Backend::Upstream(u) => crate::upstream::embed(u, raw, timer)
                .await
                .map(EmbedAnswer::Relayed),
            Backend::Remote(r) => {
                let meter = timer.meter().cloned();
                let opened = crate::deploy::forward::attempt(
                    r,
                    PATH,
                    raw,
                    timer.key(),
                    timer.end_user(),
                    meter,
                )
                .await;
                if opened.is_ok() {
                    timer.take_meter();
                }
                opened.map(EmbedAnswer::Forwarded)
            }
        };
        match attempt {
            Ok(answer) => return Ok(answer),
            Err(e) if crate::generate::allows_fallback(&e) => {
                if !matches!(backend, Backend::Upstream(_)) {
                    timer.backend_failed(backend.id(), "unavailable");
                }
                last = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        ApiError::Engine(EngineError::Unavailable(format!(
            "no deployment of `{}` answered",
            req.model
        )))
    }))
}

async fn local(
    deployment: &Arc<Deployment>,
    req: &ValidEmbedRequest,
    timer: &mut RequestTimer,
) -> Result<EmbeddingList, ApiError> {
    let engine = &deployment.engine;
    let Some(info) = engine.info() else {
        let why = match engine.state() {
            EngineState::Restarting { last_error, .. } => {
                format!("the engine failed to start: {last_error}")
            }
            EngineState::Starting | EngineState::Ready => "the model is still loading".into(),
        };
        return Err(ApiError::Engine(EngineError::Unavailable(why)));
    };
    let Some(embedding) = info.embedding else {
        return Err(ApiError::Engine(EngineError::NotServed(format!(
            "model `{}` does not serve embeddings; use an embedding model (a [[models]] entry with `embeddings = true`)",
            deployment.id
        ))));
    };
    check_dimensions(req.dimensions, embedding.dimensions, &deployment.id)?;
    timer.queued();
    let permit = deployment.admission.admit(timer.key()).await?;
    timer.admitted();
    let out = engine
        .embed(EmbedRequest {
            inputs: req.inputs.clone(),
            slot: SlotHold::new(permit),
        })
        .await?;
    Ok(answer(&deployment.id, out, req.encoding))
}
