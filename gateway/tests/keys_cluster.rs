//! Keys across a cluster: two `herd serve` processes that share a cluster
//! secret. A key created on either works on the other within 2 s, and a
//! revocation on either stops it on both within 2 s. The replicated
//! records never carry a secret.

mod common;
#[path = "common/keys.rs"]
mod keys_cli;

use common::{Server, TestResult};
use keys_cli::{create_key, herd_keys, models_status, wait_for_status};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const TWO_SECONDS: Duration = Duration::from_secs(2);

fn serve(name: &str, secret: &str, state: &str, peer: Option<&str>) -> Result<Server, String> {
    let mut args = vec![
        "--name",
        name,
        "--no-discovery",
        "--secret-file",
        secret,
        "--state-dir",
        state,
    ];
    if let Some(p) = peer {
        args.extend(["--peer", p]);
    }
    Server::start(&args)
}

#[tokio::test]
async fn keys_and_revocations_reach_every_node() -> TestResult {
    let dir = tempfile::tempdir()?;
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n")?;
    let secret = secret.to_str().ok_or("path")?;
    let (state_a, state_b) = (dir.path().join("a"), dir.path().join("b"));
    let a = serve("node-a", secret, state_a.to_str().ok_or("path")?, None)?;
    let a_addr = a.url.trim_start_matches("http://").to_string();
    let b = serve(
        "node-b",
        secret,
        state_b.to_str().ok_or("path")?,
        Some(&a_addr),
    )?;
    let http = reqwest::Client::new();
    // Wait until each sees the other (the cluster is open: no key yet).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v: Value = http
            .get(format!("{}/cluster", a.url))
            .send()
            .await?
            .json()
            .await?;
        let alive = v["nodes"]
            .as_array()
            .map_or(0, |n| n.iter().filter(|n| n["state"] == "alive").count());
        if alive == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "no cluster formed: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Created on A with the CLI: B, open until it knows a key, then
    // refuses other keys and takes this one.
    let alice = create_key(&state_a, "alice", &["--rpm", "100"])?;
    let took = wait_for_status(&b.url, "sk-herd-wrong", 401, TWO_SECONDS).await?;
    assert_eq!(models_status(&b.url, &alice).await?, 200);
    println!("a key created on A worked on B after {took:?}");

    // Revoked on B (whose key file now holds the record): stops on A.
    herd_keys(&state_b, &["revoke", "alice"])?;
    let took = wait_for_status(&a.url, &alice, 401, TWO_SECONDS).await?;
    println!("a key revoked on B stopped on A after {took:?}");
    wait_for_status(&b.url, &alice, 401, TWO_SECONDS).await?;

    // Created over HTTP on B by an admin made on A: works on A.
    let lead = create_key(&state_a, "lead", &["--role", "admin"])?;
    wait_for_status(&b.url, &lead, 200, TWO_SECONDS).await?;
    let made: Value = http
        .post(format!("{}/admin/keys", b.url))
        .bearer_auth(&lead)
        .json(&json!({"name": "webui"}))
        .send()
        .await?
        .json()
        .await?;
    let webui = made["key"].as_str().ok_or("no key")?.to_string();
    wait_for_status(&a.url, &webui, 200, TWO_SECONDS).await?;
    // Rotated on A: the old secret stops on B.
    let rotated = herd_keys(&state_a, &["rotate", "webui"])?
        .trim()
        .to_string();
    wait_for_status(&b.url, &webui, 401, TWO_SECONDS).await?;
    wait_for_status(&b.url, &rotated, 200, TWO_SECONDS).await?;

    // No secret on either disk, in /cluster or in the logs.
    let cluster = http
        .get(format!("{}/cluster", a.url))
        .bearer_auth(&lead)
        .send()
        .await?
        .text()
        .await?;
    let mut texts = vec![cluster, a.log_text(), b.log_text()];
    for state in [&state_a, &state_b] {
        for entry in std::fs::read_dir(state)? {
            texts.push(String::from_utf8_lossy(&std::fs::read(entry?.path())?).into_owned());
        }
    }
    let b_keys = std::fs::read_to_string(state_b.join("keys.json"))?;
    assert!(b_keys.contains("\"alice\"") && b_keys.contains("revoked_ms"));
    for t in &texts {
        for s in [&alice, &lead, &webui, &rotated] {
            assert!(!t.contains(&s[12..]), "a secret leaked");
        }
    }
    Ok(())
}
