//! Weights cross the network once: a node that must head a deployment but
//! lacks the model file copies it from a peer's store (sha256-checked, over
//! the authenticated channel), once; after a re-placement the next head does
//! the same (resuming a partial copy it already had), and a node that already
//! has its copy never fetches it again.

mod common_fleet;

use common_fleet::{wait_for, Fleet, TestResult, SMOL};
use std::time::Duration;

/// One single-node deployment: the roomiest node heads it.
const CONFIG: &str = r#"
[[models]]
id = "smollm"
model = "SmolLM2-135M-Instruct.Q4_1.gguf"
threads = 1
slots = 1
ctx_size = 512
"#;

fn count(log: &str, what: &str) -> usize {
    log.lines().filter(|l| l.contains(what)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_without_the_file_copies_it_from_a_peer_once() -> TestResult {
    // Only n1 (the leader: it starts first) has the file; n2 is the roomiest, then n3.
    let mut fleet = Fleet::start(CONFIG, &["1GiB", "8GiB", "6GiB"], &[&[SMOL], &[], &[]])?;
    let result = scenario(&mut fleet).await;
    if result.is_err() {
        fleet.dump_logs();
    }
    result
}

async fn scenario(fleet: &mut Fleet) -> TestResult {
    let original = std::fs::read(common_fleet::cache_models().join(SMOL))?;
    for (head, step) in [("n2", "first placement"), ("n3", "after n2 is killed")] {
        let n1 = fleet.node("n1")?;
        wait_for(
            &format!("{step}: smollm ready on {head}"),
            Duration::from_secs(60),
            || async {
                let d = n1.deployment("smollm").await?;
                if d["state"] == "ready" && d["head"] == head {
                    Ok(true)
                } else {
                    Err(d.to_string().into())
                }
            },
        )
        .await?;
        let (status, body) = n1.complete("smollm", "The capital of France is", 8).await?;
        assert_eq!(status, 200, "{body}");
        let copied = std::fs::read(fleet.store(head).join(SMOL))?;
        assert!(
            copied == original,
            "{head}'s copy is byte for byte the file"
        );
        let log = fleet.node(head)?.log_text();
        assert_eq!(
            count(&log, "model copied from a peer"),
            1,
            "{head} copied once:\n{log}"
        );
        assert!(
            !fleet.store(head).join(format!(".{SMOL}.part")).exists(),
            "no partial file is left behind"
        );
        if head == "n2" {
            // n3 already holds the first 40 MB of the file from an earlier,
            // broken copy: its copy must resume there, not start over.
            let partial = fleet.store("n3").join(format!(".{SMOL}.part"));
            std::fs::write(&partial, &original[..40_000_000])?;
            fleet.node("n2")?.signal_group("KILL")?;
        } else {
            let line = log
                .lines()
                .find(|l| l.contains("model copied from a peer"))
                .unwrap_or_default();
            let want = format!("bytes={}", original.len() - 40_000_000);
            assert!(
                line.contains(&want),
                "{head} resumed the partial copy ({want}): {line}"
            );
        }
    }
    // n1 sent the file twice in all (once to each head), never more.
    let sent = count(
        &fleet.node("n1")?.log_text(),
        "sending a model file to a peer",
    );
    assert_eq!(sent, 2, "n1 served the file once per head");

    // n2 comes back with its copy: it fetches nothing, and nothing moves.
    fleet.node_mut("n2")?.restart()?;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let d = fleet.node("n1")?.deployment("smollm").await?;
    assert_eq!(d["head"], "n3", "{d}");
    let log = fleet.node("n2")?.log_text();
    assert_eq!(
        count(&log, "model copied from a peer"),
        1,
        "n2 did not fetch again:\n{log}"
    );
    Ok(())
}
