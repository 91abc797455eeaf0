//! Sampling parity through async-openai (and raw JSON for the extensions no
//! SDK types): logprobs, `n`, `logit_bias`, `top_k`, `min_p` and
//! `repetition_penalty`, each checked for its effect on the real model's
//! output, not only for being accepted.

mod common;
#[path = "common/vocab.rs"]
mod vocab;

use async_openai::config::OpenAIConfig;
use async_openai::types::{
    ChatCompletionRequestMessage, ChatCompletionRequestUserMessageArgs, ChatCompletionTokenLogprob,
    CreateChatCompletionRequest, CreateChatCompletionRequestArgs, CreateCompletionRequestArgs,
};
use async_openai::Client;
use common::{Server, TestResult, MODEL_ID};
use futures::StreamExt;
use serde_json::{json, Value};
use std::collections::HashMap;

fn client(server: &Server) -> Client<OpenAIConfig> {
    Client::with_config(
        OpenAIConfig::new()
            .with_api_base(server.v1())
            .with_api_key("unused"),
    )
}

fn user(text: &str) -> Result<ChatCompletionRequestMessage, async_openai::error::OpenAIError> {
    Ok(ChatCompletionRequestUserMessageArgs::default()
        .content(text)
        .build()?
        .into())
}

fn chat(
    prompt: &str,
    max_tokens: u32,
) -> Result<CreateChatCompletionRequestArgs, async_openai::error::OpenAIError> {
    let mut args = CreateChatCompletionRequestArgs::default();
    args.model(MODEL_ID)
        .messages([user(prompt)?])
        .max_tokens(max_tokens);
    Ok(args)
}

/// Every choice's text and logprobs of a streamed chat, by index.
async fn stream_choices(
    c: &Client<OpenAIConfig>,
    req: CreateChatCompletionRequest,
) -> Result<Vec<(String, Vec<ChatCompletionTokenLogprob>)>, Box<dyn std::error::Error + Send + Sync>>
{
    let mut stream = c.chat().create_stream(req).await?;
    let mut out: Vec<(String, Vec<ChatCompletionTokenLogprob>)> = Vec::new();
    while let Some(chunk) = stream.next().await {
        for choice in chunk?.choices {
            let i = choice.index as usize;
            if out.len() <= i {
                out.resize(i + 1, (String::new(), Vec::new()));
            }
            out[i].0.push_str(&choice.delta.content.unwrap_or_default());
            if let Some(content) = choice.logprobs.and_then(|l| l.content) {
                out[i].1.extend(content);
            }
        }
    }
    Ok(out)
}

async fn post(server: &Server, path: &str, body: Value) -> Result<(u16, Value), reqwest::Error> {
    let r = reqwest::Client::new()
        .post(format!("{}{path}", server.url))
        .json(&body)
        .send()
        .await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await?))
}

/// A completion's text, with `extra` fields in the body.
async fn complete(
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

#[tokio::test]
async fn chat_logprobs_are_the_models_and_the_stream_carries_the_same() -> TestResult {
    let server = Server::start(&["--slots", "2"])?;
    let c = client(&server);
    let req = chat("Name three colors.", 10)?
        .temperature(0.0)
        .logprobs(true)
        .top_logprobs(5u8)
        .build()?;
    let resp = c.chat().create(req.clone()).await?;
    let choice = &resp.choices[0];
    let tokens = choice
        .logprobs
        .clone()
        .and_then(|l| l.content)
        .ok_or("no logprobs")?;
    let usage = resp.usage.ok_or("no usage")?;
    assert_eq!(
        tokens.len() as u32,
        usage.completion_tokens,
        "one entry per generated token"
    );
    let bytes: Vec<u8> = tokens
        .iter()
        .flat_map(|t| t.bytes.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        Some(String::from_utf8_lossy(&bytes).into_owned()),
        choice.message.content
    );
    for t in &tokens {
        assert!(t.logprob <= 0.0, "{t:?}");
        assert_eq!(t.top_logprobs.len(), 5, "{t:?}");
        assert!(
            t.top_logprobs
                .windows(2)
                .all(|w| w[0].logprob >= w[1].logprob),
            "sorted: {t:?}"
        );
        // Greedy picks the most likely token: the first alternative is the chosen one.
        assert_eq!(t.top_logprobs[0].token, t.token, "{t:?}");
        assert!((t.top_logprobs[0].logprob - t.logprob).abs() < 1e-6);
        let mass: f32 = t.top_logprobs.iter().map(|a| a.logprob.exp()).sum();
        assert!(
            mass <= 1.0 + 1e-4 && mass > 0.05,
            "a real distribution: {mass}"
        );
    }
    // Not a constant: the model is less sure of some tokens than of others.
    assert!(tokens.iter().any(|t| t.logprob < -0.01), "{tokens:?}");

    let streamed = stream_choices(&c, req).await?;
    assert_eq!(streamed.len(), 1);
    assert_eq!(Some(streamed[0].0.clone()), choice.message.content);
    let (a, b) = (&streamed[0].1, &tokens);
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.token, y.token);
        assert!((x.logprob - y.logprob).abs() < 1e-4, "{x:?} vs {y:?}");
    }

    // Without `logprobs` there are none; `top_logprobs` alone, or over 20, is a 400.
    let plain = c.chat().create(chat("Hi", 2)?.build()?).await?;
    assert!(plain.choices[0].logprobs.is_none());
    let base = json!({"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}]});
    for (extra, param) in [
        (json!({"top_logprobs": 3}), "top_logprobs"),
        (
            json!({"logprobs": true, "top_logprobs": 21}),
            "top_logprobs",
        ),
    ] {
        let mut body = base.clone();
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let (status, v) = post(&server, "/v1/chat/completions", body).await?;
        assert_eq!(
            (status, v["error"]["param"].as_str()),
            (400, Some(param)),
            "{v}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn completion_logprobs_line_up_with_the_text() -> TestResult {
    let server = Server::start(&["--slots", "2"])?;
    let c = client(&server);
    let req = CreateCompletionRequestArgs::default()
        .model(MODEL_ID)
        .prompt("The sky is")
        .max_tokens(8u32)
        .temperature(0.0)
        .logprobs(3u8)
        .build()?;
    let resp = c.completions().create(req).await?;
    let choice = &resp.choices[0];
    let lp = choice.logprobs.clone().ok_or("no logprobs")?;
    assert_eq!(lp.tokens.len(), 8);
    assert_eq!(
        (
            lp.token_logprobs.len(),
            lp.top_logprobs.len(),
            lp.text_offset.len()
        ),
        (8, 8, 8)
    );
    assert_eq!(lp.tokens.concat(), choice.text);
    let mut offset = 0u32;
    for (i, token) in lp.tokens.iter().enumerate() {
        assert_eq!(lp.text_offset[i], offset, "{lp:?}");
        offset += token.chars().count() as u32;
        let logprob = lp.token_logprobs[i].ok_or("null logprob")?;
        assert!(logprob <= 0.0);
        let top: HashMap<String, f32> = serde_json::from_value(lp.top_logprobs[i].clone())?;
        assert!((3..=4).contains(&top.len()), "{top:?}");
        assert_eq!(
            top.get(token),
            Some(&logprob),
            "the sampled token is among them"
        );
        assert!(
            top.values().all(|&l| l <= logprob + 1e-6),
            "greedy took the most likely"
        );
    }
    Ok(())
}

#[tokio::test]
async fn n_choices_share_the_prompt_and_each_samples_on_its_own() -> TestResult {
    let server = Server::start(&["--slots", "4"])?;
    let c = client(&server);
    let prompt = "Write a short story about a dragon.";
    let one = c
        .chat()
        .create(chat(prompt, 12)?.temperature(0.0).build()?)
        .await?;
    let greedy = one.choices[0].message.content.clone();
    let one_usage = one.usage.ok_or("no usage")?;

    // Temperature 0: three identical choices, each what n = 1 gives (the copied KV is right).
    let three = c
        .chat()
        .create(chat(prompt, 12)?.temperature(0.0).n(3u8).build()?)
        .await?;
    let indices: Vec<u32> = three.choices.iter().map(|c| c.index).collect();
    assert_eq!(indices, [0, 1, 2]);
    assert!(
        three.choices.iter().all(|c| c.message.content == greedy),
        "{three:?}"
    );
    let usage = three.usage.ok_or("no usage")?;
    assert_eq!(
        usage.prompt_tokens, one_usage.prompt_tokens,
        "the prompt counts once"
    );
    assert_eq!(usage.completion_tokens, 3 * one_usage.completion_tokens);

    // Temperature 1 with a seed: three different choices, the same three again for the same seed.
    let seeded = chat(prompt, 16)?
        .temperature(1.0)
        .seed(7)
        .n(3u8)
        .logprobs(true)
        .build()?;
    let a = c.chat().create(seeded.clone()).await?;
    let texts: Vec<_> = a
        .choices
        .iter()
        .map(|c| c.message.content.clone())
        .collect();
    assert!(
        texts[0] != texts[1] && texts[1] != texts[2] && texts[0] != texts[2],
        "{texts:?}"
    );
    let counted: usize = a
        .choices
        .iter()
        .map(|c| {
            c.logprobs
                .clone()
                .and_then(|l| l.content)
                .map_or(0, |v| v.len())
        })
        .sum();
    assert_eq!(
        a.usage.ok_or("no usage")?.completion_tokens as usize,
        counted
    );
    let again = c.chat().create(seeded).await?;
    let texts_again: Vec<_> = again
        .choices
        .iter()
        .map(|c| c.message.content.clone())
        .collect();
    assert_eq!(texts, texts_again, "each choice's sampler is seeded");

    // Streamed: every chunk names its choice; greedy choices agree with the non-streamed one.
    let streamed = stream_choices(&c, chat(prompt, 12)?.temperature(0.0).n(3u8).build()?).await?;
    assert_eq!(streamed.len(), 3);
    assert!(
        streamed.iter().all(|(t, _)| Some(t) == greedy.as_ref()),
        "{streamed:?}"
    );

    // More choices than slots (4 here) cannot run at once: 400, not a wait for ever.
    let body = json!({"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "n": 5});
    let (status, v) = post(&server, "/v1/chat/completions", body).await?;
    assert_eq!(
        (status, v["error"]["param"].as_str()),
        (400, Some("n")),
        "{v}"
    );
    Ok(())
}

#[tokio::test]
async fn the_configured_max_n_is_enforced() -> TestResult {
    let config = format!(
        "[[models]]\nid = \"{MODEL_ID}\"\npath = \"{}\"\nslots = 4\nmax_n = 2\n",
        common::model_path().display()
    );
    let server = Server::start_config(&config, &["--threads", "1"], &[])?;
    let body = |n: u32| json!({"model": MODEL_ID, "prompt": "hi", "max_tokens": 2, "n": n});
    let (status, v) = post(&server, "/v1/completions", body(2)).await?;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"].as_array().map(Vec::len), Some(2));
    let (status, v) = post(&server, "/v1/completions", body(3)).await?;
    assert_eq!(
        (status, v["error"]["param"].as_str()),
        (400, Some("n")),
        "{v}"
    );
    Ok(())
}

#[tokio::test]
async fn logit_bias_bans_and_forces_tokens() -> TestResult {
    let server = Server::start(&["--slots", "2"])?;
    let vocab = vocab::vocab()?;
    let c = client(&server);
    let prompt = "Name three colors.";
    let greedy = c
        .chat()
        .create(chat(prompt, 6)?.temperature(0.0).logprobs(true).build()?)
        .await?;
    let first = greedy.choices[0]
        .logprobs
        .clone()
        .and_then(|l| l.content)
        .ok_or("no logprobs")?;
    let first_bytes = first[0].bytes.clone().unwrap_or_default();
    let banned = vocab
        .id_of(&first_bytes)
        .ok_or("first token not in vocab")?;

    let bias = |id: i32, b: i32| HashMap::from([(id.to_string(), json!(b))]);
    let req = chat(prompt, 6)?
        .temperature(0.0)
        .logprobs(true)
        .logit_bias(bias(banned, -100))
        .build()?;
    let resp = c.chat().create(req).await?;
    let tokens = resp.choices[0]
        .logprobs
        .clone()
        .and_then(|l| l.content)
        .ok_or("no logprobs")?;
    assert_ne!(
        tokens[0].bytes, first[0].bytes,
        "the greedy first token is banned"
    );
    assert!(
        tokens
            .iter()
            .all(|t| t.bytes.as_deref() != Some(&first_bytes[..])),
        "{tokens:?}"
    );

    let forced = vocab
        .id_of(b" banana")
        .or_else(|| vocab.id_of(b" the"))
        .ok_or("no token")?;
    let piece = String::from_utf8(vocab.piece(forced))?;
    let req = chat(prompt, 4)?
        .temperature(1.0)
        .logit_bias(bias(forced, 100))
        .build()?;
    let resp = c.chat().create(req).await?;
    assert_eq!(resp.choices[0].message.content, Some(piece.repeat(4)));

    for (b, why) in [
        (json!({"60000": 5}), "out of the vocabulary"),
        (json!({"5": 101}), "over 100"),
        (json!({"x": 1}), "not an id"),
    ] {
        let body = json!({"model": MODEL_ID, "prompt": "hi", "logit_bias": b});
        let (status, v) = post(&server, "/v1/completions", body).await?;
        assert_eq!(
            (status, v["error"]["param"].as_str()),
            (400, Some("logit_bias")),
            "{why}: {v}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn top_k_min_p_and_repetition_penalty_change_the_output() -> TestResult {
    let server = Server::start(&["--slots", "2"])?;
    let prompt = "Once upon a time, in a small village,";
    let greedy = complete(&server, prompt, 16, json!({"temperature": 0})).await?;
    let hot = json!({"temperature": 1.5, "seed": 3});
    let sampled = complete(&server, prompt, 16, hot.clone()).await?;
    assert_ne!(
        sampled, greedy,
        "at temperature 1.5 the seed's draw is not greedy"
    );
    let with = |k: &str, v: Value| {
        let mut e = hot.clone();
        e[k] = v;
        e
    };
    // Only the most likely token is left: any temperature gives the greedy text.
    assert_eq!(
        complete(&server, prompt, 16, with("top_k", json!(1))).await?,
        greedy
    );
    assert_eq!(
        complete(&server, prompt, 16, with("min_p", json!(1.0))).await?,
        greedy
    );
    // A looser min_p still cuts the tail: not the unconstrained draw.
    assert_ne!(
        complete(&server, prompt, 16, with("min_p", json!(0.3))).await?,
        sampled
    );

    let looping = "1, 1, 1, 1, 1, 1, 1, 1, 1, 1,";
    let plain = complete(&server, looping, 16, json!({"temperature": 0})).await?;
    let penalized = complete(
        &server,
        looping,
        16,
        json!({"temperature": 0, "repetition_penalty": 1.5}),
    )
    .await?;
    let ones = |t: &str| t.matches('1').count();
    assert!(
        ones(&penalized) < ones(&plain),
        "{plain:?} vs {penalized:?}"
    );

    for (k, v) in [
        ("top_k", json!(-2)),
        ("min_p", json!(1.5)),
        ("repetition_penalty", json!(0)),
        ("repetition_penalty", json!(3)),
    ] {
        let mut body = json!({"model": MODEL_ID, "prompt": "hi"});
        body[k] = v;
        let (status, e) = post(&server, "/v1/completions", body).await?;
        assert_eq!(
            (status, e["error"]["param"].as_str()),
            (400, Some(k)),
            "{e}"
        );
    }
    Ok(())
}
