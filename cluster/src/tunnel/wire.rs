//! The tunnel's bytes on the wire: the cleartext preamble, the Noise
//! parameters and prologue, length-prefixed frames and the status byte.

use super::TunnelKeys;
use snow::{Builder, HandshakeState};
use tokio::io::{AsyncRead, AsyncReadExt};

/// First bytes of every tunnel connection (and the protocol version).
pub(super) const MAGIC: &[u8; 8] = b"HERDTUN1";
/// Longest node id a preamble carries.
pub const MAX_ID_LEN: usize = 64;
/// Longest service name an initiator may ask for.
pub const MAX_SERVICE_LEN: usize = 128;
const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";
/// Largest Noise message, hence largest frame body.
pub(super) const MAX_FRAME: usize = 65_535;
/// Largest plaintext in one transport message (the AEAD tag takes 16 bytes).
pub(super) const MAX_CHUNK: usize = MAX_FRAME - 16;
/// NNpsk0's handshake messages are 48 bytes (a key and an empty payload's tag).
pub(super) const MAX_HANDSHAKE_FRAME: usize = 64;

/// The responder's one-byte answer to the service request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
    Ok = 0,
    UnknownService = 1,
    TargetRefused = 2,
    Busy = 3,
}

impl Status {
    pub(super) fn from_byte(b: u8) -> Option<Self> {
        [
            Self::Ok,
            Self::UnknownService,
            Self::TargetRefused,
            Self::Busy,
        ]
        .into_iter()
        .find(|s| *s as u8 == b)
    }
}

/// Why a node id or service name cannot go on the wire.
pub(super) fn id_problem(id: &str) -> Option<&'static str> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        Some("must be 1 to 64 characters")
    } else if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        Some("may hold only ASCII letters, digits, '-', '_' and '.'")
    } else {
        None
    }
}

pub(super) fn service_problem(service: &str) -> Option<&'static str> {
    if service.is_empty() || service.len() > MAX_SERVICE_LEN {
        Some("must be 1 to 128 characters")
    } else if !service.bytes().all(|b| b.is_ascii_graphic()) {
        Some("may hold only printable ASCII without spaces")
    } else {
        None
    }
}

/// The initiator's cleartext preamble; both ids must be valid (see [`id_problem`]).
pub(super) fn preamble(dest: &str, me: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC.len() + 2 + dest.len() + me.len());
    out.extend_from_slice(MAGIC);
    for id in [dest, me] {
        out.push(u8::try_from(id.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(id.as_bytes());
    }
    out
}

/// Reads a length byte and that many bytes of a node id (`None`: not a valid id).
pub(super) async fn read_id<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<String>> {
    let len = usize::from(r.read_u8().await?);
    if len == 0 || len > MAX_ID_LEN {
        return Ok(None);
    }
    let mut id = vec![0; len];
    r.read_exact(&mut id).await?;
    Ok(String::from_utf8(id)
        .ok()
        .filter(|id| id_problem(id).is_none()))
}

/// A Noise handshake bound to the exact preamble and the cluster name.
pub(super) fn handshake(
    keys: &TunnelKeys,
    preamble: &[u8],
    initiator: bool,
) -> Result<HandshakeState, snow::Error> {
    let mut prologue = Vec::with_capacity(preamble.len() + keys.cluster.len());
    prologue.extend_from_slice(preamble);
    prologue.extend_from_slice(keys.cluster.as_bytes());
    let builder = Builder::new(NOISE_PARAMS.parse()?)
        .psk(0, &keys.psk)
        .prologue(&prologue);
    if initiator {
        builder.build_initiator()
    } else {
        builder.build_responder()
    }
}

/// Appends one handshake message (with an empty payload) as a frame.
pub(super) fn push_handshake_frame(
    hs: &mut HandshakeState,
    out: &mut Vec<u8>,
) -> Result<(), snow::Error> {
    let mut msg = [0u8; MAX_HANDSHAKE_FRAME];
    let len = hs.write_message(&[], &mut msg)?;
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(&msg[..len]);
    Ok(())
}

/// Reads one frame into `buf`: `None` on a clean EOF before it, an
/// `InvalidData` error when it is longer than `max`.
pub(super) async fn read_frame<'b, R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
    buf: &'b mut [u8],
) -> std::io::Result<Option<&'b [u8]>> {
    let mut len = [0u8; 2];
    if r.read(&mut len[..1]).await? == 0 {
        return Ok(None);
    }
    r.read_exact(&mut len[1..]).await?;
    let len = usize::from(u16::from_be_bytes(len));
    if len > max || len > buf.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a {len}-byte tunnel frame (at most {max} expected here)"),
        ));
    }
    r.read_exact(&mut buf[..len]).await?;
    Ok(Some(&buf[..len]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preamble_is_magic_then_length_prefixed_ids() {
        let p = preamble("node-b", "a");
        assert_eq!(&p[..8], b"HERDTUN1");
        assert_eq!(&p[8..], b"\x06node-b\x01a");
    }

    #[tokio::test]
    async fn read_id_accepts_what_preamble_writes_and_refuses_the_rest() {
        let mut r: &[u8] = b"\x05node1rest";
        assert_eq!(
            read_id(&mut r).await.ok().flatten().as_deref(),
            Some("node1")
        );
        assert_eq!(r, b"rest");
        for bad in [&b"\x00"[..], b"\x41aaaa", b"\x03a b", b"\x02\xff\xfe"] {
            let mut r = bad;
            assert!(matches!(read_id(&mut r).await, Ok(None) | Err(_)));
        }
    }

    #[test]
    fn ids_and_services_are_capped_and_printable() {
        assert_eq!(id_problem(&"a".repeat(64)), None);
        assert!(id_problem(&"a".repeat(65)).is_some());
        assert!(id_problem("").is_some());
        assert!(id_problem("a/b").is_some());
        assert_eq!(service_problem("rpc/smollm-135m.q8"), None);
        assert!(service_problem("rpc smollm").is_some());
        assert!(service_problem(&"s".repeat(129)).is_some());
        assert!(service_problem("rpc/é").is_some());
    }

    #[test]
    fn status_bytes_round_trip() {
        for s in [
            Status::Ok,
            Status::UnknownService,
            Status::TargetRefused,
            Status::Busy,
        ] {
            assert_eq!(Status::from_byte(s as u8), Some(s));
        }
        assert_eq!(Status::from_byte(200), None);
    }

    #[tokio::test]
    async fn frames_over_the_limit_are_refused() {
        let mut buf = [0u8; 64];
        let mut r: &[u8] = b"\x00\x03abc";
        assert_eq!(
            read_frame(&mut r, 64, &mut buf).await.ok().flatten(),
            Some(&b"abc"[..])
        );
        let mut r: &[u8] = b"";
        assert!(matches!(read_frame(&mut r, 64, &mut buf).await, Ok(None)));
        let mut r: &[u8] = b"\x01\x00abc";
        assert!(read_frame(&mut r, 64, &mut buf).await.is_err());
    }
}
