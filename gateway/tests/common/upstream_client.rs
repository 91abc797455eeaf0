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

/// POSTs `body` to `url` + `path`: the status and the body's text.
pub async fn post(url: &str, path: &str, body: &Value) -> Result<(u16, String), reqwest::Error> {
    let r = reqwest::Client::new()
        .post(format!("{url}{path}"))
        .json(body)
        .send()
        .await?;
    Ok((r.status().as_u16(), r.text().await?))
}

/// JSON text without the fields named `keys` (and a comma each), wherever
/// they are: what differs between two answers to the same request (ids,
/// creation times, a server's timing measurements).
pub fn without(text: &str, keys: &[&str]) -> String {
    let mut out = text.to_string();
    for key in keys {
        let field = format!("\"{key}\":");
        while let Some(at) = out.find(&field) {
            let end = at + field.len() + value_len(&out[at + field.len()..]);
            let (from, to) = if out[end..].starts_with(',') {
                (at, end + 1)
            } else if out[..at].ends_with(',') {
                (at - 1, end)
            } else {
                (at, end)
            };
            out.replace_range(from..to, "");
        }
    }
    out
}

/// The length of the JSON value `s` starts with.
fn value_len(s: &str) -> usize {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, c) in s.char_indices() {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' if depth == 0 => return i + 1,
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '{' | '[' => depth += 1,
            '}' | ']' | ',' if depth == 0 => return i,
            '}' | ']' if depth == 1 => return i + 1,
            '}' | ']' => depth -= 1,
            _ => {}
        }
    }
    s.len()
}
