//! A shared PostgreSQL that is down when herd starts does not stop herd: it
//! serves, keeps the requests' usage queued, answers `/admin/usage` with 503,
//! and writes the queued rows once the database is up (a real PostgreSQL,
//! started late on the port herd was told).

mod common;
#[path = "common/postgres.rs"]
mod postgres;

use common::{model_path, Server, TestResult, MODEL_ID};
use serde_json::{json, Value};
use sqlx::{AnyPool, Row};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_waits_for_a_database_that_is_down_at_start() -> TestResult {
    let port = postgres::Postgres::free_port()?;
    let url = format!("postgres://herd@127.0.0.1:{port}/herd_usage");
    let state = tempfile::tempdir()?;
    let config = format!(
        "[[models]]\npath = \"{}\"\nslots = 1\n\n[usage]\ndatabase_url = \"{url}\"\nflush_ms = 100\n",
        model_path().display()
    );
    let state_dir = state.path().display().to_string();
    let server = Server::start_config(
        &config,
        &[
            "--state-dir",
            &state_dir,
            "--threads",
            "1",
            "--no-discovery",
        ],
        &[],
    )?;
    let client = reqwest::Client::new();
    let answer = client
        .post(format!("{}/v1/chat/completions", server.url))
        .json(
            &json!({"model": MODEL_ID, "user": "u-early", "max_tokens": 4,
                      "messages": [{"role": "user", "content": "Hi"}]}),
        )
        .send()
        .await?;
    assert_eq!(
        answer.status(),
        200,
        "herd serves without its usage database"
    );
    let usage: Value = answer.json::<Value>().await?["usage"].clone();
    let report = client
        .get(format!("{}/admin/usage", server.url))
        .send()
        .await?;
    assert_eq!(report.status(), 503);
    let body: Value = report.json().await?;
    assert!(body["error"]["message"].is_string(), "{body}");
    // The first attempt gives up after the pool's 5 s connect timeout.
    let logged = Instant::now() + Duration::from_secs(20);
    while !server
        .log_text()
        .contains("cannot open the usage database ([usage] database_url)")
    {
        assert!(Instant::now() < logged, "{}", server.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let _pg = postgres::Postgres::start_on(port)?;
    sqlx::any::install_default_drivers();
    let pool = AnyPool::connect(&url).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let row = loop {
        let got = sqlx::query(
            "SELECT prompt_tokens, completion_tokens FROM usage_requests WHERE end_user = $1",
        )
        .bind("u-early")
        .fetch_optional(&pool)
        .await;
        if let Ok(Some(row)) = got {
            break row;
        }
        assert!(
            Instant::now() < deadline,
            "the queued row never arrived:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        Some(row.try_get::<i64, _>(0)?),
        usage["prompt_tokens"].as_i64()
    );
    assert_eq!(
        Some(row.try_get::<i64, _>(1)?),
        usage["completion_tokens"].as_i64()
    );
    let report: Value = client
        .get(format!("{}/admin/usage?by=user", server.url))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(report["data"][0]["group"], "u-early", "{report}");
    Ok(())
}
