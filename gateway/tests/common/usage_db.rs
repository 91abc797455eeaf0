//! The usage tests' harness: a `herd serve` (real SmolLM2, API keys `alice`
//! and the admin `boss`) writing SQLite or PostgreSQL, a connection to the
//! same database, and the helpers that read rows back.

#![allow(dead_code)]

use crate::common::{model_path, Server, MODEL_ID};
use serde_json::{json, Value};
use sqlx::{AnyPool, Row};
use std::time::{Duration, Instant};

pub const ALICE: &str = "sk-usage-alice-0123456789abcdef";
pub const BOSS: &str = "sk-usage-boss-0123456789abcdef";
pub const DAY_MS: i64 = 86_400_000;

/// Where the servers of one suite keep their usage.
pub struct Db {
    /// PostgreSQL's URL; `None`: each server's own SQLite file in its state dir.
    postgres: Option<String>,
    keys: tempfile::TempDir,
}

/// One server and a connection to the database it writes.
pub struct Node {
    pub server: Server,
    pub pool: AnyPool,
    postgres: bool,
    _state: tempfile::TempDir,
}

impl Db {
    pub fn new(postgres: Option<String>) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let keys = tempfile::tempdir()?;
        std::fs::write(
            keys.path().join("keys"),
            format!("alice:{ALICE}\nboss:{BOSS}:admin\n"),
        )?;
        Ok(Self { postgres, keys })
    }

    pub async fn start(
        &self,
        model: &str,
        usage: &str,
    ) -> Result<Node, Box<dyn std::error::Error + Send + Sync>> {
        let state = tempfile::tempdir()?;
        let url = match &self.postgres {
            Some(url) => url.clone(),
            None => format!("sqlite://{}/usage.db?mode=rwc", state.path().display()),
        };
        let database = match &self.postgres {
            Some(url) => format!("database_url = \"{url}\"\n"),
            None => String::new(),
        };
        let config = format!(
            "api_key_file = \"{}\"\n\n[[models]]\npath = \"{}\"\n{model}\n\n[usage]\n{database}{usage}\n",
            self.keys.path().join("keys").display(),
            model_path().display(),
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
        sqlx::any::install_default_drivers();
        let pool = AnyPool::connect(&url).await?;
        // herd opens (and migrates) its store right after it starts.
        let deadline = Instant::now() + Duration::from_secs(10);
        while sqlx::query("SELECT COUNT(*) FROM usage_requests")
            .fetch_one(&pool)
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                return Err(format!(
                    "herd never created its usage tables:\n{}",
                    server.log_text()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Node {
            server,
            pool,
            postgres: self.postgres.is_some(),
            _state: state,
        })
    }
}

pub async fn post(
    node: &Node,
    path: &str,
    key: &str,
    headers: &[(&str, &str)],
    body: Value,
) -> Result<(u16, String), reqwest::Error> {
    let mut req = reqwest::Client::new()
        .post(format!("{}{path}", node.server.url))
        .bearer_auth(key)
        .json(&body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await?;
    Ok((resp.status().as_u16(), resp.text().await?))
}

pub async fn get(
    node: &Node,
    path: &str,
    key: &str,
) -> Result<(u16, Value), Box<dyn std::error::Error + Send + Sync>> {
    let resp = reqwest::Client::new()
        .get(format!("{}{path}", node.server.url))
        .bearer_auth(key)
        .send()
        .await?;
    Ok((resp.status().as_u16(), resp.json().await?))
}

pub fn chat(user: Option<&str>, max_tokens: u32, stream: bool) -> Value {
    let mut body = json!({
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": "Name three colours."}],
        "max_tokens": max_tokens,
        "temperature": 0,
    });
    if let Some(u) = user {
        body["user"] = json!(u);
    }
    if stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

/// The stored row of the one request made by end user `user`.
pub async fn row_of(
    node: &Node,
    user: &str,
) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = sqlx::query(&placeholders(
            node,
            "SELECT COALESCE(key_name, ''), model, endpoint, status, prompt_tokens, cached_tokens, \
             completion_tokens, ttft_ms, duration_ms FROM usage_requests WHERE end_user = ?",
        ))
        .bind(user.to_string())
        .fetch_all(&node.pool)
        .await?;
        if let Some(r) = rows.first() {
            assert_eq!(rows.len(), 1, "one row for {user}");
            return Ok(json!({
                "key": r.try_get::<String, _>(0)?,
                "model": r.try_get::<String, _>(1)?,
                "endpoint": r.try_get::<String, _>(2)?,
                "status": r.try_get::<i64, _>(3)?,
                "prompt_tokens": r.try_get::<i64, _>(4)?,
                "cached_tokens": r.try_get::<i64, _>(5)?,
                "completion_tokens": r.try_get::<i64, _>(6)?,
                "ttft_ms": r.try_get::<Option<f64>, _>(7)?,
                "duration_ms": r.try_get::<f64, _>(8)?,
            }));
        }
        if Instant::now() > deadline {
            return Err(format!("no usage row for {user}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `?` → `$n` on PostgreSQL.
pub fn placeholders(node: &Node, sql: &str) -> String {
    if !node.postgres {
        return sql.to_string();
    }
    let mut n = 0;
    sql.chars()
        .map(|c| {
            if c == '?' {
                n += 1;
                format!("${n}")
            } else {
                c.to_string()
            }
        })
        .collect()
}

pub async fn count(node: &Node, sql: &str, arg: &str) -> Result<i64, sqlx::Error> {
    sqlx::query(&placeholders(node, sql))
        .bind(arg.to_string())
        .fetch_one(&node.pool)
        .await?
        .try_get(0)
}

pub fn assert_row_matches(row: &Value, usage: &Value, key: &str, endpoint: &str) {
    assert_eq!(row["key"], key, "{row}");
    assert_eq!(row["model"], MODEL_ID, "{row}");
    assert_eq!(row["endpoint"], endpoint, "{row}");
    assert_eq!(row["status"], 200, "{row}");
    assert_eq!(
        row["prompt_tokens"], usage["prompt_tokens"],
        "{row} vs {usage}"
    );
    assert_eq!(
        row["completion_tokens"], usage["completion_tokens"],
        "{row} vs {usage}"
    );
    let cached = usage["prompt_tokens_details"]["cached_tokens"]
        .as_i64()
        .unwrap_or(0);
    assert_eq!(row["cached_tokens"], cached, "{row} vs {usage}");
    assert!(row["ttft_ms"].as_f64().is_some_and(|t| t > 0.0), "{row}");
    assert!(
        row["duration_ms"].as_f64() >= row["ttft_ms"].as_f64(),
        "{row}"
    );
}
