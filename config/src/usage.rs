//! The `[usage]` section: where request accounting is stored and how long
//! raw rows are kept (see docs/usage.md).

use crate::ConfigError;
use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UsageConfig {
    /// Record every request (default true).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// `postgres://user:pass@host/db` for a store several gateways share, or
    /// `sqlite:///path/usage.db`; default: `usage.db` in the node's state dir.
    #[serde(default)]
    pub database_url: Option<String>,
    /// Days raw rows are kept before they are summed into daily totals (default 30).
    #[serde(default)]
    pub retention_days: Option<u32>,
    /// Records written per transaction at most (default 256).
    #[serde(default)]
    pub flush_rows: Option<usize>,
    /// Longest a record waits before it is written, in ms (default 1000).
    #[serde(default)]
    pub flush_ms: Option<u64>,
    /// Records that may wait for the writer; more are dropped and counted (default 65536).
    #[serde(default)]
    pub queue: Option<usize>,
    /// How often rows past the horizon are rolled up, in seconds (default 3600).
    #[serde(default)]
    pub rollup_interval_secs: Option<u64>,
    /// Export per-end-user token totals (`herd_user_tokens_total`; default false).
    #[serde(default)]
    pub user_metrics: Option<bool>,
    /// Distinct users given their own label; later ones count as `other` (default 100).
    #[serde(default)]
    pub user_metrics_max: Option<usize>,
}

/// The validated `[usage]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageSettings {
    pub enabled: bool,
    pub database_url: Option<String>,
    pub retention_days: u32,
    pub flush_rows: usize,
    pub flush_ms: u64,
    pub queue: usize,
    pub rollup_interval: Duration,
    pub user_metrics: bool,
    pub user_metrics_max: usize,
}

impl UsageConfig {
    pub fn validate(&self) -> Result<UsageSettings, ConfigError> {
        let at_least = |field: &str, v: u64, min: u64| {
            if v < min {
                Err(ConfigError::invalid(
                    format!("usage.{field}"),
                    format!("must be at least {min}, got {v}"),
                ))
            } else {
                Ok(())
            }
        };
        let retention_days = self.retention_days.unwrap_or(30);
        at_least("retention_days", u64::from(retention_days), 1)?;
        let flush_rows = self.flush_rows.unwrap_or(256);
        at_least("flush_rows", flush_rows as u64, 1)?;
        let flush_ms = self.flush_ms.unwrap_or(1000);
        at_least("flush_ms", flush_ms, 1)?;
        let queue = self.queue.unwrap_or(65_536);
        at_least("queue", queue as u64, 1)?;
        let rollup = self.rollup_interval_secs.unwrap_or(3600);
        at_least("rollup_interval_secs", rollup, 1)?;
        if let Some(url) = &self.database_url {
            let known = ["postgres://", "postgresql://", "sqlite:"];
            if !known.iter().any(|p| url.starts_with(p)) {
                return Err(ConfigError::invalid(
                    "usage.database_url",
                    "must start with postgres://, postgresql:// or sqlite: (the URL is not shown: it may hold a password)",
                ));
            }
        }
        Ok(UsageSettings {
            enabled: self.enabled.unwrap_or(true),
            database_url: self.database_url.clone(),
            retention_days,
            flush_rows,
            flush_ms,
            queue,
            rollup_interval: Duration::from_secs(rollup),
            user_metrics: self.user_metrics.unwrap_or(false),
            user_metrics_max: self.user_metrics_max.unwrap_or(100),
        })
    }
}
