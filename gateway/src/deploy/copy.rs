//! Weights cross the network once: a node that must head a deployment but
//! lacks its model file copies it from a peer whose store has it, over the
//! authenticated cluster channel, never from the internet. The copy is
//! written beside the store as `.NAME.part`, resumes from what is already
//! there, is checked against the sha256 the leader put in the plan, and only
//! then renamed into the store. Progress is logged and shown in `/cluster`.

use futures::StreamExt;
use herd_cluster::peer_api::LiveNode;
use herd_cluster::store::ModelStore;
use herd_cluster::{Agent, NodeId};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// `GET /_herd/v1/models/NAME/from/OFFSET`: the path (and so the offset) is
/// covered by the request's MAC.
pub const MODELS_PREFIX: &str = "/_herd/v1/models/";
/// Total size of the file, in the answer's headers.
pub const SIZE_HEADER: &str = "x-herd-size";
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// A copy in progress (or failed), as `/cluster` shows it.
#[derive(Clone)]
pub struct Copy {
    status: Arc<Mutex<String>>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl Drop for Copy {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1 {
            self.task.abort();
        }
    }
}

impl Copy {
    /// Starts copying `name` from one of the live peers that advertise it.
    pub fn start(
        agent: &Agent,
        store: &ModelStore,
        name: &str,
        sha256: Option<String>,
        nodes: &[LiveNode],
    ) -> Result<Self, String> {
        let me = agent.node_id().clone();
        let mut sources: Vec<&LiveNode> = nodes
            .iter()
            .filter(|n| n.info.id != me && n.info.models.iter().any(|m| m == name))
            .collect();
        sources.sort_by(|a, b| a.info.id.cmp(&b.info.id));
        let source = sources
            .first()
            .ok_or_else(|| format!("no live node has {name:?} in its model store"))?;
        let client = agent
            .peer_client()
            .ok_or("copying a model needs a cluster secret")?;
        let (Some(partial), Some(dest)) = (
            store.partial_path(name),
            store.dir().join(name).to_str().map(PathBuf::from),
        ) else {
            return Err(format!("{name:?} is not a valid model file name"));
        };
        let status = Arc::new(Mutex::new(format!(
            "copying {name} from {}",
            source.info.name
        )));
        let from_name = source.info.name.clone();
        let job = Fetch {
            client,
            addr: source.contact,
            from: source.info.id.clone(),
            name: name.to_string(),
            partial,
            dest,
            sha256,
            status: status.clone(),
        };
        let (name, s) = (name.to_string(), status.clone());
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let result = job.run().await;
            let text = match result {
                Ok(bytes) => {
                    let secs = started.elapsed().as_secs_f64();
                    tracing::info!(model = %name, from = %from_name, bytes, secs, "model copied from a peer");
                    format!("copied {name} from {from_name}: {bytes} bytes in {secs:.1} s")
                }
                Err(e) => {
                    tracing::warn!(model = %name, from = %from_name, "model copy failed: {e}");
                    format!("copying {name} from {from_name} failed: {e}")
                }
            };
            if let Ok(mut st) = s.lock() {
                *st = text;
            }
        });
        Ok(Self {
            status,
            task: Arc::new(task),
        })
    }

    pub fn status(&self) -> String {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// One copy: from `from` at `addr` into `partial`, checked, then renamed to `dest`.
struct Fetch {
    client: herd_cluster::client::PeerClient,
    addr: std::net::SocketAddr,
    from: NodeId,
    name: String,
    partial: PathBuf,
    dest: PathBuf,
    sha256: Option<String>,
    status: Arc<Mutex<String>>,
}

impl Fetch {
    /// Copies (resuming what `partial` holds); returns the bytes received.
    async fn run(self) -> Result<u64, String> {
        let Self {
            client,
            addr,
            from,
            name,
            partial,
            dest,
            sha256,
            status,
        } = self;
        let (name, partial, dest, from) = (name.as_str(), partial.as_path(), dest.as_path(), &from);
        let sha256 = sha256.as_deref();
        let offset = tokio::fs::metadata(partial)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        let path = format!("{MODELS_PREFIX}{name}/from/{offset}");
        let resp = client
            .open_stream(
                addr,
                from,
                reqwest::Method::GET,
                &path,
                bytes::Bytes::new(),
                &[],
            )
            .await
            .map_err(|e| e.to_string())?;
        if resp.status() != 200 {
            return Err(format!("the peer answered {}", resp.status()));
        }
        let total: u64 = resp
            .headers()
            .get(SIZE_HEADER)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .ok_or("the peer did not say the file's size")?;
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(partial)
            .await
            .map_err(|e| format!("cannot write {}: {e}", partial.display()))?;
        let mut done = offset;
        let mut received = 0u64;
        let mut last_log = Instant::now();
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk
                .map_err(|e| format!("the transfer broke off at {done} of {total} bytes: {e}"))?;
            file.write_all(&chunk)
                .await
                .map_err(|e| format!("cannot write {}: {e}", partial.display()))?;
            done += chunk.len() as u64;
            received += chunk.len() as u64;
            if last_log.elapsed() >= PROGRESS_EVERY {
                last_log = Instant::now();
                let pct = done as f64 * 100.0 / total.max(1) as f64;
                tracing::info!(model = %name, done, total, "copying model: {pct:.0} %");
                if let Ok(mut s) = status.lock() {
                    *s = format!("copying {name}: {pct:.0} % of {total} bytes");
                }
            }
        }
        file.flush().await.map_err(|e| e.to_string())?;
        drop(file);
        if done != total {
            return Err(format!("got {done} of {total} bytes; will resume"));
        }
        let path = partial.to_path_buf();
        let digest = tokio::task::spawn_blocking(move || sha256_file(&path))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot read the copy back: {e}"))?;
        if let Some(want) = sha256 {
            if digest != want {
                let _ = tokio::fs::remove_file(partial).await;
                return Err(format!(
                    "sha256 mismatch: got {digest}, the plan says {want}; the copy was deleted"
                ));
            }
        }
        tokio::fs::rename(partial, dest)
            .await
            .map_err(|e| format!("cannot move the copy into the store: {e}"))?;
        Ok(received)
    }
}

/// Hex sha256 of a file, read in 1 MiB blocks.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The serving side: `GET /_herd/v1/models/NAME/from/OFFSET` streams the
/// file from the store, from that offset, to a peer that proves the secret.
pub async fn serve_model(
    axum::extract::State((agent, store)): axum::extract::State<(Agent, ModelStore)>,
    req: axum::extract::Request,
) -> axum::response::Response {
    use axum::body::Body;
    use axum::http::StatusCode;
    let (parts, _) = req.into_parts();
    let path = parts.uri.path().to_string();
    let peer = match agent.verify_peer(parts.method.as_str(), &path, &parts.headers, b"") {
        Ok(p) => p,
        Err(answer) => return answer.map(Body::from),
    };
    let refuse = |status, msg: String| agent.refusal(&peer, status, msg).map(Body::from);
    let Some((name, offset)) = path
        .strip_prefix(MODELS_PREFIX)
        .and_then(|rest| rest.split_once("/from/"))
        .and_then(|(n, o)| Some((n.to_string(), o.parse::<u64>().ok()?)))
    else {
        return refuse(StatusCode::NOT_FOUND, format!("bad model path {path}"));
    };
    let Some(file_path) = store.path(&name) else {
        return refuse(
            StatusCode::NOT_FOUND,
            format!("no {name:?} in this node's store"),
        );
    };
    let opened = async {
        let mut file = tokio::fs::File::open(&file_path).await?;
        let total = file.metadata().await?.len();
        tokio::io::AsyncSeekExt::seek(&mut file, std::io::SeekFrom::Start(offset.min(total)))
            .await?;
        Ok::<_, std::io::Error>((file, total))
    }
    .await;
    let (file, total) = match opened {
        Ok(x) => x,
        Err(e) => {
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot read {name}: {e}"),
            )
        }
    };
    tracing::info!(model = %name, peer = %peer.node, offset, total, "sending a model file to a peer");
    let mut resp = axum::response::Response::new(Body::from_stream(
        tokio_util::io::ReaderStream::with_capacity(file, 1 << 20),
    ));
    if let Ok(v) = axum::http::HeaderValue::from_str(&total.to_string()) {
        resp.headers_mut().insert(SIZE_HEADER, v);
    }
    agent.sign_head(&peer, StatusCode::OK, resp.headers_mut());
    resp
}
