//! `herd usage` answers for the whole cluster when each gateway keeps its own
//! SQLite file: two real `herd serve` nodes, each heading one deployment of
//! the real SmolLM2. A request is recorded once, by the node that ran it
//! (a forwarded one by its head, with the caller's end user), and the report
//! from either node sums both nodes' files over the cluster channel.

mod common_fleet;
#[path = "common/keys.rs"]
mod keys_cli;

use common_fleet::{wait_for, Fleet, TestResult, SMOL};
use serde_json::{json, Value};
use std::time::Duration;

const CONFIG: &str = r#"
[[models]]
id = "m-one"
model = "SmolLM2-135M-Instruct.Q4_1.gguf"
nodes = ["n1"]
threads = 1
slots = 1
ctx_size = 512

[[models]]
id = "m-two"
model = "SmolLM2-135M-Instruct.Q4_1.gguf"
nodes = ["n2"]
threads = 1
slots = 1
ctx_size = 512

[usage]
flush_ms = 50
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herd_usage_sums_every_nodes_sqlite() -> TestResult {
    let fleet = Fleet::start(CONFIG, &["4GiB", "4GiB"], &[&[SMOL], &[SMOL]])?;
    let result = scenario(&fleet).await;
    if result.is_err() {
        fleet.dump_logs();
    }
    result
}

async fn chat(url: &str, model: &str, user_header: &str) -> Result<Value, common_fleet::Error> {
    let r = reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .header("X-OpenWebUI-User-Id", user_header)
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    Ok(r.json::<Value>().await?["usage"].clone())
}

fn herd_usage(url: &str, extra: &[&str]) -> Result<Value, common_fleet::Error> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herd"))
        .args(["usage", "--json", "--url", url])
        .args(extra)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn row<'a>(report: &'a Value, group: &str) -> Option<&'a Value> {
    report["data"]
        .as_array()?
        .iter()
        .find(|r| r["group"] == group)
}

async fn scenario(fleet: &Fleet) -> TestResult {
    let (n1, n2) = (fleet.node("n1")?, fleet.node("n2")?);
    for (id, head) in [("m-one", "n1"), ("m-two", "n2")] {
        wait_for(
            &format!("{id} ready on {head}"),
            Duration::from_secs(90),
            || async {
                let d = n1.deployment(id).await?;
                Ok(d["state"] == "ready" && d["head"] == head)
            },
        )
        .await?;
    }
    // m-one runs on n1; m-two on n2, asked once there and once through n1 (forwarded).
    let one = chat(&n1.url, "m-one", "ann").await?;
    let two_local = chat(&n2.url, "m-two", "bea").await?;
    let two_forwarded = chat(&n1.url, "m-two", "cid").await?;
    let tokens = |u: &Value| {
        u["prompt_tokens"].as_u64().unwrap_or(0) + u["completion_tokens"].as_u64().unwrap_or(0)
    };

    for url in [&n1.url, &n2.url] {
        let mut report = Value::Null;
        wait_for(
            "both nodes' usage in the report",
            Duration::from_secs(10),
            || {
                let got = herd_usage(url, &["--by", "model"]);
                let done = got.as_ref().is_ok_and(|r| {
                    row(r, "m-two").is_some_and(|x| x["requests"] == 2) && row(r, "m-one").is_some()
                });
                if let Ok(r) = got {
                    report = r;
                }
                async move { Ok(done) }
            },
        )
        .await?;
        assert_eq!(report["scope"], "cluster");
        assert_eq!(report["missing_nodes"], json!([]), "{report}");
        let m_one = row(&report, "m-one").ok_or("no m-one")?;
        assert_eq!(m_one["requests"], 1, "{report}");
        assert_eq!(
            m_one["total_tokens"].as_u64(),
            Some(tokens(&one)),
            "{report}"
        );
        let m_two = row(&report, "m-two").ok_or("no m-two")?;
        assert_eq!(
            m_two["total_tokens"].as_u64(),
            Some(tokens(&two_local) + tokens(&two_forwarded)),
            "{report}"
        );
    }
    // The forwarded request kept its end user; each node alone holds only what it ran.
    let users = herd_usage(&n1.url, &["--by", "user"])?;
    for u in ["ann", "bea", "cid"] {
        assert_eq!(
            row(&users, u).map(|r| &r["requests"]),
            Some(&json!(1)),
            "{u}: {users}"
        );
    }
    let n1_only = herd_usage(&n1.url, &["--by", "model", "--node-only"])?;
    assert_eq!(n1_only["scope"], "node");
    assert!(row(&n1_only, "m-two").is_none(), "{n1_only}");
    let n2_only = herd_usage(&n2.url, &["--by", "user", "--node-only"])?;
    assert!(
        row(&n2_only, "cid").is_some(),
        "the head recorded the forwarded request: {n2_only}"
    );
    forwarded_tokens_count_against_tpm(fleet, tokens(&two_forwarded)).await
}

/// A key's tpm is charged at the node that checked the key, for a model
/// headed on another node too: a forwarded stream's tokens (read from the
/// usage chunk herd asks the head for, and drops again for a client that did
/// not ask for it) show in the key's remaining tokens.
async fn forwarded_tokens_count_against_tpm(fleet: &Fleet, used: u64) -> TestResult {
    let n1 = fleet.node("n1")?;
    let tpm = used * 10;
    let key = keys_cli::create_key(
        &fleet.dir.path().join("state-n1"),
        "metered",
        &["--tpm", &tpm.to_string()],
    )?;
    // n1 was open until now (any key passes): wait until it requires keys.
    keys_cli::wait_for_status(&n1.url, "sk-herd-not-a-key", 401, Duration::from_secs(2)).await?;
    keys_cli::wait_for_status(&n1.url, &key, 200, Duration::from_secs(2)).await?;
    let client = reqwest::Client::new();
    let ask = |stream: bool| {
        client
            .post(format!("{}/v1/chat/completions", n1.url))
            .bearer_auth(&key)
            .json(
                &json!({"model": "m-two", "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 4, "stream": stream}),
            )
            .send()
    };
    let remaining = |r: &reqwest::Response| {
        r.headers()
            .get("x-ratelimit-remaining-tokens")
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    };
    let first = ask(true).await?;
    assert_eq!(first.status(), 200);
    assert_eq!(remaining(&first), Some(tpm), "{:?}", first.headers());
    let body = first.text().await?;
    assert!(body.contains("[DONE]"), "{body}");
    assert!(
        !body.contains("\"usage\""),
        "the usage chunk the client did not ask for: {body}"
    );
    let second = ask(false).await?;
    assert_eq!(second.status(), 200);
    let left = remaining(&second).ok_or("no remaining tokens header")?;
    // The stream's tokens (prompt + completion, the same request as `used`)
    // were charged; the refill over a second or two is tpm/60 per second.
    assert!(
        left <= tpm - used + tpm / 20 && left + used >= tpm - used,
        "tpm {tpm}, one request {used}, remaining after one forwarded stream {left}"
    );
    Ok(())
}
