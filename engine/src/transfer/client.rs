//! The fetching side: connect to a peer, ask its coverage, fetch a segment
//! into its placeholder. Every block is verified against the segment's
//! BLAKE3 (on the rayon pool) before it is written and counted.

use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use hafill_protocol::tree::{VerifiedBlock, VerifiedTree, VerifyError};
use hafill_protocol::{
    block_count, decode_coverage_chunk, decode_summary_chunk, BlockHeader, Compression,
    CoverageEntry, Encoding, ErrorCode, Message, SummaryEntry, MAX_BLOCK_SIZE,
    MAX_COVERAGE_ENTRIES, MAX_FRAME_LEN, VERSION,
};

use super::fetch::BlockFetch;
use super::{client_config, read_incoming, read_message, write_message, Incoming, TransferError};
use crate::config::Peer;
use crate::identity::Identity;
use crate::io::DiskWriter;
use crate::placeholder::Progress;
use crate::segment::SegmentMeta;
use crate::store::outboard::Outboards;
use crate::store::traits::{SegmentSink, UNKNOWN_HASH};
use crate::store::StoreError;
use crate::throttle::governor::Rates;
use crate::throttle::starve;

/// Connects to `peer` and says hello; fails within `timeout`.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    me: &Identity,
    my_name: &str,
    peer: &Peer,
    timeout: Duration,
) -> Result<quinn::Connection, TransferError> {
    let err = |reason: String| TransferError::Connect {
        peer: peer.name.clone(),
        addr: peer.addr,
        reason,
    };
    let cfg = client_config(me, &peer.name, &peer.id)?;
    let attempt = async {
        let conn = endpoint
            .connect_with(cfg, peer.addr, "hafill")
            .map_err(|e| err(e.to_string()))?
            .await
            .map_err(|e| err(explain_connection_error(&e)))?;
        // TLS 1.3 finishes the client's handshake before the server has
        // judged our certificate: a refusal shows up on the first stream.
        let hello = async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| err(e.to_string()))?;
            let hello = Message::Hello {
                version: VERSION,
                name: my_name.to_string(),
            };
            write_message(&mut send, &hello).await?;
            send.finish()?;
            read_message(&mut recv, 4096).await
        };
        match hello.await {
            Ok(Some(Message::HelloAck { version, .. })) if version == VERSION => Ok(conn),
            Ok(Some(Message::Error { code, message })) => {
                Err(TransferError::Remote { code, message })
            }
            Ok(other) => Err(TransferError::Protocol(format!(
                "expected HelloAck, got {other:?}"
            ))),
            Err(e) => match lost_connection(&e).cloned().or_else(|| conn.close_reason()) {
                Some(reason) => Err(err(explain_connection_error(&reason))),
                None => Err(e),
            },
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(err(format!("no answer within {timeout:?}"))),
    }
}

fn explain_connection_error(e: &quinn::ConnectionError) -> String {
    // A TLS alert travels as a QUIC CRYPTO_ERROR (0x100 to 0x1ff).
    let tls_alert = match e {
        quinn::ConnectionError::ConnectionClosed(c) => {
            (0x100..0x200).contains(&u64::from(c.error_code))
        }
        quinn::ConnectionError::TransportError(t) => (0x100..0x200).contains(&u64::from(t.code)),
        _ => false,
    };
    if tls_alert {
        format!("{e} (TLS refused: check that each side's config lists the other's ID as printed by `hafill keygen`)")
    } else {
        e.to_string()
    }
}

/// The connection error behind a stream error, if the connection was lost.
fn lost_connection(e: &TransferError) -> Option<&quinn::ConnectionError> {
    match e {
        TransferError::Read(quinn::ReadExactError::ReadError(
            quinn::ReadError::ConnectionLost(c),
        ))
        | TransferError::Write(quinn::WriteError::ConnectionLost(c)) => Some(c),
        _ => None,
    }
}

/// Asks for the complete segments a peer holds in `[from, to)`; each frame
/// of the answer must come within `stall` (see [`read_within`]).
pub async fn coverage(
    conn: &quinn::Connection,
    from_us: i64,
    to_us: i64,
    cameras: Vec<String>,
    stall: Duration,
) -> Result<Vec<CoverageEntry>, TransferError> {
    coverage_at_most(conn, from_us, to_us, cameras, MAX_COVERAGE_ENTRIES, stall).await
}

/// [`coverage`], refusing a response of more than `max_entries`.
pub async fn coverage_at_most(
    conn: &quinn::Connection,
    from_us: i64,
    to_us: i64,
    cameras: Vec<String>,
    max_entries: u64,
    stall: Duration,
) -> Result<Vec<CoverageEntry>, TransferError> {
    let request = Message::CoverageRequest {
        from_us,
        to_us,
        cameras,
    };
    ask_chunked(
        conn,
        request,
        ("coverage", "CoverageEnd"),
        max_entries,
        stall,
        |m| match m {
            Message::CoverageChunk { raw_len, zstd } => {
                Some(decode_coverage_chunk(*raw_len, zstd).map(Part::Chunk))
            }
            Message::CoverageEnd { entries } => Some(Ok(Part::End(*entries))),
            _ => None,
        },
    )
    .await
}

/// Asks for the summaries of what a peer holds in the buckets of
/// `bucket_us` that `[from, to)` touches; each frame of the answer must
/// come within `stall`.
pub async fn summaries(
    conn: &quinn::Connection,
    (from_us, to_us): (i64, i64),
    bucket_us: u64,
    cameras: Vec<String>,
    stall: Duration,
) -> Result<Vec<SummaryEntry>, TransferError> {
    let request = Message::SummaryRequest {
        from_us,
        to_us,
        bucket_us,
        cameras,
    };
    let most = MAX_COVERAGE_ENTRIES;
    ask_chunked(
        conn,
        request,
        ("summaries", "SummaryEnd"),
        most,
        stall,
        |m| match m {
            Message::SummaryChunk { raw_len, zstd } => {
                Some(decode_summary_chunk(*raw_len, zstd).map(Part::Chunk))
            }
            Message::SummaryEnd { entries } => Some(Ok(Part::End(*entries))),
            _ => None,
        },
    )
    .await
}

/// A frame of a chunked answer: entries, or the end with their count.
enum Part<T> {
    Chunk(Vec<T>),
    End(u64),
}

/// Sends `request` on a stream of its own and reads its chunked answer
/// (`what`, ended by `end`): at most `max_entries` entries, each frame
/// within `stall`, the count the end announces checked. `part` reads the
/// answer's own frames; an `Error` frame is the peer's error.
async fn ask_chunked<T>(
    conn: &quinn::Connection,
    request: Message,
    (what, end): (&str, &str),
    max_entries: u64,
    stall: Duration,
    part: impl Fn(&Message) -> Option<Result<Part<T>, hafill_protocol::DecodeError>>,
) -> Result<Vec<T>, TransferError> {
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| TransferError::Connection(e, "peer".into()))?;
    write_message(&mut send, &request).await?;
    send.finish()?;
    let mut out = Vec::new();
    loop {
        let Some(m) = read_within(stall, read_message(&mut recv, MAX_FRAME_LEN)).await? else {
            return Err(TransferError::Protocol(format!(
                "{what} ended without {end}"
            )));
        };
        match part(&m) {
            Some(Ok(Part::Chunk(entries))) => {
                out.extend(entries);
                if out.len() as u64 > max_entries {
                    return Err(TransferError::Protocol(format!(
                        "{what} response exceeds the limit of {max_entries} entries"
                    )));
                }
            }
            Some(Ok(Part::End(n))) if n == out.len() as u64 => return Ok(out),
            Some(Ok(Part::End(n))) => {
                return Err(TransferError::Protocol(format!(
                    "{what} announced {n} entries, sent {}",
                    out.len()
                )))
            }
            Some(Err(e)) => return Err(e.into()),
            None => {
                return Err(match m {
                    Message::Error { code, message } => TransferError::Remote { code, message },
                    other => TransferError::Protocol(format!(
                        "unexpected 0x{:02x} in {what}",
                        other.type_byte()
                    )),
                })
            }
        }
    }
}

/// Why fetching one segment from one peer failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The peer's bytes or block list do not match the segment's BLAKE3.
    #[error("integrity: {0}")]
    Integrity(String),
    /// A block did not verify, and the peer, told which, found that its
    /// own file no longer matches the block list it sent: its copy changed
    /// since it was hashed (rot on its disk). Its fault is its disk's, not
    /// a lie: it is not cut off for it, unless it happens more than
    /// [`MAX_DAMAGED_PER_PEER`] times in one run.
    #[error("the peer's copy is damaged: {0}")]
    Damaged(String),
    /// Block `index` did not verify (`why`). Only inside a fetch: the peer
    /// is told, and its answer makes it [`FetchError::Damaged`] or
    /// [`FetchError::Integrity`].
    #[error("block {index} did not verify: {why}")]
    BadBlock { index: u32, why: String },
    #[error(transparent)]
    Transfer(#[from] TransferError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("disk: {0}")]
    Disk(#[from] std::io::Error),
    /// Every block verified, yet the file read back from the disk
    /// (`--verify-readback`) does not hash to the segment's BLAKE3: the
    /// local disk, not the peer.
    #[error("this machine's disk: {0}")]
    Readback(String),
    /// A bug in hafill (a panic) while fetching the segment: the segment
    /// fails, the run goes on.
    #[error("internal error (a bug in hafill, please report it): {0}")]
    Internal(String),
}

impl FetchError {
    /// Whether the peer misbehaved (bytes that do not verify, a broken
    /// protocol, a stall): it is then cut off for the rest of the run.
    pub fn peer_misbehaved(&self) -> bool {
        match self {
            FetchError::Integrity(_) | FetchError::BadBlock { .. } => true,
            FetchError::Transfer(t) => t.is_misbehaviour(),
            _ => false,
        }
    }

    /// Whether the peer asked to be asked again later: it answered `Busy`,
    /// or reset the fetch because this side took nothing for its send
    /// stall (a receiver starved of CPU; see [`super::RESET_STALLED`]).
    pub fn ask_again_later(&self) -> bool {
        match self {
            FetchError::Transfer(TransferError::Remote { code, .. }) => *code == ErrorCode::Busy,
            FetchError::Transfer(TransferError::Read(quinn::ReadExactError::ReadError(
                quinn::ReadError::Reset(code),
            ))) => u64::from(*code) == u64::from(super::RESET_STALLED),
            _ => false,
        }
    }

    /// Whether another attempt (another peer, or later) may succeed.
    pub fn remote_code(&self) -> Option<ErrorCode> {
        match self {
            FetchError::Transfer(TransferError::Remote { code, .. }) => Some(*code),
            _ => None,
        }
    }
}

impl From<VerifyError> for FetchError {
    fn from(e: VerifyError) -> Self {
        match e {
            VerifyError::BlockHash(index) => FetchError::BadBlock {
                index,
                why: e.to_string(),
            },
            e => FetchError::Integrity(e.to_string()),
        }
    }
}

/// Segments a peer may send damaged in one run (a block that did not
/// verify, its file found changed when told) before it is cut off: rot
/// hits a few segments; a peer whose every answer is damaged wastes the
/// link, and is either failing or lying.
pub const MAX_DAMAGED_PER_PEER: usize = 3;

/// What a transfer shares: counters, the writer, the rate cap.
#[derive(Debug)]
pub struct FetchContext {
    pub writer: DiskWriter,
    /// Network and disk rates, set by the governor.
    pub rates: Arc<Rates>,
    pub compression: Compression,
    pub block_size: u32,
    /// Bytes verified and written but not yet synced, per segment, before a
    /// checkpoint makes them durable.
    pub window: u64,
    /// Verifications and writes in flight per segment.
    pub pipeline: usize,
    pub verified_bytes: AtomicU64,
    pub wire_bytes: AtomicU64,
    pub refetched_bytes: AtomicU64,
    /// Longest wait for one whole frame of a fetch: a peer slower than
    /// that (stalled, or dripping bytes) is given up on.
    pub stall: Duration,
    /// Read each finished segment back from the device (`O_DIRECT`) and
    /// hash it before it is installed (`--verify-readback`). Off, the
    /// blocks verified as they arrived are the proof, and no byte is
    /// hashed twice.
    pub readback: bool,
    /// Where each segment's block list is kept once it arrived (see
    /// `store::outboard`).
    pub outboards: Option<Arc<Outboards>>,
}

/// The default of [`FetchContext::stall`].
pub const DEFAULT_STALL: Duration = Duration::from_secs(30);

/// At the end of a run (nothing queued, a segment's other holder idle), a
/// fetch that received nothing for this long moves to that holder instead
/// of waiting out the stall timeout.
pub const END_GAME_PATIENCE: Duration = Duration::from_secs(5);

/// Reads one frame of a fetch within `stall`. The peer is blamed only for
/// a whole `stall` in which this process waited for a CPU under a tenth of
/// the time: on a busy machine, under `SCHED_IDLE`, a wait for a core is
/// ours, not the peer's, and so is the while the peer's sender takes to
/// recover from the acknowledgements we sent late (see
/// [`crate::throttle::starve`]).
async fn read_within<T>(
    stall: Duration,
    read: impl std::future::Future<Output = Result<T, TransferError>>,
) -> Result<T, TransferError> {
    let started = tokio::time::Instant::now();
    let mut mark = starve::now();
    tokio::pin!(read);
    let mut deadline = started + stall;
    loop {
        match tokio::time::timeout_at(deadline, &mut read).await {
            Ok(r) => return r,
            Err(_) => {
                let starved = starve::since(mark);
                if starved < stall / 10 {
                    tracing::debug!(
                        waited = ?started.elapsed(),
                        "no whole frame within the stall timeout"
                    );
                    return Err(TransferError::Stalled(stall));
                }
                tracing::debug!(?starved, "waited for a CPU: the stall timer starts over");
                mark = starve::now();
                deadline = tokio::time::Instant::now() + stall;
            }
        }
    }
}

/// Fetches the missing blocks of the reserved segment `meta` (the source's
/// length and BLAKE3; a BLAKE3 still [`UNKNOWN_HASH`] is taken from the
/// peer's fetch header) of camera `wire_camera` (its id on the wire) from
/// `conn` into `sink`, verifying each block as it arrives, then has the
/// sink install it. Returns the segment as installed.
///
/// `leave_early` says whether the run is in its end game for this segment
/// (see [`END_GAME_PATIENCE`]); it is asked about once a second while
/// nothing arrives.
pub async fn fetch_segment(
    ctx: &FetchContext,
    conn: &quinn::Connection,
    wire_camera: &str,
    sink: Arc<dyn SegmentSink>,
    meta: &SegmentMeta,
    leave_early: &(dyn Fn() -> bool + Sync),
) -> Result<SegmentMeta, FetchError> {
    let mut meta = meta.clone();
    let mut progress = match sink.progress()? {
        Some(p) if p.blocks as u64 == block_count(meta.len, p.block_size) => p,
        _ => Progress::new(ctx.block_size, block_count(meta.len, ctx.block_size) as u32),
    };
    let mut tree = None;
    if !progress.missing_ranges().is_empty() || meta.blake3 == UNKNOWN_HASH {
        let fetch = BlockFetch::new(progress, ctx.window);
        let (p, t) = receive_blocks(
            ctx,
            conn,
            wire_camera,
            &*sink,
            &mut meta,
            fetch,
            leave_early,
        )
        .await?;
        (progress, tree) = (p, Some(t));
    }
    let done = finish(sink.clone(), &meta, progress, ctx.readback).await?;
    // Its block list, checked as it arrived, is kept: serving it later
    // needs no hashing pass.
    if let (Some(ob), Some(tree)) = (ctx.outboards.clone(), tree) {
        let m = done.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Ok(md) = sink.file().metadata() {
                ob.put(
                    &m,
                    tree.block_size(),
                    tree.cvs(),
                    crate::state::mtime_ns(&md),
                );
            }
        })
        .await;
    }
    Ok(done)
}

/// Asks for the blocks `fetch` lacks, verifies and writes each as it
/// comes, checkpoints every window; returns the progress once every block
/// asked for is durable.
async fn receive_blocks(
    ctx: &FetchContext,
    conn: &quinn::Connection,
    wire_camera: &str,
    sink: &dyn SegmentSink,
    meta: &mut SegmentMeta,
    mut fetch: BlockFetch,
    leave_early: &(dyn Fn() -> bool + Sync),
) -> Result<(Progress, Arc<VerifiedTree>), FetchError> {
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| TransferError::Connection(e, "peer".into()))?;
    let block_size = fetch.progress().block_size;
    let request = Message::FetchRequest {
        camera: wire_camera.to_string(),
        start_us: meta.start.0,
        block_size,
        compression: ctx.compression,
        ranges: fetch.ranges().to_vec(),
    };
    // This side stays open after the request: it finishes once every
    // block verified, or after it told the peer of one that did not.
    write_message(&mut send, &request)
        .await
        .map_err(FetchError::from)?;

    let asked = std::time::Instant::now();
    let header = {
        let reading = read_within(ctx.stall, read_message(&mut recv, MAX_FRAME_LEN));
        tokio::pin!(reading);
        loop {
            tokio::select! {
                h = &mut reading => break h?,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    if asked.elapsed() >= END_GAME_PATIENCE && leave_early() {
                        return Err(TransferError::Slow(asked.elapsed()).into());
                    }
                }
            }
        }
    };
    let tree = match header {
        Some(Message::FetchHeader {
            len,
            blake3,
            block_size: got_block_size,
            cvs,
        }) => {
            if meta.blake3 == UNKNOWN_HASH {
                // Not hashed when the peer listed it: the header says.
                meta.blake3 = blake3::Hash::from_bytes(blake3);
                if meta.blake3 == UNKNOWN_HASH {
                    return Err(FetchError::Integrity(
                        "the peer sent no BLAKE3 for the segment".into(),
                    ));
                }
            }
            if got_block_size != block_size {
                return Err(TransferError::Protocol(format!(
                    "asked for {block_size} byte blocks, got {got_block_size}"
                ))
                .into());
            }
            Arc::new(VerifiedTree::new(
                &meta.blake3,
                meta.len,
                len,
                block_size,
                cvs,
            )?)
        }
        Some(Message::Error { code, message }) => {
            return Err(TransferError::Remote { code, message }.into())
        }
        other => {
            return Err(TransferError::Protocol(format!(
                "expected FetchHeader, got {:?}",
                other.map(|m| m.type_byte())
            ))
            .into())
        }
    };

    // Frames are read by a task of their own: a read cut off by `select!`
    // would lose bytes mid-frame, and a channel receive is cancel-safe.
    let (frames_tx, mut frames) = tokio::sync::mpsc::channel(ctx.pipeline.max(1));
    let stall = ctx.stall;
    // It reads on past `FetchEnd`: the peer may yet answer a report of a
    // damaged block (see `answer_of`).
    let reader = tokio::spawn(async move {
        loop {
            let m = read_within(stall, read_incoming(&mut recv, MAX_FRAME_LEN)).await;
            let more = matches!(
                m,
                Ok(Some(
                    Incoming::Block(..) | Incoming::Message(Message::FetchEnd)
                ))
            );
            if frames_tx.send(m).await.is_err() || !more {
                break;
            }
        }
    });
    let _abort_reader = AbortOnDrop(reader);
    let file = sink.file();
    let meta = &*meta;

    let mut in_flight = FuturesUnordered::new();
    let mut last_frame = std::time::Instant::now();
    // A block verified and written: counted, and recorded as seen.
    let written = |fetch: &mut BlockFetch, (index, n): (u32, u64)| {
        if fetch.handle_written(index, n) {
            ctx.refetched_bytes.fetch_add(n, Ordering::Relaxed);
        }
        ctx.verified_bytes.fetch_add(n, Ordering::Relaxed);
    };
    // The first block that did not verify: the peer is told at once, no
    // more blocks are taken (what it sent before it heard is read and
    // dropped, so that it can answer), what is in flight lands, and what
    // verified is made durable (the next holder then sends only the rest).
    let mut bad: Option<(u32, String)> = None;
    let mut told = false;
    let mut answer: Option<FetchError> = None;
    let received = async {
    while (!fetch.ended() && bad.is_none()) || !in_flight.is_empty() {
        if let (Some((index, _)), false) = (&bad, told) {
            told = true;
            tell(&mut send, *index).await;
        }
        tokio::select! {
            biased;
            Some(r) = in_flight.next(), if !in_flight.is_empty() => {
                // Our own verification and writes count as progress too.
                last_frame = std::time::Instant::now();
                match r {
                    Err(FetchError::BadBlock { index, why }) => {
                        bad.get_or_insert((index, why));
                        continue;
                    }
                    r => written(&mut fetch, r?),
                }
                sink.record_seen(fetch.progress())?;
                if fetch.checkpoint_due() && bad.is_none() {
                    // Drain what is in flight so every seen block is written.
                    while let Some(r) = in_flight.next().await {
                        match r {
                            Err(FetchError::BadBlock { index, why }) => {
                                bad.get_or_insert((index, why));
                            }
                            r => written(&mut fetch, r?),
                        }
                    }
                    if bad.is_none() {
                        checkpoint(ctx, sink, meta, &mut fetch).await?;
                    }
                }
            }
            msg = frames.recv(), if (told && answer.is_none()) || (!fetch.ended() && bad.is_none() && in_flight.len() < ctx.pipeline) => {
                if let Some((_, why)) = &bad {
                    // Told: what it sent before it heard is dropped.
                    answer = answer_of(msg, why);
                    continue;
                }
                last_frame = std::time::Instant::now();
                let msg = msg.unwrap_or_else(|| Err(TransferError::Protocol("the stream reader stopped".into())));
                match msg? {
                    Some(Incoming::Block(BlockHeader { index, encoding, raw_len, .. }, data)) => {
                        fetch.handle_arrival(index).map_err(|e| TransferError::Protocol(e.to_string()))?;
                        ctx.wire_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                        ctx.rates.net.acquire(data.len() as u64).await;
                        in_flight.push(verify_and_write(ctx, tree.clone(), file.clone(), index, encoding, raw_len, data));
                    }
                    Some(Incoming::Message(Message::FetchEnd)) => fetch.handle_end(),
                    // A v4 server answers `SourceDamaged` after the header
                    // only when told of a bad block: unasked, it counts as
                    // damage all the same.
                    Some(Incoming::Message(Message::Error { code: ErrorCode::SourceDamaged, message })) => return Err(FetchError::Damaged(message)),
                    Some(Incoming::Message(Message::Error { code, message })) => return Err(TransferError::Remote { code, message }.into()),
                    Some(Incoming::Message(other)) => return Err(TransferError::Protocol(format!("unexpected 0x{:02x} in a fetch", other.type_byte())).into()),
                    None => return Err(TransferError::Protocol("fetch ended without FetchEnd".into()).into()),
                }
            }
            _ = tokio::time::sleep(Duration::from_secs(1)), if !fetch.ended() && bad.is_none() => {
                if last_frame.elapsed() >= END_GAME_PATIENCE && leave_early() {
                    // What is in flight was verified: let it land first.
                    while let Some(r) = in_flight.next().await {
                        r?;
                    }
                    return Err(TransferError::Slow(last_frame.elapsed()).into());
                }
            }
        }
    }
    if let Some((index, _)) = &bad {
        if !told {
            told = true;
            tell(&mut send, *index).await;
        }
        checkpoint(ctx, sink, meta, &mut fetch).await?;
    }
    Ok(())
    }
    .await;
    let bad = match received {
        Err(FetchError::BadBlock { index, why }) => Some((index, why)),
        r => {
            r?;
            bad
        }
    };
    if let Some((index, why)) = bad {
        if !told {
            tell(&mut send, index).await;
        }
        if let Some(a) = answer {
            return Err(a);
        }
        let waiting = async {
            loop {
                if let Some(a) = answer_of(frames.recv().await, &why) {
                    return a;
                }
            }
        };
        return Err(tokio::time::timeout(ctx.stall, waiting)
            .await
            .unwrap_or_else(|_| {
                FetchError::Damaged(format!(
                    "{why}, and no answer within {:?} of saying so",
                    ctx.stall
                ))
            }));
    }
    // Every block received verified: the peer may let go.
    let _ = send.finish();
    if let Some((arrived, asked)) = fetch.shortfall() {
        checkpoint(ctx, sink, meta, &mut fetch).await?;
        return Err(
            TransferError::Protocol(format!("peer sent {arrived} of {asked} blocks")).into(),
        );
    }
    // Every block is in: make the bytes durable; `finish` installs the
    // segment. (A crash before that leaves the last checkpoint,
    // so at most the window is fetched again.)
    ctx.writer.sync_data(file.clone()).await?;
    fetch.handle_synced();
    Ok((fetch.into_progress(), tree))
}

/// Tells the peer that block `index` did not verify, and finishes this
/// side: its answer is read with [`answer_of`].
async fn tell(send: &mut quinn::SendStream, index: u32) {
    if write_message(send, &Message::BlockDamaged { index })
        .await
        .is_ok()
    {
        let _ = send.finish();
    }
}

/// What a frame read after telling the peer of a bad block (`why`) says:
/// nothing yet for a block or `FetchEnd` it sent before it heard; its
/// answer for an `Error`. `SourceDamaged` says its own file no longer
/// matches the list it sent: [`FetchError::Damaged`]. `Internal` says the
/// block matches there: the bad bytes are its doing,
/// [`FetchError::Integrity`]. Anything else (another code, a `Busy` sent
/// before it heard, the stream's end, a frame out of place) leaves it
/// unsaid, and counts as damage: the peer is cut off after a few all the
/// same (see [`MAX_DAMAGED_PER_PEER`]).
fn answer_of(
    frame: Option<Result<Option<Incoming>, TransferError>>,
    why: &str,
) -> Option<FetchError> {
    match frame {
        Some(Ok(Some(Incoming::Block(..) | Incoming::Message(Message::FetchEnd)))) => None,
        Some(Ok(Some(Incoming::Message(Message::Error { code, message })))) => Some(match code {
            ErrorCode::SourceDamaged => FetchError::Damaged(format!("{message} ({why} here)")),
            ErrorCode::Internal => {
                FetchError::Integrity(format!("{why}; told, the peer answered: {message}"))
            }
            _ => FetchError::Damaged(format!(
                "{why}; told, the peer answered {code:?}: {message}"
            )),
        }),
        _ => Some(FetchError::Damaged(format!(
            "{why}; the peer did not answer the report"
        ))),
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Decompresses (bounded by the block size), verifies on the rayon pool,
/// then writes. Only a verified block reaches the disk.
async fn verify_and_write(
    ctx: &FetchContext,
    tree: Arc<VerifiedTree>,
    file: Arc<File>,
    index: u32,
    encoding: Encoding,
    raw_len: u32,
    data: Vec<u8>,
) -> Result<(u32, u64), FetchError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    rayon::spawn(move || {
        let r = (|| -> Result<VerifiedBlock, FetchError> {
            let raw = match encoding {
                Encoding::Raw => data,
                Encoding::Zstd => {
                    let cap = (tree.block_size() as usize).min(MAX_BLOCK_SIZE as usize);
                    let raw = zstd::bulk::decompress(&data, cap).map_err(|e| {
                        FetchError::Integrity(format!("block {index} does not decompress: {e}"))
                    })?;
                    crate::buffers::give_back(data);
                    if raw.len() != raw_len as usize {
                        return Err(FetchError::Integrity(format!(
                            "block {index} decompresses to {} bytes, not {raw_len}",
                            raw.len()
                        )));
                    }
                    raw
                }
            };
            Ok(tree.verify_block(index, raw)?)
        })();
        let _ = tx.send(r);
    });
    let block = rx
        .await
        .map_err(|_| FetchError::Integrity("verification was cancelled".into()))??;
    let n = block.data.len() as u64;
    ctx.rates.disk.acquire(n).await;
    let t = std::time::Instant::now();
    ctx.writer.write_at(file, block.offset, block.data).await?;
    ctx.rates.note_write(n, t.elapsed());
    Ok((block.index, n))
}

/// Makes written blocks durable, then records them as such.
async fn checkpoint(
    ctx: &FetchContext,
    sink: &dyn SegmentSink,
    meta: &SegmentMeta,
    fetch: &mut BlockFetch,
) -> Result<(), FetchError> {
    ctx.writer.sync_data(sink.file().clone()).await?;
    fetch.handle_synced();
    // Attributes and an fsync: small, but blocking.
    tokio::task::block_in_place(|| {
        sink.record_durable(meta, fetch.progress())?;
        crate::io::drop_cached(sink.file());
        Ok::<_, StoreError>(())
    })?;
    Ok(())
}

/// Every block is durable, and was verified against the segment's BLAKE3
/// as it arrived: install it. With `readback`, the file is first read
/// back from the device and hashed, and installed only if that is exactly
/// the source's BLAKE3.
async fn finish(
    sink: Arc<dyn SegmentSink>,
    meta: &SegmentMeta,
    progress: Progress,
    readback: bool,
) -> Result<SegmentMeta, FetchError> {
    let m = meta.clone();
    tokio::task::spawn_blocking(move || -> Result<SegmentMeta, FetchError> {
        let file: &File = sink.file();
        if m.blake3 == UNKNOWN_HASH || !progress.missing_ranges().is_empty() {
            return Err(FetchError::Internal(format!(
                "asked to install {} {} before it was whole and verified",
                m.camera, m.start
            )));
        }
        if readback {
            let got = crate::io::hash_from_device(file).map_err(|e| {
                FetchError::Readback(format!("reading the written file back failed: {e}"))
            })?;
            if got != m.blake3 {
                // Start this segment over: its bytes on disk are not the source's.
                let fresh = Progress::new(progress.block_size, progress.blocks);
                sink.record_durable(&m, &fresh)?;
                return Err(FetchError::Readback(format!(
                    "read back, the written file hashes to {got}, not to the {} that was verified and written; the segment starts over",
                    m.blake3
                )));
            }
        }
        crate::io::drop_cached(file);
        match sink.install(&m) {
            Ok(done) => Ok(done),
            Err(e) => {
                // Not installed (a recorder's database that stayed locked,
                // say): the verified bytes are kept, recorded as durable
                // with their BLAKE3, so the next run installs them
                // without fetching them again.
                if sink.still_reserved() {
                    let _ = sink.record_durable(&m, &progress);
                }
                Err(e.into())
            }
        }
    })
    .await
    .map_err(std::io::Error::other)?
}
