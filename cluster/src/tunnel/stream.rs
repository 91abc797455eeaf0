//! An open tunnel: Noise transport messages in both directions, and the
//! splice that carries a local connection's bytes through it (and logs, once,
//! how many bytes it carried).

use super::wire::{read_frame, MAX_CHUNK, MAX_FRAME};
use super::TunnelError;
use snow::StatelessTransportState;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// Seals one direction's messages. The two directions have separate keys and
/// counters, so each can run in its own future without locking.
pub(super) struct Sender {
    noise: Arc<StatelessTransportState>,
    nonce: u64,
    frame: Vec<u8>,
}

/// Opens the other direction's messages, in order.
pub(super) struct Receiver {
    noise: Arc<StatelessTransportState>,
    nonce: u64,
    frame: Vec<u8>,
    plain: Vec<u8>,
}

/// Both directions of a finished handshake.
pub(super) fn transport(noise: StatelessTransportState) -> (Sender, Receiver) {
    let noise = Arc::new(noise);
    let sender = Sender {
        noise: noise.clone(),
        nonce: 0,
        frame: vec![0; 2 + MAX_FRAME],
    };
    let receiver = Receiver {
        noise,
        nonce: 0,
        frame: vec![0; MAX_FRAME],
        plain: vec![0; MAX_FRAME],
    };
    (sender, receiver)
}

impl Sender {
    /// Encrypts `plain` (at most [`MAX_CHUNK`] bytes) into a frame ready to write.
    pub(super) fn seal(&mut self, plain: &[u8]) -> Result<&[u8], TunnelError> {
        let len = self
            .noise
            .write_message(self.nonce, plain, &mut self.frame[2..])
            .map_err(TunnelError::Noise)?;
        self.nonce += 1;
        let header = u16::try_from(len)
            .map_err(|_| TunnelError::Noise(snow::Error::Input))?
            .to_be_bytes();
        self.frame[..2].copy_from_slice(&header);
        Ok(&self.frame[..2 + len])
    }
}

impl Receiver {
    /// The next message's plaintext, `None` once the peer closed cleanly.
    pub(super) async fn recv<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
    ) -> Result<Option<&[u8]>, TunnelError> {
        let Some(msg) = read_frame(r, MAX_FRAME, &mut self.frame).await? else {
            return Ok(None);
        };
        let len = self
            .noise
            .read_message(self.nonce, msg, &mut self.plain)
            .map_err(TunnelError::Noise)?;
        self.nonce += 1;
        Ok(Some(&self.plain[..len]))
    }
}

/// An authenticated tunnel whose service connection is open on the far node.
pub struct TunnelStream {
    pub(super) tcp: TcpStream,
    pub(super) tx: Sender,
    pub(super) rx: Receiver,
    /// The service carried, for the log line when the tunnel closes.
    pub(super) service: String,
}

impl std::fmt::Debug for TunnelStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelStream")
            .field("peer", &self.tcp.peer_addr().ok())
            .finish_non_exhaustive()
    }
}

impl TunnelStream {
    /// The far node's tunnel address.
    pub fn peer_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.peer_addr()
    }

    /// Carries `local`'s bytes through the tunnel both ways until either side
    /// ends (EOF or error); then both are closed. Returns `Ok` after a clean EOF.
    pub async fn splice<S: AsyncRead + AsyncWrite>(self, local: S) -> Result<(), TunnelError> {
        let (r, w) = tokio::io::split(local);
        self.splice_halves(r, w).await
    }

    /// [`splice`](Self::splice) with the local connection already split (no
    /// lock between the halves, e.g. [`TcpStream::into_split`]).
    pub async fn splice_halves<R, W>(self, local_r: R, local_w: W) -> Result<(), TunnelError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let traffic = Traffic::new(self.tcp.peer_addr().ok(), self.service);
        let (tunnel_r, tunnel_w) = self.tcp.into_split();
        // A half-close ends both directions: llama.cpp RPC never half-closes,
        // and a tunnel must not outlive either of its ends.
        tokio::select! {
            r = outbound(local_r, tunnel_w, self.tx, &traffic.sent) => r,
            r = inbound(tunnel_r, local_w, self.rx, &traffic.received) => r,
        }
    }
}

/// Bytes (plaintext, as the service sent them) and messages one way.
#[derive(Default)]
struct Count {
    bytes: AtomicU64,
    messages: AtomicU64,
}

impl Count {
    fn add(&self, n: usize) {
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        self.messages.fetch_add(1, Ordering::Relaxed);
    }
}

/// A splice's traffic, logged once when it ends, however it ends (an EOF, an
/// error, or the future dropped with the node shutting down): a model load's
/// weights and a decode's per-token round trips can be read from the log
/// without any per-message logging. Each message also costs 18 bytes on the
/// wire (length and AEAD tag).
struct Traffic {
    peer: Option<SocketAddr>,
    service: String,
    opened: Instant,
    /// Local service → tunnel.
    sent: Count,
    /// Tunnel → local service.
    received: Count,
}

impl Traffic {
    fn new(peer: Option<SocketAddr>, service: String) -> Self {
        Self {
            peer,
            service,
            opened: Instant::now(),
            sent: Count::default(),
            received: Count::default(),
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        tracing::info!(
            peer = %self.peer.map_or_else(|| "?".to_string(), |a| a.to_string()),
            service = %self.service,
            sent_bytes = load(&self.sent.bytes),
            sent_messages = load(&self.sent.messages),
            received_bytes = load(&self.received.bytes),
            received_messages = load(&self.received.messages),
            secs = format_args!("{:.3}", self.opened.elapsed().as_secs_f64()),
            "tunnel closed"
        );
    }
}

/// Sends each read at once: RPC round trips are small and latency-bound.
async fn outbound<R: AsyncRead + Unpin>(
    mut local: R,
    mut tunnel: OwnedWriteHalf,
    mut tx: Sender,
    sent: &Count,
) -> Result<(), TunnelError> {
    let mut buf = vec![0u8; MAX_CHUNK];
    loop {
        let n = local.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        tunnel.write_all(tx.seal(&buf[..n])?).await?;
        sent.add(n);
    }
}

async fn inbound<W: AsyncWrite + Unpin>(
    tunnel: OwnedReadHalf,
    mut local: W,
    mut rx: Receiver,
    received: &Count,
) -> Result<(), TunnelError> {
    // Buffered: a frame's length and body then usually cost one read.
    let mut tunnel = BufReader::with_capacity(2 + MAX_FRAME, tunnel);
    while let Some(plain) = rx.recv(&mut tunnel).await? {
        received.add(plain.len());
        local.write_all(plain).await?;
        local.flush().await?;
    }
    Ok(())
}
