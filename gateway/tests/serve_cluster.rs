//! `herd serve` runs the cluster agent too: a gateway and a `herd node` that
//! share a secret see each other in the gateway's `GET /cluster` and in
//! `herd status`, and the gateway keeps serving the OpenAI API meanwhile.

mod common;

use common::{Server, TestResult};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Node(std::process::Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_node(secret: &str, state: &str) -> Result<(Node, String), String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_herd"))
        .args([
            "node",
            "--listen",
            "127.0.0.1:0",
            "--name",
            "worker-1",
            "--no-discovery",
        ])
        .args(["--secret-file", secret, "--state-dir", state])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let _ = tx.send(rest.trim().to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .map_err(|_| "herd node did not start".to_string())?;
    Ok((Node(child), addr))
}

#[tokio::test]
async fn gateway_and_node_form_one_cluster() -> TestResult {
    let dir = tempfile::tempdir()?;
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n")?;
    let secret = secret.to_str().ok_or("path")?;
    let node_state = dir.path().join("node");
    let (_node, node_addr) = start_node(secret, node_state.to_str().ok_or("path")?)?;
    let gw_state = dir.path().join("gw");
    let server = Server::start(&[
        "--name",
        "gateway",
        "--no-discovery",
        "--secret-file",
        secret,
        "--peer",
        &node_addr,
        "--state-dir",
        gw_state.to_str().ok_or("path")?,
    ])?;

    let deadline = Instant::now() + Duration::from_secs(10);
    let view = loop {
        let v: Value = reqwest::get(format!("{}/cluster", server.url))
            .await?
            .json()
            .await?;
        let alive: Vec<String> = v["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|n| n["state"] == "alive")
            .filter_map(|n| n["name"].as_str().map(str::to_string))
            .collect();
        if alive.contains(&"gateway".to_string()) && alive.contains(&"worker-1".to_string()) {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway never saw the node: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for node in view["nodes"].as_array().into_iter().flatten() {
        assert!(
            node["memory_total"].as_u64().is_some_and(|m| m > 0),
            "{node}"
        );
    }
    let status = Command::new(env!("CARGO_BIN_EXE_herd"))
        .args(["status", "--url", &server.url])
        .output()?;
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(
        table.contains("gateway") && table.contains("worker-1"),
        "{table}"
    );
    assert!(
        !server.log_text().contains("0123456789abcdef"),
        "the secret reached the log"
    );

    // The OpenAI API is unaffected.
    let models: Value = reqwest::get(format!("{}/v1/models", server.url))
        .await?
        .json()
        .await?;
    assert_eq!(models["data"][0]["id"], common::MODEL_ID);
    Ok(())
}
