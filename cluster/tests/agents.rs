//! Several agents in one process, each behind its own HTTP server on
//! 127.0.0.1:0: seeds, refusals, replays and the lone mode, end to end.

mod common;

use common::{creds, names, node, node_in, wait_for, Node, TestResult, SECRET};
use herd_cluster::client::{CallError, PeerClient};
use herd_cluster::{MemberState, GOSSIP_PATH, VIEW_PATH};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_seed_is_enough_to_learn_the_whole_cluster() -> TestResult {
    let a = node("a", Some(SECRET), &[], "0.1.0").await?;
    let b = node("b", Some(SECRET), &[a.addr], "0.1.0").await?;
    let c = node("c", Some(SECRET), &[b.addr], "0.1.0").await?;
    let all = |n: &Node| {
        n.agent
            .view()
            .nodes
            .iter()
            .filter(|x| x.state == MemberState::Alive)
            .count()
            == 3
    };
    wait_for("a 3-node view everywhere", Duration::from_secs(5), || {
        all(&a) && all(&b) && all(&c)
    })
    .await?;
    let view = c.agent.view();
    assert_eq!(view.nodes[0].name, "c");
    assert!(view.nodes[0].is_self);
    assert!(view
        .nodes
        .iter()
        .all(|n| n.memory_total > 0 && n.cores > 0 && n.version == "0.1.0"));
    assert!(
        view.nodes.iter().any(|n| n.name == "a" && n.addr == a.addr),
        "c learned a from b: {view:?}"
    );

    // A clean shutdown tells the others, which drop it at once.
    b.agent.shutdown().await;
    drop(b);
    wait_for("b to be removed", Duration::from_millis(1500), || {
        names(&a).len() == 2 && names(&c).len() == 2
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_dies_is_removed_and_comes_back() -> TestResult {
    let a = node("a", Some(SECRET), &[], "0.1.0").await?;
    let b = node("b", Some(SECRET), &[a.addr], "0.1.0").await?;
    wait_for("a to see b", Duration::from_secs(5), || {
        names(&a).len() == 2
    })
    .await?;
    let b_id = b.node_id().clone();
    // b goes silent: it answers nothing and sends nothing.
    b.up.store(false, Ordering::SeqCst);
    b.stop_silently().await;
    let cut = Instant::now();
    wait_for("b suspect", Duration::from_secs(3), || {
        names(&a)
            .get(1)
            .is_some_and(|n| n.1 == MemberState::Suspect)
    })
    .await?;
    wait_for("b dead", Duration::from_secs(3), || {
        names(&a).get(1).is_some_and(|n| n.1 == MemberState::Dead)
    })
    .await?;
    wait_for("b removed", Duration::from_secs(3), || names(&a).len() == 1).await?;
    assert!(
        cut.elapsed() < Duration::from_secs(5),
        "removed after {:?}",
        cut.elapsed()
    );
    // b restarts (same state dir, so same id) on another port and rejoins through its seed.
    let b2 = node_in("b", Some(SECRET), &[a.addr], "0.1.0", b.state.clone()).await?;
    assert_eq!(b2.node_id(), &b_id);
    wait_for("b back in a's view", Duration::from_secs(5), || {
        names(&a).len() == 2
    })
    .await?;
    wait_for("a in b's view", Duration::from_secs(3), || {
        names(&b2).len() == 2
    })
    .await?;
    assert_eq!(a.view().nodes[1].addr, b2.addr);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outsiders_learn_nothing_and_replays_fail() -> TestResult {
    let a = node("a", Some(SECRET), &[], "0.1.0").await?;
    let wrong = node(
        "intruder",
        Some("a-different-secret-of-length"),
        &[a.addr],
        "0.1.0",
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        names(&a),
        vec![("a".to_string(), MemberState::Alive)],
        "the intruder is never listed"
    );
    assert_eq!(names(&wrong).len(), 1, "the intruder learns no member");

    let outsider = PeerClient::new(
        creds("a-different-secret-of-length")?,
        "x",
        "0.1.0",
        Duration::from_secs(2),
    )?;
    assert_eq!(
        outsider.view(&format!("http://{}", a.addr)).await.err(),
        Some(CallError::Rejected)
    );

    // No credentials at all: 401, empty body, no herd headers.
    let http = reqwest::Client::builder().no_proxy().build()?;
    for (method, path) in [
        ("GET", VIEW_PATH),
        ("POST", GOSSIP_PATH),
        ("GET", "/_herd/v1/nothing"),
    ] {
        let resp = http
            .request(method.parse()?, format!("http://{}{path}", a.addr))
            .send()
            .await?;
        assert_eq!(resp.status(), 401, "{method} {path}");
        assert!(
            resp.headers()
                .keys()
                .all(|k| !k.as_str().starts_with("x-herd")),
            "{:?}",
            resp.headers()
        );
        assert!(resp.bytes().await?.is_empty());
    }

    // A captured valid request cannot be replayed.
    let c = creds(SECRET)?;
    let auth = c.sign_request("GET", VIEW_PATH, None, "status", "0.1.0", b"");
    let send = || {
        let mut req = http.get(format!("http://{}{VIEW_PATH}", a.addr));
        for (k, v) in auth.headers() {
            req = req.header(k, v);
        }
        req.send()
    };
    let first = send().await?;
    assert_eq!(first.status(), 200);
    let headers = first.headers().clone();
    let body = first.bytes().await?;
    assert!(
        c.verify_response(&auth.nonce, 200, &headers, &body).is_ok(),
        "the answer is signed"
    );
    assert_eq!(send().await?.status(), 401, "the replay is refused");

    // The member's own signed view works.
    let member = PeerClient::new(c, "status", "0.1.0", Duration::from_secs(2))?;
    let view = member.view(&format!("http://{}", a.addr)).await?;
    assert_eq!(view.nodes.len(), 1);
    assert_eq!(view.cluster, "test");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incompatible_versions_are_refused_naming_both() -> TestResult {
    let a = node("a", Some(SECRET), &[], "0.1.0").await?;
    let b = node("b", Some(SECRET), &[a.addr], "0.2.3").await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(names(&a).len(), 1);
    assert_eq!(names(&b).len(), 1);
    let client = PeerClient::new(creds(SECRET)?, "newer", "0.2.3", Duration::from_secs(2))?;
    let err = client
        .view(&format!("http://{}", a.addr))
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("herd 0.1.0") && err.contains("herd 0.2.3"),
        "{err}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_secret_a_node_is_alone() -> TestResult {
    let lone = node("solo", None, &[], "0.1.0").await?;
    let view = lone.agent.view();
    assert!(!view.clustered);
    assert_eq!(view.nodes.len(), 1);
    let client = PeerClient::new(creds(SECRET)?, "x", "0.1.0", Duration::from_secs(2))?;
    assert_eq!(
        client.view(&format!("http://{}", lone.addr)).await.err(),
        Some(CallError::Rejected)
    );
    let err = node("bad", None, &[lone.addr], "0.1.0")
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("peers") && err.contains("secret"), "{err}");
    Ok(())
}
