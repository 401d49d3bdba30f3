//! Backfill: ask the peers what they hold, plan, create placeholders, and
//! fetch every gap, several segments at once, over several connections.
//!
//! `coverage -> plan -> placeholders -> fetch (verify, write) -> commit`

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hafill_protocol::Compression;
use serde::Serialize;

use crate::camera::CameraId;
use crate::config::Config;
use crate::identity::{self, Identity, IdentityError};
use crate::io::{DiskWriter, IoBackend, IoChoice, IoSetupError};
use crate::placeholder;
use crate::plan::{PlanOptions, Planner};
use crate::segment::{Origin, SegmentMeta, SegmentState};
use crate::store::{Store, StoreError};
use crate::throttle::RateLimiter;
use crate::transfer::client::{self, FetchContext};
use crate::transfer::{client_endpoint, TransferError};
use crate::units::Timestamp;

#[derive(Debug, Clone)]
pub struct BackfillOptions {
    /// Only these peers (empty: all).
    pub peers: Vec<String>,
    /// Only these cameras (empty: all paired).
    pub cameras: Vec<CameraId>,
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
    pub streams: usize,
    pub connections: usize,
    pub block_size: u32,
    pub window: u64,
    /// Cap on received bytes per second.
    pub max_rate: Option<u64>,
    pub compression: Compression,
    pub io: IoChoice,
    pub connect_timeout: Duration,
}

impl Default for BackfillOptions {
    fn default() -> Self {
        BackfillOptions {
            peers: Vec::new(),
            cameras: Vec::new(),
            since: None,
            until: None,
            streams: 4,
            connections: 2,
            block_size: 1 << 20,
            window: 16 << 20,
            max_rate: None,
            compression: Compression::Auto,
            io: IoChoice::Auto,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackfillError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Io(#[from] IoSetupError),
    #[error(transparent)]
    Transfer(#[from] TransferError),
    #[error("no peer named {0:?} in the config")]
    UnknownPeer(String),
}

/// A segment that could not be made whole.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub camera: CameraId,
    pub start: String,
    pub peers: Vec<String>,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PeerStatus {
    pub peer: String,
    pub connected: bool,
    pub error: Option<String>,
    pub segments_offered: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackfillReport {
    pub segments: u64,
    pub bytes: u64,
    pub wire_bytes: u64,
    pub seconds: f64,
    pub rate_mib_s: f64,
    pub refetched_bytes: u64,
    pub planned_segments: u64,
    pub planned_bytes: u64,
    pub placeholders_created: u64,
    /// Seconds from start until every planned gap had its placeholder.
    pub placeholders_seconds: f64,
    pub failed: Vec<Failure>,
    pub io: IoBackend,
    pub peers: Vec<PeerStatus>,
}

/// Progress for a bar or a log line.
#[derive(Debug, Clone, Copy)]
pub struct Tick {
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub segments_done: u64,
    pub segments_total: u64,
}

#[derive(Debug, Clone)]
struct Job {
    meta: SegmentMeta,
    sources: Vec<String>,
}

pub async fn backfill(
    config: &Config,
    opts: &BackfillOptions,
    on_tick: impl Fn(Tick) + Send + Sync + 'static,
) -> Result<BackfillReport, BackfillError> {
    let t0 = Instant::now();
    let me = Arc::new(identity::load(&config.cert, &config.key)?);
    let store = Arc::new(Store::open_writer(&config.store, true)?);
    let writer = DiskWriter::start(opts.io)?;
    tracing::info!(io = %writer.backend(), "writing with {}", writer.backend());

    for p in &opts.peers {
        if config.peer(p).is_none() {
            return Err(BackfillError::UnknownPeer(p.clone()));
        }
    }
    let peers: Vec<_> = config
        .peers
        .iter()
        .filter(|p| opts.peers.is_empty() || opts.peers.contains(&p.name))
        .cloned()
        .collect();

    // One endpoint per connection: each has its own socket and driver, so
    // connections spread over cores.
    let connections = opts.connections.max(1);
    let mut endpoints = Vec::new();
    for _ in 0..connections {
        let near = peers.first().map(|p| p.addr).unwrap_or(config.listen);
        endpoints.push(client_endpoint(near)?);
    }
    let mut conns: HashMap<String, Vec<quinn::Connection>> = HashMap::new();
    let mut statuses = Vec::new();
    let attempts = peers.iter().map(|p| {
        let endpoints = endpoints.clone();
        let me = me.clone();
        let name = config.name.clone();
        let p = p.clone();
        let timeout = opts.connect_timeout;
        async move {
            let mut cs = Vec::new();
            for ep in &endpoints {
                cs.push(client::connect(ep, &me, &name, &p, timeout).await?);
            }
            Ok::<_, TransferError>((p, cs))
        }
    });
    let results = futures::future::join_all(attempts).await;
    for (r, p) in results.into_iter().zip(&peers) {
        match r {
            Ok((p, cs)) => {
                conns.insert(p.name.clone(), cs);
            }
            Err(e) => {
                tracing::warn!(peer = %p.name, "skipped: {e}");
                statuses.push(PeerStatus {
                    peer: p.name.clone(),
                    connected: false,
                    error: Some(e.to_string()),
                    segments_offered: 0,
                });
            }
        }
    }

    // Coverage from every connected peer, for the cameras paired with it.
    let now = Timestamp::now();
    let plan_opts = PlanOptions {
        now,
        retention_us: config.retention_us,
        from: opts.since,
        to: opts.until,
    };
    let (from, to) = plan_opts.window();
    let to = to.min(now.add_micros(86_400_000_000));
    let mut holdings: BTreeMap<CameraId, Vec<(String, Vec<SegmentMeta>)>> = BTreeMap::new();
    for p in &peers {
        let Some(cs) = conns.get(&p.name) else {
            continue;
        };
        let cams: Vec<String> = opts
            .cameras
            .iter()
            .map(|c| c.as_str().to_string())
            .collect();
        match client::coverage(&cs[0], from.0, to.0, cams).await {
            Ok(entries) => {
                let mut n = 0;
                let mut by_cam: BTreeMap<CameraId, Vec<SegmentMeta>> = BTreeMap::new();
                for e in entries {
                    // Names from the wire are checked before they go near a path,
                    // and only cameras we pair with this peer are taken.
                    let Ok(camera) = CameraId::new(e.camera.clone()) else {
                        tracing::warn!(peer = %p.name, "ignored coverage of an invalid camera id {:?}", e.camera);
                        continue;
                    };
                    if !config.paired_with(&camera, &p.name)
                        || e.duration_us > crate::store::MAX_SEGMENT_DURATION_US
                    {
                        continue;
                    }
                    n += 1;
                    by_cam.entry(camera.clone()).or_default().push(SegmentMeta {
                        camera,
                        start: Timestamp(e.start_us),
                        duration_us: e.duration_us,
                        len: e.len,
                        blake3: blake3::Hash::from_bytes(e.blake3),
                        state: SegmentState::Complete,
                        origin: Origin::Peer(p.name.clone()),
                    });
                }
                for (c, mut segs) in by_cam {
                    segs.sort_by_key(|s| s.start);
                    holdings.entry(c).or_default().push((p.name.clone(), segs));
                }
                statuses.push(PeerStatus {
                    peer: p.name.clone(),
                    connected: true,
                    error: None,
                    segments_offered: n,
                });
            }
            Err(e) => {
                tracing::warn!(peer = %p.name, "coverage failed: {e}");
                conns.remove(&p.name);
                statuses.push(PeerStatus {
                    peer: p.name.clone(),
                    connected: false,
                    error: Some(e.to_string()),
                    segments_offered: 0,
                });
            }
        }
    }

    // Plan, camera by camera.
    let mut planner = Planner::new(plan_opts.clone());
    for (camera, per_peer) in &holdings {
        let local = store.segments(camera, from, to)?;
        let views: Vec<(&str, &[SegmentMeta])> = per_peer
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
            .collect();
        planner.add_camera(camera, &local, &views);
    }
    let plan = planner.finish();
    for c in &plan.conflicts {
        tracing::warn!(camera = %c.camera, start = %c.start, "{} and {} hold different bytes; using {}", c.chosen, c.other, c.chosen);
    }

    // Placeholders for the plan, in one batch: the timeline is whole now.
    let sources: Vec<(SegmentMeta, String)> = plan
        .iter()
        .map(|p| (p.source.clone(), p.peer.clone()))
        .collect();
    let created = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || placeholder::create(&store, &sources))
            .await
            .map_err(|e| StoreError::Io {
                path: config.store.clone(),
                source: std::io::Error::other(e),
            })??
    };

    let placeholders_seconds = t0.elapsed().as_secs_f64();

    // Work: the plan, plus placeholders and partials an earlier run left.
    let mut jobs: Vec<Job> = plan
        .iter()
        .map(|p| Job {
            meta: SegmentMeta {
                state: SegmentState::Placeholder,
                origin: Origin::Peer(p.peer.clone()),
                ..p.source.clone()
            },
            sources: std::iter::once(p.peer.clone())
                .chain(p.fallback.iter().cloned())
                .collect(),
        })
        .collect();
    let planned: std::collections::HashSet<(CameraId, i64)> = jobs
        .iter()
        .map(|j| (j.meta.camera.clone(), j.meta.start.0))
        .collect();
    for m in placeholder::outstanding(&store, from, to)? {
        if planned.contains(&(m.camera.clone(), m.start.0)) {
            continue;
        }
        if !opts.cameras.is_empty() && !opts.cameras.contains(&m.camera) {
            continue;
        }
        // Any connected peer holding exactly these bytes may serve it, the
        // one it was planned from first.
        let mut sources: Vec<String> = Vec::new();
        if let Origin::Peer(p) = &m.origin {
            sources.push(p.clone());
        }
        if let Some(per_peer) = holdings.get(&m.camera) {
            for (peer, segs) in per_peer {
                if !sources.contains(peer)
                    && segs
                        .iter()
                        .any(|s| s.start == m.start && s.blake3 == m.blake3)
                {
                    sources.push(peer.clone());
                }
            }
        }
        jobs.push(Job { meta: m, sources });
    }
    jobs.sort_by_key(|j| std::cmp::Reverse(j.meta.start));
    let total_bytes: u64 = jobs.iter().map(|j| j.meta.len).sum();
    let total_segments = jobs.len() as u64;
    tracing::info!(
        segments = total_segments,
        bytes = total_bytes,
        "backfill planned"
    );

    let ctx = Arc::new(FetchContext {
        writer,
        limiter: opts.max_rate.map(RateLimiter::new),
        compression: opts.compression,
        block_size: opts.block_size,
        window: opts.window,
        pipeline: 8,
        verified_bytes: AtomicU64::new(0),
        wire_bytes: AtomicU64::new(0),
        refetched_bytes: AtomicU64::new(0),
    });
    let queue = Arc::new(Mutex::new(VecDeque::from(jobs)));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let done_segments = Arc::new(AtomicU64::new(0));
    let done_bytes = Arc::new(AtomicU64::new(0));
    let conns = Arc::new(conns);

    // Completed segments go to the index in batches, from one task.
    let (commit_tx, mut commit_rx) = tokio::sync::mpsc::channel::<SegmentMeta>(1024);
    let committer = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut batch = Vec::new();
            loop {
                let first = commit_rx.recv().await;
                let Some(first) = first else { break };
                batch.push(first);
                while let Ok(m) = commit_rx.try_recv() {
                    batch.push(m);
                }
                let b = std::mem::take(&mut batch);
                let s = store.clone();
                match tokio::task::spawn_blocking(move || s.append_index(&b)).await {
                    Ok(Ok(())) => {}
                    // The files are complete and carry their record; a rebuild
                    // or the next run's recovery indexes them.
                    Ok(Err(e)) => tracing::error!("index append failed: {e}"),
                    Err(e) => tracing::error!("index append task failed: {e}"),
                }
            }
        })
    };

    let ticker = {
        let (db, ds) = (done_bytes.clone(), done_segments.clone());
        let ctx = ctx.clone();
        tokio::spawn(async move {
            loop {
                on_tick(Tick {
                    bytes_done: db
                        .load(Ordering::Relaxed)
                        .max(ctx.verified_bytes.load(Ordering::Relaxed).min(total_bytes)),
                    bytes_total: total_bytes,
                    segments_done: ds.load(Ordering::Relaxed),
                    segments_total: total_segments,
                });
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    let mut workers = Vec::new();
    for w in 0..connections * opts.streams.max(1) {
        let (queue, failures, conns, ctx, store) = (
            queue.clone(),
            failures.clone(),
            conns.clone(),
            ctx.clone(),
            store.clone(),
        );
        let (done_segments, done_bytes, commit_tx) =
            (done_segments.clone(), done_bytes.clone(), commit_tx.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let job = match queue.lock() {
                    Ok(mut q) => q.pop_front(),
                    Err(p) => p.into_inner().pop_front(),
                };
                let Some(job) = job else { break };
                let path = store.segment_path(&job.meta.camera, job.meta.start);
                let mut reasons = Vec::new();
                let mut ok = None;
                for peer in &job.sources {
                    let Some(cs) = conns.get(peer) else {
                        reasons.push(format!("{peer}: not connected"));
                        continue;
                    };
                    let conn = &cs[w % cs.len()];
                    let meta = SegmentMeta { origin: Origin::Peer(peer.clone()), ..job.meta.clone() };
                    match client::fetch_segment(&ctx, conn, path.clone(), &meta).await {
                        Ok(m) => {
                            ok = Some(m);
                            break;
                        }
                        Err(e) => {
                            // Whatever went wrong (bad bytes, a dead peer), the
                            // next holder is tried; nothing unverified counted.
                            tracing::warn!(camera = %job.meta.camera, start = %job.meta.start, %peer, "fetch failed: {e}");
                            reasons.push(format!("{peer}: {e}"));
                        }
                    }
                }
                match ok {
                    Some(m) => {
                        done_segments.fetch_add(1, Ordering::Relaxed);
                        done_bytes.fetch_add(m.len, Ordering::Relaxed);
                        let _ = commit_tx.send(m).await;
                    }
                    None => {
                        let f = Failure {
                            camera: job.meta.camera.clone(),
                            start: job.meta.start.to_string(),
                            peers: job.sources.clone(),
                            reason: if reasons.is_empty() { "no peer holds it".into() } else { reasons.join("; ") },
                        };
                        match failures.lock() {
                            Ok(mut v) => v.push(f),
                            Err(p) => p.into_inner().push(f),
                        }
                    }
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    drop(commit_tx);
    let _ = committer.await;
    ticker.abort();
    for cs in conns.values() {
        for c in cs {
            let s = c.stats();
            tracing::debug!(mtu = s.path.current_mtu, rtt = ?s.path.rtt, lost = s.path.lost_packets, sent = s.path.sent_packets, "connection");
            c.close(0u32.into(), b"done");
        }
    }
    for ep in &endpoints {
        ep.wait_idle().await;
    }
    let seconds = t0.elapsed().as_secs_f64();
    let bytes = done_bytes.load(Ordering::Relaxed);
    let mut failed = match Arc::try_unwrap(failures) {
        Ok(m) => m.into_inner().unwrap_or_else(|p| p.into_inner()),
        Err(a) => a.lock().map(|v| v.clone()).unwrap_or_default(),
    };
    failed.sort_by(|a, b| (&a.camera, &a.start).cmp(&(&b.camera, &b.start)));
    Ok(BackfillReport {
        segments: done_segments.load(Ordering::Relaxed),
        bytes,
        wire_bytes: ctx.wire_bytes.load(Ordering::Relaxed),
        seconds,
        rate_mib_s: bytes as f64 / seconds.max(1e-9) / 1048576.0,
        refetched_bytes: ctx.refetched_bytes.load(Ordering::Relaxed),
        planned_segments: plan.segments(),
        planned_bytes: plan.bytes(),
        placeholders_created: created.len() as u64,
        placeholders_seconds,
        failed,
        io: ctx.writer.backend(),
        peers: statuses,
    })
}

/// Runs the server side until `shutdown` resolves.
pub async fn serve(
    config: Arc<Config>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), BackfillError> {
    let me: Identity = identity::load(&config.cert, &config.key)?;
    if !config.store.join(crate::store::layout::MARKER).exists() {
        // A new server: an empty store to serve from and fill.
        drop(Store::open_writer(&config.store, true)?);
    }
    let store = Store::open(&config.store)?;
    let (endpoint, peers) = crate::transfer::server_endpoint(&config, &me)?;
    tracing::info!(name = %config.name, listen = %config.listen, id = %me.id, "serving");
    let state = Arc::new(crate::transfer::server::ServerState {
        config: config.clone(),
        store,
        peers,
    });
    let ep = endpoint.clone();
    tokio::select! {
        _ = crate::transfer::server::run(endpoint, state) => {}
        _ = shutdown => {
            ep.close(0u32.into(), b"shutting down");
        }
    }
    ep.wait_idle().await;
    Ok(())
}
