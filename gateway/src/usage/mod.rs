//! Usage accounting: one row per request (time, key, end user, model,
//! endpoint, status, tokens, TTFT, duration) in SQLite (a file in the state
//! dir) or a PostgreSQL shared by several gateways.
//!
//! The request path never touches the database: a request's [`RequestTimer`]
//! hands its [`UsageRecord`] to a [`Recorder`] (a bounded channel, `try_send`),
//! and the recorder actor (`actor.rs`), which alone owns the store, writes
//! them in batches of `flush_rows` or every `flush_ms`, and rolls raw rows
//! past the retention horizon up into daily totals. A full queue drops the
//! record, counted in `herd_usage_dropped_total` and logged. A graceful
//! shutdown flushes everything; a crash loses what was not yet written (the
//! last batch: see docs/usage.md for the bound and its measurement).
//!
//! [`RequestTimer`]: crate::metrics::RequestTimer

mod actor;
pub mod http;
pub mod refusals;
pub mod report;
mod store;
mod user_metrics;

pub use actor::{start, UsageService};
pub use http::UsageHandle;
pub use store::{Location, Store, StoreCell, StoreKind};
pub use user_metrics::UserMetrics;

use herd_config::UsageSettings;
use std::path::Path;

use axum::http::HeaderMap;
use prometheus::IntCounter;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// Longest end-user or model name stored; longer ones are cut (they are client text).
const MAX_NAME_CHARS: usize = 200;

/// One answered request, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRecord {
    /// When the request arrived, in milliseconds since the Unix epoch.
    pub at_ms: i64,
    pub key_name: Option<String>,
    pub end_user: Option<String>,
    pub model: String,
    pub endpoint: &'static str,
    pub status: u16,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub completion_tokens: u64,
    pub ttft_ms: Option<f64>,
    pub duration_ms: f64,
}

/// What the handler knows about a request that the timer does not:
/// who asked (key, end user), for what (model as requested), where (endpoint).
#[derive(Clone)]
pub struct UsageTag {
    pub recorder: Recorder,
    pub key_name: Option<String>,
    pub end_user: Option<String>,
    pub model: String,
    pub endpoint: &'static str,
}

impl UsageTag {
    pub fn new(
        recorder: Recorder,
        key_name: Option<String>,
        end_user: Option<String>,
        model: &str,
        endpoint: &'static str,
    ) -> Self {
        Self {
            recorder,
            key_name,
            end_user: end_user.map(|u| clip(&u)),
            model: clip(model),
            endpoint,
        }
    }
}

fn clip(s: &str) -> String {
    s.chars().take(MAX_NAME_CHARS).collect()
}

/// Open WebUI names its signed-in user in these headers when
/// `ENABLE_FORWARD_USER_INFO_HEADERS` is on.
pub const OPENWEBUI_USER_ID: &str = "x-openwebui-user-id";
pub const OPENWEBUI_USER_EMAIL: &str = "x-openwebui-user-email";

/// The end user: OpenAI's `user` field, else Open WebUI's user id, else its email.
pub fn end_user(body_user: Option<&str>, headers: &HeaderMap) -> Option<String> {
    let header = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    body_user
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .or_else(|| header(OPENWEBUI_USER_ID))
        .or_else(|| header(OPENWEBUI_USER_EMAIL))
        .map(str::to_string)
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The SQLite file's name in the node's state dir.
pub const SQLITE_FILE: &str = "usage.db";

/// The accounting for the store `settings` names (default: [`SQLITE_FILE`] in
/// `state_dir`), with its metrics registered; [`UsageService::run`] then opens
/// (and migrates) the store and starts writing. `None` when accounting is off.
pub fn open(
    settings: &UsageSettings,
    state_dir: &Path,
    node: &str,
    metrics: &crate::metrics::Metrics,
) -> anyhow::Result<Option<UsageService>> {
    if !settings.enabled {
        return Ok(None);
    }
    let location = match &settings.database_url {
        Some(url) => Location::Url {
            url: url.clone(),
            node: node.to_string(),
        },
        None => Location::SqliteFile {
            path: state_dir.join(SQLITE_FILE),
            node: node.to_string(),
        },
    };
    let registry = metrics.registry();
    let dropped = IntCounter::new(
        "herd_usage_dropped_total",
        "Usage records dropped because the write queue was full or the database kept failing",
    )?;
    registry.register(Box::new(dropped.clone()))?;
    let users = if settings.user_metrics {
        UserMetrics::register(registry, settings.user_metrics_max)?
    } else {
        UserMetrics::disabled()
    };
    tracing::info!("usage accounting on ({location})");
    Ok(Some(start(location, settings, dropped, users)))
}

/// The request path's handle: hands records to the recorder actor, never waits.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<UsageRecord>,
    shared: Arc<Shared>,
}

struct Shared {
    dropped: IntCounter,
    /// Second (since the epoch) of the last "dropped" log line, so a flood logs once a second.
    last_warned: AtomicU64,
    users: UserMetrics,
}

impl Recorder {
    fn new(tx: mpsc::Sender<UsageRecord>, dropped: IntCounter, users: UserMetrics) -> Self {
        Self {
            tx,
            shared: Arc::new(Shared {
                dropped,
                last_warned: AtomicU64::new(0),
                users,
            }),
        }
    }

    /// Queues one record for the writer; a full queue drops it, counted and logged.
    pub fn record(&self, record: UsageRecord) {
        self.shared.users.observe(&record);
        if let Err(e) = self.tx.try_send(record) {
            let why = match e {
                mpsc::error::TrySendError::Full(_) => "the usage write queue is full",
                mpsc::error::TrySendError::Closed(_) => "the usage writer has stopped",
            };
            self.dropped(1, why);
        }
    }

    fn dropped(&self, n: u64, why: &str) {
        self.shared.dropped.inc_by(n);
        let second = u64::try_from(now_ms() / 1000).unwrap_or(0);
        if self.shared.last_warned.swap(second, Ordering::Relaxed) != second {
            tracing::warn!(
                total_dropped = self.shared.dropped.get(),
                "usage record dropped: {why} (counted in herd_usage_dropped_total)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn end_user_prefers_the_body_then_the_open_webui_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(end_user(None, &h), None);
        h.insert(OPENWEBUI_USER_EMAIL, HeaderValue::from_static("a@b.c"));
        assert_eq!(end_user(None, &h).as_deref(), Some("a@b.c"));
        h.insert(OPENWEBUI_USER_ID, HeaderValue::from_static("u-1"));
        assert_eq!(end_user(None, &h).as_deref(), Some("u-1"));
        assert_eq!(end_user(Some(" "), &h).as_deref(), Some("u-1"));
        assert_eq!(end_user(Some("bob"), &h).as_deref(), Some("bob"));
    }

    #[test]
    fn long_names_are_clipped() -> prometheus::Result<()> {
        let (tx, _rx) = mpsc::channel(1);
        let r = Recorder::new(tx, IntCounter::new("x", "x")?, UserMetrics::disabled());
        let tag = UsageTag::new(r, None, Some("u".repeat(500)), &"m".repeat(300), "chat");
        assert_eq!(tag.end_user.map(|u| u.len()), Some(MAX_NAME_CHARS));
        assert_eq!(tag.model.len(), MAX_NAME_CHARS);
        Ok(())
    }
}
