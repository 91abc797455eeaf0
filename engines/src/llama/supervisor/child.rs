//! One engine host process and its two connections: spawn, handshake, framed
//! I/O. Events come back on the first; commands go on the first, except big
//! prompts ([`ToHost::is_bulk`]), which a thread of their own writes on the
//! second, so that neither their bytes nor their encoding hold up a small
//! request's commands (nor the async runtime).

use super::LlamaEngineConfig;
use crate::llama::protocol::{FromHost, ToHost};
use crate::ModelInfo;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::UnixListener;
use tokio::process::{Child, ChildStderr, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Commands queued for the host's socket.
const WRITE_QUEUE: usize = 1024;
/// Big prompts queued for the second connection (the host's prepare queue bounds their bytes).
const BULK_QUEUE: usize = 256;
/// Events read from the host, waiting for the supervisor.
const READ_QUEUE: usize = 4096;
/// How much of the host's last stderr line an exit reason quotes.
const MAX_REASON: usize = 400;

pub enum ChildEvent {
    Message(FromHost),
    Exited(String),
}

pub struct ChildConn {
    writes: mpsc::Sender<ToHost>,
    bulk: mpsc::Sender<ToHost>,
    reads: mpsc::Receiver<ChildEvent>,
    // Owns the process (killed on drop) and the socket directory.
    _child: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl ChildConn {
    /// Spawns `herd engine-host`, waits for it to connect and report ready.
    pub async fn spawn(config: &LlamaEngineConfig) -> Result<(Self, ModelInfo), String> {
        let dir = tempfile::Builder::new()
            .prefix("herd-engine-")
            .tempdir()
            .map_err(|e| format!("cannot create socket dir: {e}"))?;
        let socket = dir.path().join("host.sock");
        let listener = UnixListener::bind(&socket)
            .map_err(|e| format!("cannot bind {}: {e}", socket.display()))?;
        let mmap = super::memory::decide(config.mmap, &config.model);
        let mut command = Command::new(&config.exe);
        // ggml's abort (an RPC peer lost) would otherwise attach gdb for a backtrace.
        command.env("GGML_NO_BACKTRACE", "1");
        if !mmap {
            // Weights read into memory come from malloc; this glibc tunable
            // (2.35+; ignored elsewhere) has malloc ask for transparent huge
            // pages, so decoding walks ~50 2 MiB pages instead of ~25 000 4 KiB ones.
            command.env(
                "GLIBC_TUNABLES",
                super::memory::with_huge_pages(std::env::var("GLIBC_TUNABLES").ok().as_deref()),
            );
        }
        let split: Vec<String> = config.split.iter().map(u32::to_string).collect();
        let mut child = command
            .arg("engine-host")
            .arg("--socket")
            .arg(&socket)
            .arg("--model")
            .arg(&config.model)
            .args(["--threads", &config.threads.to_string()])
            .args(["--slots", &config.slots.to_string()])
            .args(["--ctx-size", &config.ctx_size.to_string()])
            .args(["--mmap", if mmap { "true" } else { "false" }])
            .args([
                "--cpu-repack",
                if config.cpu_repack { "true" } else { "false" },
            ])
            .args([
                "--embeddings",
                if config.embeddings { "true" } else { "false" },
            ])
            .args(config.rpc.iter().flat_map(|r| ["--rpc", r.as_str()]))
            .args(if split.is_empty() {
                Vec::new()
            } else {
                vec!["--split".to_string(), split.join(",")]
            })
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", config.exe.display()))?;
        let pid = child.id().unwrap_or(0);
        let mut stderr = child.stderr.take().map(pass_through);

        let accepted = tokio::select! {
            accepted = tokio::time::timeout(config.startup_timeout, listener.accept()) => accepted,
            status = child.wait() => return Err(describe_exit(status, stderr.take()).await),
        };
        let stream = match accepted {
            Ok(Ok((stream, _))) => stream,
            Ok(Err(e)) => return Err(format!("engine host did not connect: {e}")),
            Err(_) => {
                return Err(format!(
                    "engine host did not start within {:?}",
                    config.startup_timeout
                ))
            }
        };
        let (read_half, write_half) = stream.into_split();
        let mut lines = BufReader::new(read_half).lines();
        let info = match lines.next_line().await {
            Ok(Some(line)) => match serde_json::from_str::<FromHost>(&line) {
                Ok(FromHost::Ready { info }) => info,
                _ => return Err(format!("engine host sent an unexpected greeting: {line}")),
            },
            _ => return Err(describe_exit(child.wait().await, stderr.take()).await),
        };
        // The host opens its second connection right after the first.
        let bulk = match tokio::time::timeout(config.startup_timeout, listener.accept()).await {
            Ok(Ok((stream, _))) => stream
                .into_std()
                .and_then(|s| s.set_nonblocking(false).map(|()| s))
                .map_err(|e| format!("engine host's second connection: {e}"))?,
            Ok(Err(e)) => return Err(format!("engine host's second connection: {e}")),
            Err(_) => return Err("engine host did not open its second connection".into()),
        };
        tracing::info!(pid, "engine host connected");

        let (write_tx, write_rx) = mpsc::channel(WRITE_QUEUE);
        let (bulk_tx, bulk_rx) = mpsc::channel(BULK_QUEUE);
        let (read_tx, read_rx) = mpsc::channel(READ_QUEUE);
        std::thread::Builder::new()
            .name("herd-engine-bulk".into())
            .spawn(move || write_bulk(std::io::BufWriter::new(bulk), bulk_rx))
            .map_err(|e| format!("cannot start a thread: {e}"))?;
        tokio::spawn(write_loop(BufWriter::new(write_half), write_rx));
        let watcher = tokio::spawn(watch(child, lines, read_tx, stderr));
        Ok((
            Self {
                writes: write_tx,
                bulk: bulk_tx,
                reads: read_rx,
                _child: watcher,
                _dir: dir,
            },
            info,
        ))
    }

    /// Queues a command; false when the queue is full or the host is gone.
    pub fn send(&self, msg: ToHost) -> bool {
        let queue = if msg.is_bulk() {
            &self.bulk
        } else {
            &self.writes
        };
        queue.try_send(msg).is_ok()
    }

    pub async fn recv(&mut self) -> ChildEvent {
        self.reads
            .recv()
            .await
            .unwrap_or_else(|| ChildEvent::Exited("engine host connection lost".into()))
    }
}

impl Drop for ChildConn {
    fn drop(&mut self) {
        // Aborting the watcher drops the Child, and kill_on_drop ends the process.
        self._child.abort();
    }
}

async fn write_loop(
    mut out: BufWriter<tokio::net::unix::OwnedWriteHalf>,
    mut rx: mpsc::Receiver<ToHost>,
) {
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(msg) = next {
            let Ok(mut line) = serde_json::to_vec(&msg) else {
                return;
            };
            line.push(b'\n');
            if out.write_all(&line).await.is_err() {
                return;
            }
            next = rx.try_recv().ok();
        }
        if out.flush().await.is_err() {
            return;
        }
    }
}

/// Writes big prompts on the second connection, blocking this thread (not
/// the runtime) on their encoding and on the host's reading; ends with the
/// queue or the connection.
fn write_bulk(
    mut out: std::io::BufWriter<std::os::unix::net::UnixStream>,
    mut rx: mpsc::Receiver<ToHost>,
) {
    use std::io::Write;
    while let Some(msg) = rx.blocking_recv() {
        let written = serde_json::to_writer(&mut out, &msg)
            .is_ok_and(|()| out.write_all(b"\n").and_then(|()| out.flush()).is_ok());
        if !written {
            return;
        }
    }
}

/// Forwards the host's events until its socket closes, then reports how it exited.
async fn watch(
    mut child: Child,
    mut lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    events: mpsc::Sender<ChildEvent>,
    stderr: Option<JoinHandle<Option<String>>>,
) {
    while let Ok(Some(line)) = lines.next_line().await {
        match serde_json::from_str::<FromHost>(&line) {
            Ok(msg) => {
                if events.send(ChildEvent::Message(msg)).await.is_err() {
                    return;
                }
            }
            Err(e) => tracing::warn!("engine host sent a malformed event: {e}"),
        }
    }
    // The socket closed: the process is exiting (or wedged; then it is killed).
    let status = match tokio::time::timeout(std::time::Duration::from_secs(2), child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            let _ = child.kill().await;
            child.wait().await
        }
    };
    let reason = describe_exit(status, stderr).await;
    let _ = events.send(ChildEvent::Exited(reason)).await;
}

/// Copies the host's stderr to ours line by line (its log stays where it
/// was) and returns its last line when the host closes it.
fn pass_through(stderr: ChildStderr) -> JoinHandle<Option<String>> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        let mut last = None;
        while let Ok(Some(line)) = lines.next_line().await {
            let mut out = std::io::stderr().lock();
            let _ = std::io::Write::write_all(&mut out, format!("{line}\n").as_bytes());
            if !line.trim().is_empty() {
                last = Some(line);
            }
        }
        last
    })
}

/// How the host ended, with the last thing it said (a failed load says why).
async fn describe_exit(
    status: std::io::Result<std::process::ExitStatus>,
    stderr: Option<JoinHandle<Option<String>>>,
) -> String {
    use std::os::unix::process::ExitStatusExt;
    // A host killed from outside (SIGKILL, SIGTERM) said nothing about why.
    let killed = matches!(&status, Ok(s) if matches!(s.signal(), Some(9 | 15)));
    let mut reason = match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("engine host exited with status {code}"),
            (None, Some(sig)) => format!("engine host was killed by signal {sig}"),
            _ => "engine host exited".into(),
        },
        Err(e) => format!("engine host could not be waited on: {e}"),
    };
    // The pipe closes when the process is gone; a grandchild holding it open must not stall us.
    let last = match stderr {
        Some(_) if killed => None,
        Some(task) => tokio::time::timeout(std::time::Duration::from_secs(1), task)
            .await
            .ok()
            .and_then(Result::ok)
            .flatten(),
        None => None,
    };
    if let Some(line) = last {
        let line = line.trim().trim_start_matches("herd: ");
        let mut cut = line.len().min(MAX_REASON);
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.push_str(": ");
        reason.push_str(&line[..cut]);
    }
    reason
}
