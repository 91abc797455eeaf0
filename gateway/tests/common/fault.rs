//! A fault-injecting OpenAI-compatible upstream, in the test process: an
//! axum server on a free loopback port whose answers follow a script (fail
//! with a status, 429 with Retry-After, stall before or after the first
//! byte, close mid-stream), then a default. It records what it was sent.

#![allow(dead_code)]

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// A whole answer: "hello from NAME" (streamed when asked).
    Ok,
    /// This status with an OpenAI error body.
    Status(u16),
    /// 429 with `Retry-After: secs`.
    RateLimited(u64),
    /// Reads the request, never answers.
    StallBeforeFirstByte,
    /// Sends the head and the first event, then nothing.
    StallAfterFirstByte,
    /// Sends two events, then drops the connection.
    CloseMidStream,
}

#[derive(Clone, Default)]
struct Script {
    plan: Arc<Mutex<VecDeque<Fault>>>,
    default: Arc<Mutex<Option<Fault>>>,
    hits: Arc<AtomicUsize>,
    probes: Arc<AtomicUsize>,
    probe_status: Arc<AtomicU16>,
    bodies: Arc<Mutex<Vec<Value>>>,
    name: Arc<str>,
}

pub struct FaultServer {
    /// The `base_url` to configure: `http://127.0.0.1:PORT/v1`.
    pub base_url: String,
    script: Script,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultServer {
    pub async fn start(name: &str) -> std::io::Result<Self> {
        let script = Script {
            name: Arc::from(name),
            probe_status: Arc::new(AtomicU16::new(200)),
            ..Script::default()
        };
        let app = axum::Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/models", get(models))
            .with_state(script.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            base_url: format!("http://{addr}/v1"),
            script,
            task,
        })
    }

    /// The next answers, in order; after them, the default (`Ok` unless set).
    pub fn then(&self, faults: &[Fault]) {
        if let Ok(mut p) = self.script.plan.lock() {
            p.extend(faults.iter().copied());
        }
    }

    pub fn set_default(&self, fault: Fault) {
        if let Ok(mut d) = self.script.default.lock() {
            *d = Some(fault);
        }
    }

    /// Completion requests received.
    pub fn hits(&self) -> usize {
        self.script.hits.load(Ordering::SeqCst)
    }

    pub fn probes(&self) -> usize {
        self.script.probes.load(Ordering::SeqCst)
    }

    /// What `GET /v1/models` answers from now on.
    pub fn probe_answers(&self, status: u16) {
        self.script.probe_status.store(status, Ordering::SeqCst);
    }

    /// The last request body received.
    pub fn last_body(&self) -> Option<Value> {
        self.script.bodies.lock().ok()?.last().cloned()
    }
}

async fn models(State(s): State<Script>) -> Response {
    s.probes.fetch_add(1, Ordering::SeqCst);
    let status = StatusCode::from_u16(s.probe_status.load(Ordering::SeqCst))
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(json!({"object": "list", "data": []}))).into_response()
}

fn chunk(name: &str, delta: Value, finish: Value) -> String {
    let c = json!({"id": "chatcmpl-fault", "object": "chat.completion.chunk", "created": 1,
        "model": name, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    format!("data: {c}\n\n")
}

fn sse(body: Body) -> Response {
    ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()
}

async fn chat(State(s): State<Script>, body: Bytes) -> Response {
    s.hits.fetch_add(1, Ordering::SeqCst);
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if let Ok(mut b) = s.bodies.lock() {
        b.push(req.clone());
    }
    let fault = s
        .plan
        .lock()
        .ok()
        .and_then(|mut p| p.pop_front())
        .or_else(|| s.default.lock().ok().and_then(|d| *d))
        .unwrap_or(Fault::Ok);
    let stream = req["stream"].as_bool().unwrap_or(false);
    let usage = req["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false);
    let name = s.name.clone();
    let error = |status: u16| {
        json!({"error": {"message": format!("injected {status} from {name}"),
            "type": "server_error", "param": null, "code": "injected"}})
    };
    match fault {
        Fault::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, axum::Json(error(code))).into_response()
        }
        Fault::RateLimited(secs) => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, secs.to_string())],
            axum::Json(error(429)),
        )
            .into_response(),
        Fault::StallBeforeFirstByte => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::GATEWAY_TIMEOUT.into_response()
        }
        Fault::StallAfterFirstByte => {
            let first = chunk(
                &name,
                json!({"role": "assistant", "content": ""}),
                Value::Null,
            );
            let events = futures::stream::once(async move { Ok::<_, std::io::Error>(first) })
                .chain(futures::stream::pending());
            sse(Body::from_stream(events))
        }
        Fault::CloseMidStream => {
            let events = vec![
                Ok(chunk(
                    &name,
                    json!({"role": "assistant", "content": ""}),
                    Value::Null,
                )),
                Ok(chunk(&name, json!({"content": "half"}), Value::Null)),
            ];
            // The events go out first; then the connection drops.
            let drop = futures::stream::once(async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                Err(std::io::Error::other("injected: connection dropped"))
            });
            sse(Body::from_stream(futures::stream::iter(events).chain(drop)))
        }
        Fault::Ok if stream => {
            let mut out = vec![
                chunk(
                    &name,
                    json!({"role": "assistant", "content": ""}),
                    Value::Null,
                ),
                chunk(
                    &name,
                    json!({"content": format!("hello from {name}")}),
                    Value::Null,
                ),
                chunk(&name, json!({}), json!("stop")),
            ];
            if usage {
                let u = json!({"id": "chatcmpl-fault", "object": "chat.completion.chunk",
                    "created": 1, "model": &*name, "choices": [],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}});
                out.push(format!("data: {u}\n\n"));
            }
            out.push("data: [DONE]\n\n".into());
            let events = futures::stream::iter(out.into_iter().map(Ok::<_, std::io::Error>));
            sse(Body::from_stream(events))
        }
        Fault::Ok => axum::Json(json!({"id": "chatcmpl-fault", "object": "chat.completion",
            "created": 1, "model": &*name,
            "choices": [{"index": 0, "message": {"role": "assistant",
                "content": format!("hello from {name}")}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}))
        .into_response(),
    }
}

use futures::StreamExt;
