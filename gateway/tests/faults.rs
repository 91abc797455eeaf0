//! Faults around the engine and the disk: each ends in a clear error within
//! seconds, never a hang, and the gateway keeps serving what it can (the other
//! model, /v1/models, /health). A SIGKILLed or SIGSTOPped engine host *during*
//! a generation is covered in resilience.rs; here: a host stopped while idle,
//! one model's host killed beside another model, an unreadable model file, a
//! truncated GGUF, a full state dir and a full temp dir.

mod common;

use common::{children, model_path, signal, Server, TestResult};
use futures::StreamExt;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// POSTs a 4-token chat; returns (status, body, time taken).
async fn chat(server: &Server, model: &str) -> Result<(u16, Value, Duration), reqwest::Error> {
    let started = Instant::now();
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.url))
        .json(&json!({"model": model, "max_tokens": 4,
            "messages": [{"role": "user", "content": "hi"}]}))
        .timeout(Duration::from_secs(90))
        .send()
        .await?;
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(Value::Null);
    Ok((status, body, started.elapsed()))
}

fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or("")
}

/// A config serving each (id, file) with one slot and a short progress timeout.
fn config(dir: &Path, models: &[(&str, &Path)]) -> Result<String, std::io::Error> {
    let mut text = String::new();
    for (id, path) in models {
        text.push_str(&format!(
            "[[models]]\nid = \"{id}\"\npath = \"{}\"\nslots = 1\nprogress_timeout_secs = 3\n\n",
            path.display()
        ));
    }
    let file = dir.join("herd.toml");
    std::fs::write(&file, text)?;
    Ok(file.to_string_lossy().into_owned())
}

/// The test model under another name (a hard link, else a copy).
fn model_as(dir: &Path, name: &str) -> Result<PathBuf, std::io::Error> {
    let path = dir.join(name);
    if std::fs::hard_link(model_path(), &path).is_err() {
        std::fs::copy(model_path(), &path)?;
    }
    Ok(path)
}

/// The engine host of `server` whose command line names `file`.
fn host_serving(server: &Server, file: &str) -> Result<u32, String> {
    children(server.pid())
        .into_iter()
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(file))
        })
        .ok_or_else(|| format!("no engine host serving {file}"))
}

/// /health's entry for `id`, once `ready(entry)` holds (polled up to `within`).
async fn health_until(
    server: &Server,
    id: &str,
    within: Duration,
    ready: impl Fn(&Value) -> bool,
) -> Result<Value, String> {
    let deadline = Instant::now() + within;
    let mut last = Value::Null;
    while Instant::now() < deadline {
        if let Ok((_, body)) = common::ureq_get(&format!("{}/health", server.url)) {
            let health: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            let models = health["models"].as_array().cloned().unwrap_or_default();
            if let Some(entry) = models.into_iter().find(|m| m["id"] == id) {
                if ready(&entry) {
                    return Ok(entry);
                }
                last = entry;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!(
        "/health never showed what was expected for {id}; last: {last}"
    ))
}

#[tokio::test]
async fn engine_host_stopped_while_idle_is_found_by_the_next_request_and_replaced() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (x, y) = (
        model_as(dir.path(), "x.gguf")?,
        model_as(dir.path(), "y.gguf")?,
    );
    let cfg = config(dir.path(), &[("x", &x), ("y", &y)])?;
    let server = Server::launch(&[], &["--config", &cfg], &[])?;
    server.wait_healthy(Duration::from_secs(60))?;
    let stopped = host_serving(&server, "x.gguf")?;
    // A laptop lid closed on a node, a debugger attached: alive, silent, idle.
    signal(stopped, "-STOP")?;

    let ((y_status, _, y_took), (x_status, x_body, x_took)) =
        tokio::try_join!(chat(&server, "y"), chat(&server, "x"))?;
    assert_eq!(y_status, 200, "the other model must keep serving");
    assert!(y_took < Duration::from_secs(10), "y took {y_took:?}");
    // Found by the progress watchdog (3 s here), not after the 30 s prepare timeout,
    // and reported as what it is.
    assert_eq!(x_status, 503, "{x_body}");
    assert!(message(&x_body).contains("no progress"), "{x_body}");
    assert!(x_took < Duration::from_secs(20), "x took {x_took:?}");

    // The stopped host was killed and replaced: x serves again.
    health_until(&server, "x", Duration::from_secs(30), |m| {
        m["status"] == "ready"
    })
    .await?;
    let (status, body, _) = chat(&server, "x").await?;
    assert_eq!(status, 200, "{body}");
    assert!(!children(server.pid()).contains(&stopped));
    Ok(())
}

#[tokio::test]
async fn killing_one_models_engine_host_leaves_the_other_models_stream_whole() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (x, y) = (
        model_as(dir.path(), "x.gguf")?,
        model_as(dir.path(), "y.gguf")?,
    );
    let cfg = config(dir.path(), &[("x", &x), ("y", &y)])?;
    let server = Server::launch(&[], &["--config", &cfg], &[])?;
    server.wait_healthy(Duration::from_secs(60))?;
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.url))
        .json(
            &json!({"model": "y", "max_tokens": 120, "stream": true, "temperature": 0.8,
            "messages": [{"role": "user", "content": "Write a long story about the ocean."}]}),
        )
        .send()
        .await?;
    let mut body = resp.bytes_stream();
    let mut seen = String::new();
    while seen.matches("data: ").count() < 3 {
        let chunk = body.next().await.ok_or("y's stream ended early")??;
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    signal(host_serving(&server, "x.gguf")?, "-KILL")?;
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(60), body.next()).await? {
        seen.push_str(&String::from_utf8_lossy(&chunk?));
    }
    let events = common::sse_data(&seen);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{seen}");
    assert!(
        !seen.contains("\"error\""),
        "y's stream got x's error: {seen}"
    );
    assert!(seen.contains("\"finish_reason\":\""), "{seen}");
    health_until(&server, "x", Duration::from_secs(30), |m| {
        m["status"] == "ready" && m["restarts"] == 1
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn unreadable_model_is_refused_with_the_reason_and_served_once_readable() -> TestResult {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    let perms = |mode| std::fs::Permissions::from_mode(mode);
    std::fs::set_permissions(dir.path(), perms(0o755))?;
    let good = model_as(dir.path(), "good.gguf")?;
    let locked = dir.path().join("locked.gguf");
    std::fs::copy(model_path(), &locked)?;
    std::fs::set_permissions(&locked, perms(0o000))?;
    let state = dir.path().join("state");
    std::fs::create_dir(&state)?;
    std::fs::set_permissions(&state, perms(0o777))?;
    let cfg = config(dir.path(), &[("good", &good), ("locked", &locked)])?;
    std::fs::set_permissions(&cfg, perms(0o644))?;
    // Root reads any file whatever its mode: run the server as nobody then.
    let as_nobody: &[&str] = &[
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ];
    let is_root = std::fs::metadata("/proc/self").map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid() == 0
    })?;
    let state = state.to_string_lossy().into_owned();
    let home = dir.path().to_string_lossy().into_owned();
    let server = Server::launch(
        if is_root { as_nobody } else { &[] },
        &["--config", &cfg, "--state-dir", &state, "--no-discovery"],
        &[("HOME", &home)],
    )?;

    let entry = health_until(&server, "locked", Duration::from_secs(20), |m| {
        m["error"]
            .as_str()
            .is_some_and(|e| e.contains("Permission denied"))
    })
    .await?;
    assert_eq!(entry["status"], "unavailable", "{entry}");
    let (status, body, took) = chat(&server, "locked").await?;
    assert_eq!(status, 503, "{body}");
    assert!(message(&body).contains("Permission denied"), "{body}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    health_until(&server, "good", Duration::from_secs(60), |m| {
        m["status"] == "ready"
    })
    .await?;
    let (status, body, _) = chat(&server, "good").await?;
    assert_eq!(status, 200, "{body}");

    // Fixed in place: served without a restart.
    std::fs::set_permissions(&locked, perms(0o644))?;
    health_until(&server, "locked", Duration::from_secs(60), |m| {
        m["status"] == "ready"
    })
    .await?;
    let (status, body, _) = chat(&server, "locked").await?;
    assert_eq!(status, 200, "{body}");
    Ok(())
}

#[tokio::test]
async fn truncated_gguf_is_refused_with_the_reason_and_the_rest_is_served() -> TestResult {
    let dir = tempfile::tempdir()?;
    let whole = std::fs::read(model_path())?;
    // Cut in the middle: herd's own header check sees tensors past the end.
    let half = dir.path().join("half.gguf");
    std::fs::write(&half, &whole[..whole.len() / 2])?;
    // Cut inside the last tensor: only llama.cpp's load notices.
    let tail = dir.path().join("tail.gguf");
    std::fs::write(&tail, &whole[..whole.len() - 1000])?;
    drop(whole);
    let good = model_as(dir.path(), "good.gguf")?;
    let cfg = config(
        dir.path(),
        &[("good", &good), ("half", &half), ("tail", &tail)],
    )?;
    let server = Server::launch(&[], &["--config", &cfg], &[])?;

    for (id, reason) in [
        ("half", "past the end of the file"),
        ("tail", "not within the file bounds"),
    ] {
        health_until(&server, id, Duration::from_secs(30), |m| {
            m["error"].as_str().is_some_and(|e| e.contains(reason))
        })
        .await?;
        let (status, body, took) = chat(&server, id).await?;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"]["code"], "engine_unavailable", "{body}");
        assert!(message(&body).contains(reason), "{id}: {body}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }
    health_until(&server, "good", Duration::from_secs(60), |m| {
        m["status"] == "ready"
    })
    .await?;
    let (status, body, _) = chat(&server, "good").await?;
    assert_eq!(status, 200, "{body}");
    Ok(())
}

#[test]
fn a_model_path_that_is_not_a_file_is_named_as_such() -> TestResult {
    let dir = tempfile::tempdir()?;
    let missing = dir.path().join("missing.gguf");
    for (path, expected) in [
        (dir.path().to_path_buf(), "is not a regular file"),
        (missing, "does not exist"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_herd"))
            .arg("serve")
            .arg("--model")
            .arg(&path)
            .args(["--listen", "127.0.0.1:0", "--no-discovery"])
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains(expected), "{}: {stderr}", path.display());
    }
    Ok(())
}

/// Whether this process may mount a tmpfs in a private mount namespace.
fn can_mount() -> bool {
    let dir = std::env::temp_dir();
    std::process::Command::new("unshare")
        .args([
            "-m",
            "sh",
            "-c",
            "mount -t tmpfs -o size=4k tmpfs \"$0\"",
            dir.to_str().unwrap_or("/tmp"),
        ])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test]
async fn full_state_dir_is_a_clear_error_and_leaves_no_broken_id_behind() -> TestResult {
    if !can_mount() {
        eprintln!("skipped: cannot mount a tmpfs in a mount namespace here (needs root or user namespaces)");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let mount = dir.path().to_string_lossy().into_owned();
    let state = format!("{mount}/state");
    // In a private mount namespace: an 8 KiB tmpfs over the dir, filled up.
    // herd runs once on the full disk, then again once a file is deleted.
    let script = "mount -t tmpfs -o size=8k tmpfs \"$0\" && mkdir \"$0/state\" \
        && head -c 1048576 /dev/zero > \"$0/fill\" 2>/dev/null; \
        \"$@\"; echo \"first run exited with $?\" >&2; rm \"$0/fill\"; exec \"$@\"";
    let started = Instant::now();
    let server = Server::launch(
        &["unshare", "-m", "sh", "-c", script, &mount],
        &[
            "--model",
            model_path().to_str().ok_or("model path")?,
            "--state-dir",
            &state,
            "--no-discovery",
        ],
        &[],
    )?;
    server.wait_healthy(Duration::from_secs(60))?;
    let log = server.log_text();
    assert!(
        log.contains("node-id: cannot write: No space left on device"),
        "{log}"
    );
    assert!(log.contains("first run exited with 1"), "{log}");
    assert!(started.elapsed() < Duration::from_secs(60));
    // The second run, with room again, got an id and serves.
    let (status, body, _) = chat(&server, common::MODEL_ID).await?;
    assert_eq!(status, 200, "{body}");
    Ok(())
}

#[tokio::test]
async fn full_temp_dir_makes_the_engine_unavailable_with_the_reason_until_space_returns(
) -> TestResult {
    if !can_mount() {
        eprintln!("skipped: cannot mount a tmpfs in a mount namespace here (needs root or user namespaces)");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let mount = dir.path().to_string_lossy().into_owned();
    let tmp = format!("{mount}/tmp");
    // The engine host's socket lives in a temp dir: a tmpfs whose inodes are all used.
    let script = "mount -t tmpfs -o size=1m,nr_inodes=16 tmpfs \"$0\" && mkdir \"$0/tmp\" \
        && i=0; while touch \"$0/f$i\" 2>/dev/null; do i=$((i+1)); done; exec \"$@\"";
    let server = Server::launch(
        &["unshare", "-m", "sh", "-c", script, &mount],
        &[
            "--model",
            model_path().to_str().ok_or("model path")?,
            "--no-discovery",
        ],
        &[("TMPDIR", &tmp)],
    )?;
    let id = common::MODEL_ID;
    let reason = "No space left on device";
    health_until(&server, id, Duration::from_secs(20), |m| {
        m["error"].as_str().is_some_and(|e| e.contains(reason))
    })
    .await?;
    let (status, body, took) = chat(&server, id).await?;
    assert_eq!(status, 503, "{body}");
    assert!(message(&body).contains(reason), "{body}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let (models, _) = common::ureq_get(&format!("{}/v1/models", server.url))?;
    assert_eq!(models, 200);

    // Room again (seen through the server's own mount namespace): it recovers by itself.
    let inside = PathBuf::from(format!("/proc/{}/root{mount}", server.pid()));
    for entry in std::fs::read_dir(&inside)?.flatten() {
        if entry.file_name().to_string_lossy().starts_with('f') {
            std::fs::remove_file(entry.path())?;
        }
    }
    server.wait_healthy(Duration::from_secs(60))?;
    let (status, body, _) = chat(&server, id).await?;
    assert_eq!(status, 200, "{body}");
    Ok(())
}
