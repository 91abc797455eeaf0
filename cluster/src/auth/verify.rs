//! The receiving side of request authentication: the MAC, then the
//! timestamp, then the nonce, then the destination. The order matters: only a
//! secret holder's message reaches the nonce cache, and a message for another
//! node uses up its nonce here as well, so it cannot be tried twice.

use super::{AuthError, Credentials, RequestAuth, MAX_CLOCK_SKEW_MS};
use crate::node::NodeId;
use hmac::Mac;
use http::HeaderMap;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Nonces remembered at once; past that, requests wait for old ones to expire.
const MAX_NONCES: usize = 200_000;

/// Checks incoming requests for the node `me`.
#[derive(Debug)]
pub struct Verifier {
    creds: Credentials,
    me: NodeId,
    nonces: Mutex<NonceCache>,
}

impl Verifier {
    pub fn new(creds: Credentials, me: NodeId) -> Self {
        Self {
            creds,
            me,
            nonces: Mutex::new(NonceCache::default()),
        }
    }

    pub fn credentials(&self) -> &Credentials {
        &self.creds
    }

    /// The request's authentication, if it comes from a secret holder, is
    /// fresh, new, and addressed to this node or to no node in particular
    /// (`to` is then empty: the caller decides what such a probe may do).
    pub fn verify_request(
        &self,
        method: &str,
        path: &str,
        headers: &HeaderMap,
        body: &[u8],
        now_ms: u64,
    ) -> Result<RequestAuth, AuthError> {
        let a = RequestAuth::from_headers(headers).ok_or(AuthError::Malformed)?;
        let mac = hex::decode(&a.mac).map_err(|_| AuthError::Malformed)?;
        self.creds
            .request_mac(method, path, &a, body)
            .verify_slice(&mac)
            .map_err(|_| AuthError::BadMac)?;
        let skew_ms = now_ms.abs_diff(a.ts_ms);
        if skew_ms > MAX_CLOCK_SKEW_MS {
            return Err(AuthError::Stale { skew_ms });
        }
        let mut nonces = self.nonces.lock().unwrap_or_else(|p| p.into_inner());
        nonces.insert(&a.nonce, now_ms)?;
        if !a.to.is_empty() && a.to != self.me.0 {
            return Err(AuthError::Misaddressed(Box::new(a)));
        }
        Ok(a)
    }
}

/// Nonces seen within the replay window (anything older is refused by its timestamp anyway).
#[derive(Debug, Default)]
pub(super) struct NonceCache {
    pub(super) seen: HashMap<String, u64>,
    order: VecDeque<(u64, String)>,
}

impl NonceCache {
    pub(super) fn insert(&mut self, nonce: &str, now_ms: u64) -> Result<(), AuthError> {
        let keep_after = now_ms.saturating_sub(2 * MAX_CLOCK_SKEW_MS);
        while let Some((at, _)) = self.order.front() {
            if *at >= keep_after {
                break;
            }
            if let Some((_, old)) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        if self.seen.contains_key(nonce) {
            return Err(AuthError::Replay);
        }
        if self.seen.len() >= MAX_NONCES {
            return Err(AuthError::NonceCacheFull);
        }
        self.seen.insert(nonce.to_string(), now_ms);
        self.order.push_back((now_ms, nonce.to_string()));
        Ok(())
    }
}
