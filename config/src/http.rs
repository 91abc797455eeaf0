//! Limits of the HTTP listener: how long a client may take to send a request
//! head, to stay idle, to get an answer, and how many connections are served
//! at once. Each one bounds what a slow or hostile client can hold.

use crate::{ConfigError, RawConfig};
use std::time::Duration;

/// Validated listener limits (see `gateway/src/http/server.rs` for how they apply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
    pub max_connections: u32,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(600),
            max_connections: 512,
        }
    }
}

impl RawConfig {
    /// The listener limits alone (`herd node` reads no models, but serves HTTP too).
    pub fn http_limits(&self) -> Result<HttpLimits, ConfigError> {
        let d = HttpLimits::default();
        let secs = |name: &str, v: Option<u64>, default: Duration, max: u64| match v {
            None => Ok(default),
            Some(s) if (1..=max).contains(&s) => Ok(Duration::from_secs(s)),
            Some(s) => Err(ConfigError::invalid(
                name,
                format!("must be between 1 and {max} seconds, got {s}"),
            )),
        };
        let max_connections = self.max_connections.unwrap_or(d.max_connections);
        if !(1..=1_000_000).contains(&max_connections) {
            return Err(ConfigError::invalid(
                "max_connections",
                format!("must be between 1 and 1000000, got {max_connections}"),
            ));
        }
        Ok(HttpLimits {
            header_read_timeout: secs(
                "header_read_timeout_secs",
                self.header_read_timeout_secs,
                d.header_read_timeout,
                3_600,
            )?,
            idle_timeout: secs(
                "idle_timeout_secs",
                self.idle_timeout_secs,
                d.idle_timeout,
                86_400,
            )?,
            request_timeout: secs(
                "request_timeout_secs",
                self.request_timeout_secs,
                d.request_timeout,
                86_400,
            )?,
            max_connections,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::RawConfig;
    use std::time::Duration;

    #[test]
    fn limits_come_from_the_file_and_are_checked() {
        let raw = RawConfig::from_toml(
            "header_read_timeout_secs = 3\nidle_timeout_secs = 20\nrequest_timeout_secs = 90\nmax_connections = 64\n",
        )
        .unwrap_or_default();
        let limits = raw.http_limits().map_err(|e| e.to_string());
        assert_eq!(
            limits.map(|l| (
                l.header_read_timeout,
                l.idle_timeout,
                l.request_timeout,
                l.max_connections
            )),
            Ok((
                Duration::from_secs(3),
                Duration::from_secs(20),
                Duration::from_secs(90),
                64
            ))
        );
        let raw = RawConfig::from_toml("idle_timeout_secs = 0\n").unwrap_or_default();
        let err = raw.http_limits().err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("`idle_timeout_secs` must be between 1 and 86400 seconds, got 0")
        );
        let raw = RawConfig::from_toml("max_connections = 0\n").unwrap_or_default();
        assert!(raw.http_limits().is_err());
    }
}
