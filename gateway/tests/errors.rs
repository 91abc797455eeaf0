//! Every error case with its exact status and OpenAI shape. Bodies are parsed
//! into async-openai's own error type, so compatibility is checked by a real client.

mod common;

use common::{Server, TestResult, MODEL_ID};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
struct Wrapped {
    error: async_openai::error::ApiError,
}

async fn raw(
    server: &Server,
    path: &str,
    body: Vec<u8>,
    key: Option<&str>,
) -> Result<(u16, Option<String>, Vec<u8>), reqwest::Error> {
    let mut req = reqwest::Client::new()
        .post(format!("{}{path}", server.url))
        .header("content-type", "application/json")
        .body(body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let r = req.send().await?;
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    Ok((status, retry, r.bytes().await?.to_vec()))
}

fn openai_error(body: &[u8]) -> Result<async_openai::error::ApiError, serde_json::Error> {
    Ok(serde_json::from_slice::<Wrapped>(body)?.error)
}

fn chat(model: &str, content: &str) -> Vec<u8> {
    json!({"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 4})
        .to_string()
        .into_bytes()
}

#[tokio::test]
async fn bad_input_gets_openai_shaped_4xx() -> TestResult {
    let server = Server::start(&["--ctx-size", "256", "--max-body-bytes", "4096"])?;
    let cases: Vec<(&str, Vec<u8>, u16, Option<&str>)> = vec![
        ("/v1/chat/completions", chat("no-such-model", "hi"), 404, Some("model_not_found")),
        ("/v1/chat/completions", b"{not json".to_vec(), 400, Some("invalid_json")),
        ("/v1/chat/completions", Vec::new(), 400, Some("invalid_json")),
        ("/v1/chat/completions", json!({"model": MODEL_ID}).to_string().into_bytes(), 400, Some("invalid_json")),
        ("/v1/chat/completions", json!({"model": MODEL_ID, "messages": "hi"}).to_string().into_bytes(), 400, Some("invalid_json")),
        ("/v1/chat/completions", json!({"model": MODEL_ID, "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}).to_string().into_bytes(), 400, Some("invalid_json")),
        ("/v1/chat/completions", json!({"model": MODEL_ID, "messages": [{"role": "user", "content": "x"}], "temperature": 9}).to_string().into_bytes(), 400, Some("invalid_value")),
        ("/v1/chat/completions", json!({"model": MODEL_ID, "messages": [{"role": "user", "content": "x"}], "n": 0}).to_string().into_bytes(), 400, Some("invalid_value")),
        ("/v1/chat/completions", json!({"model": MODEL_ID, "messages": []}).to_string().into_bytes(), 400, Some("invalid_value")),
        ("/v1/completions", json!({"model": MODEL_ID, "prompt": ""}).to_string().into_bytes(), 400, Some("invalid_value")),
        // ~600 tokens against a 256-token context: refused before queueing.
        ("/v1/chat/completions", chat(MODEL_ID, &"the quick brown fox ".repeat(150)), 400, Some("context_length_exceeded")),
        ("/v1/chat/completions", json!({"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 250}).to_string().into_bytes(), 400, Some("context_length_exceeded")),
        // Over the 4096-byte body limit.
        ("/v1/chat/completions", chat(MODEL_ID, &"x".repeat(5000)), 413, Some("request_too_large")),
        ("/v1/nothing-here", chat(MODEL_ID, "hi"), 404, Some("unknown_url")),
    ];
    for (path, body, status, code) in cases {
        let (got, _, bytes) = raw(&server, path, body.clone(), None).await?;
        let text = String::from_utf8_lossy(&bytes).to_string();
        assert_eq!(
            got,
            status,
            "{path} {}: {text}",
            String::from_utf8_lossy(&body[..body.len().min(120)])
        );
        let err =
            openai_error(&bytes).map_err(|e| format!("not an OpenAI error body ({e}): {text}"))?;
        assert_eq!(err.code.as_deref(), code, "{text}");
        assert!(!err.message.is_empty());
        assert!(err.r#type.is_some());
        let v: Value = serde_json::from_slice(&bytes)?;
        for field in ["message", "type", "param", "code"] {
            assert!(
                v["error"].get(field).is_some(),
                "missing error.{field}: {text}"
            );
        }
    }
    // The server is still healthy and serving after all that.
    let (ok, _, _) = raw(&server, "/v1/chat/completions", chat(MODEL_ID, "hi"), None).await?;
    assert_eq!(ok, 200);
    Ok(())
}

#[tokio::test]
async fn api_keys_are_enforced() -> TestResult {
    let dir = tempfile::tempdir()?;
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "# keys\nalice:sk-alice-123\n")?;
    let server = Server::start(&["--api-key-file", keys.to_str().ok_or("path")?])?;
    for key in [None, Some("sk-wrong"), Some("")] {
        let (status, _, bytes) =
            raw(&server, "/v1/chat/completions", chat(MODEL_ID, "hi"), key).await?;
        assert_eq!(status, 401, "key {key:?}");
        assert_eq!(
            openai_error(&bytes)?.code.as_deref(),
            Some("invalid_api_key")
        );
    }
    let (status, _, _) = raw(
        &server,
        "/v1/chat/completions",
        chat(MODEL_ID, "hi"),
        Some("sk-alice-123"),
    )
    .await?;
    assert_eq!(status, 200);
    let models = reqwest::Client::new()
        .get(format!("{}/v1/models", server.url))
        .send()
        .await?;
    assert_eq!(models.status().as_u16(), 401);
    assert!(
        !server.log_text().contains("sk-alice-123"),
        "a key leaked into the log"
    );
    Ok(())
}

#[tokio::test]
async fn full_queue_gets_429_with_retry_after() -> TestResult {
    let server = Server::start(&["--slots", "1", "--max-queue", "1"])?;
    // The end-of-turn tokens banned, so each long request holds its slot for all
    // its 400 tokens however fast this machine decodes.
    let long = json!({"model": MODEL_ID, "messages": [{"role": "user", "content": "Write a very long essay."}],
        "max_tokens": 400, "stream": true, "logit_bias": {"0": -100, "1": -100, "2": -100}})
    .to_string()
    .into_bytes();
    let busy = raw(&server, "/v1/chat/completions", long.clone(), None);
    let queued = raw(&server, "/v1/chat/completions", long.clone(), None);
    let probe = async {
        // Sent once one request runs and the other waits (the metrics say so), not after a guessed delay.
        let metrics = format!("{}/metrics", server.url);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            let text = reqwest::get(&metrics).await?.text().await?;
            let waiting = text
                .lines()
                .any(|l| l.starts_with("herd_requests_waiting{") && l.ends_with(" 1"));
            if waiting {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        raw(&server, "/v1/chat/completions", chat(MODEL_ID, "hi"), None).await
    };
    let (a, b, c) = tokio::join!(busy, queued, probe);
    let (status, retry, bytes) = c?;
    assert_eq!(status, 429, "{}", String::from_utf8_lossy(&bytes));
    assert!(retry
        .and_then(|r| r.parse::<u64>().ok())
        .is_some_and(|s| s >= 1));
    assert_eq!(
        openai_error(&bytes)?.code.as_deref(),
        Some("rate_limit_exceeded")
    );
    assert_eq!(a?.0, 200);
    assert_eq!(b?.0, 200);
    Ok(())
}

#[tokio::test]
async fn models_endpoint_lists_the_model() -> TestResult {
    let server = Server::start(&["--model-id", "smol"])?;
    let v: Value = reqwest::get(format!("{}/v1/models", server.url))
        .await?
        .json()
        .await?;
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], "smol");
    let one = reqwest::get(format!("{}/v1/models/smol", server.url)).await?;
    assert_eq!(one.status().as_u16(), 200);
    let missing = reqwest::get(format!("{}/v1/models/nope", server.url)).await?;
    assert_eq!(missing.status().as_u16(), 404);
    Ok(())
}

#[tokio::test]
async fn model_without_chat_template_refuses_chat_but_completes_text() -> TestResult {
    // Gemma 3 270M (base) ships no chat template in its GGUF.
    let path = common::model_path().with_file_name("gemma-3-270m-q4_k_m.gguf");
    let server = Server::start_model(&path, &["--model-id", "bare"], &[])?;
    let (status, _, body) = raw(&server, "/v1/chat/completions", chat("bare", "hi"), None).await?;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    let err = openai_error(&body)?;
    assert_eq!(err.code.as_deref(), Some("chat_template_missing"));
    assert!(err.message.contains("/v1/completions"), "{}", err.message);
    let text = json!({"model": "bare", "prompt": "Once upon a time", "max_tokens": 4})
        .to_string()
        .into_bytes();
    let (status, _, body) = raw(&server, "/v1/completions", text, None).await?;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    Ok(())
}
