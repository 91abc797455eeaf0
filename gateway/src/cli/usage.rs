//! `herd usage`: who used what, from a running gateway's `GET /admin/usage`
//! (which answers for the whole cluster: the shared PostgreSQL, or every
//! node's own SQLite file summed over the cluster channel).

use crate::usage::report::{to_csv, to_table, Report};
use clap::Args;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct UsageArgs {
    /// Base URL of any herd gateway.
    #[arg(long, env = "HERD_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// An admin API key, for a gateway that has API keys.
    #[arg(long, env = "HERD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Start of the period: 7d, 24h, 30m, 2w, or a UTC date like 2026-12-01.
    #[arg(long, default_value = crate::usage::report::DEFAULT_SINCE)]
    pub since: String,
    /// Group rows by key, user, model or day.
    #[arg(long, default_value = "model", value_parser = ["key", "user", "model", "day"])]
    pub by: String,
    /// Only this key's requests.
    #[arg(long)]
    pub key: Option<String>,
    /// Only this end user's requests.
    #[arg(long)]
    pub user: Option<String>,
    /// Only this model's requests.
    #[arg(long)]
    pub model: Option<String>,
    /// Only the gateway at --url, not the whole cluster.
    #[arg(long)]
    pub node_only: bool,
    /// Print JSON.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print CSV.
    #[arg(long)]
    pub csv: bool,
}

pub async fn run(args: UsageArgs) -> anyhow::Result<()> {
    let url = args.url.trim_end_matches('/');
    let mut query: Vec<(&str, &str)> = vec![
        ("since", &args.since),
        ("by", &args.by),
        ("scope", if args.node_only { "node" } else { "cluster" }),
    ];
    for (name, value) in [
        ("key", &args.key),
        ("user", &args.user),
        ("model", &args.model),
    ] {
        if let Some(v) = value {
            query.push((name, v));
        }
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let mut req = client.get(format!("{url}/admin/usage")).query(&query);
    if let Some(key) = &args.api_key {
        req = req.bearer_auth(key);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach {url}: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp.text().await?;
    if status != 200 {
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or(body);
        match status {
            401 => {
                anyhow::bail!("{url} needs an API key: pass --api-key KEY (or set HERD_API_KEY)")
            }
            _ => anyhow::bail!("{url}/admin/usage answered {status}: {message}"),
        }
    }
    let report: Report = serde_json::from_str(&body)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if args.csv {
        print!("{}", to_csv(&report));
    } else {
        print!("{}", to_table(&report));
    }
    if !report.missing_nodes.is_empty() {
        eprintln!(
            "herd usage: no answer from {}; their usage is missing",
            report.missing_nodes.join(", ")
        );
    }
    Ok(())
}
