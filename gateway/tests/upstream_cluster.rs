//! Upstreams and aliases in a cluster: every node serves an upstream
//! deployment itself (it is not placed), and an alias on a node that does
//! not head its local target forwards that share of the requests to the
//! head. Two real `herd serve` nodes; SmolLM2 only in n1's store.

mod common_fleet;
#[path = "common/fault.rs"]
mod fault;

use common_fleet::{wait_for, Fleet, TestResult, SMOL};
use fault::FaultServer;
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alias_reaches_a_model_headed_elsewhere_and_an_upstream_from_any_node() -> TestResult {
    let outside = FaultServer::start("outside").await?;
    let config = format!(
        "[[models]]\nid = \"smol\"\nmodel = \"{SMOL}\"\nnodes = [\"n1\"]\nthreads = 1\n\
         [[models]]\nid = \"outside\"\nengine = \"upstream\"\nbase_url = \"{}\"\nupstream_model = \"fault-model\"\nprobe_path = \"\"\n\
         [[aliases]]\nname = \"chat\"\npolicy = \"weighted_round_robin\"\ntargets = [{{ model = \"smol\" }}, {{ model = \"outside\" }}]\n",
        outside.base_url
    );
    let fleet = Fleet::start(&config, &["4GiB", "4GiB"], &[&[SMOL], &[]])?;
    let result = run(&fleet, &outside).await;
    if result.is_err() {
        fleet.dump_logs();
    }
    result
}

async fn run(fleet: &Fleet, outside: &FaultServer) -> TestResult {
    let n2 = fleet.node("n2")?;
    wait_for(
        "smol ready, seen from n2",
        Duration::from_secs(90),
        || async { Ok(n2.deployment("smol").await?["state"] == "ready") },
    )
    .await?;
    let up = n2.deployment("outside").await?;
    assert_eq!(up["state"], "ready", "{up}");
    assert_eq!(up["upstream"]["circuit"], "closed", "{up}");
    let models: Value = reqwest::get(format!("{}/v1/models", n2.url))
        .await?
        .json()
        .await?;
    let ids: Vec<&str> = models["data"]
        .as_array()
        .map(|d| d.iter().filter_map(|m| m["id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(ids, ["outside", "smol", "chat"]);
    let mut answered_by = Vec::new();
    for _ in 0..4 {
        let r = reqwest::Client::new()
            .post(format!("{}/v1/chat/completions", n2.url))
            .json(&json!({"model": "chat", "max_tokens": 4, "temperature": 0,
                "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await?;
        assert_eq!(r.status().as_u16(), 200);
        let v: Value = r.json().await?;
        answered_by.push(v["model"].as_str().unwrap_or_default().to_string());
    }
    answered_by.sort();
    // The head names its deployment; the fault upstream names itself.
    assert_eq!(answered_by, ["outside", "outside", "smol", "smol"]);
    assert_eq!(outside.hits(), 2, "n2 sent the upstream's share itself");
    assert_eq!(
        outside.last_body().unwrap_or_default()["model"],
        "fault-model"
    );
    Ok(())
}
