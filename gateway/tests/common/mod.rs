//! Test harness: a real `herd serve` process with the real default model on a
//! free port, killed when dropped. Its log is printed if a test fails.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// The default model: `HERD_TEST_MODEL`, or the cache the README's setup fills.
pub fn model_path() -> PathBuf {
    if let Some(p) = std::env::var_os("HERD_TEST_MODEL") {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("HERD_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home =
                std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
            home.join(".cache/herd")
        });
    cache.join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

pub const MODEL_ID: &str = "smollm2-135m-instruct";

/// The default model with Llama 3.1's chat template (made by .ci/setup), for
/// the Llama 3 tool format.
pub fn llama3_model_path() -> PathBuf {
    model_path().with_file_name("SmolLM2-135M-Instruct.llama3-template.Q4_1.gguf")
}

pub const LLAMA3_MODEL_ID: &str = "smollm2-135m-instruct.llama3-template";

pub struct Server {
    pub child: Child,
    pub url: String,
    pub log: Arc<Mutex<Vec<String>>>,
    /// The config file's directory, kept as long as the server runs.
    dir: Option<tempfile::TempDir>,
}

impl Server {
    /// Starts `herd serve --model <default> --listen 127.0.0.1:0 --threads 1 <extra>` and waits until healthy.
    pub fn start(extra: &[&str]) -> Result<Self, String> {
        Self::start_with(extra, &[])
    }

    pub fn start_with(extra: &[&str], env: &[(&str, &str)]) -> Result<Self, String> {
        Self::start_model(&model_path(), extra, env)
    }

    /// Like [`Server::start`], serving the GGUF at `model`.
    pub fn start_model(
        model: &std::path::Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self, String> {
        if !model.is_file() {
            return Err(format!(
                "test model missing at {} (run the README setup)",
                model.display()
            ));
        }
        let mut args = vec![
            "serve".to_string(),
            "--model".to_string(),
            model.display().to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--threads".into(),
            "1".into(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        Self::spawn(&args, env, None)
    }

    /// `herd serve --config FILE --listen 127.0.0.1:0 <extra>`, FILE holding
    /// `config` (no `--model`: the config says what to serve).
    pub fn start_config(
        config: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("herd.toml");
        std::fs::write(&path, config).map_err(|e| e.to_string())?;
        let mut args = vec![
            "serve".to_string(),
            "--config".into(),
            path.display().to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        Self::spawn(&args, env, Some(dir))
    }

    fn spawn(
        args: &[String],
        env: &[(&str, &str)],
        dir: Option<tempfile::TempDir>,
    ) -> Result<Self, String> {
        let server = Self::spawn_cmd(&[], args, env, dir)?;
        server.wait_healthy(Duration::from_secs(60))?;
        Ok(server)
    }

    /// `<prefix...> herd serve --listen 127.0.0.1:0 --threads 1 <args>`: the
    /// caller names the model(s) (`--model` or `--config`). A prefix (`setpriv
    /// ...`, `unshare -m sh -c ...`) must end by exec'ing its arguments, so the
    /// server's pid is herd's. Returns once it listens, healthy or not.
    pub fn launch(prefix: &[&str], args: &[&str], env: &[(&str, &str)]) -> Result<Self, String> {
        let args: Vec<String> = ["serve", "--listen", "127.0.0.1:0", "--threads", "1"]
            .iter()
            .chain(args)
            .map(|a| a.to_string())
            .collect();
        Self::spawn_cmd(prefix, &args, env, None)
    }

    /// Starts `<prefix...> herd <args>` and returns once it listens.
    fn spawn_cmd(
        prefix: &[&str],
        args: &[String],
        env: &[(&str, &str)],
        dir: Option<tempfile::TempDir>,
    ) -> Result<Self, String> {
        let herd = env!("CARGO_BIN_EXE_herd");
        let mut cmd = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(herd);
                c
            }
            None => Command::new(herd),
        };
        cmd.args(args)
            .env("OMP_WAIT_POLICY", "PASSIVE")
            .env("HERD_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let log = Arc::new(Mutex::new(Vec::new()));
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
        let url = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(u) => u,
            Err(_) => {
                let _ = child.kill();
                return Err(format!(
                    "herd did not start: {:?}",
                    log.lock().map(|l| l.join("\n"))
                ));
            }
        };
        Ok(Self {
            child,
            url,
            log,
            dir,
        })
    }

    pub fn wait_healthy(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(r) = ureq_get(&format!("{}/health", self.url)) {
                if r.0 == 200 {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "herd never became healthy; log:\n{}",
            self.log_text()
        ))
    }

    pub fn log_text(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    pub fn v1(&self) -> String {
        format!("{}/v1", self.url)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- herd log ----\n{}", self.log_text());
        }
    }
}

/// A tiny blocking GET for readiness polling (no runtime needed).
pub fn ureq_get(url: &str) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").ok_or("only http")?;
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let mut s = std::net::TcpStream::connect(host).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).map_err(|e| e.to_string())?;
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("bad response")?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Parses an SSE body into its `data:` payloads.
pub fn sse_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

/// Direct children of `pid` (the engine hosts of a `herd serve`).
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // The field after the parenthesised command name: state, then ppid.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

pub fn signal(pid: u32, sig: &str) -> Result<(), String> {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .map_err(|e| e.to_string())?;
    if ok.success() {
        Ok(())
    } else {
        Err(format!("kill {sig} {pid} failed"))
    }
}

/// An async-openai client for `server`.
pub fn client(server: &Server) -> async_openai::Client<async_openai::config::OpenAIConfig> {
    async_openai::Client::with_config(
        async_openai::config::OpenAIConfig::new()
            .with_api_base(server.v1())
            .with_api_key("unused"),
    )
}

/// A user message for async-openai's request builders.
pub fn user(
    text: &str,
) -> Result<async_openai::types::ChatCompletionRequestMessage, async_openai::error::OpenAIError> {
    Ok(
        async_openai::types::ChatCompletionRequestUserMessageArgs::default()
            .content(text)
            .build()?
            .into(),
    )
}
