//! Per-key limits against a real `herd serve` with the real model: rpm,
//! tpm and concurrency let exactly N requests through and refuse the next
//! with 429, Retry-After, OpenAI's `x-ratelimit-*` headers and a message
//! naming the limit; and one key flooding the queue does not hold back
//! another key's first token by more than about one request's service time.

mod common;
#[path = "common/keys.rs"]
mod keys_cli;

use common::{Server, TestResult, MODEL_ID};
use futures::StreamExt;
use keys_cli::{create_key, wait_for_status};
use reqwest::header::HeaderMap;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn chat(max_tokens: u32, stream: bool) -> Value {
    json!({"model": MODEL_ID, "max_tokens": max_tokens, "temperature": 0, "stream": stream,
        "messages": [{"role": "user", "content": "Count from one to one hundred."}]})
}

fn header(h: &HeaderMap, name: &str) -> String {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

async fn post(base: &str, key: &str, body: &Value) -> Result<reqwest::Response, reqwest::Error> {
    reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
}

/// Checks a 429 for `limit`: status, Retry-After, the error's shape and message.
async fn assert_refused(r: reqwest::Response, limit: &str) -> TestResult {
    assert_eq!(r.status(), 429);
    let retry: u64 = header(r.headers(), "retry-after").parse()?;
    assert!(retry >= 1, "Retry-After {retry}");
    let body: Value = r.json().await?;
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    let message = body["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains(&format!(" {limit} ")), "{message}");
    Ok(())
}

#[tokio::test]
async fn rpm_and_concurrency_are_exact() -> TestResult {
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");
    let rpm = create_key(&state, "rpm3", &["--rpm", "3"])?;
    let conc = create_key(&state, "two-at-once", &["--max-concurrency", "2"])?;
    let server = Server::start(&["--state-dir", state.to_str().ok_or("path")?, "--slots", "4"])?;
    let base = server.url.clone();

    for remaining in ["2", "1", "0"] {
        let r = post(&base, &rpm, &chat(2, false)).await?;
        assert_eq!(r.status(), 200);
        let h = r.headers();
        assert_eq!(header(h, "x-ratelimit-limit-requests"), "3");
        assert_eq!(header(h, "x-ratelimit-remaining-requests"), remaining);
        assert!(header(h, "x-ratelimit-reset-requests").ends_with('s'));
        assert!(h.get("x-ratelimit-limit-tokens").is_none(), "no tpm limit");
    }
    let r = post(&base, &rpm, &chat(2, false)).await?;
    assert_eq!(header(r.headers(), "x-ratelimit-remaining-requests"), "0");
    assert_refused(r, "rpm").await?;
    // The refusal is counted under the key's name (never its secret).
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await?
        .text()
        .await?;
    let refused = metrics.lines().find(|l| {
        l.starts_with("herd_requests_total")
            && l.contains("status=\"429\"")
            && l.contains("error_type=\"rate_limited\"")
    });
    assert!(refused.is_some_and(|l| l.ends_with(" 1")), "{metrics}");
    assert!(metrics.contains("key=\"rpm3\""));
    assert!(!metrics.contains(&rpm[12..]));

    // Two streams held open; the third request is refused, and once one
    // stream is dropped another is admitted.
    let mut open = Vec::new();
    for _ in 0..2 {
        let r = post(&base, &conc, &chat(400, true)).await?;
        assert_eq!(r.status(), 200);
        let mut s = r.bytes_stream();
        s.next().await;
        open.push(s);
    }
    assert_refused(post(&base, &conc, &chat(2, false)).await?, "concurrency").await?;
    open.pop();
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let r = post(&base, &conc, &chat(2, false)).await?;
        if r.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the slot never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[tokio::test]
async fn tpm_counts_prompt_and_completion_tokens() -> TestResult {
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");
    let probe = create_key(&state, "probe", &[])?;
    let server = Server::start(&["--state-dir", state.to_str().ok_or("path")?])?;
    let base = server.url.clone();
    // One request's tokens (greedy, so every repeat uses the same number).
    let v: Value = post(&base, &probe, &chat(24, false)).await?.json().await?;
    let used = v["usage"]["total_tokens"].as_u64().ok_or("no usage")?;
    // 2.5 requests' worth: three get in (the third goes half a request into
    // debt), the fourth is refused. The refill over the test (tpm/60 per
    // second) stays far below the half-request margin.
    let tpm = used * 5 / 2;
    let key = create_key(&state, "tpm", &["--tpm", &tpm.to_string()])?;
    wait_for_status(&base, &key, 200, Duration::from_secs(2)).await?;
    let mut remaining = Vec::new();
    for i in 0..3 {
        // Streamed, so the tokens are charged as they arrive.
        let r = post(&base, &key, &chat(24, i == 1)).await?;
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(
            header(r.headers(), "x-ratelimit-limit-tokens"),
            tpm.to_string()
        );
        remaining.push(header(r.headers(), "x-ratelimit-remaining-tokens").parse::<u64>()?);
        let text = r.text().await?;
        assert!(text.contains("content"), "{text}");
    }
    println!("tpm {tpm}, {used} tokens per request, remaining at admission {remaining:?}");
    assert_eq!(remaining[0], tpm);
    // Each later admission sees the earlier requests' tokens (plus a little refill).
    for (i, r) in remaining.iter().enumerate().skip(1) {
        let spent = used * i as u64;
        assert!(
            *r >= tpm - spent && *r <= tpm - spent + used / 2,
            "{remaining:?}"
        );
    }
    let r = post(&base, &key, &chat(24, false)).await?;
    assert_eq!(header(r.headers(), "x-ratelimit-remaining-tokens"), "0");
    assert!(!header(r.headers(), "x-ratelimit-reset-tokens").is_empty());
    assert_refused(r, "tpm").await?;
    Ok(())
}

/// Time to the first content chunk of a streamed request.
async fn first_token(base: String, key: String, max_tokens: u32) -> Result<Duration, String> {
    let start = Instant::now();
    let r = post(&base, &key, &chat(max_tokens, true))
        .await
        .map_err(|e| e.to_string())?;
    if r.status() != 200 {
        return Err(format!("status {}", r.status()));
    }
    let mut s = r.bytes_stream();
    let mut seen = String::new();
    while let Some(chunk) = s.next().await {
        seen.push_str(&String::from_utf8_lossy(&chunk.map_err(|e| e.to_string())?));
        if seen.contains("\"content\"") {
            let ttft = start.elapsed();
            while s.next().await.is_some() {}
            return Ok(ttft);
        }
    }
    Err("no content".into())
}

#[tokio::test]
async fn a_flooding_key_does_not_starve_another() -> TestResult {
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");
    let flood = create_key(&state, "flood", &[])?;
    let polite = create_key(&state, "polite", &[])?;
    let server = Server::start(&[
        "--state-dir",
        state.to_str().ok_or("path")?,
        "--slots",
        "1",
        "--max-queue",
        "32",
        "--max-queue-wait-ms",
        "120000",
    ])?;
    let base = server.url.clone();
    const TOKENS: u32 = 48;
    // One request's service time, alone.
    let start = Instant::now();
    first_token(base.clone(), polite.clone(), TOKENS).await?;
    let service = start.elapsed();
    let mut flooders = Vec::new();
    for _ in 0..8 {
        flooders.push(tokio::spawn(first_token(
            base.clone(),
            flood.clone(),
            TOKENS,
        )));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ttft = first_token(base.clone(), polite.clone(), TOKENS).await?;
    let mut flood_ttfts = Vec::new();
    for f in flooders {
        flood_ttfts.push(f.await??);
    }
    flood_ttfts.sort();
    println!(
        "service {service:?}; polite TTFT behind 8 flood requests {ttft:?}; flood TTFTs {flood_ttfts:?}"
    );
    // FIFO would put it behind all eight; fair queuing behind at most the one running.
    assert!(
        ttft <= service * 2 + Duration::from_millis(500),
        "polite waited {ttft:?}, one request takes {service:?}"
    );
    assert!(
        flood_ttfts[7] > ttft * 3,
        "the flood was not actually queued"
    );
    Ok(())
}
