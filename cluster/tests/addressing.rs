//! Signed messages name their destination, and nothing about the cluster is
//! sent to an address before it has proved the secret: real agents on
//! 127.0.0.1:0, with the requests their servers received recorded.

mod common;

use common::{names, node, replay, wait_for, Recorded, TestResult, SECRET};
use herd_cluster::{MemberState, GOSSIP_PATH};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The heartbeats `from` sent to this node, as they arrived.
fn heartbeats_from(received: &[Recorded], from: &str) -> Vec<Recorded> {
    received
        .iter()
        .filter(|r| {
            r.path == GOSSIP_PATH
                && r.headers
                    .get("x-herd-node")
                    .is_some_and(|v| v.as_bytes() == from.as_bytes())
        })
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_replayed_to_another_node_is_refused() -> TestResult {
    let b = node("bravo", Some(SECRET), &[], "0.1.0").await?;
    let a = node("alpha", Some(SECRET), &[b.addr], "0.1.0").await?;
    let c = node("charlie", Some(SECRET), &[a.addr], "0.1.0").await?;
    let a_id = a.node_id().0.clone();
    wait_for(
        "alpha, bravo and charlie to meet",
        Duration::from_secs(5),
        || names(&a).len() == 3 && names(&c).len() == 3,
    )
    .await?;
    // Enough heartbeats alpha → bravo to keep replaying them for a while.
    wait_for("ten heartbeats to bravo", Duration::from_secs(10), || {
        heartbeats_from(&b.received(), &a_id).len() >= 10
    })
    .await?;

    // A node that never heard of alpha does not learn it from a replay.
    let d = node("delta", Some(SECRET), &[], "0.1.0").await?;
    let captured = heartbeats_from(&b.received(), &a_id);
    let Some((first, rest)) = captured.split_last() else {
        return Err("no heartbeat captured".into());
    };
    assert_eq!(replay(first, d.addr).await?.status(), 401);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        names(&d),
        vec![("delta".to_string(), MemberState::Alive)],
        "delta lists no one"
    );

    // Alpha dies; its heartbeats to bravo, replayed to charlie, keep it alive there no longer.
    a.up.store(false, Ordering::SeqCst);
    a.stop_silently().await;
    let cut = Instant::now();
    let alpha_state = |c: &common::Node| {
        names(c)
            .into_iter()
            .find(|(n, _)| n == "alpha")
            .map(|(_, s)| s)
    };
    for req in rest.iter().rev() {
        assert_eq!(
            replay(req, c.addr).await?.status(),
            401,
            "a replay to charlie"
        );
        if alpha_state(&c) != Some(MemberState::Alive) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    wait_for(
        "alpha dead or gone on charlie",
        Duration::from_secs(4),
        || {
            alpha_state(&c) != Some(MemberState::Alive)
                && alpha_state(&c) != Some(MemberState::Suspect)
        },
    )
    .await?;
    assert!(
        cut.elapsed() < Duration::from_secs(5),
        "{:?}",
        cut.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_that_has_not_proved_the_secret_learns_nothing() -> TestResult {
    // A listener without the secret, named as a peer (a candidate like any mDNS find).
    let outsider = node("outsider", None, &[], "0.1.0").await?;
    let b = node("bravo-member", Some(SECRET), &[], "0.1.0").await?;
    let a = node(
        "alpha-prober",
        Some(SECRET),
        &[b.addr, outsider.addr],
        "0.1.0",
    )
    .await?;
    wait_for("alpha to hear bravo", Duration::from_secs(5), || {
        names(&a).len() == 2
    })
    .await?;
    // Several probe rounds to the outsider, with a member list to give away.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = outsider.received();
    assert!(!got.is_empty(), "the outsider was probed");
    let b_id = b.node_id().0.clone();
    let secrets_of_the_cluster = [
        "alpha-prober".to_string(),
        "bravo-member".to_string(),
        b_id,
        b.addr.to_string(),
        a.addr.to_string(),
        "memory".to_string(),
        "members".to_string(),
    ];
    for req in &got {
        let body = String::from_utf8_lossy(&req.body);
        for word in &secrets_of_the_cluster {
            assert!(
                !body.contains(word.as_str()),
                "{} {} carries {word:?}: {body}",
                req.method,
                req.path
            );
        }
        assert!(body.is_empty(), "a probe says nothing: {body}");
        assert_eq!(
            req.headers.get("x-herd-to").map(|v| v.as_bytes()),
            Some(&b""[..]),
            "and names no node: we do not know who is there"
        );
    }
    Ok(())
}
