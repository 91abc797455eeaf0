//! An upstream deployment in front of llama.cpp's own `llama-server` on
//! loopback, serving SmolLM2: what a client gets through herd is what
//! llama-server sent (events byte for byte; ids, creation times and
//! llama-server's `timings` aside), herd counts llama-server's usage, the
//! OpenAI SDK works through it, and llama-server's errors come back with
//! its status in OpenAI's shape. The first run on a machine builds
//! llama-server (common/llama_server.rs); later runs take seconds.

mod common;
#[path = "common/llama_server.rs"]
mod llama_server;
#[path = "common/upstream_client.rs"]
mod upstream_client;

use async_openai::config::OpenAIConfig;
use async_openai::types::{
    ChatCompletionRequestUserMessageArgs, ChatCompletionStreamOptions,
    CreateChatCompletionRequestArgs, CreateCompletionRequestArgs,
};
use async_openai::Client;
use common::{sse_data, Server, TestResult, MODEL_ID};
use futures::StreamExt;
use llama_server::LlamaServer;
use serde_json::{json, Value};
use upstream_client::{metric, post, without};

/// What differs between two answers to one request: ids, creation times, and
/// llama-server's own `timings` (measured per request). llama-server puts
/// `timings` on its last chunk; when herd asked for usage on the client's
/// behalf, that is the usage chunk herd drops again, so such a stream
/// arrives without them.
const PER_REQUEST: [&str; 3] = ["id", "created", "timings"];

/// llama-server with one 512-token slot, and herd with an upstream
/// deployment `llama` in front of it.
fn pair() -> Result<(LlamaServer, Server), String> {
    let llama = LlamaServer::start(512)?;
    let config = format!(
        "[[models]]\nid = \"llama\"\nengine = \"upstream\"\nbase_url = \"{}\"\nupstream_model = \"{MODEL_ID}\"\n",
        llama.v1()
    );
    let herd = Server::start_config(&config, &[], &[])?;
    Ok((llama, herd))
}

/// `(prompt_tokens, completion_tokens)` of an answer: a JSON body's usage,
/// or the last usage in a stream.
fn usage(answer: &str) -> Option<(f64, f64)> {
    let read = |v: &Value| {
        Some((
            v["prompt_tokens"].as_f64()?,
            v["completion_tokens"].as_f64()?,
        ))
    };
    match serde_json::from_str::<Value>(answer) {
        Ok(v) => read(&v["usage"]),
        Err(_) => sse_data(answer).iter().rev().find_map(|e| {
            let v: Value = serde_json::from_str(e).ok()?;
            read(&v["usage"])
        }),
    }
}

#[tokio::test]
async fn answers_are_llama_servers_byte_for_byte_and_its_usage_is_counted() -> TestResult {
    let (llama, herd) = pair()?;
    let chat = json!({"messages": [{"role": "user", "content": "Name three colors."}],
        "max_tokens": 16, "temperature": 0});
    let text = json!({"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0});
    let with_usage = json!({"stream": true, "stream_options": {"include_usage": true}});
    let cases = [
        ("/v1/chat/completions", &chat, with_usage.clone()),
        ("/v1/chat/completions", &chat, json!({"stream": true})),
        ("/v1/chat/completions", &chat, json!({"stream": false})),
        ("/v1/completions", &text, json!({"stream": true})),
        ("/v1/completions", &text, json!({"stream": false})),
    ];
    let (mut counted, mut last) = ((0.0, 0.0), None);
    for (path, base, extra) in cases {
        let with = |model: &str| {
            let mut b = base.clone();
            if let (Some(b), Some(e)) = (b.as_object_mut(), extra.as_object()) {
                b.extend(e.clone());
                b.insert("model".into(), json!(model));
            }
            b
        };
        // The same KV-cache state for both: a warm-up, then direct, then through herd.
        post(&llama.url, path, &with(MODEL_ID)).await?;
        let (s1, direct) = post(&llama.url, path, &with(MODEL_ID)).await?;
        let (s2, through) = post(&herd.url, path, &with("llama")).await?;
        assert_eq!((s1, s2), (200, 200), "{path} {extra}: {direct}\n{through}");
        if extra["stream"] == true {
            let (d, t) = (sse_data(&direct), sse_data(&through));
            assert!(
                d.len() > 3 && d.last().is_some_and(|l| l == "[DONE]"),
                "{direct}"
            );
            let d: Vec<String> = d.iter().map(|e| without(e, &PER_REQUEST)).collect();
            let t: Vec<String> = t.iter().map(|e| without(e, &PER_REQUEST)).collect();
            assert_eq!(t, d, "{path} {extra}");
        } else {
            assert_eq!(
                without(&through, &PER_REQUEST),
                without(&direct, &PER_REQUEST),
                "{path}"
            );
            let (d, t): (Value, Value) = (
                serde_json::from_str(&direct)?,
                serde_json::from_str(&through)?,
            );
            let choice = &t["choices"][0];
            let content = choice["message"]["content"]
                .as_str()
                .or(choice["text"].as_str());
            assert!(content.is_some_and(|c| !c.is_empty()), "{through}");
            assert_eq!(choice, &d["choices"][0], "content and finish_reason");
            assert_eq!(t["usage"], d["usage"]);
        }
        // A stream without usage shows none to the client (herd asked for it
        // and dropped it): the same prompt and greedy tokens as the case before.
        let (prompt, completion) = usage(&through)
            .or(last)
            .ok_or(format!("{path} {extra}: no usage in {through}"))?;
        last = Some((prompt, completion));
        counted = (counted.0 + prompt, counted.1 + completion);
    }
    // herd counted exactly the tokens llama-server reported to it.
    for (kind, expected) in [("prompt", counted.0), ("generation", counted.1)] {
        let series = format!("herd_{kind}_tokens_total{{model=\"llama\"}}");
        assert_eq!(metric(&herd, &series).await?, expected, "{series}");
    }
    Ok(())
}

#[tokio::test]
async fn the_openai_sdk_works_through_herd_as_against_llama_server() -> TestResult {
    let (llama, herd) = pair()?;
    let client = |v1: String| {
        Client::with_config(OpenAIConfig::new().with_api_base(v1).with_api_key("unused"))
    };
    let ask = CreateChatCompletionRequestArgs::default()
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content("Name three rivers.")
            .build()?
            .into()])
        .max_tokens(12u32)
        .temperature(0.0)
        .build()?;
    let mut answers = Vec::new();
    for (v1, model) in [(llama.v1(), MODEL_ID), (herd.v1(), "llama")] {
        let c = client(v1);
        let mut req = ask.clone();
        req.model = model.into();
        let resp = c.chat().create(req.clone()).await?;
        let text = resp.choices[0].message.content.clone().unwrap_or_default();
        let usage = resp.usage.ok_or("usage missing")?;
        assert!(
            !text.is_empty() && usage.completion_tokens >= 1 && usage.prompt_tokens > 5,
            "{model}: {text:?} {usage:?}"
        );
        req.stream_options = Some(ChatCompletionStreamOptions {
            include_usage: true,
        });
        let mut stream = c.chat().create_stream(req).await?;
        let (mut streamed, mut streamed_usage) = (String::new(), None);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if let Some(choice) = chunk.choices.first() {
                streamed.push_str(choice.delta.content.as_deref().unwrap_or(""));
            }
            streamed_usage = streamed_usage.or(chunk.usage);
        }
        assert_eq!(streamed, text, "{model}: stream and non-stream agree");
        assert_eq!(
            streamed_usage.map(|u| (u.prompt_tokens, u.completion_tokens)),
            Some((usage.prompt_tokens, usage.completion_tokens))
        );
        let completion = c
            .completions()
            .create(
                CreateCompletionRequestArgs::default()
                    .model(model)
                    .prompt("Once upon a time")
                    .max_tokens(6u32)
                    .temperature(0.0)
                    .build()?,
            )
            .await?;
        answers.push((text, completion.choices[0].text.clone()));
    }
    assert_eq!(
        answers[0], answers[1],
        "the same greedy text directly and through herd"
    );
    // llama-server's own error body has a numeric `code` the SDK cannot
    // read; through herd the same error arrives readable.
    let mut too_long = ask.clone();
    too_long.model = "llama".into();
    too_long.messages = vec![ChatCompletionRequestUserMessageArgs::default()
        .content(long_prompt())
        .build()?
        .into()];
    match client(herd.v1()).chat().create(too_long).await {
        Err(async_openai::error::OpenAIError::ApiError(e)) => assert!(
            e.message.contains("exceeds the available context size"),
            "{e:?}"
        ),
        other => return Err(format!("expected an API error, got {other:?}").into()),
    }
    Ok(())
}

/// Far more than llama-server's 512-token context.
fn long_prompt() -> String {
    "the quick brown fox jumps over the lazy dog ".repeat(120)
}

#[tokio::test]
async fn llama_servers_errors_come_back_with_its_status_in_openais_shape() -> TestResult {
    let (llama, herd) = pair()?;
    for stream in [false, true] {
        let body = |model: &str| {
            json!({"model": model, "stream": stream, "max_tokens": 4,
                "messages": [{"role": "user", "content": long_prompt()}]})
        };
        let (s1, direct) = post(&llama.url, "/v1/chat/completions", &body(MODEL_ID)).await?;
        let (s2, through) = post(&herd.url, "/v1/chat/completions", &body("llama")).await?;
        assert_eq!(s1, 400, "{direct}");
        assert_eq!(s2, s1, "stream: {stream}: {through}");
        let direct: Value = serde_json::from_str(&direct)?;
        let message = direct["error"]["message"].as_str().ok_or("no message")?;
        assert!(
            message.contains("exceeds the available context size"),
            "{direct}"
        );
        // OpenAI's shape, as its clients read it: the SDK's own error type.
        let through: Value = serde_json::from_str(&through)?;
        let e: async_openai::error::ApiError = serde_json::from_value(through["error"].clone())
            .map_err(|e| format!("not OpenAI's error shape ({e}): {through}"))?;
        assert!(e.message.contains(message), "{e:?}");
        assert_eq!(e.r#type.as_deref(), Some("invalid_request_error"), "{e:?}");
    }
    // A request's own fault: counted as such, and the upstream still up.
    let series = "herd_backend_failures_total{model=\"llama\",reason=\"status_4xx\"}";
    assert_eq!(metric(&herd, series).await?, 2.0);
    assert_eq!(
        metric(&herd, "herd_backend_up{model=\"llama\"}").await?,
        1.0
    );
    Ok(())
}
