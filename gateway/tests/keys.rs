//! Named API keys against a real `herd serve` with the real model: keys
//! made by `herd keys` (a real process) work at once, revoked or rotated
//! ones stop within 2 s, the older `api_key_file` still works, the admin
//! routes answer 403 to other keys, a model allow-list hides the rest, and
//! no secret is ever written to the key file, the log, metrics or a listing.

mod common;
#[path = "common/keys.rs"]
mod keys_cli;

use common::{Server, TestResult, MODEL_ID};
use keys_cli::{create_key, herd_keys, models_status, wait_for_status};
use serde_json::{json, Value};
use std::time::Duration;

const TWO_SECONDS: Duration = Duration::from_secs(2);

#[tokio::test]
async fn keys_work_stop_when_revoked_and_never_leak() -> TestResult {
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");
    let legacy_file = dir.path().join("keys.txt");
    std::fs::write(&legacy_file, "ops:sk-legacy-0123456789abcdef\n")?;
    let alice = create_key(&state, "alice", &["--rpm", "1000"])?;
    let admin = create_key(&state, "lead", &["--role", "admin"])?;
    let server = Server::start(&[
        "--state-dir",
        state.to_str().ok_or("path")?,
        "--api-key-file",
        legacy_file.to_str().ok_or("path")?,
    ])?;
    let base = server.url.clone();
    let http = reqwest::Client::new();

    assert_eq!(models_status(&base, &alice).await?, 200);
    assert_eq!(
        models_status(&base, "sk-legacy-0123456789abcdef").await?,
        200
    );
    assert_eq!(models_status(&base, "sk-herd-not-a-key").await?, 401);
    let chat = http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(&alice)
        .json(&json!({"model": MODEL_ID, "max_tokens": 3,
            "messages": [{"role": "user", "content": "Hi"}]}))
        .send()
        .await?;
    assert_eq!(chat.status(), 200);

    // A key created while the server runs works within 2 s; a revoked one stops.
    let bob = create_key(&state, "bob", &[])?;
    let took = wait_for_status(&base, &bob, 200, TWO_SECONDS).await?;
    println!("a new key worked after {took:?}");
    herd_keys(&state, &["revoke", "bob"])?;
    let took = wait_for_status(&base, &bob, 401, TWO_SECONDS).await?;
    println!("a revoked key stopped after {took:?}");

    // An expiring key works, then stops, and is listed as expired.
    let brief = create_key(&state, "brief", &["--expires", "2s"])?;
    wait_for_status(&base, &brief, 200, TWO_SECONDS).await?;
    wait_for_status(&base, &brief, 401, Duration::from_secs(4)).await?;
    assert!(herd_keys(&state, &["list"])?.contains("expired"));

    // Rotation: the old secret stops, the new one works.
    let rotated = herd_keys(&state, &["rotate", "alice"])?.trim().to_string();
    wait_for_status(&base, &alice, 401, TWO_SECONDS).await?;
    wait_for_status(&base, &rotated, 200, TWO_SECONDS).await?;

    // Admin routes: 403 OpenAI-style for a user key, 401 without one.
    for (method, path) in [
        (reqwest::Method::GET, "/admin/keys"),
        (reqwest::Method::POST, "/admin/keys"),
        (reqwest::Method::DELETE, "/admin/keys/lead"),
        (reqwest::Method::POST, "/admin/keys/lead/rotate"),
    ] {
        let r = http
            .request(method.clone(), format!("{base}{path}"))
            .bearer_auth(&rotated)
            .json(&json!({"name": "x"}))
            .send()
            .await?;
        assert_eq!(r.status(), 403, "{method} {path}");
        let body: Value = r.json().await?;
        assert_eq!(body["error"]["code"], "insufficient_permissions");
        let r = http.request(method, format!("{base}{path}")).send().await?;
        assert_eq!(r.status(), 401);
    }
    // An admin creates a key over HTTP; it works, and is revoked over HTTP.
    let r = http
        .post(format!("{base}/admin/keys"))
        .bearer_auth(&admin)
        .json(&json!({"name": "webui", "rpm": 600, "expires": "30d"}))
        .send()
        .await?;
    assert_eq!(r.status(), 201);
    let made: Value = r.json().await?;
    let webui = made["key"]
        .as_str()
        .ok_or("no key in the answer")?
        .to_string();
    assert_eq!(made["rpm"], 600);
    wait_for_status(&base, &webui, 200, TWO_SECONDS).await?;
    let r = http
        .post(format!("{base}/admin/keys"))
        .bearer_auth(&admin)
        .json(&json!({"name": "webui"}))
        .send()
        .await?;
    assert_eq!(r.status(), 409);
    let r = http
        .post(format!("{base}/admin/keys"))
        .bearer_auth(&admin)
        .json(&json!({"name": "x", "rpm": 0}))
        .send()
        .await?;
    assert_eq!(r.status(), 400);
    let listed: Value = http
        .get(format!("{base}/admin/keys"))
        .bearer_auth(&admin)
        .send()
        .await?
        .json()
        .await?;
    let names: Vec<&str> = listed["data"]
        .as_array()
        .ok_or("no data")?
        .iter()
        .filter_map(|k| k["name"].as_str())
        .collect();
    assert_eq!(names, ["alice", "bob", "brief", "lead", "webui"]);
    let r = http
        .delete(format!("{base}/admin/keys/webui"))
        .bearer_auth(&admin)
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    wait_for_status(&base, &webui, 401, TWO_SECONDS).await?;
    let r = http
        .delete(format!("{base}/admin/keys/nobody"))
        .bearer_auth(&admin)
        .send()
        .await?;
    assert_eq!(r.status(), 404);

    // No secret anywhere: key file, listing, log, metrics, /cluster.
    let secrets = [&alice, &admin, &bob, &brief, &rotated, &webui];
    let listing = herd_keys(&state, &["list"])?;
    let listing_json = herd_keys(&state, &["list", "--json"])?;
    assert!(listing.contains("sk-herd-"), "{listing}");
    assert!(listing.contains("revoked"), "{listing}");
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let cluster = http
        .get(format!("{base}/cluster"))
        .bearer_auth(&admin)
        .send()
        .await?
        .text()
        .await?;
    let mut disk = String::new();
    for entry in std::fs::read_dir(&state)? {
        disk.push_str(&String::from_utf8_lossy(&std::fs::read(entry?.path())?));
    }
    for text in [
        &disk,
        &listing,
        &listing_json,
        &metrics,
        &cluster,
        &server.log_text(),
    ] {
        for s in secrets {
            assert!(!text.contains(s.as_str()), "a secret leaked");
            assert!(!text.contains(&s[12..]), "most of a secret leaked");
        }
        assert!(!text.contains("sk-legacy-0123456789abcdef"));
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(state.join("keys.json"))?
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    Ok(())
}

#[tokio::test]
async fn model_allow_list_hides_other_models() -> TestResult {
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");
    let only_other = create_key(&state, "narrow", &["--models", "some-other-model"])?;
    let allowed = create_key(&state, "wide", &["--models", &format!("x,{MODEL_ID}")])?;
    let server = Server::start(&["--state-dir", state.to_str().ok_or("path")?])?;
    let http = reqwest::Client::new();
    let ids = |v: Value| -> Vec<String> {
        v["data"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|m| m["id"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let list = |key: String| {
        let http = http.clone();
        let url = server.v1();
        async move {
            let v: Value = http
                .get(format!("{url}/models"))
                .bearer_auth(key)
                .send()
                .await?
                .json()
                .await?;
            Ok::<_, reqwest::Error>(v)
        }
    };
    assert!(ids(list(only_other.clone()).await?).is_empty());
    assert_eq!(ids(list(allowed.clone()).await?), [MODEL_ID]);
    let one = http
        .get(format!("{}/models/{MODEL_ID}", server.v1()))
        .bearer_auth(&only_other)
        .send()
        .await?;
    assert_eq!(one.status(), 404);
    let body = json!({"model": MODEL_ID, "max_tokens": 2, "stream": true,
        "messages": [{"role": "user", "content": "Hi"}]});
    for path in ["chat/completions", "completions"] {
        let mut b = body.clone();
        if path == "completions" {
            b = json!({"model": MODEL_ID, "max_tokens": 2, "prompt": "Hi"});
        }
        let r = http
            .post(format!("{}/{path}", server.v1()))
            .bearer_auth(&only_other)
            .json(&b)
            .send()
            .await?;
        assert_eq!(r.status(), 404, "{path}");
        let e: Value = r.json().await?;
        assert_eq!(e["error"]["code"], "model_not_found");
        assert_eq!(
            e["error"]["message"],
            format!("the model `{MODEL_ID}` does not exist")
        );
        let r = http
            .post(format!("{}/{path}", server.v1()))
            .bearer_auth(&allowed)
            .json(&b)
            .send()
            .await?;
        assert_eq!(r.status(), 200, "{path}");
    }
    Ok(())
}
