//! The tunnel end to end over real TCP on 127.0.0.1: data integrity and
//! latency, refusals (garbage, wrong secret, wrong cluster, wrong node,
//! replays) that must never reach the target, limits, and teardown.

use herd_cluster::tunnel::{
    connect, forward, serve_with_limits, Limits, Resolver, TunnelError, TunnelKeys,
};
use herd_cluster::{Credentials, NodeId, Secret};
use rand::Rng;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

const SECRET: &str = "test-secret-0123456789abcdef";
const CLUSTER: &str = "herd-test";

fn creds(secret: &str, cluster: &str) -> Credentials {
    match Secret::from_text(secret, "test") {
        Ok(s) => Credentials::new(s, cluster),
        Err(e) => unreachable!("{e}"),
    }
}

fn keys(secret: &str, cluster: &str) -> TunnelKeys {
    TunnelKeys::new(&creds(secret, cluster))
}

fn id(s: &str) -> NodeId {
    NodeId(s.to_string())
}

/// Aborts the task when dropped, like a node going away.
struct Task(JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn listen() -> Result<(TcpListener, SocketAddr), std::io::Error> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    Ok((l, addr))
}

/// An echo server that counts its connections and the bytes it receives.
struct Target {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    bytes: Arc<AtomicUsize>,
    _task: Task,
}

impl Target {
    /// (connections accepted, bytes received) so far.
    fn seen(&self) -> (usize, usize) {
        let load = |n: &AtomicUsize| n.load(Ordering::SeqCst);
        (load(&self.connections), load(&self.bytes))
    }
}

/// The variant's name, so a test can say which error it expects in one line.
fn kind<T>(r: &Result<T, TunnelError>) -> &'static str {
    match r {
        Ok(_) => "Ok",
        Err(TunnelError::Invalid { .. }) => "Invalid",
        Err(TunnelError::Unreachable { .. }) => "Unreachable",
        Err(TunnelError::Refused { .. }) => "Refused",
        Err(TunnelError::HandshakeFailed { .. }) => "HandshakeFailed",
        Err(TunnelError::Timeout { .. }) => "Timeout",
        Err(TunnelError::UnknownService { .. }) => "UnknownService",
        Err(TunnelError::TargetRefused { .. }) => "TargetRefused",
        Err(TunnelError::Busy { .. }) => "Busy",
        Err(TunnelError::Noise(_)) => "Noise",
        Err(TunnelError::Io(_)) => "Io",
    }
}

async fn echo_target() -> Result<Target, std::io::Error> {
    let (l, addr) = listen().await?;
    let connections = Arc::new(AtomicUsize::new(0));
    let bytes = Arc::new(AtomicUsize::new(0));
    let (c, b) = (connections.clone(), bytes.clone());
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let b = b.clone();
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let mut buf = vec![0u8; 65536];
                while let Ok(n @ 1..) = s.read(&mut buf).await {
                    b.fetch_add(n, Ordering::SeqCst);
                    if s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(Target {
        addr,
        connections,
        bytes,
        _task: Task(task),
    })
}

fn resolver(services: &[(&str, SocketAddr)]) -> Resolver {
    let map: HashMap<String, SocketAddr> =
        services.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    Arc::new(move |name: &str| {
        let found = map.get(name).copied();
        Box::pin(async move { found })
    })
}

/// A node `me` serving tunnels to `services`; returns its tunnel address.
async fn node(
    me: &str,
    services: &[(&str, SocketAddr)],
) -> Result<(SocketAddr, Task), std::io::Error> {
    node_with(me, services, Limits::default()).await
}

async fn node_with(
    me: &str,
    services: &[(&str, SocketAddr)],
    limits: Limits,
) -> Result<(SocketAddr, Task), std::io::Error> {
    let (l, addr) = listen().await?;
    let task = tokio::spawn(serve_with_limits(
        l,
        keys(SECRET, CLUSTER),
        id(me),
        resolver(services),
        limits,
    ));
    Ok((addr, Task(task)))
}

async fn forwarder(
    tunnel: SocketAddr,
    dest: &str,
    service: &str,
) -> Result<(SocketAddr, Task), std::io::Error> {
    let (l, addr) = listen().await?;
    let task = tokio::spawn(forward(
        l,
        tunnel,
        keys(SECRET, CLUSTER),
        id("node-a"),
        id(dest),
        service.to_string(),
    ));
    Ok((addr, Task(task)))
}

/// Everything the peer sends until it closes (a reset counts as closing).
async fn read_to_close(s: &mut TcpStream) -> Result<Vec<u8>, tokio::time::error::Elapsed> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await? {
            Ok(0) | Err(_) => return Ok(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

async fn mean_round_trip(addr: SocketAddr, rounds: u32) -> Result<Duration, std::io::Error> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let msg = [7u8; 64];
    let mut back = [0u8; 64];
    let start = Instant::now();
    for _ in 0..rounds {
        s.write_all(&msg).await?;
        s.read_exact(&mut back).await?;
    }
    Ok(start.elapsed() / rounds)
}

#[tokio::test]
async fn forward_carries_a_mebibyte_and_small_round_trips() -> TestResult {
    let target = echo_target().await?;
    let (tunnel_addr, _b) = node("node-b", &[("rpc/echo", target.addr)]).await?;
    let (local, _fwd) = forwarder(tunnel_addr, "node-b", "rpc/echo").await?;

    let mut rng = rand::rng();
    let mut data = vec![0u8; 1 << 20];
    rng.fill(&mut data[..]);
    let mut sizes = Vec::new();
    let mut left = data.len();
    while left > 0 {
        let n = rng.random_range(1..=100_000).min(left);
        sizes.push(n);
        left -= n;
    }
    let (mut r, mut w) = TcpStream::connect(local).await?.into_split();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        let mut at = 0;
        for n in sizes {
            w.write_all(&sent[at..at + n]).await?;
            at += n;
        }
        Ok::<_, std::io::Error>(w)
    });
    let mut back = vec![0u8; data.len()];
    tokio::time::timeout(Duration::from_secs(30), r.read_exact(&mut back)).await??;
    let _w = writer.await??;
    assert!(
        back == data,
        "the echoed mebibyte differs from what was sent"
    );

    let direct = mean_round_trip(target.addr, 1000).await?;
    let tunnelled = mean_round_trip(local, 1000).await?;
    println!("mean 64-byte round trip: direct {direct:?}, through the tunnel {tunnelled:?}");
    Ok(())
}

#[tokio::test]
async fn splice_carries_any_stream_and_reports_unknown_or_dead_services() -> TestResult {
    let target = echo_target().await?;
    let dead = listen().await?.1; // its listener is dropped: nothing accepts there
    let services = [("rpc/echo", target.addr), ("rpc/dead", dead)];
    let (addr, _b) = node("node-b", &services).await?;
    let k = keys(SECRET, CLUSTER);
    let (a, b) = (id("node-a"), id("node-b"));

    let tunnel = connect(addr, &k, &a, &b, "rpc/echo").await?;
    let (mut mine, theirs) = tokio::io::duplex(1024);
    let splice = tokio::spawn(tunnel.splice(theirs));
    mine.write_all(b"hello through a duplex").await?;
    let mut back = [0u8; 22];
    mine.read_exact(&mut back).await?;
    assert_eq!(&back, b"hello through a duplex");
    drop(mine);
    tokio::time::timeout(Duration::from_secs(3), splice).await???;

    let err = connect(addr, &k, &a, &b, "rpc/nope").await;
    assert_eq!(kind(&err), "UnknownService", "{err:?}");
    let err = connect(addr, &k, &a, &b, "rpc/dead").await;
    assert_eq!(kind(&err), "TargetRefused", "{err:?}");
    let err = connect(addr, &k, &a, &b, "rpc echo").await;
    assert_eq!(kind(&err), "Invalid", "{err:?}");
    let err = connect(addr, &k, &id(&"a".repeat(65)), &b, "rpc/echo").await;
    assert_eq!(kind(&err), "Invalid", "{err:?}");
    Ok(())
}

/// The NNpsk0 first message a holder of `secret` would send, after `preamble`.
fn msg1(preamble: &[u8], secret: &str, cluster: &str) -> Result<Vec<u8>, snow::Error> {
    let psk = creds(secret, cluster).derive_key("herd-tunnel-psk-v1");
    let prologue = [preamble, cluster.as_bytes()].concat();
    let mut hs = snow::Builder::new("Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s".parse()?)
        .psk(0, &psk)
        .prologue(&prologue)
        .build_initiator()?;
    let mut msg = [0u8; 128];
    let n = hs.write_message(&[], &mut msg)?;
    Ok([&(n as u16).to_be_bytes()[..], &msg[..n]].concat())
}

fn preamble(dest: &str, from: &str) -> Vec<u8> {
    let mut p = b"HERDTUN1".to_vec();
    for id in [dest, from] {
        p.push(id.len() as u8);
        p.extend_from_slice(id.as_bytes());
    }
    p
}

#[tokio::test]
async fn raw_clients_without_the_secret_get_nothing() -> TestResult {
    let target = echo_target().await?;
    let limits = Limits {
        handshake_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let (addr, _b) = node_with("node-b", &[("rpc/target", target.addr)], limits).await?;

    let p = preamble("node-b", "mallory");
    let wrong_secret = [p.clone(), msg1(&p, "not-the-secret-0123456789", CLUSTER)?].concat();
    let wrong_cluster = [p.clone(), msg1(&p, SECRET, "other-cluster")?].concat();
    let attempts: [(&str, Vec<u8>); 5] = [
        ("garbage", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("preamble only", p.clone()),
        ("wrong secret", wrong_secret),
        ("wrong cluster", wrong_cluster),
        ("nothing", Vec::new()),
    ];
    for (what, bytes) in attempts {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(&bytes).await?;
        let started = Instant::now();
        let got = read_to_close(&mut s).await?;
        assert!(got.is_empty(), "{what}: got {} bytes back", got.len());
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{what}: not closed in time"
        );
    }
    assert_eq!(target.seen(), (0, 0), "the target was reached");
    Ok(())
}

#[tokio::test]
async fn connect_needs_the_secret_the_cluster_and_the_right_node() -> TestResult {
    let target = echo_target().await?;
    let (addr_b, _b) = node("node-b", &[("rpc/target", target.addr)]).await?;
    let target_c = echo_target().await?;
    let (addr_c, _c) = node("node-c", &[("rpc/target", target_c.addr)]).await?;
    let (a, b) = (id("node-a"), id("node-b"));
    let wrong_secret = keys("not-the-secret-0123456789", CLUSTER);
    let wrong_cluster = keys(SECRET, "other-cluster");
    for (k, addr) in [
        (&wrong_secret, addr_b),
        (&wrong_cluster, addr_b),
        (&keys(SECRET, CLUSTER), addr_c),
    ] {
        // The last one dials C's port but names B.
        let err = connect(addr, k, &a, &b, "rpc/target").await;
        assert_eq!(kind(&err), "Refused", "{err:?}");
    }
    assert_eq!(target.seen(), (0, 0), "node B's target was reached");
    assert_eq!(target_c.seen(), (0, 0), "node C's target was reached");
    Ok(())
}

/// A proxy for one connection that records what the client sends.
async fn recording_proxy(
    upstream: SocketAddr,
) -> Result<(SocketAddr, JoinHandle<Vec<u8>>), std::io::Error> {
    let (l, addr) = listen().await?;
    let task = tokio::spawn(async move {
        let mut sent = Vec::new();
        let Ok((client, _)) = l.accept().await else {
            return sent;
        };
        let Ok(server) = TcpStream::connect(upstream).await else {
            return sent;
        };
        let (mut cr, mut cw) = client.into_split();
        let (mut sr, mut sw) = server.into_split();
        let down = tokio::spawn(async move { tokio::io::copy(&mut sr, &mut cw).await });
        let mut buf = [0u8; 65536];
        while let Ok(n @ 1..) = cr.read(&mut buf).await {
            sent.extend_from_slice(&buf[..n]);
            if sw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        drop(sw);
        let _ = down.await;
        sent
    });
    Ok((addr, task))
}

#[tokio::test]
async fn replayed_sessions_never_reach_a_target() -> TestResult {
    let target_b = echo_target().await?;
    let target_c = echo_target().await?;
    let (addr_b, _b) = node("node-b", &[("rpc/target", target_b.addr)]).await?;
    let (addr_c, _c) = node("node-c", &[("rpc/target", target_c.addr)]).await?;

    let (proxy, recorded) = recording_proxy(addr_b).await?;
    let tunnel = connect(
        proxy,
        &keys(SECRET, CLUSTER),
        &id("node-a"),
        &id("node-b"),
        "rpc/target",
    )
    .await?;
    let (mut mine, theirs) = tokio::io::duplex(1024);
    let splice = tokio::spawn(tunnel.splice(theirs));
    mine.write_all(b"secret layer activations").await?;
    let mut back = [0u8; 24];
    mine.read_exact(&mut back).await?;
    drop(mine);
    let _ = splice.await?;
    let recorded = tokio::time::timeout(Duration::from_secs(3), recorded).await??;
    assert_eq!(target_b.seen(), (1, 24), "the genuine session");

    let p = preamble("node-b", "node-a");
    assert!(recorded.starts_with(&p), "recorded a tunnel session");
    let to_c = [preamble("node-c", "node-a"), recorded[p.len()..].to_vec()].concat();
    for (what, addr, bytes) in [
        ("to B", addr_b, &recorded),
        ("to C", addr_c, &recorded),
        ("to C, preamble rewritten", addr_c, &to_c),
    ] {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(bytes).await?;
        let got = read_to_close(&mut s).await?;
        // B may answer the replayed first message with a fresh second one; nothing more.
        let most = if addr == addr_b { 50 } else { 0 };
        assert!(
            got.len() <= most,
            "replay {what}: got {} bytes back",
            got.len()
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(target_b.seen(), (1, 24), "a replay reached node B's target");
    assert_eq!(target_c.seen(), (0, 0), "a replay reached node C's target");
    Ok(())
}

/// A target that hands each accepted connection to the test.
async fn handing_target(
) -> Result<(SocketAddr, tokio::sync::mpsc::Receiver<TcpStream>, Task), std::io::Error> {
    let (l, addr) = listen().await?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            if tx.send(s).await.is_err() {
                break;
            }
        }
    });
    Ok((addr, rx, Task(task)))
}

#[tokio::test]
async fn either_end_closing_closes_the_other() -> TestResult {
    let (target, mut accepted, _t) = handing_target().await?;
    let (addr, _b) = node("node-b", &[("rpc/target", target)]).await?;
    let (local, _fwd) = forwarder(addr, "node-b", "rpc/target").await?;
    let wait = Duration::from_secs(3);

    // The target dies mid-stream: the client sees EOF.
    let mut client = TcpStream::connect(local).await?;
    client.write_all(b"ping").await?;
    let mut far = tokio::time::timeout(wait, accepted.recv())
        .await?
        .ok_or("no connection")?;
    let mut buf = [0u8; 4];
    far.read_exact(&mut buf).await?;
    far.write_all(b"pong").await?;
    client.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"pong");
    drop(far);
    let n = tokio::time::timeout(wait, client.read(&mut buf))
        .await?
        .unwrap_or(0);
    assert_eq!(n, 0, "the client's connection outlived the target's");

    // The client goes away: the target sees EOF.
    let mut client = TcpStream::connect(local).await?;
    client.write_all(b"ping").await?;
    let mut far = tokio::time::timeout(wait, accepted.recv())
        .await?
        .ok_or("no connection")?;
    far.read_exact(&mut buf).await?;
    drop(client);
    let n = tokio::time::timeout(wait, far.read(&mut buf))
        .await?
        .unwrap_or(0);
    assert_eq!(n, 0, "the target's connection outlived the client's");
    Ok(())
}

#[tokio::test]
async fn extra_handshakes_are_closed_and_extra_tunnels_refused() -> TestResult {
    let target = echo_target().await?;
    let limits = Limits {
        max_tunnels: 1,
        max_handshakes: 1,
        handshake_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let (addr, _b) = node_with("node-b", &[("rpc/echo", target.addr)], limits).await?;
    let (k, a, b) = (keys(SECRET, CLUSTER), id("node-a"), id("node-b"));

    let _idle = TcpStream::connect(addr).await?; // holds the one handshake slot
    tokio::time::sleep(Duration::from_millis(100)).await;
    let err = connect(addr, &k, &a, &b, "rpc/echo").await;
    assert_eq!(kind(&err), "Refused", "{err:?}");
    tokio::time::sleep(Duration::from_millis(400)).await; // the idle one timed out

    let first = connect(addr, &k, &a, &b, "rpc/echo").await?;
    let err = connect(addr, &k, &a, &b, "rpc/echo").await;
    assert_eq!(kind(&err), "Busy", "{err:?}");
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match connect(addr, &k, &a, &b, "rpc/echo").await {
            Ok(_) => break,
            Err(TunnelError::Busy { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
