//! Harness for sharded-deployment tests: several real `herd serve` processes
//! on 127.0.0.2, .3, … (each in its own process group, with its own model
//! store and state dir), one shared config file, one cluster secret. Node 1
//! starts first; the others name it as their static peer.

#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type TestResult = Result<(), Error>;

pub const SMOL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const GEMMA: &str = "gemma-3-270m-q4_k_m.gguf";

/// The model cache the README's setup fills.
pub fn cache_models() -> PathBuf {
    let cache = std::env::var_os("HERD_CACHE").map_or_else(
        || {
            let home =
                std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
            home.join(".cache/herd")
        },
        PathBuf::from,
    );
    cache.join("models")
}

pub struct Fleet {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<FleetNode>,
}

pub struct FleetNode {
    pub name: String,
    pub child: Option<Child>,
    pub url: String,
    pub log: Arc<Mutex<Vec<String>>>,
    args: Vec<String>,
}

impl Fleet {
    /// `config` is the TOML every node reads; `budgets[i]` is node i's
    /// `--memory-budget`; `stores[i]` the model files node i's store holds.
    pub fn start(config: &str, budgets: &[&str], stores: &[&[&str]]) -> Result<Self, Error> {
        let dir = tempfile::tempdir()?;
        let secret = dir.path().join("secret");
        std::fs::write(&secret, format!("{}\n", "s9".repeat(20)))?;
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        std::fs::write(dir.path().join("herd.toml"), config)?;
        let mut fleet = Self {
            dir,
            nodes: Vec::new(),
        };
        for (i, budget) in budgets.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let store = fleet.dir.path().join(format!("store-{name}"));
            std::fs::create_dir_all(&store)?;
            for file in stores.get(i).copied().unwrap_or(&[]) {
                let src = cache_models().join(file);
                if !src.is_file() {
                    return Err(format!(
                        "test model missing at {} (run the README setup)",
                        src.display()
                    )
                    .into());
                }
                std::os::unix::fs::symlink(&src, store.join(file))?;
            }
            let mut args: Vec<String> = vec![
                "serve".into(),
                "--config".into(),
                fleet.dir.path().join("herd.toml").display().to_string(),
                "--listen".into(),
                format!("127.0.0.{}:0", i + 2),
                "--name".into(),
                name.clone(),
                "--cluster".into(),
                "fleet".into(),
                "--secret-file".into(),
                fleet.dir.path().join("secret").display().to_string(),
                "--state-dir".into(),
                fleet
                    .dir
                    .path()
                    .join(format!("state-{name}"))
                    .display()
                    .to_string(),
                "--model-dir".into(),
                store.display().to_string(),
                "--memory-budget".into(),
                budget.to_string(),
                "--no-discovery".into(),
            ];
            if let Some(first) = fleet.nodes.first() {
                args.push("--peer".into());
                args.push(first.url.trim_start_matches("http://").to_string());
            }
            let node = FleetNode::spawn(&name, args)?;
            fleet.nodes.push(node);
        }
        Ok(fleet)
    }

    pub fn node(&self, name: &str) -> Result<&FleetNode, Error> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| format!("no node {name}").into())
    }

    pub fn node_mut(&mut self, name: &str) -> Result<&mut FleetNode, Error> {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .ok_or_else(|| format!("no node {name}").into())
    }

    pub fn store(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("store-{name}"))
    }

    pub fn dump_logs(&self) {
        for n in &self.nodes {
            eprintln!("---- log of {} ----\n{}", n.name, n.log_text());
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
    }
}

impl FleetNode {
    fn spawn(name: &str, args: Vec<String>) -> Result<Self, Error> {
        let log = Arc::new(Mutex::new(Vec::new()));
        let (child, url) = launch(name, &args, &log)?;
        Ok(Self {
            name: name.to_string(),
            child: Some(child),
            url,
            log,
            args,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends `sig` to the node's whole process group (agent, engine hosts, shard workers).
    pub fn signal_group(&self, sig: &str) -> Result<(), Error> {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), "--", &format!("-{}", self.pid())])
            .status()?;
        if ok.success() {
            Ok(())
        } else {
            Err(format!("kill -{sig} -{} failed", self.pid()).into())
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = self.signal_group_of(c.id(), "CONT");
            let _ = self.signal_group_of(c.id(), "KILL");
            let _ = c.wait();
        }
    }

    fn signal_group_of(&self, pid: u32, sig: &str) -> Result<(), Error> {
        Command::new("kill")
            .args([&format!("-{sig}"), "--", &format!("-{pid}")])
            .status()?;
        Ok(())
    }

    /// Starts the same command again (same name, state dir and store).
    pub fn restart(&mut self) -> Result<(), Error> {
        self.kill();
        let (child, url) = launch(&self.name, &self.args, &self.log)?;
        self.child = Some(child);
        self.url = url;
        Ok(())
    }

    pub fn log_text(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    pub async fn cluster(&self) -> Result<Value, Error> {
        Ok(reqwest::get(format!("{}/cluster", self.url))
            .await?
            .json()
            .await?)
    }

    /// One deployment's entry in this node's `/cluster`.
    pub async fn deployment(&self, id: &str) -> Result<Value, Error> {
        let view = self.cluster().await?;
        view["deployments"]
            .as_array()
            .and_then(|d| d.iter().find(|x| x["id"] == id).cloned())
            .ok_or_else(|| format!("{} does not list deployment {id}: {view}", self.name).into())
    }

    /// A greedy completion through this node's gateway.
    pub async fn complete(
        &self,
        model: &str,
        prompt: &str,
        max_tokens: u32,
    ) -> Result<(u16, Value), Error> {
        let r = reqwest::Client::new()
            .post(format!("{}/v1/completions", self.url))
            .json(&serde_json::json!({"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}))
            .send()
            .await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }
}

impl Drop for FleetNode {
    fn drop(&mut self) {
        self.kill();
    }
}

fn launch(
    name: &str,
    args: &[String],
    log: &Arc<Mutex<Vec<String>>>,
) -> Result<(Child, String), Error> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_herd"))
        .args(args)
        .env("HERD_LOG", "info")
        .env_remove("HERD_SECRET_FILE")
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("herd listening on ").nth(1) {
                let _ = tx.send(rest.trim().to_string());
            }
            if let Ok(mut l) = sink.lock() {
                l.push(line);
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(url) => Ok((child, url)),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            let text = log.lock().map(|l| l.join("\n")).unwrap_or_default();
            Err(format!("herd node {name} did not start:\n{text}").into())
        }
    }
}

/// Polls `check` until it returns `Ok(true)`; fails with the last error seen.
pub async fn wait_for<F, Fut>(
    what: &str,
    timeout: Duration,
    mut check: F,
) -> Result<Duration, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, Error>>,
{
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < timeout {
        match check().await {
            Ok(true) => return Ok(start.elapsed()),
            Ok(false) => {}
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("{what}: not within {timeout:?} (last: {last})").into())
}

/// The text of a completion answer.
pub fn text(v: &Value) -> String {
    v["choices"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

pub fn path_of(p: &Path) -> String {
    p.display().to_string()
}
