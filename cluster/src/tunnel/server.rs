//! The responder: accepts tunnels, authenticates them, and only then connects
//! to the local service they name. A connection that fails any check is
//! closed without a byte of answer (past the handshake's own second message).

use super::stream::{transport, Receiver, Sender, TunnelStream};
use super::wire::{self, Status, MAGIC, MAX_HANDSHAKE_FRAME};
use super::{Resolver, TunnelKeys, HANDSHAKE_TIMEOUT, MAX_HANDSHAKES, MAX_TUNNELS, TARGET_TIMEOUT};
use crate::node::NodeId;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::timeout;

/// How much a tunnel server takes on at once, and how long it waits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open tunnels; an authenticated peer past this gets a "busy" answer.
    pub max_tunnels: usize,
    /// Connections not yet authenticated; past this new ones are closed at once.
    pub max_handshakes: usize,
    /// From accepting the connection to the decrypted service name.
    pub handshake_timeout: Duration,
    /// To resolve the service and connect to it.
    pub target_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_tunnels: MAX_TUNNELS,
            max_handshakes: MAX_HANDSHAKES,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            target_timeout: TARGET_TIMEOUT,
        }
    }
}

/// Serves tunnels to this node (`me`) with the default [`Limits`], until
/// the future is dropped (which also closes every tunnel it opened).
pub async fn serve(listener: TcpListener, keys: TunnelKeys, me: NodeId, resolve: Resolver) {
    serve_with_limits(listener, keys, me, resolve, Limits::default()).await;
}

pub async fn serve_with_limits(
    listener: TcpListener,
    keys: TunnelKeys,
    me: NodeId,
    resolve: Resolver,
    limits: Limits,
) {
    if let Some(problem) = wire::id_problem(&me.0) {
        tracing::warn!(node = %me, "this node id {problem}: no tunnel can reach it");
    }
    let responder = Arc::new(Responder {
        handshakes: Arc::new(Semaphore::new(limits.max_handshakes)),
        tunnels: Arc::new(Semaphore::new(limits.max_tunnels)),
        keys,
        me,
        resolve,
        limits,
    });
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let Ok(permit) = responder.handshakes.clone().try_acquire_owned() else {
                        tracing::warn!(%peer, "too many tunnel handshakes in progress; closing");
                        continue;
                    };
                    tasks.spawn(responder.clone().handle(tcp, peer, permit));
                }
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    tracing::warn!("tunnel listener cannot accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
}

pub(crate) struct Responder {
    keys: TunnelKeys,
    me: NodeId,
    resolve: Resolver,
    limits: Limits,
    handshakes: Arc<Semaphore>,
    tunnels: Arc<Semaphore>,
}

/// Why a connection was closed before it was authenticated.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("not a herd tunnel (wrong magic)")]
    NotHerd,
    #[error("malformed tunnel preamble")]
    Malformed,
    #[error("addressed to node {0}, not this one")]
    WrongNode(String),
    #[error(
        "handshake from {initiator} failed (another cluster secret or name, or a replay): {source}"
    )]
    Handshake {
        initiator: String,
        source: snow::Error,
    },
    #[error(
        "service request from {initiator} failed (a replayed handshake, or another key): {source}"
    )]
    Request {
        initiator: String,
        source: super::TunnelError,
    },
    #[error("invalid service name from {0}")]
    BadService(String),
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
}

/// An authenticated peer and the service it asked for.
struct Request {
    initiator: String,
    service: String,
    tx: Sender,
    rx: Receiver,
}

impl Responder {
    async fn handle(
        self: Arc<Self>,
        mut tcp: TcpStream,
        peer: SocketAddr,
        permit: OwnedSemaphorePermit,
    ) {
        let _ = tcp.set_nodelay(true);
        let authenticated =
            timeout(self.limits.handshake_timeout, self.authenticate(&mut tcp)).await;
        drop(permit);
        let req = match authenticated {
            Ok(Ok(req)) => req,
            Ok(Err(refusal)) => {
                match refusal {
                    Refusal::NotHerd | Refusal::Malformed | Refusal::Io(_) => {
                        tracing::debug!(%peer, "tunnel refused: {refusal}");
                    }
                    // Someone speaking herd's protocol without the right key or node: worth a look.
                    Refusal::WrongNode(_)
                    | Refusal::Handshake { .. }
                    | Refusal::Request { .. }
                    | Refusal::BadService(_) => tracing::warn!(%peer, "tunnel refused: {refusal}"),
                }
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "tunnel handshake timed out");
                return;
            }
        };
        let Request {
            initiator,
            service,
            mut tx,
            rx,
        } = req;
        let (status, target) = match self.tunnels.clone().try_acquire_owned() {
            Err(_) => (Status::Busy, None),
            Ok(permit) => match self.open_target(&service).await {
                Ok(target) => (Status::Ok, Some((target, permit))),
                Err(status) => (status, None),
            },
        };
        let answered = match tx.seal(&[status as u8]) {
            Ok(frame) => tcp.write_all(frame).await.map_err(super::TunnelError::from),
            Err(e) => Err(e),
        };
        let Some((target, _permit)) = target else {
            tracing::warn!(%peer, %initiator, %service, "tunnel refused: {status:?}");
            return;
        };
        if let Err(e) = answered {
            tracing::debug!(%peer, %initiator, %service, "tunnel closed before it opened: {e}");
            return;
        }
        tracing::debug!(%peer, %initiator, %service, "tunnel open");
        let (target_r, target_w) = target.into_split();
        let result = TunnelStream {
            tcp,
            tx,
            rx,
            service: service.clone(),
        }
        .splice_halves(target_r, target_w)
        .await;
        tracing::debug!(%peer, %initiator, %service, "tunnel closed: {result:?}");
    }

    /// Preamble, Noise handshake, service name: everything up to proof that
    /// the peer holds the cluster secret now.
    async fn authenticate<S>(&self, tcp: &mut S) -> Result<Request, Refusal>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut magic = [0u8; MAGIC.len()];
        tcp.read_exact(&mut magic).await?;
        if &magic != MAGIC {
            return Err(Refusal::NotHerd);
        }
        let dest = wire::read_id(tcp).await?.ok_or(Refusal::Malformed)?;
        if dest != self.me.0 {
            return Err(Refusal::WrongNode(dest));
        }
        let initiator = wire::read_id(tcp).await?.ok_or(Refusal::Malformed)?;
        // The prologue names this node, not whatever the preamble said: a
        // handshake made for another node cannot succeed here in any case.
        let preamble = wire::preamble(&self.me.0, &initiator);

        let failed = |source| Refusal::Handshake {
            initiator: initiator.clone(),
            source,
        };
        let mut hs = wire::handshake(&self.keys, &preamble, false).map_err(failed)?;
        let mut buf = [0u8; MAX_HANDSHAKE_FRAME];
        let msg1 = wire::read_frame(tcp, MAX_HANDSHAKE_FRAME, &mut buf)
            .await?
            .ok_or(Refusal::Malformed)?;
        hs.read_message(msg1, &mut []).map_err(failed)?;
        let mut msg2 = Vec::with_capacity(2 + MAX_HANDSHAKE_FRAME);
        wire::push_handshake_frame(&mut hs, &mut msg2).map_err(failed)?;
        tcp.write_all(&msg2).await?;
        let (tx, mut rx) = transport(hs.into_stateless_transport_mode().map_err(failed)?);

        let service = match rx.recv(tcp).await {
            Ok(Some(name)) => std::str::from_utf8(name)
                .ok()
                .filter(|s| wire::service_problem(s).is_none())
                .map(str::to_string)
                .ok_or(Refusal::BadService(initiator.clone()))?,
            Ok(None) => return Err(Refusal::Malformed),
            Err(source) => return Err(Refusal::Request { initiator, source }),
        };
        Ok(Request {
            initiator,
            service,
            tx,
            rx,
        })
    }

    /// The fuzz harness's view of a connection that sends `data` and no
    /// more: whether it authenticates (see `crate::fuzz_targets`).
    pub(crate) fn authenticates(keys: TunnelKeys, me: NodeId, data: &[u8]) -> bool {
        let responder = Self {
            keys,
            me,
            resolve: Arc::new(|_| Box::pin(async { None })),
            limits: Limits::default(),
            handshakes: Arc::new(Semaphore::new(1)),
            tunnels: Arc::new(Semaphore::new(1)),
        };
        let mut conn = tokio::io::join(data, tokio::io::sink());
        futures::executor::block_on(responder.authenticate(&mut conn)).is_ok()
    }

    /// Resolves the service and connects to it, on loopback only.
    async fn open_target(&self, service: &str) -> Result<TcpStream, Status> {
        let connect = async {
            let addr = (self.resolve)(service)
                .await
                .ok_or(Status::UnknownService)?;
            if !addr.ip().is_loopback() {
                // The tunnel must not become a way out of this host.
                tracing::warn!(%service, %addr, "service resolved to a non-loopback address; refused");
                return Err(Status::UnknownService);
            }
            let target = TcpStream::connect(addr).await.map_err(|e| {
                tracing::warn!(%service, %addr, "cannot connect to the tunnel's service: {e}");
                Status::TargetRefused
            })?;
            let _ = target.set_nodelay(true);
            Ok(target)
        };
        timeout(self.limits.target_timeout, connect)
            .await
            .unwrap_or(Err(Status::TargetRefused))
    }
}
