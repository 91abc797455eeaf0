#![allow(dead_code)] // each test binary uses a part of it

//! What the tool-calling tests share: the tools they offer, a check of a
//! call against its tool's schema, and clients (async-openai, raw JSON).

use crate::common::Server;
pub use crate::common::{client, user};
use async_openai::types::{CreateChatCompletionRequest, FinishReason};
use futures::StreamExt;
use serde_json::{json, Value};
use std::collections::BTreeMap;

pub fn tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
            "parameters": {"type": "object", "properties": {
                "city": {"type": "string", "maxLength": 40},
                "unit": {"enum": ["celsius", "fahrenheit"]}},
                "required": ["city", "unit"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "get_time", "description": "The time in a timezone",
            "parameters": {"type": "object", "properties": {"timezone": {"type": "string", "maxLength": 40}},
                "required": ["timezone"]}}}
    ])
}

/// Checks a call's arguments against the tool's schema (the parts these tools use).
pub fn check_call(name: &str, arguments: &str) -> Result<(), String> {
    let args: Value = serde_json::from_str(arguments).map_err(|e| format!("{arguments:?}: {e}"))?;
    let obj = args
        .as_object()
        .ok_or(format!("not an object: {arguments}"))?;
    match name {
        "get_weather" => {
            let city_ok = obj
                .get("city")
                .and_then(Value::as_str)
                .is_some_and(|c| c.chars().count() <= 40);
            let unit_ok = matches!(
                obj.get("unit").and_then(Value::as_str),
                Some("celsius" | "fahrenheit")
            );
            if !city_ok || !unit_ok || obj.len() != 2 {
                return Err(format!(
                    "get_weather arguments break the schema: {arguments}"
                ));
            }
        }
        "get_time" => {
            if !obj.get("timezone").is_some_and(Value::is_string) {
                return Err(format!("get_time arguments break the schema: {arguments}"));
            }
        }
        other => return Err(format!("unknown function {other:?}")),
    }
    Ok(())
}

/// A streamed answer's calls, by index, as (id, name, arguments).
pub type StreamedCalls = BTreeMap<u32, (String, String, String)>;

/// Streams `req` through async-openai and joins the call deltas by index,
/// as the SDK's users do; also the finish reason.
pub async fn stream_calls(
    server: &Server,
    req: CreateChatCompletionRequest,
) -> Result<(Option<FinishReason>, StreamedCalls), Box<dyn std::error::Error + Send + Sync>> {
    let mut stream = client(server).chat().create_stream(req).await?;
    let mut calls = StreamedCalls::new();
    let mut finish = None;
    while let Some(chunk) = stream.next().await {
        for choice in chunk?.choices {
            finish = finish.or(choice.finish_reason);
            for delta in choice.delta.tool_calls.unwrap_or_default() {
                let entry = calls.entry(delta.index).or_default();
                if let Some(id) = delta.id {
                    assert!(entry.0.is_empty(), "a call's id comes once");
                    entry.0 = id;
                }
                if let Some(f) = delta.function {
                    entry.1.push_str(&f.name.unwrap_or_default());
                    entry.2.push_str(&f.arguments.unwrap_or_default());
                }
            }
        }
    }
    Ok((finish, calls))
}

/// POSTs `body` to `path` (under the server's root); the status and JSON answer.
pub async fn post(
    server: &Server,
    path: &str,
    body: Value,
) -> Result<(u16, Value), reqwest::Error> {
    let r = reqwest::Client::new()
        .post(format!("{}{path}", server.url))
        .json(&body)
        .send()
        .await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await?))
}

pub async fn chat(server: &Server, body: Value) -> Result<(u16, Value), reqwest::Error> {
    post(server, "/v1/chat/completions", body).await
}
