//! Talking to a `herd serve` that fronts fault-injecting upstreams
//! (common/fault.rs): config entries, requests, `/metrics` and `/health`.

#![allow(dead_code)]

use crate::common::Server;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// An `engine = "upstream"` entry for `base`, without active probes unless `extra` sets them.
pub fn upstream(id: &str, base: &str, extra: &str) -> String {
    format!(
        "[[models]]\nid = \"{id}\"\nengine = \"upstream\"\nbase_url = \"{base}\"\nupstream_model = \"fault-model\"\nprobe_path = \"\"\n{extra}\n"
    )
}

pub struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: String,
    pub took: Duration,
}

pub async fn ask(server: &Server, model: &str, stream: bool) -> Result<Answer, reqwest::Error> {
    let started = Instant::now();
    let r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.url))
        .json(&json!({"model": model, "stream": stream,
            "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await?;
    let status = r.status().as_u16();
    let retry_after = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = r.text().await?;
    Ok(Answer {
        status,
        retry_after,
        body,
        took: started.elapsed(),
    })
}

pub fn content(body: &str) -> String {
    serde_json::from_str::<Value>(body).map_or_else(
        |_| String::new(),
        |v| {
            v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or("")
                .to_string()
        },
    )
}

/// A sample of `/metrics` (0 when absent).
pub async fn metric(server: &Server, series: &str) -> Result<f64, reqwest::Error> {
    let text = reqwest::get(format!("{}/metrics", server.url))
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0))
}

pub async fn health_of(server: &Server, id: &str) -> Result<Value, reqwest::Error> {
    let h: Value = reqwest::get(format!("{}/health", server.url))
        .await?
        .json()
        .await?;
    Ok(h["models"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["id"] == id).cloned())
        .unwrap_or(Value::Null))
}
