//! `herd bench`: a load generator for any OpenAI-compatible server (herd,
//! llama-server, LiteLLM, ...). It reports rates and latency percentiles as a
//! table, or as JSON for the scripts in bench/.

mod args;
mod client;
mod load;
mod prompt;
mod report;
mod stats;

pub use args::{BenchArgs, Endpoint};
pub use report::Report;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    check(&args)?;
    let model = match &args.model {
        Some(m) => m.clone(),
        None => first_model(&args).await?,
    };
    let target = Arc::new(client::Target::new(&args, model.clone())?);
    let prompts = Arc::new(prompt::Prompts::new(
        args.prompt_tokens,
        args.prompt_file.as_deref(),
        args.shared_prefix,
    )?);
    if let Some(err) = load::warm_up(&target, &prompts, args.warmup).await {
        anyhow::bail!("every warm-up request failed; last error: {err}");
    }
    let plan = load::Plan {
        concurrency: args.concurrency.max(1),
        requests: args.requests,
        duration: args.duration.map(Duration::from_secs_f64),
        rate: args.rate,
        honor_retry_after: args.honor_retry_after,
    };
    let progress = progress_bar(&args, &plan);
    let (collector, wall) = load::run(target, prompts, plan, &progress).await;
    progress.finish_and_clear();
    let report = Report::new(
        report::RunInfo {
            base_url: args.base_url.clone(),
            endpoint: args.endpoint.name().to_string(),
            model,
            stream: args.stream,
            concurrency: args.concurrency.max(1),
            offered_rate: args.rate,
            max_tokens: args.max_tokens,
        },
        &collector,
        wall,
    );
    let text = if args.json {
        serde_json::to_string_pretty(&report)? + "\n"
    } else {
        report.table()
    };
    // write_all, not print!: a closed pipe (`| head`) is an error to return, not a panic.
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .context("cannot write the report to stdout")?;
    if report.requests.completed == 0 && report.requests.failed > 0 {
        anyhow::bail!("no request succeeded ({} failed)", report.requests.failed);
    }
    Ok(())
}

/// Rejects values that would make the run meaningless or endless.
fn check(args: &BenchArgs) -> anyhow::Result<()> {
    let positive = |name: &str, v: Option<f64>| match v {
        Some(x) if !(x > 0.0 && x.is_finite()) => {
            anyhow::bail!("`--{name}` must be a positive number of seconds or requests, got {x}")
        }
        _ => Ok(()),
    };
    positive("rate", args.rate)?;
    positive("duration", args.duration)?;
    positive("timeout", Some(args.timeout))?;
    if args.concurrency == 0 {
        anyhow::bail!("`--concurrency` must be at least 1");
    }
    Ok(())
}

/// The first model id of GET {base}/models.
async fn first_model(args: &BenchArgs) -> anyhow::Result<String> {
    let url = format!("{}/models", args.base_url.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let mut request = client.get(&url);
    if let Some(key) = &args.api_key {
        request = request.bearer_auth(key);
    }
    let body: serde_json::Value = request
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("cannot list models at {url} (pass --model to skip this)"))?
        .json()
        .await
        .with_context(|| format!("{url} did not answer JSON"))?;
    body["data"][0]["id"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("{url} lists no model; pass --model"))
}

fn progress_bar(args: &BenchArgs, plan: &load::Plan) -> ProgressBar {
    if args.no_progress {
        return ProgressBar::hidden();
    }
    let (len, template) = match plan.duration {
        Some(d) => (
            d.as_millis() as u64,
            "{elapsed_precise} [{bar:40}] {percent}% of the time  {msg}",
        ),
        None => (
            plan.requests,
            "{elapsed_precise} [{bar:40}] {pos}/{len} requests  {msg}",
        ),
    };
    // indicatif draws on stderr and hides itself when stderr is not a terminal.
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn parse(args: &[&str]) -> Result<BenchArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied())).map(|c| c.bench)
    }

    #[test]
    fn defaults_are_valid_and_nonsense_is_refused() -> anyhow::Result<()> {
        let args = parse(&[])?;
        assert!(check(&args).is_ok());
        assert!(args.stream && args.endpoint == Endpoint::Chat && args.concurrency == 1);
        for bad in [
            &["--rate", "0"][..],
            &["--duration=-1"],
            &["--timeout", "0"],
            &["--rate", "NaN"],
            &["-c", "0"],
        ] {
            let err = check(&parse(bad)?)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            let flag = bad[0].split('=').next().unwrap_or_default();
            assert!(err.contains(flag), "{bad:?} gave {err:?}");
        }
        let args = parse(&["--stream", "false", "--endpoint", "models", "--rate", "50"])?;
        assert!(!args.stream && args.endpoint == Endpoint::Models && args.rate == Some(50.0));
        Ok(())
    }
}
