//! Backfill: ask the peers what they hold, plan, create placeholders, and
//! fetch every gap, several segments at once, over several connections.
//!
//! `coverage -> plan -> placeholders -> fetch (verify, write) -> commit`

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hafill_protocol::Compression;
use serde::Serialize;

use crate::camera::CameraId;
use crate::config::Config;
use crate::identity::{self, IdentityError};
use crate::io::{DiskWriter, IoBackend, IoChoice, IoSetupError};
use crate::jobs::{Job, JobQueue};
use crate::metrics::Metrics;
use crate::placeholder;
use crate::plan::{PlanOptions, Planner};
use crate::segment::{Origin, SegmentMeta};
use crate::store::traits::{Matching, Recorder};
use crate::store::StoreError;
use crate::throttle::governor::{self, Rates, SharedThrottle};
use crate::throttle::schedule::Limits;
use crate::transfer::client::{self, FetchContext, FetchError};
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
    /// Cap on received bytes per second (on top of the config's).
    pub max_rate: Option<u64>,
    /// Cap on written bytes per second (on top of the config's).
    pub max_disk_rate: Option<u64>,
    /// Overrides the config's `[throttle] adaptive_disk`.
    pub adaptive_disk: Option<bool>,
    /// The daemon's throttle config, swapped on SIGHUP; None: the config's.
    pub live_throttle: Option<SharedThrottle>,
    pub compression: Compression,
    pub io: IoChoice,
    pub connect_timeout: Duration,
    /// How long every peer's whole coverage answer may take, all asked at
    /// once (after connecting, which has `connect_timeout`); a peer slower
    /// than that is skipped for the run. The gate sets its `--deadline`.
    pub coverage_deadline: Duration,
    /// Placeholders as holes instead of allocated space.
    pub sparse: bool,
    /// The daemon's counters, updated as the backfill goes.
    pub metrics: Option<Arc<Metrics>>,
    /// Longest wait for one whole frame from a peer before it counts as
    /// stalled (and is cut off).
    pub stall: Duration,
    /// Read each finished segment back from the disk and hash it before it
    /// is installed (see [`FetchContext::readback`]).
    pub verify_readback: bool,
}

/// The default of [`BackfillOptions::coverage_deadline`]: a 30-day
/// coverage of a thousand cameras (43 million entries) decodes in seconds;
/// an answer still coming after 5 minutes holds every other peer's plan
/// back.
pub const DEFAULT_COVERAGE_DEADLINE: Duration = Duration::from_secs(300);

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
            max_disk_rate: None,
            adaptive_disk: None,
            live_throttle: None,
            compression: Compression::Auto,
            io: IoChoice::Auto,
            connect_timeout: Duration::from_secs(10),
            coverage_deadline: DEFAULT_COVERAGE_DEADLINE,
            sparse: false,
            metrics: None,
            stall: client::DEFAULT_STALL,
            verify_readback: false,
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
    /// Whether the peer said what it holds (its coverage): only then was the
    /// timeline checked against it.
    pub asked: bool,
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
    /// Planning and placeholders (flat in the JSON report).
    #[serde(flatten)]
    pub placement: PlaceSummary,
    pub failed: Vec<Failure>,
    pub io: IoBackend,
    pub peers: Vec<PeerStatus>,
}

impl BackfillReport {
    /// The peers that could not be asked what they hold (down, refused,
    /// or failed to answer), with why.
    pub fn unasked(&self) -> Vec<(&str, &str)> {
        self.peers
            .iter()
            .filter(|p| !p.asked)
            .map(|p| (p.peer.as_str(), p.error.as_deref().unwrap_or("not asked")))
            .collect()
    }

    /// Whether no peer at all could be asked: nothing was checked, so
    /// nobody knows whether the timeline is whole.
    pub fn nothing_checked(&self) -> bool {
        self.peers.iter().all(|p| !p.asked)
    }
}

/// Progress for a bar or a log line.
#[derive(Debug, Clone, Copy)]
pub struct Tick {
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub segments_done: u64,
    pub segments_total: u64,
}

/// Connections to the peers and what a backfill needs around them.
#[derive(Debug)]
pub struct Session {
    config: Config,
    opts: BackfillOptions,
    recorder: Arc<dyn Recorder>,
    writer: DiskWriter,
    endpoints: Vec<quinn::Endpoint>,
    conns: HashMap<String, Vec<quinn::Connection>>,
    statuses: Vec<PeerStatus>,
}

/// What planning and placing came to, in figures.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PlaceSummary {
    pub planned_segments: u64,
    pub planned_bytes: u64,
    pub placeholders_created: u64,
    /// Gaps left without a placeholder: they would have crossed the reserve.
    pub no_room_segments: u64,
    pub no_room_bytes: u64,
    /// Gaps the recorder refused (it logged why): a camera its database
    /// does not know.
    pub refused_segments: u64,
    /// Seconds from the session's start until the placeholders were in.
    pub placeholders_seconds: f64,
}

/// The timeline made whole: placeholders in, the work not yet queued.
/// [`Session::queue`] turns it into [`Prepared`]; the gate does that after
/// the recording service has started, since nothing there is waited for.
/// What the peers hold is not kept: only what was planned and placed, and
/// what earlier runs left with the peers that hold exactly its bytes.
#[derive(Debug)]
pub struct Placement {
    placed: Vec<SegmentMeta>,
    /// Every planned segment (placed or not), with its fallback holders.
    fallbacks: BTreeMap<(CameraId, i64), Vec<String>>,
    /// What earlier runs left in the window, with its holders.
    left: Vec<Job>,
    /// Why what earlier runs left could not be read, if it could not.
    unread: Option<StoreError>,
    pub summary: PlaceSummary,
}

impl Placement {
    /// The (camera, start) of every planned segment.
    pub fn planned(&self) -> impl Iterator<Item = (CameraId, i64)> + '_ {
        self.fallbacks.keys().cloned()
    }
}

/// A plan being made a part at a time (see [`Session::plan_part`]).
#[derive(Debug)]
pub(crate) struct Planning {
    planner: Planner,
    /// The cameras planned so far: each is planned once.
    planned: std::collections::HashSet<CameraId>,
    left: Vec<Job>,
    unread: Option<StoreError>,
    window: (Timestamp, Timestamp),
}

/// The work a session found: placeholders made, segments to fetch.
#[derive(Debug, Default)]
pub struct Prepared {
    jobs: Vec<Job>,
    pub summary: PlaceSummary,
}

impl Prepared {
    pub fn jobs(&self) -> usize {
        self.jobs.len()
    }

    /// The (camera, start) of every segment to fetch.
    pub fn starts(&self) -> impl Iterator<Item = (CameraId, i64)> + '_ {
        self.jobs
            .iter()
            .map(|j| (j.meta.camera.clone(), j.meta.start.0))
    }
}

/// What fetching did.
#[derive(Debug)]
struct Fetched {
    segments: u64,
    bytes: u64,
    failed: Vec<Failure>,
    /// Peers cut off for misbehaving, with why.
    cut_off: BTreeMap<String, String>,
}

impl Session {
    /// Opens the store, starts the disk writer, and connects to the peers
    /// (in parallel, each under `opts.connect_timeout`); a peer that does
    /// not answer is recorded and skipped.
    pub async fn connect(
        config: &Config,
        opts: &BackfillOptions,
    ) -> Result<Session, BackfillError> {
        let me = Arc::new(identity::load(&config.cert, &config.key)?);
        let recorder = crate::store::open_recorder(config, true)?;
        tracing::debug!("recorder: {}", recorder.describe());
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
        // One endpoint per connection: each has its own socket and driver,
        // so connections spread over cores.
        let connections = opts.connections.max(1);
        let mut endpoints = Vec::new();
        for _ in 0..connections {
            let near = peers.first().map(|p| p.addr).unwrap_or(config.listen);
            endpoints.push(client_endpoint(near)?);
        }
        let attempts = peers.iter().map(|p| {
            let (endpoints, me, name, p) = (
                endpoints.clone(),
                me.clone(),
                config.name.clone(),
                p.clone(),
            );
            let timeout = opts.connect_timeout;
            async move {
                let mut cs = Vec::new();
                for ep in &endpoints {
                    cs.push(client::connect(ep, &me, &name, &p, timeout).await?);
                }
                Ok::<_, TransferError>(cs)
            }
        });
        let results = futures::future::join_all(attempts).await;
        let mut conns = HashMap::new();
        let mut statuses = Vec::new();
        for (r, p) in results.into_iter().zip(&peers) {
            match r {
                Ok(cs) => {
                    conns.insert(p.name.clone(), cs);
                }
                Err(e) => {
                    tracing::warn!(peer = %p.name, "skipped: {e}");
                    statuses.push(PeerStatus {
                        peer: p.name.clone(),
                        connected: false,
                        asked: false,
                        error: Some(e.to_string()),
                        segments_offered: 0,
                    });
                }
            }
        }
        Ok(Session {
            config: config.clone(),
            opts: opts.clone(),
            recorder,
            writer,
            endpoints,
            conns,
            statuses,
        })
    }

    /// The longest wait for one frame from a peer.
    pub fn stall(&self) -> Duration {
        self.opts.stall
    }

    /// How long every peer's coverage answers may take, all together.
    pub fn coverage_deadline(&self) -> Duration {
        self.opts.coverage_deadline
    }

    /// Bytes sent and received on the wire (UDP payloads, QUIC and TLS
    /// included) to and from `peer` since the session connected.
    pub fn wire_bytes(&self, peer: &str) -> u64 {
        self.conns
            .get(peer)
            .into_iter()
            .flatten()
            .map(|c| {
                let s = c.stats();
                s.udp_tx.bytes + s.udp_rx.bytes
            })
            .sum()
    }

    /// The configuration the session runs under.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// What became of each peer so far: connected, asked, or why not.
    pub fn peer_statuses(&self) -> &[PeerStatus] {
        &self.statuses
    }

    /// Peers that could not be reached.
    pub fn unreachable(&self) -> Vec<String> {
        self.statuses
            .iter()
            .filter(|s| !s.connected)
            .map(|s| s.peer.clone())
            .collect()
    }

    /// Asks the connected peers for their coverage of the window, plans,
    /// creates placeholders, and lists the work, plus placeholders and
    /// partials an earlier run left.
    pub async fn prepare(
        &mut self,
        plan_opts: &PlanOptions,
        t0: Instant,
    ) -> Result<Prepared, BackfillError> {
        let placement = self.place(plan_opts, t0).await?;
        self.queue(placement)
    }

    /// What each connected peer holds in `[from, to)`, by camera: every
    /// peer asked at once, each whole answer within
    /// `opts.coverage_deadline`. A peer that does not answer whole is
    /// dropped from the session and its status says why.
    pub async fn holdings(
        &mut self,
        (from, to): (Timestamp, Timestamp),
    ) -> BTreeMap<CameraId, Vec<(String, Vec<SegmentMeta>)>> {
        let stall = self.opts.stall;
        let (holdings, _) = self
            .holdings_with(|conn, _, cams| async move {
                let entries = client::coverage(&conn, from.0, to.0, cams, stall).await?;
                Ok((entries, ()))
            })
            .await;
        holdings
    }

    /// [`Self::holdings`], each peer asked by `ask` (its connection, its
    /// name, the cameras asked for: empty for every paired camera), which
    /// answers the coverage entries and whatever else it learnt. Asked
    /// again (the next part of a round), a peer's status adds up.
    pub async fn holdings_with<T, F, Fut>(
        &mut self,
        ask: F,
    ) -> (
        BTreeMap<CameraId, Vec<(String, Vec<SegmentMeta>)>>,
        Vec<(String, T)>,
    )
    where
        F: Fn(quinn::Connection, String, Vec<String>) -> Fut,
        Fut: std::future::Future<
            Output = Result<(Vec<hafill_protocol::CoverageEntry>, T), TransferError>,
        >,
    {
        let mut holdings: BTreeMap<CameraId, Vec<(String, Vec<SegmentMeta>)>> = BTreeMap::new();
        let mut learnt = Vec::new();
        let names: Vec<String> = self.conns.keys().cloned().collect();
        let cams: Vec<String> = self
            .opts
            .cameras
            .iter()
            .map(|c| c.as_str().to_string())
            .collect();
        // Every peer at once; under the gate, the whole of it within what
        // is left of the deadline.
        let deadline = self.opts.coverage_deadline;
        let asks =
            names.iter().map(|name| {
                let ask = ask(self.conns[name][0].clone(), name.clone(), cams.clone());
                async move {
                    tokio::time::timeout(deadline, ask).await.unwrap_or(Err(
                        TransferError::Timeout("no whole coverage answer within the deadline"),
                    ))
                }
            });
        let answers = futures::future::join_all(asks).await;
        for (name, answer) in names.into_iter().zip(answers) {
            let i = match self.statuses.iter().position(|s| s.peer == name) {
                Some(i) => i,
                None => {
                    self.statuses.push(PeerStatus {
                        peer: name.clone(),
                        connected: true,
                        asked: true,
                        error: None,
                        segments_offered: 0,
                    });
                    self.statuses.len() - 1
                }
            };
            let status = &mut self.statuses[i];
            match answer {
                Ok((entries, t)) => {
                    learnt.push((name.clone(), t));
                    status.segments_offered +=
                        take_coverage(&self.config, &name, entries, &mut holdings);
                }
                Err(e) => {
                    tracing::warn!(peer = %name, "coverage failed: {e}");
                    status.connected = false;
                    status.asked = false;
                    status.error = Some(e.to_string());
                    if let Some(cs) = self.conns.remove(&name) {
                        for c in cs {
                            c.close(0u32.into(), b"no coverage");
                        }
                    }
                }
            }
        }
        (holdings, learnt)
    }

    /// The recorder this session fills.
    pub fn recorder(&self) -> &Arc<dyn Recorder> {
        &self.recorder
    }

    /// Asks the peers for coverage, plans, and creates the placeholders:
    /// what the recording service waits for at boot.
    pub async fn place(
        &mut self,
        plan_opts: &PlanOptions,
        t0: Instant,
    ) -> Result<Placement, BackfillError> {
        let holdings = self.holdings(place_window(plan_opts)).await;
        let mut planning = self.start_planning(plan_opts);
        self.plan_part(&mut planning, &holdings)?;
        drop(holdings);
        self.place_planned(planning, t0).await
    }

    /// A plan of the window of `plan_opts` with nothing in it yet, and
    /// what earlier runs left there (read once), each from the peer it was
    /// planned from.
    pub(crate) fn start_planning(&self, plan_opts: &PlanOptions) -> Planning {
        let window = place_window(plan_opts);
        let mut planning = Planning {
            planner: Planner::new(plan_opts.clone()),
            planned: std::collections::HashSet::new(),
            left: Vec::new(),
            unread: None,
            window,
        };
        match self.recorder.outstanding(window.0, window.1) {
            Ok(v) => {
                planning.left = v
                    .into_iter()
                    .filter(|m| {
                        self.opts.cameras.is_empty()
                            || self
                                .opts
                                .cameras
                                .contains(&self.config.id_of_local(&m.camera))
                    })
                    .map(|m| {
                        let sources = match &m.origin {
                            Origin::Peer(p) => vec![p.clone()],
                            Origin::Local => vec![],
                        };
                        Job::new(m, sources)
                    })
                    .collect()
            }
            Err(e) => planning.unread = Some(e),
        }
        planning
    }

    /// Plans what the peers hold of some cameras (`holdings`: a part of
    /// the work; each camera in one part only), and adds these peers as
    /// holders of what earlier runs left on those cameras. Only what is
    /// chosen is kept: the holdings can go once this returns.
    pub(crate) fn plan_part(
        &self,
        planning: &mut Planning,
        holdings: &BTreeMap<CameraId, Vec<(String, Vec<SegmentMeta>)>>,
    ) -> Result<(), BackfillError> {
        let (from, to) = planning.window;
        // Camera by camera, reading only the part of the index the peers'
        // segments reach: what we hold elsewhere cannot change what they
        // offer.
        let matching = self.recorder.matching();
        let seam_us = self.config.recorder.seam_us();
        for (camera, per_peer) in holdings {
            // Planned again, it would be placed and fetched twice: a peer
            // that answers for cameras it was not asked about, or two
            // camera ids with one name here.
            if planning.planned.contains(camera) {
                tracing::warn!(%camera, "offered again in a later part of the round; planned from the first only");
                continue;
            }
            let offered = per_peer.iter().flat_map(|(_, v)| v.iter());
            let reach = offered.fold(None, |r: Option<(Timestamp, Timestamp)>, s| {
                Some(r.map_or((s.start, s.end()), |(a, b)| {
                    (a.min(s.start), b.max(s.end()))
                }))
            });
            let Some((a, b)) = reach else { continue };
            planning.planned.insert(camera.clone());
            let local = self.recorder.segments(camera, a.max(from), b.min(to))?;
            let views: Vec<(&str, &[SegmentMeta])> = per_peer
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_slice()))
                .collect();
            match matching {
                Matching::Identical => planning.planner.add_camera(camera, &local, &views),
                Matching::ByTime => {
                    let since = self.recorder.recording_since(camera)?;
                    planning
                        .planner
                        .add_camera_by_time(camera, &local, &views, seam_us, since)
                }
            }
        }
        // What earlier runs left on these cameras: any connected peer
        // holding exactly its bytes may serve it (a hash not known yet
        // proves nothing).
        let mut wanted: HashMap<&CameraId, Vec<usize>> = HashMap::new();
        for (i, j) in planning.left.iter().enumerate() {
            if j.meta.blake3 != crate::store::traits::UNKNOWN_HASH
                && holdings.contains_key(&j.meta.camera)
            {
                wanted.entry(&j.meta.camera).or_default().push(i);
            }
        }
        let mut holders: Vec<(usize, String)> = Vec::new();
        for (camera, jobs) in wanted {
            for (peer, segs) in holdings.get(camera).into_iter().flatten() {
                let held: std::collections::HashSet<(i64, &blake3::Hash)> =
                    segs.iter().map(|s| (s.start.0, &s.blake3)).collect();
                for &i in &jobs {
                    let m = &planning.left[i].meta;
                    if held.contains(&(m.start.0, &m.blake3)) {
                        holders.push((i, peer.clone()));
                    }
                }
            }
        }
        for (i, peer) in holders {
            let sources = &mut planning.left[i].sources;
            if !sources.contains(&peer) {
                sources.push(peer);
            }
        }
        Ok(())
    }

    /// Creates the placeholders of the whole plan, in one batch, newest
    /// gaps first across every part: the timeline is whole now.
    pub(crate) async fn place_planned(
        &mut self,
        planning: Planning,
        t0: Instant,
    ) -> Result<Placement, BackfillError> {
        let t_planning = t0.elapsed();
        let Planning {
            planner,
            left,
            unread,
            ..
        } = planning;
        let plan = planner.finish();
        for c in &plan.conflicts {
            tracing::warn!(camera = %c.camera, start = %c.start, "{} and {} hold different bytes; using {}", c.chosen, c.other, c.chosen);
        }
        let place = placeholder::PlaceOptions {
            sparse: self.opts.sparse,
            reserve_bytes: self.config.reserve_bytes,
        };
        let plan = Arc::new(plan);
        let placed = if plan.segments() == 0 {
            placeholder::Placed::default()
        } else {
            let recorder = self.recorder.clone();
            let plan = plan.clone();
            tokio::task::spawn_blocking(move || {
                let sources: Vec<(&SegmentMeta, &str)> =
                    plan.iter().map(|p| (&p.source, p.peer.as_str())).collect();
                recorder.reserve(&sources, place)
            })
            .await
            .map_err(|e| StoreError::Io {
                path: self.config.store.clone(),
                source: std::io::Error::other(e),
            })??
        };
        if !placed.no_room.is_empty() {
            tracing::warn!(
                segments = placed.no_room.len(),
                bytes = placed.no_room.iter().map(|(m, _)| m.len).sum::<u64>(),
                "not placed: the reserve for live recording (free space, or free inodes) would be crossed; planned again when space frees up"
            );
        }
        let placeholders_seconds = t0.elapsed().as_secs_f64();
        tracing::debug!(asked_and_planned = ?t_planning, placed = ?t0.elapsed(), "prepare timings (since start)");
        Ok(Placement {
            summary: PlaceSummary {
                planned_segments: plan.segments(),
                planned_bytes: plan.bytes(),
                placeholders_created: placed.placed.len() as u64,
                no_room_segments: placed.no_room.len() as u64,
                no_room_bytes: placed.no_room.iter().map(|(m, _)| m.len).sum(),
                refused_segments: placed.refused.len() as u64,
                placeholders_seconds,
            },
            placed: placed.placed,
            fallbacks: plan
                .iter()
                .map(|p| {
                    (
                        (p.source.camera.clone(), p.source.start.0),
                        p.fallback.clone(),
                    )
                })
                .collect(),
            left,
            unread,
        })
    }

    /// The work queue: what was placed (newest first), plus what earlier
    /// runs left in the window, each with every connected peer that holds
    /// exactly its bytes.
    pub fn queue(&self, placement: Placement) -> Result<Prepared, BackfillError> {
        let Placement {
            placed,
            fallbacks,
            left,
            unread,
            summary,
        } = placement;
        if let Some(e) = unread {
            return Err(e.into());
        }
        let mut jobs: Vec<Job> = Vec::with_capacity(placed.len() + left.len());
        let mut queued = Vec::with_capacity(placed.len());
        for m in placed {
            let mut sources = match &m.origin {
                Origin::Peer(p) => vec![p.clone()],
                Origin::Local => vec![],
            };
            for p in fallbacks
                .get(&(m.camera.clone(), m.start.0))
                .into_iter()
                .flatten()
            {
                if !sources.contains(p) {
                    sources.push(p.clone());
                }
            }
            queued.push((m.camera.clone(), m.start.0));
            jobs.push(Job::new(m, sources));
        }
        // Left by an earlier run and placed again now (an earlier run's
        // placeholder is kept): one job, with the holders of both when
        // they are the same bytes.
        let at: HashMap<(CameraId, i64), usize> = queued.into_iter().zip(0..).collect();
        for j in left {
            match at.get(&(j.meta.camera.clone(), j.meta.start.0)) {
                Some(&i)
                    if jobs[i].meta.blake3 != j.meta.blake3 || jobs[i].meta.len != j.meta.len => {}
                Some(&i) => {
                    for p in j.sources {
                        if !jobs[i].sources.contains(&p) {
                            jobs[i].sources.push(p);
                        }
                    }
                }
                None => jobs.push(j),
            }
        }
        jobs.sort_by_key(|j| std::cmp::Reverse(j.meta.start));
        if let Some(m) = &self.opts.metrics {
            m.planned(jobs.len() as u64, jobs.iter().map(|j| j.meta.len).sum());
            for s in &self.statuses {
                m.peer(&s.peer, s.connected);
            }
        }
        Ok(Prepared { jobs, summary })
    }

    /// Fetches the prepared work, several segments at once; stops taking
    /// new segments once `stop` is set (those in flight finish).
    async fn fetch(
        &self,
        prepared: &Prepared,
        stop: Arc<AtomicBool>,
        ctx: Arc<FetchContext>,
        on_tick: impl Fn(Tick) + Send + Sync + 'static,
    ) -> Fetched {
        let total_bytes: u64 = prepared.jobs.iter().map(|j| j.meta.len).sum();
        let total_segments = prepared.jobs.len() as u64;
        tracing::info!(
            segments = total_segments,
            bytes = total_bytes,
            "backfill planned"
        );
        let queue = Arc::new(JobQueue::new(
            prepared.jobs.clone(),
            self.conns.keys().cloned(),
        ));
        let done_segments = Arc::new(AtomicU64::new(0));
        let done_bytes = Arc::new(AtomicU64::new(0));

        // Completed segments go to the index in batches, from one task.
        let (commit_tx, mut commit_rx) = tokio::sync::mpsc::channel::<SegmentMeta>(1024);
        let committer = {
            let recorder = self.recorder.clone();
            tokio::spawn(async move {
                while let Some(first) = commit_rx.recv().await {
                    let mut batch = vec![first];
                    while let Ok(m) = commit_rx.try_recv() {
                        batch.push(m);
                    }
                    let r = recorder.clone();
                    match tokio::task::spawn_blocking(move || r.commit(&batch)).await {
                        Ok(Ok(())) => {}
                        // The files are complete and carry their record; a
                        // rebuild or the next run indexes them.
                        Ok(Err(e)) => tracing::error!("index append failed: {e}"),
                        Err(e) => tracing::error!("index append task failed: {e}"),
                    }
                }
            })
        };
        let ticker = {
            let (db, ds, ctx) = (done_bytes.clone(), done_segments.clone(), ctx.clone());
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

        // Each peer's workers: `streams` per connection, taking that peer's
        // work first (see `jobs`).
        let mut workers = Vec::new();
        for (peer, cs) in &self.conns {
            for w in 0..cs.len() * self.opts.streams.max(1) {
                let conn = cs[w % cs.len()].clone();
                let all = cs.clone();
                let peer = peer.clone();
                let (queue, ctx, recorder, stop) = (
                    queue.clone(),
                    ctx.clone(),
                    self.recorder.clone(),
                    stop.clone(),
                );
                let config = self.config.clone();
                let (done_segments, done_bytes, commit_tx) =
                    (done_segments.clone(), done_bytes.clone(), commit_tx.clone());
                let metrics = self.opts.metrics.clone();
                workers.push(tokio::spawn(async move {
                    while let Some(job) = queue.next(&peer, &stop).await {
                        let meta = SegmentMeta {
                            origin: Origin::Peer(peer.clone()),
                            ..job.meta.clone()
                        };
                        let wire = config.id_of_local(&job.meta.camera);
                        let leave_early = || queue.end_game_for(&job, &peer);
                        let in_flight = metrics.as_ref().map(|m| m.fetching(&job.meta, &peer));
                        let fetched = caught(async {
                            let sink = recorder.sink(&meta)?;
                            client::fetch_segment(&ctx, &conn, wire.as_str(), Arc::from(sink), &meta, &leave_early).await
                        })
                        .await;
                        drop(in_flight);
                        match fetched {
                            Err(e) if e.ask_again_later() => {
                                // The peer serves all it may, or gave up on
                                // our pace: the job is asked for again after
                                // a pause (see `jobs`).
                                tracing::debug!(camera = %job.meta.camera, start = %job.meta.start, %peer, "{e}");
                                queue.busy(job, &peer, e.to_string());
                            }
                            Ok(m) => {
                                done_segments.fetch_add(1, Ordering::Relaxed);
                                done_bytes.fetch_add(m.len, Ordering::Relaxed);
                                let len = m.len;
                                let _ = commit_tx.send(m).await;
                                if let Some(metrics) = &metrics {
                                    metrics.segment_done(&peer, len);
                                }
                                queue.finished();
                            }
                            Err(e) => {
                                // Whatever went wrong (bad bytes, a dead peer),
                                // the next holder is tried; nothing unverified
                                // counted.
                                tracing::warn!(camera = %job.meta.camera, start = %job.meta.start, %peer, "fetch failed: {e}");
                                if let (Some(m), FetchError::Integrity(_) | FetchError::Damaged(_)) = (&metrics, &e) {
                                    m.verify_failed();
                                }
                                let mut misbehaved = e.peer_misbehaved();
                                let mut why = e.to_string();
                                if matches!(e, FetchError::Damaged(_)) {
                                    let n = queue.damaged(&peer);
                                    if n > client::MAX_DAMAGED_PER_PEER {
                                        misbehaved = true;
                                        why = format!("{n} segments sent damaged in this run, the last: {e}");
                                    }
                                }
                                queue.failed(job, &peer, e.to_string());
                                if misbehaved && queue.cut_off(&peer, why.clone()) {
                                    tracing::error!(%peer, "cut off for the rest of this run: {why}");
                                    let reason: &[u8] = match e {
                                        FetchError::Damaged(_) => b"cut off: too many damaged segments",
                                        _ => b"cut off: protocol violation",
                                    };
                                    for c in &all {
                                        c.close(3u32.into(), reason);
                                    }
                                    if let Some(m) = &metrics {
                                        m.peer(&peer, false);
                                    }
                                }
                            }
                        }
                    }
                }));
            }
        }
        for w in workers {
            let _ = w.await;
        }
        drop(commit_tx);
        let _ = committer.await;
        ticker.abort();
        // Work left: undeliverable, or not taken because `stop` was set (it
        // stays a placeholder for the next run).
        let mut failed = Vec::new();
        // Jobs still queued when every worker has ended were not taken
        // because `stop` was set (they stay reservations for the next
        // run), or were left by a peer that kept answering `Busy`.
        for job in queue.undeliverable(!stop.load(Ordering::Relaxed)) {
            if let Some(m) = &self.opts.metrics {
                m.segment_failed(job.meta.len);
            }
            failed.push(Failure {
                camera: job.meta.camera.clone(),
                start: job.meta.start.to_string(),
                peers: job.sources.clone(),
                reason: job.reason(),
            });
        }
        failed.sort_by(|a, b| (&a.camera, &a.start).cmp(&(&b.camera, &b.start)));
        Fetched {
            segments: done_segments.load(Ordering::Relaxed),
            bytes: done_bytes.load(Ordering::Relaxed),
            failed,
            cut_off: queue.cut(),
        }
    }

    fn fetch_context(&self) -> Arc<FetchContext> {
        Arc::new(FetchContext {
            writer: self.writer.clone(),
            rates: Arc::new(Rates {
                net: crate::throttle::RateLimiter::new(self.opts.max_rate),
                disk: crate::throttle::RateLimiter::new(self.opts.max_disk_rate),
                ..Rates::unlimited()
            }),
            compression: self.opts.compression,
            block_size: self.opts.block_size,
            window: self.opts.window,
            pipeline: 8,
            verified_bytes: AtomicU64::new(0),
            wire_bytes: AtomicU64::new(0),
            refetched_bytes: AtomicU64::new(0),
            stall: self.opts.stall,
            readback: self.opts.verify_readback,
            outboards: Some(Arc::new(crate::store::outboards_of(&self.config))),
        })
    }

    /// Closes the connections without fetching.
    pub async fn close(self) {
        for c in self.conns.values().flatten() {
            c.close(0u32.into(), b"done");
        }
        for ep in &self.endpoints {
            ep.wait_idle().await;
        }
    }

    /// Fetches everything prepared and reports, then closes the connections.
    pub async fn run(
        mut self,
        prepared: Prepared,
        stop: Arc<AtomicBool>,
        t0: Instant,
        on_tick: impl Fn(Tick) + Send + Sync + 'static,
    ) -> BackfillReport {
        let ctx = self.fetch_context();
        let throttle = self.opts.live_throttle.clone().unwrap_or_else(|| {
            let mut t = self.config.throttle.clone();
            if let Some(a) = self.opts.adaptive_disk {
                t.adaptive_disk = a;
            }
            Arc::new(std::sync::RwLock::new(t))
        });
        let cli = Limits {
            net: self.opts.max_rate,
            disk: self.opts.max_disk_rate,
        };
        // The config's caps bind from the first byte, not from the
        // governor's first tick.
        governor::apply_caps(&ctx.rates, &throttle, cli);
        let governor_stop = Arc::new(AtomicBool::new(false));
        let gov = tokio::spawn(governor::run(
            ctx.rates.clone(),
            throttle,
            cli,
            self.recorder.data_dir().to_path_buf(),
            governor_stop.clone(),
        ));
        let fetched = self.fetch(&prepared, stop, ctx.clone(), on_tick).await;
        governor_stop.store(true, Ordering::Relaxed);
        let _ = gov.await;
        for cs in self.conns.values() {
            for c in cs {
                let s = c.stats();
                tracing::debug!(mtu = s.path.current_mtu, rtt = ?s.path.rtt, lost = s.path.lost_packets, rx_datagrams = s.udp_rx.datagrams, rx_bytes = s.udp_rx.bytes, tx_datagrams = s.udp_tx.datagrams, "connection");
                c.close(0u32.into(), b"done");
            }
        }
        for ep in &self.endpoints {
            ep.wait_idle().await;
        }
        let seconds = t0.elapsed().as_secs_f64();
        for s in &mut self.statuses {
            if let Some(why) = fetched.cut_off.get(&s.peer) {
                s.connected = false;
                s.error = Some(format!("cut off: {why}"));
            }
        }
        self.statuses.sort_by(|a, b| a.peer.cmp(&b.peer));
        BackfillReport {
            segments: fetched.segments,
            bytes: fetched.bytes,
            wire_bytes: ctx.wire_bytes.load(Ordering::Relaxed),
            seconds,
            rate_mib_s: fetched.bytes as f64 / seconds.max(1e-9) / 1048576.0,
            refetched_bytes: ctx.refetched_bytes.load(Ordering::Relaxed),
            placement: prepared.summary,
            failed: fetched.failed,
            io: self.writer.backend(),
            peers: self.statuses,
        }
    }
}

/// Keeps a peer's coverage (see [`crate::plan::peer_segments`]), by the
/// camera's name on this server; answers how many segments it offered.
fn take_coverage(
    config: &Config,
    peer: &str,
    entries: Vec<hafill_protocol::CoverageEntry>,
    holdings: &mut BTreeMap<CameraId, Vec<(String, Vec<SegmentMeta>)>>,
) -> usize {
    let mut n = 0;
    for (id, mut segs) in crate::plan::peer_segments(config, peer, entries) {
        n += segs.len();
        let c = config.local_name(&id);
        for s in &mut segs {
            s.camera = c.clone();
        }
        holdings
            .entry(c)
            .or_default()
            .push((peer.to_string(), segs));
    }
    n
}

/// The window a session asks its peers about: the plan's, and no further
/// than a day ahead of now.
pub(crate) fn place_window(plan_opts: &PlanOptions) -> (Timestamp, Timestamp) {
    let (from, to) = plan_opts.window();
    (from, to.min(plan_opts.now.add_micros(86_400_000_000)))
}

/// The plan window of a backfill: the options' bounds within retention.
pub fn plan_options(config: &Config, opts: &BackfillOptions) -> PlanOptions {
    PlanOptions {
        now: Timestamp::now(),
        retention_us: config.retention_us,
        from: opts.since,
        to: opts.until,
    }
}

/// Connects, plans, places, fetches: one whole backfill.
pub async fn backfill(
    config: &Config,
    opts: &BackfillOptions,
    on_tick: impl Fn(Tick) + Send + Sync + 'static,
) -> Result<BackfillReport, BackfillError> {
    let t0 = Instant::now();
    let mut session = Session::connect(config, opts).await?;
    let prepared = session.prepare(&plan_options(config, opts), t0).await?;
    Ok(session
        .run(prepared, Arc::new(AtomicBool::new(false)), t0, on_tick)
        .await)
}

/// Runs one segment's fetch. A panic inside it (a bug) fails that segment
/// instead of killing its worker, whose segment would then never be
/// finished or failed, and the run would never end.
async fn caught(
    fetch: impl std::future::Future<Output = Result<SegmentMeta, FetchError>>,
) -> Result<SegmentMeta, FetchError> {
    use futures::FutureExt;
    match std::panic::AssertUnwindSafe(fetch).catch_unwind().await {
        Ok(r) => r,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            tracing::error!("fetch panicked (a bug): {what}");
            Err(FetchError::Internal(what))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_fetch_fails_its_segment_and_returns() {
        let r = caught(async { panic!("block size 0") }).await;
        match r {
            Err(FetchError::Internal(what)) => assert_eq!(what, "block size 0"),
            other => panic!("expected an internal error, got {other:?}"),
        }
        let who = String::from("rs01");
        let r = caught(async move { panic!("from {who}") }).await;
        assert!(matches!(r, Err(FetchError::Internal(w)) if w == "from rs01"));
    }
}
