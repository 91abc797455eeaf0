//! Upstream deployments against a fault-injecting upstream (common/fault.rs)
//! behind a real `herd serve`: each fallback and timeout rule, Retry-After,
//! and that a failure after the first byte ends the stream with an OpenAI
//! error event and `[DONE]`. The circuit breaker: upstream_health.rs.

mod common;
#[path = "common/fault.rs"]
mod fault;
#[path = "common/upstream_client.rs"]
mod upstream_client;

use common::{sse_data, Server, TestResult};
use fault::{Fault, FaultServer};
use serde_json::Value;
use std::time::Duration;
use upstream_client::{ask, content, health_of, metric, upstream};

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
