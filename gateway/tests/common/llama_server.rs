//! llama.cpp's own `llama-server` on loopback serving the test model, as an
//! upstream for herd. The binary comes from `bench/build-llama-cpp
//! llama-server`: built once per machine (~10 minutes on two cores, its
//! progress on stderr), cached in `$HERD_CACHE`, a no-op after. A build that
//! fails fails the test that needed it, with the reason.

use crate::common::{model_path, ureq_get, MODEL_ID};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Built (or found) once per test binary; the script's lock keeps
/// concurrent runs from building twice.
static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();

fn binary() -> Result<PathBuf, String> {
    BINARY.get_or_init(build).clone()
}

fn build() -> Result<PathBuf, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/build-llama-cpp");
    let script = std::fs::canonicalize(&script).unwrap_or(script);
    let started = Instant::now();
    // stderr is inherited, not captured: the build's progress shows as it happens.
    let out = Command::new(&script)
        .arg("llama-server")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "`{} llama-server` failed ({}): llama.cpp's llama-server could not be built. It needs \
             cmake, a C++ compiler and python3 with pip (.ci/setup installs them); the script's \
             output above says what went wrong",
            script.display(),
            out.status
        ));
    }
    let bin = Path::new(String::from_utf8_lossy(&out.stdout).trim()).join("llama-server");
    if !bin.is_file() {
        return Err(format!(
            "{} reported success but {} is missing",
            script.display(),
            bin.display()
        ));
    }
    if started.elapsed() > Duration::from_secs(30) {
        let _ = writeln!(
            std::io::stderr(),
            "llama-server built in {:.0} s: {}",
            started.elapsed().as_secs_f64(),
            bin.display()
        );
    }
    Ok(bin)
}

pub struct LlamaServer {
    child: Child,
    pub url: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl LlamaServer {
    /// `llama-server` with the test model under the name `MODEL_ID`, one
    /// thread, one slot of `ctx` tokens, on a free loopback port; returns
    /// once `/health` says the model is loaded.
    pub fn start(ctx: u32) -> Result<Self, String> {
        let ctx = ctx.to_string();
        Self::start_model(
            &model_path(),
            MODEL_ID,
            &["--parallel", "1", "--ctx-size", &ctx],
        )
    }

    /// `llama-server` serving `model` as `alias` with one thread and `extra`
    /// flags, on a free loopback port, once `/health` says it is loaded.
    pub fn start_model(model: &Path, alias: &str, extra: &[&str]) -> Result<Self, String> {
        let bin = binary()?;
        if !model.is_file() {
            return Err(format!(
                "test model missing at {} (run .ci/setup)",
                model.display()
            ));
        }
        let mut child = Command::new(&bin)
            .args(["--model", &model.display().to_string()])
            .args(["--alias", alias, "--host", "127.0.0.1", "--port", "0"])
            .args(["--threads", "1", "--threads-batch", "1", "--no-webui"])
            .args(extra)
            .env("OMP_WAIT_POLICY", "PASSIVE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let outputs: [Option<Box<dyn Read + Send>>; 2] = [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ];
        for output in outputs.into_iter().flatten() {
            let (tx, sink) = (tx.clone(), log.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(output).lines().map_while(Result::ok) {
                    if let Some(url) = line.split("listening on ").nth(1) {
                        let _ = tx.send(url.trim().to_string());
                    }
                    if let Ok(mut l) = sink.lock() {
                        l.push(line);
                    }
                }
            });
        }
        let mut server = Self {
            child,
            url: String::new(),
            log,
        };
        server.url = rx
            .recv_timeout(Duration::from_secs(60))
            .map_err(|_| format!("llama-server did not listen:\n{}", server.log_text()))?;
        server.wait_healthy(Duration::from_secs(120))?;
        Ok(server)
    }

    /// 503 while the model loads, 200 once it serves.
    fn wait_healthy(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if ureq_get(&format!("{}/health", self.url)).is_ok_and(|(status, _)| status == 200) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "llama-server never became healthy:\n{}",
            self.log_text()
        ))
    }

    pub fn log_text(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    pub fn v1(&self) -> String {
        format!("{}/v1", self.url)
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- llama-server log ----\n{}", self.log_text());
        }
    }
}
