//! The OpenAI API against a real `herd serve` with the real model, driven by
//! async-openai (the Rust OpenAI client) and raw HTTP.

mod common;

use async_openai::types::{
    ChatCompletionStreamOptions, CreateChatCompletionRequestArgs, CreateCompletionRequestArgs,
    FinishReason,
};
use common::{client, user, Server, TestResult, MODEL_ID};
use futures::StreamExt;
use serde_json::{json, Value};

async fn post(server: &Server, path: &str, body: Value) -> Result<(u16, Value), reqwest::Error> {
    let r = reqwest::Client::new()
        .post(format!("{}{path}", server.url))
        .json(&body)
        .send()
        .await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await?))
}

/// Greedy text for a prompt through the raw API.
async fn greedy(
    server: &Server,
    prompt: &str,
    max_tokens: u32,
    extra: Value,
) -> Result<Value, reqwest::Error> {
    let mut body = json!({"model": MODEL_ID, "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens, "temperature": 0});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    Ok(post(server, "/v1/chat/completions", body).await?.1)
}

#[tokio::test]
async fn chat_non_stream_and_stream_agree_with_usage() -> TestResult {
    let server = Server::start(&["--slots", "2"])?;
    let c = client(&server);
    let req = CreateChatCompletionRequestArgs::default()
        .model(MODEL_ID)
        .messages([user("Name three colors.")?])
        .max_tokens(12u32)
        .temperature(0.0)
        .build()?;
    let resp = c.chat().create(req.clone()).await?;
    let text = resp.choices[0].message.content.clone().unwrap_or_default();
    assert!(!text.trim().is_empty());
    assert_eq!(resp.model, MODEL_ID);
    assert!(resp.id.starts_with("chatcmpl-"));
    let usage = resp.usage.ok_or("usage missing")?;
    assert!(usage.prompt_tokens > 5, "{usage:?}");
    assert!(
        usage.completion_tokens >= 1 && usage.completion_tokens <= 12,
        "{usage:?}"
    );
    assert_eq!(
        usage.total_tokens,
        usage.prompt_tokens + usage.completion_tokens
    );

    let mut stream_req = req.clone();
    stream_req.stream_options = Some(ChatCompletionStreamOptions {
        include_usage: true,
    });
    let mut stream = c.chat().create_stream(stream_req).await?;
    let (mut streamed, mut finish, mut stream_usage) = (String::new(), None, None);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if let Some(choice) = chunk.choices.first() {
            streamed.push_str(choice.delta.content.as_deref().unwrap_or(""));
            finish = finish.or(choice.finish_reason);
        }
        stream_usage = stream_usage.or(chunk.usage);
    }
    assert_eq!(
        streamed, text,
        "greedy stream and non-stream must produce the same text"
    );
    assert!(finish.is_some());
    let su = stream_usage.ok_or("include_usage must add a usage chunk")?;
    assert_eq!(
        (su.prompt_tokens, su.completion_tokens),
        (usage.prompt_tokens, usage.completion_tokens)
    );
    Ok(())
}

#[tokio::test]
async fn max_tokens_gives_finish_reason_length() -> TestResult {
    let server = Server::start(&[])?;
    let c = client(&server);
    let req = CreateChatCompletionRequestArgs::default()
        .model(MODEL_ID)
        .messages([user("Write a long story about a dragon.")?])
        .max_completion_tokens(5u32)
        .build()?;
    let resp = c.chat().create(req).await?;
    assert_eq!(resp.choices[0].finish_reason, Some(FinishReason::Length));
    assert_eq!(resp.usage.map(|u| u.completion_tokens), Some(5));
    Ok(())
}

#[tokio::test]
async fn completions_stream_and_not() -> TestResult {
    let server = Server::start(&[])?;
    let c = client(&server);
    let req = CreateCompletionRequestArgs::default()
        .model(MODEL_ID)
        .prompt("The capital of France is")
        .max_tokens(8u32)
        .temperature(0.0)
        .build()?;
    let resp = c.completions().create(req.clone()).await?;
    assert_eq!(resp.object, "text_completion");
    let text = resp.choices[0].text.clone();
    assert!(!text.is_empty());
    assert_eq!(resp.usage.map(|u| u.completion_tokens), Some(8));

    let mut stream = c.completions().create_stream(req).await?;
    let mut streamed = String::new();
    while let Some(chunk) = stream.next().await {
        streamed.push_str(
            &chunk?
                .choices
                .first()
                .map(|c| c.text.clone())
                .unwrap_or_default(),
        );
    }
    assert_eq!(streamed, text);
    Ok(())
}

#[tokio::test]
async fn stop_sequences_are_never_emitted() -> TestResult {
    let server = Server::start(&[])?;
    let prompt = "Count from one to twenty in words, separated by commas.";
    let full = greedy(&server, prompt, 40, json!({})).await?;
    let full_text = full["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    // A stop string from the middle of the greedy output, likely spanning a token boundary.
    let chars: Vec<char> = full_text.chars().collect();
    assert!(
        chars.len() > 12,
        "output too short to test stops: {full_text:?}"
    );
    let stop: String = chars[8..11].iter().collect();
    let expected_prefix = &full_text[..full_text.find(&stop).ok_or("stop not in text")?];
    for stream in [false, true] {
        let body = json!({"model": MODEL_ID, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 40, "temperature": 0, "stop": [stop.clone(), "never-appears"], "stream": stream});
        let r = reqwest::Client::new()
            .post(format!("{}/v1/chat/completions", server.url))
            .json(&body)
            .send()
            .await?;
        let (text, finish) = if stream {
            let body = r.text().await?;
            let mut text = String::new();
            let mut finish = String::new();
            for data in common::sse_data(&body) {
                if data == "[DONE]" {
                    continue;
                }
                let v: Value = serde_json::from_str(&data)?;
                text.push_str(v["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
                if let Some(f) = v["choices"][0]["finish_reason"].as_str() {
                    finish = f.to_string();
                }
            }
            (text, finish)
        } else {
            let v: Value = r.json().await?;
            let text = v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            (
                text,
                v["choices"][0]["finish_reason"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        };
        assert_eq!(text, expected_prefix, "stream={stream} stop={stop:?}");
        assert!(!text.contains(&stop));
        assert_eq!(finish, "stop");
    }
    Ok(())
}

#[tokio::test]
async fn same_seed_same_text() -> TestResult {
    let server = Server::start(&[])?;
    let sample = |seed: i64| {
        let server = &server;
        async move {
            let v = greedy(
                server,
                "Invent a name for a cat.",
                16,
                json!({"temperature": 1.0, "seed": seed}),
            )
            .await?;
            Ok::<String, reqwest::Error>(
                v["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        }
    };
    let a = sample(42).await?;
    let b = sample(42).await?;
    assert_eq!(a, b);
    let mut others = Vec::new();
    for seed in [1, 2, 3] {
        others.push(sample(seed).await?);
    }
    assert!(
        others.iter().any(|o| *o != a),
        "different seeds all gave {a:?}"
    );
    Ok(())
}

#[tokio::test]
async fn eight_concurrent_streams_all_complete() -> TestResult {
    let server = Server::start(&["--slots", "4"])?;
    let c = client(&server);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let req = CreateChatCompletionRequestArgs::default()
                .model(MODEL_ID)
                .messages([user(&format!("Tell me fact number {i} about the sea."))?])
                .max_tokens(24u32)
                .build()?;
            let mut stream = c.chat().create_stream(req).await?;
            let (mut text, mut finish) = (String::new(), None);
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                if let Some(choice) = chunk.choices.first() {
                    text.push_str(choice.delta.content.as_deref().unwrap_or(""));
                    finish = finish.or(choice.finish_reason);
                }
            }
            Ok::<_, async_openai::error::OpenAIError>((text, finish))
        }));
    }
    for t in tasks {
        let (text, finish) = t.await??;
        assert!(!text.is_empty());
        assert!(finish.is_some());
    }
    Ok(())
}

#[tokio::test]
async fn follow_up_turn_reuses_the_prompt_cache() -> TestResult {
    let server = Server::start(&["--slots", "2"])?;
    let first = json!([{"role": "system", "content": "You are a helpful assistant who answers briefly."},
        {"role": "user", "content": "What is the largest planet in the solar system? Explain in detail."}]);
    let r1 = post(
        &server,
        "/v1/chat/completions",
        json!({"model": MODEL_ID, "messages": first, "max_tokens": 20, "temperature": 0}),
    )
    .await?
    .1;
    let answer = r1["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let p1 = r1["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
    let mut second = first.as_array().cloned().unwrap_or_default();
    second.push(json!({"role": "assistant", "content": answer}));
    second.push(json!({"role": "user", "content": "And the smallest?"}));
    let r2 = post(
        &server,
        "/v1/chat/completions",
        json!({"model": MODEL_ID, "messages": second, "max_tokens": 8}),
    )
    .await?
    .1;
    let cached = r2["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        cached >= p1,
        "second turn should reuse at least the first prompt's {p1} tokens, reused {cached}: {r2}"
    );
    Ok(())
}

#[tokio::test]
async fn non_ascii_output_has_no_replacement_characters() -> TestResult {
    let server = Server::start(&[])?;
    let v = greedy(
        &server,
        "Write the word 'hello' in Japanese, Chinese, Russian and with three emoji.",
        48,
        json!({"stream": false}),
    )
    .await?;
    let text = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default();
    assert!(!text.contains('\u{FFFD}'), "{text:?}");
    assert!(!text.is_empty());
    Ok(())
}
