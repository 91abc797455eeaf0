//! herd's authenticated, encrypted tunnel between nodes.
//!
//! llama.cpp's RPC server has no authentication (and has had remote code
//! execution bugs), so it only ever listens on 127.0.0.1 and every byte
//! between nodes crosses this tunnel instead. A tunnel is one TCP connection:
//!
//! 1. The initiator sends a cleartext preamble: `HERDTUN1`, then a length byte
//!    and the destination node id, then a length byte and its own node id.
//!    The responder drops the connection, answering nothing, unless the
//!    destination is itself.
//! 2. A `Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s` handshake (two messages). The
//!    PSK is derived from the cluster secret and name; the prologue is the
//!    preamble plus the cluster name, so a handshake made for one node fails
//!    at any other. Both sides use fresh ephemeral keys: forward secrecy, and
//!    the session keys are new even when the first message is replayed.
//! 3. The initiator's first transport message names the service it wants
//!    (`rpc/<model>`). Only once it decrypts, which proves the peer holds the
//!    secret *now*, does the responder resolve the service, connect to its
//!    loopback address and answer with a one-byte status.
//! 4. Both directions are spliced: each read is sent at once as one message.
//!
//! Every message is framed as a big-endian `u16` length plus the Noise
//! message. A connection that fails any check is closed without an answer.

mod client;
mod server;
mod stream;
mod wire;

use crate::auth::Credentials;
use futures::future::BoxFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use client::{connect, forward};
pub(crate) use server::Responder;
pub use server::{serve, serve_with_limits, Limits};
pub use stream::TunnelStream;
pub use wire::{MAX_ID_LEN, MAX_SERVICE_LEN};

/// Label of the tunnel's Noise PSK, derived from the cluster secret.
const PSK_LABEL: &str = "herd-tunnel-psk-v1";
/// Time allowed from the TCP connection to the decrypted service name.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed to resolve the service and connect to it (a worker may still be starting).
pub const TARGET_TIMEOUT: Duration = Duration::from_secs(10);
/// Tunnels a node carries at once, by default (each side's buffers are ~256 KiB).
pub const MAX_TUNNELS: usize = 256;
/// Handshakes in progress at once, by default: unauthenticated peers hold these.
pub const MAX_HANDSHAKES: usize = 64;

/// What both ends of a tunnel must share: the PSK (derived from the cluster
/// secret) and the cluster name.
#[derive(Clone)]
pub struct TunnelKeys {
    psk: [u8; 32],
    cluster: String,
}

impl TunnelKeys {
    pub fn new(creds: &Credentials) -> Self {
        Self {
            psk: creds.derive_key(PSK_LABEL),
            cluster: creds.cluster().to_string(),
        }
    }
}

impl std::fmt::Debug for TunnelKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelKeys")
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

/// Maps a service name (`rpc/<model>`) to the loopback address serving it,
/// or `None` when this node has no such service. It may take a few seconds,
/// e.g. while a worker starts listening; the responder gives it
/// [`TARGET_TIMEOUT`] (with the connection).
pub type Resolver = Arc<dyn Fn(&str) -> BoxFuture<'static, Option<SocketAddr>> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("invalid tunnel {field} {value:?}: {problem}")]
    Invalid {
        field: &'static str,
        value: String,
        problem: &'static str,
    },
    #[error("cannot reach node {node} at {addr}: {source}")]
    Unreachable {
        node: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "node {node} at {addr} closed the tunnel handshake without answering (another node \
         listens there, the cluster secret or name differs, or it has too many handshakes in progress)"
    )]
    Refused { node: String, addr: SocketAddr },
    #[error("tunnel handshake with node {node} at {addr} failed: {problem}")]
    HandshakeFailed {
        node: String,
        addr: SocketAddr,
        problem: String,
    },
    #[error("opening a tunnel to node {node} at {addr} took longer than {after:?}")]
    Timeout {
        node: String,
        addr: SocketAddr,
        after: Duration,
    },
    #[error("node {node} has no service {service:?}")]
    UnknownService { node: String, service: String },
    #[error("node {node} cannot connect to its local service {service:?}")]
    TargetRefused { node: String, service: String },
    #[error("node {node} already carries its maximum number of tunnels")]
    Busy { node: String },
    #[error("a tunnel message was rejected ({0}): corrupted, tampered with, or another key")]
    Noise(#[source] snow::Error),
    #[error("tunnel I/O: {0}")]
    Io(#[from] std::io::Error),
}

#[cfg(test)]
mod tests {
    use crate::{Credentials, Secret};

    fn creds(secret: &str, cluster: &str) -> Credentials {
        match Secret::from_text(secret, "test") {
            Ok(s) => Credentials::new(s, cluster),
            Err(e) => unreachable!("{e}"),
        }
    }

    #[test]
    fn derived_keys_depend_on_label_cluster_and_secret() {
        let a = creds("secret-number-one-0123456789", "c1");
        let psk = a.derive_key(super::PSK_LABEL);
        assert_eq!(psk, a.clone().derive_key(super::PSK_LABEL));
        assert_ne!(psk, a.derive_key("another-label"));
        assert_ne!(
            psk,
            creds("secret-number-one-0123456789", "c2").derive_key(super::PSK_LABEL)
        );
        assert_ne!(
            psk,
            creds("secret-number-two-0123456789", "c1").derive_key(super::PSK_LABEL)
        );
    }
}
