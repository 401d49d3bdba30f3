//! The transfer: QUIC endpoints with pinned mutual TLS, framed streams, the
//! serving side and the fetching side.

pub mod client;
pub mod fetch;
pub mod ledbat;
pub mod limits;
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

/// The code a serving side resets a fetch's stream with when its peer took
/// nothing more of it for the send stall (`server::SEND_STALL`): from a
/// receiver starved of CPU as much as from one that stopped reading. The
/// receiver asks again later, as after `Busy`; what it made durable stays.
pub const RESET_STALLED: u32 = 0x5354;

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
    #[error("the peer stalled: no whole frame within {0:?}")]
    Stalled(Duration),
    /// Not a fault: nothing came for a while at the end of a run, while
    /// another holder of the segment sat idle; it moves there.
    #[error("nothing for {0:?} while another holder was idle; moved to it")]
    Slow(Duration),
}

impl TransferError {
    /// Whether the peer broke the protocol (as opposed to being down or
    /// saying it cannot serve): a peer doing so is cut off.
    pub fn is_misbehaviour(&self) -> bool {
        matches!(
            self,
            TransferError::Decode(_) | TransferError::Protocol(_) | TransferError::Stalled(_)
        )
    }
}

pub use crate::config::Congestion;

/// The largest UDP payload MTU discovery may reach. quinn sends up to
/// [`GSO_BATCH`] packets in one `sendmsg` (UDP segmentation offload), and
/// the kernel refuses a batch over 65,507 bytes with `EMSGSIZE`, which
/// quinn-udp drops without a word (it expects that only of MTU probes).
/// With 16 KiB packets every batch of four or more vanished: quinn took
/// the bursts for an MTU black hole and fell back to 1,200-byte packets
/// for a minute. 10 x 6,550 fits; a 9,000-byte jumbo LAN gets 6,550.
pub const MAX_MTU: u16 = 6_550;

/// Packets per `sendmsg` in quinn 0.11 (`MAX_TRANSMIT_SEGMENTS`).
pub const GSO_BATCH: u32 = 10;

// A full batch, with its UDP and IPv4 headers, must fit one IP packet.
const _: () = assert!(GSO_BATCH * MAX_MTU as u32 + 8 + 20 <= 65_535);

/// Transport settings sized for bulk transfer: wide flow-control windows,
/// keep-alives so an idle link is noticed, a bounded idle timeout so a dead
/// peer is given up on, and the chosen congestion controller.
pub fn transport_config(congestion: Congestion) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    match congestion {
        Congestion::Ledbat => {
            t.congestion_controller_factory(Arc::new(ledbat::LedbatConfig::default()))
        }
        Congestion::Cubic => {
            t.congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default()))
        }
        Congestion::Bbr => {
            t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()))
        }
    };
    // A LAN's RTT is a fraction of a millisecond; quinn's default time
    // threshold (9/8 RTT) then declares a packet lost whenever the receiver
    // is descheduled for a moment, and every controller halves its window
    // for nothing. Real loss is still found by the packet threshold.
    t.time_threshold(4.0);
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
    mtu.upper_bound(MAX_MTU);
    t.mtu_discovery_config(Some(mtu));
    t
}

/// The serving side's transport: [`transport_config`] with a send window
/// of [`limits::SEND_WINDOW`] per connection (what QUIC may hold
/// unacknowledged, see `limits`), and receive windows sized for requests
/// (a peer only ever sends requests of up to [`MAX_REQUEST_FRAME`]), so a
/// peer that sends more cannot make this side buffer it.
pub fn serve_transport_config(congestion: Congestion) -> quinn::TransportConfig {
    let mut t = transport_config(congestion);
    t.send_window(limits::SEND_WINDOW);
    t.stream_receive_window((2 * MAX_REQUEST_FRAME as u32).into());
    t.receive_window((1u32 << 20).into());
    t
}

/// Socket buffers for bulk QUIC: the kernel's default (about 200 KiB) holds
/// a dozen 16 KiB datagrams, so a receiver busy for a millisecond drops
/// packets and every congestion controller halves its window. Capped by
/// `net.core.rmem_max`/`wmem_max`; a refusal is logged, not fatal.
const SOCKET_BUFFER: usize = 8 << 20;

fn widen_buffers(socket: &std::net::UdpSocket) {
    use rustix::net::sockopt;
    if let Err(e) = sockopt::set_socket_recv_buffer_size(socket, SOCKET_BUFFER) {
        tracing::debug!("UDP receive buffer stays at the default: {e}");
    }
    if let Err(e) = sockopt::set_socket_send_buffer_size(socket, SOCKET_BUFFER) {
        tracing::debug!("UDP send buffer stays at the default: {e}");
    }
    if let Ok(n) = sockopt::socket_recv_buffer_size(socket) {
        if n < SOCKET_BUFFER {
            tracing::debug!("UDP receive buffer is {n} bytes (raise net.core.rmem_max to {SOCKET_BUFFER} for full speed)");
        }
    }
}

fn endpoint_config() -> quinn::EndpointConfig {
    let mut c = quinn::EndpointConfig::default();
    let _ = c.max_udp_payload_size(MAX_MTU);
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
    sc.transport_config(Arc::new(serve_transport_config(config.congestion)));
    let socket =
        std::net::UdpSocket::bind(config.listen).map_err(|source| TransferError::Listen {
            addr: config.listen,
            source,
        })?;
    widen_buffers(&socket);
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
    widen_buffers(&socket);
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
    cc.transport_config(Arc::new(transport_config(Congestion::default())));
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
        // QUIC's chunks appended as they come: one copy, no zeroing first,
        // into a buffer used before (given back once the block is written).
        let len = header.data_len as usize;
        let mut data = crate::buffers::take(len);
        while data.len() < len {
            match recv.read_chunk(len - data.len(), true).await {
                Ok(Some(chunk)) => data.extend_from_slice(&chunk.bytes),
                Ok(None) => return Err(quinn::ReadExactError::FinishedEarly(data.len()).into()),
                Err(e) => return Err(quinn::ReadExactError::ReadError(e).into()),
            }
        }
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
