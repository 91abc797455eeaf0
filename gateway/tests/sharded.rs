//! Sharded deployments on a real 4-node cluster (herd processes on
//! 127.0.0.2–5, each with its own model store, 1 thread per engine): two
//! models split across their own node pairs answer at once through any
//! node's gateway, token for token as on one node; the split llama.cpp runs
//! is the planned one; a deployment too big for its nodes is refused with
//! the shortfall while the others serve.

mod common_fleet;

use common_fleet::{text, wait_for, Fleet, TestResult, GEMMA, SMOL};
use serde_json::Value;
use std::time::Duration;

const CONFIG: &str = r#"
[[models]]
id = "smollm"
model = "SmolLM2-135M-Instruct.Q4_1.gguf"
nodes = ["n1", "n2"]
threads = 1
slots = 2
ctx_size = 512

[[models]]
id = "gemma"
model = "gemma-3-270m-q4_k_m.gguf"
nodes = ["n3", "n4"]
threads = 1
slots = 2
ctx_size = 512

[[models]]
id = "huge"
model = "SmolLM2-135M-Instruct.Q4_1.gguf"
nodes = ["n2"]
threads = 1
slots = 64
ctx_size = 65536
"#;

const PROMPTS: [&str; 2] = [
    "The capital of France is",
    "Once upon a time, in a small village,",
];

/// Greedy texts from a one-node `herd serve` of the same file. It runs with
/// `cpu_repack = false`: a split model never uses llama.cpp's repacked CPU
/// kernels (its RPC workers cannot), so this is the same arithmetic. (For
/// SmolLM2's Q4_1 there is no repacked kernel, so the default is the same.)
async fn single_node(file: &str, prompts: &[&str]) -> Result<Vec<String>, common_fleet::Error> {
    let dir = tempfile::tempdir()?;
    let cfg = format!(
        "[[models]]\nid = \"solo\"\npath = \"{}\"\nthreads = 1\nslots = 2\nctx_size = 512\ncpu_repack = {}\n",
        common_fleet::cache_models().join(file).display(),
        file != GEMMA
    );
    std::fs::write(dir.path().join("solo.toml"), cfg)?;
    let fleet = Fleet::start(
        &std::fs::read_to_string(dir.path().join("solo.toml"))?,
        &["4GiB"],
        &[&[]],
    )?;
    let n = fleet.node("n1")?;
    wait_for(
        "the single-node model to load",
        Duration::from_secs(60),
        || async { Ok(n.deployment("solo").await?["state"] == "ready") },
    )
    .await?;
    let mut out = Vec::new();
    for prompt in prompts {
        let (status, body) = n.complete("solo", prompt, 24).await?;
        if status != 200 {
            return Err(format!("single node answered {status}: {body}").into());
        }
        out.push(text(&body));
    }
    Ok(out)
}

async fn ready(fleet: &Fleet, via: &str, id: &str) -> Result<Value, common_fleet::Error> {
    let n = fleet.node(via)?;
    wait_for(&format!("{id} ready"), Duration::from_secs(120), || async {
        let d = n.deployment(id).await?;
        if d["state"] == "ready" {
            Ok(true)
        } else {
            Err(format!("{d}").into())
        }
    })
    .await?;
    n.deployment(id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_models_split_across_their_own_nodes() -> TestResult {
    let both: &[&str] = &[SMOL, GEMMA];
    let fleet = Fleet::start(
        CONFIG,
        &["4GiB", "3GiB", "4GiB", "4GiB"],
        &[both, both, both, both],
    )?;
    let result = run(&fleet).await;
    if result.is_err() {
        fleet.dump_logs();
    }
    result
}

async fn run(fleet: &Fleet) -> TestResult {
    for (id, nodes, n_layers) in [("smollm", ["n1", "n2"], 30u64), ("gemma", ["n3", "n4"], 18)] {
        let d = ready(fleet, "n1", id).await?;
        assert_eq!(d["head"], nodes[0], "{d}");
        let shards = d["shards"].as_array().cloned().unwrap_or_default();
        let names: Vec<&str> = shards.iter().filter_map(|s| s["node"].as_str()).collect();
        assert_eq!(names, nodes, "{d}");
        // Contiguous, half-open, covering every layer; and llama.cpp loaded exactly that.
        let mut next = 0;
        for s in &shards {
            assert_eq!(s["layers"]["start"], next, "{d}");
            assert!(
                s["layers"]["end"].as_u64() > s["layers"]["start"].as_u64(),
                "{d}"
            );
            next = s["layers"]["end"].as_u64().unwrap_or(0);
            assert_eq!(
                s["loaded"], s["layers"],
                "the split that runs is the planned one: {d}"
            );
            assert_eq!(s["device"], "CPU", "{d}");
        }
        assert_eq!(next, n_layers, "{d}");
        // Every node sees the same placement (the engine's state reaches them with heartbeats).
        let plan = |v: &Value| -> Vec<(Value, Value)> {
            v["shards"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| (s["node"].clone(), s["layers"].clone()))
                .collect()
        };
        for other in ["n2", "n3", "n4"] {
            let o = fleet.node(other)?.deployment(id).await?;
            assert_eq!(plan(&o), plan(&d), "{other} disagrees: {o} vs {d}");
            assert_eq!(o["head"], d["head"], "{o}");
        }
    }

    let huge = fleet.node("n3")?.deployment("huge").await?;
    assert_eq!(huge["state"], "refused", "{huge}");
    let reason = huge["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("n2") && reason.contains("GiB"),
        "the refusal names the node and the shortfall: {reason}"
    );

    // Greedy output is token for token the single-node output. Both engines
    // start fresh and get the same requests in the same order (so their
    // prompt caches evolve alike), one via node 1's gateway, one via node 3's.
    for (file, id) in [(SMOL, "smollm"), (GEMMA, "gemma")] {
        let want = single_node(file, &PROMPTS).await?;
        for ((prompt, want), via) in PROMPTS.iter().zip(&want).zip(["n1", "n3"]) {
            let (status, body) = fleet.node(via)?.complete(id, prompt, 24).await?;
            assert_eq!(status, 200, "{id} via {via}: {body}");
            assert!(!want.is_empty());
            assert_eq!(
                &text(&body),
                want,
                "{id} via {via}, split vs one node, prompt {prompt:?}"
            );
        }
    }

    // Both models answer at the same time, through node 1's gateway and node 3's.
    let mut calls = Vec::new();
    for via in ["n1", "n3"] {
        for id in ["smollm", "gemma"] {
            for prompt in PROMPTS {
                let node = fleet.node(via)?;
                calls.push(async move { (via, id, node.complete(id, prompt, 24).await) });
            }
        }
    }
    for (via, id, answer) in futures::future::join_all(calls).await {
        let (status, body) = answer?;
        assert_eq!(status, 200, "{id} via {via}: {body}");
        assert!(!text(&body).is_empty(), "{id} via {via}: {body}");
    }

    // A raw TCP client on a shard node's tunnel port (where a ggml RPC server
    // would be reached) gets nothing: not a byte back, and the cluster serves on.
    let view = fleet.node("n2")?.cluster().await?;
    let me = view["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["self"] == true)
        .cloned()
        .unwrap_or_default();
    let port = me["tunnel_port"].as_u64().unwrap_or(0);
    assert!(port > 0, "{me}");
    let host = me["addr"]
        .as_str()
        .unwrap_or_default()
        .rsplit_once(':')
        .map(|(h, _)| h.to_string())
        .unwrap_or_default();
    for probe in [
        &b"\x00\x00\x00\x00\x00\x00\x00\x00\x00"[..],
        b"HERDTUN1 garbage garbage",
        b"GET / HTTP/1.1\r\n\r\n",
    ] {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect((host.as_str(), port as u16)).await?;
        s.write_all(probe).await?;
        let mut buf = [0u8; 64];
        let got = tokio::time::timeout(Duration::from_secs(7), s.read(&mut buf)).await;
        assert!(
            matches!(got, Ok(Ok(0)) | Ok(Err(_))),
            "an unauthenticated client got {got:?}"
        );
    }
    let (status, body) = fleet.node("n1")?.complete("smollm", "Hello", 4).await?;
    assert_eq!(status, 200, "{body}");

    // /v1/models on any node lists every deployment of the cluster.
    let models: Value = reqwest::get(format!("{}/v1/models", fleet.node("n4")?.url))
        .await?
        .json()
        .await?;
    let mut ids: Vec<&str> = models["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["id"].as_str())
        .collect();
    ids.sort();
    assert_eq!(ids, ["gemma", "huge", "smollm"]);
    // The refused one is a clean 503, not a 404 or a hang.
    let (status, body) = fleet.node("n1")?.complete("huge", "hi", 4).await?;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "engine_unavailable", "{body}");
    Ok(())
}
