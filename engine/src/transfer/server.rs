//! The serving side: answers coverage and fetch requests of configured
//! peers, for the cameras paired with each, and nothing else.

use std::collections::HashMap;

use bytes::Bytes;
use std::fs::File;
use std::sync::Arc;

use hafill_protocol::{
    block_count, encode_coverage_chunks, encode_summary_chunks, tree, valid_block_size,
    BlockHeader, Compression, CoverageEntry, Encoding, ErrorCode, Message, SummaryEntry, VERSION,
};
use rayon::prelude::*;
use tokio::sync::mpsc;

use super::limits::{ReadRoom, ServeLimits};
use super::{read_message, write_block, write_message, TransferError, MAX_REQUEST_FRAME};
use crate::camera::CameraId;
use crate::config::Config;
use crate::identity::id_of_cert;
use crate::segment::SegmentState;
use crate::store::outboard::Outboards;
use crate::store::traits::{Recorder, UNKNOWN_HASH};
use crate::units::Timestamp;

/// Why a fetch is refused: the code and message of the `Error` frame.
type Refusal = (ErrorCode, String);

/// Shared by every connection of a server.
#[derive(Debug)]
pub struct ServerState {
    pub config: Arc<Config>,
    pub recorder: Arc<dyn Recorder>,
    /// Certificate ID to peer name.
    pub peers: Arc<HashMap<String, String>>,
    /// Connections open per peer, against [`MAX_CONNECTIONS_PER_PEER`].
    pub open: std::sync::Mutex<HashMap<String, usize>>,
    /// Fetch slots and the read budget (see `limits`).
    pub limits: Arc<ServeLimits>,
    /// The segments' kept block lists (see `store::outboard`).
    pub outboards: Arc<Outboards>,
    /// Only `hafill sim hostile`: how this server lies when asked for a
    /// segment. None for every real server.
    pub hook: Option<Arc<dyn FetchHook>>,
}

impl ServerState {
    pub fn new(
        config: Arc<Config>,
        recorder: Arc<dyn Recorder>,
        peers: Arc<HashMap<String, String>>,
    ) -> Self {
        let outboards = Arc::new(crate::store::outboards_of(&config));
        ServerState {
            config,
            recorder,
            peers,
            open: std::sync::Mutex::new(HashMap::new()),
            limits: Arc::new(ServeLimits::default()),
            outboards,
            hook: None,
        }
    }
}

/// Most connections one peer may hold open at once; more are refused.
pub const MAX_CONNECTIONS_PER_PEER: usize = 32;
/// How long a peer may take to send its request once it opened a stream.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What a serving side does to a fetch beyond answering it honestly:
/// nothing, for every real server (no hook). `hafill sim hostile` installs
/// one that lies (`sim::hostile`), to prove that receivers refuse the lies.
pub trait FetchHook: Send + Sync + std::fmt::Debug {
    /// Bytes to send instead of the header; the stream then hangs.
    fn instead_of_header(&self) -> Option<Vec<u8>> {
        None
    }
    /// Changes the header's length or block chaining values before it is
    /// sent.
    fn header(&self, _len: &mut u64, _cvs: &mut [[u8; 32]]) {}
    /// Whether the stream hangs after the header.
    fn hang_after_header(&self) -> bool {
        false
    }
    /// How the first block is sent.
    fn first_block(&self, _data: &Bytes) -> FirstBlock {
        FirstBlock::AsIs
    }
    /// Whether the first block is sent once more after the last.
    fn repeat_first_block(&self) -> bool {
        false
    }
    /// Answer coverage with an empty chunk this often, forever, instead of
    /// the coverage: each frame comes in time, the answer never ends.
    fn drip_coverage(&self) -> Option<std::time::Duration> {
        None
    }
}

/// How a [`FetchHook`] has the first block sent.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum FirstBlock {
    AsIs,
    /// These bytes under the block's header.
    Replace(Bytes),
    /// Header and bytes one byte at a time, this far apart.
    Drip(std::time::Duration),
}

/// Counts a peer's connection while it lives.
struct OpenSlot<'a> {
    state: &'a ServerState,
    peer: String,
}

impl Drop for OpenSlot<'_> {
    fn drop(&mut self) {
        let mut open = match self.state.open.lock() {
            Ok(o) => o,
            Err(p) => p.into_inner(),
        };
        if let Some(n) = open.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
        }
    }
}

/// Accepts connections until the endpoint is closed.
pub async fn run(endpoint: quinn::Endpoint, state: Arc<ServerState>) {
    while let Some(incoming) = endpoint.accept().await {
        let state = state.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => handle_connection(conn, state).await,
                Err(e) => tracing::warn!(%remote, "handshake failed: {e}"),
            }
        });
    }
}

fn peer_of(conn: &quinn::Connection, state: &ServerState) -> Option<String> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    let id = id_of_cert(certs.first()?).ok()?;
    state.peers.get(&id).cloned()
}

async fn handle_connection(conn: quinn::Connection, state: Arc<ServerState>) {
    let Some(peer) = peer_of(&conn, &state) else {
        // The verifier already refused unknown IDs; this is belt and braces.
        conn.close(1u32.into(), b"unknown peer");
        return;
    };
    let slot = {
        let mut open = match state.open.lock() {
            Ok(o) => o,
            Err(p) => p.into_inner(),
        };
        let n = open.entry(peer.clone()).or_default();
        if *n >= MAX_CONNECTIONS_PER_PEER {
            None
        } else {
            *n += 1;
            Some(OpenSlot {
                state: &state,
                peer: peer.clone(),
            })
        }
    };
    let Some(_slot) = slot else {
        tracing::warn!(%peer, remote = %conn.remote_address(), "refused: {MAX_CONNECTIONS_PER_PEER} connections already open");
        conn.close(2u32.into(), b"too many connections from this peer");
        return;
    };
    tracing::info!(%peer, remote = %conn.remote_address(), "peer connected");
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let state = state.clone();
                let peer = peer.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle_stream(send, recv, &state, &peer).await {
                        tracing::debug!(%peer, "stream ended: {e}");
                    }
                });
            }
            Err(e) => {
                let s = conn.stats();
                tracing::info!(%peer, "peer disconnected: {e}");
                tracing::debug!(%peer, sent_packets = s.path.sent_packets, lost_packets = s.path.lost_packets, congestion_events = s.path.congestion_events, mtu = s.path.current_mtu, mtu_probes = s.path.sent_plpmtud_probes, mtu_probes_lost = s.path.lost_plpmtud_probes, black_holes = s.path.black_holes_detected, tx_datagrams = s.udp_tx.datagrams, tx_bytes = s.udp_tx.bytes, rx_datagrams = s.udp_rx.datagrams, rtt = ?s.path.rtt, cwnd = s.path.cwnd, "connection statistics");
                return;
            }
        }
    }
}

/// Answers a request with an error and finishes the stream. The write is
/// bounded by [`SEND_STALL`], as every write here: a peer whose
/// connection has no credit left (it stopped reading) cannot hold the
/// task, nor a fetch slot taken before the error, for ever.
async fn send_error(
    send: &mut quinn::SendStream,
    code: ErrorCode,
    message: String,
) -> Result<(), TransferError> {
    send_within_stall(send, message_chunks(&Message::Error { code, message })).await?;
    send.finish()?;
    Ok(())
}

async fn handle_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    state: &Arc<ServerState>,
    peer: &str,
) -> Result<(), TransferError> {
    let req =
        match tokio::time::timeout(REQUEST_TIMEOUT, read_message(&mut recv, MAX_REQUEST_FRAME))
            .await
        {
            Ok(Ok(Some(m))) => m,
            Ok(Ok(None)) => return Ok(()),
            Ok(Err(e)) => return send_error(&mut send, ErrorCode::BadRequest, e.to_string()).await,
            Err(_) => {
                return send_error(
                    &mut send,
                    ErrorCode::BadRequest,
                    format!("no request within {REQUEST_TIMEOUT:?}"),
                )
                .await
            }
        };
    match req {
        Message::Hello { version, .. } => {
            if version != VERSION {
                return send_error(
                    &mut send,
                    ErrorCode::Version,
                    format!("this server speaks version {VERSION}, not {version}"),
                )
                .await;
            }
            let ack = Message::HelloAck {
                version: VERSION,
                name: state.config.name.clone(),
            };
            send_within_stall(&mut send, message_chunks(&ack)).await?;
            send.finish()?;
        }
        Message::CoverageRequest {
            from_us,
            to_us,
            cameras,
        } => coverage(&mut send, state, peer, from_us, to_us, cameras).await?,
        Message::SummaryRequest {
            from_us,
            to_us,
            bucket_us,
            cameras,
        } => summaries(&mut send, state, peer, (from_us, to_us), bucket_us, cameras).await?,
        Message::FetchRequest {
            camera,
            start_us,
            block_size,
            compression,
            ranges,
        } => {
            fetch(
                (&mut send, &mut recv),
                state,
                peer,
                camera,
                start_us,
                block_size,
                compression,
                ranges,
            )
            .await?
        }
        other => {
            send_error(
                &mut send,
                ErrorCode::BadRequest,
                format!("message 0x{:02x} is not a request", other.type_byte()),
            )
            .await?
        }
    }
    Ok(())
}

/// Checks a camera id from the wire: a valid id, paired with the asker.
/// Returns the id and this server's name for the camera.
fn paired_camera(
    state: &ServerState,
    peer: &str,
    camera: &str,
) -> Result<(CameraId, CameraId), (ErrorCode, String)> {
    let id = CameraId::new(camera).map_err(|e| (ErrorCode::BadRequest, e.to_string()))?;
    if !state.config.paired_with(&id, peer) {
        return Err((
            ErrorCode::NotPaired,
            format!(
                "camera {id} is not paired between {} and {peer}",
                state.config.name
            ),
        ));
    }
    let local = state.config.local_name(&id);
    // A camera's own name here, asked for as if it were an id, is not that
    // camera: the id must map back to itself.
    if state.config.id_of_local(&local) != id {
        return Err((
            ErrorCode::NotPaired,
            format!(
                "camera {id} is not paired between {} and {peer}",
                state.config.name
            ),
        ));
    }
    Ok((id, local))
}

/// The cameras a coverage or summary request asks for, as (id on the
/// wire, name here): those listed, each paired with the asker, or every
/// camera paired with it.
fn asked_cameras(
    state: &ServerState,
    peer: &str,
    cameras: &[String],
) -> Result<Vec<(CameraId, CameraId)>, (ErrorCode, String)> {
    if cameras.is_empty() {
        // A folder walk or a database query: off the runtime's threads.
        let all = tokio::task::block_in_place(|| state.recorder.cameras())
            .map_err(|e| (ErrorCode::Internal, e.to_string()))?;
        Ok(all
            .into_iter()
            .map(|local| (state.config.id_of_local(&local), local))
            .filter(|(id, _)| state.config.paired_with(id, peer))
            .collect())
    } else {
        cameras
            .iter()
            .map(|c| paired_camera(state, peer, c))
            .collect()
    }
}

/// Answers a summary request: per camera, the summary of every bucket
/// the window touches that holds a complete segment.
async fn summaries(
    send: &mut quinn::SendStream,
    state: &Arc<ServerState>,
    peer: &str,
    (from_us, to_us): (i64, i64),
    bucket_us: u64,
    cameras: Vec<String>,
) -> Result<(), TransferError> {
    let list = match asked_cameras(state, peer, &cameras) {
        Ok(l) => l,
        Err((code, msg)) => return send_error(send, code, msg).await,
    };
    let st = state.clone();
    let entries = tokio::task::spawn_blocking(move || -> Result<Vec<SummaryEntry>, String> {
        let mut out = Vec::new();
        for (id, local) in &list {
            let sums = st
                .recorder
                .summaries(local, Timestamp(from_us), Timestamp(to_us), bucket_us)
                .map_err(|e| e.to_string())?;
            out.extend(sums.into_iter().map(|(t, summary)| SummaryEntry {
                camera: id.as_str().to_string(),
                bucket_us: t,
                summary,
            }));
        }
        Ok(out)
    })
    .await
    .map_err(|e| TransferError::Protocol(e.to_string()))?;
    let entries = match entries {
        Ok(e) => e,
        Err(msg) => return send_error(send, ErrorCode::Internal, msg).await,
    };
    let n = entries.len() as u64;
    for chunk in encode_summary_chunks(&entries, 3) {
        send_within_stall(send, message_chunks(&chunk)).await?;
    }
    send_within_stall(send, message_chunks(&Message::SummaryEnd { entries: n })).await?;
    send.finish()?;
    Ok(())
}

/// Coverage entries encoded at a time (about 0.6 MiB raw): one chunk.
const COVERAGE_BATCH: usize = 8192;

async fn coverage(
    send: &mut quinn::SendStream,
    state: &Arc<ServerState>,
    peer: &str,
    from_us: i64,
    to_us: i64,
    cameras: Vec<String>,
) -> Result<(), TransferError> {
    let list = match asked_cameras(state, peer, &cameras) {
        Ok(l) => l,
        Err((code, msg)) => return send_error(send, code, msg).await,
    };
    if let Some(every) = state.hook.as_ref().and_then(|h| h.drip_coverage()) {
        let empty = Message::CoverageChunk {
            raw_len: 0,
            zstd: zstd::bulk::compress(&[], 3).unwrap_or_default(),
        };
        loop {
            write_message(send, &empty).await?;
            tokio::time::sleep(every).await;
        }
    }
    // Read and encoded off the runtime's threads, a few chunks ahead of
    // what is sent: the first chunk leaves at once, and a window of
    // millions of segments is never held whole.
    let (tx, mut rx) = mpsc::channel::<Result<Message, String>>(4);
    let st = state.clone();
    let producer = tokio::task::spawn_blocking(move || {
        let mut batch: Vec<CoverageEntry> = Vec::new();
        let mut n = 0u64;
        let flush = |batch: &mut Vec<CoverageEntry>| {
            let sent = encode_coverage_chunks(batch, 3)
                .into_iter()
                .all(|c| tx.blocking_send(Ok(c)).is_ok());
            batch.clear();
            sent
        };
        for (id, local) in &list {
            let segs = match st
                .recorder
                .segments(local, Timestamp(from_us), Timestamp(to_us))
            {
                Ok(segs) => segs,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e.to_string()));
                    return;
                }
            };
            for s in segs
                .into_iter()
                .filter(|s| s.state == SegmentState::Complete)
            {
                batch.push(CoverageEntry {
                    camera: id.as_str().to_string(),
                    start_us: s.start.0,
                    duration_us: s.duration_us,
                    len: s.len,
                    blake3: *s.blake3.as_bytes(),
                    notes: s.notes.as_deref().unwrap_or_default().to_string(),
                });
                n += 1;
                if batch.len() >= COVERAGE_BATCH && !flush(&mut batch) {
                    return;
                }
            }
        }
        if flush(&mut batch) {
            let _ = tx.blocking_send(Ok(Message::CoverageEnd { entries: n }));
        }
    });
    // Each write within the send stall: a peer that stops reading is cut
    // off, and dropping `rx` ends the producer at its next chunk.
    while let Some(m) = rx.recv().await {
        match m {
            Ok(m) => send_within_stall(send, message_chunks(&m)).await?,
            Err(msg) => return send_error(send, ErrorCode::Internal, msg).await,
        }
    }
    // A producer that panicked sent no CoverageEnd: the stream is reset,
    // and the asker sees an answer cut short.
    if let Err(e) = producer.await {
        let _ = send.reset(0u32.into());
        return Err(TransferError::Protocol(e.to_string()));
    }
    send.finish()?;
    Ok(())
}

/// zstd at level 1 with a compressor made before: making one for every
/// block (its context allocated and zeroed) cost the serving side about
/// 3% of its CPU. At most [`ZSTD_KEPT`] are kept idle (about 570 KiB
/// each once they have compressed a 1 MiB block).
fn zstd_compress(data: &[u8]) -> std::io::Result<Vec<u8>> {
    static IDLE: std::sync::Mutex<Vec<zstd::bulk::Compressor<'static>>> =
        std::sync::Mutex::new(Vec::new());
    let idle = || IDLE.lock().unwrap_or_else(|p| p.into_inner());
    let taken = idle().pop();
    let mut c = match taken {
        Some(c) => c,
        None => zstd::bulk::Compressor::new(1)?,
    };
    let z = c.compress(data);
    let mut kept = idle();
    if kept.len() < ZSTD_KEPT {
        kept.push(c);
    }
    z
}

/// Idle zstd compressors kept (see [`zstd_compress`]): as many as blocks
/// are read at once, at most.
const ZSTD_KEPT: usize = 8;

/// Compresses a block when that pays: `Auto` first tries an 8 KiB sample.
fn encode_block(index: u32, data: Bytes, compression: Compression) -> (BlockHeader, Bytes) {
    let raw_len = data.len() as u32;
    let try_zstd = match compression {
        Compression::Off => false,
        Compression::On => true,
        Compression::Auto => {
            let sample = &data[..data.len().min(8192)];
            zstd_compress(sample).is_ok_and(|z| z.len() * 100 < sample.len() * 92)
        }
    };
    if try_zstd {
        if let Ok(mut z) = zstd_compress(&data) {
            if compression == Compression::On || z.len() * 100 < data.len() * 95 {
                let header = BlockHeader {
                    index,
                    encoding: Encoding::Zstd,
                    raw_len,
                    data_len: z.len() as u32,
                };
                // (zstd's buffer is of the worst case; a block that does
                // not compress is at most a fraction of a percent larger.)
                z.shrink_to_fit();
                return (header, Bytes::from(z));
            }
        }
    }
    (
        BlockHeader {
            index,
            encoding: Encoding::Raw,
            raw_len,
            data_len: raw_len,
        },
        data,
    )
}

#[allow(clippy::too_many_arguments)]
async fn fetch(
    (send, recv): (&mut quinn::SendStream, &mut quinn::RecvStream),
    state: &Arc<ServerState>,
    peer: &str,
    camera: String,
    start_us: i64,
    block_size: u32,
    compression: Compression,
    ranges: Vec<(u32, u32)>,
) -> Result<(), TransferError> {
    let (camera, local) = match paired_camera(state, peer, &camera) {
        Ok(c) => c,
        Err((code, msg)) => return send_error(send, code, msg).await,
    };
    if !valid_block_size(block_size) {
        return send_error(
            send,
            ErrorCode::BadRequest,
            format!("block size {block_size} not allowed"),
        )
        .await;
    }
    // A slot for this fetch, or `Busy` (before any work): it holds until
    // the peer has every byte (see `limits`).
    let _slot = match state.limits.fetch_slot(peer) {
        Ok(slot) => slot,
        Err(why) => return send_error(send, ErrorCode::Busy, why).await,
    };
    let start = Timestamp(start_us);
    let found = {
        let st = state.clone();
        let local = local.clone();
        tokio::task::spawn_blocking(move || st.recorder.open(&local, start))
            .await
            .map_err(|e| TransferError::Protocol(e.to_string()))?
    };
    let (file, mut meta) = match found {
        Ok(Some(found)) => found,
        Ok(None) => {
            return send_error(
                send,
                ErrorCode::NotFound,
                format!("no complete segment {camera} {start}"),
            )
            .await
        }
        Err(e) => return send_error(send, ErrorCode::Internal, e.to_string()).await,
    };
    let n_blocks = block_count(meta.len, block_size);
    let file = Arc::new(file);
    let (on_disk, mtime_ns) = match file.metadata() {
        Ok(m) => (m.len(), crate::state::mtime_ns(&m)),
        Err(e) => return send_error(send, ErrorCode::Internal, e.to_string()).await,
    };
    if on_disk != meta.len {
        let msg = format!(
            "{camera} {start}: {on_disk} bytes on disk, expected {}",
            meta.len
        );
        return send_error(send, ErrorCode::SourceDamaged, msg).await;
    }
    // The block list: kept since the segment was first hashed (see
    // `store::outboard`), else hashed from the file now, in pieces under
    // the read budget, and kept. A file that no longer matches its own
    // record is refused. A recorder's file not hashed before is hashed
    // now, once: the adapter keeps its BLAKE3.
    let kept = {
        let (ob, m) = (state.outboards.clone(), meta.clone());
        tokio::task::spawn_blocking(move || ob.get(&m, block_size, mtime_ns))
            .await
            .ok()
            .flatten()
    };
    // The blocks of a kept list are not hashed again as they are read: a
    // file whose bytes changed since (rot, a rewrite that kept its time)
    // is found by its receiver, which says which block (`BlockDamaged`);
    // that block is then read again here (see `answer_report`).
    let mut cvs = match kept {
        Some(cvs) => {
            tracing::debug!(%camera, %start, "block list: kept");
            cvs
        }
        None => {
            tracing::debug!(%camera, %start, "block list: hashing the file");
            let cvs = match block_cvs_of_file(state, peer, &file, meta.len, block_size).await {
                Ok(cvs) => cvs,
                Err(e) => return send_error(send, ErrorCode::Internal, e.to_string()).await,
            };
            let root = tree::root_of(&cvs).unwrap_or(UNKNOWN_HASH);
            if meta.blake3 == UNKNOWN_HASH {
                let (st, m) = (state.clone(), meta.clone());
                let _ = tokio::task::spawn_blocking(move || st.recorder.note_hash(&m, root)).await;
                meta.blake3 = root;
            } else if root != meta.blake3 {
                tracing::error!(%camera, %start, "source segment does not match its BLAKE3; not serving it");
                let msg = format!("{camera} {start}: file on disk does not match its BLAKE3");
                return send_error(send, ErrorCode::SourceDamaged, msg).await;
            }
            // Kept in the background: the header need not wait for it.
            let (ob, m, c) = (state.outboards.clone(), meta.clone(), cvs.clone());
            tokio::task::spawn_blocking(move || ob.put(&m, block_size, &c, mtime_ns));
            cvs
        }
    };
    let hook = state.hook.clone();
    let mut len = meta.len;
    if let Some(h) = &hook {
        if let Some(bytes) = h.instead_of_header() {
            send.write_all(&bytes).await?;
            // Hangs until the peer gives up on the stream.
            let _ = send.stopped().await;
            return Ok(());
        }
        h.header(&mut len, &mut cvs);
    }
    // What the receiver checks the blocks against, and so what a block it
    // reports damaged is checked against here.
    let sent = Arc::new(cvs.clone());
    let header = Message::FetchHeader {
        len,
        blake3: *meta.blake3.as_bytes(),
        block_size,
        cvs,
    };
    send_within_stall(send, message_chunks(&header)).await?;
    if hook.as_ref().is_some_and(|h| h.hang_after_header()) {
        let _ = send.stopped().await;
        return Ok(());
    }

    let wanted: Vec<u32> = if ranges.is_empty() {
        (0..n_blocks as u32).collect()
    } else {
        ranges
            .iter()
            .flat_map(|&(f, c)| f..f.saturating_add(c))
            .filter(|i| (*i as u64) < n_blocks)
            .collect()
    };
    // Blocks are read from disk (each once it has a place in the queue and
    // room in the read budget) and compressed one ahead of the network,
    // and handed to QUIC without copying; the room goes with the block's
    // bytes, given back once QUIC has dropped them (acknowledged, or the
    // stream reset).
    let (tx, mut rx) = mpsc::channel::<Result<(BlockHeader, Bytes), Refusal>>(1);
    let (st, reading, asker) = (state.clone(), file.clone(), peer.to_string());
    let len = meta.len;
    let internal = |e: String| (ErrorCode::Internal, e);
    tokio::spawn(async move {
        for i in wanted {
            let Ok(place) = tx.reserve().await else {
                break;
            };
            let off = i as u64 * block_size as u64;
            let n = (len - off.min(len)).min(block_size as u64) as usize;
            // Waiting for room counts against the send stall too: this
            // fetch's receiver would take a longer wait for a stall.
            let Ok(room) =
                tokio::time::timeout(SEND_STALL, st.limits.read_room(&asker, room_for(n))).await
            else {
                let why = format!("busy: no room to read within {SEND_STALL:?}; ask again later");
                place.send(Err((ErrorCode::Busy, why)));
                break;
            };
            let f = reading.clone();
            let read = tokio::task::spawn_blocking(move || {
                let buf =
                    crate::io::read_new_at(&f, n, off).map_err(|e| internal(e.to_string()))?;
                Ok(encode_block(
                    i,
                    crate::buffers::into_bytes(buf),
                    compression,
                ))
            })
            .await
            .unwrap_or_else(|e| Err(internal(e.to_string())));
            let failed = read.is_err();
            place.send(read.map(|(h, d)| (h, with_room(d, room))));
            if failed {
                break;
            }
        }
        // Read through: its pages need not stay cached.
        let _ = tokio::task::spawn_blocking(move || crate::io::drop_cached(&reading)).await;
    });
    // The receiver's side of the stream: a block it found damaged, or its
    // end once every block it received verified.
    let said = async move {
        match read_message(recv, MAX_REQUEST_FRAME).await {
            Ok(Some(Message::BlockDamaged { index })) => Said::Damaged(index),
            Ok(None) => Said::AllVerified,
            Ok(Some(other)) => Said::Other(format!("0x{:02x}", other.type_byte())),
            Err(e) => Said::Other(e.to_string()),
        }
    };
    tokio::pin!(said);
    let mut heard = None;
    let mut first = None;
    loop {
        let m = tokio::select! {
            m = rx.recv() => m,
            word = &mut said, if heard.is_none() => {
                if let Said::Damaged(index) = word {
                    // Blocks read ahead hold room the re-read may need:
                    // they are not sent now.
                    rx.close();
                    while rx.try_recv().is_ok() {}
                    let what = Damage { camera: &camera, start, block_size, index };
                    return answer_report(send, state, peer, &meta, file, &sent, what).await;
                }
                heard = Some(word);
                continue;
            }
        };
        let Some(m) = m else { break };
        match m {
            Ok((header, data)) => {
                if let (None, Some(h)) = (&first, &hook) {
                    // A copy, kept only to be sent again: it holds no room.
                    let again = h
                        .repeat_first_block()
                        .then(|| Bytes::copy_from_slice(&data));
                    first = Some((header, again));
                    match h.first_block(&data) {
                        FirstBlock::AsIs => {}
                        FirstBlock::Replace(other) => {
                            write_block(send, header, other).await?;
                            continue;
                        }
                        FirstBlock::Drip(every) => {
                            let mut bytes = header.encode().to_vec();
                            bytes.extend_from_slice(&data);
                            for b in bytes {
                                send.write_all(&[b]).await?;
                                tokio::time::sleep(every).await;
                            }
                            continue;
                        }
                    }
                }
                send_within_stall(send, block_chunks(header, data)).await?
            }
            // Blocks sent before hold room until acknowledged: a peer that
            // does not take them has the stream reset after the stall.
            Err((code, e)) => return refuse_within_stall(send, code, e).await,
        }
    }
    if let Some((header, Some(data))) = first {
        write_block(send, header, data).await?;
    }
    send_within_stall(send, message_chunks(&Message::FetchEnd)).await?;
    // The receiver may yet find one of the last blocks damaged: this side
    // stays open until it says so, or that all verified, for the stall
    // time. A receiver slower than that (up to its stream window of
    // blocks still to take, under a rate cap) has this side finished
    // without an answer to a late report, which it counts as damage.
    let heard = match heard {
        Some(h) => h,
        None => match tokio::time::timeout(SEND_STALL, &mut said).await {
            Ok(h) => h,
            Err(_) => Said::Other(format!("nothing within {SEND_STALL:?} of FetchEnd")),
        },
    };
    match heard {
        Said::Damaged(index) => {
            let what = Damage {
                camera: &camera,
                start,
                block_size,
                index,
            };
            return answer_report(send, state, peer, &meta, file, &sent, what).await;
        }
        Said::Other(what) => {
            tracing::debug!(%peer, %camera, %start, "after a fetch the peer sent {what}")
        }
        Said::AllVerified => {}
    }
    finish_within_stall(send).await
}

/// Finishes `send` and waits until the peer has every byte: until then
/// QUIC keeps them, and the caller's fetch slot holds. A peer that takes
/// no more within the stall time gets its stream reset, which frees them.
async fn finish_within_stall(send: &mut quinn::SendStream) -> Result<(), TransferError> {
    send.finish()?;
    if tokio::time::timeout(SEND_STALL, send.stopped())
        .await
        .is_err()
    {
        let _ = send.reset(super::RESET_STALLED.into());
    }
    Ok(())
}

/// What a fetch's receiver said on its side of the stream.
enum Said {
    /// This block did not verify.
    Damaged(u32),
    /// Every block it received verified (it finished its side).
    AllVerified,
    /// Anything else: a frame a receiver does not send, a reset.
    Other(String),
}

/// A block a receiver reported damaged.
struct Damage<'a> {
    camera: &'a CameraId,
    start: Timestamp,
    block_size: u32,
    index: u32,
}

/// Answers a receiver that found block `index` damaged: the block is read
/// again and checked against the list `sent`. If it no longer matches,
/// the file changed since it was hashed: its kept list is forgotten (the
/// next fetch hashes the file, and refuses it) and the answer is
/// `SourceDamaged`, so the receiver fails the segment without taking this
/// server for a liar; so it is if the block can no longer be read. If it
/// matches, the answer is `Internal`: the receiver got other bytes than
/// these, and this side cannot say why. The read takes its room in the
/// read budget; the answer is sent within the stall time.
async fn answer_report(
    send: &mut quinn::SendStream,
    state: &Arc<ServerState>,
    peer: &str,
    meta: &crate::segment::SegmentMeta,
    file: Arc<File>,
    sent: &Arc<Vec<[u8; 32]>>,
    Damage {
        camera,
        start,
        block_size,
        index,
    }: Damage<'_>,
) -> Result<(), TransferError> {
    let (cvs, len) = (sent.clone(), meta.len);
    let off = index as u64 * block_size as u64;
    let n = (len - off.min(len)).min(block_size as u64) as usize;
    // The read counts against the read budget like any other.
    let room = tokio::time::timeout(SEND_STALL, state.limits.read_room(peer, room_for(n))).await;
    let Ok(room) = room else {
        let why = format!("busy: no room to read block {index} again within {SEND_STALL:?}");
        return refuse_within_stall(send, ErrorCode::Busy, why).await;
    };
    let matches = tokio::task::spawn_blocking(move || -> std::io::Result<Option<bool>> {
        let Some(listed) = cvs.get(index as usize) else {
            return Ok(None);
        };
        let buf = crate::io::read_new_at(&file, n, off)?;
        let cv = if cvs.len() == 1 {
            *blake3::hash(&buf).as_bytes()
        } else {
            tree::block_cv(index, block_size, &buf)
        };
        crate::buffers::give_back(buf);
        drop(room);
        Ok(Some(cv == *listed))
    })
    .await
    .map_err(|e| TransferError::Protocol(e.to_string()))?;
    let (code, msg) = match matches {
        Ok(Some(false)) => {
            tracing::error!(%camera, %start, "the peer found block {index} damaged, and it no longer matches its BLAKE3 here: the file changed since it was hashed; not serving it");
            let (ob, m) = (state.outboards.clone(), meta.clone());
            let _ = tokio::task::spawn_blocking(move || ob.forget(&m)).await;
            (
                ErrorCode::SourceDamaged,
                format!("{camera} {start}: block {index} on disk no longer matches its BLAKE3"),
            )
        }
        Ok(Some(true)) => {
            tracing::warn!(%camera, %start, "the peer found block {index} damaged, but it matches its BLAKE3 here");
            (
                ErrorCode::Internal,
                format!("{camera} {start}: block {index} matches its BLAKE3 here"),
            )
        }
        Ok(None) => (
            ErrorCode::BadRequest,
            format!("{camera} {start} has no block {index}"),
        ),
        Err(e) => {
            // A file that can no longer be read where it was is damaged too.
            tracing::error!(%camera, %start, "the peer found block {index} damaged, and reading it again failed: {e}");
            let (ob, m) = (state.outboards.clone(), meta.clone());
            let _ = tokio::task::spawn_blocking(move || ob.forget(&m)).await;
            (
                ErrorCode::SourceDamaged,
                format!("{camera} {start}: block {index} cannot be read again: {e}"),
            )
        }
    };
    refuse_within_stall(send, code, msg).await
}

/// Ends a fetch with an `Error` as [`send_error`] does, but within the
/// stall time: a peer that stops reading holds nothing for longer.
async fn refuse_within_stall(
    send: &mut quinn::SendStream,
    code: ErrorCode,
    message: String,
) -> Result<(), TransferError> {
    send_within_stall(send, message_chunks(&Message::Error { code, message })).await?;
    finish_within_stall(send).await
}

/// Longest the serving side waits for a peer to take more of a fetch
/// (credit for one more frame, or the acknowledgement of the last bytes):
/// a peer that stops reading would otherwise hold its fetch slot, its
/// share of the read budget and QUIC's buffer for ever. Below a
/// receiver's default stall timeout (30 s), so that fetches waiting for
/// that room are not taken for stalled by their own receivers.
const SEND_STALL: std::time::Duration = std::time::Duration::from_secs(20);

/// Writes `chunks` on `send` within [`SEND_STALL`]; past it the stream is
/// reset, and what QUIC held for it is freed.
async fn send_within_stall(
    send: &mut quinn::SendStream,
    mut chunks: Vec<Bytes>,
) -> Result<(), TransferError> {
    let written = tokio::time::timeout(SEND_STALL, send.write_all_chunks(&mut chunks)).await;
    match written {
        Ok(r) => Ok(r?),
        Err(_) => {
            let _ = send.reset(super::RESET_STALLED.into());
            Err(TransferError::Stalled(SEND_STALL))
        }
    }
}

fn message_chunks(m: &Message) -> Vec<Bytes> {
    vec![Bytes::from(m.to_frame())]
}

fn block_chunks(header: BlockHeader, data: Bytes) -> Vec<Bytes> {
    vec![Bytes::copy_from_slice(&header.encode()), data]
}

/// `data` holding `room` in the read budget until its last clone is
/// dropped: QUIC keeps a block's bytes, whole, until the peer has
/// acknowledged the last of them.
fn with_room(data: Bytes, room: ReadRoom) -> Bytes {
    struct Held {
        data: Bytes,
        _room: ReadRoom,
    }
    impl AsRef<[u8]> for Held {
        fn as_ref(&self) -> &[u8] {
            &self.data
        }
    }
    Bytes::from_owner(Held { data, _room: room })
}

/// Room in the read budget for a read of `n` bytes: the buffer it is
/// read into (see `buffers::room_for`), which QUIC holds until the peer
/// has the bytes.
fn room_for(n: usize) -> u64 {
    crate::buffers::room_for(n) as u64
}

/// Bytes of a file hashed per piece of the block-list pass: each piece is
/// read under the read budget, and its blocks hashed in parallel.
const HASH_PIECE: u64 = 4 << 20;

/// Chaining values of every block of a file: read in pieces of about
/// [`HASH_PIECE`] (whole blocks), each under the read budget, and each
/// piece's blocks hashed in parallel.
async fn block_cvs_of_file(
    state: &ServerState,
    peer: &str,
    file: &Arc<File>,
    len: u64,
    block_size: u32,
) -> std::io::Result<Vec<[u8; 32]>> {
    let n = block_count(len, block_size);
    let per_piece = (HASH_PIECE / block_size as u64).max(1);
    let mut cvs = Vec::with_capacity(n as usize);
    let mut first = 0u64;
    while first < n {
        let count = per_piece.min(n - first);
        let off = first * block_size as u64;
        let bytes = (count * block_size as u64).min(len - off) as usize;
        let _room = state.limits.read_room(peer, room_for(bytes)).await;
        let f = file.clone();
        let piece = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<[u8; 32]>> {
            let buf = crate::io::read_new_at(&f, bytes, off)?;
            // (Not given back: pieces of 4 MiB would crowd the block
            // buffers out of the pool.)
            Ok(if n == 1 {
                vec![*blake3::hash(&buf).as_bytes()]
            } else {
                buf.par_chunks(block_size as usize)
                    .enumerate()
                    .map(|(k, b)| tree::block_cv((first + k as u64) as u32, block_size, b))
                    .collect()
            })
        })
        .await
        .map_err(std::io::Error::other)??;
        cvs.extend(piece);
        first += count;
    }
    Ok(cvs)
}
