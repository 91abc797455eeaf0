//! Harness for cluster tests: real `herd node` processes, either on loopback
//! addresses (static peers) or each in its own network namespace joined by a
//! bridge (so mDNS multicast flows between them). Everything is torn down on
//! drop, also when a test fails; a failing test prints the nodes' logs.

#![allow(dead_code)]

use herd_cluster::{ClusterView, MemberState};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;
pub type Error = Box<dyn std::error::Error + Send + Sync>;

pub const CLUSTER: &str = "test";
pub const PORT: u16 = 7000;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A name unique to this process and call, short enough for an interface (≤ 15 chars).
fn unique_tag() -> String {
    format!(
        "{:04}{}",
        std::process::id() % 10_000,
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

fn run(cmd: &[&str]) -> Result<(), Error> {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output()?;
    if !out.status.success() {
        return Err(format!(
            "`{}` failed: {}",
            cmd.join(" "),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(())
}

/// Network namespaces `hn<tag>-<i>`, each with a veth into bridge `hb<tag>`
/// and the address 10.77.0.(i+2)/24.
pub struct Lab {
    bridge: String,
    namespaces: Vec<String>,
}

impl Lab {
    pub fn new(count: usize) -> Result<Self, Error> {
        let tag = unique_tag();
        let mut lab = Self {
            bridge: format!("hb{tag}"),
            namespaces: Vec::new(),
        };
        run(&["ip", "link", "add", &lab.bridge, "type", "bridge"])
            .map_err(|e| format!("network namespaces need root and iproute2: {e}"))?;
        run(&["ip", "link", "set", &lab.bridge, "up"])?;
        for i in 0..count {
            let ns = format!("hn{tag}-{i}");
            run(&["ip", "netns", "add", &ns])?;
            lab.namespaces.push(ns.clone());
            let (host, inside) = (format!("hv{tag}-{i}"), format!("hi{tag}-{i}"));
            run(&[
                "ip", "link", "add", &host, "type", "veth", "peer", "name", &inside,
            ])?;
            run(&["ip", "link", "set", &inside, "netns", &ns])?;
            run(&["ip", "link", "set", &host, "master", &lab.bridge])?;
            run(&["ip", "link", "set", &host, "up"])?;
            let cidr = format!("{}/24", Self::ip(i));
            run(&[
                "ip", "netns", "exec", &ns, "ip", "addr", "add", &cidr, "dev", &inside,
            ])?;
            run(&[
                "ip", "netns", "exec", &ns, "ip", "link", "set", &inside, "up",
            ])?;
            run(&["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
            run(&[
                "ip",
                "netns",
                "exec",
                &ns,
                "ip",
                "route",
                "add",
                "224.0.0.0/4",
                "dev",
                &inside,
            ])?;
        }
        Ok(lab)
    }

    pub fn ip(i: usize) -> String {
        format!("10.77.0.{}", i + 2)
    }

    pub fn ns(&self, i: usize) -> &str {
        &self.namespaces[i]
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = run(&["ip", "netns", "del", ns]);
        }
        let _ = run(&["ip", "link", "del", &self.bridge]);
    }
}

/// A file holding a cluster secret, in a temp dir that also holds the nodes' state.
pub struct Secrets {
    pub dir: tempfile::TempDir,
}

impl Secrets {
    pub fn new() -> Result<Self, Error> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("good"), format!("{}\n", "g7".repeat(20)))?;
        std::fs::write(dir.path().join("wrong"), format!("{}\n", "w3".repeat(20)))?;
        Ok(Self { dir })
    }

    pub fn good(&self) -> PathBuf {
        self.dir.path().join("good")
    }

    pub fn wrong(&self) -> PathBuf {
        self.dir.path().join("wrong")
    }

    pub fn state(&self, name: &str) -> PathBuf {
        self.dir.path().join("state").join(name)
    }
}

/// One `herd node` process (in a namespace when `ns` is set).
pub struct Node {
    pub name: String,
    child: Child,
    pub url: String,
    pub log: Arc<Mutex<Vec<String>>>,
    ns: Option<String>,
    args: Vec<String>,
}

impl Node {
    /// Starts `herd node --name NAME --cluster test --secret-file SECRET --state-dir ... <extra>`
    /// and waits until it listens.
    pub fn start(
        ns: Option<&str>,
        name: &str,
        secret: &Path,
        state: &Path,
        extra: &[String],
    ) -> Result<Self, Error> {
        let mut args: Vec<String> = ["node", "--name", name, "--cluster", CLUSTER]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend([
            "--secret-file".into(),
            secret.display().to_string(),
            "--state-dir".into(),
            state.display().to_string(),
        ]);
        args.extend(extra.iter().cloned());
        Self::spawn(ns.map(str::to_string), name, args)
    }

    fn spawn(ns: Option<String>, name: &str, args: Vec<String>) -> Result<Self, Error> {
        let log = Arc::new(Mutex::new(Vec::new()));
        let (child, url) = launch(ns.as_deref(), name, &args, &log)?;
        Ok(Self {
            name: name.to_string(),
            child,
            url,
            log,
            ns,
            args,
        })
    }

    /// Kills it and runs the same command again (same name and state dir, so the same node id).
    pub fn restart(&mut self) -> Result<(), Error> {
        self.kill();
        if let Ok(mut l) = self.log.lock() {
            l.push("---- restarted ----".into());
        }
        let (child, url) = launch(self.ns.as_deref(), &self.name, &self.args, &self.log)?;
        self.child = child;
        self.url = url;
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) -> Result<(), Error> {
        run(&["kill", &format!("-{sig}"), &self.pid().to_string()])
    }

    pub fn kill(&mut self) {
        let _ = self.signal("CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// This node's view, read by `herd status --json` with the given secret (from inside its namespace).
    pub fn view_with(&self, secret: &Path) -> Result<ClusterView, Error> {
        let out = status_command(
            self.ns.as_deref(),
            &self.url,
            &["--secret-file", &secret.display().to_string(), "--json"],
        )
        .output()?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr)
                .trim()
                .to_string()
                .into());
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// `herd status` (the table) with the given secret.
    pub fn status_table(&self, secret: &Path) -> Result<String, Error> {
        let out = status_command(
            self.ns.as_deref(),
            &self.url,
            &["--secret-file", &secret.display().to_string()],
        )
        .output()?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr)
                .trim()
                .to_string()
                .into());
        }
        Ok(String::from_utf8(out.stdout)?)
    }
}

/// Starts the process, copies its stderr into `log`, and waits for its listen address.
fn launch(
    ns: Option<&str>,
    name: &str,
    args: &[String],
    log: &Arc<Mutex<Vec<String>>>,
) -> Result<(Child, String), Error> {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_herd")]);
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_herd")),
    };
    cmd.args(args)
        .env("HERD_LOG", "info")
        .env_remove("HERD_SECRET_FILE");
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("herd node listening on ").nth(1) {
                let _ = tx.send(rest.trim().to_string());
            }
            if let Ok(mut l) = sink.lock() {
                l.push(line);
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(url) => Ok((child, url)),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            let text = log.lock().map(|l| l.join("\n")).unwrap_or_default();
            Err(format!("herd node {name} did not start:\n{text}").into())
        }
    }
}

fn status_command(ns: Option<&str>, url: &str, extra: &[&str]) -> Command {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_herd")]);
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_herd")),
    };
    cmd.args(["status", "--url", url, "--cluster", CLUSTER])
        .args(extra)
        .env_remove("HERD_SECRET_FILE");
    cmd
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("---- log of {} ----\n{}", self.name, self.log_text());
        }
    }
}

/// Prints every node's log (for a test that returns an error instead of panicking).
pub fn dump_logs(nodes: &[&Node]) {
    for n in nodes {
        eprintln!("---- log of {} ----\n{}", n.name, n.log_text());
    }
}

/// (name, state) of every node in the view, in the view's order.
pub fn members(view: &ClusterView) -> Vec<(String, MemberState)> {
    view.nodes
        .iter()
        .map(|n| (n.name.clone(), n.state))
        .collect()
}

/// The sorted names of the alive nodes.
pub fn alive(view: &ClusterView) -> Vec<String> {
    let mut names: Vec<String> = view
        .nodes
        .iter()
        .filter(|n| n.state == MemberState::Alive)
        .map(|n| n.name.clone())
        .collect();
    names.sort();
    names
}

/// The sorted names of every listed node, whatever its state.
pub fn listed(view: &ClusterView) -> Vec<String> {
    let mut names: Vec<String> = view.nodes.iter().map(|n| n.name.clone()).collect();
    names.sort();
    names
}

/// Polls `check` until it returns `Ok(true)`, or fails with the last state it saw.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<bool, String>,
) -> Result<Duration, Error> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < timeout {
        match check() {
            Ok(true) => return Ok(start.elapsed()),
            Ok(false) => {}
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("{what}: not within {timeout:?} (last: {last})").into())
}
