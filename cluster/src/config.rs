//! The agent's validated settings, the cluster secret, and the errors that
//! tell a user what to change.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Smallest accepted secret: 16 bytes leaves no room for guessing.
pub const MIN_SECRET_BYTES: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot read the cluster secret file {path}: {source}")]
    SecretRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the cluster secret {origin} is {len} bytes; use at least {MIN_SECRET_BYTES} (e.g. `openssl rand -hex 32`)")]
    SecretTooShort { origin: String, len: usize },
    #[error("`{field}` {problem}")]
    Invalid { field: String, problem: String },
    #[error("node id file {path}: {problem}")]
    NodeId { path: PathBuf, problem: String },
    #[error("mDNS discovery: {0}")]
    Discovery(String),
    #[error("cannot build the HTTP client for peers: {0}")]
    Client(String),
}

impl ClusterError {
    pub fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// What a node does besides membership: a gateway also serves the OpenAI API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Gateway,
    Node,
}

/// The shared cluster secret. Its bytes never reach a log: `Debug` is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl Secret {
    /// The secret is the text with surrounding whitespace (a trailing newline) removed.
    pub fn from_text(text: &str, origin: &str) -> Result<Self, ClusterError> {
        let bytes = text.trim().as_bytes().to_vec();
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(ClusterError::SecretTooShort {
                origin: origin.to_string(),
                len: bytes.len(),
            });
        }
        Ok(Self(bytes))
    }

    pub fn from_file(path: &Path) -> Result<Self, ClusterError> {
        let path = expand_home(path);
        let text = std::fs::read_to_string(&path).map_err(|source| ClusterError::SecretRead {
            path: path.clone(),
            source,
        })?;
        warn_if_readable_by_others(&path);
        Self::from_text(&text, &format!("in {}", path.display()))
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(file = %path.display(), "the cluster secret file is readable by other users; `chmod 600` it");
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

/// Failure detection. The defaults detect a dead LAN peer in 2.5 s and drop it
/// from the view 1 s later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// How often each peer is sent a heartbeat.
    pub heartbeat: Duration,
    /// Silence after which a peer is `suspect`.
    pub suspect_after: Duration,
    /// Silence after which a peer is `dead`.
    pub dead_after: Duration,
    /// How long a dead peer stays listed before it is removed.
    pub remove_after: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_millis(500),
            suspect_after: Duration::from_millis(1500),
            dead_after: Duration::from_millis(2500),
            remove_after: Duration::from_millis(1000),
        }
    }
}

impl Timeouts {
    /// Checks the ordering heartbeat < suspect_after < dead_after.
    pub fn validate(self) -> Result<Self, ClusterError> {
        let ms = |d: Duration| d.as_millis();
        if self.heartbeat < Duration::from_millis(10) {
            return Err(ClusterError::invalid(
                "heartbeat_ms",
                format!("must be at least 10, got {}", ms(self.heartbeat)),
            ));
        }
        if self.suspect_after <= self.heartbeat {
            return Err(ClusterError::invalid(
                "suspect_after_ms",
                format!(
                    "must be more than heartbeat_ms ({}), got {}",
                    ms(self.heartbeat),
                    ms(self.suspect_after)
                ),
            ));
        }
        if self.dead_after <= self.suspect_after {
            return Err(ClusterError::invalid(
                "dead_after_ms",
                format!(
                    "must be more than suspect_after_ms ({}), got {}",
                    ms(self.suspect_after),
                    ms(self.dead_after)
                ),
            ));
        }
        Ok(self)
    }

    /// A heartbeat that has not answered by then counts as missed.
    pub fn request_timeout(&self) -> Duration {
        (self.heartbeat * 2).min(self.suspect_after)
    }
}

/// Everything the agent needs, already merged from file, variables and flags.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// This machine's display name.
    pub node_name: String,
    /// The cluster's name (part of every MAC, so two clusters on one LAN stay apart).
    pub cluster: String,
    /// Without a secret the agent is a lone node: no discovery, no peers.
    pub secret: Option<Secret>,
    /// The address this node's HTTP server is bound to (an unspecified IP
    /// means "every interface": the agent advertises the interfaces' addresses).
    pub advertise: SocketAddr,
    /// Static peers, `host:port`.
    pub peers: Vec<String>,
    pub discovery: bool,
    /// Memory offered for models, in bytes (default: 75% of the total).
    pub memory_budget: Option<MemoryBudget>,
    /// Directory that keeps the node id across restarts.
    pub state_dir: PathBuf,
    pub role: Role,
    pub timeouts: Timeouts,
    /// The version this node announces (tests override it to check refusals).
    pub version: String,
    /// Where this node's tunnel listens (port on the advertised host; 0 = none).
    pub tunnel_port: u16,
    /// The device a shard worker on this node serves.
    pub shard_device: String,
    /// Model files in this node's store.
    pub models: Vec<String>,
}

impl AgentConfig {
    /// Defaults for everything but what identifies the node.
    pub fn new(
        node_name: impl Into<String>,
        advertise: SocketAddr,
        state_dir: PathBuf,
        role: Role,
    ) -> Self {
        Self {
            node_name: node_name.into(),
            cluster: DEFAULT_CLUSTER.to_string(),
            secret: None,
            advertise,
            peers: Vec::new(),
            discovery: true,
            memory_budget: None,
            state_dir,
            role,
            timeouts: Timeouts::default(),
            version: crate::VERSION.to_string(),
            tunnel_port: 0,
            shard_device: String::new(),
            models: Vec::new(),
        }
    }
}

pub const DEFAULT_CLUSTER: &str = "herd";

/// A cluster or node name: printable, no spaces, short enough for a DNS label.
pub fn validate_name(field: &str, name: &str) -> Result<(), ClusterError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ClusterError::invalid(
            field,
            format!("must be 1-63 characters of letters, digits, '-', '_' or '.', got {name:?}"),
        ))
    }
}

/// Memory offered for models: an absolute size or a share of the total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryBudget {
    Bytes(u64),
    Percent(u8),
}

impl MemoryBudget {
    pub fn resolve(self, total: u64) -> u64 {
        match self {
            Self::Bytes(b) => b,
            Self::Percent(p) => total / 100 * u64::from(p),
        }
    }
}

/// Parses "48GiB", "48G" (binary units), "48GB" (decimal), "1073741824", or "75%".
pub fn parse_memory_budget(text: &str) -> Result<MemoryBudget, ClusterError> {
    let bad = || {
        ClusterError::invalid(
            "memory_budget",
            format!("must be bytes, a size like \"48GiB\" or \"512M\", or a share like \"75%\", got {text:?}"),
        )
    };
    let t = text.trim();
    if let Some(p) = t.strip_suffix('%') {
        let p: u8 = p.trim().parse().map_err(|_| bad())?;
        if p == 0 || p > 100 {
            return Err(bad());
        }
        return Ok(MemoryBudget::Percent(p));
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number.parse().map_err(|_| bad())?;
    let multiplier: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        _ => return Err(bad()),
    };
    let bytes = number * multiplier;
    if !(1.0..=1e18).contains(&bytes) {
        return Err(bad());
    }
    Ok(MemoryBudget::Bytes(bytes as u64))
}

/// `~/x` → `$HOME/x`.
pub fn expand_home(path: &Path) -> PathBuf {
    match (path.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => path.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_trimmed_checked_and_never_printed() {
        let s = Secret::from_text("  0123456789abcdef0123\n", "test").map_err(|e| e.to_string());
        assert_eq!(s.as_ref().map(|s| s.bytes().len()), Ok(20));
        assert_eq!(format!("{:?}", s), "Ok(Secret([redacted]))");
        let err = Secret::from_text("short\n", "in /x")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("in /x is 5 bytes") && err.contains("at least 16"),
            "{err}"
        );
    }

    #[test]
    fn memory_budgets_parse() {
        let p = |t: &str| parse_memory_budget(t).ok();
        assert_eq!(p("48GiB"), Some(MemoryBudget::Bytes(48 << 30)));
        assert_eq!(p("48g"), Some(MemoryBudget::Bytes(48 << 30)));
        assert_eq!(p("2GB"), Some(MemoryBudget::Bytes(2_000_000_000)));
        assert_eq!(p("512 MiB"), Some(MemoryBudget::Bytes(512 << 20)));
        assert_eq!(p("1.5G"), Some(MemoryBudget::Bytes(3 << 29)));
        assert_eq!(p("1024"), Some(MemoryBudget::Bytes(1024)));
        assert_eq!(p("75%"), Some(MemoryBudget::Percent(75)));
        assert_eq!(MemoryBudget::Percent(50).resolve(1000), 500);
        for bad in ["", "lots", "0%", "101%", "12XB", "-1G"] {
            let err = parse_memory_budget(bad)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                err.contains("memory_budget") && err.contains(&format!("{bad:?}")),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn timeouts_must_be_ordered() {
        assert!(Timeouts::default().validate().is_ok());
        let t = Timeouts {
            dead_after: Duration::from_millis(1000),
            ..Timeouts::default()
        };
        let err = t
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(
            err,
            "`dead_after_ms` must be more than suspect_after_ms (1500), got 1000"
        );
        assert_eq!(
            Timeouts::default().request_timeout(),
            Duration::from_millis(1000)
        );
    }

    #[test]
    fn names_are_dns_friendly() {
        assert!(validate_name("name", "studio-1.local").is_ok());
        assert!(validate_name("name", "my mac").is_err());
        assert!(validate_name("name", "").is_err());
    }
}
