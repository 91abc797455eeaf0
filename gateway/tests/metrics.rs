//! The Grafana dashboard is proven against real data: a real `herd serve`
//! (real model) is scraped by a real Prometheus while real traffic flows, then
//! every PromQL expression in grafana/herd-dashboard.json must return data, and
//! every rate must have moved. A panel querying a metric herd does not export
//! fails here.

mod common;
#[path = "common/prom.rs"]
mod prom;

use common::{Server, MODEL_ID};
use prom::{BoxError, Prometheus};
use serde_json::{json, Value};

const ALICE: &str = "sk-metrics-alice-0123456789";
const BOB: &str = "sk-metrics-bob-0123456789";

/// Every `expr` of every panel target, rows' nested panels included.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut panels: Vec<&Value> = dashboard["panels"]
        .as_array()
        .map(|p| p.iter().collect())
        .unwrap_or_default();
    while let Some(panel) = panels.pop() {
        if let Some(nested) = panel["panels"].as_array() {
            panels.extend(nested);
        }
        let title = panel["title"].as_str().unwrap_or("untitled").to_string();
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push((title.clone(), expr.to_string()));
            }
        }
    }
    out
}

/// Grafana's variables, as an operator would see them with "All" selected.
fn concrete(expr: &str) -> String {
    [
        ("${model}", ".*"),
        ("$model", ".*"),
        ("${key}", ".*"),
        ("$key", ".*"),
        ("$__rate_interval", "1m"),
        ("$__interval", "15s"),
        ("$__range", "10m"),
    ]
    .iter()
    .fold(expr.to_string(), |e, (var, value)| e.replace(var, value))
}

/// What Grafana needs to load the dashboard as intended: unique panel ids,
/// every graph panel on the templated datasource with at least one query,
/// no two panels on the same grid cells, and every variable used.
#[test]
fn dashboard_is_well_formed() -> Result<(), BoxError> {
    let dashboard: Value = serde_json::from_str(include_str!("../../grafana/herd-dashboard.json"))?;
    assert!(dashboard["uid"].is_string() && dashboard["title"].is_string());
    let panels = dashboard["panels"].as_array().ok_or("no panels")?;
    let mut ids = std::collections::BTreeSet::new();
    let mut cells = std::collections::BTreeSet::new();
    for p in panels {
        let title = p["title"].as_str().unwrap_or_default();
        assert!(ids.insert(p["id"].as_u64()), "duplicate id on {title}");
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64(),
            g["y"].as_u64(),
            g["w"].as_u64(),
            g["h"].as_u64(),
        );
        let (Some(x), Some(y), Some(w), Some(h)) = (x, y, w, h) else {
            return Err(format!("{title}: no gridPos").into());
        };
        assert!(x + w <= 24, "{title} is wider than the grid");
        for cell in (x..x + w).flat_map(|cx| (y..y + h).map(move |cy| (cx, cy))) {
            assert!(
                cells.insert(cell),
                "{title} overlaps another panel at {cell:?}"
            );
        }
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"]
            .as_array()
            .ok_or(format!("{title}: no targets"))?;
        assert!(!targets.is_empty(), "{title} has no query");
        let refs: std::collections::BTreeSet<_> =
            targets.iter().map(|t| t["refId"].as_str()).collect();
        assert_eq!(refs.len(), targets.len(), "{title}: duplicate refId");
    }
    let exprs: Vec<_> = dashboard_queries(&dashboard)
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = var["name"].as_str().ok_or("unnamed variable")?;
        let used = name == "datasource" || exprs.iter().any(|e| e.contains(&format!("${name}")));
        assert!(used, "variable {name} is not used by any panel");
    }
    Ok(())
}

/// Kills the `herd serve`'s engine host (its child process) and waits until
/// herd has counted the restart and the engine is serving again.
async fn crash_engine_host(server: &Server) -> Result<(), BoxError> {
    let hosts = common::children(server.pid());
    assert_eq!(hosts.len(), 1, "expected one engine host, found {hosts:?}");
    common::signal(hosts[0], "-KILL")?;
    let counted = format!("herd_engine_restarts_total{{model=\"{MODEL_ID}\"}} 1");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !common::ureq_get(&format!("{}/metrics", server.url))?
        .1
        .contains(&counted)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "herd never counted the engine restart"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tokio::task::block_in_place(|| server.wait_healthy(std::time::Duration::from_secs(60)))?;
    Ok(())
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    body: &Value,
) -> Result<(u16, String), BoxError> {
    let r = client.post(url).bearer_auth(key).json(body).send().await?;
    let status = r.status().as_u16();
    Ok((status, r.text().await?))
}

/// One round of the traffic an operator's server sees: more concurrent streams
/// than slots (so requests queue), plain completions, and refused requests.
/// Greedy sampling, so every answer has text and the counts below are exact.
async fn drive(server: &Server) -> Result<(), BoxError> {
    let client = reqwest::Client::new();
    let chat = format!("{}/chat/completions", server.v1());
    let stream = |n: u32| {
        json!({"model": MODEL_ID, "stream": true, "stream_options": {"include_usage": true}, "max_tokens": 24, "temperature": 0,
               "messages": [{"role": "user", "content": format!("Count to {n}.")}]})
    };
    let streams: Vec<_> = (0..3)
        .map(|i| {
            let (client, chat, body) = (client.clone(), chat.clone(), stream(i + 3));
            let key = if i % 2 == 0 { ALICE } else { BOB };
            tokio::spawn(async move { post(&client, &chat, key, &body).await })
        })
        .collect();
    for s in streams {
        let (status, body) = s.await??;
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains("[DONE]") && body.contains("\"usage\""),
            "{body}"
        );
    }
    let plain = json!({"model": MODEL_ID, "max_tokens": 16, "temperature": 0, "messages": [{"role": "user", "content": "Say hi."}]});
    let (status, body) = post(&client, &chat, BOB, &plain).await?;
    assert_eq!(status, 200, "{body}");
    let completion =
        json!({"model": MODEL_ID, "max_tokens": 8, "temperature": 0, "prompt": "Once upon a time"});
    let (status, body) = post(
        &client,
        &format!("{}/completions", server.v1()),
        ALICE,
        &completion,
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    let unknown =
        json!({"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(post(&client, &chat, ALICE, &unknown).await?.0, 404);
    let bad = json!({"model": MODEL_ID, "temperature": 7, "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(post(&client, &chat, ALICE, &bad).await?.0, 400);
    assert_eq!(post(&client, &chat, "sk-wrong", &plain).await?.0, 401);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_live_data() -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let keys = dir.path().join("keys");
    std::fs::write(&keys, format!("alice:{ALICE}\nbob:{BOB}\n"))?;
    let keys = keys.to_string_lossy().to_string();
    let server = Server::start(&["--slots", "1", "--max-queue", "16", "--api-key-file", &keys])?;
    let target = server.url.trim_start_matches("http://").to_string();
    let prometheus = Prometheus::start(&target).await?;
    prometheus.wait_scrapes(2).await?;

    // Two rounds, each followed by scrapes, so that even series born in the
    // first round have risen between two samples in the second.
    // Between them the engine host crashes, so restart panels have something to show.
    drive(&server).await?;
    prometheus.wait_scrapes(2).await?;
    crash_engine_host(&server).await?;
    drive(&server).await?;
    prometheus.wait_scrapes(2).await?;

    // The exposition itself: key names, never keys.
    let (status, text) = common::ureq_get(&format!("{}/metrics", server.url))?;
    assert_eq!(status, 200);
    assert!(
        !text.contains(ALICE) && !text.contains(BOB),
        "a secret leaked into /metrics"
    );

    let dashboard: Value = serde_json::from_str(include_str!("../../grafana/herd-dashboard.json"))?;
    let queries = dashboard_queries(&dashboard);
    assert!(
        queries.len() >= 20,
        "the dashboard has only {} queries",
        queries.len()
    );
    let mut failures = Vec::new();
    for (panel, expr) in &queries {
        let series = prometheus.query(&concrete(expr)).await?;
        if series.is_empty() {
            failures.push(format!("{panel}: `{expr}` returned no data"));
        } else if (expr.contains("rate(") || expr.contains("increase("))
            && !series.iter().any(|(_, v)| v.is_finite() && *v > 0.0)
        {
            // A rate that stayed flat under this load (and a crash) means the panel watches nothing.
            failures.push(format!("{panel}: `{expr}` did not move: {series:?}"));
        }
    }
    // The dashboard's variables (`label_values(metric, label)`) must list values too.
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let Some(q) = var["definition"].as_str() else {
            continue;
        };
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'));
        let Some((metric, label)) = inner.and_then(|i| i.split_once(',')) else {
            continue;
        };
        let expr = format!("count by ({}) ({})", label.trim(), metric.trim());
        if prometheus.query(&expr).await?.is_empty() {
            failures.push(format!("variable {}: `{q}` lists nothing", var["name"]));
        }
    }
    assert!(
        failures.is_empty(),
        "dashboard queries without live data:\n{}",
        failures.join("\n")
    );

    // The counters an SRE reads first moved by what the traffic did.
    let v = |e: &'static str| prometheus.value(e);
    assert!(v("sum(herd_generation_tokens_total)").await? > 0.0);
    assert!(v("sum(herd_prompt_tokens_total)").await? > 0.0);
    assert_eq!(v("sum(herd_requests_total{status=\"200\"})").await?, 10.0);
    assert_eq!(v("sum(herd_requests_total{status=\"404\",error_type=\"model_not_found\",model=\"unknown\"})").await?, 2.0);
    assert_eq!(
        v("sum(herd_requests_total{status=\"400\",error_type=\"invalid_request\"})").await?,
        2.0
    );
    assert_eq!(
        v("sum(herd_requests_total{status=\"401\",error_type=\"unauthorized\"})").await?,
        2.0
    );
    assert_eq!(
        v("sum(herd_time_to_first_token_seconds_count)").await?,
        10.0
    );
    assert!(v("sum(herd_inter_token_latency_seconds_count)").await? > 10.0);
    assert_eq!(v("sum(herd_queue_wait_seconds_count)").await?, 10.0);
    assert_eq!(
        v("sum(herd_key_requests_total{key=\"alice\"})").await?,
        10.0
    );
    assert_eq!(v("sum(herd_key_requests_total{key=\"bob\"})").await?, 4.0);
    assert!(v("sum(herd_key_tokens_total{key=\"bob\",kind=\"generation\"})").await? > 0.0);
    assert_eq!(v("sum(herd_engine_up)").await?, 1.0);
    assert_eq!(v("sum(herd_engine_restarts_total)").await?, 1.0);
    assert_eq!(v("sum(herd_slots_total)").await?, 1.0);
    assert_eq!(
        v("sum(herd_requests_running) + sum(herd_requests_waiting)").await?,
        0.0,
        "gauges leaked"
    );
    assert!(v("sum(herd_kv_cache_capacity_tokens)").await? > 0.0);
    let build = prometheus.query("herd_build_info").await?;
    assert_eq!(build.len(), 1);
    assert_eq!(build[0].0["version"], env!("CARGO_PKG_VERSION"));
    assert!(build[0].0["commit"].as_str().is_some_and(|c| !c.is_empty()));

    // Scraping stays cheap, under load too: Prometheus timed every scrape,
    // including those while the streams above were running.
    let slowest = prometheus
        .value("max_over_time(scrape_duration_seconds{job=\"herd\"}[10m])")
        .await?;
    let scrapes = prometheus
        .value("count_over_time(scrape_duration_seconds{job=\"herd\"}[10m])")
        .await?;
    eprintln!(
        "metrics: {} dashboard queries returned live data; slowest of {scrapes} scrapes took {:.2} ms",
        queries.len(),
        slowest * 1000.0
    );
    assert!(slowest < 0.1, "a scrape took {slowest} s");
    Ok(())
}
