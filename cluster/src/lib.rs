//! herd's cluster agent: nodes find each other (mDNS/DNS-SD and static peers),
//! prove they hold the cluster secret (HMAC-SHA256 on every message, both
//! ways), and agree on who is alive through heartbeats.
//!
//! One actor task owns the membership ([`membership::Membership`], a pure
//! state machine driven by `apply(event, now)`); everything else holds a cheap
//! [`Agent`] handle. See docs/cluster.md for the protocol and its settings.

mod addrs;
mod agent;
pub mod auth;
pub mod client;
pub mod config;
mod discovery;
#[doc(hidden)]
pub mod fuzz_targets;
pub mod gguf;
pub mod membership;
pub mod node;
pub mod peer_api;
pub mod placement;
mod server;
pub mod spec;
pub mod store;
pub mod tunnel;
pub mod version;
pub mod wire;
pub mod worker;

pub use agent::Agent;
pub use auth::Credentials;
pub use config::{parse_memory_budget, AgentConfig, ClusterError, Role, Secret, Timeouts};
pub use membership::Change;
pub use node::{MemberState, NodeId, NodeInfo};
pub use peer_api::VerifiedPeer;
pub use wire::{ClusterView, DeploymentView, NodeView, ShardView, UpstreamView};

/// The herd version this build speaks.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Path prefix of the node-to-node endpoints (outside API-key auth; every
/// request and response there is MACed with the cluster secret).
pub const PEER_PREFIX: &str = "/_herd/v1";
pub const GOSSIP_PATH: &str = "/_herd/v1/gossip";
/// A heartbeat's stand-in for an address that has not proved the secret yet:
/// an empty body, answered with the node's description only.
pub const PROBE_PATH: &str = "/_herd/v1/probe";
pub const VIEW_PATH: &str = "/_herd/v1/view";
