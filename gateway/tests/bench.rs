//! `herd bench` against a real `herd serve` (the real model), against a
//! server that demands a key, and against a closed port.

mod common;

use common::{Server, TestResult, MODEL_ID};
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

/// Runs `herd bench --json --no-progress <args>`; returns (exit ok, report).
fn bench(args: &[&str]) -> Result<(bool, Value), Box<dyn std::error::Error + Send + Sync>> {
    let out = Command::new(env!("CARGO_BIN_EXE_herd"))
        .arg("bench")
        .args(["--json", "--no-progress"])
        .args(args)
        .env_remove("HERD_BENCH_API_KEY")
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(&stdout).map_err(|e| {
        format!(
            "bench printed no JSON report ({e}); stdout: {stdout}; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok((out.status.success(), report))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn assert_ordered(summary: &Value, what: &str) {
    let (min, p50, p90, p99, max) = (
        f(&summary["min"]),
        f(&summary["p50"]),
        f(&summary["p90"]),
        f(&summary["p99"]),
        f(&summary["max"]),
    );
    assert!(
        0.0 < min && min <= p50 && p50 <= p90 && p90 <= p99 && p99 <= max,
        "{what} percentiles out of order: {summary}"
    );
}

#[test]
fn streaming_run_against_herd_reports_tokens_and_ordered_percentiles() -> TestResult {
    let server = Server::start(&["--slots", "2"])?;
    let v1 = server.v1();
    let (ok, r) = bench(&[
        "--base-url",
        &v1,
        "-n",
        "6",
        "-c",
        "2",
        "--max-tokens",
        "12",
        "--prompt-tokens",
        "40",
        "--warmup",
        "1",
        "--timeout",
        "120",
    ])?;
    assert!(ok, "bench failed: {r}");
    // The model id came from GET /v1/models.
    assert_eq!(r["model"], MODEL_ID);
    assert_eq!(r["requests"]["completed"], 6, "{r}");
    assert_eq!(r["requests"]["failed"], 0, "{r}");
    // herd keeps connections open: nothing needed a second send.
    assert_eq!(r["requests"]["retried"], 0, "{r}");
    assert_eq!(r["requests"]["errors"], serde_json::json!({}));
    let output = r["tokens"]["output_total"].as_u64().unwrap_or(0);
    assert!(
        output > 0 && output <= 6 * 12,
        "output tokens {output}: {r}"
    );
    // 40 synthetic words plus the tag line and chat template: at least 40 tokens each.
    assert!(
        r["tokens"]["prompt_total"].as_u64().unwrap_or(0) >= 6 * 40,
        "{r}"
    );
    for key in ["ttft_ms", "e2e_ms"] {
        assert_ordered(&r[key], key);
    }
    assert!(f(&r["ttft_ms"]["p50"]) <= f(&r["e2e_ms"]["max"]), "{r}");
    assert!(f(&r["output_tok_s"]["aggregate"]) > 0.0, "{r}");
    assert!(f(&r["requests_per_s"]) > 0.0, "{r}");

    // Non-streaming: no TTFT, still tokens from `usage`.
    let (ok, r) = bench(&[
        "--base-url",
        &v1,
        "--model",
        MODEL_ID,
        "-n",
        "2",
        "--max-tokens",
        "5",
        "--stream",
        "false",
        "--endpoint",
        "completions",
    ])?;
    assert!(ok, "{r}");
    assert_eq!(r["requests"]["completed"], 2, "{r}");
    assert!(r["ttft_ms"].is_null(), "{r}");
    assert!(r["tokens"]["output_total"].as_u64().unwrap_or(0) > 0, "{r}");
    Ok(())
}

#[test]
fn missing_key_is_counted_by_status_and_the_key_option_works() -> TestResult {
    let dir = tempfile::tempdir()?;
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "bench:sk-bench-test-key\n")?;
    let keys = keys.to_string_lossy().to_string();
    let server = Server::start(&["--api-key-file", &keys])?;
    let v1 = server.v1();
    let (ok, r) = bench(&[
        "--base-url",
        &v1,
        "--model",
        MODEL_ID,
        "-n",
        "3",
        "--max-tokens",
        "2",
    ])?;
    assert!(
        !ok,
        "every request failed, so bench must exit non-zero: {r}"
    );
    assert_eq!(r["requests"]["completed"], 0, "{r}");
    assert_eq!(r["requests"]["errors"]["401"]["count"], 3, "{r}");
    // The example is the server's OpenAI error message, not the raw body.
    let example = r["requests"]["errors"]["401"]["example"]
        .as_str()
        .unwrap_or("");
    assert!(
        example.starts_with("HTTP 401: ") && !example.contains("{"),
        "{example}"
    );

    let (ok, r) = bench(&[
        "--base-url",
        &v1,
        "--model",
        MODEL_ID,
        "-n",
        "2",
        "--max-tokens",
        "2",
        "--api-key",
        "sk-bench-test-key",
        "--endpoint",
        "models",
    ])?;
    assert!(ok, "{r}");
    assert_eq!(r["requests"]["completed"], 2, "{r}");
    assert_ordered(&r["e2e_ms"], "e2e_ms");
    Ok(())
}

#[test]
fn closed_port_reports_connect_errors_quickly() -> TestResult {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let url = format!("http://127.0.0.1:{port}/v1");
    let started = Instant::now();
    let (ok, r) = bench(&["--base-url", &url, "--model", "m", "-n", "5", "-c", "2"])?;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    assert!(!ok, "{r}");
    assert_eq!(r["requests"]["completed"], 0, "{r}");
    assert_eq!(r["requests"]["failed"], 5, "{r}");
    assert_eq!(r["requests"]["errors"]["connect"]["count"], 5, "{r}");
    assert!(r["e2e_ms"].is_null(), "{r}");
    Ok(())
}

#[test]
fn refusals_are_counted_with_their_retry_after_and_can_be_waited_out() -> TestResult {
    // One slot and no queue: of three concurrent requests, two are refused at once.
    let server = Server::start(&["--slots", "1", "--max-queue", "0"])?;
    let v1 = server.v1();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "--base-url",
            &v1,
            "--model",
            MODEL_ID,
            "-n",
            "6",
            "-c",
            "3",
            "--max-tokens",
            "16",
        ];
        args.extend_from_slice(extra);
        bench(&args)
    };
    let (_, r) = run(&[])?;
    let refused = &r["requests"]["errors"]["429"];
    assert!(refused["count"].as_u64().unwrap_or(0) > 0, "{r}");
    assert_eq!(refused["with_retry_after"], refused["count"], "{r}");

    // Waiting out Retry-After (herd says at least 1 s) stretches the run past a second.
    let (_, r) = run(&["--honor-retry-after"])?;
    let refused = r["requests"]["errors"]["429"]["count"]
        .as_u64()
        .unwrap_or(0);
    if refused > 0 {
        assert!(f(&r["duration_s"]) >= 1.0, "{r}");
    }
    assert!(r["requests"]["completed"].as_u64().unwrap_or(0) >= 1, "{r}");
    Ok(())
}
