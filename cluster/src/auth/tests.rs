//! Signing and verifying cluster requests and answers.

use super::verify::NonceCache;
use super::*;
use http::HeaderValue;

fn creds(secret: &str, cluster: &str) -> Credentials {
    match Secret::from_text(secret, "test") {
        Ok(s) => Credentials::new(s, cluster),
        Err(e) => unreachable!("{e}"),
    }
}

fn to_map(pairs: &[(&'static str, String)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(*k, v);
        }
    }
    h
}

const S: &str = "correct horse battery staple";

/// The node the verifiers in these tests run on.
fn me() -> NodeId {
    NodeId("0".repeat(31) + "1")
}

#[test]
fn a_signed_request_verifies_once() {
    let c = creds(S, "home");
    let v = Verifier::new(c.clone(), me());
    let a = c.sign_request(
        "POST",
        "/_herd/v1/gossip",
        Some(&me()),
        "n1",
        "0.1.0",
        b"{}",
    );
    let h = to_map(&a.headers());
    let now = a.ts_ms;
    assert_eq!(
        v.verify_request("POST", "/_herd/v1/gossip", &h, b"{}", now)
            .map(|a| a.node),
        Ok("n1".into())
    );
    assert_eq!(
        v.verify_request("POST", "/_herd/v1/gossip", &h, b"{}", now),
        Err(AuthError::Replay)
    );
}

#[test]
fn anything_changed_breaks_the_mac() {
    let c = creds(S, "home");
    let a = c.sign_request("POST", "/p", Some(&me()), "n1", "0.1.0", b"body");
    let h = to_map(&a.headers());
    let now = a.ts_ms;
    let fresh = || Verifier::new(c.clone(), me());
    assert_eq!(
        fresh().verify_request("POST", "/p", &h, b"bodY", now),
        Err(AuthError::BadMac)
    );
    assert_eq!(
        fresh().verify_request("GET", "/p", &h, b"body", now),
        Err(AuthError::BadMac)
    );
    assert_eq!(
        fresh().verify_request("POST", "/q", &h, b"body", now),
        Err(AuthError::BadMac)
    );
    let other_secret = Verifier::new(creds("another secret of enough length", "home"), me());
    assert_eq!(
        other_secret.verify_request("POST", "/p", &h, b"body", now),
        Err(AuthError::BadMac)
    );
    let other_cluster = Verifier::new(creds(S, "work"), me());
    assert_eq!(
        other_cluster.verify_request("POST", "/p", &h, b"body", now),
        Err(AuthError::BadMac)
    );
    let mut forged = a.clone();
    forged.node = "n2".into();
    let h2 = to_map(&forged.headers());
    assert_eq!(
        fresh().verify_request("POST", "/p", &h2, b"body", now),
        Err(AuthError::BadMac)
    );
    assert_eq!(
        fresh().verify_request("POST", "/p", &HeaderMap::new(), b"body", now),
        Err(AuthError::Malformed)
    );
}

#[test]
fn old_or_future_timestamps_are_refused() {
    let c = creds(S, "home");
    let v = Verifier::new(c.clone(), me());
    let fields = RequestAuth {
        node: "n1".into(),
        to: String::new(),
        version: "0.1.0".into(),
        ts_ms: 1_000_000,
        nonce: "0".repeat(32),
        mac: String::new(),
    };
    let a = c.sign("POST", "/p", b"", fields);
    let h = to_map(&a.headers());
    assert_eq!(
        v.verify_request("POST", "/p", &h, b"", 1_000_000 + 60_001),
        Err(AuthError::Stale { skew_ms: 60_001 })
    );
    assert_eq!(
        v.verify_request("POST", "/p", &h, b"", 1_000_000 - 70_000),
        Err(AuthError::Stale { skew_ms: 70_000 })
    );
    assert!(v
        .verify_request("POST", "/p", &h, b"", 1_000_000 + 59_000)
        .is_ok());
}

#[test]
fn nonces_expire_after_the_window() {
    let mut cache = NonceCache::default();
    assert!(cache.insert("a", 0).is_ok());
    assert_eq!(cache.insert("a", 1000), Err(AuthError::Replay));
    assert!(cache.insert("b", 2 * MAX_CLOCK_SKEW_MS + 1).is_ok());
    assert_eq!(cache.seen.len(), 1, "the old nonce is forgotten");
}

#[test]
fn keying_matches_standard_hmac_for_short_and_long_secrets() {
    for secret in ["0123456789abcdef".to_string(), "k".repeat(200)] {
        let c = creds(&secret, "home");
        let ours = c.mac("kind", &[b"x"]).finalize().into_bytes();
        let standard = HmacSha256::new_from_slice(secret.as_bytes())
            .ok()
            .map(|mut m| {
                for field in [&b"kind"[..], b"home", b"x"] {
                    m.update(&(field.len() as u64).to_le_bytes());
                    m.update(field);
                }
                m.finalize().into_bytes()
            });
        assert_eq!(Some(ours), standard);
    }
}

#[test]
fn responses_are_bound_to_their_request() {
    let c = creds(S, "home");
    let r = c.sign_response("nonce-1", 200, "n2", "0.1.0", b"view");
    let h = to_map(&r.headers());
    assert_eq!(
        c.verify_response("nonce-1", 200, &h, b"view")
            .map(|r| r.node),
        Ok("n2".into())
    );
    assert_eq!(
        c.verify_response("nonce-2", 200, &h, b"view"),
        Err(AuthError::BadMac)
    );
    assert_eq!(
        c.verify_response("nonce-1", 409, &h, b"view"),
        Err(AuthError::BadMac)
    );
    assert_eq!(
        c.verify_response("nonce-1", 200, &h, b"vieW"),
        Err(AuthError::BadMac)
    );
    let outsider = creds("another secret of enough length", "home");
    assert_eq!(
        outsider.verify_response("nonce-1", 200, &h, b"view"),
        Err(AuthError::BadMac)
    );
}

#[test]
fn the_destination_is_signed_and_checked() {
    let c = creds(S, "home");
    let other = NodeId("0".repeat(31) + "2");
    let for_other = c.sign_request("POST", "/p", Some(&other), "n1", "0.1.0", b"");
    let h = to_map(&for_other.headers());
    let v = Verifier::new(c.clone(), me());
    assert_eq!(
        v.verify_request("POST", "/p", &h, b"", for_other.ts_ms),
        Err(AuthError::Misaddressed(Box::new(for_other.clone()))),
        "a message for another node is refused"
    );
    assert_eq!(
        v.verify_request("POST", "/p", &h, b"", for_other.ts_ms),
        Err(AuthError::Replay),
        "and its nonce is used up"
    );
    let mut redirected = for_other.clone();
    redirected.to = me().0;
    let h = to_map(&redirected.headers());
    assert_eq!(
        Verifier::new(c.clone(), me()).verify_request("POST", "/p", &h, b"", for_other.ts_ms),
        Err(AuthError::BadMac),
        "the destination is under the MAC"
    );
    let probe = c.sign_request("POST", "/p", None, "n1", "0.1.0", b"");
    let h = to_map(&probe.headers());
    assert_eq!(
        v.verify_request("POST", "/p", &h, b"", probe.ts_ms)
            .map(|a| a.to),
        Ok(String::new()),
        "an unaddressed probe passes, marked as such"
    );
    let again = c.sign_request("POST", "/p", None, "n1", "0.1.0", b"");
    let mut h = to_map(&again.headers());
    h.remove(H_TO);
    assert!(
        v.verify_request("POST", "/p", &h, b"", again.ts_ms).is_ok(),
        "no header is the same as an empty one"
    );
}
