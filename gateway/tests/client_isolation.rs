//! One client cannot hurt the others through the engine path: huge prompts do
//! not stall other requests, nor do many streams' prompts being decoded, a stream nobody reads is cut off with its own
//! error (not a crash) while the other streams go on, and a non-streaming
//! client that hangs up frees its slot.

mod common;

use common::{Server, TestResult, MODEL_ID};
use futures::StreamExt;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Greedy counting: SmolLM2 keeps going for thousands of tokens without an end token.
const COUNTING: &str = "1, 2, 3, 4, 5, 6, 7, 8,";

/// Time from sending a small streamed completion to its first generated text.
async fn small_ttft(server: &Server) -> Result<Duration, BoxError> {
    let started = Instant::now();
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/completions", server.url))
        .json(&json!({"model": MODEL_ID, "prompt": "Hello", "max_tokens": 2, "stream": true, "temperature": 0}))
        .send()
        .await?;
    if resp.status() != 200 {
        return Err(format!("small request: {} {}", resp.status(), resp.text().await?).into());
    }
    let mut body = resp.bytes_stream();
    let mut ttft = None;
    let mut seen = String::new();
    while let Some(chunk) = body.next().await {
        seen.push_str(&String::from_utf8_lossy(&chunk?));
        if ttft.is_none() && seen.contains("\"text\"") {
            ttft = Some(started.elapsed());
        }
    }
    let events = common::sse_data(&seen);
    if events.last().map(String::as_str) != Some("[DONE]") || seen.contains("\"error\"") {
        return Err(format!("small request did not finish cleanly: {seen}").into());
    }
    ttft.ok_or_else(|| format!("no text in {seen}").into())
}

#[tokio::test]
async fn huge_prompts_do_not_stall_a_small_request() -> TestResult {
    let server = Server::start(&["--slots", "2"])?;
    let idle = small_ttft(&server).await?;
    // ~4 MiB of ordinary text, under the default 4 MiB body limit.
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(4_000_000 / 45);
    let body = json!({"model": MODEL_ID, "messages": [{"role": "user", "content": text}], "max_tokens": 2})
        .to_string();
    let started = Instant::now();
    let big: Vec<_> = (0..6)
        .map(|_| {
            let (url, body) = (format!("{}/v1/chat/completions", server.url), body.clone());
            tokio::spawn(async move {
                let resp = reqwest::Client::new()
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await?;
                let status = resp.status().as_u16();
                let v: Value = resp.json().await?;
                Ok::<_, BoxError>((status, v, started.elapsed()))
            })
        })
        .collect();
    // Small requests while the big ones are in flight (at least one, even if they are refused at once).
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut loaded = vec![small_ttft(&server).await?];
    while !big.iter().all(|t| t.is_finished()) && loaded.len() < 20 {
        loaded.push(small_ttft(&server).await?);
    }
    let mut refused_after = Vec::new();
    for task in big {
        let (status, v, at) = task.await??;
        assert_eq!(status, 400, "{v}");
        assert_eq!(v["error"]["code"], "context_length_exceeded", "{v}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        refused_after.push(at);
    }
    let worst = loaded.iter().max().copied().unwrap_or_default();
    eprintln!(
        "small request TTFT: idle {idle:?}; with six 4 MiB prompts in flight {loaded:?} (worst {worst:?}); big prompts refused after {refused_after:?}"
    );
    assert!(
        worst < Duration::from_secs(2),
        "a small request waited {worst:?} behind huge prompts"
    );
    Ok(())
}

/// Sends a streamed completion and returns its time to first text (the
/// stream is then read to its end in the background, so it keeps its slot).
async fn stream_ttft(url: String, prompt: String) -> Result<Duration, BoxError> {
    let started = Instant::now();
    let resp = reqwest::Client::new()
        .post(format!("{url}/v1/completions"))
        .json(&json!({"model": MODEL_ID, "prompt": prompt, "max_tokens": 200, "stream": true, "temperature": 0}))
        .send()
        .await?;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        if String::from_utf8_lossy(&chunk?).contains("\"text\"") {
            let ttft = started.elapsed();
            tokio::spawn(async move { while body.next().await.is_some() {} });
            return Ok(ttft);
        }
    }
    Err("a stream ended without text".into())
}

#[tokio::test]
async fn a_small_request_is_not_held_behind_many_streams_prompts() -> TestResult {
    // Sixteen streams arrive at once, each with a prompt of ~150 tokens: a few
    // seconds of prefill on one thread, then sixteen sequences decoding.
    let streams = 16;
    let server = Server::start(&["--slots", "17", "--ctx-size", "512"])?;
    let idle = small_ttft(&server).await?;
    let loaded: Vec<_> = (0..streams)
        .map(|i| {
            let prompt = format!("Stream {i}. {}", COUNTING.repeat(6));
            tokio::spawn(stream_ttft(server.url.clone(), prompt))
        })
        .collect();
    wait_health(&server, Duration::from_secs(30), |h| {
        h["slots_busy"] == streams
    })
    .await?;
    // A small request while their prompts are being decoded: before, it waited
    // for a 512-token step, then shared the next one with them (seconds on
    // one thread); now its prompt gets the next short step to itself.
    let small = small_ttft(&server).await?;
    let mut stream_ttfts = Vec::new();
    for task in loaded {
        stream_ttfts.push(task.await??);
    }
    stream_ttfts.sort();
    let median = stream_ttfts[stream_ttfts.len() / 2];
    eprintln!(
        "small request TTFT: idle {idle:?}, among {streams} new streams {small:?}; the streams' TTFT: median {median:?}, last {:?}",
        stream_ttfts.last()
    );
    // Relative to the streams' own prefill, which scales with the machine's speed and load alike.
    assert!(
        small * 4 < median,
        "a small request waited {small:?}, the streams' median TTFT was {median:?}"
    );
    Ok(())
}

/// A client socket that can hold little unread data: a 4 KiB receive buffer
/// and a 536-byte MSS, from which Linux sizes the server's send buffer
/// (~130 KiB instead of ~4 MiB). Otherwise the kernel alone would absorb more
/// events than the model's context allows before the server notices anything.
#[cfg(target_os = "linux")]
fn tight_client(url: &str) -> Result<TcpStream, BoxError> {
    use std::os::fd::FromRawFd;
    let addr: std::net::SocketAddrV4 = url.trim_start_matches("http://").parse()?;
    let set = |fd: i32, level: i32, name: i32, value: i32| -> std::io::Result<()> {
        let size = std::mem::size_of::<i32>() as libc::socklen_t;
        // SAFETY: a valid socket and a pointer to an i32 of the size given.
        let rc = unsafe { libc::setsockopt(fd, level, name, (&raw const value).cast(), size) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: plain socket creation; the fd is owned by `stream` from here on.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: `fd` is a fresh socket that nothing else owns.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    set(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, 4096)?;
    set(fd, libc::IPPROTO_TCP, libc::TCP_MAXSEG, 536)?;
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: `sa` is a valid sockaddr_in of the length given.
    if unsafe { libc::connect(fd, (&raw const sa).cast(), len) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(stream)
}

/// Writes one HTTP/1.1 POST with a JSON body; the server closes after answering.
fn post(stream: &mut TcpStream, path: &str, body: &Value) -> std::io::Result<()> {
    let body = body.to_string();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: herd\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

async fn health(server: &Server) -> Result<Value, BoxError> {
    let (_, body) = common::ureq_get(&format!("{}/health", server.url))?;
    Ok(serde_json::from_str::<Value>(&body)?["models"][0].clone())
}

/// Polls `/health` until `ok` holds for this node's model.
async fn wait_health(
    server: &Server,
    timeout: Duration,
    ok: impl Fn(&Value) -> bool,
) -> Result<Value, BoxError> {
    let deadline = Instant::now() + timeout;
    loop {
        let h = health(server).await?;
        if ok(&h) {
            return Ok(h);
        }
        if Instant::now() > deadline {
            return Err(format!("health never got there: {h}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_stream_nobody_reads_is_cut_off_alone() -> TestResult {
    let server = Server::start(&["--slots", "2"])?;
    let mut slow = tight_client(&server.url)?;
    post(
        &mut slow,
        "/v1/completions",
        &json!({"model": MODEL_ID, "prompt": COUNTING, "max_tokens": 4000, "temperature": 0, "stream": true}),
    )?;
    wait_health(&server, Duration::from_secs(10), |h| h["slots_busy"] == 1).await?;

    // Another stream meanwhile runs to its normal end.
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.url))
        .json(&json!({"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16, "stream": true}))
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 200);
    let other = resp.text().await?;
    let events = common::sse_data(&other);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{other}");
    assert!(!other.contains("\"error\""), "{other}");
    assert!(
        other.contains("finish_reason\":\"length\"") || other.contains("finish_reason\":\"stop\"")
    );

    // The unread stream falls behind until the engine drops it (its slot frees
    // although the client still has not read a byte).
    let started = Instant::now();
    let h = wait_health(&server, Duration::from_secs(300), |h| h["slots_busy"] == 0).await?;
    eprintln!(
        "the unread stream was dropped after {:?}",
        started.elapsed()
    );
    assert_eq!(h["restarts"], 0, "{h}");
    assert_eq!(
        h["free_slots"], 2,
        "the slow client still holds its slot: {h}"
    );
    let (_, scrape) = common::ureq_get(&format!("{}/metrics", server.url))?;
    let series = format!("herd_slow_client_disconnects_total{{model=\"{MODEL_ID}\"}}");
    assert_eq!(metric(&scrape, &series), Some(1.0), "{series} in\n{scrape}");
    assert_eq!(
        metric(
            &scrape,
            &format!("herd_engine_restarts_total{{model=\"{MODEL_ID}\"}}")
        ),
        Some(0.0)
    );

    // Reading it now: what was buffered, then the reason, then [DONE].
    slow.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut raw = Vec::new();
    slow.read_to_end(&mut raw)?;
    let raw = String::from_utf8_lossy(&raw);
    let events = common::sse_data(&raw);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let error: Value = serde_json::from_str(&events[events.len() - 2])?;
    assert_eq!(error["error"]["code"], "client_too_slow", "{error}");
    let message = error["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("behind"), "{message}");
    assert!(!raw.contains("engine_crashed"));
    Ok(())
}

#[tokio::test]
async fn a_non_streaming_client_that_hangs_up_frees_its_slot() -> TestResult {
    // One slot and a short queue wait: a leaked slot turns the next request into a 429.
    let server = Server::start(&["--slots", "1", "--max-queue-wait-ms", "3000"])?;
    let mut client = TcpStream::connect(server.url.trim_start_matches("http://"))?;
    post(
        &mut client,
        "/v1/completions",
        &json!({"model": MODEL_ID, "prompt": COUNTING, "max_tokens": 4000, "temperature": 0}),
    )?;
    wait_health(&server, Duration::from_secs(10), |h| h["free_slots"] == 0).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(client); // hang up mid-generation

    let started = Instant::now();
    let ok = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.url))
        .json(&json!({"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}))
        .send()
        .await?;
    let took = started.elapsed();
    assert_eq!(ok.status().as_u16(), 200, "{}", ok.text().await?);
    eprintln!("the next request was answered after {took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    // The engine's own count (`slots_busy`) arrives with its periodic stats, a moment after the permit.
    wait_health(&server, Duration::from_secs(5), |h| {
        h["free_slots"] == 1 && h["slots_busy"] == 0
    })
    .await?;
    Ok(())
}
