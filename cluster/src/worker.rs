//! The shard worker's supervisor: `herd rpc-worker` (a ggml RPC server in its
//! own process, on a loopback port) is started for a deployment whose layers
//! this node holds, restarted with backoff when it dies, killed (and so
//! restarted) when it is stopped (SIGSTOP: it would hang its head forever),
//! and killed when the handle is dropped. The worker also dies with this
//! process (it sets PR_SET_PDEATHSIG).

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;
use tokio::sync::watch;

const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A worker stopped this long is treated as hung and killed.
const STOPPED_LIMIT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct WorkerSpec {
    /// The `herd` executable.
    pub exe: PathBuf,
    /// Tensor cache shared by this node's workers (tensors are named by hash).
    pub cache_dir: PathBuf,
    pub threads: u32,
    /// For logs: the deployment it serves.
    pub deployment: String,
}

/// A running worker; dropping it kills the process.
pub struct ShardWorker {
    port: u16,
    task: tokio::task::JoinHandle<()>,
    pid: watch::Receiver<Option<u32>>,
}

impl Drop for ShardWorker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ShardWorker {
    pub fn start(spec: WorkerSpec) -> std::io::Result<Self> {
        let port = free_port()?;
        let (pid_tx, pid) = watch::channel(None);
        let task = tokio::spawn(supervise(spec, port, pid_tx));
        Ok(Self { port, task, pid })
    }

    /// The loopback address the worker serves on.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The worker's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        *self.pid.borrow()
    }
}

/// A port the kernel says is free now (the worker binds it a moment later).
fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

async fn supervise(spec: WorkerSpec, port: u16, pid: watch::Sender<Option<u32>>) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let started = tokio::time::Instant::now();
        let child = Command::new(&spec.exe)
            .env("GGML_NO_BACKTRACE", "1")
            .arg("rpc-worker")
            .args(["--port", &port.to_string()])
            .arg("--cache-dir")
            .arg(&spec.cache_dir)
            .args(["--threads", &spec.threads.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn();
        let message = match child {
            Ok(mut child) => {
                let id = child.id();
                pid.send_replace(id);
                tracing::info!(deployment = %spec.deployment, port, pid = id, "shard worker started");
                let message = watch_child(&mut child, id).await;
                pid.send_replace(None);
                message
            }
            Err(e) => format!("cannot start {}: {e}", spec.exe.display()),
        };
        if started.elapsed() > Duration::from_secs(30) {
            backoff = BACKOFF_MIN;
        }
        tracing::warn!(deployment = %spec.deployment, port, "shard worker {message}; restarting in {backoff:?}");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Waits for the child to exit; kills it if it stays stopped too long.
async fn watch_child(child: &mut tokio::process::Child, pid: Option<u32>) -> String {
    let mut stopped_since: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            status = child.wait() => return describe(status),
            _ = tick.tick() => {
                if pid.is_some_and(is_stopped) {
                    let since = *stopped_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= STOPPED_LIMIT {
                        let _ = child.kill().await;
                        return format!("was stopped for {STOPPED_LIMIT:?} (SIGSTOP?); killed it");
                    }
                } else {
                    stopped_since = None;
                }
            }
        }
    }
}

/// Linux: the process state letter in /proc/PID/stat is `T` (stopped).
fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|c| c == "T"))
        })
        .unwrap_or(false)
}

fn describe(status: std::io::Result<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(sig)) => format!("was killed by signal {sig}"),
            _ => "exited".into(),
        },
        Err(e) => format!("could not be waited on: {e}"),
    }
}
