#![allow(dead_code)] // each test binary uses a part of it

//! What the sampling tests share: an async-openai client for a test server,
//! chat requests, and raw JSON posts for the fields no SDK type has.

pub use crate::common::{client, user};
use crate::common::{Server, MODEL_ID};
use async_openai::types::CreateChatCompletionRequestArgs;
use serde_json::{json, Value};

pub fn chat(
    prompt: &str,
    max_tokens: u32,
) -> Result<CreateChatCompletionRequestArgs, async_openai::error::OpenAIError> {
    let mut args = CreateChatCompletionRequestArgs::default();
    args.model(MODEL_ID)
        .messages([user(prompt)?])
        .max_tokens(max_tokens);
    Ok(args)
}

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

/// A completion's text, with `extra` fields in the body.
pub async fn complete(
    server: &Server,
    prompt: &str,
    max_tokens: u32,
    extra: Value,
) -> Result<String, String> {
    let mut body = json!({"model": MODEL_ID, "prompt": prompt, "max_tokens": max_tokens});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let (status, v) = post(server, "/v1/completions", body)
        .await
        .map_err(|e| e.to_string())?;
    match v["choices"][0]["text"].as_str() {
        Some(t) if status == 200 => Ok(t.to_string()),
        _ => Err(format!("{status}: {v}")),
    }
}
