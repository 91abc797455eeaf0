//! The listener's limits, against a real `herd serve`: a half-sent request
//! head and a quiet keep-alive are closed after their timeouts; over the
//! connection cap a newcomer takes the place of the connection that has gone
//! longest without a request in flight, and waits only while every
//! connection has one; a slow non-streaming request gets a 504 in OpenAI's
//! shape while a long stream runs to its end.

mod common;

use common::{Server, TestResult, MODEL_ID};
use serde_json::{json, Value};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn connect(server: &Server) -> Result<TcpStream, std::io::Error> {
    let addr = server.url.trim_start_matches("http://");
    TcpStream::connect(addr)
}

/// Blocks until the server closes `s` (EOF or reset); `None` if it is still open after `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> Result<Option<Duration>, std::io::Error> {
    let started = Instant::now();
    s.set_read_timeout(Some(within))?;
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(Some(started.elapsed())),
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(Some(started.elapsed())),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        }
    }
}

/// Sends `GET /health` on a kept-alive connection and reads one response: its status.
fn get_health(s: &mut TcpStream, within: Duration) -> Result<Option<u16>, std::io::Error> {
    s.write_all(b"GET /health HTTP/1.1\r\nHost: herd\r\n\r\n")?;
    s.set_read_timeout(Some(within))?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&seen).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= length {
                return Ok(head.split_whitespace().nth(1).and_then(|c| c.parse().ok()));
            }
        }
        match s.read(&mut buf) {
            Ok(0) => return Ok(None),
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        }
    }
}

#[test]
fn a_half_sent_request_head_is_closed_after_the_header_timeout() -> TestResult {
    let server = Server::start(&[
        "--header-read-timeout-secs",
        "1",
        "--idle-timeout-secs",
        "60",
    ])?;
    let mut s = connect(&server)?;
    s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: herd\r\nContent-Ty")?;
    let closed = closed_within(&mut s, Duration::from_secs(15))?;
    let after = closed.ok_or("a half-sent request head was still open after 15 s")?;
    assert!(
        after < Duration::from_secs(10),
        "closed only after {after:?}"
    );
    // A connection that sends nothing at all owes a head just the same.
    let mut silent = connect(&server)?;
    assert!(closed_within(&mut silent, Duration::from_secs(15))?.is_some());
    Ok(())
}

#[test]
fn a_quiet_keep_alive_is_closed_after_the_idle_timeout_not_the_header_timeout() -> TestResult {
    let server = Server::start(&[
        "--header-read-timeout-secs",
        "1",
        "--idle-timeout-secs",
        "4",
    ])?;
    let mut s = connect(&server)?;
    assert_eq!(get_health(&mut s, Duration::from_secs(10))?, Some(200));
    let after = closed_within(&mut s, Duration::from_secs(30))?
        .ok_or("an idle keep-alive connection was still open after 30 s")?;
    // Timers never fire early: at least the idle timeout, so the header timeout did not close it.
    assert!(
        after >= Duration::from_millis(3500),
        "closed after {after:?}, before the idle timeout"
    );
    assert!(
        after < Duration::from_secs(20),
        "closed only after {after:?}"
    );
    Ok(())
}

#[test]
fn over_the_cap_the_connection_waiting_longest_makes_room() -> TestResult {
    // Timeouts far longer than the test: only making room can serve the newcomers.
    let server = Server::start(&[
        "--max-connections",
        "3",
        "--header-read-timeout-secs",
        "300",
        "--idle-timeout-secs",
        "300",
    ])?;
    // Three half-sent heads (slowloris) take every place, oldest first.
    let mut slow = Vec::new();
    for _ in 0..3 {
        let mut s = connect(&server)?;
        s.write_all(b"GET /health HTTP/1.1\r\nHo")?;
        slow.push(s);
        std::thread::sleep(Duration::from_millis(50));
    }
    // A client that sends its request at once is served (before: only once a
    // place freed, after the 300 s header timeout).
    let started = Instant::now();
    let mut good = connect(&server)?;
    assert_eq!(get_health(&mut good, Duration::from_secs(20))?, Some(200));
    eprintln!("served over the cap after {:?}", started.elapsed());
    // The oldest half-sent head made room; the other two still hold theirs.
    assert!(closed_within(&mut slow[0], Duration::from_secs(5))?.is_some());
    for s in &mut slow[1..] {
        assert_eq!(closed_within(s, Duration::from_millis(300))?, None);
    }
    // Next comes the next oldest: a half-sent head that waited longer than
    // `good`, which is idle since its answer.
    let mut next = connect(&server)?;
    assert_eq!(get_health(&mut next, Duration::from_secs(20))?, Some(200));
    assert!(closed_within(&mut slow[1], Duration::from_secs(5))?.is_some());
    assert_eq!(
        closed_within(&mut slow[2], Duration::from_millis(300))?,
        None
    );
    let mut third = connect(&server)?;
    assert_eq!(get_health(&mut third, Duration::from_secs(20))?, Some(200));
    assert!(closed_within(&mut slow[2], Duration::from_secs(5))?.is_some());
    // Then kept-alive connections, the longest idle first: `good`.
    let mut fourth = connect(&server)?;
    assert_eq!(get_health(&mut fourth, Duration::from_secs(20))?, Some(200));
    assert!(closed_within(&mut good, Duration::from_secs(5))?.is_some());
    assert_eq!(closed_within(&mut next, Duration::from_millis(300))?, None);
    Ok(())
}

/// Sends a streamed completion that runs for a long time and reads until its first event.
fn start_stream(server: &Server) -> Result<TcpStream, Box<dyn std::error::Error + Send + Sync>> {
    let mut s = connect(server)?;
    let body = json!({"model": MODEL_ID, "prompt": "1, 2, 3, 4, 5, 6, 7, 8,", "max_tokens": 3000,
        "temperature": 0, "stream": true})
    .to_string();
    write!(
        s,
        "POST /v1/completions HTTP/1.1\r\nHost: herd\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("data:") {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err("the stream ended before its first event".into());
        }
        seen.extend_from_slice(&buf[..n]);
    }
    Ok(s)
}

#[test]
fn connections_over_the_cap_wait_while_every_one_has_a_request_in_flight() -> TestResult {
    let server = Server::start(&[
        "--max-connections",
        "2",
        "--slots",
        "2",
        "--idle-timeout-secs",
        "300",
    ])?;
    // Two streams in flight take every place; a busy connection is never closed to make room.
    let mut first = start_stream(&server)?;
    let _second = start_stream(&server)?;
    // A third connects (the kernel's backlog takes it) but is not served yet.
    let mut third = connect(&server)?;
    assert_eq!(
        get_health(&mut third, Duration::from_millis(1500))?,
        None,
        "served over the cap"
    );
    // The streams are still going.
    let mut buf = [0u8; 4096];
    first.set_read_timeout(Some(Duration::from_secs(10)))?;
    assert!(first.read(&mut buf)? > 0, "a busy connection was closed");
    // One ends (its client hangs up): the third is served, its request already sent.
    drop(first);
    let mut rest = Vec::new();
    third.set_read_timeout(Some(Duration::from_secs(20)))?;
    while !String::from_utf8_lossy(&rest).contains("\r\n\r\n") {
        let n = third.read(&mut buf)?;
        if n == 0 {
            return Err("the waiting connection was closed, not served".into());
        }
        rest.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&rest).starts_with("HTTP/1.1 200"));
    Ok(())
}

#[tokio::test]
async fn a_slow_non_stream_request_gets_504_and_a_long_stream_is_not_cut() -> TestResult {
    let server = Server::start(&["--request-timeout-secs", "2", "--slots", "2"])?;
    let client = reqwest::Client::new();
    let body = |stream: bool| {
        json!({"model": MODEL_ID, "stream": stream, "max_tokens": 3000, "temperature": 0.8, "seed": 7,
            "messages": [{"role": "user", "content": "Write a very long story about the ocean, in many chapters."}]})
    };
    let started = Instant::now();
    let resp = client
        .post(format!("{}/v1/chat/completions", server.url))
        .json(&body(false))
        .send()
        .await?;
    let waited = started.elapsed();
    assert_eq!(resp.status().as_u16(), 504);
    let error: Value = resp.json().await?;
    assert_eq!(error["error"]["code"], "request_timeout", "{error}");
    assert_eq!(error["error"]["type"], "server_error", "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("stream")),
        "{error}"
    );
    assert!(
        waited < Duration::from_secs(15),
        "504 only after {waited:?}"
    );

    let started = Instant::now();
    let text = client
        .post(format!("{}/v1/chat/completions", server.url))
        .json(&body(true))
        .send()
        .await?
        .text()
        .await?;
    let took = started.elapsed();
    let events = common::sse_data(&text);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{text}");
    assert!(!text.contains("\"error\""), "{text}");
    assert!(
        took > Duration::from_secs(3),
        "the stream took only {took:?}: too short to show it outlives the 2 s request timeout"
    );
    Ok(())
}
