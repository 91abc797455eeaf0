//! `GET /health` with API keys on: anyone sees whether each model is up; only
//! a key holder sees why not (the engine's last error, counters, heads).

mod common;

use common::{children, signal, Server, TestResult};
use serde_json::Value;
use std::time::{Duration, Instant};

async fn health(server: &Server, key: Option<&str>) -> Result<(u16, Value), reqwest::Error> {
    let mut req = reqwest::Client::new().get(format!("{}/health", server.url));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await?;
    Ok((resp.status().as_u16(), resp.json().await?))
}

#[tokio::test]
async fn health_shows_the_engine_error_to_key_holders_only() -> TestResult {
    let dir = tempfile::tempdir()?;
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "alice:sk-alice-123\n")?;
    let server = Server::start(&["--api-key-file", keys.to_str().ok_or("path")?])?;

    // Ready: the same answer for everyone but the counters.
    let (status, open) = health(&server, None).await?;
    assert_eq!(status, 200, "{open}");
    assert_eq!(
        open["models"][0].as_object().map(|m| m.len()),
        Some(2),
        "{open}"
    );
    let (_, keyed) = health(&server, Some("sk-alice-123")).await?;
    assert_eq!(keyed["models"][0]["free_slots"], 4, "{keyed}");

    // Kill the engine host until both answers land while it restarts (each
    // quick death doubles the restart delay, so the window only widens).
    for attempt in 0.. {
        let host = *children(server.pid()).first().ok_or("no engine host")?;
        signal(host, "-STOP")?;
        signal(host, "-KILL")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let open = loop {
            let (status, body) = health(&server, None).await?;
            if status == 503 {
                break body;
            }
            assert!(
                Instant::now() < deadline,
                "health never reported the dead engine"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let (_, wrong) = health(&server, Some("sk-wrong")).await?;
        let (status, keyed) = health(&server, Some("sk-alice-123")).await?;
        if status != 503 {
            assert!(
                attempt < 5,
                "the engine was always back before the second request"
            );
            server.wait_healthy(Duration::from_secs(30))?;
            continue;
        }
        for body in [&open, &wrong] {
            assert_eq!(body["status"], "unavailable", "{body}");
            assert_eq!(body["models"][0]["status"], "restarting", "{body}");
            let text = body.to_string();
            assert!(
                !text.contains("error") && !text.contains("signal") && !text.contains("restarts"),
                "an unauthenticated caller saw internals: {text}"
            );
        }
        assert_eq!(keyed["models"][0]["status"], "restarting", "{keyed}");
        let error = keyed["models"][0]["error"].as_str().unwrap_or_default();
        assert!(error.contains("signal 9"), "{keyed}");
        assert!(
            keyed["models"][0]["restarts"].as_u64() >= Some(1),
            "{keyed}"
        );
        break;
    }
    server.wait_healthy(Duration::from_secs(30))?;
    Ok(())
}
