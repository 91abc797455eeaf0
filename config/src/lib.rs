//! herd's configuration: a TOML file read into raw serde types with
//! `deny_unknown_fields`, then validated into [`Config`] with messages that
//! name the field and the value. CLI flags and `HERD_*` variables override
//! the file (that merge happens in the binary, field by field).

pub mod cluster;
mod http;
mod model;
pub mod routing;
pub mod upstream;
mod usage;

pub use cluster::ClusterConfig;
pub use http::HttpLimits;
pub use model::{model_id_from_path, EngineKind, ModelConfig, NodesWanted, ValidEntry};
pub use routing::{Alias, AliasConfig, AliasTargetConfig, Policy, Routing};
pub use upstream::{HealthPolicy, KeySource, UpstreamTimeouts, ValidUpstream};
pub use usage::{UsageConfig, UsageSettings};

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// A configuration problem, phrased so the user knows what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("`{field}` {problem}")]
    Invalid { field: String, problem: String },
}

impl ConfigError {
    pub fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// The whole file, as written. Every field is optional so flags can fill gaps.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Address the HTTP API (and cluster traffic) listens on.
    pub listen: Option<String>,
    /// File with API keys, one `name:key` (or bare `key`) per line.
    pub api_key_file: Option<PathBuf>,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: Option<usize>,
    /// How long a graceful shutdown waits for in-flight streams.
    pub shutdown_grace_secs: Option<u64>,
    /// Time a client has to send a request's head (from connecting, or from its first byte on a reused connection).
    pub header_read_timeout_secs: Option<u64>,
    /// A connection with no request in flight that sends nothing for this long is closed.
    pub idle_timeout_secs: Option<u64>,
    /// Deadline for a request's response head: the whole of a non-streaming request, a stream's start.
    pub request_timeout_secs: Option<u64>,
    /// Open HTTP connections served at once; over it, the one longest without a
    /// request in flight is closed for a newcomer; while all are busy, newcomers wait in the listen backlog.
    pub max_connections: Option<u32>,
    #[serde(default)]
    pub models: Vec<ModelConfig>,
    /// Names that map to several deployments (see `routing.rs`).
    #[serde(default)]
    pub aliases: Vec<AliasConfig>,
    #[serde(default)]
    pub cluster: ClusterConfig,
    /// Usage accounting (`[usage]`).
    #[serde(default)]
    pub usage: UsageConfig,
}

impl RawConfig {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses TOML; the error text names the offending field and line.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Validates into the typed configuration.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let http = self.http_limits()?;
        let listen_text = self.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            ConfigError::invalid(
                "listen",
                format!("must be an address like 127.0.0.1:8080, got {listen_text:?}"),
            )
        })?;
        let max_body_bytes = self.max_body_bytes.unwrap_or(4 * 1024 * 1024);
        if max_body_bytes < 1024 {
            return Err(ConfigError::invalid(
                "max_body_bytes",
                format!("must be at least 1024, got {max_body_bytes}"),
            ));
        }
        let mut models = Vec::new();
        let mut upstreams = Vec::new();
        let mut ids: Vec<(String, Vec<String>)> = Vec::with_capacity(self.models.len());
        for (i, m) in self.models.into_iter().enumerate() {
            let (entry, fallbacks) = m.validate(i)?;
            let id = match &entry {
                ValidEntry::Local(m) => m.id.clone(),
                ValidEntry::Upstream(u) => u.id.clone(),
            };
            if ids.iter().any(|(o, _)| *o == id) {
                return Err(ConfigError::invalid(
                    format!("models[{i}].id"),
                    format!("{id:?} is used by two models"),
                ));
            }
            ids.push((id, fallbacks));
            match entry {
                ValidEntry::Local(m) => models.push(m),
                ValidEntry::Upstream(u) => upstreams.push(u),
            }
        }
        let routing = routing::validate(self.aliases, &ids)?;
        let usage = self.usage.validate()?;
        Ok(Config {
            listen,
            api_key_file: self.api_key_file,
            max_body_bytes,
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs.unwrap_or(30)),
            http,
            models,
            upstreams,
            routing,
            cluster: self.cluster,
            usage,
        })
    }
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub api_key_file: Option<PathBuf>,
    pub max_body_bytes: usize,
    pub shutdown_grace: Duration,
    pub http: HttpLimits,
    /// Deployments of GGUF files (llama.cpp engines, possibly split across nodes).
    pub models: Vec<model::ValidModel>,
    /// Deployments served by other OpenAI-compatible servers.
    pub upstreams: Vec<ValidUpstream>,
    pub routing: Routing,
    pub cluster: ClusterConfig,
    pub usage: UsageSettings,
}

pub use model::ValidModel;

#[cfg(test)]
mod tests;
