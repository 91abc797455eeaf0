//! Prompt forms and text edges through real clients: token-id and array
//! prompts on /v1/completions, multi-part chat content, a completion cut
//! inside a multi-byte character, and `GET /v1/models?` as Xcode sends it.

mod common;
#[path = "common/vocab.rs"]
mod vocab;

use async_openai::config::OpenAIConfig;
use async_openai::types::{CreateChatCompletionRequestArgs, CreateCompletionRequestArgs, Prompt};
use async_openai::Client;
use common::{client, Server, TestResult, MODEL_ID};
use futures::StreamExt;
use serde_json::{json, Value};
use std::io::{Read, Write};

async fn completion(
    c: &Client<OpenAIConfig>,
    prompt: Prompt,
    n: u8,
) -> Result<async_openai::types::CreateCompletionResponse, async_openai::error::OpenAIError> {
    let req = CreateCompletionRequestArgs::default()
        .model(MODEL_ID)
        .prompt(prompt)
        .max_tokens(8u32)
        .temperature(0.0)
        .n(n)
        .build()?;
    c.completions().create(req).await
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

#[tokio::test]
async fn token_id_and_array_prompts() -> TestResult {
    let server = Server::start(&["--slots", "2"])?;
    let c = client(&server);
    let vocab = vocab::vocab()?;
    let (sky, count) = ("The sky is", "1, 2, 3,");
    let single = |r: &async_openai::types::CreateCompletionResponse| r.choices[0].text.clone();
    let a = completion(&c, Prompt::String(sky.into()), 1).await?;
    let b = completion(&c, Prompt::String(count.into()), 1).await?;

    // Token ids go to the engine as they are: the same ids as the text gives the same answer.
    let ids: Vec<u16> = vocab.tokenize(sky).into_iter().map(|t| t as u16).collect();
    let by_ids = completion(&c, Prompt::IntegerArray(ids.clone()), 1).await?;
    assert_eq!(single(&by_ids), single(&a));
    let usage = |r: &async_openai::types::CreateCompletionResponse| {
        r.usage
            .clone()
            .map(|u| (u.prompt_tokens, u.completion_tokens))
    };
    assert_eq!(usage(&by_ids), usage(&a));
    assert_eq!(usage(&a).map(|u| u.0), Some(ids.len() as u32));

    // A list of prompts: one choice per prompt, times n, numbered prompt by prompt.
    let both = completion(&c, Prompt::StringArray(vec![sky.into(), count.into()]), 2).await?;
    let texts: Vec<(u32, String)> = both
        .choices
        .iter()
        .map(|c| (c.index, c.text.clone()))
        .collect();
    assert_eq!(
        texts,
        [
            (0, single(&a)),
            (1, single(&a)),
            (2, single(&b)),
            (3, single(&b))
        ]
    );
    let u = both.usage.ok_or("no usage")?;
    let (ua, ub) = (usage(&a).unwrap_or_default(), usage(&b).unwrap_or_default());
    assert_eq!(u.prompt_tokens, ua.0 + ub.0, "each prompt counted once");
    assert_eq!(u.completion_tokens, 2 * (ua.1 + ub.1));
    let lists = vec![
        ids,
        vocab
            .tokenize(count)
            .into_iter()
            .map(|t| t as u16)
            .collect(),
    ];
    let by_lists = completion(&c, Prompt::ArrayOfIntegerArray(lists), 1).await?;
    let texts: Vec<String> = by_lists.choices.iter().map(|c| c.text.clone()).collect();
    assert_eq!(texts, [single(&a), single(&b)]);

    // Streamed, the chunks name their choice.
    let req = json!({"model": MODEL_ID, "prompt": [sky, count], "max_tokens": 8, "temperature": 0, "stream": true});
    let body = reqwest::Client::new()
        .post(format!("{}/v1/completions", server.url))
        .json(&req)
        .send()
        .await?
        .text()
        .await?;
    let mut streamed = vec![String::new(); 2];
    for data in common::sse_data(&body)
        .iter()
        .filter(|d| d.as_str() != "[DONE]")
    {
        let v: Value = serde_json::from_str(data)?;
        for ch in v["choices"].as_array().into_iter().flatten() {
            let i = ch["index"].as_u64().unwrap_or(9) as usize;
            streamed[i].push_str(ch["text"].as_str().unwrap_or_default());
        }
    }
    assert_eq!(streamed, [single(&a), single(&b)]);

    for (prompt, why) in [
        (json!([1, 60000]), "outside the vocabulary"),
        (json!([-1]), "negative"),
        (json!([]), "empty"),
        (json!(["a", ""]), "an empty one"),
    ] {
        let (status, v) = post(
            &server,
            "/v1/completions",
            json!({"model": MODEL_ID, "prompt": prompt}),
        )
        .await?;
        assert_eq!(
            (status, v["error"]["param"].as_str()),
            (400, Some("prompt")),
            "{why}: {v}"
        );
    }
    for (field, value) in [
        ("echo", json!(true)),
        ("best_of", json!(3)),
        ("suffix", json!("x")),
    ] {
        let mut body = json!({"model": MODEL_ID, "prompt": "hi"});
        body[field] = value;
        let (status, v) = post(&server, "/v1/completions", body).await?;
        assert_eq!(
            (status, v["error"]["param"].as_str()),
            (400, Some(field)),
            "{v}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_completion_cut_inside_a_character_never_ends_in_a_replacement_character() -> TestResult {
    let server = Server::start(&["--slots", "2"])?;
    let c = client(&server);
    let prompt = json!([{"role": "user", "content": "Reply with three party emojis."}]);
    let ask = |max_tokens: u32, stream: bool| {
        json!({"model": MODEL_ID, "messages": prompt, "max_tokens": max_tokens, "temperature": 0,
               "logprobs": true, "stream": stream})
    };
    // Find, from the model's own tokens, where a character spans tokens, after a whole one.
    let (_, full) = post(&server, "/v1/chat/completions", ask(12, false)).await?;
    let tokens = full["choices"][0]["logprobs"]["content"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut bytes = Vec::new();
    let mut cut = None;
    for (k, t) in tokens.iter().enumerate() {
        bytes.extend(
            t["bytes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|b| b.as_u64())
                .map(|b| b as u8),
        );
        if let Err(e) = std::str::from_utf8(&bytes) {
            if e.error_len().is_none() && e.valid_up_to() > 0 {
                cut = Some((
                    k + 1,
                    String::from_utf8_lossy(&bytes[..e.valid_up_to()]).into_owned(),
                ));
                break;
            }
        }
    }
    let (max_tokens, whole) = cut.ok_or(format!("no character spans tokens in {full}"))?;
    assert!(!whole.is_empty() && !whole.contains('\u{FFFD}'));

    let (status, v) = post(
        &server,
        "/v1/chat/completions",
        ask(max_tokens as u32, false),
    )
    .await?;
    assert_eq!(status, 200);
    assert_eq!(
        v["choices"][0]["message"]["content"].as_str(),
        Some(whole.as_str()),
        "{v}"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    // Every token is still reported, the cut one included.
    assert_eq!(
        v["choices"][0]["logprobs"]["content"]
            .as_array()
            .map(Vec::len),
        Some(max_tokens)
    );

    let req = CreateChatCompletionRequestArgs::default()
        .model(MODEL_ID)
        .messages(vec![serde_json::from_value(prompt[0].clone())?])
        .max_tokens(max_tokens as u32)
        .temperature(0.0)
        .build()?;
    let mut stream = c.chat().create_stream(req).await?;
    let mut streamed = String::new();
    while let Some(chunk) = stream.next().await {
        for ch in chunk?.choices {
            streamed.push_str(&ch.delta.content.unwrap_or_default());
        }
    }
    assert_eq!(streamed, whole);
    Ok(())
}

#[tokio::test]
async fn text_parts_are_joined_by_a_newline_and_models_takes_a_bare_query() -> TestResult {
    let server = Server::start(&["--slots", "2"])?;
    let ask = |content: Value| json!({"model": MODEL_ID, "messages": [{"role": "user", "content": content}], "max_tokens": 8, "temperature": 0});
    let parts = json!([{"type": "text", "text": "Name a color."}, {"type": "text", "text": "Answer in one word."}]);
    let (_, by_parts) = post(&server, "/v1/chat/completions", ask(parts)).await?;
    let (_, joined) = post(
        &server,
        "/v1/chat/completions",
        ask(json!("Name a color.\nAnswer in one word.")),
    )
    .await?;
    assert_eq!(by_parts["choices"], joined["choices"]);
    assert_eq!(
        by_parts["usage"]["prompt_tokens"],
        joined["usage"]["prompt_tokens"]
    );

    // Xcode lists models with a trailing `?`; sent as raw bytes so no client tidies it up.
    let addr = server.url.trim_start_matches("http://").to_string();
    let mut sock = std::net::TcpStream::connect(&addr)?;
    sock.write_all(b"GET /v1/models? HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut answer = String::new();
    sock.read_to_string(&mut answer)?;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains(&format!("\"id\":\"{MODEL_ID}\"")),
        "{answer}"
    );
    Ok(())
}
