//! The gateway outlives its engine and its clients: a SIGKILLed engine host,
//! a client that hangs up mid-stream, and a graceful shutdown mid-stream.

mod common;

use common::{children, signal, Server, TestResult, MODEL_ID};
use futures::StreamExt;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn stream_body(max_tokens: u32) -> Value {
    json!({"model": MODEL_ID, "messages": [{"role": "user", "content": "Write a long story about the ocean."}],
        "max_tokens": max_tokens, "stream": true, "temperature": 0.8})
}

#[tokio::test]
async fn engine_host_killed_mid_stream_is_a_clean_error_and_a_restart() -> TestResult {
    let mut server = Server::start(&["--slots", "2"])?;
    let hosts = children(server.pid());
    assert_eq!(hosts.len(), 1, "expected one engine host, found {hosts:?}");
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.url))
        .json(&stream_body(2000))
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 200);
    let mut body = resp.bytes_stream();
    let mut seen = String::new();
    // Wait for real tokens, then kill the engine host mid-generation.
    while seen.matches("data: ").count() < 5 {
        let chunk = body.next().await.ok_or("stream ended before tokens")??;
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    signal(hosts[0], "-KILL")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Some(chunk) = tokio::time::timeout_at(deadline.into(), body.next()).await? {
        seen.push_str(&String::from_utf8_lossy(&chunk?));
    }
    let events = common::sse_data(&seen);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{seen}");
    let error: Value = serde_json::from_str(&events[events.len() - 2])?;
    assert_eq!(error["error"]["code"], "engine_crashed", "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("signal 9"),
        "{error}"
    );

    // The gateway never exited; /health tells the truth, then the host is back.
    assert!(
        server.child.try_wait()?.is_none(),
        "the gateway process exited"
    );
    server.wait_healthy(Duration::from_secs(30))?;
    let health: Value = reqwest::get(format!("{}/health", server.url))
        .await?
        .json()
        .await?;
    assert_eq!(health["models"][0]["restarts"], 1, "{health}");
    let new_hosts = children(server.pid());
    assert!(
        new_hosts.len() == 1 && new_hosts[0] != hosts[0],
        "{new_hosts:?}"
    );
    let ok = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.url))
        .json(&json!({"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}))
        .send()
        .await?;
    assert_eq!(ok.status().as_u16(), 200);
    let v: Value = ok.json().await?;
    assert_eq!(
        v["usage"]["completion_tokens"].as_u64().map(|n| n > 0),
        Some(true)
    );
    Ok(())
}

#[tokio::test]
async fn health_reports_a_dead_engine_until_it_is_back() -> TestResult {
    let server = Server::start(&[])?;
    let host = *children(server.pid()).first().ok_or("no engine host")?;
    // Stop it first so the restart cannot win the race with our request.
    signal(host, "-STOP")?;
    signal(host, "-KILL")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = common::ureq_get(&format!("{}/health", server.url))?;
        if status == 503 {
            assert!(body.contains("restarting"), "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "health never reported the dead engine"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.wait_healthy(Duration::from_secs(30))?;
    Ok(())
}

#[tokio::test]
async fn client_that_disconnects_frees_its_slot() -> TestResult {
    // One slot and a short queue wait: a leaked slot would turn the next request into a 429.
    let server = Server::start(&["--slots", "1", "--max-queue-wait-ms", "3000"])?;
    for _ in 0..3 {
        let resp = reqwest::Client::new()
            .post(format!("{}/v1/chat/completions", server.url))
            .json(&stream_body(4000))
            .send()
            .await?;
        let mut body = resp.bytes_stream();
        let _ = body.next().await;
        let _ = body.next().await;
        drop(body); // hang up mid-generation
    }
    let started = Instant::now();
    let ok = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.url))
        .json(&json!({"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}))
        .send()
        .await?;
    assert_eq!(ok.status().as_u16(), 200, "{}", ok.text().await?);
    assert!(started.elapsed() < Duration::from_secs(3));
    let health: Value = reqwest::get(format!("{}/health", server.url))
        .await?
        .json()
        .await?;
    assert_eq!(health["models"][0]["free_slots"], 1, "{health}");
    Ok(())
}

#[tokio::test]
async fn graceful_shutdown_drains_in_flight_streams() -> TestResult {
    let mut server = Server::start(&[])?;
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.url))
        .json(&stream_body(48))
        .send()
        .await?;
    let mut body = resp.bytes_stream();
    let mut seen = String::new();
    let first = body.next().await.ok_or("no first chunk")??;
    seen.push_str(&String::from_utf8_lossy(&first));
    signal(server.pid(), "-TERM")?;
    while let Some(chunk) = body.next().await {
        seen.push_str(&String::from_utf8_lossy(&chunk?));
    }
    let events = common::sse_data(&seen);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let finish = events.iter().rev().nth(1).ok_or("no final chunk")?;
    assert!(
        finish.contains("\"finish_reason\":\"length\"")
            || finish.contains("\"finish_reason\":\"stop\""),
        "{finish}"
    );
    // New connections are refused while draining; the process then exits cleanly.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = server.child.try_wait()? {
            break s;
        }
        assert!(Instant::now() < deadline, "herd did not exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    Ok(())
}

#[tokio::test]
async fn wedged_engine_host_is_killed_by_the_progress_watchdog() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("herd.toml");
    std::fs::write(
        &config,
        "[[models]]\npath = \"unused.gguf\"\nprogress_timeout_secs = 2\n",
    )?;
    let server = Server::start(&["--config", config.to_str().ok_or("path")?])?;
    let host = *children(server.pid()).first().ok_or("no engine host")?;
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.url))
        .json(&stream_body(2000))
        .send()
        .await?;
    let mut body = resp.bytes_stream();
    let mut seen = String::new();
    while seen.matches("data: ").count() < 3 {
        let chunk = body.next().await.ok_or("stream ended before tokens")??;
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    // A Mac asleep, or llama.cpp blocked on a silent RPC peer: alive but silent.
    signal(host, "-STOP")?;
    let started = Instant::now();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(20), body.next()).await? {
        seen.push_str(&String::from_utf8_lossy(&chunk?));
    }
    let waited = started.elapsed();
    let events = common::sse_data(&seen);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let error: Value = serde_json::from_str(&events[events.len() - 2])?;
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("no progress"),
        "{error}"
    );
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
    server.wait_healthy(Duration::from_secs(30))?;
    assert!(
        !children(server.pid()).contains(&host),
        "the wedged host must be gone"
    );
    Ok(())
}
