//! `[[models]] engine = "upstream"`: another OpenAI-compatible server
//! (vLLM, llama-server, another herd, a hosted API) served under a herd
//! model id. The API key comes from an environment variable or a file,
//! never from the config itself.

use crate::model::{check_name, expand_home, ModelConfig};
use crate::ConfigError;
use std::path::PathBuf;
use std::time::Duration;

/// Where the upstream's API key is read (by each node that serves it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Env(String),
    File(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamTimeouts {
    pub connect: Duration,
    /// From sending the request to the first byte of the answer's body.
    pub first_byte: Duration,
    /// Between two events of a stream.
    pub idle: Duration,
    /// The whole answer, retries included.
    pub total: Duration,
}

/// Active probes and the circuit breaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Appended to `base_url`; `None`: no active probe.
    pub probe_path: Option<String>,
    pub probe_interval: Duration,
    /// Consecutive failures that open the circuit.
    pub failure_threshold: u32,
    pub cooldown: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ValidUpstream {
    pub id: String,
    /// Without a trailing `/`; request paths (`/chat/completions`) are appended.
    pub base_url: String,
    pub upstream_model: String,
    pub api_key: Option<KeySource>,
    pub headers: Vec<(String, String)>,
    pub max_concurrency: u32,
    pub max_queue: u32,
    pub max_queue_wait: Duration,
    /// Cap on `max_tokens` when set (the upstream enforces its own otherwise).
    pub max_tokens_limit: Option<u32>,
    pub timeouts: UpstreamTimeouts,
    pub retries: u32,
    pub health: HealthPolicy,
}

pub(crate) fn validate(m: ModelConfig, index: usize) -> Result<ValidUpstream, ConfigError> {
    let field = |name: &str| format!("models[{index}].{name}");
    for (name, set) in m.local_fields() {
        if set {
            return Err(ConfigError::invalid(
                field(name),
                "is not used by `engine = \"upstream\"` (the upstream runs the model)",
            ));
        }
    }
    let id = m.id.ok_or_else(|| {
        ConfigError::invalid(
            field("id"),
            "is required for an upstream (the name clients use)",
        )
    })?;
    check_name(&field("id"), &id)?;
    let base_url = m.base_url.ok_or_else(|| {
        ConfigError::invalid(
            field("base_url"),
            "is required for an upstream, e.g. \"http://10.0.0.5:8000/v1\"",
        )
    })?;
    let base_url = base_url.trim_end_matches('/').to_string();
    let host = base_url
        .strip_prefix("http://")
        .or_else(|| base_url.strip_prefix("https://"));
    if host.is_none_or(|h| h.is_empty() || h.starts_with('/') || h.contains(char::is_whitespace)) {
        return Err(ConfigError::invalid(
            field("base_url"),
            format!("must be an http:// or https:// URL, got {base_url:?}"),
        ));
    }
    let upstream_model = m.upstream_model.unwrap_or_else(|| id.clone());
    if upstream_model.is_empty() {
        return Err(ConfigError::invalid(
            field("upstream_model"),
            "must not be empty",
        ));
    }
    let api_key = match (m.api_key_env, m.api_key_file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::invalid(
                field("api_key_env"),
                "and `api_key_file` are both set; use one",
            ))
        }
        (Some(var), None) if var.is_empty() || var.contains(['=', '\0']) => {
            return Err(ConfigError::invalid(
                field("api_key_env"),
                format!("must name an environment variable, got {var:?}"),
            ))
        }
        (Some(var), None) => Some(KeySource::Env(var)),
        (None, Some(path)) => Some(KeySource::File(expand_home(path))),
        (None, None) => None,
    };
    let mut headers = Vec::new();
    for (name, value) in m.headers.unwrap_or_default() {
        let token = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            return Err(ConfigError::invalid(
                field("headers"),
                format!("{name:?} is not a valid header name"),
            ));
        }
        if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            return Err(ConfigError::invalid(
                field("headers"),
                format!("the value of {name:?} holds a control character"),
            ));
        }
        if name.eq_ignore_ascii_case("authorization") && api_key.is_some() {
            return Err(ConfigError::invalid(
                field("headers"),
                "sets Authorization and an API key is configured too; use one",
            ));
        }
        headers.push((name, value));
    }
    let ms = |name: &str, v: Option<u64>, default: u64, lo: u64, hi: u64| {
        let v = v.unwrap_or(default);
        if (lo..=hi).contains(&v) {
            Ok(Duration::from_millis(v))
        } else {
            Err(ConfigError::invalid(
                field(name),
                format!("must be between {lo} and {hi}, got {v}"),
            ))
        }
    };
    const DAY: u64 = 86_400_000;
    let total = ms("total_timeout_ms", m.total_timeout_ms, 600_000, 1, DAY)?;
    let first_byte = ms(
        "first_byte_timeout_ms",
        m.first_byte_timeout_ms,
        60_000,
        1,
        DAY,
    )?;
    if m.first_byte_timeout_ms.is_some() && first_byte > total {
        return Err(ConfigError::invalid(
            field("first_byte_timeout_ms"),
            "must not exceed `total_timeout_ms`",
        ));
    }
    let timeouts = UpstreamTimeouts {
        connect: ms(
            "connect_timeout_ms",
            m.connect_timeout_ms,
            5_000,
            1,
            600_000,
        )?,
        // The default first-byte wait never outlasts a shorter total.
        first_byte: first_byte.min(total),
        idle: ms("idle_timeout_ms", m.idle_timeout_ms, 60_000, 1, DAY)?,
        total,
    };
    let count = |name: &str, v: Option<u32>, default: u32, lo: u32, hi: u32| {
        let v = v.unwrap_or(default);
        if (lo..=hi).contains(&v) {
            Ok(v)
        } else {
            Err(ConfigError::invalid(
                field(name),
                format!("must be between {lo} and {hi}, got {v}"),
            ))
        }
    };
    let probe_path = match m.probe_path.as_deref() {
        None => Some("/models".to_string()),
        Some("") => None,
        Some(p) if p.starts_with('/') && !p.contains(char::is_whitespace) => Some(p.to_string()),
        Some(p) => {
            return Err(ConfigError::invalid(
                field("probe_path"),
                format!("must start with `/` (it is appended to base_url), or be \"\" for no probe; got {p:?}"),
            ))
        }
    };
    Ok(ValidUpstream {
        id,
        base_url,
        upstream_model,
        api_key,
        headers,
        max_concurrency: count("max_concurrency", m.max_concurrency, 64, 1, 100_000)?,
        max_queue: count("max_queue", m.max_queue, 64, 0, 1_000_000)?,
        max_queue_wait: ms(
            "max_queue_wait_ms",
            m.max_queue_wait_ms,
            30_000,
            0,
            3_600_000,
        )?,
        max_tokens_limit: m
            .max_tokens_limit
            .map(|v| count("max_tokens_limit", Some(v), v, 1, u32::MAX))
            .transpose()?,
        timeouts,
        retries: count("retries", m.retries, 1, 0, 10)?,
        health: HealthPolicy {
            probe_path,
            probe_interval: ms("probe_interval_ms", m.probe_interval_ms, 10_000, 100, DAY)?,
            failure_threshold: count("failure_threshold", m.failure_threshold, 3, 1, 1000)?,
            cooldown: ms("cooldown_ms", m.cooldown_ms, 10_000, 1, DAY)?,
        },
    })
}
