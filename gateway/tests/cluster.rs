//! The cluster with real `herd node` processes: mDNS discovery between
//! network namespaces, static peers on loopback addresses, intruders with the
//! wrong secret, crashes (SIGKILL), sleeps (SIGSTOP) and rejoins. Every view
//! is read the way a person would, with `herd status`.

mod common_cluster;

use common_cluster::{alive, listed, members, Lab, Node, Secrets, TestResult, PORT};
use herd_cluster::MemberState;
use std::time::{Duration, Instant};

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Every node in `nodes` sees exactly `expected` alive (and nothing else listed).
fn all_see(nodes: &[&Node], secret: &std::path::Path, expected: &[&str]) -> Result<bool, String> {
    let expected = names(expected);
    for n in nodes {
        let view = n
            .view_with(secret)
            .map_err(|e| format!("{}: {e}", n.name))?;
        if listed(&view) != expected || alive(&view) != expected {
            return Err(format!("{} sees {:?}", n.name, members(&view)));
        }
    }
    Ok(true)
}

fn netns_node(
    lab: &Lab,
    i: usize,
    name: &str,
    secret: &std::path::Path,
    s: &Secrets,
) -> Result<Node, common_cluster::Error> {
    let listen = format!("{}:{PORT}", Lab::ip(i));
    Node::start(
        Some(lab.ns(i)),
        name,
        secret,
        &s.state(name),
        &["--listen".into(), listen],
    )
}

#[test]
fn four_nodes_discover_each_other_keep_intruders_out_and_survive_a_crash() -> TestResult {
    let lab = Lab::new(5)?;
    let s = Secrets::new()?;
    let started = Instant::now();
    let mut nodes = Vec::new();
    for (i, name) in ["n0", "n1", "n2", "n3"].iter().enumerate() {
        nodes.push(netns_node(&lab, i, name, &s.good(), &s)?);
    }
    // Same cluster name, same LAN, wrong secret: it finds the others by mDNS and is refused.
    let intruder = netns_node(&lab, 4, "intruder", &s.wrong(), &s)?;
    let refs: Vec<&Node> = nodes.iter().collect();
    let all4 = ["n0", "n1", "n2", "n3"];
    let took = common_cluster::wait_until(
        "the same 4-node view everywhere",
        Duration::from_secs(10).saturating_sub(started.elapsed()),
        || all_see(&refs, &s.good(), &all4),
    );
    if took.is_err() {
        common_cluster::dump_logs(&refs);
    }
    took?;
    eprintln!(
        "4 nodes agreed {:?} after the first started",
        started.elapsed()
    );

    // `herd status` shows the table a person reads.
    let table = nodes[2].status_table(&s.good())?;
    assert!(
        table.starts_with("cluster test: 4 nodes, 4 alive (as seen by n2)"),
        "{table}"
    );
    for name in all4 {
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(name) && l.contains(" alive ")),
            "{name} missing:\n{table}"
        );
    }

    // The intruder is never listed and learns nothing.
    std::thread::sleep(Duration::from_secs(1));
    for n in &nodes {
        let view = n.view_with(&s.good())?;
        assert!(
            !listed(&view).contains(&"intruder".to_string()),
            "{} lists the intruder",
            n.name
        );
    }
    assert_eq!(
        listed(&intruder.view_with(&s.wrong())?),
        names(&["intruder"]),
        "the intruder knows no one"
    );
    let refused = nodes[0]
        .view_with(&s.wrong())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(refused.contains("rejected"), "{refused}");
    assert!(
        intruder.log_text().contains("rejected our credentials"),
        "the intruder is told why, in its own log"
    );

    // SIGKILL n3: dead and gone from every view within 5 s.
    nodes[3].signal("KILL")?;
    let killed = Instant::now();
    let survivors: Vec<&Node> = nodes[..3].iter().collect();
    let gone = common_cluster::wait_until("n3 removed everywhere", Duration::from_secs(5), || {
        all_see(&survivors, &s.good(), &["n0", "n1", "n2"])
    })?;
    eprintln!("n3 removed {gone:?} after SIGKILL");
    assert!(killed.elapsed() < Duration::from_secs(6));
    assert!(
        nodes[0].log_text().contains("node dead"),
        "the death is logged"
    );

    // Restart n3 (same id): back everywhere within 10 s.
    nodes[3].restart()?;
    let refs: Vec<&Node> = nodes.iter().collect();
    let back = common_cluster::wait_until("n3 back everywhere", Duration::from_secs(10), || {
        all_see(&refs, &s.good(), &all4)
    })?;
    eprintln!("n3 back {back:?} after restart");
    let view = nodes[0].view_with(&s.good())?;
    let n3 = view
        .nodes
        .iter()
        .find(|n| n.name == "n3")
        .ok_or("n3 missing")?;
    assert_eq!(n3.addr.to_string(), format!("{}:{PORT}", Lab::ip(3)));
    assert!(
        n3.memory_total > 0
            && n3.memory_free > 0
            && n3.cores > 0
            && n3.engines.contains(&"llama-cpu".to_string())
    );
    drop(intruder);
    Ok(())
}

#[test]
fn a_sleeping_node_is_declared_dead_and_rejoins_when_it_wakes() -> TestResult {
    let lab = Lab::new(4)?;
    let s = Secrets::new()?;
    let mut nodes = Vec::new();
    for (i, name) in ["s0", "s1", "s2", "s3"].iter().enumerate() {
        nodes.push(netns_node(&lab, i, name, &s.good(), &s)?);
    }
    let refs: Vec<&Node> = nodes.iter().collect();
    let all4 = ["s0", "s1", "s2", "s3"];
    common_cluster::wait_until("4 nodes", Duration::from_secs(10), || {
        all_see(&refs, &s.good(), &all4)
    })?;

    // SIGSTOP s1, as a Mac going to sleep: its sockets stay open but nothing answers.
    nodes[1].signal("STOP")?;
    let awake: Vec<&Node> = [&nodes[0], &nodes[2], &nodes[3]].into_iter().collect();
    let mut saw_dead = false;
    let took = common_cluster::wait_until("s1 dead everywhere", Duration::from_secs(5), || {
        let mut all_dead = true;
        for n in &awake {
            let view = n.view_with(&s.good()).map_err(|e| e.to_string())?;
            match view.nodes.iter().find(|x| x.name == "s1").map(|x| x.state) {
                Some(MemberState::Dead) => saw_dead = true,
                None => {}
                Some(_) => all_dead = false,
            }
        }
        Ok(all_dead)
    })?;
    eprintln!("s1 dead (or removed) {took:?} after SIGSTOP; seen as dead: {saw_dead}");
    common_cluster::wait_until("s1 removed", Duration::from_secs(3), || {
        all_see(&awake, &s.good(), &["s0", "s2", "s3"])
    })?;

    // SIGCONT: it wakes, finds everyone gone quiet from its side, and rejoins.
    nodes[1].signal("CONT")?;
    let refs: Vec<&Node> = nodes.iter().collect();
    let back =
        common_cluster::wait_until("s1 rejoined everywhere", Duration::from_secs(10), || {
            all_see(&refs, &s.good(), &all4)
        })?;
    eprintln!("s1 rejoined {back:?} after SIGCONT");
    Ok(())
}

/// Loopback nodes 127.0.0.(2+i) on free ports, each seeded with the previous one only.
fn static_chain(s: &Secrets, names_: &[&str]) -> Result<Vec<Node>, common_cluster::Error> {
    let mut nodes: Vec<Node> = Vec::new();
    for (i, name) in names_.iter().enumerate() {
        let mut extra = vec![
            "--listen".to_string(),
            format!("127.0.0.{}:0", i + 2),
            "--no-discovery".into(),
        ];
        if let Some(prev) = nodes.last() {
            extra.extend([
                "--peer".into(),
                prev.url.trim_start_matches("http://").to_string(),
            ]);
        }
        nodes.push(Node::start(None, name, &s.good(), &s.state(name), &extra)?);
    }
    Ok(nodes)
}

#[test]
fn static_peers_without_discovery_learn_the_cluster_from_one_seed() -> TestResult {
    let s = Secrets::new()?;
    let mut nodes = static_chain(&s, &["p0", "p1", "p2", "p3"])?;
    let all4 = ["p0", "p1", "p2", "p3"];
    let refs: Vec<&Node> = nodes.iter().collect();
    common_cluster::wait_until(
        "4 nodes from a chain of seeds",
        Duration::from_secs(10),
        || all_see(&refs, &s.good(), &all4),
    )?;
    assert!(
        nodes[0].log_text().contains("discovery=false"),
        "{}",
        nodes[0].log_text()
    );

    nodes[1].signal("KILL")?;
    let rest: Vec<&Node> = [&nodes[0], &nodes[2], &nodes[3]].into_iter().collect();
    common_cluster::wait_until("p1 removed", Duration::from_secs(5), || {
        all_see(&rest, &s.good(), &["p0", "p2", "p3"])
    })?;
    // It comes back on a new port; its seed (p0) is still there.
    nodes[1].restart()?;
    let refs: Vec<&Node> = nodes.iter().collect();
    common_cluster::wait_until("p1 back", Duration::from_secs(10), || {
        all_see(&refs, &s.good(), &all4)
    })?;
    let view = nodes[3].view_with(&s.good())?;
    let p1 = view
        .nodes
        .iter()
        .find(|n| n.name == "p1")
        .ok_or("p1 missing")?;
    assert_eq!(
        p1.addr.to_string(),
        nodes[1].url.trim_start_matches("http://"),
        "its new address replaced the old one"
    );
    Ok(())
}

#[test]
fn a_wrong_secret_is_never_listed_and_gets_nothing() -> TestResult {
    let s = Secrets::new()?;
    let keys = s.dir.path().join("keys");
    std::fs::write(&keys, "ops:sk-ops-key\n")?;
    let good = Node::start(
        None,
        "g0",
        &s.good(),
        &s.state("g0"),
        &[
            "--listen".into(),
            "127.0.0.2:0".into(),
            "--no-discovery".into(),
            "--api-key-file".into(),
            keys.display().to_string(),
        ],
    )?;
    let addr = good.url.trim_start_matches("http://").to_string();
    let intruder = Node::start(
        None,
        "bad",
        &s.wrong(),
        &s.state("bad"),
        &[
            "--listen".into(),
            "127.0.0.3:0".into(),
            "--no-discovery".into(),
            "--peer".into(),
            addr.clone(),
        ],
    )?;
    common_cluster::wait_until("the intruder to be refused", Duration::from_secs(5), || {
        Ok(intruder.log_text().contains("rejected our credentials"))
    })?;
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(listed(&good.view_with(&s.good())?), names(&["g0"]));
    assert_eq!(listed(&intruder.view_with(&s.wrong())?), names(&["bad"]));

    // Without the secret: 401, an empty body, no herd headers, whatever the endpoint.
    for (method, path, body) in [
        ("GET", "/_herd/v1/view", ""),
        ("POST", "/_herd/v1/gossip", "{\"from\":{}}"),
        ("GET", "/_herd/v1/anything", ""),
    ] {
        let (status, headers, body) = raw_http(
            &addr,
            method,
            path,
            &[("x-herd-node", "bad"), ("x-herd-mac", "00")],
            body,
        )?;
        assert_eq!(status, 401, "{method} {path}");
        assert!(body.is_empty(), "{method} {path}: {body}");
        assert!(
            !headers.to_ascii_lowercase().contains("x-herd"),
            "{headers}"
        );
    }
    // GET /cluster is behind the API key.
    let (status, _, body) = raw_http(&addr, "GET", "/cluster", &[], "")?;
    assert_eq!(status, 401);
    assert!(!body.contains("g0"), "{body}");
    let (status, _, body) = raw_http(
        &addr,
        "GET",
        "/cluster",
        &[("authorization", "Bearer sk-ops-key")],
        "",
    )?;
    assert_eq!(status, 200, "{body}");
    let view: herd_cluster::ClusterView = serde_json::from_str(&body)?;
    assert_eq!(listed(&view), names(&["g0"]));
    assert!(
        body.contains("\"memory_total\"")
            && body.contains("\"last_seen_ms\"")
            && body.contains("\"state\":\"alive\"")
    );
    // `herd status` with the API key (the table) and with a wrong secret (a clear refusal).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herd"))
        .args(["status", "--url", &good.url, "--api-key", "sk-ops-key"])
        .env_remove("HERD_SECRET_FILE")
        .output()?;
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && table.contains("g0 *"), "{table}");
    let err = good
        .view_with(&s.wrong())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("rejected the request"), "{err}");
    // And the secret never reaches a log.
    for n in [&good, &intruder] {
        assert!(!n.log_text().contains("g7g7g7") && !n.log_text().contains("w3w3w3"));
    }
    Ok(())
}

/// A minimal HTTP/1.1 exchange: (status, raw headers, body).
fn raw_http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String, String), common_cluster::Error> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("bad response")?;
    Ok((status, head.to_string(), body.to_string()))
}
