//! `logit_bias` and the sampling extensions (`top_k`, `min_p`,
//! `repetition_penalty`) against the real model, each checked for its effect.

mod common;
#[path = "common/sampling_client.rs"]
mod sampling_client;
#[path = "common/vocab.rs"]
mod vocab;

use common::{Server, TestResult, MODEL_ID};
use sampling_client::{chat, client, complete, post};
use serde_json::{json, Value};
use std::collections::HashMap;

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
