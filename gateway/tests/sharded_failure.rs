//! Losing a shard's node: SIGKILL of its whole process group, or SIGSTOP
//! (a Mac asleep) then SIGCONT. The stream in flight ends with an OpenAI
//! error event within 5 s, the deployment is re-placed on the remaining
//! nodes and answers again within 15 s, the other deployment's streams never
//! notice, and the node's return moves nothing. The same for the shard
//! worker process alone (SIGKILL; SIGSTOP, which its node's agent turns into
//! a kill): error event, then served again from the same nodes.

mod common;
mod common_fleet;

use common_fleet::{wait_for, Error, Fleet, FleetNode, TestResult, GEMMA, SMOL};
use futures::StreamExt;
use serde_json::Value;
use std::time::{Duration, Instant};

/// smollm wants any two nodes: the two roomiest are n1 and n2 (gemma is
/// pinned to n3 and n4 first and uses part of theirs).
const CONFIG: &str = r#"
[[models]]
id = "gemma"
model = "gemma-3-270m-q4_k_m.gguf"
nodes = ["n3", "n4"]
threads = 1
slots = 2
ctx_size = 512

[[models]]
id = "smollm"
model = "SmolLM2-135M-Instruct.Q4_1.gguf"
nodes = 2
threads = 1
slots = 2
ctx_size = 512
"#;

/// One cluster at a time: this machine has 2 cores, and the tests time detection.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const BUDGETS: [&str; 4] = ["8GiB", "6GiB", "4GiB", "4GiB"];

/// How a streamed completion ended, and when.
#[derive(Debug)]
struct Ended {
    at: Instant,
    tokens: usize,
    error: Option<Value>,
    finished: bool,
}

/// Streams a long completion through `node`; `started` fires after the first token.
async fn stream(
    url: String,
    model: &str,
    started: tokio::sync::oneshot::Sender<()>,
) -> Result<Ended, Error> {
    let resp = reqwest::Client::new()
        .post(format!("{url}/v1/completions"))
        .json(&serde_json::json!({"model": model, "prompt": "Once upon a time", "max_tokens": 400, "stream": true, "temperature": 0}))
        .send()
        .await?;
    if resp.status() != 200 {
        return Err(format!("{model}: status {}", resp.status()).into());
    }
    let mut body = resp.bytes_stream();
    let mut buf = String::new();
    let mut ended = Ended {
        at: Instant::now(),
        tokens: 0,
        error: None,
        finished: false,
    };
    let mut started = Some(started);
    while let Some(chunk) = body.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk?));
        while let Some(i) = buf.find("\n\n") {
            let event: String = buf.drain(..i + 2).collect();
            let Some(data) = event.trim().strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                ended.at = Instant::now();
                return Ok(ended);
            }
            let v: Value = serde_json::from_str(data)?;
            if v.get("error").is_some() {
                ended.error = Some(v);
            } else {
                ended.tokens += 1;
                if v["choices"][0]["finish_reason"].is_string() {
                    ended.finished = true;
                }
                if let Some(s) = started.take() {
                    let _ = s.send(());
                }
            }
        }
    }
    ended.at = Instant::now();
    Ok(ended)
}

/// smollm answers through `node` again within 15 s of `lost_at`.
async fn answering_within_15s(node: &FleetNode, lost_at: Instant) -> TestResult {
    wait_for(
        "smollm answering again",
        Duration::from_secs(15).saturating_sub(lost_at.elapsed()),
        || async {
            let (status, body) = node
                .complete("smollm", "The capital of France is", 8)
                .await?;
            if status == 200 {
                Ok(true)
            } else {
                Err(body.to_string().into())
            }
        },
    )
    .await?;
    Ok(())
}

fn shards(d: &Value) -> Vec<String> {
    d["shards"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["node"].as_str().map(str::to_string))
        .collect()
}

async fn ready_on(node: &FleetNode, id: &str) -> Result<Value, Error> {
    wait_for(&format!("{id} ready"), Duration::from_secs(120), || async {
        let d = node.deployment(id).await?;
        if d["state"] == "ready" {
            Ok(true)
        } else {
            Err(d.to_string().into())
        }
    })
    .await?;
    node.deployment(id).await
}

/// Loses n2 (smollm's shard) while both models stream; `lose` does it and
/// returns how to bring it back.
async fn lose_a_shard_node(sig: &str) -> TestResult {
    let _turn = ONE_AT_A_TIME.lock().await;
    let both: &[&str] = &[SMOL, GEMMA];
    let mut fleet = Fleet::start(CONFIG, &BUDGETS, &[both, both, both, both])?;
    let result = scenario(&mut fleet, sig).await;
    if result.is_err() {
        fleet.dump_logs();
    }
    result
}

async fn scenario(fleet: &mut Fleet, sig: &str) -> TestResult {
    let n1 = fleet.node("n1")?;
    let smol = ready_on(n1, "smollm").await?;
    assert_eq!(shards(&smol), ["n1", "n2"], "{smol}");
    let gemma = ready_on(n1, "gemma").await?;
    assert_eq!(shards(&gemma), ["n3", "n4"], "{gemma}");

    // Both models stream through node 3's gateway (smollm is forwarded to n1).
    let url = fleet.node("n3")?.url.clone();
    let (s_tx, s_rx) = tokio::sync::oneshot::channel();
    let (g_tx, g_rx) = tokio::sync::oneshot::channel();
    let smol_stream = tokio::spawn(stream(url.clone(), "smollm", s_tx));
    let gemma_stream = tokio::spawn(stream(url.clone(), "gemma", g_tx));
    let _ = s_rx.await;
    let _ = g_rx.await;

    let lost_at = Instant::now();
    fleet.node("n2")?.signal_group(sig)?;
    let s = smol_stream.await??;
    let detected = s.at.duration_since(lost_at);
    let err = s
        .error
        .ok_or("the smollm stream ended without an error event")?;
    assert_eq!(err["error"]["code"], "engine_crashed", "{err}");
    assert!(
        detected <= Duration::from_secs(5),
        "error event after {detected:?}"
    );
    eprintln!("{sig}: error event {detected:?} after the loss");

    // Re-placed on the remaining nodes, serving again within 15 s of the loss.
    let n1 = fleet.node("n1")?;
    answering_within_15s(n1, lost_at).await?;
    eprintln!(
        "{sig}: serving again {:?} after the loss",
        lost_at.elapsed()
    );
    let moved = n1.deployment("smollm").await?;
    let moved_to = shards(&moved);
    assert_eq!(moved_to.first().map(String::as_str), Some("n1"), "{moved}");
    assert!(!moved_to.contains(&"n2".to_string()), "{moved}");
    let (status, body) = fleet
        .node("n4")?
        .complete("smollm", "The capital of France is", 8)
        .await?;
    assert_eq!(status, 200, "through another gateway too: {body}");

    // The other deployment never noticed.
    let g = gemma_stream.await??;
    assert!(
        g.error.is_none() && g.finished,
        "gemma's stream was disturbed: {g:?}"
    );
    assert_eq!(shards(&n1.deployment("gemma").await?), ["n3", "n4"]);

    // The node comes back: it rejoins, and nothing moves.
    if sig == "STOP" {
        fleet.node("n2")?.signal_group("CONT")?;
    } else {
        fleet.node_mut("n2")?.restart()?;
    }
    let n1 = fleet.node("n1")?;
    wait_for("n2 alive again", Duration::from_secs(20), || async {
        let v = n1.cluster().await?;
        Ok(v["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|n| n["name"] == "n2" && n["state"] == "alive"))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        shards(&n1.deployment("smollm").await?),
        moved_to,
        "smollm moved back: flapping"
    );
    assert_eq!(shards(&n1.deployment("gemma").await?), ["n3", "n4"]);
    let (status, body) = fleet
        .node("n2")?
        .complete("smollm", "The capital of France is", 8)
        .await?;
    assert_eq!(
        status, 200,
        "the returned node's gateway serves too: {body}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_node_killed() -> TestResult {
    lose_a_shard_node("KILL").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_node_stopped_then_continued() -> TestResult {
    lose_a_shard_node("STOP").await
}

/// The shard worker process(es) under a node: children running `rpc-worker`.
fn workers_of(pid: u32) -> Vec<u32> {
    common::children(pid)
        .into_iter()
        .filter(|c| {
            let cmdline = std::fs::read(format!("/proc/{c}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline).contains("rpc-worker")
        })
        .collect()
}

/// Only the shard worker process is lost (its node stays up): SIGKILL, then
/// SIGSTOP (its node's agent kills a worker that stays stopped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_worker_process_killed_then_stopped() -> TestResult {
    let _turn = ONE_AT_A_TIME.lock().await;
    let config = CONFIG.replace("nodes = 2", "nodes = [\"n1\", \"n2\"]");
    let both: &[&str] = &[SMOL, GEMMA];
    let fleet = Fleet::start(&config, &BUDGETS[..2], &[both, both])?;
    let result = worker_scenario(&fleet).await;
    if result.is_err() {
        fleet.dump_logs();
    }
    result
}

async fn worker_scenario(fleet: &Fleet) -> TestResult {
    let n1 = fleet.node("n1")?;
    ready_on(n1, "smollm").await?;
    for sig in ["KILL", "STOP"] {
        let pids = workers_of(fleet.node("n2")?.pid());
        let [worker] = pids[..] else {
            return Err(format!("expected one shard worker under n2, found {pids:?}").into());
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let streaming = tokio::spawn(stream(n1.url.clone(), "smollm", tx));
        let _ = rx.await;
        let lost_at = Instant::now();
        let ok = std::process::Command::new("kill")
            .args([format!("-{sig}"), worker.to_string()])
            .status()?;
        assert!(ok.success());
        let s = streaming.await??;
        let detected = s.at.duration_since(lost_at);
        assert!(
            s.error.is_some(),
            "worker {sig}: the stream ended without an error event: {s:?}"
        );
        assert!(
            detected <= Duration::from_secs(5),
            "worker {sig}: error event after {detected:?}"
        );
        answering_within_15s(n1, lost_at).await?;
        eprintln!(
            "worker {sig}: error event {detected:?}, serving again {:?} after the loss",
            lost_at.elapsed()
        );
        let replaced = workers_of(fleet.node("n2")?.pid());
        assert!(
            replaced.len() == 1 && replaced[0] != worker,
            "a new worker replaced the lost one: {replaced:?}"
        );
        let d = n1.deployment("smollm").await?;
        assert_eq!(
            shards(&d),
            ["n1", "n2"],
            "the node is alive: nothing was re-placed: {d}"
        );
    }
    Ok(())
}
