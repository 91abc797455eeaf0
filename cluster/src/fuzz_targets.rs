//! Fuzz harnesses for what a node reads from the network: peer message
//! bodies, the MAC headers on every node-to-node request and answer, the
//! tunnel's preamble, and GGUF headers. Each takes raw bytes and asserts what
//! must hold for every input (a failed assertion is a finding). `gateway/fuzz`
//! runs them under libFuzzer; the gateway's `tests/fuzz.rs` runs them over
//! the seed corpus in every `cargo test`. Not an API.

use crate::auth::{AuthError, RequestAuth, Verifier, H_MAC};
use crate::gguf::ModelFacts;
use crate::spec::DeploySpec;
use crate::tunnel::{Responder, TunnelKeys};
use crate::version::check_compatible;
use crate::wire::{ClusterView, Gossip, Refusal};
use crate::{Credentials, NodeId, Secret};
use arbitrary::{Result, Unstructured};
use http::{HeaderMap, HeaderName, HeaderValue};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;

const ME: &str = "0123456789abcdef0123456789abcdef";

/// A body as each peer message type: whatever decodes encodes back to itself.
pub fn wire(data: &[u8]) {
    round_trip::<Gossip>(data);
    round_trip::<ClusterView>(data);
    round_trip::<Refusal>(data);
    round_trip::<DeploySpec>(data);
    round_trip::<ModelFacts>(data);
}

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(data: &[u8]) {
    if let Ok(msg) = serde_json::from_slice::<T>(data) {
        let again = serde_json::to_vec(&msg)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<T>(&bytes).ok());
        assert_eq!(again.as_ref(), Some(&msg));
    }
}

fn credentials() -> Option<Credentials> {
    let secret = Secret::from_text("fuzzing-cluster-secret-0123456789", "the harness").ok()?;
    Some(Credentials::new(secret, "fuzz"))
}

/// Request and answer authentication. Headers made up from `data` never
/// pass; honestly signed fields always do when they are plain header text,
/// and come back exactly as signed; a replay, another body or another
/// status is refused.
pub fn peer_auth(data: &[u8]) {
    let Some(creds) = credentials() else { return };
    let verifier = Verifier::new(creds.clone(), NodeId(ME.into()));
    let mut u = Unstructured::new(data);
    let _ = forged(&verifier, &creds, &mut u).and_then(|()| honest(&verifier, &creds, &mut u));
}

fn forged(verifier: &Verifier, creds: &Credentials, u: &mut Unstructured) -> Result<()> {
    let names = [
        "x-herd-node",
        "x-herd-to",
        "x-herd-version",
        "x-herd-ts",
        "x-herd-nonce",
        H_MAC,
    ];
    let mut headers = HeaderMap::new();
    for name in names {
        if u.arbitrary()? {
            if let Ok(v) = HeaderValue::from_bytes(u.arbitrary()?) {
                headers.insert(HeaderName::from_static(name), v);
            }
        }
    }
    let (method, path, now): (String, String, u64) = u.arbitrary()?;
    let body: Vec<u8> = u.arbitrary()?;
    let verified = verifier.verify_request(&method, &path, &headers, &body, now);
    assert!(verified.is_err(), "forged request accepted: {headers:?}");
    let status = u.arbitrary()?;
    let nonce: String = u.arbitrary()?;
    let answered = creds.verify_response(&nonce, status, &headers, &body);
    assert!(answered.is_err(), "forged answer accepted: {headers:?}");
    let (ours, theirs): (String, String) = u.arbitrary()?;
    let _ = check_compatible(&ours, &theirs);
    Ok(())
}

fn honest(verifier: &Verifier, creds: &Credentials, u: &mut Unstructured) -> Result<()> {
    let (method, path, body): (String, String, Vec<u8>) = u.arbitrary()?;
    let to = match u.int_in_range(0..=2)? {
        0 => String::new(),
        1 => ME.to_string(),
        _ => u.arbitrary()?,
    };
    let nonce = if u.arbitrary()? {
        hex::encode(u.bytes(16)?)
    } else {
        u.arbitrary()?
    };
    let fields = RequestAuth {
        node: u.arbitrary()?,
        to,
        version: u.arbitrary()?,
        ts_ms: u.arbitrary()?,
        nonce,
        mac: String::new(),
    };
    let signed = creds.sign(&method, &path, &body, fields);
    let headers = header_map(&signed.headers());
    let now = signed.ts_ms;
    let first = verifier.verify_request(&method, &path, &headers, &body, now);
    let plain = plain(&signed.node, 64)
        && plain(&signed.version, 64)
        && signed.nonce.len() == 32
        && plain(&signed.nonce, 32)
        && (signed.to.is_empty() || plain(&signed.to, 64));
    match &first {
        Ok(a) => assert_eq!(a, &signed),
        Err(AuthError::Misaddressed(a)) => {
            assert_eq!(**a, signed);
            assert!(a.to != ME && !a.to.is_empty());
        }
        Err(e) => assert!(!plain, "{signed:?} refused: {e}"),
    }
    if first.is_ok() || matches!(first, Err(AuthError::Misaddressed(_))) {
        let again = verifier.verify_request(&method, &path, &headers, &body, now);
        assert_eq!(again.err(), Some(AuthError::Replay));
        let mut other = body.clone();
        other.push(0);
        let tampered = verifier.verify_request(&method, &path, &headers, &other, now);
        assert_eq!(tampered.err(), Some(AuthError::BadMac));
    }

    let status: u16 = u.arbitrary()?;
    let answer = creds.sign_response(&signed.nonce, status, &signed.node, &signed.version, &body);
    let headers = header_map(&answer.headers());
    let checked = creds.verify_response(&signed.nonce, status, &headers, &body);
    match checked {
        Ok(a) => assert_eq!(a, answer),
        Err(e) => assert!(
            !(plain_answer(&answer.node) && plain_answer(&answer.version)),
            "{e}"
        ),
    }
    let other = creds.verify_response(&signed.nonce, status.wrapping_add(1), &headers, &body);
    assert!(other.is_err());
    Ok(())
}

fn header_map(pairs: &[(&'static str, String)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    }
    headers
}

/// Header text that arrives as it was sent: non-empty visible ASCII, at most `max` bytes.
fn plain(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
}

fn plain_answer(s: &str) -> bool {
    plain(s, 64)
}

/// A tunnel connection that sends `data`: without the cluster secret it
/// never gets past the handshake.
pub fn tunnel_preamble(data: &[u8]) {
    let Some(creds) = credentials() else { return };
    let keys = TunnelKeys::new(&creds);
    let me = NodeId("node-a".into());
    assert!(!Responder::authenticates(keys, me, data));
}

/// A GGUF header (a model file from disk or a peer): an error or facts
/// that add up, never a panic.
pub fn gguf_header(data: &[u8]) {
    let file_bytes = data.len() as u64;
    if let Ok(facts) = crate::gguf::parse(data, file_bytes) {
        assert_eq!(facts.layer_bytes.len() as u64, u64::from(facts.n_layers));
        let weights = facts
            .layer_bytes
            .iter()
            .try_fold(facts.other_bytes, |sum, b| sum.checked_add(*b));
        assert!(weights.is_some_and(|w| w <= file_bytes), "{facts:?}");
        assert_eq!(facts.file_bytes, file_bytes);
    }
}
