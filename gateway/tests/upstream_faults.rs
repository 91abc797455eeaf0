//! Upstream deployments against a fault-injecting upstream (common/fault.rs)
//! behind a real `herd serve`: each fallback and timeout rule, Retry-After,
//! the circuit breaker (passive and active), and that a failure after the
//! first byte ends the stream with an OpenAI error event and `[DONE]`.

mod common;
#[path = "common/fault.rs"]
mod fault;

use common::{sse_data, Server, TestResult};
use fault::{Fault, FaultServer};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// An `engine = "upstream"` entry for `base`, without active probes unless `extra` sets them.
fn upstream(id: &str, base: &str, extra: &str) -> String {
    format!(
        "[[models]]\nid = \"{id}\"\nengine = \"upstream\"\nbase_url = \"{base}\"\nupstream_model = \"fault-model\"\nprobe_path = \"\"\n{extra}\n"
    )
}

struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: String,
    took: Duration,
}

async fn ask(server: &Server, model: &str, stream: bool) -> Result<Answer, reqwest::Error> {
    let started = Instant::now();
    let r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.url))
        .json(&json!({"model": model, "stream": stream,
            "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await?;
    let status = r.status().as_u16();
    let retry_after = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = r.text().await?;
    Ok(Answer {
        status,
        retry_after,
        body,
        took: started.elapsed(),
    })
}

fn content(body: &str) -> String {
    serde_json::from_str::<Value>(body).map_or_else(
        |_| String::new(),
        |v| {
            v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or("")
                .to_string()
        },
    )
}

/// A sample of `/metrics` (0 when absent).
async fn metric(server: &Server, series: &str) -> Result<f64, reqwest::Error> {
    let text = reqwest::get(format!("{}/metrics", server.url))
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0))
}

async fn health_of(server: &Server, id: &str) -> Result<Value, reqwest::Error> {
    let h: Value = reqwest::get(format!("{}/health", server.url))
        .await?
        .json()
        .await?;
    Ok(h["models"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["id"] == id).cloned())
        .unwrap_or(Value::Null))
}

#[tokio::test]
async fn each_failure_before_the_first_byte_falls_back() -> TestResult {
    let flaky = FaultServer::start("flaky").await?;
    let steady = FaultServer::start("steady").await?;
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let config = [
        upstream(
            "flaky",
            &flaky.base_url,
            "fallbacks = [\"steady\"]\nfirst_byte_timeout_ms = 1000\nretries = 0\nfailure_threshold = 100",
        ),
        upstream(
            "gone",
            &format!("http://{closed}/v1"),
            "fallbacks = [\"steady\"]\nretries = 0",
        ),
        upstream("steady", &steady.base_url, ""),
    ]
    .concat();
    let server = Server::start_config(&config, &[], &[])?;
    flaky.then(&[
        Fault::Status(500),
        Fault::Status(503),
        Fault::StallBeforeFirstByte,
        Fault::CloseMidStream,
        Fault::RateLimited(60),
    ]);
    for (i, rule) in [
        "500",
        "503",
        "stall before the first byte",
        "closed mid-answer",
        "429",
    ]
    .iter()
    .enumerate()
    {
        let a = ask(&server, "flaky", false).await?;
        assert_eq!(
            (a.status, content(&a.body).as_str()),
            (200, "hello from steady"),
            "{rule}: {}",
            a.body
        );
        assert_eq!((flaky.hits(), steady.hits()), (i + 1, i + 1), "{rule}");
        if *rule == "stall before the first byte" {
            assert!(
                a.took >= Duration::from_millis(900) && a.took < Duration::from_secs(10),
                "the first-byte timeout (1 s) decides: {:?}",
                a.took
            );
        }
    }
    // The 429 said Retry-After: 60, so the next request does not even try flaky.
    let a = ask(&server, "flaky", false).await?;
    assert_eq!(content(&a.body), "hello from steady");
    assert_eq!(flaky.hits(), 5, "Retry-After is honoured");
    assert_eq!(
        health_of(&server, "flaky").await?["circuit"],
        "rate_limited"
    );
    // A connect error falls back too.
    let a = ask(&server, "gone", false).await?;
    assert_eq!(content(&a.body), "hello from steady");
    // Streamed: the fallback's events, as it sent them; the usage chunk
    // herd asked for on the client's behalf is not passed on.
    flaky.set_default(Fault::Status(502));
    let a = ask(&server, "steady", true).await?;
    let events = sse_data(&a.body);
    assert_eq!(events.len(), 4, "{}", a.body);
    assert!(events[1].contains("hello from steady") && events[3] == "[DONE]");
    let sent = steady.last_body().unwrap_or_default();
    assert_eq!(sent["model"], "fault-model", "the upstream's own name");
    assert_eq!(sent["stream_options"]["include_usage"], true);
    for (series, want) in [
        (
            "herd_backend_fallbacks_total{model=\"flaky\",to=\"steady\"}",
            6.0,
        ),
        (
            "herd_backend_fallbacks_total{model=\"gone\",to=\"steady\"}",
            1.0,
        ),
        (
            "herd_backend_failures_total{model=\"flaky\",reason=\"status_5xx\"}",
            2.0,
        ),
        (
            "herd_backend_failures_total{model=\"flaky\",reason=\"first_byte_timeout\"}",
            1.0,
        ),
        (
            "herd_backend_failures_total{model=\"flaky\",reason=\"broken_stream\"}",
            1.0,
        ),
        (
            "herd_backend_failures_total{model=\"flaky\",reason=\"status_429\"}",
            1.0,
        ),
        (
            "herd_backend_failures_total{model=\"gone\",reason=\"connect\"}",
            1.0,
        ),
        (
            "herd_requests_total{error_type=\"none\",model=\"flaky\",status=\"200\"}",
            6.0,
        ),
    ] {
        assert_eq!(metric(&server, series).await?, want, "{series}");
    }
    Ok(())
}

#[tokio::test]
async fn a_failure_after_the_first_byte_ends_the_stream_with_an_error_event() -> TestResult {
    let flaky = FaultServer::start("flaky").await?;
    let steady = FaultServer::start("steady").await?;
    let config = [
        upstream(
            "flaky",
            &flaky.base_url,
            "fallbacks = [\"steady\"]\nidle_timeout_ms = 1000\nfailure_threshold = 100",
        ),
        upstream("steady", &steady.base_url, ""),
    ]
    .concat();
    let server = Server::start_config(&config, &[], &[])?;
    flaky.then(&[Fault::StallAfterFirstByte, Fault::CloseMidStream]);
    for (rule, code, relayed) in [
        ("stall after the first byte", "upstream_timeout", 1),
        ("closed mid-stream", "upstream_stream_broken", 2),
    ] {
        let a = ask(&server, "flaky", true).await?;
        assert_eq!(a.status, 200, "{rule}: the head had gone out");
        let events = sse_data(&a.body);
        assert_eq!(events.len(), relayed + 2, "{rule}: {}", a.body);
        assert!(
            events[0].contains("\"role\":\"assistant\""),
            "{rule}: {}",
            a.body
        );
        let error: Value = serde_json::from_str(&events[relayed])?;
        assert_eq!(error["error"]["code"], code, "{rule}: {}", a.body);
        assert_eq!(events[relayed + 1], "[DONE]", "{rule}");
        if rule.starts_with("stall") {
            assert!(a.took >= Duration::from_millis(900) && a.took < Duration::from_secs(10));
        }
    }
    assert_eq!(
        steady.hits(),
        0,
        "no fallback once a byte reached the client"
    );
    assert_eq!(
        metric(
            &server,
            "herd_backend_failures_total{model=\"flaky\",reason=\"idle_timeout\"}"
        )
        .await?,
        1.0
    );
    Ok(())
}

#[tokio::test]
async fn retry_after_is_honoured_within_the_total_timeout() -> TestResult {
    let solo = FaultServer::start("solo").await?;
    let strict = FaultServer::start("strict").await?;
    let config = [
        upstream(
            "solo",
            &solo.base_url,
            "retries = 1\ntotal_timeout_ms = 20000",
        ),
        upstream("strict", &strict.base_url, "retries = 3"),
    ]
    .concat();
    let server = Server::start_config(&config, &[], &[])?;
    // One 429 with Retry-After: 1, then an answer: herd waits and retries.
    solo.then(&[Fault::RateLimited(1)]);
    let a = ask(&server, "solo", false).await?;
    assert_eq!(
        (a.status, content(&a.body).as_str()),
        (200, "hello from solo")
    );
    assert_eq!(solo.hits(), 2);
    assert!(
        a.took >= Duration::from_millis(900) && a.took < Duration::from_secs(10),
        "waited for Retry-After: {:?}",
        a.took
    );
    assert_eq!(
        metric(&server, "herd_backend_retries_total{model=\"solo\"}").await?,
        1.0
    );
    // Retry-After beyond the total timeout: the client gets the 429 itself, at once.
    solo.then(&[Fault::RateLimited(30)]);
    let a = ask(&server, "solo", false).await?;
    assert_eq!(
        (a.status, a.retry_after.as_deref()),
        (429, Some("30")),
        "{}",
        a.body
    );
    let error: Value = serde_json::from_str(&a.body)?;
    assert_eq!(
        error["error"]["message"], "injected 429 from solo",
        "the upstream's own body"
    );
    assert!(a.took < Duration::from_secs(5), "{:?}", a.took);
    assert_eq!(solo.hits(), 3);
    // The upstream's 4xx is the request's fault: passed through, never retried.
    strict.then(&[Fault::Status(400)]);
    let a = ask(&server, "strict", false).await?;
    assert_eq!(a.status, 400);
    assert_eq!(
        serde_json::from_str::<Value>(&a.body)?["error"]["code"],
        "injected"
    );
    assert_eq!(strict.hits(), 1);
    Ok(())
}

#[tokio::test]
async fn the_circuit_opens_rests_and_closes() -> TestResult {
    let fragile = FaultServer::start("fragile").await?;
    let probed = FaultServer::start("probed").await?;
    let config = [
        upstream(
            "fragile",
            &fragile.base_url,
            "retries = 0\nfailure_threshold = 2\ncooldown_ms = 1500",
        ),
        upstream(
            "probed",
            &probed.base_url,
            "probe_path = \"/models\"\nprobe_interval_ms = 200\nfailure_threshold = 2\ncooldown_ms = 1000",
        )
        .replace("probe_path = \"\"\n", ""),
    ]
    .concat();
    let server = Server::start_config(&config, &[], &[])?;
    // Passive: two failed requests open the circuit.
    fragile.then(&[Fault::Status(500), Fault::Status(500)]);
    for _ in 0..2 {
        assert_eq!(ask(&server, "fragile", false).await?.status, 500);
    }
    let a = ask(&server, "fragile", false).await?;
    assert_eq!(a.status, 503, "{}", a.body);
    assert!(a.retry_after.is_some());
    assert_eq!(
        serde_json::from_str::<Value>(&a.body)?["error"]["code"],
        "upstream_unavailable"
    );
    assert_eq!(fragile.hits(), 2, "an open circuit sends nothing");
    let h = health_of(&server, "fragile").await?;
    assert_eq!(
        (h["status"].as_str(), h["circuit"].as_str()),
        (Some("unhealthy"), Some("open"))
    );
    let whole: Value = reqwest::get(format!("{}/health", server.url))
        .await?
        .json()
        .await?;
    assert_eq!(
        whole["status"], "ok",
        "an upstream never makes herd itself unhealthy"
    );
    // `/cluster` is refreshed every deployer tick (250 ms).
    let mut seen = Value::Null;
    for _ in 0..40 {
        let view: Value = reqwest::get(format!("{}/cluster", server.url))
            .await?
            .json()
            .await?;
        seen = view["deployments"]
            .as_array()
            .and_then(|d| d.iter().find(|d| d["id"] == "fragile").cloned())
            .unwrap_or_default();
        if seen["state"] == "unhealthy" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        (seen["state"].as_str(), seen["upstream"]["circuit"].as_str()),
        (Some("unhealthy"), Some("open")),
        "{seen}"
    );
    assert_eq!(
        metric(&server, "herd_backend_up{model=\"fragile\"}").await?,
        0.0
    );
    // After the cooldown one trial goes through, and closes it.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let a = ask(&server, "fragile", false).await?;
    assert_eq!(
        (a.status, content(&a.body).as_str()),
        (200, "hello from fragile")
    );
    assert_eq!(health_of(&server, "fragile").await?["circuit"], "closed");
    assert_eq!(
        metric(&server, "herd_backend_up{model=\"fragile\"}").await?,
        1.0
    );

    // Active: failing probes open a circuit no request has touched; good ones close it.
    let wait_for = |want: &'static str| {
        let server = &server;
        async move {
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if health_of(server, "probed").await?["circuit"] == want {
                    return Ok::<bool, reqwest::Error>(true);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(false)
        }
    };
    assert!(wait_for("closed").await?);
    probed.probe_answers(500);
    assert!(wait_for("open").await?, "probes failing open the circuit");
    assert_eq!(probed.hits(), 0);
    assert!(
        metric(
            &server,
            "herd_backend_failures_total{model=\"probed\",reason=\"probe\"}"
        )
        .await?
            >= 2.0
    );
    probed.probe_answers(200);
    assert!(
        wait_for("closed").await?,
        "a good probe after the cooldown closes it"
    );
    assert!(probed.probes() >= 4);
    Ok(())
}
