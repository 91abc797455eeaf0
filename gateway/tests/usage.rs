//! Usage accounting against a real `herd serve` (real SmolLM2), once on the
//! default SQLite file and once on a real PostgreSQL started here: the same
//! suite, two tests. Rows must match the `usage` herd answered with, token
//! for token; refusals are recorded; `/admin/usage` and `herd usage` report
//! them; old rows roll up into daily totals; SIGTERM writes everything; and
//! kill -9 loses at most the documented batch.

mod common;
#[path = "common/postgres.rs"]
mod postgres;
#[path = "common/usage_db.rs"]
mod usage_db;

use common::{signal, TestResult, MODEL_ID};
use serde_json::{json, Value};
use sqlx::Row;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use usage_db::{
    assert_row_matches, chat, count, get, placeholders, post, row_of, Db, Node, ALICE, BOSS, DAY_MS,
};

/// `[usage] flush_rows` of the crash test: what docs/usage.md says a crash may lose.
const CRASH_FLUSH_ROWS: u64 = 16;

async fn suite(db: Db) -> TestResult {
    accounting_and_reports(&db).await?;
    sigterm_writes_everything(&db).await?;
    kill_9_loses_at_most_one_batch(&db).await?;
    Ok(())
}

async fn accounting_and_reports(db: &Db) -> TestResult {
    let node = db
        .start(
            "slots = 1\nmax_queue = 0",
            "flush_ms = 100\nrollup_interval_secs = 1\nretention_days = 30",
        )
        .await?;
    let node = &node;
    // Non-streaming, end user from `user`.
    let (status, body) = post(
        node,
        "/v1/chat/completions",
        ALICE,
        &[],
        chat(Some("u-json"), 8, false),
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    let usage = serde_json::from_str::<Value>(&body)?["usage"].clone();
    assert_row_matches(
        &row_of(node, "u-json").await?,
        &usage,
        "alice",
        "chat.completions",
    );

    // Streaming with include_usage, end user from Open WebUI's id header.
    let (status, body) = post(
        node,
        "/v1/chat/completions",
        ALICE,
        &[
            ("X-OpenWebUI-User-Id", "u-owui-id"),
            ("X-OpenWebUI-User-Email", "not@used"),
        ],
        chat(None, 12, true),
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    let usage = common::sse_data(&body)
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|v| v["usage"].is_object())
        .map(|v| v["usage"].clone())
        .ok_or("no usage chunk")?;
    assert_row_matches(
        &row_of(node, "u-owui-id").await?,
        &usage,
        "alice",
        "chat.completions",
    );

    // Text completions by the admin key, end user from Open WebUI's email header.
    let (status, body) = post(
        node,
        "/v1/completions",
        BOSS,
        &[("X-OpenWebUI-User-Email", "mail@example.org")],
        json!({"model": MODEL_ID, "prompt": "Once upon a time", "max_tokens": 5}),
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    let usage = serde_json::from_str::<Value>(&body)?["usage"].clone();
    assert_row_matches(
        &row_of(node, "mail@example.org").await?,
        &usage,
        "boss",
        "completions",
    );

    // Refusals: an unknown model (404), and a full server (429: one slot, no queue).
    let mut asked = chat(Some("u-404"), 4, false);
    asked["model"] = json!("no-such-model");
    let (status, _) = post(node, "/v1/chat/completions", ALICE, &[], asked).await?;
    assert_eq!(status, 404);
    let long = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", node.server.url))
        .bearer_auth(ALICE)
        .json(&chat(Some("u-long"), 200, true))
        .send()
        .await?;
    let mut long = long.bytes_stream();
    use futures::StreamExt;
    let first = long.next().await.ok_or("no first chunk")??;
    assert!(!first.is_empty());
    let (status, body) = post(
        node,
        "/v1/chat/completions",
        ALICE,
        &[],
        chat(Some("u-429"), 4, false),
    )
    .await?;
    assert_eq!(status, 429, "{body}");
    while long.next().await.is_some() {}
    for (user, status) in [("u-404", 404), ("u-429", 429)] {
        let row = row_of(node, user).await?;
        assert_eq!(row["status"], status, "{row}");
        assert_eq!(row["key"], "alice", "{row}");
        assert_eq!(row["completion_tokens"], 0, "{row}");
    }
    assert_eq!(row_of(node, "u-long").await?["status"], 200);

    admin_usage(node).await?;
    herd_usage_cli(node).await?;
    retention_rolls_up(node).await?;
    Ok(())
}

async fn admin_usage(node: &Node) -> TestResult {
    let (status, body) = get(node, "/admin/usage", ALICE).await?;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "insufficient_permissions", "{body}");
    for (query, param) in [
        ("by=colour", "by"),
        ("since=soon", "since"),
        ("scope=galaxy", "scope"),
    ] {
        let (status, body) = get(node, &format!("/admin/usage?{query}"), BOSS).await?;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["param"], param, "{body}");
    }
    let (status, body) = get(node, "/admin/usage?by=user&since=1h", BOSS).await?;
    assert_eq!(status, 200, "{body}");
    let users: Vec<&str> = body["data"]
        .as_array()
        .ok_or("no data")?
        .iter()
        .filter_map(|r| r["group"].as_str())
        .collect();
    for u in [
        "u-json",
        "u-owui-id",
        "mail@example.org",
        "u-404",
        "u-429",
        "u-long",
    ] {
        assert!(users.contains(&u), "{u} missing from {body}");
    }
    let (_, by_key) = get(node, "/admin/usage?by=key", BOSS).await?;
    let alice = by_key["data"]
        .as_array()
        .and_then(|d| d.iter().find(|r| r["group"] == "alice"))
        .ok_or("no alice")?;
    assert_eq!(alice["requests"], 5, "{by_key}");
    assert_eq!(alice["errors"], 2, "{by_key}");
    let (_, one) = get(node, "/admin/usage?by=model&key=boss", BOSS).await?;
    assert_eq!(one["data"].as_array().map(Vec::len), Some(1), "{one}");
    assert_eq!(one["data"][0]["requests"], 1, "{one}");
    Ok(())
}

async fn herd_usage_cli(node: &Node) -> TestResult {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_herd"))
        .args([
            "usage",
            "--by",
            "model",
            "--json",
            "--since",
            "1d",
            "--url",
            &node.server.url,
            "--api-key",
            BOSS,
        ])
        .output()
        .await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout)?;
    let (_, served) = get(node, "/admin/usage?by=model&since=1d", BOSS).await?;
    assert_eq!(printed["data"], served["data"]);
    let model = printed["data"]
        .as_array()
        .and_then(|d| d.iter().find(|r| r["group"] == MODEL_ID))
        .ok_or("no model row")?;
    // 5 answered (json, stream, completions, long, and the 429 named the model).
    assert_eq!(model["requests"], 5, "{printed}");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_herd"))
        .args([
            "usage",
            "--by",
            "key",
            "--csv",
            "--url",
            &node.server.url,
            "--api-key",
            ALICE,
        ])
        .output()
        .await?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("403"));
    Ok(())
}

/// Rows older than the horizon move into daily totals within a roll-up interval.
async fn retention_rolls_up(node: &Node) -> TestResult {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let old = now - 40 * DAY_MS;
    for tokens in [10_i64, 20, 30] {
        sqlx::query(&placeholders(
            node,
            "INSERT INTO usage_requests (at_ms, node, key_name, end_user, model, endpoint, status, \
             prompt_tokens, cached_tokens, completion_tokens, ttft_ms, duration_ms) \
             VALUES (?, 'test', 'old-key', 'old-user', 'old-model', 'chat.completions', 200, ?, 0, ?, 1.0, 2.0)",
        ))
        .bind(old)
        .bind(tokens)
        .bind(tokens * 2)
        .execute(&node.pool)
        .await?;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(
        node,
        "SELECT COUNT(*) FROM usage_requests WHERE key_name = ?",
        "old-key",
    )
    .await?
        > 0
    {
        assert!(Instant::now() < deadline, "old rows were never rolled up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let daily = sqlx::query(&placeholders(
        node,
        "SELECT day, requests, prompt_tokens, completion_tokens FROM usage_daily WHERE key_name = ?",
    ))
    .bind("old-key".to_string())
    .fetch_all(&node.pool)
    .await?;
    assert_eq!(daily.len(), 1);
    assert_eq!(daily[0].try_get::<i64, _>(0)?, old / DAY_MS);
    assert_eq!(daily[0].try_get::<i64, _>(1)?, 3);
    assert_eq!(daily[0].try_get::<i64, _>(2)?, 60);
    assert_eq!(daily[0].try_get::<i64, _>(3)?, 120);
    // Recent rows stay raw; reports read both.
    assert!(
        count(
            node,
            "SELECT COUNT(*) FROM usage_requests WHERE key_name = ?",
            "alice"
        )
        .await?
            >= 5
    );
    let (_, report) = get(node, "/admin/usage?by=key&since=60d", BOSS).await?;
    let old_key = report["data"]
        .as_array()
        .and_then(|d| d.iter().find(|r| r["group"] == "old-key"))
        .ok_or("no old-key")?;
    assert_eq!(old_key["total_tokens"], 180, "{report}");
    let (_, recent) = get(node, "/admin/usage?by=key&since=7d", BOSS).await?;
    assert!(!recent.to_string().contains("old-key"), "{recent}");
    Ok(())
}

/// Records waiting for a flush that would never come in time are written on SIGTERM.
async fn sigterm_writes_everything(db: &Db) -> TestResult {
    let node = db
        .start("slots = 2", "flush_ms = 600000\nflush_rows = 100000")
        .await?;
    for _ in 0..5 {
        let (status, body) = post(
            &node,
            "/v1/chat/completions",
            ALICE,
            &[],
            chat(Some("u-term"), 4, false),
        )
        .await?;
        assert_eq!(status, 200, "{body}");
    }
    let sql = "SELECT COUNT(*) FROM usage_requests WHERE end_user = ?";
    assert_eq!(count(&node, sql, "u-term").await?, 0, "nothing flushed yet");
    let mut node = node;
    signal(node.server.pid(), "-TERM")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while node.server.child.try_wait()?.is_none() {
        assert!(Instant::now() < deadline, "herd did not exit on SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        count(&node, sql, "u-term").await?,
        5,
        "{}",
        node.server.log_text()
    );
    Ok(())
}

/// kill -9 under load: the rows lost are at most the batch being filled and
/// the one being written (`2 × flush_rows`), and never more than the last
/// `flush_ms` of answers.
async fn kill_9_loses_at_most_one_batch(db: &Db) -> TestResult {
    let node = db
        .start(
            "slots = 4\nmax_queue = 64",
            &format!("flush_ms = 1000\nflush_rows = {CRASH_FLUSH_ROWS}"),
        )
        .await?;
    let answered = Arc::new(AtomicU64::new(0));
    let url = format!("{}/v1/chat/completions", node.server.url);
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let (answered, url) = (answered.clone(), url.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                loop {
                    let r = client
                        .post(&url)
                        .bearer_auth(ALICE)
                        .json(&chat(Some("u-crash"), 2, false))
                        .send()
                        .await;
                    let Ok(r) = r else { return };
                    if r.status() == 200 && r.bytes().await.is_ok() {
                        answered.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(4500)).await;
    signal(node.server.pid(), "-KILL")?;
    for c in clients {
        let _ = c.await;
    }
    let answered = answered.load(Ordering::SeqCst);
    let stored = count(
        &node,
        "SELECT COUNT(*) FROM usage_requests WHERE end_user = ? AND status = 200",
        "u-crash",
    )
    .await? as u64;
    let lost = answered.saturating_sub(stored);
    eprintln!("kill -9 under load: {answered} answered, {stored} stored, {lost} lost (flush_rows {CRASH_FLUSH_ROWS}, flush_ms 1000)");
    assert!(
        answered > CRASH_FLUSH_ROWS,
        "too little load to measure: {answered}"
    );
    assert!(lost <= 2 * CRASH_FLUSH_ROWS, "lost {lost} of {answered}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn usage_on_sqlite() -> TestResult {
    suite(Db::new(None)?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn usage_on_postgres() -> TestResult {
    let pg = postgres::Postgres::start()?;
    suite(Db::new(Some(pg.url.clone()))?).await
}
