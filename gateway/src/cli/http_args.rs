//! Flags for the HTTP listener's limits, shared by `herd serve` and `herd
//! node`; each one overrides the config file's key of the same name.

use clap::Args;
use herd_config::RawConfig;

#[derive(Args, Debug, Clone, Default)]
pub struct HttpArgs {
    /// Seconds a client has to send a request head (from connecting, or from its first byte on a kept-alive connection).
    #[arg(long, env = "HERD_HEADER_READ_TIMEOUT_SECS", value_name = "SECS")]
    pub header_read_timeout_secs: Option<u64>,
    /// Seconds a connection with no request in flight may stay silent before it is closed.
    #[arg(long, env = "HERD_IDLE_TIMEOUT_SECS", value_name = "SECS")]
    pub idle_timeout_secs: Option<u64>,
    /// Seconds a request may take until its response starts (all of a non-streaming one); then 504.
    #[arg(long, env = "HERD_REQUEST_TIMEOUT_SECS", value_name = "SECS")]
    pub request_timeout_secs: Option<u64>,
    /// Connections served at once; over it, the one longest without a request in
    /// flight is closed for a newcomer; while all are busy, newcomers wait in the listen backlog.
    #[arg(long, env = "HERD_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<u32>,
}

impl HttpArgs {
    pub fn apply(&self, raw: &mut RawConfig) {
        raw.header_read_timeout_secs = self
            .header_read_timeout_secs
            .or(raw.header_read_timeout_secs);
        raw.idle_timeout_secs = self.idle_timeout_secs.or(raw.idle_timeout_secs);
        raw.request_timeout_secs = self.request_timeout_secs.or(raw.request_timeout_secs);
        raw.max_connections = self.max_connections.or(raw.max_connections);
    }
}
