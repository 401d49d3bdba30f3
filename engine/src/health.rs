//! HA health: which servers record each camera now, what each misses, and
//! the device overview with its alerts.
//!
//! `local store + peers' coverage -> views -> assess -> SiteStatus`
//!
//! A server sees the cameras paired with it: its own store, and what each
//! peer serves it. Run `hafill status` on a camera's servers (or on the
//! alternate all of them share) for the whole picture.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::camera::CameraId;
use crate::config::{Config, HaMode};
use crate::identity::{self, IdentityError};
use crate::interval::IntervalSet;
use crate::segment::{Origin, SegmentMeta, SegmentState};
use crate::store::StoreError;
use crate::transfer::{client, client_endpoint, TransferError};
use crate::units::Timestamp;

/// A server whose last segment of a camera ended longer ago than that
/// segment's length plus this is not recording it.
pub const RECORDING_GRACE_US: i64 = 90_000_000;
/// How far back a server's recording counts as recent: a server that
/// recorded a camera within it and stopped, or has holes in it, while
/// another records, overflows.
pub const RECENT_US: i64 = 3_600_000_000;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HealthError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Transfer(#[from] TransferError),
    #[error("camera {0} has no [[camera]] rule in the config")]
    Unpaired(CameraId),
    #[error("camera {camera} is not paired with {server}: ask on one of its servers ({servers})")]
    NotHere {
        camera: CameraId,
        server: String,
        servers: String,
    },
}

/// A complete segment, as status needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub start: i64,
    pub end: i64,
    pub len: u64,
}

impl From<&SegmentMeta> for Slot {
    fn from(m: &SegmentMeta) -> Self {
        Slot {
            start: m.start.0,
            end: m.end().0,
            len: m.len,
        }
    }
}

/// What one server holds, as seen from here.
#[derive(Debug, Clone)]
pub struct ServerView {
    pub server: String,
    /// None: reachable; Some: why not.
    pub error: Option<String>,
    /// Complete segments per camera, sorted by start.
    pub cameras: BTreeMap<CameraId, Vec<Slot>>,
}

/// Work this server's store shows: placeholders and what backfill filled.
#[derive(Debug, Clone, Default)]
pub struct LocalWork {
    pub placeholders: BTreeMap<CameraId, Count>,
    pub backfilled: BTreeMap<CameraId, Count>,
    /// What the store holds per camera, in time order, for the timeline.
    pub spans: BTreeMap<CameraId, crate::timeline::Spans>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Count {
    pub segments: u64,
    pub bytes: u64,
}

impl Count {
    fn add(&mut self, bytes: u64) {
        self.segments += 1;
        self.bytes += bytes;
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Gaps {
    pub segments: u64,
    pub bytes: u64,
    /// Start of the oldest missing segment.
    pub oldest: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CameraOnServer {
    pub server: String,
    /// What that server calls the camera, where it is not the camera's id
    /// (`[[camera]] names`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name_there: Option<CameraId>,
    pub reachable: bool,
    /// Unknown (null) when the server could not be asked.
    pub recording: Option<bool>,
    pub last_segment_end: Option<String>,
    /// Segments another of the camera's servers holds and this one lacks.
    pub gaps_pending: Gaps,
    /// Known for this server only.
    pub placeholders: Option<Count>,
    /// Share of the bytes backfill has to bring that it brought, 0 to 1;
    /// this server only, when it had any to bring.
    pub backfill_progress: Option<f64>,
    pub overflow: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct CameraStatus {
    pub camera: CameraId,
    pub name: Option<String>,
    pub ip: Option<IpAddr>,
    pub ha: HaMode,
    /// The camera's servers, primary first.
    pub servers: Vec<CameraOnServer>,
    pub recording_on: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 3] = [Severity::Info, Severity::Warning, Severity::Critical];

    /// As in the JSON and the metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AlertKind {
    /// A server that should record the camera does not (or none does).
    StreamNotRecording,
    /// A camera with HA mode `none` is recorded on more than one server.
    ExtraStream,
    /// A camera with one server only: nothing backs it up.
    Mismatch,
    /// A server's recording fell behind or dropped while another records.
    Overflow,
    /// A peer that could not be asked.
    PeerUnreachable,
}

impl AlertKind {
    pub const ALL: [AlertKind; 5] = [
        AlertKind::StreamNotRecording,
        AlertKind::ExtraStream,
        AlertKind::Mismatch,
        AlertKind::Overflow,
        AlertKind::PeerUnreachable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::StreamNotRecording => "stream-not-recording",
            AlertKind::ExtraStream => "extra-stream",
            AlertKind::Mismatch => "mismatch",
            AlertKind::Overflow => "overflow",
            AlertKind::PeerUnreachable => "peer-unreachable",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    pub severity: Severity,
    pub kind: AlertKind,
    pub camera: Option<CameraId>,
    pub server: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PeerState {
    pub peer: String,
    pub connected: bool,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Overview {
    pub cameras: usize,
    pub recording: usize,
    /// On one server only, or recorded here with no `[[camera]]` rule.
    pub mismatched: Vec<CameraId>,
    /// No server records them.
    pub disconnected: Vec<CameraId>,
    /// `camera@server` whose recording fell behind or dropped.
    pub overflow: Vec<String>,
    pub alerts: BTreeMap<Severity, usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SiteStatus {
    /// The server that asked.
    pub server: String,
    pub at: String,
    pub from: String,
    pub to: String,
    pub peers: Vec<PeerState>,
    pub cameras: Vec<CameraStatus>,
    pub overview: Overview,
    pub alerts: Vec<Alert>,
}

/// What a server that records a camera now holds beyond its last complete
/// segment: the segment it is writing, up to `until` (as the planner
/// counts it). Nothing when it does not record.
pub fn recording_tail(recording: Option<bool>, last_end: Option<i64>, until: i64) -> IntervalSet {
    match (recording, last_end) {
        (Some(true), Some(end)) if end < until => IntervalSet::single(end, until),
        _ => IntervalSet::new(),
    }
}

/// Whether a server holding `held` lacks another server's segment `x`.
/// Recorders cut at their own moments: a hole under the seam tolerance is
/// not a gap.
pub fn lacks(held: &IntervalSet, x: &Slot, seam_us: u64) -> bool {
    let len = (x.end - x.start) as u64;
    let uncovered = len.saturating_sub(held.covered_len(x.start, x.end));
    uncovered > seam_us.min(len.saturating_sub(1))
}

/// The servers expected to record a camera: all of them in active-active,
/// the primary otherwise.
fn expected(ha: HaMode, servers: &[String]) -> &[String] {
    match ha {
        HaMode::ActiveActive => servers,
        HaMode::None | HaMode::ActivePassive => &servers[..servers.len().min(1)],
    }
}

/// Judges the views: per camera and server, then the overview and alerts.
pub fn assess(
    config: &Config,
    now: Timestamp,
    window: (Timestamp, Timestamp),
    views: &[ServerView],
    local: &LocalWork,
) -> SiteStatus {
    let view = |s: &str| views.iter().find(|v| v.server == s);
    // Every camera this server can see: with data here or at a peer, or
    // named by a literal rule that includes this server.
    let mut cameras: BTreeSet<CameraId> = views
        .iter()
        .flat_map(|v| v.cameras.keys().cloned())
        .collect();
    for r in &config.cameras {
        if r.servers.contains(&config.name) {
            if let Ok(c) = CameraId::new(r.pattern.clone()) {
                cameras.insert(c);
            }
        }
    }
    let mut alerts = Vec::new();
    let mut overview = Overview::default();
    let mut out = Vec::new();
    let seam_us = config.recorder.seam_us();
    for camera in cameras {
        let rule = config.rule_of(&camera);
        let servers: Vec<String> = match rule {
            Some(r) if !r.servers.contains(&config.name) => continue,
            Some(r) => r.servers.clone(),
            None => vec![config.name.clone()],
        };
        let ha = rule.map(|r| r.ha).unwrap_or_default();
        let empty = Vec::new();
        let slots_of = |s: &str| -> &Vec<Slot> {
            view(s)
                .filter(|v| v.error.is_none())
                .and_then(|v| v.cameras.get(&camera))
                .unwrap_or(&empty)
        };
        let mut per_server = Vec::new();
        for s in &servers {
            let reachable = view(s).is_some_and(|v| v.error.is_none());
            let slots = slots_of(s);
            let last = slots.iter().max_by_key(|x| x.end);
            let recording = reachable.then(|| {
                last.is_some_and(|l| l.end >= now.0 - (l.end - l.start) - RECORDING_GRACE_US)
            });
            let held = IntervalSet::from_intervals(slots.iter().map(|x| (x.start, x.end)))
                .union(&recording_tail(recording, last.map(|l| l.end), window.1 .0));
            let mut missing: BTreeMap<i64, u64> = BTreeMap::new();
            for o in servers.iter().filter(|o| *o != s) {
                for x in slots_of(o) {
                    if lacks(&held, x, seam_us) {
                        missing.entry(x.start).or_insert(x.len);
                    }
                }
            }
            let gaps = Gaps {
                segments: missing.len() as u64,
                bytes: missing.values().sum(),
                oldest: missing.keys().next().map(|t| Timestamp(*t).to_string()),
            };
            let here = *s == config.name;
            let placeholders =
                here.then(|| local.placeholders.get(&camera).copied().unwrap_or_default());
            let backfill_progress = here
                .then(|| {
                    let done = local.backfilled.get(&camera).map_or(0, |c| c.bytes);
                    let total = done + gaps.bytes;
                    (total > 0).then(|| done as f64 / total as f64)
                })
                .flatten();
            // Recent holes: segments others recorded lately that this lacks.
            let recent_holes = missing
                .keys()
                .any(|t| *t >= now.0 - RECENT_US && last.is_some_and(|l| *t < l.end));
            let recent = slots.iter().any(|x| x.end >= now.0 - RECENT_US);
            per_server.push((
                CameraOnServer {
                    server: s.clone(),
                    name_there: Some(config.name_on(&camera, s)).filter(|n| *n != camera),
                    reachable,
                    recording,
                    last_segment_end: last.map(|l| Timestamp(l.end).to_string()),
                    gaps_pending: gaps,
                    placeholders,
                    backfill_progress,
                    overflow: false,
                },
                recent,
                recent_holes,
            ));
        }
        let recording_on: Vec<String> = per_server
            .iter()
            .filter(|(c, _, _)| c.recording == Some(true))
            .map(|(c, _, _)| c.server.clone())
            .collect();
        let any_unknown = per_server.iter().any(|(c, _, _)| c.recording.is_none());
        let alert = |severity, kind, server: Option<&str>, message: String| Alert {
            severity,
            kind,
            camera: Some(camera.clone()),
            server: server.map(str::to_string),
            message,
        };
        // Overflow: an expected recorder that dropped or has recent holes
        // while another server records.
        for (c, recent, holes) in per_server.iter_mut() {
            let others = recording_on.iter().any(|r| *r != c.server);
            let dropped = c.recording == Some(false) && *recent;
            if expected(ha, &servers).contains(&c.server) && others && (dropped || *holes) {
                c.overflow = true;
                overview.overflow.push(format!("{camera}@{}", c.server));
                alerts.push(alert(
                    Severity::Warning,
                    AlertKind::Overflow,
                    Some(&c.server),
                    format!(
                        "{camera}: {} {} while {} records it",
                        c.server,
                        if dropped {
                            "stopped recording"
                        } else {
                            "has recent holes"
                        },
                        recording_on.join(", ")
                    ),
                ));
            }
        }
        if rule.is_none() || servers.len() < 2 {
            overview.mismatched.push(camera.clone());
            alerts.push(alert(
                Severity::Warning,
                AlertKind::Mismatch,
                Some(&servers[0]),
                match rule {
                    None => format!("{camera}: recorded on {} but in no [[camera]] rule: not paired, not backed up", config.name),
                    Some(_) => format!("{camera}: on {} only: no other server backs it up", servers[0]),
                },
            ));
        }
        if recording_on.is_empty() && !any_unknown {
            overview.disconnected.push(camera.clone());
            alerts.push(alert(
                Severity::Critical,
                AlertKind::StreamNotRecording,
                None,
                format!("{camera}: stream not recording on any server ({ha})"),
            ));
        } else {
            match ha {
                HaMode::ActiveActive => {
                    for (c, _, _) in &per_server {
                        if c.recording == Some(false) {
                            alerts.push(alert(
                                Severity::Warning,
                                AlertKind::StreamNotRecording,
                                Some(&c.server),
                                format!("{camera}: stream not recording on {} (active-active)", c.server),
                            ));
                        }
                    }
                }
                HaMode::None if recording_on.len() > 1 => alerts.push(alert(
                    Severity::Warning,
                    AlertKind::ExtraStream,
                    None,
                    format!(
                        "{camera}: HA mode none, recorded on {} servers ({}): an extra stream loads the camera and the network",
                        recording_on.len(),
                        recording_on.join(", ")
                    ),
                )),
                HaMode::None | HaMode::ActivePassive => {}
            }
        }
        if !recording_on.is_empty() {
            overview.recording += 1;
        }
        out.push(CameraStatus {
            name: rule.and_then(|r| r.name.clone()),
            ip: rule.and_then(|r| r.ip),
            camera,
            ha,
            servers: per_server.into_iter().map(|(c, _, _)| c).collect(),
            recording_on,
        });
    }
    let mut peers = Vec::new();
    for p in &config.peers {
        let error = match view(&p.name) {
            Some(v) => v.error.clone(),
            None => Some("not asked".into()),
        };
        if let Some(e) = &error {
            alerts.push(Alert {
                severity: Severity::Warning,
                kind: AlertKind::PeerUnreachable,
                camera: None,
                server: Some(p.name.clone()),
                message: format!("{}: unreachable: {e}", p.name),
            });
        }
        peers.push(PeerState {
            peer: p.name.clone(),
            connected: error.is_none(),
            error,
        });
    }
    alerts.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.kind.cmp(&b.kind)));
    overview.cameras = out.len();
    for a in &alerts {
        *overview.alerts.entry(a.severity).or_default() += 1;
    }
    SiteStatus {
        server: config.name.clone(),
        at: now.to_string(),
        from: window.0.to_string(),
        to: window.1.to_string(),
        peers,
        cameras: out,
        overview,
        alerts,
    }
}

/// This server's own view and work, read from its store (shared lock: a
/// running backfill is not disturbed).
pub fn local_view(
    config: &Config,
    window: (Timestamp, Timestamp),
) -> Result<(ServerView, LocalWork), StoreError> {
    let mut view = ServerView {
        server: config.name.clone(),
        error: None,
        cameras: BTreeMap::new(),
    };
    let mut work = LocalWork::default();
    let recorder = crate::store::open_recorder(config, false)?;
    let seam = config.recorder.seam_us() as i64;
    for local in recorder.cameras()? {
        // Health speaks of cameras by id, as the peers' coverage does.
        let camera = config.id_of_local(&local);
        let mut slots = Vec::new();
        let mut spans = crate::timeline::Spans::default();
        for m in recorder.segments(&local, window.0, window.1)? {
            spans.push_segment(&m, seam);
            if m.state == SegmentState::Complete {
                slots.push(Slot::from(&m));
                if matches!(m.origin, Origin::Peer(_)) {
                    work.backfilled
                        .entry(camera.clone())
                        .or_default()
                        .add(m.len);
                }
            } else {
                work.placeholders
                    .entry(camera.clone())
                    .or_default()
                    .add(m.len);
            }
        }
        if !spans.is_empty() {
            work.spans.insert(camera.clone(), spans);
        }
        if !slots.is_empty() {
            view.cameras.insert(camera, slots);
        }
    }
    Ok((view, work))
}

/// [`local_view`] on a blocking thread: the index is read from disk.
async fn local_view_off_thread(
    config: &Config,
    window: (Timestamp, Timestamp),
) -> Result<(ServerView, LocalWork), StoreError> {
    let c = config.clone();
    tokio::task::spawn_blocking(move || local_view(&c, window))
        .await
        .map_err(|e| StoreError::Io {
            path: config.store.clone(),
            source: std::io::Error::other(e),
        })?
}

/// Asks every peer for its coverage of `window`, in parallel, each under
/// `timeout`; a peer that does not answer gets a view with its error.
pub async fn peer_views(
    config: &Config,
    peers: &[crate::config::Peer],
    window: (Timestamp, Timestamp),
    cameras: &[CameraId],
    timeout: Duration,
) -> Result<Vec<ServerView>, HealthError> {
    let me = Arc::new(identity::load(&config.cert, &config.key)?);
    let near = config.peers.first().map_or(config.listen, |p| p.addr);
    let endpoint = client_endpoint(near)?;
    let cams: Vec<String> = cameras.iter().map(|c| c.as_str().to_string()).collect();
    let asks = peers.iter().map(|p| {
        let (endpoint, me, cams) = (endpoint.clone(), me.clone(), cams.clone());
        async move {
            let got = async {
                let conn = client::connect(&endpoint, &me, &config.name, p, timeout).await?;
                let entries = tokio::time::timeout(
                    timeout.max(Duration::from_secs(30)),
                    client::coverage(&conn, window.0 .0, window.1 .0, cams, client::DEFAULT_STALL),
                )
                .await
                .map_err(|_| TransferError::Protocol("coverage did not arrive in time".into()))??;
                conn.close(0u32.into(), b"done");
                Ok::<_, TransferError>(entries)
            };
            match got.await {
                Ok(entries) => {
                    let cameras = crate::plan::peer_segments(config, &p.name, entries)
                        .into_iter()
                        .map(|(c, segs)| (c, segs.iter().map(Slot::from).collect()))
                        .collect();
                    ServerView {
                        server: p.name.clone(),
                        error: None,
                        cameras,
                    }
                }
                Err(e) => ServerView {
                    server: p.name.clone(),
                    error: Some(e.to_string()),
                    cameras: BTreeMap::new(),
                },
            }
        }
    });
    let views = futures::future::join_all(asks).await;
    endpoint.wait_idle().await;
    Ok(views)
}

/// The window status looks at: `since` (default a day) up to a day ahead.
pub fn window(now: Timestamp, since: Option<Timestamp>) -> (Timestamp, Timestamp) {
    (
        since.unwrap_or(now.add_micros(-86_400_000_000)),
        now.add_micros(86_400_000_000),
    )
}

/// `hafill status`: this server's store and every peer's coverage, judged.
pub async fn status(
    config: &Config,
    since: Option<Timestamp>,
    timeout: Duration,
) -> Result<SiteStatus, HealthError> {
    Ok(site(config, since, timeout).await?.0)
}

/// The status and, from the same look, the site's timeline.
pub async fn site(
    config: &Config,
    since: Option<Timestamp>,
    timeout: Duration,
) -> Result<(SiteStatus, crate::timeline::Timeline), HealthError> {
    let now = Timestamp::now();
    let window = window(now, since);
    let (mine, work) = local_view_off_thread(config, window).await?;
    let mut views = vec![mine];
    views.extend(peer_views(config, &config.peers, window, &[], timeout).await?);
    let status = assess(config, now, window, &views, &work);
    let timeline = crate::timeline::build(config, now, window, &status, &views, &work);
    Ok((status, timeline))
}

/// Where to view a camera at a moment.
#[derive(Debug, Clone, Serialize)]
pub struct Location {
    pub camera: CameraId,
    pub at: String,
    /// The server to view it from.
    pub server: String,
    /// What that server calls the camera, where it is not the camera's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name_there: Option<CameraId>,
    pub addr: SocketAddr,
    /// Whether that is the camera's first (primary) server.
    pub primary: bool,
    pub segment_start: String,
    /// Every server holding that moment, primary first.
    pub holders: Vec<String>,
    pub unreachable: Vec<String>,
}

/// `hafill locate`: the camera's first server when it holds `at`, else the
/// next that does. None: no reachable server holds it.
pub async fn locate(
    config: &Config,
    camera: &CameraId,
    at: Timestamp,
    timeout: Duration,
) -> Result<(Option<Location>, Vec<String>), HealthError> {
    let rule = config
        .rule_of(camera)
        .ok_or_else(|| HealthError::Unpaired(camera.clone()))?;
    if !rule.servers.contains(&config.name) {
        return Err(HealthError::NotHere {
            camera: camera.clone(),
            server: config.name.clone(),
            servers: rule.servers.join(", "),
        });
    }
    let window = (
        at.add_micros(-(crate::store::MAX_SEGMENT_DURATION_US as i64)),
        at.add_micros(1),
    );
    let (mine, _) = local_view_off_thread(config, window).await?;
    let mut views = vec![mine];
    let holders: Vec<_> = config
        .peers
        .iter()
        .filter(|p| rule.servers.contains(&p.name))
        .cloned()
        .collect();
    views.extend(
        peer_views(
            config,
            &holders,
            window,
            std::slice::from_ref(camera),
            timeout,
        )
        .await?,
    );
    let mut holders = Vec::new();
    let mut unreachable = Vec::new();
    let mut start = None;
    for s in &rule.servers {
        let Some(v) = views.iter().find(|v| &v.server == s) else {
            continue;
        };
        if v.error.is_some() {
            unreachable.push(s.clone());
            continue;
        }
        if let Some(x) = v
            .cameras
            .get(camera)
            .and_then(|slots| slots.iter().find(|x| x.start <= at.0 && at.0 < x.end))
        {
            if holders.is_empty() {
                start = Some(x.start);
            }
            holders.push(s.clone());
        }
    }
    let Some(server) = holders.first().cloned() else {
        return Ok((None, unreachable));
    };
    let addr = if server == config.name {
        config.listen
    } else {
        config.peer(&server).map_or(config.listen, |p| p.addr)
    };
    Ok((
        Some(Location {
            camera: camera.clone(),
            at: at.to_string(),
            primary: server == rule.servers[0],
            name_there: Some(config.name_on(camera, &server)).filter(|n| n != camera),
            server,
            addr,
            segment_start: start.map(|t| Timestamp(t).to_string()).unwrap_or_default(),
            holders,
            unreachable: unreachable.clone(),
        }),
        unreachable,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_segment_a_recording_server_is_writing_is_no_gap() {
        // Its last complete segment ends at 60; a peer's ends at 115.
        let done = IntervalSet::from_intervals([(0, 60)]);
        let theirs = Slot {
            start: 55,
            end: 115,
            len: 1,
        };
        let writing = done.union(&recording_tail(Some(true), Some(60), 200));
        assert!(!lacks(&writing, &theirs, 0));
        // Stopped, or unknown: the same segment is a gap.
        for state in [Some(false), None] {
            let held = done.union(&recording_tail(state, Some(60), 200));
            assert!(lacks(&held, &theirs, 0), "{state:?}");
        }
        assert!(recording_tail(Some(true), Some(300), 200).is_empty());
    }
}
