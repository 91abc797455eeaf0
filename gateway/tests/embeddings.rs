//! `/v1/embeddings` against a real `herd serve` with the real all-MiniLM-L6-v2
//! (converted to GGUF by `.ci/setup`), through async-openai and raw HTTP. The
//! vectors are checked against an independent numpy implementation of the
//! model (`embeddings/reference.py`, run on the original safetensors in the
//! venv `.ci/setup` makes), not against another llama.cpp run.

mod common;
#[path = "common/llama_server.rs"]
#[expect(
    dead_code,
    reason = "this test starts llama-server with its own model only"
)]
mod llama_server;

use async_openai::types::{CreateEmbeddingRequestArgs, EmbeddingInput, EncodingFormat};
use common::{client, Server, TestResult};
use serde_json::{json, Value};
use std::path::PathBuf;

fn cache() -> PathBuf {
    std::env::var_os("HERD_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home =
                std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
            home.join(".cache/herd")
        })
}

/// An embedding deployment (one slot, no queue: a second request at once is
/// refused) beside the default chat model.
fn config() -> String {
    format!(
        r#"
[[models]]
id = "minilm"
path = "{}"
embeddings = true
threads = 2
slots = 1
max_queue = 0

[[models]]
id = "smol"
path = "{}"
threads = 1
slots = 1
"#,
        minilm().display(),
        common::model_path().display()
    )
}

fn minilm() -> PathBuf {
    cache().join("models/all-MiniLM-L6-v2.f16.gguf")
}

async fn post(server: &Server, body: Value) -> Result<(u16, Value), reqwest::Error> {
    let r = reqwest::Client::new()
        .post(format!("{}/v1/embeddings", server.url))
        .json(&body)
        .send()
        .await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await?))
}

struct Reference {
    tokens: Vec<u32>,
    embedding: Vec<f32>,
}

/// The numpy reference for `sentences`, from the original safetensors.
fn reference(
    sentences: &[&str],
) -> Result<Vec<Reference>, Box<dyn std::error::Error + Send + Sync>> {
    let python = cache().join("embed-venv/bin/python");
    let model = cache().join("embed/all-MiniLM-L6-v2.zip");
    if !python.is_file() || !model.is_file() {
        return Err(format!(
            "{} or {} missing (run .ci/setup)",
            python.display(),
            model.display()
        )
        .into());
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/embeddings/reference.py");
    let mut child = std::process::Command::new(python)
        .arg(script)
        .arg(model)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        stdin.write_all(serde_json::to_string(sentences)?.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(format!("reference.py failed: {}", out.status).into());
    }
    let parsed: Vec<Value> = serde_json::from_slice(&out.stdout)?;
    Ok(parsed
        .iter()
        .map(|r| Reference {
            tokens: serde_json::from_value(r["tokens"].clone()).unwrap_or_default(),
            embedding: serde_json::from_value(r["embedding"].clone()).unwrap_or_default(),
        })
        .collect())
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

const SENTENCES: [&str; 5] = [
    "A man is playing a guitar.",
    "Someone is strumming a guitar on stage.",
    "The stock market fell sharply on Tuesday.",
    "Unbelievable: the café's naïve résumé!",
    "東京 is the capital of Japan.",
];

#[tokio::test(flavor = "multi_thread")]
async fn embeddings_match_the_reference_through_async_openai() -> TestResult {
    let server = Server::start_config(&config(), &[], &[])?;
    let refs = reference(&SENTENCES)?;
    let openai = client(&server);
    let request = CreateEmbeddingRequestArgs::default()
        .model("minilm")
        .input(SENTENCES.to_vec())
        .build()?;
    let got = openai.embeddings().create(request).await?;
    assert_eq!(got.data.len(), SENTENCES.len());
    let want_tokens: usize = refs.iter().map(|r| r.tokens.len()).sum();
    assert_eq!(got.usage.prompt_tokens as usize, want_tokens);
    assert_eq!(got.usage.total_tokens, got.usage.prompt_tokens);
    for (i, (item, r)) in got.data.iter().zip(&refs).enumerate() {
        assert_eq!(item.index as usize, i);
        assert_eq!(item.embedding.len(), 384);
        let norm = dot(&item.embedding, &item.embedding).sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "input {i} has norm {norm}");
        let cos = dot(&item.embedding, &r.embedding);
        assert!(cos >= 0.99, "input {i}: cosine {cos} with the reference");
    }
    let v: Vec<&[f32]> = got.data.iter().map(|d| d.embedding.as_slice()).collect();
    let (similar, unrelated) = (dot(v[0], v[1]), dot(v[0], v[2]));
    assert!(
        similar > unrelated + 0.2,
        "guitar/guitar {similar} vs guitar/stocks {unrelated}"
    );

    // base64: the same floats, decoded by the SDK.
    let request = CreateEmbeddingRequestArgs::default()
        .model("minilm")
        .input(SENTENCES.to_vec())
        .encoding_format(EncodingFormat::Base64)
        .build()?;
    let b64 = openai.embeddings().create_base64(request).await?;
    for (item, float) in b64.data.into_iter().zip(&got.data) {
        let decoded: Vec<f32> = item.embedding.into();
        assert_eq!(decoded, float.embedding);
    }

    // Token ids (the reference's own tokens, [CLS] … [SEP]) give the text's vector.
    let request = CreateEmbeddingRequestArgs::default()
        .model("minilm")
        .input(EmbeddingInput::ArrayOfIntegerArray(
            refs.iter().take(2).map(|r| r.tokens.clone()).collect(),
        ))
        .build()?;
    let by_tokens = openai.embeddings().create(request).await?;
    for (a, b) in by_tokens.data.iter().zip(&got.data) {
        assert!(dot(&a.embedding, &b.embedding) > 0.9999);
    }
    let request = CreateEmbeddingRequestArgs::default()
        .model("minilm")
        .input(EmbeddingInput::IntegerArray(refs[2].tokens.clone()))
        .build()?;
    let one = openai.embeddings().create(request).await?;
    assert_eq!(one.data.len(), 1);
    assert!(dot(&one.data[0].embedding, &got.data[2].embedding) > 0.9999);
    assert_eq!(one.usage.prompt_tokens as usize, refs[2].tokens.len());

    // Raw HTTP: one string, `dimensions` equal to the model's own.
    let (status, body) = post(
        &server,
        json!({"model": "minilm", "input": SENTENCES[3], "dimensions": 384, "encoding_format": "float"}),
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "minilm");
    assert_eq!(body["data"][0]["object"], "embedding");
    let single: Vec<f32> = serde_json::from_value(body["data"][0]["embedding"].clone())?;
    assert!(dot(&single, &got.data[3].embedding) > 0.9999);

    let metrics = reqwest::get(format!("{}/metrics", server.url))
        .await?
        .text()
        .await?;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("herd_embedding_requests_total{model=\"minilm\"}"))
        .ok_or("no herd_embedding_requests_total for minilm")?;
    assert!(line.ends_with(" 5"), "{line}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn embedding_errors_are_clear_and_openai_shaped() -> TestResult {
    let server = Server::start_config(&config(), &[], &[])?;
    let cases = [
        (
            json!({"model": "smol", "input": "hi"}),
            400,
            "model",
            "does not serve embeddings",
        ),
        (
            json!({"model": "minilm", "input": []}),
            400,
            "input",
            "must not be empty",
        ),
        (
            json!({"model": "minilm", "input": ""}),
            400,
            "input",
            "empty string",
        ),
        (
            json!({"model": "minilm", "input": ["ok", "word ".repeat(600)]}),
            400,
            "input",
            "input[1] has 602 tokens",
        ),
        (
            json!({"model": "minilm", "input": [[101, 99999, 102]]}),
            400,
            "input",
            "token id 99999",
        ),
        (
            json!({"model": "minilm", "input": "hi", "dimensions": 128}),
            400,
            "dimensions",
            "384",
        ),
        (
            json!({"model": "minilm", "input": "hi", "encoding_format": "int8"}),
            400,
            "encoding_format",
            "int8",
        ),
        (
            json!({"model": "nope", "input": "hi"}),
            404,
            "model",
            "nope",
        ),
    ];
    for (body, status, param, text) in cases {
        let (got, answer) = post(&server, body.clone()).await?;
        assert_eq!(got, status, "{body} → {answer}");
        assert_eq!(answer["error"]["param"], param, "{body} → {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(text), "{body} → {message}");
    }
    // An embedding model asked to chat.
    let r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.url))
        .json(&json!({"model": "minilm", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 400);
    let answer: Value = r.json().await?;
    assert!(answer["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("serves /v1/embeddings only")));

    // One slot, no queue: requests at once beyond it get 429, the rest answer.
    let big: Vec<String> = (0..256)
        .map(|i| format!("sentence number {i} about guitars"))
        .collect();
    let calls = (0..6).map(|_| post(&server, json!({"model": "minilm", "input": big})));
    let statuses: Vec<u16> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.map(|(s, _)| s))
        .collect::<Result<_, _>>()?;
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    Ok(())
}

/// An upstream deployment gets the client's body at `{base_url}/embeddings`
/// (here llama.cpp's llama-server `--embeddings` on the same GGUF) and its
/// answer is relayed; the vectors are the reference's.
#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_deployment_relays_embeddings() -> TestResult {
    let upstream =
        llama_server::LlamaServer::start_model(&minilm(), "minilm-upstream", &["--embeddings"])?;
    let config = format!(
        "[[models]]\nid = \"remote-minilm\"\nengine = \"upstream\"\nbase_url = \"{}\"\nupstream_model = \"minilm-upstream\"\n",
        upstream.v1()
    );
    let server = Server::start_config(&config, &[], &[])?;
    let refs = reference(&SENTENCES[..2])?;
    let request = CreateEmbeddingRequestArgs::default()
        .model("remote-minilm")
        .input(SENTENCES[..2].to_vec())
        .build()?;
    let got = client(&server).embeddings().create(request).await?;
    assert_eq!(got.data.len(), 2);
    for (item, r) in got.data.iter().zip(&refs) {
        let cos = dot(&item.embedding, &r.embedding);
        assert!(cos >= 0.99, "cosine {cos} with the reference");
    }
    let want_tokens: usize = refs.iter().map(|r| r.tokens.len()).sum();
    assert_eq!(got.usage.prompt_tokens as usize, want_tokens);
    let metrics = reqwest::get(format!("{}/metrics", server.url))
        .await?
        .text()
        .await?;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("herd_embedding_requests_total{model=\"remote-minilm\"} 1")),
        "{metrics}"
    );
    Ok(())
}

/// Inputs of the requests in flight share each decode round robin: a
/// one-input request sent while a 512-input one is being embedded is
/// answered long before it.
#[tokio::test(flavor = "multi_thread")]
async fn a_small_request_is_not_held_up_behind_a_big_one() -> TestResult {
    let config = format!(
        "[[models]]\nid = \"minilm\"\npath = \"{}\"\nembeddings = true\nthreads = 2\nslots = 2\n",
        minilm().display()
    );
    let server = Server::start_config(&config, &[], &[])?;
    let big: Vec<String> = (0..512)
        .map(|i| format!("sentence number {i} is about old trains and green tea"))
        .collect();
    let started = std::time::Instant::now();
    let big_call = post(&server, json!({"model": "minilm", "input": big}));
    let small_call = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let answer = post(&server, json!({"model": "minilm", "input": "a guitar"})).await;
        (answer, started.elapsed())
    };
    let big_call = async {
        let answer = big_call.await;
        (answer, started.elapsed())
    };
    let ((big, big_took), (small, small_took)) = tokio::join!(big_call, small_call);
    let (big, small) = (big?, small?);
    assert_eq!((big.0, small.0), (200, 200), "{big:?} {small:?}");
    assert_eq!(big.1["data"].as_array().map(Vec::len), Some(512));
    eprintln!("512 inputs: {big_took:?}; 1 input sent 300 ms later: {small_took:?}");
    assert!(
        small_took * 2 < big_took,
        "the small request took {small_took:?}, the big one {big_took:?}"
    );
    Ok(())
}
