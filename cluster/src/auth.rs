//! Message authentication with the cluster secret.
//!
//! Every node-to-node request carries `HMAC-SHA256(secret, cluster, method,
//! path, sender, destination, version, timestamp, nonce, body)`; the receiver
//! checks the MAC first (so only secret holders reach any other check), then a
//! ±60 s timestamp window and a nonce cache, so a captured request cannot be
//! replayed to the same node, and then the destination, so it cannot be
//! replayed to another one either (`auth/verify.rs`). Every answer is MACed over the
//! request's nonce, so a recorded answer cannot be passed off as a fresh one.
//! The cluster name is in every MAC: two clusters that share a secret by
//! accident still stay apart.

use crate::config::Secret;
use crate::node::NodeId;
use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::Sha256;

mod verify;

pub use verify::Verifier;

type HmacSha256 = Hmac<Sha256>;

pub const H_NODE: &str = "x-herd-node";
/// The node a request is for; empty when the sender does not know its id yet.
pub const H_TO: &str = "x-herd-to";
pub const H_VERSION: &str = "x-herd-version";
pub const H_TS: &str = "x-herd-ts";
pub const H_NONCE: &str = "x-herd-nonce";
pub const H_MAC: &str = "x-herd-mac";

/// A request timestamp further than this from our clock is refused.
pub const MAX_CLOCK_SKEW_MS: u64 = 60_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing or malformed authentication headers")]
    Malformed,
    #[error("wrong MAC (a different cluster secret or cluster name)")]
    BadMac,
    #[error(
        "timestamp is {skew_ms} ms away from this node's clock (more than {MAX_CLOCK_SKEW_MS} ms)"
    )]
    Stale { skew_ms: u64 },
    #[error("nonce already used (a replayed message)")]
    Replay,
    #[error("too many recent messages to remember their nonces")]
    NonceCacheFull,
    /// A genuine message for another node: misdelivered, or replayed here.
    #[error("the message is addressed to node {}, not to this one", .0.to)]
    Misaddressed(Box<RequestAuth>),
}

/// The secret and the cluster name: what a message must prove it knows.
#[derive(Clone)]
pub struct Credentials {
    /// HMAC already keyed with the secret.
    keyed: HmacSha256,
    cluster: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

/// The authentication fields of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestAuth {
    pub node: String,
    /// The destination's node id, or empty for a probe of an address whose
    /// node we do not know yet (its answer is all such a message may earn).
    pub to: String,
    pub version: String,
    pub ts_ms: u64,
    pub nonce: String,
    pub mac: String,
}

/// The authentication fields of a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseAuth {
    pub node: String,
    pub version: String,
    pub mac: String,
}

impl Credentials {
    pub fn new(secret: Secret, cluster: impl Into<String>) -> Self {
        // RFC 2104 key handling, done here so keying cannot fail: a key longer
        // than SHA-256's 64-byte block is hashed, a shorter one zero-padded.
        let s = secret.bytes();
        let mut block = [0u8; 64];
        if s.len() <= block.len() {
            block[..s.len()].copy_from_slice(s);
        } else {
            block[..32].copy_from_slice(&<Sha256 as sha2::Digest>::digest(s));
        }
        Self {
            keyed: <HmacSha256 as Mac>::new(&block.into()),
            cluster: cluster.into(),
        }
    }

    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// A 32-byte key for `label` (e.g. the tunnel's Noise PSK), derived from
    /// the secret and the cluster name: one derived key reveals neither the
    /// secret nor the key of another label.
    pub fn derive_key(&self, label: &str) -> [u8; 32] {
        self.mac(label, &[]).finalize().into_bytes().into()
    }

    fn mac(&self, kind: &str, fields: &[&[u8]]) -> HmacSha256 {
        // Length-prefixed fields: no two different field lists feed the same bytes.
        let mut mac = self.keyed.clone();
        for field in [kind.as_bytes(), self.cluster.as_bytes()]
            .iter()
            .chain(fields)
        {
            mac.update(&(field.len() as u64).to_le_bytes());
            mac.update(field);
        }
        mac
    }

    fn request_mac(&self, method: &str, path: &str, a: &RequestAuth, body: &[u8]) -> HmacSha256 {
        let ts = a.ts_ms.to_string();
        let fields: [&[u8]; 8] = [
            method.as_bytes(),
            path.as_bytes(),
            a.node.as_bytes(),
            a.to.as_bytes(),
            a.version.as_bytes(),
            ts.as_bytes(),
            a.nonce.as_bytes(),
            body,
        ];
        self.mac("herd-request-v2", &fields)
    }

    fn response_mac(
        &self,
        req_nonce: &str,
        status: u16,
        node: &str,
        version: &str,
        body: &[u8],
    ) -> HmacSha256 {
        let status = status.to_string();
        let fields: [&[u8]; 5] = [
            req_nonce.as_bytes(),
            status.as_bytes(),
            node.as_bytes(),
            version.as_bytes(),
            body,
        ];
        self.mac("herd-response-v1", &fields)
    }

    /// Signs a request from `node` to `to` (`None`: whoever answers at the
    /// address) now, with a fresh nonce.
    pub fn sign_request(
        &self,
        method: &str,
        path: &str,
        to: Option<&NodeId>,
        node: &str,
        version: &str,
        body: &[u8],
    ) -> RequestAuth {
        let fields = RequestAuth {
            node: node.to_string(),
            to: to.map(|id| id.0.clone()).unwrap_or_default(),
            version: version.to_string(),
            ts_ms: unix_ms(),
            nonce: hex::encode(rand::random::<[u8; 16]>()),
            mac: String::new(),
        };
        self.sign(method, path, body, fields)
    }

    /// Fills in `mac` for the given fields.
    pub fn sign(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        mut fields: RequestAuth,
    ) -> RequestAuth {
        fields.mac = hex::encode(
            self.request_mac(method, path, &fields, body)
                .finalize()
                .into_bytes(),
        );
        fields
    }

    pub fn sign_response(
        &self,
        req_nonce: &str,
        status: u16,
        node: &str,
        version: &str,
        body: &[u8],
    ) -> ResponseAuth {
        let mac = self
            .response_mac(req_nonce, status, node, version, body)
            .finalize()
            .into_bytes();
        ResponseAuth {
            node: node.to_string(),
            version: version.to_string(),
            mac: hex::encode(mac),
        }
    }

    /// Checks that a response answers our request `req_nonce` and comes from a secret holder.
    pub fn verify_response(
        &self,
        req_nonce: &str,
        status: u16,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<ResponseAuth, AuthError> {
        let a = ResponseAuth {
            node: header(headers, H_NODE, 64).ok_or(AuthError::Malformed)?,
            version: header(headers, H_VERSION, 64).ok_or(AuthError::Malformed)?,
            mac: header(headers, H_MAC, 64).ok_or(AuthError::Malformed)?,
        };
        let mac = hex::decode(&a.mac).map_err(|_| AuthError::Malformed)?;
        self.response_mac(req_nonce, status, &a.node, &a.version, body)
            .verify_slice(&mac)
            .map_err(|_| AuthError::BadMac)?;
        Ok(a)
    }
}

impl RequestAuth {
    pub fn headers(&self) -> [(&'static str, String); 6] {
        [
            (H_NODE, self.node.clone()),
            (H_TO, self.to.clone()),
            (H_VERSION, self.version.clone()),
            (H_TS, self.ts_ms.to_string()),
            (H_NONCE, self.nonce.clone()),
            (H_MAC, self.mac.clone()),
        ]
    }

    fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let nonce = header(headers, H_NONCE, 32)?;
        if nonce.len() != 32 {
            return None;
        }
        // Absent and empty are the same: no destination. The MAC covers it either way.
        let to = match headers.get(H_TO) {
            None => String::new(),
            Some(v) => v.to_str().ok().filter(|v| v.len() <= 64)?.to_string(),
        };
        Some(Self {
            node: header(headers, H_NODE, 64)?,
            to,
            version: header(headers, H_VERSION, 64)?,
            ts_ms: header(headers, H_TS, 20)?.parse().ok()?,
            nonce,
            mac: header(headers, H_MAC, 64)?,
        })
    }
}

impl ResponseAuth {
    pub fn headers(&self) -> [(&'static str, String); 3] {
        [
            (H_NODE, self.node.clone()),
            (H_VERSION, self.version.clone()),
            (H_MAC, self.mac.clone()),
        ]
    }
}

fn header(headers: &HeaderMap, name: &str, max_len: usize) -> Option<String> {
    let v = headers.get(name)?.to_str().ok()?;
    (!v.is_empty() && v.len() <= max_len).then(|| v.to_string())
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests;
