//! The circuit breaker of an upstream deployment behind a real `herd
//! serve`: opened by failing requests (passive) and by failing probes
//! (active), resting for its cooldown, closed by one trial or a good probe;
//! visible in `/health`, `/cluster` and `herd_backend_up`.

mod common;
#[path = "common/fault.rs"]
mod fault;
#[path = "common/upstream_client.rs"]
mod upstream_client;

use common::{Server, TestResult};
use fault::{Fault, FaultServer};
use serde_json::Value;
use std::time::{Duration, Instant};
use upstream_client::{ask, content, health_of, metric, upstream};

#[tokio::test]
async fn the_circuit_opens_rests_and_closes() -> TestResult {
    let fragile = FaultServer::start("fragile").await?;
    let probed = FaultServer::start("probed").await?;
    let config = [
        upstream(
            "fragile",
            &fragile.base_url,
            "retries = 0\nfailure_threshold = 2\ncooldown_ms = 1500",
        ),
        upstream(
            "probed",
            &probed.base_url,
            "probe_path = \"/models\"\nprobe_interval_ms = 200\nfailure_threshold = 2\ncooldown_ms = 1000",
        )
        .replace("probe_path = \"\"\n", ""),
    ]
    .concat();
    let server = Server::start_config(&config, &[], &[])?;
    // Passive: two failed requests open the circuit.
    fragile.then(&[Fault::Status(500), Fault::Status(500)]);
    for _ in 0..2 {
        assert_eq!(ask(&server, "fragile", false).await?.status, 500);
    }
    let a = ask(&server, "fragile", false).await?;
    assert_eq!(a.status, 503, "{}", a.body);
    assert!(a.retry_after.is_some());
    assert_eq!(
        serde_json::from_str::<Value>(&a.body)?["error"]["code"],
        "upstream_unavailable"
    );
    assert_eq!(fragile.hits(), 2, "an open circuit sends nothing");
    let h = health_of(&server, "fragile").await?;
    assert_eq!(
        (h["status"].as_str(), h["circuit"].as_str()),
        (Some("unhealthy"), Some("open"))
    );
    let whole: Value = reqwest::get(format!("{}/health", server.url))
        .await?
        .json()
        .await?;
    assert_eq!(
        whole["status"], "ok",
        "an upstream never makes herd itself unhealthy"
    );
    // `/cluster` is refreshed every deployer tick (250 ms).
    let mut seen = Value::Null;
    for _ in 0..40 {
        let view: Value = reqwest::get(format!("{}/cluster", server.url))
            .await?
            .json()
            .await?;
        seen = view["deployments"]
            .as_array()
            .and_then(|d| d.iter().find(|d| d["id"] == "fragile").cloned())
            .unwrap_or_default();
        if seen["state"] == "unhealthy" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        (seen["state"].as_str(), seen["upstream"]["circuit"].as_str()),
        (Some("unhealthy"), Some("open")),
        "{seen}"
    );
    assert_eq!(
        metric(&server, "herd_backend_up{model=\"fragile\"}").await?,
        0.0
    );
    // After the cooldown one trial goes through, and closes it.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let a = ask(&server, "fragile", false).await?;
    assert_eq!(
        (a.status, content(&a.body).as_str()),
        (200, "hello from fragile")
    );
    assert_eq!(health_of(&server, "fragile").await?["circuit"], "closed");
    assert_eq!(
        metric(&server, "herd_backend_up{model=\"fragile\"}").await?,
        1.0
    );

    // Active: failing probes open a circuit no request has touched; good ones close it.
    let wait_for = |want: &'static str| {
        let server = &server;
        async move {
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if health_of(server, "probed").await?["circuit"] == want {
                    return Ok::<bool, reqwest::Error>(true);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(false)
        }
    };
    assert!(wait_for("closed").await?);
    probed.probe_answers(500);
    assert!(wait_for("open").await?, "probes failing open the circuit");
    assert_eq!(probed.hits(), 0);
    assert!(
        metric(
            &server,
            "herd_backend_failures_total{model=\"probed\",reason=\"probe\"}"
        )
        .await?
            >= 2.0
    );
    probed.probe_answers(200);
    assert!(
        wait_for("closed").await?,
        "a good probe after the cooldown closes it"
    );
    assert!(probed.probes() >= 4);
    Ok(())
}
