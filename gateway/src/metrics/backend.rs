//! Backend health and routing: whether each deployment is taking requests,
//! its failures by reason, and the retries and fallbacks the router took.
//! `model` is always a configured deployment id or alias; `reason` comes
//! from an error enum (`UpstreamError::reason`, or `overloaded` /
//! `unavailable` for local engines, `probe` for a failed health probe).

use super::{counter, gauge, Metrics};
use prometheus::{IntCounterVec, IntGaugeVec, Registry};

pub(crate) struct BackendSeries {
    pub up: IntGaugeVec,
    pub failures: IntCounterVec,
    pub retries: IntCounterVec,
    pub fallbacks: IntCounterVec,
}

impl BackendSeries {
    pub(super) fn register(r: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            up: gauge(
                r,
                "herd_backend_up",
                "1 when the deployment takes requests (engine ready, or upstream circuit closed or half-open), else 0",
                &["model"],
            )?,
            failures: counter(
                r,
                "herd_backend_failures_total",
                "Failed attempts and health probes against a deployment, by reason",
                &["model", "reason"],
            )?,
            retries: counter(
                r,
                "herd_backend_retries_total",
                "Extra rounds over a request's deployments after all failed (backoff, Retry-After)",
                &["model"],
            )?,
            fallbacks: counter(
                r,
                "herd_backend_fallbacks_total",
                "Requests moved from a failed deployment to the next one (`to`), by requested model",
                &["model", "to"],
            )?,
        })
    }
}

impl Metrics {
    /// An attempt against deployment `model` failed (or its probe did).
    pub fn backend_failure(&self, model: &str, reason: &'static str) {
        self.series
            .backend
            .failures
            .with_label_values(&[model, reason])
            .inc();
    }

    pub fn set_backend_up(&self, model: &str, up: bool) {
        self.series
            .backend
            .up
            .with_label_values(&[model])
            .set(i64::from(up));
    }

    /// A name clients may use that is not itself a deployment (an alias):
    /// its requests are counted under it.
    pub fn add_alias(&self, name: &str) {
        if let Ok(mut models) = self.models.write() {
            models.insert(name.to_string());
        }
        self.series.backend.retries.with_label_values(&[name]);
        self.series
            .requests
            .with_label_values(&[name, "200", super::ErrorType::None.as_str()]);
    }
}
