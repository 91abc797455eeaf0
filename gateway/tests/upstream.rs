//! Upstream deployments in front of a real OpenAI-compatible server: another
//! `herd serve` process on loopback serving SmolLM2. What a client gets
//! through the upstream deployment is what the upstream sent (events byte
//! for byte, ids and timestamps aside); the OpenAI SDK works through it as
//! through a local model; an alias spreads requests over a local and an
//! upstream deployment, and a full local queue falls back to the upstream.

mod common;
#[path = "common/fault.rs"]
mod fault;

use async_openai::config::OpenAIConfig;
use async_openai::types::{
    ChatCompletionRequestUserMessageArgs, ChatCompletionStreamOptions,
    CreateChatCompletionRequestArgs, CreateCompletionRequestArgs,
};
use async_openai::Client;
use common::{children, model_path, signal, sse_data, Server, TestResult, MODEL_ID};
use fault::FaultServer;
use futures::StreamExt;
use serde_json::{json, Value};

fn upstream_entry(id: &str, upstream: &Server) -> String {
    format!(
        "[[models]]\nid = \"{id}\"\nengine = \"upstream\"\nbase_url = \"{}\"\nupstream_model = \"{MODEL_ID}\"\n",
        upstream.v1()
    )
}

/// The value after `"key":` replaced by `0`, everywhere: ids and creation
/// times differ between two requests, everything else must not.
fn normalize(text: &str) -> String {
    let mut out = text.to_string();
    for key in ["\"id\":", "\"created\":"] {
        let mut from = 0;
        while let Some(at) = out[from..].find(key).map(|i| i + from + key.len()) {
            let end = if out[at..].starts_with('"') {
                out[at + 1..].find('"').map_or(out.len(), |i| at + i + 2)
            } else {
                out[at..].find([',', '}']).map_or(out.len(), |i| at + i)
            };
            out.replace_range(at..end, "0");
            from = at;
        }
    }
    out
}

async fn post(url: &str, path: &str, body: &Value) -> Result<(u16, String), reqwest::Error> {
    let r = reqwest::Client::new()
        .post(format!("{url}{path}"))
        .json(body)
        .send()
        .await?;
    Ok((r.status().as_u16(), r.text().await?))
}

#[tokio::test]
async fn streamed_events_are_the_upstreams_byte_for_byte() -> TestResult {
    let upstream = Server::start(&["--slots", "2"])?;
    let gateway = Server::start_config(&upstream_entry("remote", &upstream), &[], &[])?;
    let chat = json!({"messages": [{"role": "user", "content": "Name three colors."}],
        "max_tokens": 16, "temperature": 0});
    let cases = [
        (
            "/v1/chat/completions",
            chat.clone(),
            json!({"stream": true}),
        ),
        (
            "/v1/chat/completions",
            chat.clone(),
            json!({"stream": true, "stream_options": {"include_usage": true}}),
        ),
        ("/v1/chat/completions", chat, json!({"stream": false})),
        (
            "/v1/completions",
            json!({"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}),
            json!({"stream": true}),
        ),
    ];
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
        post(&upstream.url, path, &with(MODEL_ID)).await?;
        let (s1, direct) = post(&upstream.url, path, &with(MODEL_ID)).await?;
        let (s2, through) = post(&gateway.url, path, &with("remote")).await?;
        assert_eq!((s1, s2), (200, 200), "{path} {extra}: {through}");
        if extra["stream"] == true {
            let (d, t) = (sse_data(&direct), sse_data(&through));
            assert!(
                d.len() > 3 && d.last().is_some_and(|l| l == "[DONE]"),
                "{direct}"
            );
            let d: Vec<String> = d.iter().map(|e| normalize(e)).collect();
            let t: Vec<String> = t.iter().map(|e| normalize(e)).collect();
            assert_eq!(t, d, "{path} {extra}");
        } else {
            assert_eq!(normalize(&through), normalize(&direct), "{path}");
        }
    }
    // The upstream's tokens are counted under the upstream deployment: a
    // third of what the upstream counted (warm-up, direct, through herd).
    let sample = |metrics: &str, series: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let ours = reqwest::get(format!("{}/metrics", gateway.url))
        .await?
        .text()
        .await?;
    let theirs = reqwest::get(format!("{}/metrics", upstream.url))
        .await?
        .text()
        .await?;
    for kind in ["generation", "prompt"] {
        let counted = sample(
            &ours,
            &format!("herd_{kind}_tokens_total{{model=\"remote\"}}"),
        );
        let upstream_counted = sample(
            &theirs,
            &format!("herd_{kind}_tokens_total{{model=\"{MODEL_ID}\"}}"),
        );
        assert!(counted > 0.0, "{ours}");
        assert_eq!(counted * 3.0, upstream_counted, "{kind} tokens");
    }
    Ok(())
}

#[tokio::test]
async fn the_openai_sdk_works_through_an_upstream_as_through_a_local_model() -> TestResult {
    let upstream = Server::start(&["--slots", "2"])?;
    let gateway = Server::start_config(&upstream_entry("remote", &upstream), &[], &[])?;
    let client = |server: &Server| {
        Client::with_config(
            OpenAIConfig::new()
                .with_api_base(server.v1())
                .with_api_key("unused"),
        )
    };
    let ask = CreateChatCompletionRequestArgs::default()
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content("Name three rivers.")
            .build()?
            .into()])
        .max_tokens(12u32)
        .temperature(0.0)
        .build()?;
    let mut texts = Vec::new();
    for (server, model) in [(&upstream, MODEL_ID), (&gateway, "remote")] {
        let c = client(server);
        let mut req = ask.clone();
        req.model = model.into();
        let resp = c.chat().create(req.clone()).await?;
        let text = resp.choices[0].message.content.clone().unwrap_or_default();
        let usage = resp.usage.ok_or("usage missing")?;
        assert!(
            usage.completion_tokens >= 1 && usage.prompt_tokens > 5,
            "{usage:?}"
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
            streamed_usage.map(|u| u.completion_tokens),
            Some(usage.completion_tokens)
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
        texts.push((text, completion.choices[0].text.clone()));
        // An error from the upstream reaches the SDK as the upstream's error.
        let mut too_long = ask.clone();
        too_long.model = model.into();
        too_long.max_completion_tokens = Some(100_000);
        match c.chat().create(too_long).await {
            Err(async_openai::error::OpenAIError::ApiError(e)) => {
                texts.push((e.message, e.code.map(|c| c.to_string()).unwrap_or_default()));
            }
            other => return Err(format!("{model}: expected an API error, got {other:?}").into()),
        }
    }
    assert_eq!(
        texts[0], texts[2],
        "the same greedy text directly and through herd"
    );
    assert_eq!(
        texts[1], texts[3],
        "the same error directly and through herd"
    );
    Ok(())
}

#[tokio::test]
async fn an_alias_spreads_over_local_and_upstream_and_a_full_queue_falls_back() -> TestResult {
    let upstream = Server::start(&["--slots", "4"])?;
    let config = format!(
        "[[models]]\nid = \"local\"\npath = \"{}\"\nslots = 1\nmax_queue = 0\nfallbacks = [\"remote\"]\n{}\
         [[aliases]]\nname = \"smol\"\npolicy = \"weighted_round_robin\"\ntargets = [{{ model = \"local\" }}, {{ model = \"remote\" }}]\n",
        model_path().display(),
        upstream_entry("remote", &upstream)
    );
    let gateway = Server::start_config(&config, &["--threads", "1"], &[])?;
    let models: Value = reqwest::get(format!("{}/v1/models", gateway.url))
        .await?
        .json()
        .await?;
    let ids: Vec<&str> = models["data"]
        .as_array()
        .map(|d| d.iter().filter_map(|m| m["id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(ids, ["local", "remote", "smol"]);
    let body = |model: &str, max_tokens: u32| {
        json!({"model": model, "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": "Write a long story about a dragon."}]})
    };
    // Weighted round robin, weights 1:1: every other request goes upstream.
    let mut models_seen = Vec::new();
    for _ in 0..4 {
        let (status, text) = post(&gateway.url, "/v1/chat/completions", &body("smol", 4)).await?;
        assert_eq!(status, 200, "{text}");
        let v: Value = serde_json::from_str(&text)?;
        // Local answers name the deployment; the upstream's name its own model.
        models_seen.push(v["model"].as_str().unwrap_or_default().to_string());
    }
    models_seen.sort();
    assert_eq!(models_seen, ["local", "local", MODEL_ID, MODEL_ID]);
    // One slot and no queue: concurrent requests beyond the first are 429
    // locally, so they go to the upstream instead.
    let long = body("local", 48);
    let answers = futures::future::join_all(
        (0..3).map(|_| post(&gateway.url, "/v1/chat/completions", &long)),
    )
    .await;
    for a in answers {
        let (status, text) = a?;
        assert_eq!(status, 200, "{text}");
    }
    let metrics = reqwest::get(format!("{}/metrics", gateway.url))
        .await?
        .text()
        .await?;
    let fell_back = metrics
        .lines()
        .find(|l| l.starts_with("herd_backend_fallbacks_total{model=\"local\",to=\"remote\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(fell_back >= 1.0, "{metrics}");
    assert!(metrics.contains("herd_backend_failures_total{model=\"local\",reason=\"overloaded\"}"));
    Ok(())
}

#[tokio::test]
async fn an_engine_that_dies_before_its_first_token_falls_back() -> TestResult {
    let outside = FaultServer::start("outside").await?;
    let config = format!(
        "[[models]]\nid = \"local\"\npath = \"{}\"\nfallbacks = [\"outside\"]\n\
         [[models]]\nid = \"outside\"\nengine = \"upstream\"\nbase_url = \"{}\"\nprobe_path = \"\"\n",
        model_path().display(),
        outside.base_url
    );
    let gateway = Server::start_config(&config, &["--threads", "1"], &[])?;
    // A long prompt: the engine host is still reading it when it dies.
    let prompt = "the quick brown fox jumps over the lazy dog ".repeat(250);
    let body = json!({"model": "local", "max_tokens": 1,
        "messages": [{"role": "user", "content": prompt}]});
    let url = gateway.url.clone();
    let asked = tokio::spawn(async move { post(&url, "/v1/chat/completions", &body).await });
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    for host in children(gateway.pid()) {
        signal(host, "-KILL")?;
    }
    let (status, text) = asked.await??;
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text)?;
    assert_eq!(
        v["choices"][0]["message"]["content"], "hello from outside",
        "{text}"
    );
    assert_eq!(outside.hits(), 1);
    Ok(())
}
