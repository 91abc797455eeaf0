//! Sampling parity through async-openai: logprobs and `n`, each checked for
//! its effect on the real model's output, not only for being accepted
//! (`logit_bias` and the extensions are in sampling_bias.rs).

mod common;
#[path = "common/sampling_client.rs"]
mod sampling_client;

use async_openai::config::OpenAIConfig;
use async_openai::types::{
    ChatCompletionTokenLogprob, CreateChatCompletionRequest, CreateCompletionRequestArgs,
};
use async_openai::Client;
use common::{Server, TestResult, MODEL_ID};
use futures::StreamExt;
use sampling_client::{chat, client, post};
use serde_json::json;
use std::collections::HashMap;

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

#[tokio::test]
async fn chat_logprobs_are_the_models_and_the_stream_carries_the_same() -> TestResult {
    // One slot, warmed first: the two answers compared below then both decode
    // the prompt's last token alone from the cache. A cold prompt's logits come
    // from a batched decode whose float sums differ in the last digits, enough
    // to move a logprob past the tolerance (seen once in a CI run).
    let server = Server::start(&["--slots", "1"])?;
    let c = client(&server);
    let req = chat("Name three colors.", 10)?
        .temperature(0.0)
        .logprobs(true)
        .top_logprobs(5u8)
        .build()?;
    c.chat().create(req.clone()).await?;
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
