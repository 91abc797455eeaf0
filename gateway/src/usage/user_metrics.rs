//! Per-user token totals as a Prometheus counter, `herd_user_tokens_total{user,kind}`.
//! Off unless `[usage] user_metrics = true`: end-user names are client text, so
//! the label set is capped (`user_metrics_max`); later users count as `other`.

use super::UsageRecord;
use prometheus::{IntCounterVec, Opts, Registry};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// The label for users past the cap.
pub const OTHER_USERS: &str = "other";

#[derive(Clone, Default)]
pub struct UserMetrics {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    tokens: IntCounterVec,
    seen: Mutex<HashSet<String>>,
    max: usize,
}

impl UserMetrics {
    pub fn disabled() -> Self {
        Self::default()
    }

    pub fn register(registry: &Registry, max: usize) -> prometheus::Result<Self> {
        let tokens = IntCounterVec::new(
            Opts::new(
                "herd_user_tokens_total",
                "Tokens by end user (OpenAI `user` or Open WebUI's user header; `other` past the cap) and kind (prompt or generation)",
            ),
            &["user", "kind"],
        )?;
        registry.register(Box::new(tokens.clone()))?;
        Ok(Self {
            inner: Some(Arc::new(Inner {
                tokens,
                seen: Mutex::new(HashSet::new()),
                max,
            })),
        })
    }

    pub fn observe(&self, r: &UsageRecord) {
        let (Some(inner), Some(user)) = (&self.inner, &r.end_user) else {
            return;
        };
        if r.prompt_tokens == 0 && r.completion_tokens == 0 {
            return;
        }
        let label = match inner.seen.lock() {
            Ok(seen) if seen.contains(user) => user.as_str(),
            Ok(mut seen) if seen.len() < inner.max => {
                seen.insert(user.clone());
                user.as_str()
            }
            _ => OTHER_USERS,
        };
        inner
            .tokens
            .with_label_values(&[label, "prompt"])
            .inc_by(r.prompt_tokens);
        inner
            .tokens
            .with_label_values(&[label, "generation"])
            .inc_by(r.completion_tokens);
    }
}
