//! Helpers for the API-key tests: `herd keys` run as a real process
//! against a state dir, and HTTP calls that present a key.

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// `herd keys --state-dir DIR <args>`: its stdout, or its stderr as the error.
pub fn herd_keys(state: &Path, args: &[&str]) -> Result<String, Error> {
    let out = Command::new(env!("CARGO_BIN_EXE_herd"))
        .arg("keys")
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "herd keys {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Creates a key and returns its secret (printed once, on stdout).
pub fn create_key(state: &Path, name: &str, flags: &[&str]) -> Result<String, Error> {
    let mut args = vec!["create", name];
    args.extend_from_slice(flags);
    let secret = herd_keys(state, &args)?.trim().to_string();
    if !secret.starts_with("sk-herd-") {
        return Err(format!("unexpected secret {secret:?}").into());
    }
    Ok(secret)
}

/// `GET base/v1/models` with `key`: the status.
pub async fn models_status(base: &str, key: &str) -> Result<u16, Error> {
    Ok(reqwest::Client::new()
        .get(format!("{base}/v1/models"))
        .bearer_auth(key)
        .send()
        .await?
        .status()
        .as_u16())
}

/// Polls `GET /v1/models` with `key` until it answers `status`; the time it took.
pub async fn wait_for_status(
    base: &str,
    key: &str,
    status: u16,
    within: Duration,
) -> Result<Duration, Error> {
    let start = Instant::now();
    loop {
        let got = models_status(base, key).await?;
        if got == status {
            return Ok(start.elapsed());
        }
        if start.elapsed() > within {
            return Err(format!("still {got} after {within:?}, expected {status}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
