//! The initiator: opens a tunnel to a service on another node, and forwards
//! a loopback listener's connections (where the head's llama.cpp dials its
//! RPC servers) through tunnels.

use super::stream::{transport, TunnelStream};
use super::wire::{self, Status, MAX_HANDSHAKE_FRAME};
use super::{TunnelError, TunnelKeys, HANDSHAKE_TIMEOUT, MAX_TUNNELS, TARGET_TIMEOUT};
use crate::node::NodeId;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::timeout;

/// Opens a tunnel from `me` to `service` on node `dest`, whose tunnel
/// listener is `addr`. The service is connected when this returns.
pub async fn connect(
    addr: SocketAddr,
    keys: &TunnelKeys,
    me: &NodeId,
    dest: &NodeId,
    service: &str,
) -> Result<TunnelStream, TunnelError> {
    let invalid = |field, value: &str, problem| TunnelError::Invalid {
        field,
        value: value.to_string(),
        problem,
    };
    if let Some(problem) = wire::id_problem(&me.0) {
        return Err(invalid("source node id", &me.0, problem));
    }
    if let Some(problem) = wire::id_problem(&dest.0) {
        return Err(invalid("destination node id", &dest.0, problem));
    }
    if let Some(problem) = wire::service_problem(service) {
        return Err(invalid("service name", service, problem));
    }
    let node = || dest.0.clone();
    let tcp = match timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(source)) => {
            return Err(TunnelError::Unreachable {
                node: node(),
                addr,
                source,
            })
        }
        Err(_) => {
            let source = std::io::Error::new(ErrorKind::TimedOut, "connection timed out");
            return Err(TunnelError::Unreachable {
                node: node(),
                addr,
                source,
            });
        }
    };
    tcp.set_nodelay(true)?;
    let after = HANDSHAKE_TIMEOUT + TARGET_TIMEOUT;
    timeout(after, open(tcp, addr, keys, me, dest, service))
        .await
        .unwrap_or(Err(TunnelError::Timeout {
            node: node(),
            addr,
            after,
        }))
}

async fn open(
    mut tcp: TcpStream,
    addr: SocketAddr,
    keys: &TunnelKeys,
    me: &NodeId,
    dest: &NodeId,
    service: &str,
) -> Result<TunnelStream, TunnelError> {
    let failed = |problem: String| TunnelError::HandshakeFailed {
        node: dest.0.clone(),
        addr,
        problem,
    };
    let refused = || TunnelError::Refused {
        node: dest.0.clone(),
        addr,
    };

    // Preamble and first handshake message in one write: one round trip.
    let mut out = wire::preamble(&dest.0, &me.0);
    let mut hs = wire::handshake(keys, &out, true).map_err(|e| failed(e.to_string()))?;
    wire::push_handshake_frame(&mut hs, &mut out).map_err(|e| failed(e.to_string()))?;
    if let Err(e) = tcp.write_all(&out).await {
        return Err(if is_closed(&e) { refused() } else { e.into() });
    }

    let mut buf = [0u8; MAX_HANDSHAKE_FRAME];
    let msg2 = match wire::read_frame(&mut tcp, MAX_HANDSHAKE_FRAME, &mut buf).await {
        Ok(Some(msg2)) => msg2,
        // The responder refuses by closing; with our bytes unread that is a reset.
        Ok(None) => return Err(refused()),
        Err(e) if is_closed(&e) => return Err(refused()),
        Err(e) => return Err(e.into()),
    };
    hs.read_message(msg2, &mut [])
        .map_err(|e| failed(format!("the answer does not authenticate: {e}")))?;
    let noise = hs
        .into_stateless_transport_mode()
        .map_err(|e| failed(e.to_string()))?;
    let (mut tx, mut rx) = transport(noise);

    tcp.write_all(tx.seal(service.as_bytes())?).await?;
    let status = match rx.recv(&mut tcp).await {
        Ok(Some(&[b])) => Status::from_byte(b),
        Ok(Some(_)) => None,
        Ok(None) => return Err(failed("closed before answering the service request".into())),
        Err(TunnelError::Io(e)) if is_closed(&e) => {
            return Err(failed("closed before answering the service request".into()))
        }
        Err(e) => return Err(e),
    };
    let node = dest.0.clone();
    let service = service.to_string();
    match status {
        Some(Status::Ok) => Ok(TunnelStream {
            tcp,
            tx,
            rx,
            service,
        }),
        Some(Status::UnknownService) => Err(TunnelError::UnknownService { node, service }),
        Some(Status::TargetRefused) => Err(TunnelError::TargetRefused { node, service }),
        Some(Status::Busy) => Err(TunnelError::Busy { node }),
        None => Err(failed("unknown answer to the service request".into())),
    }
}

fn is_closed(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::UnexpectedEof
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
    )
}

/// Accepts connections on `local` (a loopback listener standing in for a
/// remote RPC server) and carries each through its own tunnel to `service`
/// on `dest`, until the future is dropped (which closes them all).
pub async fn forward(
    local: TcpListener,
    addr: SocketAddr,
    keys: TunnelKeys,
    me: NodeId,
    dest: NodeId,
    service: String,
) {
    let route = Arc::new(Route {
        addr,
        keys,
        me,
        dest,
        service,
    });
    let slots = Arc::new(Semaphore::new(MAX_TUNNELS));
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            accepted = local.accept() => match accepted {
                Ok((conn, _)) => {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        tracing::warn!(service = %route.service, "too many forwarded connections; closing");
                        continue;
                    };
                    let route = route.clone();
                    tasks.spawn(async move {
                        route.carry(conn).await;
                        drop(slot);
                    });
                }
                Err(e) => {
                    tracing::warn!("tunnel forwarder cannot accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
}

/// Where [`forward`] sends its connections.
struct Route {
    addr: SocketAddr,
    keys: TunnelKeys,
    me: NodeId,
    dest: NodeId,
    service: String,
}

impl Route {
    async fn carry(&self, conn: TcpStream) {
        let _ = conn.set_nodelay(true);
        let service = &self.service;
        let tunnel = match connect(self.addr, &self.keys, &self.me, &self.dest, service).await {
            Ok(tunnel) => tunnel,
            Err(e) => {
                // Closing the local connection is the answer its client understands.
                tracing::warn!(%service, "cannot open a tunnel: {e}");
                return;
            }
        };
        let (r, w) = conn.into_split();
        if let Err(e) = tunnel.splice_halves(r, w).await {
            tracing::debug!(%service, "forwarded connection ended: {e}");
        }
    }
}
