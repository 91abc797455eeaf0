//! `herd usage-bench` (hidden, a measurement tool for bench/usage.py): how
//! fast the usage store takes rows, and what recording costs a request.
//! 1. `store`: rows written straight to the store in transactions of
//!    `--flush-rows` (the recorder actor's batches), one writer.
//! 2. `record`: the request path's cost, `Recorder::record` (a `try_send` on
//!    the bounded channel), timed per call while the actor writes behind it.
//! 3. `recorder`: rows per second from the first `record` until the actor has
//!    written the last one (through channel, batching and store).

use crate::usage::{self, Store, UsageRecord, UserMetrics};
use clap::Args;
use herd_config::UsageConfig;
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct UsageBenchArgs {
    /// `postgres://…`; default: a fresh SQLite file in --dir.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Directory for the SQLite file (default: a temp dir, removed after).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Rows per phase.
    #[arg(long, default_value_t = 100_000)]
    pub rows: usize,
    /// Rows per transaction (`[usage] flush_rows`).
    #[arg(long, default_value_t = 256)]
    pub flush_rows: usize,
}

fn sample(i: usize) -> UsageRecord {
    UsageRecord {
        at_ms: usage::now_ms(),
        key_name: Some(format!("key-{}", i % 10)),
        end_user: Some(format!("user-{}", i % 100)),
        model: "bench-model".into(),
        endpoint: "chat.completions",
        status: 200,
        prompt_tokens: 40,
        cached_tokens: 8,
        completion_tokens: 16,
        ttft_ms: Some(12.5),
        duration_ms: 80.0,
    }
}

pub async fn run(args: UsageBenchArgs) -> anyhow::Result<()> {
    let tmp = tempfile_dir(args.dir.as_deref())?;
    let open = || async {
        match &args.database_url {
            Some(url) => Store::connect(url, "bench").await,
            None => Store::sqlite(&tmp.join(usage::SQLITE_FILE), "bench").await,
        }
    };
    let store = open().await?;
    let rows: Vec<UsageRecord> = (0..args.rows).map(sample).collect();
    let started = Instant::now();
    for batch in rows.chunks(args.flush_rows.max(1)) {
        store.insert(batch).await?;
    }
    let store_rows_per_s = args.rows as f64 / started.elapsed().as_secs_f64();

    let settings = UsageConfig {
        flush_rows: Some(args.flush_rows),
        queue: Some(args.rows.max(1)),
        ..UsageConfig::default()
    }
    .validate()?;
    let dropped = prometheus::IntCounter::new("bench_dropped", "dropped")?;
    let location = match &args.database_url {
        Some(url) => usage::Location::Url {
            url: url.clone(),
            node: "bench".into(),
        },
        None => usage::Location::SqliteFile {
            path: tmp.join(usage::SQLITE_FILE),
            node: "bench".into(),
        },
    };
    let mut service = usage::start(
        location,
        &settings,
        dropped.clone(),
        UserMetrics::disabled(),
    );
    service.run();
    let mut per_call_ns: Vec<u64> = Vec::with_capacity(args.rows);
    let started = Instant::now();
    for r in rows {
        let t = Instant::now();
        service.recorder.record(r);
        per_call_ns.push(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
    }
    service.shutdown().await;
    let recorder_rows_per_s = args.rows as f64 / started.elapsed().as_secs_f64();
    per_call_ns.sort_unstable();
    let pct = |p: f64| {
        let i = ((per_call_ns.len() as f64 - 1.0) * p).round() as usize;
        per_call_ns.get(i).copied().unwrap_or(0)
    };
    // Both phases wrote `rows` rows; the recorder's must all be there.
    let stored = open().await?.raw_rows().await?;
    let recorder_lost = i64::try_from(2 * args.rows).unwrap_or(i64::MAX) - stored;
    println!(
        "{}",
        json!({
            "backend": if args.database_url.is_some() { "postgres" } else { "sqlite" },
            "rows": args.rows,
            "flush_rows": args.flush_rows,
            "store_rows_per_s": store_rows_per_s.round(),
            "recorder_rows_per_s": recorder_rows_per_s.round(),
            "record_ns": {"p50": pct(0.5), "p99": pct(0.99), "p999": pct(0.999), "max": pct(1.0)},
            "dropped": dropped.get(),
            "recorder_rows_lost": recorder_lost,
        })
    );
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(())
}

fn tempfile_dir(dir: Option<&std::path::Path>) -> anyhow::Result<PathBuf> {
    let d = match dir {
        Some(d) => d.to_path_buf(),
        None => std::env::temp_dir().join(format!("herd-usage-bench-{}", std::process::id())),
    };
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
