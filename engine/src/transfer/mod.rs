//! The transfer: QUIC endpoints with pinned mutual TLS, framed streams, the
//! serving side and the fetching side.

pub mod client;
pub mod server;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hafill_protocol::{frame, types, BlockHeader, DecodeError, ErrorCode, Message, ALPN};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

use crate::config::Config;
use crate::identity::{self, Identity, PinnedClients, PinnedServer};

/// Largest request frame a server reads (requests are small).
pub const MAX_REQUEST_FRAME: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
    #[error("QUIC setup: {0}")]
    Setup(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to {peer} at {addr}: {reason}")]
    Connect {
        peer: String,
        addr: SocketAddr,
        reason: String,
    },
    #[error("connection to {peer}: {0}", peer = .1)]
    Connection(quinn::ConnectionError, String),
    #[error("stream: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("stream: {0}")]
    Read(#[from] quinn::ReadExactError),
    #[error("stream closed: {0}")]
    Closed(#[from] quinn::ClosedStream),
    #[error("the peer sent a bad frame: {0}")]
    Decode(#[from] DecodeError),
    #[error("the peer answered {code:?}: {message}")]
    Remote { code: ErrorCode, message: String },
    #[error("the peer broke the protocol: {0}")]
    Protocol(String),
    #[error("timed out: {0}")]
    Timeout(&'static str),
}

/// Transport settings sized for bulk transfer: wide flow-control windows,
/// keep-alives so an idle link is noticed, a bounded idle timeout so a dead
/// peer is given up on.
pub fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(256u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    t.stream_receive_window((16u32 << 20).into());
    t.receive_window((64u32 << 20).into());
    t.send_window(64 << 20);
    t.keep_alive_interval(Some(Duration::from_secs(3)));
    if let Ok(idle) = Duration::from_secs(20).try_into() {
        t.max_idle_timeout(Some(idle));
    }
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(16_384);
    t.mtu_discovery_config(Some(mtu));
    t
}

fn endpoint_config() -> quinn::EndpointConfig {
    let mut c = quinn::EndpointConfig::default();
    let _ = c.max_udp_payload_size(16_384 + 64);
    c
}

/// A server endpoint: requires a client certificate whose ID is a peer of
/// `config`; returns the endpoint and the ID-to-peer map.
pub fn server_endpoint(
    config: &Config,
    me: &Identity,
) -> Result<(quinn::Endpoint, Arc<HashMap<String, String>>), TransferError> {
    let provider = identity::provider();
    let allowed: HashMap<String, String> = config
        .peers
        .iter()
        .map(|p| (p.id.clone(), p.name.clone()))
        .collect();
    let verifier = Arc::new(PinnedClients {
        allowed: allowed.clone(),
        provider: provider.clone(),
    });
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![me.cert.clone()], me.key.clone_key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto =
        QuicServerConfig::try_from(tls).map_err(|e| TransferError::Setup(e.to_string()))?;
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    sc.transport_config(Arc::new(transport_config()));
    let socket =
        std::net::UdpSocket::bind(config.listen).map_err(|source| TransferError::Listen {
            addr: config.listen,
            source,
        })?;
    let runtime =
        quinn::default_runtime().ok_or_else(|| TransferError::Setup("no async runtime".into()))?;
    let ep =
        quinn::Endpoint::new(endpoint_config(), Some(sc), socket, runtime).map_err(|source| {
            TransferError::Listen {
                addr: config.listen,
                source,
            }
        })?;
    Ok((ep, Arc::new(allowed)))
}

/// A client endpoint on an ephemeral port of the address family of `near`.
pub fn client_endpoint(near: SocketAddr) -> Result<quinn::Endpoint, TransferError> {
    let bind: SocketAddr = if near.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    }
    .parse()
    .map_err(|_| TransferError::Setup("bind address".into()))?;
    let socket = std::net::UdpSocket::bind(bind)
        .map_err(|source| TransferError::Listen { addr: bind, source })?;
    let runtime =
        quinn::default_runtime().ok_or_else(|| TransferError::Setup("no async runtime".into()))?;
    quinn::Endpoint::new(endpoint_config(), None, socket, runtime)
        .map_err(|source| TransferError::Listen { addr: bind, source })
}

/// Client TLS for one peer: its ID pinned, our certificate presented.
pub fn client_config(
    me: &Identity,
    peer: &str,
    peer_id: &str,
) -> Result<quinn::ClientConfig, TransferError> {
    let provider = identity::provider();
    let verifier = Arc::new(PinnedServer {
        peer: peer.to_string(),
        expected_id: peer_id.to_string(),
        provider: provider.clone(),
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![me.cert.clone()], me.key.clone_key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto =
        QuicClientConfig::try_from(tls).map_err(|e| TransferError::Setup(e.to_string()))?;
    let mut cc = quinn::ClientConfig::new(Arc::new(crypto));
    cc.transport_config(Arc::new(transport_config()));
    Ok(cc)
}

/// Reads one frame; `Ok(None)` when the stream ended cleanly before it.
pub async fn read_message(
    recv: &mut quinn::RecvStream,
    max: usize,
) -> Result<Option<Message>, TransferError> {
    let mut prefix = [0u8; 4];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let n = frame::frame_len(prefix).map_err(DecodeError::from)?;
    if n > max {
        return Err(TransferError::Protocol(format!(
            "frame of {n} bytes exceeds the {max}-byte limit here"
        )));
    }
    let mut body = vec![0u8; n];
    recv.read_exact(&mut body).await?;
    Ok(Some(Message::decode(body[0], &body[1..])?))
}

/// A frame as the receiver of blocks reads it: block data in a buffer of
/// its own (no copy out of a frame), anything else as a message.
#[derive(Debug)]
pub enum Incoming {
    Block(BlockHeader, Vec<u8>),
    Message(Message),
}

/// Reads one frame like [`read_message`], but a `Block`'s data goes straight
/// into its own buffer.
pub async fn read_incoming(
    recv: &mut quinn::RecvStream,
    max: usize,
) -> Result<Option<Incoming>, TransferError> {
    let mut prefix = [0u8; 5];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let n = frame::frame_len([prefix[0], prefix[1], prefix[2], prefix[3]])
        .map_err(DecodeError::from)?;
    if n > max {
        return Err(TransferError::Protocol(format!(
            "frame of {n} bytes exceeds the {max}-byte limit here"
        )));
    }
    let ty = prefix[4];
    if ty == types::BLOCK && n >= 10 {
        let mut h = [0u8; 9];
        recv.read_exact(&mut h).await?;
        let header = BlockHeader::decode(n, &h)?;
        let mut data = vec![0u8; header.data_len as usize];
        recv.read_exact(&mut data).await?;
        return Ok(Some(Incoming::Block(header, data)));
    }
    let mut body = vec![0u8; n - 1];
    recv.read_exact(&mut body).await?;
    Ok(Some(Incoming::Message(Message::decode(ty, &body)?)))
}

/// Sends a block without copying its data into a frame.
pub async fn write_block(
    send: &mut quinn::SendStream,
    header: BlockHeader,
    data: bytes::Bytes,
) -> Result<(), TransferError> {
    let mut chunks = [bytes::Bytes::copy_from_slice(&header.encode()), data];
    send.write_all_chunks(&mut chunks).await?;
    Ok(())
}

pub async fn write_message(send: &mut quinn::SendStream, m: &Message) -> Result<(), TransferError> {
    send.write_all(&m.to_frame()).await?;
    Ok(())
}
